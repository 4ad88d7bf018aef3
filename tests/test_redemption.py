"""RedeemCode and CancelRedemption through a real server: every error of the contract's table, the
order its checks run in, idempotent repeats, case, stats and who may call."""

from __future__ import annotations

import asyncio
import unicodedata

import grpc
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from tests.grpc_errors import Refusal, refusal
from tests.support import ServerHandle, claim_request, create_brand, create_key, generate_codes_sql, sql

pytestmark = pytest.mark.both_engines  # PostgreSQL and Citus (tests/conftest.py)


class Shop:
    """A brand with codes, a service key, and calls that answer a reply or a Refusal."""

    def __init__(self, server: ServerHandle, stub: pb_grpc.DiscountServiceStub, brand: str = "acme") -> None:
        self.server, self.stub, self.brand = server, stub, brand
        self.key = create_key(server.database_url, "service")

    async def claim(self, user: str) -> str:
        reply = await self.stub.ClaimCode(claim_request(self.brand, user), metadata=self.server.metadata(self.key))
        return str(reply.claim.code)

    async def redeem(
        self, code: str, user: str, order: str, *, brand: str | None = None, key: str | None = None
    ) -> pb.RedeemCodeResponse | Refusal:
        request = pb.RedeemCodeRequest(
            brand_id=self.brand if brand is None else brand, code=code, user_id=user, order_id=order
        )
        try:
            return await self.stub.RedeemCode(request, metadata=self.server.metadata(key or self.key))
        except grpc.aio.AioRpcError as exc:
            return refusal(exc)

    async def cancel(
        self, code: str, order: str, *, brand: str | None = None, key: str | None = None
    ) -> pb.CancelRedemptionResponse | Refusal:
        request = pb.CancelRedemptionRequest(brand_id=self.brand if brand is None else brand, code=code, order_id=order)
        try:
            return await self.stub.CancelRedemption(request, metadata=self.server.metadata(key or self.key))
        except grpc.aio.AioRpcError as exc:
            return refusal(exc)

    async def stats(self) -> pb.GetBrandStatsResponse:
        request = pb.GetBrandStatsRequest(brand_id=self.brand)
        return await self.stub.GetBrandStats(request, metadata=self.server.metadata())

    def expire(self, code: str) -> None:
        """Puts the code's expiry in the past, as time passing would."""
        for table in ("codes", "claims"):
            sql(
                self.server.database_url,
                f"UPDATE {table} SET expires_at = now() - interval '1 second' WHERE code = %s",
                (code,),
            )


def failed(reply: object, code: grpc.StatusCode, reason: str, field: str = "") -> Refusal:
    assert isinstance(reply, Refusal), reply
    assert (reply.code, reply.reason, reply.field) == (code, reason, field), reply
    return reply


FP = grpc.StatusCode.FAILED_PRECONDITION
NF = grpc.StatusCode.NOT_FOUND


@pytest.fixture
async def shop(server: ServerHandle):  # type: ignore[no-untyped-def]
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 20)
    channel, stub = server.aio_stub()
    async with channel:
        yield Shop(server, stub)


async def test_redeem_records_the_order_and_a_repeat_returns_it_unchanged(shop: Shop) -> None:
    code = await shop.claim("alice")
    first = await shop.redeem(code, "alice", "order-1")
    assert isinstance(first, pb.RedeemCodeResponse)
    assert first.newly_redeemed is True
    r = first.redemption
    assert (r.brand_id, r.code, r.user_id, r.order_id) == ("acme", code, "alice", "order-1")
    assert r.redeemed_at.seconds > 0 and not r.HasField("cancelled_at")
    again = await shop.redeem(code, "alice", "order-1")
    assert isinstance(again, pb.RedeemCodeResponse)
    assert again.newly_redeemed is False
    assert again.redemption == first.redemption
    rows = sql(shop.server.database_url, "SELECT code, order_id, user_id, cancelled_at FROM redemptions")
    assert rows == [(code, "order-1", "alice", None)]


