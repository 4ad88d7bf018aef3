"""The NATS relay's state: per brand, the last claim sequence JetStream acknowledged, and the
session advisory lock that lets one process at a time run the relay."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from ._errors import translate_errors
from ._pool import StoreBase, connect_with_keepalives
from ._queries import QUERIES

# The first key of the relay's advisory lock: negative, so never a brand_key (the claims' two-key
# locks), and apart from the webhooks' classes.
RELAY_LOCK_CLASS = -0x5245


@dataclass(frozen=True)
class RelayStanding:
    brand_key: int
    brand_id: str
    head: int  # the brand's last claim sequence
    relayed: int  # the last one JetStream acknowledged


class Relay(StoreBase):
    async def relay_standings(self) -> list[RelayStanding]:
        """Every brand, where its feed and its relay stand."""
        rows = await self._fetch("relay_standings", {}, retry=True)
        return [RelayStanding(int(r[0]), r[1], int(r[2]), int(r[3])) for r in rows]

    async def save_relay_positions(self, positions: Sequence[tuple[int, int]]) -> None:
        """(brand_key, relayed sequence) pairs, in one statement; a position never moves back."""
        if positions:
            params = {"brand_keys": [k for k, _ in positions], "sequences": [s for _, s in positions]}
            await self._fetch("relay_save_positions", params, retry=True)

    def relay_lock(self) -> RelayLock:
        return RelayLock(self._conninfo, f"{self._application_name}-relay")


class RelayLock:
    """One connection that holds the relay's session advisory lock. If it breaks, PostgreSQL
    releases the lock and another process can take the relay over, so the holder must stop relaying
    the moment a call here fails (it raises errors.Unavailable)."""

    def __init__(self, conninfo: str, application_name: str) -> None:
        self._conninfo = conninfo
        self._application_name = application_name
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def _execute(self, query: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        with translate_errors():
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await connect_with_keepalives(
                        self._conninfo, self._application_name, "relay_keepalives"
                    )
                cur = await self._conn.execute(QUERIES[query], params)
                return await cur.fetchall()
            except psycopg.Error:
                await self.close()
                raise

    async def try_lock(self) -> bool:
        """Whether this connection holds the lock now."""
        rows = await self._execute("relay_try_lock", {"lock_class": RELAY_LOCK_CLASS})
        return bool(rows[0][0])

    async def brands_after(self, brand_key: int) -> list[tuple[int, str]]:
        """(brand_key, brand_id) of the brands created after this one; also proves the lock is held."""
        rows = await self._execute("relay_brands_after", {"after": brand_key})
        return [(int(r[0]), r[1]) for r in rows]

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()
