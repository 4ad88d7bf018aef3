"""How watch streams share a process with the claims it serves (fanout.py), as a watch stream meets
it: with no claims being made it is never held back; while claims are made it sends out of a budget
the claims fill, a grant at a time, in the order the streams asked; and once the claims stop, every
waiting stream gets all it asked for. Real event loop, real (short) time."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discount_service import fanout
from discount_service.fanout import FanoutBudget

EXAMPLES = settings(database=None, max_examples=100, deadline=None)
# 2 messages per claim, 4 claims' worth kept (8 messages), at most 3 messages per grant.
PER_CLAIM, BURST_CLAIMS, GRANT = 2.0, 4, 3
# The tests below make a second claim halfway to the round: a busy machine may stall the event
# loop for up to a quarter of a second either side without changing what they see.
CLAIMS_SECONDS = 0.5


def budget() -> FanoutBudget:
    return FanoutBudget(PER_CLAIM, BURST_CLAIMS, CLAIMS_SECONDS, GRANT)


def now() -> float:
    return asyncio.get_running_loop().time()


async def is_waiting(task: asyncio.Task[int]) -> bool:
    for _ in range(3):
        await asyncio.sleep(0)
    return not task.done()


async def assert_spent(shared: FanoutBudget) -> None:
    """Nothing is left: the next stream to ask waits."""
    waiting = asyncio.create_task(shared.take(100))
    assert await is_waiting(waiting)
    waiting.cancel()


async def takes(shared: FanoutBudget, count: int) -> list[int]:
    """What `count` streams in a row, each asking for 100 messages, may send."""
    return [await shared.take(100) for _ in range(count)]


async def test_with_no_claims_a_stream_is_never_held_back() -> None:
    shared = budget()
    assert [await shared.take(1000) for _ in range(5)] == [1000] * 5


async def test_while_claims_are_made_streams_send_a_grant_at_a_time_out_of_the_kept_budget() -> None:
    shared = budget()
    shared.claims_made(1)
    # The budget starts full, 4 claims' worth: 8 messages, no grant larger than 3.
    assert await takes(shared, 3) == [3, 3, 2]
    await assert_spent(shared)


async def test_each_claim_adds_its_messages_to_the_budget() -> None:
    shared = budget()
    shared.claims_made(1)
    assert await takes(shared, 3) == [3, 3, 2]
    shared.claims_made(1)
    assert await takes(shared, 1) == [2]
    shared.claims_made(2)
    assert await takes(shared, 2) == [3, 1]
    await assert_spent(shared)


async def test_unused_budget_is_kept_for_a_burst_but_no_more() -> None:
    shared = budget()
    shared.claims_made(1)
    assert await takes(shared, 3) == [3, 3, 2]
    shared.claims_made(1000)
    assert await takes(shared, 3) == [3, 3, 2]
    await assert_spent(shared)
    # A budget never holds less than one grant, however little the claims add.
    small = FanoutBudget(per_claim=1.0, burst_claims=2, claims_seconds=CLAIMS_SECONDS, grant=16)
    small.claims_made(1)
    assert await small.take(100) == 16


async def test_a_waiting_stream_gets_all_it_asked_for_once_the_claims_stop() -> None:
    shared = budget()
    shared.claims_made(1)
    last_claim = now()
    assert await takes(shared, 3) == [3, 3, 2]
    assert await shared.take(100) == 100
    assert now() >= last_claim + CLAIMS_SECONDS


async def test_waiting_streams_are_served_in_the_order_they_asked_in_rounds() -> None:
    shared = budget()
    shared.claims_made(1)
    first_claim = now()
    assert await takes(shared, 3) == [3, 3, 2]
    served: list[tuple[str, int, float]] = []

    async def stream(name: str) -> None:
        granted = await shared.take(100)
        served.append((name, granted, now()))

    tasks = []
    for name in "ABC":
        tasks.append(asyncio.create_task(stream(name)))
        await asyncio.sleep(0)
    await asyncio.sleep(CLAIMS_SECONDS / 2)
    assert served == []
    shared.claims_made(2)  # 4 messages, handed out at the round, first come first served
    last_claim = now()
    await asyncio.gather(*tasks)
    assert [(name, granted) for name, granted, _ in served] == [("A", 3), ("B", 1), ("C", 100)]
    assert served[0][2] >= first_claim + CLAIMS_SECONDS  # a round, not a release per claim
    assert served[2][2] >= last_claim + CLAIMS_SECONDS  # C waited for the claims to stop


async def test_a_stream_cancelled_while_waiting_takes_nothing_from_the_others() -> None:
    shared = budget()
    shared.claims_made(1)
    assert await takes(shared, 3) == [3, 3, 2]
    gone = asyncio.create_task(shared.take(100))
    staying = asyncio.create_task(shared.take(100))
    assert await is_waiting(gone) and await is_waiting(staying)
    gone.cancel()
    await asyncio.sleep(CLAIMS_SECONDS / 2)
    shared.claims_made(1)  # 2 messages at the round, all for the stream still there
    assert await staying == 2
    with pytest.raises(asyncio.CancelledError):
        await gone


async def test_the_process_budget_hands_out_its_configured_grant() -> None:
    shared = fanout.claim_budget()
    assert await shared.take(1000) == 1000
    shared.claims_made(1)
    assert await shared.take(1000) == fanout.FANOUT_BUDGET_GRANT


def test_a_quiet_brand_fans_out_at_once_and_a_busy_one_at_most_every_tenth_of_a_second() -> None:
    assert fanout.fanout_interval(watchers=1, claim_rate=0) == fanout.FANOUT_MIN_INTERVAL_SECONDS
    assert fanout.fanout_interval(watchers=400, claim_rate=0) == pytest.approx(0.05)
    assert fanout.fanout_interval(watchers=400, claim_rate=200) == pytest.approx(0.1)
    assert fanout.fanout_interval(watchers=100_000, claim_rate=5000) == fanout.FANOUT_MAX_INTERVAL_SECONDS


@EXAMPLES
@given(st.integers(0, 100_000), st.integers(0, 100_000), st.floats(0, 10_000), st.floats(0, 10_000))
def test_more_watchers_or_more_claims_never_make_fan_outs_more_frequent(
    watchers: int, more_watchers: int, claim_rate: float, more_claims: float
) -> None:
    interval = fanout.fanout_interval(watchers, claim_rate)
    assert fanout.FANOUT_MIN_INTERVAL_SECONDS <= interval <= fanout.FANOUT_MAX_INTERVAL_SECONDS
    assert fanout.fanout_interval(watchers + more_watchers, claim_rate) >= interval
    assert fanout.fanout_interval(watchers, claim_rate + more_claims) >= interval
