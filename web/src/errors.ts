// What the service says about a failed call, beyond the status code: the google.rpc.ErrorInfo
// (domain discount.v1) and google.rpc.BadRequest it sends with every error (AIP-193), which
// connect-web reads from the grpc-status-details-bin trailer.
import type { ConnectError } from "@connectrpc/connect";
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
