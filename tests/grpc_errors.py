"""Reading a refused call as any gRPC client does: its status and the details in its trailers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from google.protobuf.any_pb2 import Any as AnyDetail
from google.protobuf.message import Message
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo, RetryInfo
from grpc_status import rpc_status

DetailT = TypeVar("DetailT", bound=Message)


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    reason: str
    field: str
    message: str


def details(error: grpc.aio.AioRpcError) -> Sequence[AnyDetail]:
    """The details of the google.rpc.Status in the trailers (from_call checks that its code and
    message are the call's own)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    return status.details if status is not None else []


def unpacked(found: Sequence[AnyDetail], kind: type[DetailT]) -> DetailT | None:
    """The first detail of type `kind`, or None."""
    for detail in found:
        if detail.Is(kind.DESCRIPTOR):
            message = kind()
            detail.Unpack(message)
            return message
    return None


def refusal(error: grpc.aio.AioRpcError) -> Refusal:
    """The status code, the ErrorInfo reason (domain discount.v1), the first BadRequest field and
    the message of a refused call."""
    found = details(error)
    info, bad = unpacked(found, ErrorInfo), unpacked(found, BadRequest)
    assert info is None or info.domain == "discount.v1", info
    field = bad.field_violations[0].field if bad is not None else ""
    return Refusal(error.code(), info.reason if info is not None else "", field, error.details() or "")


def refusal_with_retry_delay(error: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, float | None]:
    """The status code, the ErrorInfo reason and the RetryInfo delay (None without one), as any
    gRPC client reads them."""
    found = details(error)
    info, retry = unpacked(found, ErrorInfo), unpacked(found, RetryInfo)
    delay = retry.retry_delay.ToNanoseconds() / 1e9 if retry is not None else None
    return error.code(), info.reason if info is not None else "", delay
