"""The one Redis client factory (worker/store/client.py): each role meets an absent Redis its own way."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.helpers import free_port, run_dialer, settings_env
from worker.errors import SettingsError
from worker.settings import Settings, load_settings
from worker.store.client import CappedBackoff, api_client, cli_client, masked_url, worker_client
from worker.store.connections import DialerConnectionPool


def test_the_backoff_of_retry_forever_never_overflows() -> None:
    backoff = CappedBackoff(base=0.05, cap=2.0)
    assert backoff.compute(0) == 0.05
    assert backoff.compute(3) == 0.4
    # redis-py's ExponentialBackoff raised OverflowError here, ending "retry forever" after ~34 min.
    assert backoff.compute(1_024) == 2.0
    assert backoff.compute(10**9) == 2.0


async def test_a_worker_client_is_built_on_the_dialer_pool_and_works(settings: Settings) -> None:
    redis = worker_client(settings)
    try:
        assert type(redis.connection_pool) is DialerConnectionPool
        assert await redis.set("store-client", "1") and await redis.get("store-client") == b"1"
    finally:
        await redis.aclose()
    # aclose() closed the client's own pool too: no connection is left open.
    assert not redis.connection_pool._in_use_connections
    assert all(c.is_connected is False for c in redis.connection_pool._available_connections)


async def test_a_worker_client_waits_for_redis_instead_of_failing(settings: Settings) -> None:
    port = free_port()
    redis = worker_client(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"}))
    try:
        waiting = asyncio.ensure_future(redis.ping())
        await asyncio.sleep(1.5)
        assert not waiting.done()  # still retrying, not failed
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    finally:
        await redis.aclose()


@pytest.mark.parametrize("make", [cli_client, api_client])
async def test_cli_and_api_clients_fail_fast_when_redis_is_away(settings: Settings, make: object) -> None:
    redis: Redis = make(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}))  # type: ignore[operator]
    try:
        started = time.monotonic()
        with pytest.raises(RedisConnectionError):
            await redis.ping()
        assert time.monotonic() - started < 5
        assert type(redis.connection_pool) is ConnectionPool
    finally:
        await redis.aclose()


async def test_a_percent_encoded_password_reaches_redis(settings: Settings) -> None:
    # redis-py decodes the URL's user info; arq's RedisSettings.from_dsn did not.
    url = settings.redis_url.replace("redis://", "redis://default:p%40ss%3Aw%2Fo%23rd%25@")
    for make in (worker_client, api_client, cli_client):
        redis = make(settings.model_copy(update={"redis_url": url}))
        try:
            assert redis.connection_pool.connection_kwargs["password"] == "p@ss:w/o#rd%"
        finally:
            await redis.aclose()


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ("redis://:hunter2@h:1/0", "redis://:***@h:1/0"),
    ("rediss://bob:p%40ss@h:6380/2", "rediss://bob:***@h:6380/2"),
    ("redis://bob:pw@h:notaport/0", "redis://bob:***@h:notaport/0"),
])
def test_masked_url_hides_only_the_password(url: str, shown: str) -> None:
    assert masked_url(url) == shown


@pytest.mark.slow
@pytest.mark.parametrize("command", [("job", "x"), ("dead-letter", "list"), ("campaign", "list"),
                                     ("suppress", "list"), ("worker", "--check"),
                                     ("enqueue", "--called", "13800000001", "--voice-id", "v")])
async def test_a_cli_command_says_in_one_line_that_redis_is_away(settings: Settings, command: tuple[str, ...]) -> None:
    env = {**settings_env(settings), "DIALER_REDIS_URL": f"redis://bob:s3cr%40t@127.0.0.1:{free_port()}/0"}
    started = time.monotonic()
    rc, out, err = await run_dialer(*command, env=env, timeout=30)
    assert time.monotonic() - started < 10
    assert rc != 0, (out, err)
    assert "Traceback" not in err and "s3cr" not in err + out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: Redis is not reachable at redis://bob:***@127.0.0.1:"), err


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:6379/0", "127.0.0.1:6379", "redis://127.0.0.1:notaport/0", "redis://127.0.0.1:70000/0",
    "redis://[::1/0", "redis:///0", "redis://127.0.0.1:6379/zero",
    # Passwords typed without percent-encoding: "/" ends the host part, "#" starts a fragment, "?" a query.
    "redis://:pa/ss9@127.0.0.1:6379/0", "redis://:pa#ss9@127.0.0.1:6379/0", "redis://:pa?ss9@127.0.0.1:6379/0",
])
def test_a_malformed_redis_url_is_refused_by_the_settings_naming_the_rule_not_the_value(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(redis_url=url)
    message = str(caught.value)
    assert "DIALER_REDIS_URL: must be redis://" in message and "percent-encode" in message
    assert "ss9" not in message and "notaport" not in message


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "redis://localhost", "rediss://bob:p%40ss@h:6380/2",
                                 "redis://:p%2F%23%3F@[::1]:6379", "unix:///run/redis.sock?db=3"])
def test_well_formed_redis_urls_are_accepted(url: str) -> None:
    assert load_settings(redis_url=url).redis_url == url


@pytest.mark.slow
@pytest.mark.parametrize("command", [("job", "x"), ("campaign", "list"), ("suppress", "list"), ("worker",),
                                     ("worker", "--check"), ("serve",),
                                     ("enqueue", "--called", "13800000001", "--voice-id", "v")])
async def test_every_command_refuses_a_malformed_redis_url_in_one_line(
    settings: Settings, command: tuple[str, ...]
) -> None:
    env = {**settings_env(settings), "DIALER_REDIS_URL": "redis://:hunter/22@127.0.0.1:6379/0"}
    rc, out, err = await run_dialer(*command, env=env, timeout=30)
    assert rc != 0, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: invalid settings: DIALER_REDIS_URL: must be redis://"), err
    assert "hunter" not in err + out and "22" not in lines[0].split("must be")[0]


async def test_stale_connections_failing_right_after_redis_is_back_are_not_a_new_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # After a restart, the pool's other connections fail once each just after the first command
    # succeeded; at full size (fault R2) that logged 2-5 "not reachable"/"reachable again" pairs.
    from redis.exceptions import ConnectionError as Down

    from worker.store.client import CappedBackoff, OutageRetry

    retry = OutageRetry(CappedBackoff(base=0.001, cap=0.001), retries=-1, where="redis://h:1/0")
    retry.update_supported_errors([Down])
    left = {"n": 0}

    async def flaky() -> str:
        if left["n"] > 0:
            left["n"] -= 1
            raise Down("reset")
        return "ok"

    async def nothing(_error: object) -> None:
        return None

    caplog.set_level(logging.WARNING, logger="worker.store.client")
    left["n"] = 50  # an outage: announced once, and its end once
    assert await retry.call_with_retry(flaky, nothing) == "ok"
    for _ in range(5):  # stale connections, each failing twice right after the success
        left["n"] = 2
        assert await retry.call_with_retry(flaky, nothing) == "ok"
    lines = [r.getMessage() for r in caplog.records if r.name == "worker.store.client"]
    assert [line.split(" at ")[0] for line in lines] == ["Redis is not reachable", "Redis is reachable again"]
