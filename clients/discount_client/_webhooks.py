"""What the sync and async clients share for `discount.v1.WebhookService`: result types, requests
and protobuf conversion. Every call needs the brand's own key or an admin key."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import grpc

from discount.v1 import webhook_service_pb2 as webhook_pb
from discount.v1 import webhook_service_pb2_grpc as webhook_pb_grpc

from ._common import invalid_field


class WebhookState(StrEnum):
    """Whether claims are being sent to an endpoint."""

    ACTIVE = "active"  # up to date, or delivering
    FAILING = "failing"  # the last attempt failed; the same claims are tried again at next_attempt_at
    DISABLED = "disabled"  # answered 410, or failed for the whole retry period; replay_webhook re-enables
    UNKNOWN = "unknown"  # a state this client does not know (sent by a newer server)


_STATE_FROM_PROTO = {
    webhook_pb.Webhook.STATE_ACTIVE: WebhookState.ACTIVE,
    webhook_pb.Webhook.STATE_FAILING: WebhookState.FAILING,
    webhook_pb.Webhook.STATE_DISABLED: WebhookState.DISABLED,
}


@dataclass(frozen=True)
class Webhook:
    """An endpoint of a brand and where its delivery stands."""

    webhook_id: str
    brand_id: str
    url: str
    state: WebhookState
    delivered_sequence: int  # the last claim the endpoint acknowledged with a 2xx
    max_claims_per_delivery: int
    created_at: datetime
    last_error: str
    next_attempt_at: datetime | None  # while FAILING


@dataclass(frozen=True)
class NewWebhookSecret:
    """A webhook with its signing secret ("whsec_..."), shown in this response only; left out of
    repr so logging the result cannot leak it."""

    webhook: Webhook
    secret: str = field(repr=False)


@dataclass(frozen=True)
class WebhookDelivery:
    """One attempt to POST a run of claims; `delivery_id` is the request's webhook-id header."""

    delivery_id: str
    first_sequence: int
    last_sequence: int
    attempt: int
    attempted_at: datetime
    http_status: int  # 0: no answer
    error: str
    duration: timedelta


@dataclass(frozen=True)
class WebhookDeliveryPage:
    """One page of attempts, newest first; `next_page_token` is empty on the last page."""

    deliveries: tuple[WebhookDelivery, ...]
    next_page_token: str


def webhook_stub(channel: grpc.Channel | grpc.aio.Channel) -> Any:
    """The generated WebhookService stub of a channel of either kind (the clients type its results)."""
    return webhook_pb_grpc.WebhookServiceStub(channel)  # type: ignore[no-untyped-call]


def _sequence(value: int | None, method: str) -> int | None:
    if value is not None and not 0 <= value < 2**64:
        raise invalid_field(f"after_sequence must be at least 0, got {value}", method, "after_sequence")
    return value


def create_request(
    brand_id: str, url: str, after_sequence: int | None, max_claims_per_delivery: int
) -> webhook_pb.CreateWebhookRequest:
    request = webhook_pb.CreateWebhookRequest(
        brand_id=brand_id, url=url, max_claims_per_delivery=max(max_claims_per_delivery, 0)
    )
    if _sequence(after_sequence, "CreateWebhook") is not None:
        request.after_sequence = after_sequence  # type: ignore[assignment]
    return request


def replay_request(webhook_id: str, after_sequence: int) -> webhook_pb.ReplayWebhookRequest:
    return webhook_pb.ReplayWebhookRequest(
        webhook_id=webhook_id, after_sequence=_sequence(after_sequence, "ReplayWebhook") or 0
    )


def deliveries_request(webhook_id: str, page_size: int, page_token: str) -> webhook_pb.ListWebhookDeliveriesRequest:
    return webhook_pb.ListWebhookDeliveriesRequest(
        webhook_id=webhook_id, page_size=max(page_size, 0), page_token=page_token
    )


def webhook_from_proto(message: webhook_pb.Webhook) -> Webhook:
    return Webhook(
        webhook_id=message.webhook_id,
        brand_id=message.brand_id,
        url=message.url,
        state=_STATE_FROM_PROTO.get(message.state, WebhookState.UNKNOWN),
        delivered_sequence=message.delivered_sequence,
        max_claims_per_delivery=message.max_claims_per_delivery,
        created_at=message.created_at.ToDatetime(tzinfo=UTC),
        last_error=message.last_error,
        next_attempt_at=message.next_attempt_at.ToDatetime(tzinfo=UTC) if message.HasField("next_attempt_at") else None,
    )


def new_secret(response: Any) -> NewWebhookSecret:
    """A CreateWebhookResponse or RotateWebhookSecretResponse."""
    return NewWebhookSecret(webhook=webhook_from_proto(response.webhook), secret=response.secret)


def webhooks(response: webhook_pb.ListWebhooksResponse) -> list[Webhook]:
    return [webhook_from_proto(w) for w in response.webhooks]


def delivery_page(response: webhook_pb.ListWebhookDeliveriesResponse) -> WebhookDeliveryPage:
    return WebhookDeliveryPage(
        deliveries=tuple(
            WebhookDelivery(
                delivery_id=d.delivery_id,
                first_sequence=d.first_sequence,
                last_sequence=d.last_sequence,
                attempt=d.attempt,
                attempted_at=d.attempted_at.ToDatetime(tzinfo=UTC),
                http_status=d.http_status,
                error=d.error,
                duration=d.duration.ToTimedelta(),
            )
            for d in response.deliveries
        ),
        next_page_token=response.next_page_token,
    )
