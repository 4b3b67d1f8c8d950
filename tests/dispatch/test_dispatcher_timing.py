"""The dispatcher's timing rules, against a real Redis and the simulator: a rate permit is not used by a
request that would leave too late after its slot, and every wait of a run stays inside its time budget
(the job is deferred, never dropped, and nobody is called twice)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.helpers import Sim
from worker.dispatch.dispatcher import Defer, Dispatcher
from worker.dispatch.engine import open_pool
from worker.ledger.producer import Producer
from worker.ledger.states import State
from worker.ledger.transitions import Ledger, SendGate
from worker.limits.inflight import InFlight, Lease
from worker.limits.ratelimit import Permit, RateLimiter
from worker.provider.client import ProviderClient
from worker.settings import Settings
from worker.store.keys import Keys

BODY: dict[str, Any] = {"called": "13800000001", "playList": [{"templateId": "tpl-1"}], "priority": "5"}


class CountingLimiter(RateLimiter):
    """A real limiter that remembers the permits it handed out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.permits: list[Permit] = []

    async def permit(self, *args: Any, **kwargs: Any) -> Permit:
        p = await super().permit(*args, **kwargs)
        self.permits.append(p)
        return p


class SlowBeginSend(Ledger):
    """A ledger whose queued -> sending takes ``delay`` s more than Redis needs (a stalled round trip)."""

    delay = 0.0

    async def begin_send(self, job_id: str, lease: Lease | None = None, *, now: bool = False) -> SendGate:
        await asyncio.sleep(self.delay)
        return await super().begin_send(job_id, lease, now=now)


@asynccontextmanager
async def dispatcher(
    settings: Settings, ledger_class: type[Ledger] = Ledger
) -> AsyncIterator[tuple[Dispatcher, CountingLimiter, aioredis.Redis]]:
    pool = await open_pool(settings)
    limiter = CountingLimiter(pool, settings)
    try:
        async with ProviderClient.open(settings, pool) as client:
            yield Dispatcher(settings, ledger_class(pool, settings), limiter, InFlight(pool, settings), client), \
                limiter, pool
    finally:
        await limiter.close()
        await pool.aclose()


async def enqueue(pool: aioredis.Redis, settings: Settings, job_id: str) -> str:
    res = await Producer(pool, settings).enqueue(BODY, job_id=job_id)
    assert res.status == "accepted"
    return job_id


async def created(sim: Sim, called: str = BODY["called"]) -> list[dict[str, Any]]:
    return [r for r in await sim.requests() if r["outcome"] == "created" and r["body"]["called"] == called]


async def test_a_permit_made_late_by_a_token_wait_is_not_used(sim: Sim, sim_settings: Settings) -> None:
    settings = sim_settings.model_copy(update={"rate_limit": 5.0, "rate_burst": 1})
    keys = Keys(settings.key_prefix)
    async with dispatcher(settings) as (d, limiter, pool):
        job = await enqueue(pool, settings, "late-1")
        # Another worker holds the token refresh for 300 ms: this run takes its permit, then waits for
        # the token, so its permit is 300 ms old when the request could leave.
        await pool.set(keys.token_lock, "another-worker", px=300)
        outcome = await d.dial(job)
        assert outcome.state == State.SENT and outcome.attempts == 1
    assert d.late_permits == 1
    # Two slots booked: the late one was not used, the request left on the second.
    assert len(limiter.permits) == 2
    first, second = limiter.permits
    assert first.slot is not None and second.slot is not None
    assert second.slot - first.slot >= 0.25 and not second.late(second.slot)
    assert len(await created(sim)) == 1


async def test_a_permit_made_late_by_begin_send_is_not_used(sim: Sim, sim_settings: Settings) -> None:
    settings = sim_settings.model_copy(update={"rate_limit": 5.0, "rate_burst": 1})
    SlowBeginSend.delay = 0.1  # the request would leave 100 ms after its slot: ten times the tolerance
    async with dispatcher(settings, SlowBeginSend) as (d, limiter, pool):
        job = await enqueue(pool, settings, "late-2")
        outcome = await d.dial(job)
        record = await d.ledger.get(job)
    assert outcome.state == State.SENT
    assert d.late_permits >= 1 and len(limiter.permits) == d.late_permits + 1
    assert record is not None and record.state == State.SENT and record.attempts == 1
    assert len(await created(sim)) == 1


