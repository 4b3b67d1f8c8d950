"""InFlight against a real redis-server; two instances with their own clients stand in for processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from tests.helpers import server_ms as redis_now_ms
from worker.limits.inflight import InFlight
from worker.settings import Settings
from worker.store.keys import Keys

MakeInFlight = Callable[..., Awaitable[InFlight]]


@pytest.fixture
async def make_in_flight(redis_url: str, settings: Settings) -> AsyncIterator[MakeInFlight]:
    clients: list[aioredis.Redis] = []

    async def make(**overrides: object) -> InFlight:
        client = aioredis.Redis.from_url(redis_url)
        clients.append(client)
        return InFlight(client, settings.model_copy(update=overrides))

    yield make
    for client in clients:
        await client.aclose()


async def test_cap_holds_across_processes(
    make_in_flight: MakeInFlight, redis_client: aioredis.Redis, settings: Settings
) -> None:
    instances = [await make_in_flight(max_in_flight=3) for _ in range(2)]
    inside = peak = finished = 0

    async def hold(in_flight: InFlight) -> None:
        nonlocal inside, peak, finished
        async with in_flight.slot():
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.02)
            inside -= 1
        finished += 1

    await asyncio.wait_for(asyncio.gather(*(hold(f) for f in instances for _ in range(10))), 5)
    assert finished == 20
    assert 2 <= peak <= 3
    assert await instances[0].held() == 0
    assert await redis_client.exists(Keys(settings.key_prefix).in_flight) == 0  # nothing left behind


async def test_lease_expires_with_request_and_connect_timeouts(
    make_in_flight: MakeInFlight, redis_client: aioredis.Redis, settings: Settings
) -> None:
    in_flight = await make_in_flight(request_timeout_s=2.0, connect_timeout_s=3.0)
    key = Keys(settings.key_prefix).in_flight
    async with in_flight.slot():
        now = await redis_now_ms(redis_client)
        [(_, expiry)] = await redis_client.zrange(key, 0, -1, withscores=True)
        assert now + 9_500 <= expiry <= now + 10_100  # 2 + 3 + 5 s
        assert await in_flight.held() == 1


async def test_a_dead_workers_expired_lease_does_not_block(
    make_in_flight: MakeInFlight, redis_client: aioredis.Redis, settings: Settings
) -> None:
    in_flight = await make_in_flight(max_in_flight=1)
    key = Keys(settings.key_prefix).in_flight
    await redis_client.zadd(key, {"dead-worker-lease": await redis_now_ms(redis_client) - 1000})
    assert await in_flight.held() == 0
    async with asyncio.timeout(0.5):
        async with in_flight.slot():
            assert await redis_client.zscore(key, "dead-worker-lease") is None
            assert await in_flight.held() == 1


async def test_a_live_lease_elsewhere_blocks_until_released(
    make_in_flight: MakeInFlight, redis_client: aioredis.Redis, settings: Settings
) -> None:
    in_flight = await make_in_flight(max_in_flight=1)
    key = Keys(settings.key_prefix).in_flight
    await redis_client.zadd(key, {"other-process": await redis_now_ms(redis_client) + 60_000})

    async def enter() -> None:
        async with in_flight.slot():
            pass

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(enter(), 0.3)  # cancelled while polling: must leave no lease behind
    await asyncio.sleep(0.05)
    assert await redis_client.zrange(key, 0, -1) == [b"other-process"]
    await redis_client.zrem(key, "other-process")
    await asyncio.wait_for(enter(), 0.5)  # polling picks up a release in another process within ~50 ms
    assert await in_flight.held() == 0


async def test_lease_released_on_exception_and_on_cancellation(make_in_flight: MakeInFlight) -> None:
    in_flight = await make_in_flight(max_in_flight=2)

    with pytest.raises(RuntimeError, match="provider exploded"):
        async with in_flight.slot():
            assert await in_flight.held() == 1
            raise RuntimeError("provider exploded")
    assert await in_flight.held() == 0

    entered = asyncio.Event()

    async def stuck() -> None:
        async with in_flight.slot():
            entered.set()
            await asyncio.sleep(60)

    tasks = [asyncio.create_task(stuck()) for _ in range(2)]
    await entered.wait()
    await asyncio.sleep(0.05)
    assert await in_flight.held() == 2
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert await in_flight.held() == 0
