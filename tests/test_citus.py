"""The service on a Citus cluster (docs/scaling.md): the layout migrate leaves, and races, replicas
and watchers over brands on both workers. The tests marked `both_engines` run on plain PostgreSQL
too, with the same assertions; the cluster is the session's (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections import Counter
from typing import Any

import grpc
import psycopg
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount_dev.citus import CitusDatabases
from discount_service import errors
from discount_service.models import Role
from discount_service.store import (
    CITUS_DISTRIBUTED_FUNCTIONS,
    CITUS_DISTRIBUTED_TABLES,
    CITUS_REFERENCE_TABLES,
    QUERIES,
    Store,
)
from tests.readme_support import code_blocks, readme_section
from tests.support import (
    BIN,
    ROOT,
    ServerHandle,
    claim_request,
    create_brand,
    generate_codes_sql,
    in_process_server,
    sql,
)


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
        brand_keyed = sql(
            url, "SELECT table_name::text FROM information_schema.columns WHERE column_name = 'brand_key'"
        )
        assert {t for (t,) in brand_keyed} - set(CITUS_REFERENCE_TABLES) == set(CITUS_DISTRIBUTED_TABLES)
        functions = sql(
            url,
            "SELECT objid::regprocedure::text, p.proargnames[distribution_argument_index + 1], colocationid"
            " FROM pg_dist_object JOIN pg_proc p ON p.oid = objid WHERE distribution_argument_index IS NOT NULL",
        )
        colocation = int(next(iter(distributed)).rsplit(":", 1)[1])
        assert sorted(functions) == sorted((f, argument, colocation) for f, argument in CITUS_DISTRIBUTED_FUNCTIONS)
        assert {argument for _, argument in CITUS_DISTRIBUTED_FUNCTIONS} == {"p_brand_key"}
        assert asyncio.run(Store(url).migrate()) == []
        assert sql(url, "SELECT count(*) FROM pg_dist_partition") == [(len(layout),)]
    finally:
        citus_databases.drop(url)


@pytest.mark.both_engines
async def test_800_claims_across_4_brands_on_both_workers(server: ServerHandle) -> None:
    """200 users race for each of 4 brands (2 per worker), 150 codes each: exactly the 600 codes
    there are go out, no code twice, no user twice in a brand, gapless sequences per brand."""
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
async def test_a_claim_marks_only_its_own_code(server: ServerHandle) -> None:
    """Every code marked claimed is the code of a claim of its own brand. (Through Citus, an
    UPDATE by ctid alone runs on every shard and marks other brands' codes at the same place.)"""
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
async def test_two_replicas_with_watchers_on_each_see_every_claim_in_order(server: ServerHandle) -> None:
    """Two servers on one database (the coordinator, on Citus), a watcher of each brand on each
    server, claims sent to both: every watcher gets every claim of its brand once, in order, as
    acknowledged. One brand per worker."""
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
        with pytest.raises(errors.AlreadyExists, match="^brand 'dup' already exists$"):
            await store.create_brand("dup", "Dup again")
        await store.insert_api_key("key-1", b"digest-1", Role.ADMIN, None)
        with pytest.raises(errors.FailedPrecondition, match="^conflict on api_keys_pkey; retry the call$"):
            await store.insert_api_key("key-1", b"digest-2", Role.ADMIN, None)
        with pytest.raises(errors.FailedPrecondition, match="^conflict on api_keys_key_hash_key; retry the call$"):
            await store.insert_api_key("key-2", b"digest-1", Role.ADMIN, None)
    finally:
        await store.close()


def _brand_key(url: str, brand_id: str) -> int:
    return int(sql(url, "SELECT brand_key FROM brands WHERE brand_id = %s", (brand_id,))[0][0])


def _plan(url: str, query: str, params: dict[str, Any]) -> list[str]:
    return [row[0] for row in sql(url, "EXPLAIN (VERBOSE) " + query, params)]


def test_a_claim_is_one_call_run_on_the_worker_holding_its_brand(citus_databases: CitusDatabases) -> None:
    """The service's claim statement is routed whole to the brand's worker (one task, the function
    call itself as the task's query), and Citus pushes the call down when it runs as the store runs
    it: one statement, outside any transaction block."""
    url = citus_databases.create()
    notices: list[str] = []
    try:
        for brand in brands_on_every_node(url, 1, 10):
            params = {"brand_key": _brand_key(url, brand), "user_ids": ["u"], "emails": ["u@x.io"], "after_code_key": 0}
            plan = _plan(url, QUERIES["claim_brand"], params)
            assert [line.strip() for line in plan if "Task Count" in line] == ["Task Count: 1"], plan
            assert any(f"Node: host=127.0.0.1 port={worker_port_of(url, brand)} " in line for line in plan), plan
            assert any("Query: SELECT" in line and "discount_claim_brand(" in line for line in plan), plan
            notices.clear()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
                conn.execute("SET client_min_messages TO debug1")
                rows = conn.execute(QUERIES["claim_brand"], params).fetchall()  # type: ignore[arg-type]
            assert rows[0][1] == "claimed"
            assert "pushing down the function call" in notices
    finally:
        citus_databases.drop(url)


async def test_the_service_claims_on_the_workers_not_the_coordinator(citus_databases: CitusDatabases) -> None:
    """Claims through a real server run discount_claim_brand on the workers only (function call
    statistics of each node: track_functions is on in the test cluster)."""
    url = citus_databases.create()
    try:
        brands = brands_on_every_node(url, 1, 50)
        async with in_process_server(url) as (_, server):
            channel, stub = server.aio_stub()
            async with channel:
                for i in range(20):
                    await stub.ClaimCode(claim_request(brands[i % 2], f"w{i}"), metadata=server.metadata())
        calls: dict[int, int] = {}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the statistics arrive when the backends flush them
            calls = {}
            for port, node_url in _node_urls(url):
                rows = sql(node_url, "SELECT calls FROM pg_stat_user_functions WHERE funcname = 'discount_claim_brand'")
                calls[port] = int(rows[0][0]) if rows else 0
            if sum(calls.values()) >= 20:
                break
            time.sleep(0.2)
        coordinator = int(psycopg.conninfo.conninfo_to_dict(url)["port"] or 0)
        assert calls[coordinator] == 0
        assert sum(calls.values()) >= 20 and all(n > 0 for port, n in calls.items() if port != coordinator), calls
    finally:
        citus_databases.drop(url)


def _node_urls(url: str) -> list[tuple[int, str]]:
    """(port, URL of the same database) of every node, coordinator included."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    ports = [int(row[0]) for row in sql(url, "SELECT nodeport FROM pg_dist_node")]
    return [(port, psycopg.conninfo.make_conninfo(**{**info, "port": str(port)})) for port in ports]  # type: ignore[arg-type]


def test_the_feed_reads_one_shard_and_generation_copies_to_one(citus_databases: CitusDatabases) -> None:
    """A feed page is a router query (one task), the poll of several brands' heads reads only their
    shards; a brand's COPY goes to one shard."""
    url = citus_databases.create()
    try:
        create_brand(url, "feed")
        key = _brand_key(url, "feed")
        plan = _plan(url, QUERIES["feed_page"], {"brand_key": key, "after_sequence": 0, "limit": 100})
        assert [line.strip() for line in plan if "Task Count" in line] == ["Task Count: 1"], plan
        others = [_brand_key(url, b) for b in brands_on_every_node(url, 1, 0)]
        plan = _plan(url, QUERIES["feed_heads"], {"brand_keys": [key, *others]})
        shards = sql(
            url,
            "SELECT count(DISTINCT get_shard_id_for_distribution_column('brand_feed_heads', k))"
            " FROM unnest(%s::integer[]) k",
            ([key, *others],),
        )[0][0]
        assert [line.strip() for line in plan if "Task Count" in line] == [f"Task Count: {shards}"], plan
        notices: list[str] = []
        with psycopg.connect(url, autocommit=True) as conn:
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            conn.execute("SET citus.log_remote_commands TO on")
            conn.execute("SET client_min_messages TO log")
            batch = conn.execute(
                "INSERT INTO code_batches (batch_id, brand_key, generated, code_length, prefix)"
                " VALUES (gen_random_uuid(), %s, 1000, 8, '') RETURNING batch_key",
                (key,),
            ).fetchone()
            assert batch is not None
            with conn.cursor().copy(QUERIES["copy_codes"]) as copy:
                copy.write("".join(f"{key}\t{batch[0]}\t\\N\tC{i:07d}\n" for i in range(1000)))
        copies = {re.sub(r".*COPY (\S+) .*", r"\1", n) for n in notices if "COPY " in n}
        assert len(copies) == 1 and next(iter(copies)).startswith("public.codes_"), notices
        assert sql(url, "SELECT count(*) FROM codes WHERE brand_key = %s", (key,)) == [(1000,)]
    finally:
        citus_databases.drop(url)


def test_the_readme_cluster_command_runs_a_cluster_that_discount_migrate_distributes() -> None:
    """docs/scaling.md, "Running on Citus": the command prints the coordinator's URL, `discount migrate`
    against it distributes the tables, and Enter stops the cluster."""
    block = next(b for b in code_blocks(readme_section("Running on Citus"), "sh") if "CitusCluster" in b)
    command = block[block.index(".venv/bin/python -c") :]
    with subprocess.Popen(
        ["bash", "-c", command], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as cluster:
        assert cluster.stdin is not None and cluster.stdout is not None
        url = cluster.stdout.readline().strip()
        try:
            assert re.fullmatch(r"postgresql://postgres@127\.0\.0\.1:\d+/discount", url), url
            env = {**os.environ, "DISCOUNT_DATABASE_URL": url}
            migrated = subprocess.run([str(BIN / "discount"), "migrate"], env=env, capture_output=True, text=True)
            assert migrated.returncode == 0, migrated.stderr
            tables = len(CITUS_REFERENCE_TABLES) + len(CITUS_DISTRIBUTED_TABLES)
            assert sql(url, "SELECT count(*) FROM pg_dist_partition") == [(tables,)]
        finally:
            cluster.stdin.write("\n")
            cluster.stdin.close()
            assert cluster.wait(timeout=60) == 0
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()