async def test_no_permit_in_time_after_begin_send_puts_the_job_back_uncounted(
    sim: Sim, sim_settings: Settings
) -> None:
    # A run budget of 0.1 s (job timeout 10 s - request timeout 4.9 s - 5 s of slack), a slow begin_send
    # and the next slot a second away: the request cannot leave in time, after begin_send said `sending`.
    settings = sim_settings.model_copy(
        update={"rate_limit": 1.0, "rate_burst": 1, "job_timeout_s": 10.0, "request_timeout_s": 4.9}
    )
    SlowBeginSend.delay = 0.2
    async with dispatcher(settings, SlowBeginSend) as (d, _limiter, pool):
        job = await enqueue(pool, settings, "late-3")
        # (The slow begin_send alone already ends the budget: either way the request did not leave.)
        with pytest.raises(Defer, match=r"rate permit|no time left"):
            await d.dial(job)
        record = await d.ledger.get(job)
        leases = await pool.zrange(Keys(settings.key_prefix).in_flight, 0, -1)
    assert record is not None and record.state == State.QUEUED
    assert record.attempts == 0 and record.last_error is None  # the attempt that never left is not counted
    assert leases == []
    assert await created(sim) == []




@pytest.mark.parametrize(("rate", "burst"), [(200.0, 1), (200.0, 5), (10.0, 1), (2.5, 2), (1000.0, 1), (0.5, 1)])
async def test_the_tolerance_keeps_every_window_within_rate_plus_burst(
    redis_client: aioredis.Redis, settings: Settings, rate: float, burst: int
) -> None:
    limiter = RateLimiter(redis_client, settings.model_copy(update={"rate_limit": rate, "rate_burst": burst}))
    try:
        permit = await limiter.permit(1)
    finally:
        await limiter.close()
    tolerance = permit.tolerance
    assert 0.0095 <= tolerance <= 0.05
    assert permit.slot is not None
    assert not permit.late(permit.slot + tolerance) and permit.late(permit.slot + tolerance + 1e-6)
    # The densest schedule GCRA allows (a full burst, then one slot per interval, in whole µs), each
    # request leaving anywhere from its slot to `tolerance` after it: a 1-s window [t, t + 1) can get
    # every slot in (t - tolerance, t + 1). Count the most slots any such stretch holds.
    interval = math.ceil(1_000_000 / (rate * 0.99)) / 1_000_000
    n = int((3 + tolerance) / interval) + burst + 2
    slots = [0.0] * burst + [k * interval for k in range(1, n)]
    span = 1 + tolerance
    densest = max(sum(1 for s in slots if start <= s < start + span) for start in slots)
    assert densest <= int(rate) + burst


# --- every wait of a run ends with its time budget -------------------------------------------------
# job timeout 10 s, request timeout 4.5 s: a run may wait 0.5 s (10 - 4.5 - 5 s of slack) before its
# request leaves, and run_job ends it at 8 s (END_BEFORE_JOB_TIMEOUT_S before arq's timeout) whatever.

SHORT = {"job_timeout_s": 10.0, "request_timeout_s": 4.5}


async def revoke_tokens(sim: Sim) -> None:
    async with aiohttp.ClientSession() as s, s.post(sim.url + "/_sim/revoke") as r:
        r.raise_for_status()


async def test_a_token_wait_past_the_budget_defers_the_job(sim: Sim, sim_settings: Settings) -> None:
    settings = sim_settings.model_copy(update={**SHORT, "rate_limit": 0})
    keys = Keys(settings.key_prefix)
    async with dispatcher(settings) as (d, _limiter, pool):
        job = await enqueue(pool, settings, "budget-1")
        # No token, and another worker holds the refresh for 20 s: the wait would outlast the run.
        await pool.set(keys.token_lock, "another-worker", px=20_000)
        started = time.monotonic()
        with pytest.raises(Defer) as retry:
            await d.run_job(job)
        assert retry.value.seconds == 0  # back on its queue at once
        assert time.monotonic() - started < 3  # the run's 0.5 s budget, not the 20 s lock
        record = await d.ledger.get(job)
        assert record is not None and record.state == State.QUEUED and record.attempts == 0
        assert await pool.zcard(keys.in_flight) == 0
        assert await created(sim) == []
        # The refresh is done (the lock goes): the next run sends it, once.
        await pool.delete(keys.token_lock)
        assert await d.run_job(job) == State.SENT
    assert len(await created(sim)) == 1


