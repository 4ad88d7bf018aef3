"""gRPC transport of `discount.v1.AdminService`: protobuf <-> the calls of admin_service.py.

Calls are handled like DiscountService's (call_handling.CallHandling): the credential, the deadline,
the one mapping of errors to statuses with their details, one log line and metric per call, and
lenient parsers, so an unparsable body is INVALID_ARGUMENT. The secret of a new key is in the
CreateApiKey response only: it is never logged (the call's log line holds no field values).
"""

from __future__ import annotations

from typing import Any

import grpc

from discount.v1 import admin_service_pb2 as pb

from .admin_service import AdminService
from .auth import Authenticator
from .call_handling import CallHandling, CallObserver, Context, lenient_unary_handlers
from .encoding import timestamp_proto
from .models import ApiKeyInfo, Brand, Principal, Role

ADMIN_SERVICE_NAME = "discount.v1.AdminService"

_ROLE_FROM_PROTO = {pb.ROLE_ADMIN: Role.ADMIN, pb.ROLE_BRAND: Role.BRAND, pb.ROLE_SERVICE: Role.SERVICE}
_ROLE_TO_PROTO = {role: value for value, role in _ROLE_FROM_PROTO.items()}


def brand_to_proto(brand: Brand) -> pb.Brand:
    return pb.Brand(brand_id=brand.brand_id, display_name=brand.name, created_at=timestamp_proto(brand.created_at))


def api_key_to_proto(key: ApiKeyInfo) -> pb.ApiKey:
    message = pb.ApiKey(
        key_id=key.key_id,
        role=_ROLE_TO_PROTO[key.role],
        brand_id=key.brand_id or "",
        created_at=timestamp_proto(key.created_at),
    )
    if key.revoked_at is not None:
        message.revoked_at.CopyFrom(timestamp_proto(key.revoked_at))
    return message


class AdminServicer(CallHandling):
    def __init__(
        self,
        admin: AdminService,
        authenticator: Authenticator,
        *,
        default_timeout: float = 30.0,
        observe: CallObserver | None = None,
    ) -> None:
        super().__init__(authenticator, default_timeout=default_timeout, observe=observe)
        self._admin = admin

    async def CreateBrand(self, request: Any, context: Context) -> pb.CreateBrandResponse:
        async def handle(principal: Principal) -> pb.CreateBrandResponse:
            brand = await self._admin.create_brand(
                principal, brand_id=request.brand_id, display_name=request.display_name
            )
            return pb.CreateBrandResponse(brand=brand_to_proto(brand))

        return await self._unary("CreateBrand", request, context, handle)

    async def ListBrands(self, request: Any, context: Context) -> pb.ListBrandsResponse:
        async def handle(principal: Principal) -> pb.ListBrandsResponse:
            page = await self._admin.list_brands(principal, page_size=request.page_size, page_token=request.page_token)
            return pb.ListBrandsResponse(
                brands=[brand_to_proto(b) for b in page.items], next_page_token=page.next_page_token
            )

        return await self._unary("ListBrands", request, context, handle)

    async def CreateApiKey(self, request: Any, context: Context) -> pb.CreateApiKeyResponse:
        async def handle(principal: Principal) -> pb.CreateApiKeyResponse:
            # An unset or unknown enum value (proto3 enums are open) is no role: the domain refuses it.
            role = _ROLE_FROM_PROTO.get(request.role)
            created = await self._admin.create_api_key(principal, role=role, brand_id=request.brand_id)
            return pb.CreateApiKeyResponse(key=api_key_to_proto(created.key), secret=created.secret)

        return await self._unary("CreateApiKey", request, context, handle)

    async def RevokeApiKey(self, request: Any, context: Context) -> pb.RevokeApiKeyResponse:
        async def handle(principal: Principal) -> pb.RevokeApiKeyResponse:
            key = await self._admin.revoke_api_key(principal, key_id=request.key_id)
            return pb.RevokeApiKeyResponse(key=api_key_to_proto(key))

        return await self._unary("RevokeApiKey", request, context, handle)

    async def ListApiKeys(self, request: Any, context: Context) -> pb.ListApiKeysResponse:
        async def handle(principal: Principal) -> pb.ListApiKeysResponse:
            page = await self._admin.list_api_keys(
                principal, brand_id=request.brand_id, page_size=request.page_size, page_token=request.page_token
            )
            return pb.ListApiKeysResponse(
                keys=[api_key_to_proto(k) for k in page.items], next_page_token=page.next_page_token
            )

        return await self._unary("ListApiKeys", request, context, handle)


def add_admin_to_server(servicer: AdminServicer, server: grpc.aio.Server) -> None:
    """Registers AdminService with lenient request parsers (see call_handling.MalformedRequest)."""
    handlers = lenient_unary_handlers(
        {
            "CreateBrand": (servicer.CreateBrand, pb.CreateBrandRequest, pb.CreateBrandResponse),
            "ListBrands": (servicer.ListBrands, pb.ListBrandsRequest, pb.ListBrandsResponse),
            "CreateApiKey": (servicer.CreateApiKey, pb.CreateApiKeyRequest, pb.CreateApiKeyResponse),
            "RevokeApiKey": (servicer.RevokeApiKey, pb.RevokeApiKeyRequest, pb.RevokeApiKeyResponse),
            "ListApiKeys": (servicer.ListApiKeys, pb.ListApiKeysRequest, pb.ListApiKeysResponse),
        }
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADMIN_SERVICE_NAME, handlers),))
