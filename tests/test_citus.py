"""The service on a Citus cluster (docs/scaling.md): the layout migrate leaves, and races, replicas
and watchers over brands on both workers. The tests marked `both_engines` run on plain PostgreSQL
too, with the same assertions; the cluster is the session's (tests/conftest.py)."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount_dev.citus import CitusDatabases
from discount_service import errors
from discount_service.models import Role
from discount_service.store import CITUS_DISTRIBUTED_TABLES, CITUS_REFERENCE_TABLES, Store
from tests.support import ServerHandle, claim_request, create_brand, generate_codes_sql, in_process_server, sql


def claim_not_yet_distributed(request: pytest.FixtureRequest, engine: str) -> None:
    """Until the claim functions take brand_key first and are distributed by it, a claim on Citus
    runs on the coordinator and its UPDATE by ctid reaches every shard."""
    if engine == "citus":
        request.applymarker(pytest.mark.xfail(strict=True, reason="claim function not yet distributed"))


def worker_port_of(url: str, brand_id: str) -> int | None:
    """The port of the node holding the brand's shards (None on plain PostgreSQL)."""
    if not sql(url, "SELECT 1 FROM pg_extension WHERE extname = 'citus'"):
        return None
    rows = sql(
        url,
        "SELECT p.nodeport FROM brands b, pg_dist_shard_placement p"
        " WHERE b.brand_id = %s AND p.shardid = get_shard_id_for_distribution_column('codes', b.brand_key)",
        (brand_id,),
    )
    return int(rows[0][0])


def brands_on_every_node(url: str, per_node: int, codes: int) -> list[str]:
    """Brands with `codes` codes each: `per_node` on each of a cluster's two workers (brands are
    created until both have that many), `2 * per_node` on a single PostgreSQL."""
    nodes: dict[int | None, list[str]] = {}
    for i in range(64):
        brand = f"b{i}"
        create_brand(url, brand)
        node = worker_port_of(url, brand)
        group = nodes.setdefault(node, [])
        if len(group) < (2 * per_node if node is None else per_node):
            group.append(brand)
        picked = [b for group in nodes.values() for b in group]
        if len(picked) == 2 * per_node:
            for b in picked:
                generate_codes_sql(url, b, codes)
            return picked
    raise AssertionError(f"64 brands did not spread {per_node} per node over two workers: {nodes}")


def test_migrate_distributes_the_tables_by_brand_and_is_idempotent(citus_databases: CitusDatabases) -> None:
    url = citus_databases.create()
    try:
        layout = dict(
            sql(
                url,
                "SELECT logicalrelid::regclass::text, partmethod::text || ':' || coalesce(column_to_column_name("
                "logicalrelid, partkey), '') || ':' || colocationid FROM pg_dist_partition",
            )
        )
        reference = {layout[t] for t in CITUS_REFERENCE_TABLES}
        distributed = {layout[t] for t in CITUS_DISTRIBUTED_TABLES}
        assert len(reference) == 1 and next(iter(reference)).startswith("n::")  # one reference group
        assert len(distributed) == 1 and next(iter(distributed)).startswith("h:brand_key:")  # colocated
        assert sorted(layout) == sorted((*CITUS_REFERENCE_TABLES, *CITUS_DISTRIBUTED_TABLES))
        assert asyncio.run(Store(url).migrate()) == []
        assert sql(url, "SELECT count(*) FROM pg_dist_partition") == [(len(layout),)]
    finally:
        citus_databases.drop(url)


