from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support import Databases, ServerHandle, in_process_server, server_url


@pytest.fixture(scope="session")
def databases() -> Iterator[Databases]:
    dbs = Databases(server_url())
    dbs.setup_template()
    yield dbs
    dbs.drop_all()


@pytest.fixture
def database_url(databases: Databases) -> Iterator[str]:
    url = databases.create()
    yield url
    databases.drop(url)


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[ServerHandle]:
    """A real server on a real port, in this test's event loop, over a fresh database."""
    async with in_process_server(database_url) as (_, handle):
        yield handle


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """A folder for a test's artefacts (screenshots, logs), kept after the run."""
    path = Path(__file__).resolve().parent.parent / "test-output" / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path