async def test_the_permit_for_the_resend_after_a_401_stays_within_the_budget(sim: Sim, sim_settings: Settings) -> None:
    settings = sim_settings.model_copy(update={**SHORT, "rate_limit": 1.0, "rate_burst": 1})
    async with dispatcher(settings) as (d, _limiter, pool):
        warm = await enqueue(pool, settings, "budget-warm")
        assert (await d.dial(warm)).state == State.SENT  # the process now holds a token...
        await revoke_tokens(sim)  # ... that the provider no longer accepts
        await asyncio.sleep(1.1)  # let the 1/s schedule go idle: the next permit is immediate
        job = await enqueue(pool, settings, "budget-2")
        with pytest.raises(Defer) as retry:
            await d.run_job(job)  # 401, fresh token, but the re-send's permit is 1 s away
        assert retry.value.seconds == 0
        record = await d.ledger.get(job)
        assert record is not None and record.state == State.QUEUED
        assert record.attempts == 1 and record.last_error is not None and "401" in record.last_error
        assert [r["status"] for r in await sim.requests()] == [200, 401]  # the warm-up's call, the refused one
        await asyncio.sleep(1.1)
        assert await d.run_job(job) == State.SENT
    assert len(await created(sim)) == 2  # the warm-up's and this one's: nobody called twice


async def test_the_token_wait_after_a_401_stays_within_the_budget(sim: Sim, sim_settings: Settings) -> None:
    # 401, and the refresh of the token stalls (another worker holds the lock for 30 s): nothing is out,
    # so the run ends with its budget (0.5 s), the attempt counted, and the job goes back on its queue.
    settings = sim_settings.model_copy(update={**SHORT, "rate_limit": 0})
    keys = Keys(settings.key_prefix)
    async with dispatcher(settings) as (d, _limiter, pool):
        assert (await d.dial(await enqueue(pool, settings, "cut-warm"))).state == State.SENT
        await revoke_tokens(sim)
        await pool.set(keys.token_lock, "another-worker", px=30_000)  # the refresh after the 401 stalls
        job = await enqueue(pool, settings, "cut-1")
        started = time.monotonic()
        with pytest.raises(Defer) as retry:
            await d.run_job(job)
        assert time.monotonic() - started < 4  # the run's budget, not the 30 s lock nor arq's 10 s
        assert retry.value.seconds == 0
        record = await d.ledger.get(job)
        assert record is not None and record.state == State.QUEUED
        assert record.attempts == 1 and record.last_error is not None and "401" in record.last_error
        assert await pool.zcard(keys.in_flight) == 0
        await pool.delete(keys.token_lock)
        assert await d.run_job(job) == State.SENT
    assert len(await created(sim)) == 2  # the warm-up's and this one's, once


async def test_a_run_is_ended_before_arqs_timeout_whatever_it_waits_for(sim: Sim, sim_settings: Settings) -> None:
    # Redis stalls (CLIENT PAUSE) while the run reads its ledger record: no wait of the dispatcher's own
    # is involved, so only run_job's backstop can end the run, at 8 s, before arq's 10-s timeout would
    # drop the job. The job stays queued and the next run sends it, once.
    settings = sim_settings.model_copy(update={**SHORT, "rate_limit": 0})
    async with dispatcher(settings) as (d, _limiter, pool):
        job = await enqueue(pool, settings, "stall-1")
        await pool.execute_command("CLIENT", "PAUSE", 9_000, "ALL")
        started = time.monotonic()
        with pytest.raises(Defer):
            await d.run_job(job)
        elapsed = time.monotonic() - started
        assert 7.5 < elapsed < 9.8, elapsed  # ended by the backstop (then its own writes wait for Redis)
        record = await d.ledger.get(job)
        assert record is not None and record.state == State.QUEUED and record.attempts == 0
        assert await d.run_job(job) == State.SENT
    assert len(await created(sim)) == 1


async def test_the_fleet_in_flight_cap_holds_with_the_lease_in_begin_send(sim: Sim, sim_settings: Settings) -> None:
    # Two processes (a pool each), a fleet cap of 2 and answers that take 300 ms: begin_send answers
    # "busy" to the others, which wait for a lease; never 3 requests at the provider at once.
    settings = sim_settings.model_copy(update={"rate_limit": 0, "max_in_flight": 2})
    await sim.configure(latency_ms=300)
    async with dispatcher(settings) as (d1, _l1, pool), dispatcher(settings) as (d2, _l2, _pool2):
        bodies = [{**BODY, "called": f"1390000000{i}"} for i in range(8)]
        producer = Producer(pool, settings)
        for i, b in enumerate(bodies):
            assert (await producer.enqueue(b, job_id=f"cap-{i}")).status == "accepted"
        outcomes = await asyncio.wait_for(
            asyncio.gather(*((d1 if i % 2 else d2).dial(f"cap-{i}") for i in range(8))), 30
        )
        assert [o.state for o in outcomes] == [State.SENT] * 8
        assert await pool.zcard(Keys(settings.key_prefix).in_flight) == 0
    arrivals = sorted(r["ts"] for r in await sim.requests())
    assert len(arrivals) == 8
    # With a fixed 300 ms answer, a third request within 270 ms of two others would be a third in flight.
    assert all(arrivals[i + 2] - arrivals[i] >= 0.27 for i in range(len(arrivals) - 2)), arrivals
