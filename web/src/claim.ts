// "Get my code": a signed-in shopper claims their code of a brand with their token (authorization: Bearer).
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { DiscountClient } from "./client.js";
import { byId } from "./dom.js";
import { errorField, errorReason } from "./errors.js";

interface TokenClaims {
  sub?: unknown;
  email?: unknown;
  exp?: unknown;
}

/** Reads the token's claims for display only; the server is what verifies the signature. */
export function readToken(token: string): TokenClaims | null {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(parts[1].length / 4) * 4, "="));
    const claims: unknown = JSON.parse(new TextDecoder().decode(Uint8Array.from(json, (c) => c.charCodeAt(0))));
    return typeof claims === "object" && claims !== null ? (claims as TokenClaims) : null;
  } catch {
    return null;
  }
}

/**
 * What the shopper should read for each way a claim can fail: by the service's reason, never by the
 * status code alone (RESOURCE_EXHAUSTED is "no codes left" only when the service says NO_CODES_LEFT;
 * gRPC's own message size limit answers with the same code).
 */
export function claimErrorMessage(err: ConnectError, signedIn: boolean): string {
  switch (errorReason(err)) {
    case "NO_CODES_LEFT":
      return "No codes left: this brand has given out all of its discount codes. Please check back later.";
    case "BRAND_NOT_FOUND":
      return `Unknown brand: ${err.rawMessage}.`;
    case "INVALID_FIELD": {
      const field = errorField(err);
      return `Please check the form${field ? ` (${field})` : ""}: ${err.rawMessage}.`;
    }
    case "DATABASE_UNAVAILABLE":
      return "The discount service cannot be reached right now; please try again in a moment.";
  }
  switch (err.code) {
    case Code.ResourceExhausted:
      return "That request is too large for the discount service; please shorten what you entered.";
    case Code.Unauthenticated:
      return signedIn
        ? `Not signed in: your sign-in is no longer valid (${err.rawMessage}).`
        : "Not signed in: please sign in to get your discount code.";
    case Code.PermissionDenied:
      return `Not allowed: ${err.rawMessage}.`;
    case Code.NotFound:
      return `Unknown brand: ${err.rawMessage}.`;
    case Code.InvalidArgument:
      return `Please check the form: ${err.rawMessage}.`;
    case Code.Unavailable:
    case Code.Unknown:
      return "The discount service cannot be reached right now; please try again in a moment.";
    case Code.DeadlineExceeded:
      return "The discount service took too long to answer; please try again.";
    default:
      return `Something went wrong (${Code[err.code]}): ${err.rawMessage}`;
  }
}

export function setupClaimView(client: DiscountClient, brand: string): void {
  const form = byId<HTMLFormElement>("claim-form");
  const tokenInput = byId<HTMLTextAreaElement>("claim-token");
  const brandInput = byId<HTMLInputElement>("claim-brand");
  const emailInput = byId<HTMLInputElement>("claim-email");
  const who = byId("claim-who");
  const button = byId<HTMLButtonElement>("claim-button");
  const result = byId("claim-result");
  const errorBox = byId("claim-error");
  brandInput.value = brand;

  let userId = "";
  const onToken = (): void => {
    const token = tokenInput.value.trim();
    const claims = token ? readToken(token) : null;
    userId = claims && typeof claims.sub === "string" ? claims.sub : "";
    const email = claims && typeof claims.email === "string" ? claims.email : "";
    if (email) emailInput.value = email;
    if (!token) who.textContent = "Not signed in.";
    else if (!userId) who.textContent = "This does not look like a sign-in token.";
    else who.textContent = `Signed in as ${userId}${email ? ` (${email})` : ""}.`;
  };
  tokenInput.addEventListener("input", onToken);
  onToken();

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void claim();
  });

  async function claim(): Promise<void> {
    button.disabled = true;
    result.hidden = true;
    errorBox.hidden = true;
    const token = tokenInput.value.trim();
    const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
    try {
      const response = await client.claimCode(
        { brandId: brandInput.value.trim(), userId, email: emailInput.value.trim() },
        { headers, timeoutMs: 10_000 },
      );
      const c = response.claim;
      if (!c) throw new ConnectError("the service answered without a claim", Code.Internal);
      byId("claim-code").textContent = c.code;
      const expiry = byId("claim-expiry");
      if (c.expiresAt) {
        const at = timestampDate(c.expiresAt);
        expiry.textContent = `Valid until ${at.toLocaleString()}`;
        expiry.title = at.toISOString();
        expiry.dataset.expiresAt = at.toISOString();
      } else {
        expiry.textContent = "Never expires.";
        expiry.title = "";
        delete expiry.dataset.expiresAt;
      }
      byId("claim-note").textContent = response.newlyClaimed
        ? "Claimed just now. It is yours: claiming again shows this same code."
        : "You already had this code.";
      result.hidden = false;
    } catch (err) {
      const e = ConnectError.from(err);
      errorBox.textContent = claimErrorMessage(e, token !== "");
      errorBox.dataset.code = Code[e.code];
      errorBox.dataset.reason = errorReason(e);
      errorBox.hidden = false;
    } finally {
      button.disabled = false;
    }
  }
}
