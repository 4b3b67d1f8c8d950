"""The worker's Redis pool (worker.store.connections) against a real redis-server behind a TCP proxy (tests.proxy)
that misbehaves the way a restarting Redis does: connections accepted and then reset during the
handshake, or answered "-LOADING" while the dataset loads. redis-py retries neither; our pool does, so a
job that meets it is not failed (and dropped) by arq."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.helpers import RedisServer, Sim
from tests.proxy import Mode, TcpProxy
from worker.dispatch.dispatcher import Dispatcher
from worker.dispatch.engine import open_pool
from worker.ledger.producer import Producer
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.limits.inflight import InFlight
from worker.limits.ratelimit import RateLimiter
from worker.provider.client import ProviderClient
from worker.settings import Settings
from worker.store.client import worker_retry
from worker.store.connections import DialerConnectionPool

pytestmark = pytest.mark.slow  # every test here starts a child process

@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[TcpProxy]:
    server = RedisServer(tmp_path)
    server.start()
    p = TcpProxy(server.port)
    await p.start()
    yield p
    await p.stop()
    server.stop()


async def misbehave_for(proxy: TcpProxy, mode: Mode, seconds: float) -> None:
    proxy.mode = mode
    await asyncio.sleep(seconds)
    proxy.mode = "forward"


async def drop_connections(pool: aioredis.Redis) -> None:
    await pool.connection_pool.disconnect()


@pytest.mark.parametrize("mode", ["reset", "loading"])
async def test_the_handshake_after_a_reconnect_is_retried(proxy: TcpProxy, settings: Settings, mode: Mode) -> None:
    s = settings.model_copy(update={"redis_url": proxy.url})
    pool = await open_pool(s)
    try:
        assert isinstance(pool.connection_pool, DialerConnectionPool)
        await pool.set("k", "before")
        await drop_connections(pool)  # as a restart does: every connection must be opened again
        healing = asyncio.ensure_future(misbehave_for(proxy, mode, 0.6))
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(pool.get("k"), 15) == b"before"
        await healing
        assert proxy.refused >= 1
    finally:
        await pool.aclose()


async def test_redis_py_alone_fails_that_command(proxy: TcpProxy, settings: Settings) -> None:
    # The same situation with redis-py's own pool (same retry settings, no DialerConnectionPool): the
    # error reaches the caller. This is what a job met before.
    pool = aioredis.Redis.from_url(proxy.url, **worker_retry())
    try:
        await pool.set("k", "before")
        await drop_connections(pool)
        healing = asyncio.ensure_future(misbehave_for(proxy, "reset", 0.6))
        await asyncio.sleep(0.05)
        with pytest.raises(RedisConnectionError):
            await pool.get("k")
        await healing
    finally:
        await pool.aclose()


async def test_a_job_meeting_a_restarting_redis_is_sent_once(
    proxy: TcpProxy, sim: Sim, sim_settings: Settings
) -> None:
    s = sim_settings.model_copy(update={"redis_url": proxy.url, "rate_limit": 0})
    pool = await open_pool(s)
    limiter = RateLimiter(pool, s)
    try:
        res = await Producer(pool, s).enqueue(
            {"called": "13800000009", "playList": [{"templateId": "tpl-1"}], "priority": "3"}, job_id="restart-1"
        )
        assert res.status == "accepted"
        async with ProviderClient.open(s, pool) as client:
            d = Dispatcher(s, Ledger(pool, s), limiter, InFlight(pool, s), client)
            await drop_connections(pool)
            healing = asyncio.ensure_future(misbehave_for(proxy, "loading", 0.6))
            await asyncio.sleep(0.05)
            outcome = await asyncio.wait_for(d.dial("restart-1"), 30)
            await healing
        assert outcome.state == State.SENT
        record = await Ledger(pool, s).get("restart-1")
        assert record is not None and record.state == State.SENT and record.attempts == 1
        assert proxy.refused >= 1
        calls = [r for r in await sim.requests() if r["body"]["called"] == "13800000009"]
        assert len(calls) == 1
    finally:
        await limiter.close()
        with contextlib.suppress(Exception):
            await pool.aclose()


