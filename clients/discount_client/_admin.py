"""What the sync and async clients share for `discount.v1.AdminService`: result types, requests
and protobuf conversion. Every admin call needs an admin key."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import grpc

from discount.v1 import admin_service_pb2 as admin_pb
from discount.v1 import admin_service_pb2_grpc as admin_pb_grpc

from ._common import invalid_field

ADMIN_SERVICE_NAME = "discount.v1.AdminService"


class Role(StrEnum):
    """What an API key may do."""

    ADMIN = "admin"  # everything, including AdminService
    BRAND = "brand"  # GenerateCodes, WatchClaims, GetBrandStats of its own brand
    SERVICE = "service"  # ClaimCode for any brand
    UNKNOWN = "unknown"  # a role this client does not know (sent by a newer server); cannot be created


_ROLE_TO_PROTO = {Role.ADMIN: admin_pb.ROLE_ADMIN, Role.BRAND: admin_pb.ROLE_BRAND, Role.SERVICE: admin_pb.ROLE_SERVICE}
_ROLE_FROM_PROTO = {value: role for role, value in _ROLE_TO_PROTO.items()}


@dataclass(frozen=True)
class Brand:
    """A brand: its id (used in every call), its name and when it was created."""

    brand_id: str
    display_name: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    """An API key as listed: never its secret. `brand_id` is set for brand keys only;
    `revoked_at` is None while the key works."""

    key_id: str
    role: Role
    brand_id: str | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewApiKey:
    """A key just created, with its secret (to send as `x-api-key`). The server shows the secret
    this once and keeps only a digest; it is left out of repr so logging the result cannot leak it."""

    key: ApiKey
    secret: str = field(repr=False)


@dataclass(frozen=True)
class BrandPage:
    """One page of brands in brand_id order; `next_page_token` is empty on the last page."""

    brands: tuple[Brand, ...]
    next_page_token: str


@dataclass(frozen=True)
class ApiKeyPage:
    """One page of keys in key_id order; `next_page_token` is empty on the last page."""

    keys: tuple[ApiKey, ...]
    next_page_token: str


def admin_stub(channel: grpc.Channel | grpc.aio.Channel) -> Any:
    """The generated AdminService stub of a channel of either kind (the clients type its results)."""
    return admin_pb_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]


def _page_size(value: int, method: str) -> int:
    if not 0 <= value < 2**32:
        raise invalid_field(f"page_size must be between 0 and 1,000 (0 means 100), got {value}", method, "page_size")
    return value


def list_brands_request(page_size: int, page_token: str) -> admin_pb.ListBrandsRequest:
    return admin_pb.ListBrandsRequest(page_size=_page_size(page_size, "ListBrands"), page_token=page_token)


def list_api_keys_request(brand_id: str | None, page_size: int, page_token: str) -> admin_pb.ListApiKeysRequest:
    return admin_pb.ListApiKeysRequest(
        brand_id=brand_id or "", page_size=_page_size(page_size, "ListApiKeys"), page_token=page_token
    )


def create_api_key_request(role: Role | str, brand_id: str | None) -> admin_pb.CreateApiKeyRequest:
    try:
        value = _ROLE_TO_PROTO[Role(role)]
    except (ValueError, KeyError):
        raise invalid_field(
            f"role must be 'admin', 'brand' or 'service', got {role!r}", "CreateApiKey", "role"
        ) from None
    return admin_pb.CreateApiKeyRequest(role=value, brand_id=brand_id or "")


def brand_from_proto(message: admin_pb.Brand) -> Brand:
    return Brand(
        brand_id=message.brand_id,
        display_name=message.display_name,
        created_at=message.created_at.ToDatetime(tzinfo=UTC),
    )


def api_key_from_proto(message: admin_pb.ApiKey) -> ApiKey:
    return ApiKey(
        key_id=message.key_id,
        role=_ROLE_FROM_PROTO.get(message.role, Role.UNKNOWN),
        brand_id=message.brand_id or None,
        created_at=message.created_at.ToDatetime(tzinfo=UTC),
        revoked_at=message.revoked_at.ToDatetime(tzinfo=UTC) if message.HasField("revoked_at") else None,
    )


def brand_page(response: admin_pb.ListBrandsResponse) -> BrandPage:
    return BrandPage(
        brands=tuple(brand_from_proto(b) for b in response.brands), next_page_token=response.next_page_token
    )


def api_key_page(response: admin_pb.ListApiKeysResponse) -> ApiKeyPage:
    return ApiKeyPage(
        keys=tuple(api_key_from_proto(k) for k in response.keys), next_page_token=response.next_page_token
    )


def new_api_key(response: admin_pb.CreateApiKeyResponse) -> NewApiKey:
    return NewApiKey(key=api_key_from_proto(response.key), secret=response.secret)
