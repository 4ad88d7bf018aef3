"""How a `discount` process logs: one line per event on stdout."""

from __future__ import annotations

import logging
import sys


class OneLineFormatter(logging.Formatter):
    """One line per event, tracebacks included, so log shippers never split an event."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # psycopg_pool logs connection failures at WARNING on every retry; our own lines say it once.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    # grpc.aio writes "Loaded running loop" at DEBUG for every call; at DEBUG the log is for our
    # own per-call lines. (gRPC's own tracing is GRPC_VERBOSITY and GRPC_TRACE.)
    logging.getLogger("grpc._cython.cygrpc").setLevel(logging.INFO)
