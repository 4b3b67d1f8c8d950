"""Shared fixtures: a private redis-server on a free port, settings pointing at it, the simulator.

Never touches the Redis on 6379: the session starts its own server and every test gets it flushed.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis

from worker.ledger.producer import Producer
from worker.ledger.transitions import Ledger
from worker.logs import JsonFormatter, TextFormatter
from worker.settings import Settings, load_settings
from worker.store.keys import Keys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server child process; restartable on the same port and data dir (for outage tests)."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.exit("redis-server is not installed: run ./scripts/test, which installs it", returncode=2)
        self.exe = exe
        self.port = free_port()
        self.workdir = workdir
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


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


class Proc:
    """A `dialer` subprocess started from async tests (the in-process simulator keeps serving)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def wait(self, timeout: float = 120) -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        return int(self.proc.returncode or 0), out.decode(), err.decode()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def start_dialer(*args: str, env: dict[str, str] | None = None) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.cli", *args,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    return Proc(proc)


async def run_dialer(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> tuple[int, str, str]:
    """Run `dialer ARGS` to completion; returns (exit code, stdout, stderr)."""
    return await (await start_dialer(*args, env=env)).wait(timeout)


def settings_env(settings: Settings) -> dict[str, str]:
    """The DIALER_* environment that reproduces ``settings`` in a subprocess."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        elif isinstance(value, list):
            value = json.dumps([v.get_secret_value() if hasattr(v, "get_secret_value") else v for v in value])
        env[f"DIALER_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


class Sim:
    """A running simulator (in this test's event loop) and helpers to read its request log."""

    def __init__(self, server: Any, url: str) -> None:
        self.server = server
        self.url = url

    async def log(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(self.url + "/_sim/log") as r:
            r.raise_for_status()
            data: dict[str, Any] = await r.json()
            return data

    async def requests(self) -> list[dict[str, Any]]:
        return list((await self.log())["requests"])

    async def configure(self, **patch: Any) -> None:
        async with aiohttp.ClientSession() as s, s.post(self.url + "/_sim/config", json=patch) as r:
            r.raise_for_status()


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


async def published(sub: Any, seconds: float = 1.0) -> list[bytes]:
    """The messages a redis-py PubSub received within ``seconds`` (subscribe confirmations left out)."""
    out: list[bytes] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        msg = await sub.get_message(ignore_subscribe_messages=True, timeout=left)
        if msg is not None and msg["type"] == "message":
            out.append(msg["data"])
    return out
