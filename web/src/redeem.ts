// "Use code": after a claim, the checkout redeems the code on an order (RedeemCode). Redeeming is the shop's
// backend's call, so it goes with the shop's key (a service key or the brand's key, x-api-key), never the
// shopper's sign-in token, which the service refuses for it.
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { DiscountClient } from "./client.js";
import { byId } from "./dom.js";
import { errorReason, sharedReasonMessage, statusMessage } from "./errors.js";

/** What the shopper should read when a redemption is refused: by the service's reason first. */
export function redeemErrorMessage(err: ConnectError): string {
  switch (errorReason(err)) {
    case "CODE_NOT_FOUND":
      return "This brand has no such code: check what you typed.";
    case "CODE_NOT_HELD_BY_USER":
      return "This code is not yours: use the code you claimed.";
    case "CODE_EXPIRED":
      return "This code has expired.";
    case "CODE_ALREADY_REDEEMED":
      return "This code is already used on another order. Cancel that order's redemption to use it again.";
    case "REDEMPTION_CANCELLED":
      return "This order's use of the code was cancelled: place a new order to use the code again.";
  }
  const shared = sharedReasonMessage(err);
  if (shared) return shared;
  switch (err.code) {
    case Code.Unauthenticated:
      return `The shop key was refused: ${err.rawMessage}.`;
    default:
      return statusMessage(err);
  }
}

export interface ClaimedCode {
  brandId: string;
  userId: string;
  code: string;
}

/** Sets up the step; the returned function shows it for a code just claimed. */
export function setupRedeemStep(client: DiscountClient): (claimed: ClaimedCode) => void {
  const form = byId<HTMLFormElement>("redeem-form");
  const codeInput = byId<HTMLInputElement>("redeem-code");
  const orderInput = byId<HTMLInputElement>("redeem-order");
  const keyInput = byId<HTMLInputElement>("redeem-key");
  const button = byId<HTMLButtonElement>("redeem-button");
  const result = byId("redeem-result");
  const note = byId("redeem-note");
  const errorBox = byId("redeem-error");
  let claimed: ClaimedCode | null = null;

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void redeem();
  });

  async function redeem(): Promise<void> {
    if (!claimed) return;
    button.disabled = true;
    result.hidden = true;
    errorBox.hidden = true;
    const key = keyInput.value.trim();
    try {
      const response = await client.redeemCode(
        { brandId: claimed.brandId, code: codeInput.value.trim(), userId: claimed.userId, orderId: orderInput.value.trim() },
        { headers: key ? { "x-api-key": key } : {}, timeoutMs: 10_000 },
      );
      const r = response.redemption;
      if (!r) throw new ConnectError("the service answered without a redemption", Code.Internal);
      const at = r.redeemedAt ? timestampDate(r.redeemedAt) : null;
      note.textContent = response.newlyRedeemed
        ? `Used on order ${r.orderId}${at ? ` at ${at.toLocaleString()}` : ""}.`
        : `Already used on order ${r.orderId}: nothing changed.`;
      note.dataset.orderId = r.orderId;
      result.dataset.newly = String(response.newlyRedeemed);
      result.hidden = false;
    } catch (err) {
      const e = ConnectError.from(err);
      errorBox.textContent = redeemErrorMessage(e);
      errorBox.dataset.code = Code[e.code];
      errorBox.dataset.reason = errorReason(e);
      errorBox.hidden = false;
    } finally {
      button.disabled = false;
    }
  }

  return (code: ClaimedCode): void => {
    claimed = code;
    codeInput.value = code.code;
    if (!orderInput.value) orderInput.value = `order-${Date.now().toString(36)}`;
    result.hidden = true;
    errorBox.hidden = true;
    form.hidden = false;
  };
}
