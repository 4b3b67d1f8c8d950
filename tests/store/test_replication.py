"""Redis HA on real processes: clients that find the primary through Sentinels and follow a failover, and
the replication ``WAIT`` that keeps a call from leaving (and an enqueue from being acknowledged) before a
replica has its record."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.faults.ha import MASTER, SentinelHA
from tests.helpers import RedisServer, Sim, created, running, wait_until
from worker.errors import NotReplicated
from worker.ledger.producer import Producer
from worker.ledger.record import JobRecord
from worker.ledger.transitions import Ledger
from worker.settings import Settings, load_settings
from worker.store.client import api_client, cli_client, redis_location, unreachable, worker_client
from worker.store.keys import Keys
from worker.store.replication import replication_warning

BODY = {"called": "+8613800000001", "playList": [{"voiceId": "100001"}], "priority": "5"}


@pytest.fixture
async def ha(tmp_path: Path) -> AsyncIterator[SentinelHA]:
    cluster = SentinelHA(tmp_path, replicas=1)
    await cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def primary(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path / "primary")
    (tmp_path / "primary").mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def sentinel_settings(settings: Settings, ha: SentinelHA, **update: object) -> Settings:
    # The URL's host and port are not used with Sentinels: point it at nothing, to prove it.
    return settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0", "redis_sentinels": ha.addresses,
                                       "redis_sentinel_master": MASTER, **update})


def replica_of(tmp_path: Path, server: RedisServer) -> RedisServer:
    (tmp_path / "replica").mkdir(exist_ok=True)
    return RedisServer(tmp_path / "replica", "--replicaof", "127.0.0.1", str(server.port))


# --- settings ------------------------------------------------------------------------------------------


def test_sentinel_settings_are_read_from_a_comma_list_and_wait_replicas_follows_them() -> None:
    s = load_settings(redis_sentinels="10.0.0.1:26379, 10.0.0.2:26379")
    assert s.redis_sentinels == ["10.0.0.1:26379", "10.0.0.2:26379"]
    assert s.wait_replicas == 1
    assert load_settings().wait_replicas == 0
    assert load_settings(redis_sentinels="a:1", redis_wait_replicas="0").wait_replicas == 0
    assert load_settings(redis_wait_replicas="2").wait_replicas == 2


@pytest.mark.parametrize(("field", "value", "rule"), [
    ("redis_sentinels", "10.0.0.1", "must be host:port"),
    ("redis_sentinels", "h:99999", "port of 1-65535"),
    ("redis_wait_replicas", "some", "must be `auto` or a number"),
    ("redis_wait_replicas", "-1", "must be `auto` or a number"),
])
def test_bad_ha_settings_name_the_variable_and_the_rule(field: str, value: str, rule: str) -> None:
    from worker.errors import SettingsError

    with pytest.raises(SettingsError) as err:
        load_settings(**{field: value})
    assert f"DIALER_{field.upper()}" in str(err.value)
    assert rule in str(err.value)


def test_sentinels_with_a_socket_url_are_refused() -> None:
    from worker.errors import SettingsError

    with pytest.raises(SettingsError, match="DIALER_REDIS_SENTINELS needs a redis://"):
        load_settings(redis_sentinels="h:1", redis_url="unix:///tmp/redis.sock")


def test_the_sentinel_password_is_secret() -> None:
    s = load_settings(redis_sentinels="h:1", redis_sentinel_password="sentinel-pw-DO-NOT-LEAK")
    assert "sentinel-pw-DO-NOT-LEAK" not in repr(s)
    assert "sentinel-pw-DO-NOT-LEAK" not in redis_location(s)


# --- Sentinel ------------------------------------------------------------------------------------------


async def test_every_client_finds_the_primary_through_the_sentinels(settings: Settings, ha: SentinelHA) -> None:
    s = sentinel_settings(settings, ha)
    for make in (worker_client, api_client, cli_client):
        client = make(s)
        try:
            await client.set(f"via:{make.__name__}", "1")
        finally:
            await client.aclose()
    direct = aioredis.Redis(port=await ha.primary())
    try:
        assert sorted(await direct.keys("via:*")) == [b"via:api_client", b"via:cli_client", b"via:worker_client"]
    finally:
        await direct.aclose()


async def test_a_cli_command_says_in_one_line_when_no_sentinel_answers(settings: Settings) -> None:
    s = settings.model_copy(update={"redis_sentinels": ["127.0.0.1:9", "127.0.0.1:10"],
                                    "redis_url": "redis://:pw-DO-NOT-LEAK@127.0.0.1:9/0"})
    client = cli_client(s)
    started = time.monotonic()
    try:
        with pytest.raises(Exception) as err:
            await client.ping()
    finally:
        await client.aclose()
    assert time.monotonic() - started < 5
    line = unreachable(s, err.value)
    assert "\n" not in line
    assert line.startswith("Redis is not reachable at Sentinel master 'mymaster' via 127.0.0.1:9,127.0.0.1:10")
    assert "DO-NOT-LEAK" not in line


@pytest.mark.slow
async def test_a_worker_client_rides_out_a_failover_and_says_so_once(
    settings: Settings, ha: SentinelHA, caplog: pytest.LogCaptureFixture,
) -> None:
    s = sentinel_settings(settings, ha)
    client = worker_client(s)
    caplog.set_level(logging.WARNING, "worker.store.client")
    try:
        await client.set("n", 0)
        done = 0

        async def writes() -> None:
            nonlocal done
            while done < 300:
                await client.incr("n")
                done += 1
                await asyncio.sleep(0.02)

        async def started() -> bool:
            return done >= 50

        writer = asyncio.ensure_future(writes())
        await wait_until(started, 10)
        old = await ha.primary()
        failover = await ha.kill_primary()
        await asyncio.wait_for(writer, 60)
        assert await ha.primary() != old
        # Every increment landed once on the new primary (none lost with the old one: WAIT-free writes could
        # be, but the replica had them all within the 20 ms between writes).
        assert int(await client.get("n") or 0) >= 299
    finally:
        await client.aclose()
    outage = [r.getMessage() for r in caplog.records if "not reachable" in r.getMessage()]
    back = [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(outage) == 1 and "Sentinel master 'mymaster'" in outage[0]
    assert len(back) == 1
    assert failover.writable_s < 30


# --- WAIT ----------------------------------------------------------------------------------------------


async def test_an_enqueue_without_a_replica_is_not_acknowledged(settings: Settings, primary: RedisServer) -> None:
    s = settings.model_copy(update={"redis_url": primary.url, "redis_wait_replicas": 1, "redis_wait_timeout_ms": 50})
    redis = aioredis.Redis.from_url(primary.url)
    try:
        with pytest.raises(NotReplicated) as err:
            await Producer(redis, s).enqueue(BODY, job_id="j1")
        assert ("acknowledged by 0 of the 1 replica(s) required (DIALER_REDIS_WAIT_REPLICAS) within 50 ms"
                in str(err.value))
        with pytest.raises(NotReplicated):
            await Producer(redis, s).enqueue_many([BODY, BODY])
        # Stored on the primary all the same: enqueueing again with the same id is answered as a duplicate.
        s0 = s.model_copy(update={"redis_wait_replicas": 0})
        assert (await Producer(redis, s0).enqueue(BODY, job_id="j1")).status == "duplicate"
    finally:
        await redis.aclose()


async def test_an_acknowledged_enqueue_is_already_on_the_replica(
    settings: Settings, primary: RedisServer, tmp_path: Path,
) -> None:
    replica = replica_of(tmp_path, primary)
    replica.start()
    s = settings.model_copy(update={"redis_url": primary.url, "redis_wait_replicas": 1,
                                    "redis_wait_timeout_ms": 5000})
    redis = aioredis.Redis.from_url(primary.url)
    on_replica = aioredis.Redis(port=replica.port)
    try:
        await wait_until(lambda: _linked(redis), 10)
        for i in range(20):
            result = await Producer(redis, s).enqueue(BODY, job_id=f"a{i}")
            assert result.status == "accepted"
            # No sleep: the answer came after the replica acknowledged.
            assert await on_replica.exists(Keys(s.key_prefix).job(f"a{i}")) == 1
        results = await Producer(redis, s).enqueue_many([{**BODY, "called": f"+86138000{i:05}"} for i in range(500)])
        ids = [r.job_id for r in results]
        assert await on_replica.exists(*[Keys(s.key_prefix).job(j) for j in ids if j]) == 500
    finally:
        await redis.aclose()
        await on_replica.aclose()
        replica.stop()


async def _linked(redis: aioredis.Redis) -> bool:
    info = await redis.info("replication")
    replica = info.get("slave0") or {}
    return int(info.get("connected_slaves", 0)) >= 1 and replica.get("state") == "online"


async def test_a_call_waits_until_a_replica_has_its_sending_mark(
    settings: Settings, primary: RedisServer, sim: Sim, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    base = settings.model_copy(update={"redis_url": primary.url, "api_base_url": sim.url})
    redis = aioredis.Redis.from_url(primary.url)
    try:
        [result] = await Producer(redis, base).enqueue_many([BODY])
        job_id = result.job_id
        assert job_id is not None
        s = base.model_copy(update={"redis_wait_replicas": 1, "redis_wait_timeout_ms": 50})
        caplog.set_level(logging.WARNING)
        async with running(s):
            await asyncio.sleep(2.5)
            # No replica: the request never left, the job is queued again with no attempt counted.
            assert created(await sim.requests()) == []
            record = await Ledger(redis, s).get(job_id)
            assert isinstance(record, JobRecord)
            assert record.state == "queued" and record.attempts == 0
            assert any("did not acknowledge a sending mark" in r.getMessage() for r in caplog.records)
            assert any("has 0 connected replica(s) and DIALER_REDIS_WAIT_REPLICAS is 1" in r.getMessage()
                       for r in caplog.records)
            replica = replica_of(tmp_path, primary)
            replica.start()
            try:
                async def sent() -> bool:
                    rec = await Ledger(redis, s).get(job_id)
                    return rec is not None and rec.state == "sent"

                await wait_until(sent, 20)
            finally:
                replica.stop()
        assert len(created(await sim.requests())) == 1
        rec = await Ledger(redis, s).get(job_id)
        assert rec is not None and rec.attempts == 1
    finally:
        await redis.aclose()


async def test_the_start_up_warning_says_what_is_unsafe_or_stuck(
    settings: Settings, primary: RedisServer, tmp_path: Path,
) -> None:
    redis = aioredis.Redis.from_url(primary.url)
    try:
        assert await replication_warning(redis, settings) is None  # one Redis, no wait: nothing to say
        unsafe = settings.model_copy(update={"redis_sentinels": ["h:1"], "redis_wait_replicas": 0})
        assert "unsafe" in (await replication_warning(redis, unsafe) or "")
        waits = settings.model_copy(update={"redis_wait_replicas": 1})
        assert "has 0 connected replica(s)" in (await replication_warning(redis, waits) or "")
        replica = replica_of(tmp_path, primary)
        replica.start()
        try:
            await wait_until(lambda: _linked(redis), 10)
            assert await replication_warning(redis, waits) is None
        finally:
            replica.stop()
    finally:
        await redis.aclose()
