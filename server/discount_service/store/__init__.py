"""The only package that talks to PostgreSQL.

It executes the named statements of `sql/*.sql`, applies `migrations/*.sql`, and turns psycopg
errors into domain errors (errors.py) exactly once, in `_errors`. `Store` is one connection pool
(`_pool`) with the statements of each part of the service on it: claims, the feed, brands and keys,
generation, and migrations.
"""

from __future__ import annotations

from ._admin import Admin, StatsRow
from ._claims import ClaimItem, ClaimRow, Claims
from ._errors import translate_errors, unique_violation
from ._expiry import BrandToSweep, Expiry, SweepRound
from ._feed import Feed
from ._generation import GENERATION_CHUNK, BatchRow, Generation
from ._migrations import (
    CITUS_DISTRIBUTED_FUNCTIONS,
    CITUS_DISTRIBUTED_TABLES,
    CITUS_REFERENCE_TABLES,
    Migrations,
    split_statements,
)
from ._queries import QUERIES
from ._redemptions import RedemptionOutcome, RedemptionRow, Redemptions
from ._relay import Relay, RelayLock, RelayStanding
from ._webhooks import AttemptOutcome, DeliveryState, ScannedWebhook, WebhookLocks, Webhooks

__all__ = [
    "CITUS_DISTRIBUTED_FUNCTIONS",
    "CITUS_DISTRIBUTED_TABLES",
    "CITUS_REFERENCE_TABLES",
    "GENERATION_CHUNK",
    "QUERIES",
    "RedemptionOutcome",
    "RedemptionRow",
    "AttemptOutcome",
    "DeliveryState",
    "ScannedWebhook",
    "WebhookLocks",
    "BatchRow",
    "BrandToSweep",
    "ClaimItem",
    "ClaimRow",
    "RelayLock",
    "RelayStanding",
    "StatsRow",
    "SweepRound",
    "Store",
    "split_statements",
    "translate_errors",
    "unique_violation",
]


class Store(Claims, Feed, Admin, Generation, Migrations, Webhooks, Redemptions, Relay, Expiry):
    """Async access to PostgreSQL through one connection pool, plus one LISTEN connection."""
