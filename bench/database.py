"""The benchmark's database: a private PostgreSQL sized like the machine's, its migrated database,
and the bulk setup and EXPLAINs the phases run on it (setup, never measured)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from typing import Any

import psycopg

from bench.common import BIN
from discount_dev.postgres import PrivatePostgres, add_codes, create_brand, create_key, execute
from discount_dev.processes import cpu_seconds
from discount_service.store import QUERIES

# The machine's PostgreSQL settings (see `SHOW ALL` on 127.0.0.1:5432), mirrored so the numbers
# transfer; only max_connections is bigger (1,000 watchers, pgbench -c 32 and the pools at once).
PG_SETTINGS = {
    "max_connections": "300",
    "shared_buffers": "128MB",
    "autovacuum": "off",
    "fsync": "on",
    "synchronous_commit": "on",
    "max_wal_size": "1GB",
    "checkpoint_timeout": "300",
}
DATABASE = "discount_bench"


def start_postgres() -> PrivatePostgres:
    """A private cluster, so the benchmark neither competes with the test databases on the machine's
    server (max_connections=100) nor leaves anything behind."""
    return PrivatePostgres(settings=PG_SETTINGS, prefix="discount-bench-pg-").start()


def pg_cpu(pg: PrivatePostgres) -> float:
    """CPU seconds used so far by the whole cluster (postmaster and every backend)."""
    pid = pg.postmaster_pid()
    return cpu_seconds(pid, children=True) if pid else 0.0


class Db:
    """The benchmark database, migrated by `discount migrate` as an operator would."""

    def __init__(self, pg: PrivatePostgres) -> None:
        execute(pg.url, f"CREATE DATABASE {DATABASE}")
        self._pg_url = pg.url
        self._log = pg.log
        self.url = pg.url_for(DATABASE)
        self.name = DATABASE
        env = {**os.environ, "DISCOUNT_DATABASE_URL": self.url}
        migrated = subprocess.run([str(BIN / "discount"), "migrate"], env=env, capture_output=True, text=True)
        if migrated.returncode != 0:
            raise RuntimeError(f"discount migrate failed: {migrated.stderr[-3000:]}")

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        return execute(self.url, query, params)

    def brand(self, brand_id: str, codes: int) -> int:
        """A brand with `codes` free codes; returns its brand_key."""
        key = create_brand(self.url, brand_id)
        if codes:
            add_codes(self.url, brand_id, codes, prefix="B-")
        return key

    def brands(self, prefix: str, count: int, codes: int) -> list[str]:
        """`count` brands `<prefix>-0000`... with `codes` free codes each, in one statement; returns
        their ids."""
        self.sql(
            """
            WITH b AS (
                INSERT INTO brands (brand_id, name)
                SELECT %(prefix)s || '-' || lpad(g::text, 4, '0'), %(prefix)s FROM generate_series(0, %(count)s - 1) g
                RETURNING brand_key
            ), h AS (
                INSERT INTO brand_feed_heads (brand_key, total_codes) SELECT brand_key, %(codes)s FROM b
            ), batch AS (
                INSERT INTO code_batches (batch_id, brand_key, generated, code_length, prefix)
                SELECT gen_random_uuid(), brand_key, %(codes)s, 12, 'B-' FROM b
                RETURNING batch_key, brand_key
            )
            INSERT INTO codes (brand_key, batch_key, code)
            SELECT batch.brand_key, batch.batch_key, 'B-' || upper(substr(md5(random()::text || g::text), 1, 12))
            FROM batch, generate_series(1, %(codes)s) g
            ON CONFLICT DO NOTHING
            """,
            {"prefix": prefix, "count": count, "codes": codes},
        )
        return [f"{prefix}-{i:04d}" for i in range(count)]

    def last_sequences(self, brand_ids: list[str]) -> dict[str, int]:
        """brand_id -> the last sequence of its feed."""
        rows = self.sql(
            "SELECT b.brand_id, h.last_sequence FROM brand_feed_heads h JOIN brands b USING (brand_key)"
            " WHERE b.brand_id = ANY(%s)",
            (brand_ids,),
        )
        return {str(brand): int(last) for brand, last in rows}

    def transactions(self) -> int:
        """Transactions committed or rolled back in the benchmark database so far, as the statistics
        have them: asked from another database, so the question is not counted. An idle backend
        reports its counts up to 10 s late on PostgreSQL 15 (and in bursts): read it 11 s after the
        last work, over a window of tens of seconds."""
        rows = execute(
            self._pg_url,
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (self.name,),
        )
        return int(rows[0][0])

    def statements(self, seconds: float) -> dict[str, int]:
        """The statements the service's connections send to the benchmark database over `seconds`,
        by connection and statement, from PostgreSQL's own log, switched on for that window only:
        exact, where pg_stat_database receives an idle backend's counts late and in bursts. The
        service sends each statement in autocommit (a pipeline of several is one transaction, and
        only the feed's catch-up reads use one), so for an idle server a statement is a transaction."""
        settings = {"log_statement": "all", "log_line_prefix": "%m|%d|%a|"}
        for name, value in settings.items():
            execute(self._pg_url, f"ALTER SYSTEM SET {name} = '{value}'")
        execute(self._pg_url, "SELECT pg_reload_conf()")
        time.sleep(0.5)
        start = self._log.stat().st_size
        time.sleep(seconds)
        end = self._log.stat().st_size
        for name in settings:
            execute(self._pg_url, f"ALTER SYSTEM RESET {name}")
        execute(self._pg_url, "SELECT pg_reload_conf()")
        with self._log.open("rb") as log:
            log.seek(start)
            text = log.read(end - start).decode(errors="replace")
        counted: dict[str, int] = {}
        for line in text.splitlines():
            parts = line.split("|", 3)
            if len(parts) < 4 or parts[1] != self.name or not parts[2].startswith("discount-service"):
                continue
            found = re.match(r"LOG:\s+(statement|execute [^:]*): (.*)", parts[3])
            if found:
                key = f"{parts[2]}: {' '.join(found.group(2).split())[:60]}"
                counted[key] = counted.get(key, 0) + 1
        return counted

    def key(self, role: str, brand_id: str | None = None) -> str:
        return create_key(self.url, role, brand_id)

    def pile_up_claims(self, brand_key: int, total: int, chunk: int = 100_000) -> float:
        """Mimics `total` claims in bulk SQL: the same row changes a claim makes (codes.claimed
        flipped, so dead entries pile up in codes_free with autovacuum off; one claims row per
        claim; the feed head bumped). Returns the seconds it took."""
        started = time.perf_counter()
        done = 0
        while done < total:
            n = min(chunk, total - done)
            with psycopg.connect(self.url, autocommit=True) as conn, conn.transaction():
                conn.execute(
                    """
                    WITH picked AS (
                        UPDATE codes SET claimed = true
                        WHERE ctid = ANY (ARRAY(
                            SELECT ctid FROM codes
                            WHERE brand_key = %(b)s AND NOT claimed AND NOT expired AND code_key > 0
                            ORDER BY code_key LIMIT %(n)s))
                        RETURNING code, expires_at, code_key
                    )
                    INSERT INTO claims (brand_key, sequence, code, user_id, email, claimed_at, expires_at)
                    SELECT %(b)s, %(base)s + row_number() OVER (ORDER BY code_key), code,
                           'bulk-' || code_key, 'bulk-' || code_key || '@example.com', now(), expires_at
                    FROM picked
                    """,
                    {"b": brand_key, "n": n, "base": done},
                )
                conn.execute(
                    "UPDATE brand_feed_heads SET last_sequence = last_sequence + %s WHERE brand_key = %s",
                    (n, brand_key),
                )
            done += n
        return time.perf_counter() - started

    def claim_hint(self, brand_key: int) -> int:
        """The code_key a long-running server would pass as its hint: the highest one claimed."""
        rows = self.sql("SELECT coalesce(max(code_key), 0) FROM codes WHERE brand_key = %s AND claimed", (brand_key,))
        return int(rows[0][0])

    def explain_claim(self, brand_key: int, hint: int) -> str:
        """EXPLAIN (ANALYZE, BUFFERS) of the code pick inside the claim functions (the service's
        `pick_free_code` query), with the parameter types the functions give it, rolled back."""
        with psycopg.connect(self.url) as conn:
            conn.execute("PREPARE pick(integer, bigint) AS " + QUERIES["pick_free_code"])
            rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE pick({int(brand_key)}, {int(hint)})").fetchall()
            conn.rollback()
        return "\n".join(r[0] for r in rows)

    def explain_claim_call(self, brand_id: str, hint: int) -> str:
        """The service's claim call (discount_claim_many of one claim), with auto_explain printing
        (ANALYZE, BUFFERS) of every statement inside it, rolled back so the brand is unchanged."""
        notices: list[str] = []
        with psycopg.connect(self.url) as conn:
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            for setting in (
                "LOAD 'auto_explain'",
                "SET auto_explain.log_min_duration = 0",
                "SET auto_explain.log_analyze = on",
                "SET auto_explain.log_buffers = on",
                "SET auto_explain.log_nested_statements = on",
                "SET auto_explain.log_level = notice",
            ):
                conn.execute(setting)
            conn.execute(
                "SELECT * FROM discount_claim_many(ARRAY[%s], ARRAY['explain-user'], ARRAY['explain@example.com'],"
                " ARRAY[%s::bigint])",
                (brand_id, hint),
            ).fetchall()
            conn.rollback()
        return "\n\n".join(notices)

    def last_sequence(self, brand_id: str) -> int:
        rows = self.sql(
            "SELECT h.last_sequence FROM brand_feed_heads h JOIN brands b USING (brand_key) WHERE b.brand_id = %s",
            (brand_id,),
        )
        return int(rows[0][0])
