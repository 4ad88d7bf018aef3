"""Creating and upgrading the schema, one process at a time: an empty database from sql/schema.sql,
an older one by the migrations/*.sql it lacks; and the Citus layout (docs/scaling.md)."""

from __future__ import annotations

import logging
import re
from importlib import resources
from typing import Any

import psycopg

from ._errors import translate_errors
from ._pool import StoreBase
from ._queries import QUERIES

log = logging.getLogger(__package__)  # one logger for the whole store

# Serialises schema migrations of every process that starts at the same time.
_MIGRATION_LOCK_KEY = 0x44495343  # "DISC"

# The Citus layout (docs/scaling.md): the small tables every node reads are copied to every node;
# the brand-keyed ones are split by brand_key, colocated, so all rows of one brand are on one node.
CITUS_REFERENCE_TABLES = ("brands", "api_keys")
CITUS_DISTRIBUTED_TABLES = (
    "brand_feed_heads",
    "codes",
    "claims",
    "code_batches",
    "webhooks",
    "webhook_deliveries",
    "relay_positions",
    "redemptions",
    "redemption_counts",
)
# Functions whose calls go whole to the node holding their brand: (signature, the brand_key argument).
CITUS_DISTRIBUTED_FUNCTIONS = (
    ("discount_claim_brand(integer,text[],text[],bigint)", "p_brand_key"),
    ("discount_redeem(integer,text,text,text)", "p_brand_key"),
    ("discount_cancel_redemption(integer,text,text)", "p_brand_key"),
)


def _migrations() -> list[tuple[str, str]]:
    """(version, script) of every migration shipped, oldest first."""
    folder = resources.files("discount_service").joinpath("migrations")
    files = sorted(f.name for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), folder.joinpath(name).read_text()) for name in files]


def _schema() -> str:
    """sql/schema.sql: the schema every migration adds up to."""
    return resources.files("discount_service").joinpath("sql/schema.sql").read_text()


def _number(version: str) -> str:
    """A version's number, without its name: "0001_initial" -> "0001"."""
    return version.partition("_")[0]


# A comment, a quoted string or identifier, a dollar-quote opening tag, or a statement's end.
_SQL_TOKEN = re.compile(r"""--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|"(?:[^"]|"")*"|(\$[A-Za-z_0-9]*\$)|;""", re.DOTALL)


def split_statements(script: str) -> list[str]:
    """The statements of an SQL script, each without its `;`. A migration is sent one statement per
    message: Citus forwards some DDL (CREATE INDEX, ALTER TABLE ... ADD FOREIGN KEY) to the workers
    as a prepared statement, which cannot hold several commands."""
    statements: list[str] = []
    start = pos = 0
    while found := _SQL_TOKEN.search(script, pos):
        pos = found.end()
        if tag := found.group(1):  # a dollar-quoted body runs to the same tag
            end = script.find(tag, pos)
            if end < 0:
                raise ValueError(f"unterminated dollar quote {tag}")
            pos = end + len(tag)
        elif found.group(0) == ";":
            statements.append(script[start : found.start()])
            start = pos
    statements.append(script[start:])
    return [s.strip() for s in statements if _SQL_TOKEN.sub(_drop_comment, s).strip()]


def _drop_comment(token: re.Match[str]) -> str:
    return "" if token.group(0).startswith(("--", "/*")) else token.group(0)


