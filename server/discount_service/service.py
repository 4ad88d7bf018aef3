"""The domain: what each operation means, who may do it, and what counts as valid.

No gRPC here and no SQL: the servicer translates protobuf to these calls, and the store runs
the statements.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from . import codes, errors, validation
from .auth import require_brand_access, require_claim_access
from .claim_batcher import ClaimBatcher
from .feed import ClaimFeed, WatchStop
from .models import BrandStats, Claim, ClaimOutcome, ClaimResult, GenerateResult, Principal, Role
from .redemption import RedemptionService
from .revocation import KeyRevocations
from .store import BatchRow, Store

log = logging.getLogger(__name__)

MAX_GENERATE = 1_000_000


class CodeService:
    """The codes of discount.v1.DiscountService: generating, claiming, watching, counting and redeeming them."""

    def __init__(
        self,
        store: Store,
        feed: ClaimFeed,
        key_revocations: KeyRevocations,
        *,
        on_batch_expiring: Callable[[datetime], None] | None = None,
    ) -> None:
        self._store = store
        # Told when a new batch will expire (the expiry sweep then wakes for it).
        self._on_batch_expiring = on_batch_expiring
        self._feed = feed
        self._key_revocations = key_revocations
        # Concurrent claims of one brand share a transaction (group commit, see claim_batcher.py).
        self._claims = ClaimBatcher(store, on_committed=feed.claims_committed)
        self.redemptions = RedemptionService(store)

    async def generate_codes(
        self,
        principal: Principal,
        *,
        brand_id: str,
        count: int,
        request_id: str = "",
        code_length: int = 0,
        prefix: str = "",
        expires_at: datetime | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> GenerateResult:
        brand_id = validation.brand_id(brand_id)
        require_brand_access(principal, brand_id)
        if not 1 <= count <= MAX_GENERATE:
            raise errors.InvalidArgument(f"count must be between 1 and {MAX_GENERATE:,}, got {count:,}", field="count")
        request_id = validation.request_id(request_id)
        length = code_length or codes.DEFAULT_LENGTH
        if not codes.MIN_LENGTH <= length <= codes.MAX_LENGTH:
            raise errors.InvalidArgument(
                f"code_length must be between {codes.MIN_LENGTH} and {codes.MAX_LENGTH} "
                f"(0 means {codes.DEFAULT_LENGTH})",
                field="code_length",
            )
        if not codes.PREFIX_PATTERN.fullmatch(prefix):
            raise errors.InvalidArgument(
                f"prefix must be at most {codes.MAX_PREFIX} characters of A-Z, 0-9 and '-', got {prefix[:32]!r}",
                field="prefix",
            )
        if not codes.space_is_safe(count, length):
            raise errors.InvalidArgument(
                f"code space too small: {count:,} codes of length {length} would fill more than "
                f"{codes.MAX_SPACE_FRACTION:.2%} of the {codes.code_space(length):,} possible codes; "
                f"use code_length >= {codes.minimum_safe_length(count)}",
                field="code_length",
            )
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise errors.InvalidArgument("expires_at must be in the future", field="expires_at")

        asked = _BatchParameters(count=count, prefix=prefix, code_length=length, expires_at=expires_at)
        if request_id:
            found = await self._store.find_batch(brand_id, request_id)
            if found is not None:
                _check_repeat(brand_id, request_id, found, asked)
                return await self._generated(brand_id, found.batch_id, found.generated)
        batch, created = await self._store.generate_codes(
            brand_id=brand_id,
            request_id=request_id or None,
            count=count,
            code_length=length,
            prefix=prefix,
            expires_at=expires_at,
            make_codes=lambda n: codes.make_codes(n, length, prefix),
            on_progress=on_progress,
        )
        if not created:  # a concurrent first call with this request_id made the batch
            _check_repeat(brand_id, request_id, batch, asked)
        else:
            log.info("generated batch=%s brand=%s count=%d", batch.batch_id, brand_id, batch.generated)
            if expires_at is not None and self._on_batch_expiring is not None:
                self._on_batch_expiring(expires_at)
        return await self._generated(brand_id, batch.batch_id, batch.generated)

    async def _generated(self, brand_id: str, batch_id: str, generated: int) -> GenerateResult:
        stats = await self._stats(brand_id)
        return GenerateResult(brand_id=brand_id, batch_id=batch_id, generated=generated, available=stats.available)

    async def claim_code(self, principal: Principal, *, brand_id: str, user_id: str, email: str) -> ClaimResult:
        brand_id = validation.brand_id(brand_id)
        user_id = validation.user_id(user_id)
        validation.email(email)
        require_claim_access(principal, user_id, email)
        row = await self._claims.claim(brand_id, user_id, email)
        if row.outcome is ClaimOutcome.BRAND_NOT_FOUND:
            raise errors.NotFound(f"brand {brand_id!r} does not exist")
        if row.outcome is ClaimOutcome.EXHAUSTED:
            raise errors.NoCodesLeft(f"brand {brand_id!r} has no codes left; ask the brand to generate more")
        assert row.claim is not None
        return ClaimResult(claim=row.claim, newly_claimed=row.outcome is ClaimOutcome.CLAIMED)

    async def brand_stats(self, principal: Principal, *, brand_id: str) -> BrandStats:
        brand_id = validation.brand_id(brand_id)
        require_brand_access(principal, brand_id)
        stats = await self._stats(brand_id)
        return replace(stats, redeemed=await self.redemptions.redeemed_count(brand_id))

    async def _stats(self, brand_id: str) -> BrandStats:
        row = await self._store.brand_stats(brand_id)
        if row is None:
            raise errors.NotFound(f"brand {brand_id!r} does not exist")
        return BrandStats(
            brand_id=brand_id,
            total=row.total,
            available=row.total - row.claimed - row.expired,
            claimed=row.claimed,
            expired=row.expired,
        )

    async def open_watch(
        self, principal: Principal, *, brand_id: str, after_sequence: int, claims_per_message: int = 1
    ) -> AsyncIterator[list[Claim]]:
        """Checks the request, then returns the claim stream (so errors surface before streaming).
        `claims_per_message`: how many claims the transport sends per message, which is what the
        feed's fan-out budget counts. The stream ends with Unauthenticated once the caller's API
        key is revoked."""
        brand_id = validation.brand_id(brand_id)
        require_brand_access(principal, brand_id)
        brand_key = await self._store.brand_key(brand_id)
        if brand_key is None:
            raise errors.NotFound(f"brand {brand_id!r} does not exist")
        await self._check_cursor(brand_id, brand_key, after_sequence)
        return self._watch(principal, brand_id, brand_key, after_sequence, claims_per_message)

    async def _check_cursor(self, brand_id: str, brand_key: int, after_sequence: int) -> None:
        """A cursor beyond the brand's last claim names claims that do not exist: a stream from there
        would stay silent however many claims came. The database is asked only when the feed here
        does not already know of a claim that far."""
        if after_sequence <= max(self._feed.known_head(brand_id), 0):
            return
        head = (await self._store.feed_heads([brand_key])).get(brand_key, 0)
        if after_sequence > head:
            raise errors.OutOfRange(
                f"after_sequence {after_sequence} is beyond the head of brand {brand_id!r}, {head} (the "
                f"sequence of its last claim); resume after a sequence you received, at most {head}",
                field="after_sequence",
                reason="AFTER_SEQUENCE_BEYOND_HEAD",
                metadata={"brand_id": brand_id, "head": str(head), "after_sequence": str(after_sequence)},
            )

    async def _watch(
        self, principal: Principal, brand_id: str, brand_key: int, after_sequence: int, claims_per_message: int
    ) -> AsyncIterator[list[Claim]]:
        stop = WatchStop()
        subscription = None
        # Brand and admin keys may watch; a shopper token may not (require_brand_access), and has
        # no revocation of its own.
        if principal.role is not Role.USER:
            key_id = principal.key_id

            def revoked() -> None:
                stop.stop(
                    errors.Unauthenticated(
                        f"API key {key_id} was revoked; this stream has ended", metadata={"key_id": key_id}
                    )
                )

            subscription = self._key_revocations.subscribe(key_id, revoked)
        try:
            runs = self._feed.watch(
                brand_id, brand_key, after_sequence, claims_per_message=claims_per_message, stop=stop
            )
            async with contextlib.aclosing(runs):
                async for run in runs:
                    yield run
        finally:
            if subscription is not None:
                subscription.cancel()


@dataclass(frozen=True)
class _BatchParameters:
    """What a GenerateCodes call asks for, with code_length 0 already made the default."""

    count: int
    prefix: str
    code_length: int
    expires_at: datetime | None


def _check_repeat(brand_id: str, request_id: str, first: BatchRow, asked: _BatchParameters) -> None:
    """A repeated request_id is a retry only if it asks for what the first call asked for; otherwise
    returning the first batch would silently ignore the new parameters (IdempotencyKeyReused names
    the first field that differs, in the order count, prefix, code_length, expires_at)."""
    recorded = _BatchParameters(
        count=first.generated, prefix=first.prefix, code_length=first.code_length, expires_at=first.expires_at
    )
    for name in ("count", "prefix", "code_length", "expires_at"):
        was, now = getattr(recorded, name), getattr(asked, name)
        if was != now:
            raise errors.IdempotencyKeyReused(
                f"request_id {request_id!r} was first used with {_describe(name, was)}; "
                f"this call has {_describe(name, now)}: use a new request_id",
                field=name,
                metadata={"brand_id": brand_id, "request_id": request_id},
            )


def _describe(name: str, value: object) -> str:
    if isinstance(value, datetime):
        return f"{name} {value.astimezone(UTC).isoformat().replace('+00:00', 'Z')}"
    if value is None or value == "":
        return f"no {name}"
    if isinstance(value, int):
        return f"{name} {value:,}"
    return f"{name} {value!r}"
