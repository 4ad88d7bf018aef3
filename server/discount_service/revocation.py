"""Ending what acts on an API key's authority once the key is revoked.

A call is authorized when it starts. Whatever outlives that moment on the key's authority (a watch
stream, webhook deliveries) subscribes its key here and is told when the key is revoked:

- at once when the key is revoked through this server (the Authenticator's `forget_key` calls
  `revoked`);
- within `check_seconds` when it is revoked anywhere else (another replica, the CLI): every
  `check_seconds` one query asks the database which of the subscribed keys are still active. It is
  one query for every subscription of the process, so idle subscriptions cost one transaction per
  interval however many there are, and none when there are none.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from . import errors

log = logging.getLogger(__name__)

# key_ids -> those of them that exist and are not revoked.
ActiveKeys = Callable[[list[str]], Awaitable[set[str]]]
# Keys already known revoked, so a subscription that comes after the revocation is told at once.
_REMEMBERED_REVOCATIONS = 10_000


class Subscription:
    """One subscriber's interest in one key; `cancel` when the work it guards ends."""

    __slots__ = ("_owner", "key_id", "on_revoked")

    def __init__(self, owner: KeyRevocations, key_id: str, on_revoked: Callable[[], None]) -> None:
        self._owner = owner
        self.key_id = key_id
        self.on_revoked = on_revoked

    def cancel(self) -> None:
        self._owner._remove(self)


class KeyRevocations:
    def __init__(self, active_keys: ActiveKeys, *, check_seconds: float) -> None:
        self._active_keys = active_keys
        self._check_seconds = check_seconds
        self._subscriptions: dict[str, dict[Subscription, None]] = {}
        self._revoked: set[str] = set()
        self._checker: asyncio.Task[None] | None = None

    @property
    def subscribed_keys(self) -> int:
        return len(self._subscriptions)

    def subscribe(self, key_id: str, on_revoked: Callable[[], None]) -> Subscription:
        """Calls `on_revoked` once when `key_id` is revoked (at once if it is known to be already)."""
        subscription = Subscription(self, key_id, on_revoked)
        if key_id in self._revoked:
            _tell(subscription)
            return subscription
        self._subscriptions.setdefault(key_id, {})[subscription] = None
        if self._checker is None:
            self._checker = asyncio.get_running_loop().create_task(self._check_periodically())
        return subscription

    def revoked(self, key_id: str) -> None:
        """The key is revoked: tells each of its subscribers once, and forgets them."""
        if len(self._revoked) >= _REMEMBERED_REVOCATIONS:
            self._revoked.clear()
        self._revoked.add(key_id)
        for subscription in self._subscriptions.pop(key_id, {}):
            _tell(subscription)
        self._stop_checking_if_idle()

    def _remove(self, subscription: Subscription) -> None:
        subscribers = self._subscriptions.get(subscription.key_id)
        if subscribers is None or subscription not in subscribers:
            return
        del subscribers[subscription]
        if not subscribers:
            del self._subscriptions[subscription.key_id]
        self._stop_checking_if_idle()

    def _stop_checking_if_idle(self) -> None:
        # The checker itself ends at its next round when it finds nothing to check.
        if not self._subscriptions and self._checker is not None and self._checker is not asyncio.current_task():
            self._checker.cancel()
            self._checker = None

    async def _check_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._check_seconds)
            if not self._subscriptions:
                self._checker = None
                return
            try:
                await self.check_now()
            except Exception:  # the checker must outlive any one failed round, or revocations go unseen
                log.exception("checking %d subscribed API keys for revocation failed", len(self._subscriptions))

    async def check_now(self) -> None:
        """Asks the database which subscribed keys are still active and tells the others' subscribers."""
        key_ids = list(self._subscriptions)
        try:
            active = await self._active_keys(key_ids)
        except errors.Unavailable:
            # Nothing acting on a key can reach the database meanwhile either; the next round retries.
            log.debug("could not check %d subscribed API keys for revocation", len(key_ids))
            return
        for key_id in key_ids:
            if key_id not in active:
                log.info("key=%s was revoked: ending what acts on it", key_id)
                self.revoked(key_id)


def _tell(subscription: Subscription) -> None:
    try:
        subscription.on_revoked()
    except Exception:  # one subscriber's failure must not keep the others acting on a revoked key
        log.exception("a subscriber of key=%s failed on its revocation", subscription.key_id)
