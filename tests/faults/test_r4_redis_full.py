"""R4 (a full Redis): ``maxmemory`` reached with ``noeviction``, so Redis refuses every write. The HTTP
API answers 503 ``redis_full`` in the standard error shape, CLI commands print one line, and no log or
output line carries a phone number or a request body."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from tests.faults.conftest import report
from tests.helpers import RedisServer, run_dialer, settings_env
from worker.http import create_app
from worker.settings import Settings
from worker.store.client import api_client

pytestmark = [pytest.mark.faults, pytest.mark.slow]

KEY = "r4-full-redis-api-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
NUMBER = "1395550"  # every number used here starts with it
MARK = "r4-body-marker"


@pytest.fixture
async def full_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path, "--maxmemory", "1mb", "--maxmemory-policy", "noeviction")
    server.start()
    filler = aioredis.Redis(port=server.port)
    try:
        for i in range(500):
            try:
                await filler.set(f"fill:{i}", b"x" * 50_000)
            except aioredis.ResponseError:
                break
        else:
            raise AssertionError("Redis never filled up")
        yield server
    finally:
        await filler.aclose()
        server.stop()


def _call(i: int) -> dict[str, Any]:
    return {"called": f"{NUMBER}{i:04d}", "playList": [{"voiceId": "100001", "templateParams": [MARK]}],
            "priority": "3"}


async def test_r4_a_full_redis_answers_503_and_one_line_and_leaks_no_number_or_body(
    settings: Settings, full_redis: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    s = settings.model_copy(update={"redis_url": full_redis.url, "api_keys": [SecretStr(KEY)], "http_rate_limit": 0})
    redis = api_client(s)
    statuses: dict[str, str] = {}
    try:
        async with TestClient(TestServer(create_app(s, redis, open_provider=False), host="127.0.0.1")) as c:
            for name, path, payload in [("POST /v1/calls", "/v1/calls", _call(1)),
                                        ("POST /v1/calls:batch", "/v1/calls:batch",
                                         {"items": [_call(i) for i in range(2, 5)]})]:
                r = await c.post(path, json=payload, headers=AUTH)
                data = await r.json()
                statuses[name] = f"{r.status} {data['error']['code'] if 'error' in data else ''}".strip()
    finally:
        await redis.aclose()
    http_log = caplog.text

    csv = tmp_path / "full.csv"
    csv.write_text("called,templateParams\n" + "".join(f"{NUMBER}{i:04d},{MARK}\n" for i in range(10, 20)))
    env = settings_env(s)
    cli: dict[str, str] = {}
    cli_out = ""
    for name, args in [("dialer enqueue", ("enqueue", "--called", f"{NUMBER}0005", "--voice-id", "1",
                                           "--param", MARK)),
                       ("dialer campaign launch", ("campaign", "launch", str(csv), "--name", "full",
                                                   "--voice-id", "1")),
                       ("dialer suppress add", ("suppress", "add", f"{NUMBER}0006"))]:
        rc, out, err = await run_dialer(*args, env=env, timeout=60)
        lines = [line for line in err.splitlines() if line.strip()]
        cli[name] = f"exit {rc}, {len(lines)} line(s){', traceback' if 'Traceback' in err else ''}"
        cli_out += out + err
        assert rc != 0 and len(lines) == 1 and "is full" in lines[0], (name, out, err)

    leaks = [where for where, text in (("HTTP log", http_log), ("CLI output", cli_out))
             if NUMBER in text or MARK in text]
    report("R4 Redis full (maxmemory, noeviction)", {
        **{f"HTTP {k}": v for k, v in statuses.items()},
        **cli,
        "numbers or bodies in logs/output": leaks,
        "tracebacks in the HTTP log": http_log.count("Traceback"),
    })
    assert set(statuses.values()) == {"503 redis_full"}, statuses
    assert not leaks, leaks
    assert "Traceback" not in http_log
