"""What the server reports about itself to its operators (metrics.py): the codes each brand has left
and the state of the connection pool.

No gRPC and no SQL, like the rest of the domain: the metrics endpoint reads these through here, so
the transport never reaches the store itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from .store import Store


@dataclass(frozen=True)
class PoolState:
    """The connection pool at one moment: connections open, idle and at most, and calls waiting."""

    size: int
    idle: int
    max_size: int
    waiting: int

    @property
    def in_use(self) -> int:
        return self.size - self.idle


class OperatingState:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def codes_available(self) -> list[tuple[str, int]]:
        """(brand_id, codes a user could claim now) of every brand, in brand_id order."""
        return await self._store.codes_available()

    def pool(self) -> PoolState:
        stats = self._store.pool_stats()
        return PoolState(
            size=stats.get("pool_size", 0),
            idle=stats.get("pool_available", 0),
            max_size=stats.get("pool_max", 0),
            waiting=stats.get("requests_waiting", 0),
        )
