from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from discount_dev.citus import CitusCluster, CitusDatabases
from tests.support import Databases, ServerHandle, in_process_server, server_url
from tests.webhook_support import FAST, Receiver

# The database engines a test marked `both_engines` runs on, each as its own test
# (`test_x[postgres]`, `test_x[citus]`): one suite, the same assertions on both.
ENGINES = ("postgres", "citus")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_engines: run on plain PostgreSQL and on a Citus cluster (coordinator + 2 workers)"
    )
    config.addinivalue_line(
        "markers", "unit: pure tests with no database or server, seconds in all (tests/unit; `-m unit`)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_engines"):
        metafunc.parametrize("engine", ENGINES, indirect=True)


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The engine under this test's database: "postgres", or "citus" for the Citus run of a
    test marked `both_engines`."""
    return str(getattr(request, "param", "postgres"))


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    dbs = Databases(server_url())
    dbs.setup_template()
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def citus_cluster() -> Iterator[CitusCluster]:
    """A Citus cluster of this machine's PostgreSQL on free ports, for the whole run. Citus missing
    is an error, not a skip: scripts/setup.d/50-citus.sh installs it."""
    with CitusCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def citus_databases(citus_cluster: CitusCluster) -> Iterator[CitusDatabases]:
    dbs = CitusDatabases(citus_cluster)
    dbs.setup_template()
    yield dbs
    dbs.drop_all()


@pytest.fixture
def database_url(engine: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated database of its own for the test, on the test's engine."""
    dbs: Databases | CitusDatabases = request.getfixturevalue("citus_databases" if engine == "citus" else "databases")
    url = dbs.create()
    yield url
    dbs.drop(url)


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[ServerHandle]:
    """A real server on a real port, in this test's event loop, over a fresh database."""
    async with in_process_server(database_url) as (_, handle):
        yield handle


@pytest.fixture
async def hooked(database_url: str) -> AsyncIterator[ServerHandle]:
    """A server that may send webhooks to 127.0.0.1 over http (the development switch) and retries fast."""
    async with in_process_server(database_url, **FAST) as (_, handle):
        yield handle


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on 127.0.0.1 that records every request it gets."""
    receiver = await Receiver().start()
    yield receiver
    await receiver.stop()


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """A folder for a test's artefacts (screenshots, logs), kept after the run."""
    path = Path(__file__).resolve().parent.parent / "test-output" / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path
