"""Shared fixtures: a private redis-server on a free port, settings pointing at it, the simulator.

Never touches the Redis on 6379: the session starts its own server and every test gets it flushed.
Plain helpers (ports, processes, waiting, ledger reads...) are in tests/helpers.py.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from tests.helpers import RedisServer, Sim
from worker.ledger.producer import Producer
from worker.ledger.transitions import Ledger
from worker.logs import JsonFormatter, TextFormatter
from worker.settings import Settings, load_settings
from worker.store.keys import Keys


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def settings(redis_url: str) -> Settings:
    """Settings for tests: private Redis, fast retries. Tests override fields with model_copy."""
    return load_settings(
        redis_url=redis_url,
        api_base_url="http://127.0.0.1:9",  # replaced by the simulator fixture's URL when used
        app_key="test-ak",
        app_secret="test-sk-DO-NOT-LEAK",
        retry_base_s=0.01,
        retry_max_backoff_s=0.05,
        request_timeout_s=2.0,
        rate_limit=0,
    )


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix)


@pytest.fixture
def ledger(redis_client: aioredis.Redis, settings: Settings) -> Ledger:
    return Ledger(redis_client, settings)


@pytest.fixture
def producer(redis_client: aioredis.Redis, settings: Settings) -> Producer:
    return Producer(redis_client, settings)


@pytest.fixture
async def sim(settings: Settings) -> AsyncIterator[Sim]:
    from aiohttp.test_utils import TestServer

    from worker.sandbox.simulator import SimulatorConfig, create_app

    app = create_app(SimulatorConfig(app_key=settings.app_key,
                                     app_secret=settings.app_secret.get_secret_value()))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Sim(server, str(server.make_url("")).rstrip("/"))
    await server.close()


@pytest.fixture
def sim_settings(settings: Settings, sim: Sim) -> Settings:
    """Settings pointing at the running simulator."""
    return settings.model_copy(update={"api_base_url": sim.url})


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Everything logged while the test runs, formatted as JSON lines and as text."""
    json_out, text_out = io.StringIO(), io.StringIO()
    handlers = [logging.StreamHandler(json_out), logging.StreamHandler(text_out)]
    handlers[0].setFormatter(JsonFormatter())
    handlers[1].setFormatter(TextFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    for h in handlers:
        root.addHandler(h)
    yield json_out, text_out
    for h in handlers:
        root.removeHandler(h)
    root.setLevel(old_level)
