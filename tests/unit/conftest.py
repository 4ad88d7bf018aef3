"""The unit tier: tests of pure code, with no database, no server and no subprocess, that run in
seconds. Every test collected under tests/unit is marked `unit`, so `./scripts/test.sh -m unit`
runs just them; the full suite runs them too.

A test here that asks for a fixture which starts a database or a server is refused at collection:
the tier must stay runnable with no PostgreSQL at all."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# The fixtures of tests/conftest.py that create databases; every server fixture depends on one of them.
NEEDS_A_DATABASE = frozenset({"databases", "database_url", "citus_cluster", "citus_databases"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE not in Path(str(item.fspath)).resolve().parents:
            continue
        item.add_marker(pytest.mark.unit)
        used = sorted(NEEDS_A_DATABASE.intersection(getattr(item, "fixturenames", ())))
        if used:
            raise pytest.UsageError(
                f"{item.nodeid} is a unit test but uses {', '.join(used)}; "
                "tests that need a database or a server belong outside tests/unit"
            )
