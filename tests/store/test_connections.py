"""The worker's Redis pool (worker.store.connections) against a real redis-server behind a TCP proxy
that misbehaves the way a restarting Redis does: connections accepted and then reset during the
handshake, or answered "-LOADING" while the dataset loads. redis-py retries neither; our pool does, so a
job that meets it is not failed (and dropped) by arq."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.helpers import RedisServer, Sim
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

Mode = Literal["forward", "reset", "loading"]


class FlakyProxy:
    """Forwards TCP to Redis; in "reset" mode new connections are closed as soon as they speak, in
    "loading" mode they are answered as a Redis still loading its data. Connections already forwarding
    keep forwarding."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.mode: Mode = "forward"
        self.refused = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            if self.mode != "forward":
                await reader.read(65536)  # the handshake arrives...
                self.refused += 1
                if self.mode == "loading":
                    writer.write(b"-LOADING Redis is loading the dataset in memory\r\n")
                    await writer.drain()
                writer.transport.abort()  # ... and the connection goes away
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self.tasks.discard(task)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        finally:
            dst.close()


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[FlakyProxy]:
    server = RedisServer(tmp_path)
    server.start()
    p = FlakyProxy(server.port)
    await p.start()
    yield p
    await p.stop()
    server.stop()


async def misbehave_for(proxy: FlakyProxy, mode: Mode, seconds: float) -> None:
    proxy.mode = mode
    await asyncio.sleep(seconds)
    proxy.mode = "forward"


async def drop_connections(pool: aioredis.Redis) -> None:
    await pool.connection_pool.disconnect()


@pytest.mark.parametrize("mode", ["reset", "loading"])
async def test_the_handshake_after_a_reconnect_is_retried(proxy: FlakyProxy, settings: Settings, mode: Mode) -> None:
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


async def test_redis_py_alone_fails_that_command(proxy: FlakyProxy, settings: Settings) -> None:
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
    proxy: FlakyProxy, sim: Sim, sim_settings: Settings
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


