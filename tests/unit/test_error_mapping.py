"""The error contract end to end without a network: a domain error becomes one gRPC status with
ErrorInfo (and BadRequest for a field) in the server (call_handling.status_for / Failure), and the
client turns exactly those trailers back into the exception a caller catches
(discount_client.errors.from_rpc_error). Statuses that gRPC makes on its own are mapped by code."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo
from grpc_status import rpc_status

from discount_client import errors as client_errors
from discount_service import errors
from discount_service.call_handling import Failure, status_for

Code = grpc.StatusCode


def received(code: Code, details: str | None, trailing: tuple[tuple[str, bytes], ...] = ()) -> grpc.aio.AioRpcError:
    """The error a client's call raises for a status with these details and trailers."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


def over_the_wire(failure: Failure) -> grpc.aio.AioRpcError:
    """What the client receives when the server aborts with `failure` (Failure.abort sends these)."""
    status = rpc_status.to_status(failure.status())
    return received(status.code, status.details, status.trailing_metadata)


def details_of(failure: Failure) -> tuple[ErrorInfo, list[BadRequest.FieldViolation]]:
    infos, violations = [], []
    for detail in failure.status().details:
        info, request = ErrorInfo(), BadRequest()
        if detail.Unpack(info):
            infos.append(info)
        elif detail.Unpack(request):
            violations.extend(request.field_violations)
    assert len(infos) == 1
    return infos[0], violations


@pytest.mark.parametrize(
    ("error", "code", "reason", "field"),
    [
        (errors.InvalidArgument("email is required", field="email"), Code.INVALID_ARGUMENT, "INVALID_FIELD", "email"),
        (errors.NotFound("brand 'acme' does not exist"), Code.NOT_FOUND, "BRAND_NOT_FOUND", ""),
        (errors.AlreadyExists("brand 'acme' already exists"), Code.ALREADY_EXISTS, "BRAND_ALREADY_EXISTS", ""),
        (errors.NoCodesLeft("brand 'acme' has no codes left"), Code.RESOURCE_EXHAUSTED, "NO_CODES_LEFT", ""),
        (errors.FailedPrecondition("the brand is disabled"), Code.FAILED_PRECONDITION, "FAILED_PRECONDITION", ""),
        (
            errors.IdempotencyKeyReused("request_id 'r1' was used with count 5", field="count"),
            Code.FAILED_PRECONDITION,
            "IDEMPOTENCY_KEY_REUSED",
            "count",
        ),
        (errors.Unauthenticated("missing credentials"), Code.UNAUTHENTICATED, "UNAUTHENTICATED", ""),
        (errors.PermissionDenied("brand keys may not claim"), Code.PERMISSION_DENIED, "PERMISSION_DENIED", ""),
        (errors.Unavailable("the database is unreachable"), Code.UNAVAILABLE, "DATABASE_UNAVAILABLE", ""),
        (errors.NotFound("key 'k1' does not exist", reason="KEY_NOT_FOUND"), Code.NOT_FOUND, "KEY_NOT_FOUND", ""),
    ],
)
def test_each_domain_error_answers_with_its_status_reason_and_field(
    error: errors.DiscountError, code: Code, reason: str, field: str
) -> None:
    failure = status_for("ClaimCode", error)
    assert (failure.code, failure.message, failure.reason, failure.field) == (code, str(error), reason, field)
    info, violations = details_of(failure)
    assert (info.domain, info.reason) == ("discount.v1", reason)
    # A bad request, or any failure about a field, names the field in BadRequest; nothing else does.
    if field or code is Code.INVALID_ARGUMENT:
        assert [(v.field, v.description, v.reason) for v in violations] == [(field, str(error), reason)]
    else:
        assert violations == []


def test_metadata_travels_in_error_info() -> None:
    failure = status_for("ClaimCode", errors.NoCodesLeft("no codes left", metadata={"brand_id": "acme"}))
    info, _ = details_of(failure)
    assert dict(info.metadata) == {"brand_id": "acme"}


SERVER_ERRORS = [
    errors.InvalidArgument("user_id is required", field="user_id"),
    errors.NotFound("brand 'acme' does not exist", metadata={"brand_id": "acme"}),
    errors.AlreadyExists("brand 'acme' already exists", metadata={"brand_id": "acme"}),
    errors.NoCodesLeft("brand 'acme' has no codes left", metadata={"brand_id": "acme"}),
    errors.FailedPrecondition("the brand is disabled"),
    errors.IdempotencyKeyReused("request_id 'r1' was used with count 5", field="count"),
    errors.Unauthenticated("the API key is not valid"),
    errors.PermissionDenied("a brand key may only read its own brand"),
    errors.Unavailable("the database is unreachable; retry later"),
]


@pytest.mark.parametrize("error", SERVER_ERRORS, ids=lambda error: type(error).__name__)
def test_a_domain_error_reaches_the_client_as_the_exception_of_the_same_name(error: errors.DiscountError) -> None:
    failure = status_for("GenerateCodes", error)
    caught = client_errors.from_rpc_error(over_the_wire(failure), "GenerateCodes")
    assert type(caught).__name__ == type(error).__name__
    assert (caught.message, str(caught), caught.code, caught.method) == (
        str(error),
        str(error),
        failure.code.name,
        "GenerateCodes",
    )
    assert (caught.reason, caught.field, caught.metadata) == (error.reason, getattr(error, "field", ""), error.metadata)


