// "Get my code": a signed-in shopper claims their code of a brand with their token (authorization: Bearer).
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { DiscountClient } from "./client.js";
import { byId } from "./dom.js";
import { errorReason, sharedReasonMessage, statusMessage } from "./errors.js";
import type { ClaimedCode } from "./redeem.js";

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
export function claimErrorMessage(err: ConnectError, signedIn: boolean, tokenExpired = false): string {
  if (errorReason(err) === "NO_CODES_LEFT") {
    return "No codes left: this brand has given out all of its discount codes. Please check back later.";
  }
  const shared = sharedReasonMessage(err);
  if (shared) return shared;
  switch (err.code) {
    case Code.ResourceExhausted:
      return "That request is too large for the discount service; please shorten what you entered.";
    case Code.Unauthenticated:
      // "No longer" only for a token that was good once; a forged one never was.
      if (!signedIn) return "Not signed in: please sign in to get your discount code.";
      return tokenExpired
        ? `Not signed in: your sign-in is no longer valid (${err.rawMessage}).`
        : `Not signed in: your sign-in is not valid (${err.rawMessage}).`;
    case Code.NotFound:
      return `Unknown brand: ${err.rawMessage}.`;
    case Code.InvalidArgument:
      return `Please check the form: ${err.rawMessage}.`;
    default:
      return statusMessage(err);
  }
}

export function setupClaimView(
  client: DiscountClient,
  brand: string,
  onClaimed: (claimed: ClaimedCode) => void = () => {},
): void {
  const form = byId<HTMLFormElement>("claim-form");
  const tokenInput = byId<HTMLTextAreaElement>("claim-token");
  const brandInput = byId<HTMLInputElement>("claim-brand");
  const emailInput = byId<HTMLInputElement>("claim-email");
  const who = byId("claim-who");
  const button = byId<HTMLButtonElement>("claim-button");
  const result = byId("claim-result");
  const errorBox = byId("claim-error");
  brandInput.value = brand;

  // The line under the token says what state the token is in, never "Signed in as" for one that is
  // not: the page sees expiry itself; a forged or otherwise refused token only from the service's
  // UNAUTHENTICATED, which the page cannot tell apart from a real one before it asks.
  let userId = "";
  let expiresAt: Date | null = null;
  let expiryTimer: ReturnType<typeof setTimeout> | undefined;
  const showState = (state: "none" | "malformed" | "signed-in" | "expired" | "invalid", text: string): void => {
    who.dataset.state = state;
    who.textContent = text;
  };
  const onToken = (): void => {
    clearTimeout(expiryTimer);
    const token = tokenInput.value.trim();
    const claims = token ? readToken(token) : null;
    userId = claims && typeof claims.sub === "string" ? claims.sub : "";
    const email = claims && typeof claims.email === "string" ? claims.email : "";
    expiresAt = claims && typeof claims.exp === "number" ? new Date(claims.exp * 1000) : null;
    if (email) emailInput.value = email;
    if (!token) showState("none", "Not signed in.");
    else if (!userId) showState("malformed", "This does not look like a sign-in token.");
    else if (expiresAt && expiresAt.getTime() <= Date.now()) showExpired(expiresAt);
    else {
      showState("signed-in", `Signed in as ${userId}${email ? ` (${email})` : ""}.`);
      const left = expiresAt ? expiresAt.getTime() - Date.now() : Infinity;
      // setTimeout holds at most ~24.8 days; a token that lives longer is re-checked when edited.
      if (left < 2 ** 31 - 1) expiryTimer = setTimeout(onToken, left + 50);
    }
  };
  const showExpired = (at: Date): void =>
    showState("expired", `Token expired at ${at.toLocaleString()}: sign in again to get a new one.`);
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
      onClaimed({ brandId: c.brandId, userId: c.userId, code: c.code });
    } catch (err) {
      const e = ConnectError.from(err);
      const expired = expiresAt !== null && expiresAt.getTime() <= Date.now();
      if (token && userId && e.code === Code.Unauthenticated) {
        if (expiresAt && expired) showExpired(expiresAt);
        else showState("invalid", `Token not valid: ${e.rawMessage}.`);
      }
      errorBox.textContent = claimErrorMessage(e, token !== "", expired);
      errorBox.dataset.code = Code[e.code];
      errorBox.dataset.reason = errorReason(e);
      errorBox.hidden = false;
    } finally {
      button.disabled = false;
    }
  }
}
