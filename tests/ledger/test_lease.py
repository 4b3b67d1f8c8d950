"""The in-flight lease carried by the ledger's scripts: begin_send takes it (or answers "busy" and changes
nothing), the transition that ends the attempt gives it back, and InFlight.leave removes what is left."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.helpers import server_ms
from worker.ledger.producer import Producer
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.limits.inflight import InFlight
from worker.settings import Settings
from worker.store.keys import Keys

BODY: dict[str, Any] = {"called": "+8613800000001", "playList": [{"templateId": "tpl-1"}], "priority": "2"}


@pytest.fixture
def capped(settings: Settings) -> Settings:
    return settings.model_copy(update={"max_in_flight": 2, "request_timeout_s": 2.0, "connect_timeout_s": 1.0})


async def new_job(redis_client: aioredis.Redis, settings: Settings, job_id: str) -> str:
    res = await Producer(redis_client, settings).enqueue(BODY, job_id=job_id)
    assert res.status == "accepted"
    return job_id


async def leases(redis_client: aioredis.Redis, settings: Settings) -> dict[str, float]:
    raw = await redis_client.zrange(Keys(settings.key_prefix).in_flight, 0, -1, withscores=True)
    return {m.decode(): s for m, s in raw}


async def test_begin_send_takes_the_lease_and_mark_sent_gives_it_back(
    redis_client: aioredis.Redis, capped: Settings
) -> None:
    ledger, in_flight = Ledger(redis_client, capped), InFlight(redis_client, capped)
    job = await new_job(redis_client, capped, "job-a")
    async with in_flight.hold(job) as lease:
        assert not lease.held and await leases(redis_client, capped) == {}
        now = await server_ms(redis_client)
        gate = await ledger.begin_send(job, lease)
        assert gate.ok and gate.attempts == 1 and lease.held
        held = await leases(redis_client, capped)
        assert list(held) == [job]
        assert now + 7_900 <= held[job] <= now + 8_200  # request 2 s + connect 1 s + 5 s grace
        ttl = await redis_client.pttl(Keys(capped.key_prefix).in_flight)
        assert 7_000 < ttl <= 8_200  # the set expires with its last lease
        assert await in_flight.held() == 1
        await ledger.mark_sent(job, "serial-1", lease)
        assert not lease.held and await leases(redis_client, capped) == {}
    record = await ledger.get(job)
    assert record is not None and record.state == State.SENT


async def test_busy_at_the_cap_changes_nothing(redis_client: aioredis.Redis, capped: Settings) -> None:
    ledger, in_flight = Ledger(redis_client, capped), InFlight(redis_client, capped)
    key = Keys(capped.key_prefix).in_flight
    far = await server_ms(redis_client) + 60_000
    await redis_client.zadd(key, {"other-1": far, "other-2": far})  # the fleet is at its cap of 2
    job = await new_job(redis_client, capped, "job-b")
    before = await redis_client.hgetall(Keys(capped.key_prefix).job(job))
    async with in_flight.hold(job) as lease:
        gate = await ledger.begin_send(job, lease)
        assert not gate.ok and gate.reason == "busy" and not lease.held
        assert await redis_client.hgetall(Keys(capped.key_prefix).job(job)) == before  # still queued, 0 attempts
        assert set(await leases(redis_client, capped)) == {"other-1", "other-2"}

        # acquire waits for a free place, bounded: none comes, so nothing is held afterwards.
        with pytest.raises(TimeoutError):
            await in_flight.acquire(lease, wait_s=0.2)
        assert not lease.held and set(await leases(redis_client, capped)) == {"other-1", "other-2"}

        # One frees up: acquire takes it, and begin_send with the lease already held passes.
        async def free_one() -> None:
            await asyncio.sleep(0.1)
            await redis_client.zrem(key, "other-1")

        freeing = asyncio.ensure_future(free_one())
        await asyncio.wait_for(in_flight.acquire(lease, wait_s=2), 3)
        await freeing
        assert lease.held and set(await leases(redis_client, capped)) == {"other-2", job}
        gate = await ledger.begin_send(job, lease)
        assert gate.ok and set(await leases(redis_client, capped)) == {"other-2", job}
        await ledger.mark_retry(job, "HTTP 500", lease)
        assert not lease.held and set(await leases(redis_client, capped)) == {"other-2"}


async def test_every_ending_transition_gives_the_lease_back(redis_client: aioredis.Redis, capped: Settings) -> None:
    ledger, in_flight = Ledger(redis_client, capped), InFlight(redis_client, capped)
    ends = {
        "retry": lambda j, lease: ledger.mark_retry(j, "HTTP 500", lease),
        "final": lambda j, lease: ledger.mark_final(j, State.UNKNOWN, "timeout", lease),
        "dead": lambda j, lease: ledger.dead_letter(j, "gave up", lease),
        "sent": lambda j, lease: ledger.mark_sent(j, f"serial-{j}", lease),
    }
    for name, end in ends.items():
        job = await new_job(redis_client, capped, f"job-{name}")
        async with in_flight.hold(job) as lease:
            assert (await ledger.begin_send(job, lease)).ok
            assert job in await leases(redis_client, capped)
            await end(job, lease)
            assert not lease.held and job not in await leases(redis_client, capped), name
    assert await redis_client.exists(Keys(capped.key_prefix).in_flight) == 0


async def test_leaving_removes_a_lease_no_script_gave_back(redis_client: aioredis.Redis, capped: Settings) -> None:
    ledger, in_flight = Ledger(redis_client, capped), InFlight(redis_client, capped)
    job = await new_job(redis_client, capped, "job-c")
    with pytest.raises(RuntimeError, match="provider exploded"):
        async with in_flight.hold(job) as lease:
            assert (await ledger.begin_send(job, lease)).ok
            raise RuntimeError("provider exploded")
    assert await leases(redis_client, capped) == {}

    # Cancelled mid-request (the lease taken, nothing recorded): removed too.
    job = await new_job(redis_client, capped, "job-d")
    entered = asyncio.Event()

    async def stuck() -> None:
        async with in_flight.hold(job) as lease:
            assert (await ledger.begin_send(job, lease)).ok
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.ensure_future(stuck())
    await entered.wait()
    assert job in await leases(redis_client, capped)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert await leases(redis_client, capped) == {}


async def test_refused_begin_send_takes_no_lease(redis_client: aioredis.Redis, capped: Settings) -> None:
    ledger, in_flight = Ledger(redis_client, capped), InFlight(redis_client, capped)
    job = await new_job(redis_client, capped, "job-e")
    await ledger.mark_final(job, State.CANCELLED, "cancelled by operator")
    async with in_flight.hold(job) as lease:
        gate = await ledger.begin_send(job, lease)
        # "state" could follow a first run of the script (retried by redis-py) that took the lease, so
        # the lease counts as held, and leaving removes it whatever happened.
        assert not gate.ok and gate.reason == "state" and lease.held
        assert await leases(redis_client, capped) == {}
    assert await leases(redis_client, capped) == {}


async def test_a_dead_workers_lease_expires_by_itself(redis_client: aioredis.Redis, capped: Settings) -> None:
    ledger, in_flight = Ledger(redis_client, capped), InFlight(redis_client, capped)
    key = Keys(capped.key_prefix).in_flight
    now = await server_ms(redis_client)
    await redis_client.zadd(key, {"dead-1": now - 1, "dead-2": now - 1000})  # expired leases of a killed worker
    job = await new_job(redis_client, capped, "job-f")
    async with in_flight.hold(job) as lease:
        assert (await ledger.begin_send(job, lease)).ok  # not "busy": the expired ones do not count
        assert set(await leases(redis_client, capped)) == {job}
        await ledger.mark_sent(job, "serial-f", lease)


async def test_enter_bounds_the_wait_for_a_local_slot(redis_client: aioredis.Redis, capped: Settings) -> None:
    in_flight = InFlight(redis_client, capped)  # this process may hold 2
    first, second = await in_flight.enter("a"), await in_flight.enter("b")
    with pytest.raises(TimeoutError):
        await in_flight.enter("c", wait_s=0.1)
    waiting = asyncio.ensure_future(in_flight.enter("d", wait_s=5))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await in_flight.leave(first)  # nothing taken in Redis: nothing to remove
    third = await asyncio.wait_for(waiting, 1)
    assert third.member == "d" and not third.held
    for lease in (second, third):
        await in_flight.leave(lease)
    assert await leases(redis_client, capped) == {}


async def test_mark_unsent_takes_back_the_attempt_that_never_left(
    redis_client: aioredis.Redis, capped: Settings
) -> None:
    ledger, in_flight = Ledger(redis_client, capped), InFlight(redis_client, capped)
    job = await new_job(redis_client, capped, "job-u")
    assert (await ledger.begin_send(job)).ok
    await ledger.mark_retry(job, "HTTP 500")  # a real attempt: counted, error kept
    async with in_flight.hold(job) as lease:
        assert (await ledger.begin_send(job, lease)).attempts == 2
        assert await ledger.mark_unsent(job, lease)
        assert not lease.held and await leases(redis_client, capped) == {}
    record = await ledger.get(job)
    assert record is not None and record.state == State.QUEUED
    assert record.attempts == 1 and record.last_error == "HTTP 500"
    assert await ledger.mark_unsent(job)  # queued already: nothing to take back
    record = await ledger.get(job)
    assert record is not None and record.attempts == 1
    await ledger.mark_final(job, State.CANCELLED, "operator")
    assert not await ledger.mark_unsent(job)  # final: left alone
