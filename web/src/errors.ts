// What the service says about a failed call, beyond the status code: the google.rpc.ErrorInfo
// (domain discount.v1) and google.rpc.BadRequest it sends with every error (AIP-193), which
// connect-web reads from the grpc-status-details-bin trailer.
import { Code, type ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";

export const ERROR_DOMAIN = "discount.v1";

/**
 * The service's reason (e.g. "NO_CODES_LEFT"), or "" when the status did not come from the
 * service (the network, Envoy, gRPC's own limits).
 */
export function errorReason(err: ConnectError): string {
  return err.findDetails(ErrorInfoSchema).find((info) => info.domain === ERROR_DOMAIN)?.reason ?? "";
}

/** The request field the service refused (e.g. "email"), or "". */
export function errorField(err: ConnectError): string {
  for (const request of err.findDetails(BadRequestSchema)) {
    const violation = request.fieldViolations.find((v) => v.field !== "");
    if (violation) return violation.field;
  }
  return "";
}

/**
 * What the shopper should read for the reasons every form can meet (an unknown brand, a refused
 * field, the database out of reach), or "" for any other reason.
 */
export function sharedReasonMessage(err: ConnectError): string {
  switch (errorReason(err)) {
    case "BRAND_NOT_FOUND":
      return `Unknown brand: ${err.rawMessage}.`;
    case "INVALID_FIELD": {
      const field = errorField(err);
      return `Please check the form${field ? ` (${field})` : ""}: ${err.rawMessage}.`;
    }
    case "DATABASE_UNAVAILABLE":
      return "The discount service cannot be reached right now; please try again in a moment.";
    default:
      return "";
  }
}

/** What the shopper should read for a status code that every form words the same way. */
export function statusMessage(err: ConnectError): string {
  switch (err.code) {
    case Code.PermissionDenied:
      return `Not allowed: ${err.rawMessage}.`;
    case Code.Unavailable:
    case Code.Unknown:
      return "The discount service cannot be reached right now; please try again in a moment.";
    case Code.DeadlineExceeded:
      return "The discount service took too long to answer; please try again.";
    default:
      return `Something went wrong (${Code[err.code]}): ${err.rawMessage}`;
  }
}
