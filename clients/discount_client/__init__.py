"""A typed client for the discount service (`discount.v1.DiscountService`).

    from discount_client import DiscountClient, NoCodesLeft

    with DiscountClient("discount:50051", api_key) as client:
        try:
            code = client.claim_code("acme", user_id, email).claim.code
        except NoCodesLeft:
            ...

`AsyncDiscountClient` is the same for asyncio. With an admin key both also manage brands and API
keys (`discount.v1.AdminService`). See README.md, "Python client", and docs/admin.md.
"""

from ._admin import ApiKey, ApiKeyPage, Brand, BrandPage, NewApiKey, Role
from ._common import (
    DEFAULT_ADDRESS,
    DEFAULT_DEADLINE_SECONDS,
    BrandStats,
    Claim,
    ClaimResult,
    GenerateResult,
    RetryPolicy,
    WatchBackoff,
)
from ._redemptions import RedeemResult, Redemption
from ._webhooks import NewWebhookSecret, Webhook, WebhookDelivery, WebhookDeliveryPage, WebhookState
from .aio import AsyncDiscountClient
from .client import DiscountClient
from .errors import (
    AlreadyExists,
    CodeAlreadyRedeemed,
    CodeExpired,
    CodeNotFound,
    CodeNotHeldByUser,
    DeadlineExceeded,
    DiscountError,
    FailedPrecondition,
    IdempotencyKeyReused,
    InvalidArgument,
    NoCodesLeft,
    NotFound,
    Overloaded,
    PermissionDenied,
    RateLimited,
    RedemptionCancelled,
    RedemptionNotFound,
    RequestTooLarge,
    Unauthenticated,
    Unavailable,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_DEADLINE_SECONDS",
    "ApiKey",
    "ApiKeyPage",
    "Brand",
    "BrandPage",
    "NewApiKey",
    "Role",
    "AlreadyExists",
    "AsyncDiscountClient",
    "BrandStats",
    "Claim",
    "ClaimResult",
    "DeadlineExceeded",
    "DiscountClient",
    "DiscountError",
    "FailedPrecondition",
    "IdempotencyKeyReused",
    "GenerateResult",
    "InvalidArgument",
    "NoCodesLeft",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "RateLimited",
    "RequestTooLarge",
    "RetryPolicy",
    "Unauthenticated",
    "Unavailable",
    "WatchBackoff",
    "CodeAlreadyRedeemed",
    "CodeExpired",
    "CodeNotFound",
    "CodeNotHeldByUser",
    "RedeemResult",
    "Redemption",
    "RedemptionCancelled",
    "RedemptionNotFound",
    "NewWebhookSecret",
    "Webhook",
    "WebhookDelivery",
    "WebhookDeliveryPage",
    "WebhookState",
]
