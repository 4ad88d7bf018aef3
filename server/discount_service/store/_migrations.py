"""Applying migrations/*.sql, one process at a time, and the Citus layout (docs/scaling.md)."""

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
CITUS_DISTRIBUTED_TABLES = ("brand_feed_heads", "codes", "claims", "code_batches")
# Functions whose calls go whole to the node holding their brand: (signature, the brand_key argument).
CITUS_DISTRIBUTED_FUNCTIONS = (("discount_claim_brand(integer,text[],text[],bigint)", "p_brand_key"),)


def _migrations() -> list[tuple[str, str]]:
    folder = resources.files("discount_service").joinpath("migrations")
    files = sorted(f.name for f in folder.iterdir() if f.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), folder.joinpath(name).read_text()) for name in files]


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
    async def migrate(self) -> list[str]:
        """Applies pending migrations, one process at a time; returns the versions applied."""
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
                    for version, sql in _migrations():
                        if version in done:
                            continue
                        async with conn.transaction():
                            if citus:
                                await conn.execute(QUERIES["citus_sequential_ddl"])
                            for statement in split_statements(sql):
                                await conn.execute(statement.encode())
                            await conn.execute(QUERIES["record_migration"], {"version": version})
                        applied.append(version)
                        log.info("applied migration %s", version)
                    if citus:
                        await _distribute(conn)
                finally:
                    await conn.execute(QUERIES["unlock_migrations"], lock)
        return applied


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
