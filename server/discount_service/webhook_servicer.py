"""gRPC transport of `discount.v1.WebhookService`: protobuf <-> the calls of webhooks.py.

Calls are handled like the other services' (servicer.CallHandling): the credential, the deadline,
the one mapping of errors to statuses with their details, one log line and metric per call (never
a field value, so never a secret), and lenient parsers, so an unparsable body is INVALID_ARGUMENT.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from discount.v1 import webhook_service_pb2 as pb

from .auth import Authenticator
from .call_handling import CallHandling, CallObserver, Context, lenient_unary_handlers
from .encoding import timestamp_proto
from .models import AttemptRow, Principal, WebhookRow
from .webhooks import WebhookService

WEBHOOK_SERVICE_NAME = "discount.v1.WebhookService"

_STATE = {
    "active": pb.Webhook.STATE_ACTIVE,
    "failing": pb.Webhook.STATE_FAILING,
    "disabled": pb.Webhook.STATE_DISABLED,
}


def webhook_to_proto(row: WebhookRow) -> pb.Webhook:
    message = pb.Webhook(
        webhook_id=row.webhook_id,
        brand_id=row.brand_id,
        url=row.url,
        state=_STATE[row.state],
        delivered_sequence=row.delivered_sequence,
        max_claims_per_delivery=row.max_claims_per_delivery,
        created_at=timestamp_proto(row.created_at),
        last_error=row.last_error,
    )
    if row.state == "failing" and row.next_attempt_at is not None:
        message.next_attempt_at.CopyFrom(timestamp_proto(row.next_attempt_at))
    return message


def attempt_to_proto(row: AttemptRow) -> pb.WebhookDelivery:
    duration = Duration()
    duration.FromNanoseconds(int(row.duration_seconds * 1e9))
    return pb.WebhookDelivery(
        delivery_id=row.delivery_id,
        first_sequence=row.first_sequence,
        last_sequence=row.last_sequence,
        attempt=row.attempt,
        attempted_at=timestamp_proto(row.attempted_at),
        http_status=row.http_status,
        error=row.error,
        duration=duration,
    )


class WebhookServicer(CallHandling):
    def __init__(
        self,
        webhooks: WebhookService,
        authenticator: Authenticator,
        *,
        default_timeout: float = 30.0,
        observe: CallObserver | None = None,
    ) -> None:
        super().__init__(authenticator, default_timeout=default_timeout, observe=observe)
        self._webhooks = webhooks

    async def CreateWebhook(self, request: Any, context: Context) -> pb.CreateWebhookResponse:
        async def handle(principal: Principal) -> pb.CreateWebhookResponse:
            created = await self._webhooks.create(
                principal,
                brand_id=request.brand_id,
                url=request.url,
                after_sequence=request.after_sequence if request.HasField("after_sequence") else None,
                max_claims=request.max_claims_per_delivery,
            )
            return pb.CreateWebhookResponse(webhook=webhook_to_proto(created.webhook), secret=created.secret)

        return await self._unary("CreateWebhook", request, context, handle)

    async def GetWebhook(self, request: Any, context: Context) -> pb.GetWebhookResponse:
        async def handle(principal: Principal) -> pb.GetWebhookResponse:
            row = await self._webhooks.get(principal, webhook_id=request.webhook_id)
            return pb.GetWebhookResponse(webhook=webhook_to_proto(row))

        return await self._unary("GetWebhook", request, context, handle)

    async def ListWebhooks(self, request: Any, context: Context) -> pb.ListWebhooksResponse:
        async def handle(principal: Principal) -> pb.ListWebhooksResponse:
            rows = await self._webhooks.list(principal, brand_id=request.brand_id)
            return pb.ListWebhooksResponse(webhooks=[webhook_to_proto(r) for r in rows])

        return await self._unary("ListWebhooks", request, context, handle)

    async def DeleteWebhook(self, request: Any, context: Context) -> pb.DeleteWebhookResponse:
        async def handle(principal: Principal) -> pb.DeleteWebhookResponse:
            await self._webhooks.delete(principal, webhook_id=request.webhook_id)
            return pb.DeleteWebhookResponse()

        return await self._unary("DeleteWebhook", request, context, handle)

    async def ReplayWebhook(self, request: Any, context: Context) -> pb.ReplayWebhookResponse:
        async def handle(principal: Principal) -> pb.ReplayWebhookResponse:
            row = await self._webhooks.replay(
                principal, webhook_id=request.webhook_id, after_sequence=request.after_sequence
            )
            return pb.ReplayWebhookResponse(webhook=webhook_to_proto(row))

        return await self._unary("ReplayWebhook", request, context, handle)

    async def RotateWebhookSecret(self, request: Any, context: Context) -> pb.RotateWebhookSecretResponse:
        async def handle(principal: Principal) -> pb.RotateWebhookSecretResponse:
            rotated = await self._webhooks.rotate(principal, webhook_id=request.webhook_id)
            return pb.RotateWebhookSecretResponse(webhook=webhook_to_proto(rotated.webhook), secret=rotated.secret)

        return await self._unary("RotateWebhookSecret", request, context, handle)

    async def ListWebhookDeliveries(self, request: Any, context: Context) -> pb.ListWebhookDeliveriesResponse:
        async def handle(principal: Principal) -> pb.ListWebhookDeliveriesResponse:
            page = await self._webhooks.attempts(
                principal, webhook_id=request.webhook_id, page_size=request.page_size, page_token=request.page_token
            )
            return pb.ListWebhookDeliveriesResponse(
                deliveries=[attempt_to_proto(a) for a in page.items], next_page_token=page.next_page_token
            )

        return await self._unary("ListWebhookDeliveries", request, context, handle)


def add_webhooks_to_server(servicer: WebhookServicer, server: grpc.aio.Server) -> None:
    """Registers WebhookService with lenient request parsers (see servicer.MalformedRequest)."""
    handlers = lenient_unary_handlers(
        {
            "CreateWebhook": (servicer.CreateWebhook, pb.CreateWebhookRequest, pb.CreateWebhookResponse),
            "GetWebhook": (servicer.GetWebhook, pb.GetWebhookRequest, pb.GetWebhookResponse),
            "ListWebhooks": (servicer.ListWebhooks, pb.ListWebhooksRequest, pb.ListWebhooksResponse),
            "DeleteWebhook": (servicer.DeleteWebhook, pb.DeleteWebhookRequest, pb.DeleteWebhookResponse),
            "ReplayWebhook": (servicer.ReplayWebhook, pb.ReplayWebhookRequest, pb.ReplayWebhookResponse),
            "RotateWebhookSecret": (
                servicer.RotateWebhookSecret,
                pb.RotateWebhookSecretRequest,
                pb.RotateWebhookSecretResponse,
            ),
            "ListWebhookDeliveries": (
                servicer.ListWebhookDeliveries,
                pb.ListWebhookDeliveriesRequest,
                pb.ListWebhookDeliveriesResponse,
            ),
        }
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(WEBHOOK_SERVICE_NAME, handlers),))
