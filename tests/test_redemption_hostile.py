"""Hostile input to RedeemCode and CancelRedemption: hypothesis sends arbitrary strings (unicode, NUL,
very long), random credentials and random bytes as the body to one real `discount serve` process.

The only answers allowed are OK and the statuses of the contract (never INTERNAL or UNKNOWN), each
refusal with its ErrorInfo reason; afterwards the server is still SERVING, its log holds no traceback,
and the database holds exactly the redemptions the OK answers reported.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from google.rpc.error_details_pb2 import ErrorInfo
from grpc_status import rpc_status
from hypothesis import event, given
from hypothesis import strategies as st

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from tests.hostile_support import (
    HostileTarget,
    assert_serving_without_traceback,
    hostile_target,
    keys_of_every_role,
    send_raw_body,
)
from tests.support import Databases, claim_request, create_brand, generate_codes_sql, sql
from tests.test_hostile_input import EXAMPLES, bodies, mostly, nasty_text, printable_ascii

BRAND = "rx"
USERS = 20
# Each status a redemption call may answer, with the reasons it may carry.
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT: {"INVALID_FIELD"},
    grpc.StatusCode.NOT_FOUND: {"BRAND_NOT_FOUND", "CODE_NOT_FOUND", "REDEMPTION_NOT_FOUND"},
    grpc.StatusCode.FAILED_PRECONDITION: {
        "CODE_NOT_HELD_BY_USER",
        "CODE_EXPIRED",
        "CODE_ALREADY_REDEEMED",
        "REDEMPTION_CANCELLED",
    },
    grpc.StatusCode.UNAUTHENTICATED: {"UNAUTHENTICATED"},
    grpc.StatusCode.PERMISSION_DENIED: {"PERMISSION_DENIED"},
    # Many bad credentials from one address: the server's throttle on failed authentication.
    grpc.StatusCode.RESOURCE_EXHAUSTED: {"RATE_LIMITED"},
}


@dataclass
class Target(HostileTarget):
    codes: list[str]
    standing: dict[str, str] = field(default_factory=dict)  # code -> order of its standing redemption


@pytest.fixture(scope="module")
def target(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    url = databases.create()
    create_brand(url, BRAND)
    create_brand(url, "rx-other")
    generate_codes_sql(url, BRAND, USERS + 5)
    keys = keys_of_every_role(url, BRAND, "rx-other")
    log = tmp_path_factory.mktemp("redemption-hostile") / "server.log"
    with hostile_target(databases, url, log, keys) as (handle, channel):
        stub = pb_grpc.DiscountServiceStub(channel)
        md = (("x-api-key", keys["service"]),)
        codes = [stub.ClaimCode(claim_request(BRAND, f"user-{i}"), metadata=md).claim.code for i in range(USERS)]
        yield Target(handle, channel, stub, keys, codes)


@pytest.fixture
def checked(target: Target) -> Iterator[Target]:
    """After the test: still SERVING, no traceback logged, the standing redemptions as the OK calls left them."""
    yield target
    assert_serving_without_traceback(target.channel, target.handle)
    rows = sql(target.handle.database_url, "SELECT code, order_id FROM redemptions WHERE cancelled_at IS NULL")
    assert dict(rows) == target.standing


def answer(target: Target, method: str, request: object, credential: str | tuple[str, str]) -> object | None:
    """The reply, or None for a refusal whose status and reason the contract allows."""
    if isinstance(credential, tuple):
        md: tuple[tuple[str, str], ...] = (credential,)
    else:
        md = () if credential == "none" else (("x-api-key", target.keys[credential]),)
    try:
        reply = getattr(target.stub, method)(request, metadata=md, timeout=10)
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
        assert code in ALLOWED and status is not None, f"{code} {exc.details()} for {request!r}"[:2000]  # type: ignore[attr-defined]
        infos = [ErrorInfo() for d in status.details if d.Is(ErrorInfo.DESCRIPTOR)]
        for info, detail in zip(infos, [d for d in status.details if d.Is(ErrorInfo.DESCRIPTOR)], strict=True):
            detail.Unpack(info)
        assert [info.reason in ALLOWED[code] for info in infos] == [True], (code, infos)
        event(code.name)
        return None
    event("OK")
    return reply


codes_typed = st.integers(0, USERS - 1)
code_texts = mostly(st.sampled_from(["known", "known-lower"]), st.one_of(nasty_text, st.just("T-NOSUCHCODE")))
order_ids = mostly(st.builds(lambda n: f"order-{n}", st.integers(0, 30)), nasty_text)
brands = mostly(st.just(BRAND), st.one_of(st.sampled_from(["rx-other", "nope", BRAND.upper()]), nasty_text))
credentials = mostly(
    st.sampled_from(["admin", "service", "brand", "other-brand"]),
    st.one_of(st.just("none"), st.tuples(st.just("x-api-key"), printable_ascii)),
)


def the_code(target: Target, which: int, text: str) -> str:
    if text == "known":
        return target.codes[which]
    if text == "known-lower":
        return target.codes[which].lower()
    return text


@EXAMPLES
@given(brand=brands, which=codes_typed, text=code_texts, user=codes_typed, order=order_ids, credential=credentials)
def test_redeem_code_with_hostile_fields(
    checked: Target, brand: str, which: int, text: str, user: int, order: str, credential: str | tuple[str, str]
) -> None:
    code = the_code(checked, which, text)
    request = pb.RedeemCodeRequest(brand_id=brand, code=code, user_id=f"user-{user}", order_id=order)
    reply = answer(checked, "RedeemCode", request, credential)
    if isinstance(reply, pb.RedeemCodeResponse):
        assert (reply.redemption.brand_id, reply.redemption.order_id) == (brand, order)
        assert reply.redemption.code == checked.codes[which] and reply.redemption.user_id == f"user-{user}"
        assert checked.standing.get(reply.redemption.code, order) == order
        checked.standing[reply.redemption.code] = order


@EXAMPLES
@given(brand=brands, which=codes_typed, text=code_texts, order=order_ids, credential=credentials)
def test_cancel_redemption_with_hostile_fields(
    checked: Target, brand: str, which: int, text: str, order: str, credential: str | tuple[str, str]
) -> None:
    code = the_code(checked, which, text)
    request = pb.CancelRedemptionRequest(brand_id=brand, code=code, order_id=order)
    reply = answer(checked, "CancelRedemption", request, credential)
    if isinstance(reply, pb.CancelRedemptionResponse):
        assert reply.redemption.HasField("cancelled_at") and reply.redemption.order_id == order
        if checked.standing.get(reply.redemption.code) == order:
            del checked.standing[reply.redemption.code]


@EXAMPLES
@given(method=st.sampled_from(["RedeemCode", "CancelRedemption"]), body=bodies)
def test_random_bytes_as_the_request_body(checked: Target, method: str, body: bytes) -> None:
    md = (("x-api-key", checked.keys["admin"]),)
    reply = send_raw_body(checked, method, body, md, ALLOWED)
    if reply is None:
        return
    parsed = (pb.RedeemCodeResponse if method == "RedeemCode" else pb.CancelRedemptionResponse).FromString(reply)
    if method == "RedeemCode" and isinstance(parsed, pb.RedeemCodeResponse):
        r = parsed.redemption
        assert checked.standing.get(r.code, r.order_id) == r.order_id
        checked.standing[r.code] = r.order_id
    elif isinstance(parsed, pb.CancelRedemptionResponse):
        r = parsed.redemption
        if checked.standing.get(r.code) == r.order_id:
            del checked.standing[r.code]
