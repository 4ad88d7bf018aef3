"""gRPC transport of DiscountService: protobuf <-> domain calls. How a call is handled (credential,
deadline, limits, errors -> status codes) is call_handling.py's; the hand-made encoding of watch
responses lives in encoding.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import grpc

from discount.v1 import discount_service_pb2 as pb

from . import errors
from .auth import Authenticator
from .call_handling import (
    CallHandling,
    CallObserver,
    Context,
    Failure,
    MalformedRequest,
    lenient_parser,
    lenient_unary_handlers,
    status_for,
)
from .encoding import EncodedClaims, claim_to_proto
from .models import Principal
from .redemption import Redemption
from .service import CodeService
from .settings import Settings

SERVICE_NAME = "discount.v1.DiscountService"

# Responses are also cut by bytes, to the server's message limit (encoding.cut_runs).
MAX_CLAIMS_PER_RESPONSE = 1000


class DiscountServicer(CallHandling):
    def __init__(
        self,
        service: CodeService,
        authenticator: Authenticator,
        *,
        default_timeout: float = 30.0,
        observe: CallObserver | None = None,
        max_message_bytes: int = Settings.max_message_bytes,
    ) -> None:
        super().__init__(authenticator, default_timeout=default_timeout, observe=observe)
        self._service = service
        self._encoded = EncodedClaims()
        self._max_message_bytes = max_message_bytes

    async def GenerateCodes(self, request: Any, context: Context) -> pb.GenerateCodesResponse:
        async def handle(principal: Principal) -> pb.GenerateCodesResponse:
            expires_at = None
            if request.HasField("expires_at"):
                try:
                    expires_at = request.expires_at.ToDatetime(tzinfo=UTC)
                except (ValueError, OverflowError) as exc:
                    raise errors.InvalidArgument(
                        f"expires_at is not a valid timestamp: {exc}", field="expires_at"
                    ) from None
            result = await self._service.generate_codes(
                principal,
                brand_id=request.brand_id,
                count=request.count,
                request_id=request.request_id,
                code_length=request.code_length,
                prefix=request.prefix,
                expires_at=expires_at,
            )
            return pb.GenerateCodesResponse(
                brand_id=result.brand_id,
                batch_id=result.batch_id,
                generated=result.generated,
                available=result.available,
            )

        return await self._unary("GenerateCodes", request, context, handle)

    async def ClaimCode(self, request: Any, context: Context) -> pb.ClaimCodeResponse:
        async def handle(principal: Principal) -> pb.ClaimCodeResponse:
            result = await self._service.claim_code(
                principal, brand_id=request.brand_id, user_id=request.user_id, email=request.email
            )
            return pb.ClaimCodeResponse(claim=claim_to_proto(result.claim), newly_claimed=result.newly_claimed)

        return await self._unary("ClaimCode", request, context, handle)

    async def GetBrandStats(self, request: Any, context: Context) -> pb.GetBrandStatsResponse:
        async def handle(principal: Principal) -> pb.GetBrandStatsResponse:
            stats = await self._service.brand_stats(principal, brand_id=request.brand_id)
            return pb.GetBrandStatsResponse(
                brand_id=stats.brand_id,
                total=stats.total,
                available=stats.available,
                claimed=stats.claimed,
                expired=stats.expired,
                redeemed=stats.redeemed,
            )

        return await self._unary("GetBrandStats", request, context, handle)

    async def RedeemCode(self, request: Any, context: Context) -> pb.RedeemCodeResponse:
        async def handle(principal: Principal) -> pb.RedeemCodeResponse:
            result = await self._service.redemptions.redeem_code(
                principal,
                brand_id=request.brand_id,
                code=request.code,
                user_id=request.user_id,
                order_id=request.order_id,
            )
            return pb.RedeemCodeResponse(
                redemption=_redemption_to_proto(result.redemption), newly_redeemed=result.newly_redeemed
            )

        return await self._unary("RedeemCode", request, context, handle)

    async def CancelRedemption(self, request: Any, context: Context) -> pb.CancelRedemptionResponse:
        async def handle(principal: Principal) -> pb.CancelRedemptionResponse:
            redemption = await self._service.redemptions.cancel_redemption(
                principal, brand_id=request.brand_id, code=request.code, order_id=request.order_id
            )
            return pb.CancelRedemptionResponse(redemption=_redemption_to_proto(redemption))

        return await self._unary("CancelRedemption", request, context, handle)

    async def WatchClaims(self, request: Any, context: Context) -> AsyncIterator[bytes]:
        """Yields encoded WatchClaimsResponse messages (registered with a pass-through serializer)."""
        started = time.perf_counter()
        failure: Failure | None = None
        try:
            if isinstance(request, MalformedRequest):
                raise errors.InvalidArgument("the request body is not a valid protobuf message")
            principal = await self._principal(context)
            per_response = min(request.max_claims_per_response, MAX_CLAIMS_PER_RESPONSE)
            claims = await self._service.open_watch(
                principal,
                brand_id=request.brand_id,
                after_sequence=request.after_sequence,
                claims_per_message=max(per_response, 1),
            )
            # Headers now, not with the first claim: a watcher of a quiet brand learns at once that
            # its stream is open (the browser page shows "Live" from this).
            await context.send_initial_metadata(())
            async for run in claims:
                for message in self._encoded.responses(run, per_response, self._max_message_bytes):
                    yield message
        except Exception as exc:  # noqa: BLE001 - every failure gets a status; status_for logs the unexpected
            failure = status_for("WatchClaims", exc)
            await failure.abort(context)
        finally:
            self._finished("WatchClaims", context, started, failure)


def _redemption_to_proto(redemption: Redemption) -> pb.Redemption:
    message = pb.Redemption(
        brand_id=redemption.brand_id,
        code=redemption.code,
        user_id=redemption.user_id,
        order_id=redemption.order_id,
    )
    message.redeemed_at.FromDatetime(redemption.redeemed_at)
    if redemption.cancelled_at is not None:
        message.cancelled_at.FromDatetime(redemption.cancelled_at)
    return message


def add_to_server(servicer: DiscountServicer, server: grpc.aio.Server) -> None:
    """Registers the service with lenient request parsers (see MalformedRequest)."""
    handlers = lenient_unary_handlers(
        {
            "GenerateCodes": (servicer.GenerateCodes, pb.GenerateCodesRequest, pb.GenerateCodesResponse),
            "ClaimCode": (servicer.ClaimCode, pb.ClaimCodeRequest, pb.ClaimCodeResponse),
            "GetBrandStats": (servicer.GetBrandStats, pb.GetBrandStatsRequest, pb.GetBrandStatsResponse),
            "RedeemCode": (servicer.RedeemCode, pb.RedeemCodeRequest, pb.RedeemCodeResponse),
            "CancelRedemption": (servicer.CancelRedemption, pb.CancelRedemptionRequest, pb.CancelRedemptionResponse),
        }
    )
    handlers["WatchClaims"] = grpc.unary_stream_rpc_method_handler(
        servicer.guarded_stream("WatchClaims", servicer.WatchClaims),
        request_deserializer=lenient_parser(pb.WatchClaimsRequest),
        response_serializer=None,  # WatchClaims yields bytes, encoded once per claim
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