@pytest.mark.both_engines
async def test_800_claims_across_4_brands_on_both_workers(
    server: ServerHandle, request: pytest.FixtureRequest, engine: str
) -> None:
    """200 users race for each of 4 brands (2 per worker), 150 codes each: exactly the 600 codes
    there are go out, no code twice, no user twice in a brand, gapless sequences per brand."""
    claim_not_yet_distributed(request, engine)
    brands = brands_on_every_node(server.database_url, 2, 150)
    channel, stub = server.aio_stub()
    async with channel:

        async def claim(brand: str, user: int) -> pb.ClaimCodeResponse | grpc.StatusCode:
            try:
                request = claim_request(brand, f"user-{user}")
                return await stub.ClaimCode(request, metadata=server.metadata(), timeout=60)
            except grpc.aio.AioRpcError as exc:
                return exc.code()

        results = await asyncio.gather(*(claim(brands[i % 4], i // 4) for i in range(800)))
    won = [r for r in results if isinstance(r, pb.ClaimCodeResponse)]
    assert Counter(r for r in results if not isinstance(r, pb.ClaimCodeResponse)) == {
        grpc.StatusCode.RESOURCE_EXHAUSTED: 200
    }
    assert len({r.claim.code for r in won}) == 600
    for brand in brands:
        mine = [r.claim for r in won if r.claim.brand_id == brand]
        assert len(mine) == 150 and len({c.user_id for c in mine}) == 150
        assert sorted(c.sequence for c in mine) == list(range(1, 151))
    rows = sql(
        server.database_url, "SELECT b.brand_id, c.user_id, c.code FROM claims c JOIN brands b USING (brand_key)"
    )
    assert sorted(rows) == sorted((r.claim.brand_id, r.claim.user_id, r.claim.code) for r in won)
    assert sql(server.database_url, "SELECT count(*) FROM codes WHERE claimed") == [(600,)]


@pytest.mark.both_engines
async def test_a_claim_marks_only_its_own_code(
    server: ServerHandle, request: pytest.FixtureRequest, engine: str
) -> None:
    """Every code marked claimed is the code of a claim of its own brand. (Through Citus, an
    UPDATE by ctid alone runs on every shard and marks other brands' codes at the same place.)"""
    claim_not_yet_distributed(request, engine)
    brands = brands_on_every_node(server.database_url, 2, 5)
    channel, stub = server.aio_stub()
    async with channel:
        for brand in brands:
            for user in ("ann", "bob"):
                await stub.ClaimCode(claim_request(brand, user), metadata=server.metadata())
    assert sql(server.database_url, "SELECT count(*) FROM claims") == [(8,)]
    stray = sql(
        server.database_url,
        "SELECT c.brand_key, c.code FROM codes c WHERE c.claimed"
        " AND NOT EXISTS (SELECT 1 FROM claims x WHERE x.brand_key = c.brand_key AND x.code = c.code)",
    )
    assert stray == []
    assert sql(server.database_url, "SELECT count(*) FROM codes WHERE claimed") == [(8,)]


@pytest.mark.both_engines
async def test_two_replicas_with_watchers_on_each_see_every_claim_in_order(
    server: ServerHandle, request: pytest.FixtureRequest, engine: str
) -> None:
    """Two servers on one database (the coordinator, on Citus), a watcher of each brand on each
    server, claims sent to both: every watcher gets every claim of its brand once, in order, as
    acknowledged. One brand per worker."""
    claim_not_yet_distributed(request, engine)
    brands = brands_on_every_node(server.database_url, 1, 300)
    async with in_process_server(server.database_url) as (_, replica):
        channels = [server.aio_stub(), replica.aio_stub()]
        watches = [
            (brand, stub.WatchClaims(pb.WatchClaimsRequest(brand_id=brand), metadata=server.metadata()))
            for _, stub in channels
            for brand in brands
        ]

        async def collect(call: grpc.aio.UnaryStreamCall) -> list[pb.Claim]:  # type: ignore[type-arg]
            seen: list[pb.Claim] = []
            async for message in call:
                seen.append(message.claim)
                if len(seen) == 300:
                    return seen
            return seen

        watching = [asyncio.create_task(asyncio.wait_for(collect(call), 90)) for _, call in watches]
        await asyncio.sleep(0.5)
        acknowledged: dict[tuple[str, str], str] = {}

        async def shopper(k: int) -> None:
            stub = channels[k % 2][1]
            for i in range(k, 600, 16):
                brand = brands[i % 2]
                reply = await stub.ClaimCode(claim_request(brand, f"s{i}"), metadata=server.metadata(), timeout=30)
                acknowledged[(brand, reply.claim.user_id)] = reply.claim.code

        await asyncio.gather(*(shopper(k) for k in range(16)))
        seen = await asyncio.gather(*watching)
        for channel, _ in channels:
            await channel.close()
    assert len(acknowledged) == 600
    for (brand, _), claims in zip(watches, seen, strict=True):
        assert [c.sequence for c in claims] == list(range(1, 301))
        assert {(brand, c.user_id): c.code for c in claims} == {k: v for k, v in acknowledged.items() if k[0] == brand}


@pytest.mark.both_engines
async def test_errors_read_the_same_on_both_engines(database_url: str) -> None:
    """A unique violation that Citus reports against a shard is the same domain error."""
    store = Store(database_url)
    await store.open()
    try:
        await store.create_brand("dup", "Dup")
        with pytest.raises(errors.AlreadyExists, match="^the brand already exists$"):
            await store.create_brand("dup", "Dup again")
        await store.create_api_key("key-1", b"digest-1", Role.ADMIN, None)
        with pytest.raises(errors.FailedPrecondition, match="^conflict on api_keys_pkey; retry the call$"):
            await store.create_api_key("key-1", b"digest-2", Role.ADMIN, None)
        with pytest.raises(errors.FailedPrecondition, match="^conflict on api_keys_key_hash_key; retry the call$"):
            await store.create_api_key("key-2", b"digest-1", Role.ADMIN, None)
    finally:
        await store.close()
