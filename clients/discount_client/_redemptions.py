"""RedeemCode and CancelRedemption: the requests and the typed results both clients return."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from discount.v1 import discount_service_pb2 as pb


@dataclass(frozen=True)
class Redemption:
    """A claimed code used on an order. `cancelled_at` is None while the redemption stands."""

    brand_id: str
    code: str
    user_id: str
    order_id: str
    redeemed_at: datetime
    cancelled_at: datetime | None


@dataclass(frozen=True)
class RedeemResult:
    """The order's redemption; `newly_redeemed` is False if the same order had redeemed the code before."""

    redemption: Redemption
    newly_redeemed: bool


def redemption_from_proto(message: pb.Redemption) -> Redemption:
    return Redemption(
        brand_id=message.brand_id,
        code=message.code,
        user_id=message.user_id,
        order_id=message.order_id,
        redeemed_at=message.redeemed_at.ToDatetime(tzinfo=UTC),
        cancelled_at=message.cancelled_at.ToDatetime(tzinfo=UTC) if message.HasField("cancelled_at") else None,
    )


def redeem_result(response: pb.RedeemCodeResponse) -> RedeemResult:
    return RedeemResult(redemption=redemption_from_proto(response.redemption), newly_redeemed=response.newly_redeemed)


def cancel_result(response: pb.CancelRedemptionResponse) -> Redemption:
    return redemption_from_proto(response.redemption)
