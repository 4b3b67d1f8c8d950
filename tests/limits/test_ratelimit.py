"""RateLimiter against a real redis-server: several instances, each with its own client, stand in for
worker processes. Timing assertions are loose on purpose; exact figures belong to bench/."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
import redis.asyncio as aioredis

from tests.helpers import free_port as unused_port
from worker.limits.ratelimit import Limit, RateLimiter, reserve_horizon
from worker.settings import Settings
from worker.store.keys import Keys

MakeLimiter = Callable[..., Awaitable[RateLimiter]]


@pytest.fixture
async def make_limiter(redis_url: str, settings: Settings) -> AsyncIterator[MakeLimiter]:
    """Build "processes": each limiter gets its own Redis client."""
    made: list[tuple[RateLimiter, aioredis.Redis]] = []

    async def make(**overrides: object) -> RateLimiter:
        client = aioredis.Redis.from_url(redis_url)
        limiter = RateLimiter(client, settings.model_copy(update=overrides))
        made.append((limiter, client))
        return limiter

    yield make
    for limiter, client in made:
        await limiter.close()
        await client.aclose()


def max_in_window(stamps: Sequence[float], window: float = 1.0) -> int:
    ordered = sorted(stamps)
    return max((bisect.bisect_left(ordered, t + window) - i for i, t in enumerate(ordered)), default=0)


async def script_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{cmd}", {}).get("calls", 0)) for cmd in ("eval", "evalsha"))


async def run_loops(jobs: Sequence[tuple[RateLimiter, int, Sequence[Limit]]], seconds: float) -> list[list[float]]:
    """One coroutine per job acquiring in a loop for `seconds`; the grant times of each job."""
    stamps: list[list[float]] = [[] for _ in jobs]

    async def loop(i: int, limiter: RateLimiter, priority: int, extra: Sequence[Limit]) -> None:
        while True:
            await limiter.acquire(priority, extra)
            stamps[i].append(time.monotonic())

    tasks = [asyncio.create_task(loop(i, *job)) for i, job in enumerate(jobs)]
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return stamps


def test_horizon_curve_falls_from_reserve_ahead_to_a_slot_or_two() -> None:
    horizons = [reserve_horizon(p, 10.0, 2.0) for p in range(1, 10)]
    assert horizons[0] == pytest.approx(2.0)
    assert horizons[-1] == pytest.approx(0.15)
    assert all(a > b for a, b in itertools.pairwise(horizons))
    assert reserve_horizon(9, 1000.0, 2.0) == pytest.approx(0.01)  # floor: a late timer must not idle it
    assert reserve_horizon(1, 10.0, 0.0) == 0.0
    with pytest.raises(ValueError, match="priority"):
        reserve_horizon(0, 10.0, 2.0)


async def test_unlimited_never_talks_to_redis(settings: Settings) -> None:
    nowhere = aioredis.Redis(port=unused_port(), socket_connect_timeout=0.2)  # nothing listens there
    limiter = RateLimiter(nowhere, settings.model_copy(update={"rate_limit": 0}))
    started = time.monotonic()
    waited = [await limiter.acquire(p % 9 + 1) for p in range(200)]
    assert time.monotonic() - started < 0.5
    assert waited == [0.0] * 200
    await limiter.close()
    await nowhere.aclose()


async def test_rate_holds_across_processes(
    make_limiter: MakeLimiter, redis_client: aioredis.Redis, settings: Settings
) -> None:
    rate, burst, seconds = 50.0, 2, 2.0
    limiters = [await make_limiter(rate_limit=rate, rate_burst=burst) for _ in range(3)]
    started = time.monotonic()
    stamps = await run_loops([(lim, 1 + i % 9, ()) for lim in limiters for i in range(10)], seconds)
    grants = [t for job in stamps for t in job]
    assert max_in_window(grants) <= rate + burst
    assert sum(t < started + seconds for t in grants) >= 0.93 * rate * seconds
    assert all(len(job) > 0 for job in stamps[::10]), "every process got permits"
    assert set(await redis_client.keys("*")) <= {Keys(settings.key_prefix).rate("global").encode()}


async def test_urgent_call_from_another_process_jumps_a_backlog(
    make_limiter: MakeLimiter, redis_client: aioredis.Redis
) -> None:
    rate = 20.0
    busy = await make_limiter(rate_limit=rate)
    other = await make_limiter(rate_limit=rate)
    backlog = [asyncio.create_task(busy.acquire(9)) for _ in range(200)]
    await asyncio.sleep(0.5)
    calls_before = await script_calls(redis_client)

    waited_there = await other.acquire(1)
    waited_here = await busy.acquire(1)
    await asyncio.sleep(0.5)

    assert waited_there < 0.5  # ~2.5 intervals (125 ms) expected, far from the backlog's 10 s
    assert waited_here < 0.5
    done = sum(t.done() for t in backlog)
    assert 5 <= done <= rate * 1.5 + 5  # it keeps draining at the rate, nowhere near finished
    # 200 waiters, yet about one script call per permit: waiters do not poll Redis themselves.
    calls = await script_calls(redis_client) - calls_before
    assert calls <= 3 * (rate * 1.2) + 10
    for task in backlog:
        task.cancel()
    await asyncio.gather(*backlog, return_exceptions=True)


async def test_campaign_limit_holds_while_global_only_calls_flow(make_limiter: MakeLimiter) -> None:
    seconds = 2.0
    campaign = [Limit("campaign:spring", rate=5.0)]
    limiters = [await make_limiter(rate_limit=100.0) for _ in range(2)]
    jobs: list[tuple[RateLimiter, int, Sequence[Limit]]] = [
        (lim, 1 if i % 2 else 9, campaign) for lim in limiters for i in range(10)
    ]
    jobs += [(lim, 9, ()) for lim in limiters for _ in range(10)]
    started = time.monotonic()
    stamps = await run_loops(jobs, seconds)
    in_campaign = [t for job in stamps[:20] for t in job]
    global_only = [t for job in stamps[20:] for t in job if t < started + seconds]

    assert max_in_window(in_campaign) <= 5 + 1
    assert len(in_campaign) >= 8
    assert max_in_window(in_campaign + global_only) <= 100 + 1
    # The throttled campaign waiters at the head of a heap do not hold back global-only ones, and their
    # slots waste little global capacity.
    assert len(global_only) >= 0.9 * (100 * seconds - len(in_campaign))


async def test_a_throttled_campaign_does_not_book_global_capacity_early(
    make_limiter: MakeLimiter, redis_client: aioredis.Redis, settings: Settings
) -> None:
    limiter = await make_limiter(rate_limit=100.0)
    slow = [Limit("campaign:slow", rate=1.0)]
    keys = Keys(settings.key_prefix)
    await limiter.acquire(1, slow)  # the first goes at once; the next campaign slot is 1 s away
    waiting = asyncio.create_task(limiter.acquire(1, slow))
    await asyncio.sleep(0.3)
    # Priority 1 may book 2 s ahead, but not in the global schedule 1 s ahead: that would leave the
    # second of global capacity before it unused. Nothing was booked in either key...
    assert await redis_client.exists(keys.rate("global")) == 0
    assert 0 < await redis_client.pttl(keys.rate("campaign:slow")) <= 1000
    assert not waiting.done()
    # ...so global-only calls go straight through.
    assert await asyncio.wait_for(limiter.acquire(9), 0.2) < 0.1
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)


async def test_cancelled_waiters_leave_no_trace(make_limiter: MakeLimiter) -> None:
    # A short priority-1 horizon: slots booked for waiters that then cancel are lost, and the end of
    # this test waits for the schedule to get past them.
    limiter = await make_limiter(rate_limit=5.0, rate_reserve_ahead_s=0.3)
    await limiter.acquire(9)
    extra = [Limit("campaign:a", rate=1.0)]
    waiters = [asyncio.create_task(limiter.acquire(1 + i % 9, extra if i % 3 else ())) for i in range(3000)]
    await asyncio.sleep(0.1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(limiter.acquire(9), 0.05)
    started = time.monotonic()
    for task in waiters:
        task.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert time.monotonic() - started < 1.0  # leaving the queue is cheap, even for thousands at once
    await asyncio.sleep(0.05)

    assert limiter._groups == {}
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("rate-pump")] == []
    assert await asyncio.wait_for(limiter.acquire(1), 1.0) < 1.0  # and it still works


async def test_close_stops_pumps_and_cancels_waiters(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(rate_limit=0.2)  # next slot 5 s away: beyond every horizon, none booked
    await limiter.acquire(9)
    waiters = [asyncio.create_task(limiter.acquire(9)) for _ in range(10)]
    await asyncio.sleep(0.05)
    pumps = [t for t in asyncio.all_tasks() if t.get_name().startswith("rate-pump")]
    assert len(pumps) == 1

    await limiter.close()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    assert all(p.done() for p in pumps)
    with pytest.raises(RuntimeError, match="closed"):
        await limiter.acquire(9)


async def test_bad_arguments_are_refused(make_limiter: MakeLimiter) -> None:
    limiter = await make_limiter(rate_limit=10.0)
    with pytest.raises(ValueError, match="priority"):
        await limiter.acquire(10)
    with pytest.raises(ValueError, match="twice"):
        await limiter.acquire(1, [Limit("campaign:a", 1.0), Limit("campaign:a", 2.0)])
    with pytest.raises(ValueError, match="global"):
        await limiter.acquire(1, [Limit("global", 1.0)])
    with pytest.raises(ValueError, match="rate"):
        Limit("campaign:a", 0.0)
    with pytest.raises(ValueError, match="burst"):
        Limit("campaign:a", 1.0, burst=0)
