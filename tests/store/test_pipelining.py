"""AutoPipeline against a real redis-server: calls made while one is out share a round trip, and each
caller still gets exactly its own reply or error, across NOSCRIPT, cancellation and a Redis restart."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio import ConnectionPool
from redis.exceptions import ResponseError

from tests.helpers import RedisServer
from worker.dispatch.engine import open_pool
from worker.settings import Settings
from worker.store.connections import DialerConnectionPool
from worker.store.pipelining import AutoPipeline

ECHO = "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}"
FAIL_IF_X = "if ARGV[1] == 'x' then return redis.error_reply('refused x') end return ARGV[1]"


class CountingPool(ConnectionPool):
    """Counts connection check-outs: one per round trip (a command alone, or a whole pipeline)."""

    checkouts = 0

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        type(self).checkouts += 1
        return await super().get_connection(*args, **kwargs)


@pytest.fixture
async def counted(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    CountingPool.checkouts = 0
    client = aioredis.Redis(connection_pool=CountingPool.from_url(redis_url))
    yield client
    await client.aclose()
    await client.connection_pool.disconnect()


async def test_concurrent_calls_share_round_trips_and_get_their_own_replies(counted: aioredis.Redis) -> None:
    pipe = AutoPipeline.of(counted)
    assert AutoPipeline.of(counted) is pipe  # one per client: its users' calls coalesce
    script = counted.register_script(ECHO)
    await counted.script_load(ECHO)
    before = CountingPool.checkouts

    replies = await asyncio.gather(*(pipe.eval(script, [f"k{i}"], [f"v{i}"]) for i in range(200)))

    assert replies == [[f"k{i}".encode(), f"v{i}".encode(), 1] for i in range(200)]
    # The first call goes alone; the 199 made while it was out leave together, in pipelines of 32.
    assert CountingPool.checkouts - before == 1 + math.ceil(199 / 32)
    # Plain commands too, with redis-py's reply parsing (HGETALL -> dict).
    await counted.hset("h", mapping={"a": "1"})
    got = await asyncio.gather(pipe.execute("HGETALL", "h"), pipe.execute("GET", "k0"), pipe.execute("ZREM", "z", "m"))
    assert got == [{b"a": b"1"}, b"1", 0]


async def test_an_error_fails_only_its_own_caller(counted: aioredis.Redis) -> None:
    pipe = AutoPipeline.of(counted)
    script = counted.register_script(FAIL_IF_X)
    await counted.set("str", "not a hash")
    results = await asyncio.gather(
        pipe.eval(script, [], ["a"]),
        pipe.eval(script, [], ["x"]),
        pipe.execute("HGETALL", "str"),  # WRONGTYPE
        pipe.eval(script, [], ["b"]),
        return_exceptions=True,
    )
    assert results[0] == b"a" and results[3] == b"b"
    assert isinstance(results[1], ResponseError) and "refused x" in str(results[1])
    assert isinstance(results[2], ResponseError) and "WRONGTYPE" in str(results[2])
    # Alone (no batch), an error is raised the same way.
    with pytest.raises(ResponseError, match="refused x"):
        await pipe.eval(script, [], ["x"])


async def test_scripts_are_loaded_again_after_the_cache_is_flushed(counted: aioredis.Redis) -> None:
    pipe = AutoPipeline.of(counted)
    script = counted.register_script(ECHO)
    assert await pipe.eval(script, ["a"], ["1"]) == [b"a", b"1", 1]
    await counted.script_flush()
    assert await pipe.eval(script, ["a"], ["2"]) == [b"a", b"2", 2]  # alone
    await counted.script_flush()
    replies = await asyncio.gather(*(pipe.eval(script, ["b"], [str(i)]) for i in range(20)))  # in a batch
    assert sorted(r[2] for r in replies) == list(range(1, 21))  # each ran exactly once


async def test_a_call_cancelled_before_its_batch_left_is_not_run(counted: aioredis.Redis) -> None:
    pipe = AutoPipeline.of(counted)
    # A first call that stays out for a while: later calls queue behind it.
    blocking = asyncio.ensure_future(pipe.execute("BLPOP", "nothing", "0.3"))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(pipe.execute("INCR", "cancelled"))
    kept = asyncio.ensure_future(pipe.execute("INCR", "kept"))
    await asyncio.sleep(0.01)
    queued.cancel()
    assert await blocking is None
    assert await kept == 1
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert await counted.get("cancelled") is None


@pytest.mark.slow
async def test_calls_survive_a_redis_restart(tmp_path: Path, settings: Settings) -> None:
    server = RedisServer(tmp_path)
    server.start()
    pool = await open_pool(settings.model_copy(update={"redis_url": server.url}))
    try:
        assert isinstance(pool.connection_pool, DialerConnectionPool)
        pipe = AutoPipeline.of(pool)
        script = pool.register_script(ECHO)
        assert (await pipe.eval(script, ["n"], ["x"]))[2] == 1
        server.stop()  # the script cache and the data go with it

        async def restart() -> None:
            await asyncio.sleep(0.5)
            server.start()

        restarting = asyncio.ensure_future(restart())
        replies = await asyncio.wait_for(
            asyncio.gather(*(pipe.eval(script, ["n"], [str(i)]) for i in range(30))), 20
        )
        await restarting
        assert sorted(r[2] for r in replies) == list(range(1, 31))
    finally:
        await pool.aclose()
        server.stop()