class Migrations(StoreBase):
    async def migrate(self, *, up_to: str | None = None) -> list[str]:
        """Brings the schema up to date, one process at a time; returns the versions applied.

        An empty database gets sql/schema.sql in one transaction, with every migration recorded as
        applied (schema.sql is what they add up to); a database that has some gets the ones it lacks,
        in order. `up_to` stops after that version instead, replaying migrations even on an empty
        database: how a database of an older release is made, e.g. to test its upgrade."""
        migrations = _migrations()
        versions = [version for version, _ in migrations]
        if up_to is not None:
            if up_to not in versions:
                raise ValueError(f"no migration {up_to!r}; there are {versions[0]} to {versions[-1]}")
            migrations = migrations[: versions.index(up_to) + 1]
        applied: list[str] = []
        with translate_errors():
            async with await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, application_name=f"{self._application_name}-migrate"
            ) as conn:
                lock = {"key": _MIGRATION_LOCK_KEY}
                await conn.execute(QUERIES["lock_migrations"], lock)
                try:
                    cur = await conn.execute(QUERIES["migrations_table_exists"])
                    row = await cur.fetchone()
                    # Checked first: CREATE ... IF NOT EXISTS still needs CREATE on the schema, which
                    # a least-privilege runtime role does not have (docs/operations.md).
                    if not (row and row[0]):
                        await conn.execute(QUERIES["create_migrations_table"])
                    cur = await conn.execute(QUERIES["applied_migrations"])
                    done = {row[0] for row in await cur.fetchall()}
                    cur = await conn.execute(QUERIES["citus_installed"])
                    row = await cur.fetchone()
                    citus = bool(row and row[0])
                    if not done and len(migrations) == len(versions):
                        await _run_script(conn, _schema(), versions, citus=citus)
                        applied = versions
                        log.info(
                            "created the schema from schema.sql (migrations %s–%s recorded)",
                            _number(versions[0]),
                            _number(versions[-1]),
                        )
                    else:
                        for version, script in migrations:
                            if version not in done:
                                await _run_script(conn, script, [version], citus=citus)
                                applied.append(version)
                                log.info("applied migration %s", version)
                    # The Citus layout is that of the whole schema: an older one may not fit it.
                    if citus and done.union(applied) >= set(versions):
                        await _distribute(conn)
                finally:
                    await conn.execute(QUERIES["unlock_migrations"], lock)
        return applied


async def _run_script(conn: psycopg.AsyncConnection[Any], script: str, versions: list[str], *, citus: bool) -> None:
    """Runs `script` one statement per message and records `versions` as applied, in one transaction."""
    async with conn.transaction():
        if citus:
            await conn.execute(QUERIES["citus_sequential_ddl"])
        for statement in split_statements(script):
            await conn.execute(statement.encode())
        for version in versions:
            await conn.execute(QUERIES["record_migration"], {"version": version})


async def _distribute(conn: psycopg.AsyncConnection[Any]) -> None:
    """Puts the tables and functions Citus does not manage yet into the Citus layout, in one transaction."""
    cur = await conn.execute(QUERIES["citus_tables"])
    managed = {row[0] for row in await cur.fetchall()}
    missing = [t for t in (*CITUS_REFERENCE_TABLES, *CITUS_DISTRIBUTED_TABLES) if t not in managed]
    cur = await conn.execute(QUERIES["citus_distributed_functions"])
    routed = {row[0] for row in await cur.fetchall()}
    functions = [(f, argument) for f, argument in CITUS_DISTRIBUTED_FUNCTIONS if f not in routed]
    if not missing and not functions:
        return
    async with conn.transaction():
        await conn.execute(QUERIES["citus_sequential_ddl"])
        await conn.execute(QUERIES["citus_keep_foreign_keys"])
        for table in CITUS_REFERENCE_TABLES:
            if table in missing:
                await conn.execute(QUERIES["citus_create_reference_table"], {"table": table})
        first = CITUS_DISTRIBUTED_TABLES[0]
        for table in CITUS_DISTRIBUTED_TABLES:
            if table in missing:
                colocate_with = "default" if table == first else first
                params = {"table": table, "colocate_with": colocate_with}
                await conn.execute(QUERIES["citus_create_distributed_table"], params)
        for function, argument in functions:
            params = {"function": function, "argument": argument, "colocate_with": first}
            await conn.execute(QUERIES["citus_create_distributed_function"], params)
    log.info("distributed %s over the Citus cluster", ", ".join([*missing, *(f for f, _ in functions)]))