def test_a_reused_request_id_is_caught_as_a_failed_precondition_too() -> None:
    failure = status_for("GenerateCodes", errors.IdempotencyKeyReused("request_id reused", field="prefix"))
    caught = client_errors.from_rpc_error(over_the_wire(failure), "GenerateCodes")
    assert isinstance(caught, client_errors.FailedPrecondition)
    assert repr(caught) == (
        "IdempotencyKeyReused('request_id reused', code='FAILED_PRECONDITION', method='GenerateCodes', "
        "reason='IDEMPOTENCY_KEY_REUSED', field='prefix')"
    )


def test_a_call_past_its_deadline_is_deadline_exceeded() -> None:
    failure = status_for("ClaimCode", TimeoutError())
    assert (failure.code, failure.message, failure.reason) == (
        Code.DEADLINE_EXCEEDED,
        "ClaimCode did not finish within its deadline",
        "DEADLINE_EXCEEDED",
    )
    caught = client_errors.from_rpc_error(over_the_wire(failure), "ClaimCode")
    assert type(caught) is client_errors.DeadlineExceeded


def test_an_unexpected_error_is_internal_logged_in_full_and_not_shown(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="discount_service.servicer"):
        failure = status_for("ClaimCode", RuntimeError("password=hunter2 in a bad place"))
    assert (failure.code, failure.message, failure.reason) == (
        Code.INTERNAL,
        "internal error; it has been logged",
        "INTERNAL",
    )
    assert "hunter2" not in str(failure.status())
    [record] = caplog.records
    assert (record.levelname, record.getMessage()) == ("ERROR", "ClaimCode failed")
    assert record.exc_info is not None and "hunter2" in str(record.exc_info[1])
    caught = client_errors.from_rpc_error(over_the_wire(failure), "ClaimCode")
    assert (type(caught), caught.code, caught.reason) == (client_errors.DiscountError, "INTERNAL", "INTERNAL")


# -- statuses the client gets without the service's details -------------------------------------


@pytest.mark.parametrize(
    ("code", "details", "expected"),
    [
        (Code.UNAVAILABLE, "failed to connect to all addresses", client_errors.Unavailable),
        (Code.DEADLINE_EXCEEDED, "Deadline Exceeded", client_errors.DeadlineExceeded),
        (Code.UNAUTHENTICATED, "no credentials", client_errors.Unauthenticated),
        (
            Code.RESOURCE_EXHAUSTED,
            "Received message larger than max (1048602 vs. 1048576)",
            client_errors.RequestTooLarge,
        ),
        (Code.RESOURCE_EXHAUSTED, "Sent message larger than max (2000000 vs. 1048576)", client_errors.RequestTooLarge),
        # Only the service's NO_CODES_LEFT reason means no codes left: a proxy's quota is not that.
        (Code.RESOURCE_EXHAUSTED, "quota exceeded", client_errors.DiscountError),
        (Code.UNIMPLEMENTED, "Method not found!", client_errors.DiscountError),
    ],
)
def test_statuses_made_by_grpc_itself_map_by_code(code: Code, details: str, expected: type[Exception]) -> None:
    caught = client_errors.from_rpc_error(received(code, details), "ClaimCode")
    assert type(caught) is expected
    assert (caught.message, caught.code, caught.reason, caught.field) == (details, code.name, "", "")


def test_a_status_without_a_message_says_which_call_failed() -> None:
    caught = client_errors.from_rpc_error(received(Code.UNAVAILABLE, None), "WatchClaims")
    assert (type(caught), str(caught)) == (client_errors.Unavailable, "WatchClaims failed with UNAVAILABLE")


def test_a_reason_from_another_domain_is_not_interpreted() -> None:
    status = Failure(Code.RESOURCE_EXHAUSTED, "rate limited", "NO_CODES_LEFT").status()
    status.ClearField("details")
    status.details.add().Pack(ErrorInfo(reason="NO_CODES_LEFT", domain="gateway.example"))
    sent = rpc_status.to_status(status)
    caught = client_errors.from_rpc_error(received(sent.code, sent.details, sent.trailing_metadata), "ClaimCode")
    assert (type(caught), caught.reason) == (client_errors.DiscountError, "")


def test_a_reason_this_client_does_not_know_yet_maps_by_status() -> None:
    failure = Failure(Code.NOT_FOUND, "key 'k1' does not exist", "KEY_NOT_FOUND")
    caught = client_errors.from_rpc_error(over_the_wire(failure), "RevokeApiKey")
    assert (type(caught), caught.reason) == (client_errors.NotFound, "KEY_NOT_FOUND")


def test_details_that_describe_another_status_are_ignored() -> None:
    stale = rpc_status.to_status(status_for("ClaimCode", errors.NoCodesLeft("no codes left")).status())
    caught = client_errors.from_rpc_error(
        received(Code.UNAVAILABLE, "connection reset", stale.trailing_metadata), "ClaimCode"
    )
    assert (type(caught), caught.reason, str(caught)) == (client_errors.Unavailable, "", "connection reset")