async def test_the_code_matches_without_regard_to_case(shop: Shop) -> None:
    code = await shop.claim("alice")
    reply = await shop.redeem(code.lower(), "alice", "order-1")
    assert isinstance(reply, pb.RedeemCodeResponse) and reply.newly_redeemed
    assert reply.redemption.code == code  # as it was handed out
    again = await shop.redeem(code.swapcase().title(), "alice", "order-1")
    assert isinstance(again, pb.RedeemCodeResponse) and not again.newly_redeemed
    cancelled = await shop.cancel(code.lower(), "order-1")
    assert isinstance(cancelled, pb.CancelRedemptionResponse)
    assert cancelled.redemption.code == code and cancelled.redemption.HasField("cancelled_at")


async def test_order_id_is_compared_in_nfc(shop: Shop) -> None:
    code = await shop.claim("alice")
    composed = unicodedata.normalize("NFC", "commande-é")
    first = await shop.redeem(code, "alice", unicodedata.normalize("NFD", "commande-é"))
    assert isinstance(first, pb.RedeemCodeResponse) and first.redemption.order_id == composed
    again = await shop.redeem(code, "alice", composed)
    assert isinstance(again, pb.RedeemCodeResponse) and again.newly_redeemed is False


async def test_cancel_is_idempotent_blocks_its_order_and_frees_the_code_for_a_new_one(shop: Shop) -> None:
    code = await shop.claim("alice")
    redeemed = await shop.redeem(code, "alice", "order-1")
    assert isinstance(redeemed, pb.RedeemCodeResponse)
    first = await shop.cancel(code, "order-1")
    assert isinstance(first, pb.CancelRedemptionResponse)
    assert first.redemption.HasField("cancelled_at")
    assert first.redemption.redeemed_at == redeemed.redemption.redeemed_at
    assert (first.redemption.user_id, first.redemption.order_id) == ("alice", "order-1")
    second = await shop.cancel(code, "order-1")
    assert isinstance(second, pb.CancelRedemptionResponse)
    assert second.redemption.cancelled_at == first.redemption.cancelled_at
    # A late retry of the cancelled checkout must not silently use the code again.
    failed(await shop.redeem(code, "alice", "order-1"), FP, "REDEMPTION_CANCELLED")
    fresh = await shop.redeem(code, "alice", "order-2")
    assert isinstance(fresh, pb.RedeemCodeResponse) and fresh.newly_redeemed
    failed(await shop.redeem(code, "alice", "order-3"), FP, "CODE_ALREADY_REDEEMED")
    failed(await shop.redeem(code, "alice", "order-1"), FP, "REDEMPTION_CANCELLED")


