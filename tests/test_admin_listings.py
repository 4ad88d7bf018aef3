"""AdminService's listings through a real server: every one of 2,500 brands once and in order at
every page size (sync and async clients, grpcurl), brands created during a listing, page tokens this
service did not issue, and a real token continued on another server of the database."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from discount_client import AsyncDiscountClient, DiscountClient
from discount_service.admin_service import PageTokens
from tests.admin_support import INVALID_ARGUMENT, add_brands, brands_in_database_order, grpcurl, violation_field
from tests.support import ServerHandle, in_process_server, sql


async def test_list_brands_pages_through_2500_brands(server: ServerHandle) -> None:
    url = server.database_url
    ids = add_brands(url, 2500)
    assert brands_in_database_order(url) == ids == sorted(ids)

    def walk(page_size: int) -> tuple[list[str], list[int]]:
        seen: list[str] = []
        sizes: list[int] = []
        with DiscountClient(server.address, server.admin_key) as client:
            token = ""
            while True:
                page = client.list_brands(page_size, token)
                seen += [b.brand_id for b in page.brands]
                sizes.append(len(page.brands))
                token = page.next_page_token
                if not token:
                    return seen, sizes

    for page_size, full in ((0, 100), (1000, 1000), (7, 7)):
        seen, sizes = await asyncio.to_thread(walk, page_size)
        assert seen == ids, f"page_size {page_size}: not every brand once, in brand_id order"
        assert len(set(seen)) == len(seen) == 2500
        pages = -(-2500 // full)
        assert sizes == [full] * (pages - 1) + [2500 - full * (pages - 1)], page_size  # no empty last page

    # The async iterator, and the names and creation times as stored.
    async with AsyncDiscountClient(server.address, server.admin_key) as client:
        brands = [b async for b in client.iter_brands(page_size=1000)]
    stored = {r[0]: (r[1], r[2]) for r in sql(url, "SELECT brand_id, name, created_at FROM brands")}
    assert [b.brand_id for b in brands] == ids
    assert all((b.display_name, b.created_at) == stored[b.brand_id] for b in brands)

    # grpcurl, page by page, with the token as JSON carries it.
    seen = []
    body: dict[str, Any] = {"page_size": 1000}
    while True:
        code, reply = await grpcurl(server.address, "ListBrands", body, key=server.admin_key)
        assert code == 0, reply
        seen += [b["brand_id"] for b in reply["brands"]]
        if "next_page_token" not in reply:  # empty: left out of the JSON
            break
        body["page_token"] = reply["next_page_token"]
    assert seen == ids

    # page_size 0 is 100; more than 1,000 is refused.
    code, reply = await grpcurl(server.address, "ListBrands", {}, key=server.admin_key)
    assert len(reply["brands"]) == 100
    code, reply = await grpcurl(server.address, "ListBrands", {"page_size": 1000}, key=server.admin_key)
    assert len(reply["brands"]) == 1000
    for too_many in (1001, 2**32 - 1):
        code, error = await grpcurl(server.address, "ListBrands", {"page_size": too_many}, key=server.admin_key)
        assert (code, violation_field(error)) == (INVALID_ARGUMENT, "page_size")


async def test_brands_created_during_a_listing_never_shift_or_repeat_a_page(server: ServerHandle) -> None:
    url = server.database_url
    ids = add_brands(url, 50)
    async with AsyncDiscountClient(server.address, server.admin_key) as client:
        first = await client.list_brands(20)
        await client.create_brand("a-before-the-cursor")  # sorts before every page seen
        await client.create_brand("b-00020x")  # right after the first page's last brand
        await client.create_brand("z-after-everything")
        rest = [b.brand_id async for b in _pages(client, 20, first.next_page_token)]
    assert [b.brand_id for b in first.brands] == ids[:20]
    assert rest == ["b-00020x", *ids[20:], "z-after-everything"]


async def _pages(client: AsyncDiscountClient, page_size: int, token: str) -> Any:
    while token:
        page = await client.list_brands(page_size, token)
        for brand in page.brands:
            yield brand
        token = page.next_page_token


async def test_page_tokens_that_were_not_issued_are_invalid_argument(database_url: str) -> None:
    add_brands(database_url, 30)
    async with in_process_server(database_url) as (_, server), in_process_server(database_url) as (_, replica):
        async with AsyncDiscountClient(server.address, server.admin_key) as client:
            real = (await client.list_brands(10)).next_page_token
            keys_token = (await client.list_api_keys(page_size=1, page_token="")).next_page_token
        assert real
        raw = base64.urlsafe_b64decode(real + "=" * (-len(real) % 4))
        body = raw[:-16]
        assert json.loads(body) == {"v": 1, "list": "brands", "scope": "", "after": "b-00010"}

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        made_up = json.dumps(
            {"v": 1, "list": "brands", "scope": "", "after": "b-00020"}, separators=(",", ":")
        ).encode()
        flipped = real[:-1] + ("A" if real[-1] != "A" else "B")
        forged = {
            "garbage": "abc",
            "not base64": "!!not-a-token!!",
            "padded": real + "==",
            "one character changed": flipped,
            "cursor edited, old MAC": b64(body.replace(b"b-00010", b"b-00020") + raw[-16:]),
            "made-up JSON, no MAC": b64(made_up),
            "made-up JSON, zero MAC": b64(made_up + bytes(16)),
            "signed with another secret": PageTokens(b"another database's secret, 32 b!").issue(
                "brands", "", "b-00020"
            ),
            "MAC only": b64(raw[-16:]),
            "huge": "A" * 100_000,
            "non-ASCII": "töken",
        }
        assert keys_token
        refused = [("ListBrands", name, token) for name, token in forged.items()]
        refused += [("ListApiKeys", name, token) for name, token in forged.items() if name != "one character changed"]
        refused += [("ListBrands", "a ListApiKeys token", keys_token), ("ListApiKeys", "a ListBrands token", real)]
        for rpc, name, token in refused:
            code, error = await grpcurl(server.address, rpc, {"page_token": token}, key=server.admin_key)
            assert (code, violation_field(error)) == (INVALID_ARGUMENT, "page_token"), (rpc, name)
            assert "page_token" in error["message"]

        # A real token works on every server of the database: a listing may cross replicas.
        async with AsyncDiscountClient(replica.address, server.admin_key) as other:
            page = await other.list_brands(10, real)
        assert [b.brand_id for b in page.brands] == [f"b-{i:05d}" for i in range(11, 21)]