async def test_every_refusal_of_the_table(shop: Shop) -> None:
    alice_code = await shop.claim("alice")
    bob_code = await shop.claim("bob")
    unclaimed = sql(shop.server.database_url, "SELECT code FROM codes WHERE NOT claimed LIMIT 1")[0][0]
    failed(await shop.redeem(alice_code, "alice", "o", brand="nope"), NF, "BRAND_NOT_FOUND")
    failed(await shop.cancel(alice_code, "o", brand="nope"), NF, "BRAND_NOT_FOUND")
    failed(await shop.redeem("T-NOSUCHCODE", "alice", "o"), NF, "CODE_NOT_FOUND")
    failed(await shop.cancel("T-NOSUCHCODE", "o"), NF, "CODE_NOT_FOUND")
    # Unclaimed and claimed by someone else: one answer, and the message never names the holder.
    free = failed(await shop.redeem(unclaimed, "alice", "o"), FP, "CODE_NOT_HELD_BY_USER")
    held = failed(await shop.redeem(bob_code, "alice", "o"), FP, "CODE_NOT_HELD_BY_USER")
    assert free.message == held.message and "bob" not in held.message
    assert (await shop.redeem(alice_code, "alice", "o-1")).newly_redeemed  # type: ignore[union-attr]
    taken = failed(await shop.redeem(alice_code, "alice", "o-2"), FP, "CODE_ALREADY_REDEEMED")
    assert "o-1" not in taken.message
    failed(await shop.cancel(alice_code, "o-2"), NF, "REDEMPTION_NOT_FOUND")
    failed(await shop.cancel(bob_code, "o-1"), NF, "REDEMPTION_NOT_FOUND")
    shop.expire(bob_code)
    failed(await shop.redeem(bob_code, "bob", "o-3"), FP, "CODE_EXPIRED")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("brand_id", ""),
        ("code", ""),
        ("code", "A" * 65),
        ("code", "AB\x00C"),
        ("user_id", ""),
        ("user_id", " alice"),
        ("order_id", ""),
        ("order_id", "o" * 129),
        ("order_id", " order-1"),
        ("order_id", "order\u200b1"),
        ("order_id", "order\x071"),
    ],
)
async def test_bad_fields_are_invalid_field_naming_the_field(shop: Shop, field: str, value: str) -> None:
    code = await shop.claim("alice")
    request = {"brand": "acme", "code": code, "user": "alice", "order": "order-1"}
    request[{"brand_id": "brand", "code": "code", "user_id": "user", "order_id": "order"}[field]] = value
    redeem = await shop.redeem(request["code"], request["user"], request["order"], brand=request["brand"])
    failed(redeem, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", field)
    if field != "user_id":
        cancel = await shop.cancel(request["code"], request["order"], brand=request["brand"])
        failed(cancel, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", field)
    assert sql(shop.server.database_url, "SELECT count(*) FROM redemptions") == [(0,)]


async def test_limits_are_inclusive(shop: Shop) -> None:
    code = await shop.claim("alice")
    long_order = "o" * 128
    reply = await shop.redeem(code, "alice", long_order)
    assert isinstance(reply, pb.RedeemCodeResponse) and reply.redemption.order_id == long_order
    failed(await shop.redeem("A" * 64, "alice", "o"), NF, "CODE_NOT_FOUND")


async def test_checks_run_in_the_contract_order(shop: Shop) -> None:
    create_brand(shop.server.database_url, "globex")
    globex_key = create_key(shop.server.database_url, "brand", "globex")
    alice_code = await shop.claim("alice")
    bob_code = await shop.claim("bob")
    # fields before the key; the key before the brand; the brand before the code.
    failed(
        await shop.redeem("", "alice", "o", key=globex_key), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FIELD", "code"
    )
    failed(
        await shop.redeem(alice_code, "alice", "o", brand="nope", key=globex_key),
        grpc.StatusCode.PERMISSION_DENIED,
        "PERMISSION_DENIED",
    )
    failed(await shop.redeem("T-NOSUCHCODE", "alice", "o", brand="nope"), NF, "BRAND_NOT_FOUND")
    # the code's existence before who holds it
    failed(await shop.redeem("T-NOSUCHCODE", "nobody", "o"), NF, "CODE_NOT_FOUND")
    # who holds it before the order's own redemption: another user cannot read alice's order
    assert isinstance(await shop.redeem(alice_code, "alice", "o-a"), pb.RedeemCodeResponse)
    failed(await shop.redeem(alice_code, "bob", "o-a"), FP, "CODE_NOT_HELD_BY_USER")
    # the order's own redemption before expiry: a standing one is returned as it is, even past expiry
    shop.expire(alice_code)
    kept = await shop.redeem(alice_code, "alice", "o-a")
    assert isinstance(kept, pb.RedeemCodeResponse) and kept.newly_redeemed is False
    # expiry before another order's standing redemption
    failed(await shop.redeem(alice_code, "alice", "o-b"), FP, "CODE_EXPIRED")
    # the order's cancelled redemption before expiry
    assert isinstance(await shop.cancel(alice_code, "o-a"), pb.CancelRedemptionResponse)
    failed(await shop.redeem(alice_code, "alice", "o-a"), FP, "REDEMPTION_CANCELLED")
    # holding before expiry: an expired code of someone else's is still not held
    shop.expire(bob_code)
    failed(await shop.redeem(bob_code, "alice", "o-c"), FP, "CODE_NOT_HELD_BY_USER")
    # cancel: the code's existence before the redemption's
    failed(await shop.cancel("T-NOSUCHCODE", "o-a"), NF, "CODE_NOT_FOUND")
    failed(await shop.cancel(bob_code, "o-a"), NF, "REDEMPTION_NOT_FOUND")


async def test_who_may_redeem_and_cancel(shop: Shop) -> None:
    url = shop.server.database_url
    create_brand(url, "globex")
    keys = {
        "service": create_key(url, "service"),
        "own brand": create_key(url, "brand", "acme"),
        "admin": shop.server.admin_key,
    }
    globex_key = create_key(url, "brand", "globex")
    for i, (name, key) in enumerate(keys.items()):
        code = await shop.claim(f"user-{i}")
        denied = await shop.redeem(code, f"user-{i}", f"order-{i}", key=globex_key)
        failed(denied, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED")
        reply = await shop.redeem(code, f"user-{i}", f"order-{i}", key=key)
        assert isinstance(reply, pb.RedeemCodeResponse) and reply.newly_redeemed, name
        failed(
            await shop.cancel(code, f"order-{i}", key=globex_key),
            grpc.StatusCode.PERMISSION_DENIED,
            "PERMISSION_DENIED",
        )
        assert isinstance(await shop.cancel(code, f"order-{i}", key=key), pb.CancelRedemptionResponse), name
    try:
        await shop.stub.RedeemCode(pb.RedeemCodeRequest(brand_id="acme", code="X", user_id="u", order_id="o"))
    except grpc.aio.AioRpcError as exc:
        assert refusal(exc).reason == "UNAUTHENTICATED"
    else:
        raise AssertionError("a call without a key was answered")


async def test_stats_count_standing_redemptions_within_claimed(shop: Shop) -> None:
    codes = [await shop.claim(f"user-{i}") for i in range(3)]
    before = await shop.stats()
    assert (before.claimed, before.redeemed) == (3, 0)
    for i, code in enumerate(codes):
        await shop.redeem(code, f"user-{i}", f"order-{i}")
    await shop.redeem(codes[0], "user-0", "order-0")  # a repeat counts once
    after = await shop.stats()
    assert (after.claimed, after.redeemed) == (3, 3)
    await shop.cancel(codes[1], "order-1")
    cancelled = await shop.stats()
    assert cancelled.redeemed == 2
    await shop.redeem(codes[1], "user-1", "order-1b")
    final = await shop.stats()
    assert final.redeemed == 3
    assert final.total == final.available + final.claimed + final.expired == 20


async def test_both_python_clients_redeem_cancel_and_raise_by_reason(shop: Shop) -> None:
    from discount_client import (
        AsyncDiscountClient,
        CodeAlreadyRedeemed,
        CodeExpired,
        CodeNotFound,
        CodeNotHeldByUser,
        DiscountClient,
        RedemptionCancelled,
        RedemptionNotFound,
    )

    address = shop.server.address
    alice, bob, carol = await shop.claim("alice"), await shop.claim("bob"), await shop.claim("carol")
    async with AsyncDiscountClient(address, shop.key) as client:
        first = await client.redeem_code("acme", alice.lower(), "alice", "order-1")
        assert first.newly_redeemed and first.redemption.code == alice and first.redemption.cancelled_at is None
        again = await client.redeem_code("acme", alice, "alice", "order-1")
        assert again.newly_redeemed is False and again.redemption == first.redemption
        with pytest.raises(CodeAlreadyRedeemed) as taken:
            await client.redeem_code("acme", alice, "alice", "order-2")
        assert (taken.value.code, taken.value.reason) == ("FAILED_PRECONDITION", "CODE_ALREADY_REDEEMED")
        with pytest.raises(CodeNotHeldByUser):
            await client.redeem_code("acme", bob, "alice", "order-3")
        with pytest.raises(CodeNotFound):
            await client.redeem_code("acme", "T-NOSUCHCODE", "alice", "order-3")
        cancelled = await client.cancel_redemption("acme", alice, "order-1")
        assert cancelled.cancelled_at is not None and cancelled.redeemed_at == first.redemption.redeemed_at
        with pytest.raises(RedemptionCancelled):
            await client.redeem_code("acme", alice, "alice", "order-1")
        with pytest.raises(RedemptionNotFound):
            await client.cancel_redemption("acme", alice, "order-9")
        assert (await shop.stats()).redeemed == 0
    shop.expire(carol)

    def sync_calls() -> None:
        with DiscountClient(address, shop.key) as client:
            result = client.redeem_code("acme", bob, "bob", "order-b")
            assert result.newly_redeemed and result.redemption.user_id == "bob"
            again = client.cancel_redemption("acme", bob.lower(), "order-b")
            assert again.cancelled_at is not None
            assert client.cancel_redemption("acme", bob, "order-b").cancelled_at == again.cancelled_at
            with pytest.raises(CodeExpired):
                client.redeem_code("acme", carol, "carol", "order-c")

    await asyncio.to_thread(sync_calls)
