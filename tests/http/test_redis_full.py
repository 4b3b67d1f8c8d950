"""Redis full (maxmemory with noeviction): the API answers 503 in the standard error shape, and no log
line carries a phone number or a request body."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from tests.helpers import RedisServer
from worker.http import create_app
from worker.settings import Settings
from worker.store.client import api_client

KEY = "redis-full-api-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
NUMBER = "13912345678"
SECRET_PARAM = "body-marker-7f3a"


@pytest.fixture
async def full_redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path, "--maxmemory", "1mb", "--maxmemory-policy", "noeviction")
    server.start()
    filler = aioredis.Redis(port=server.port)
    try:
        # Fill it: noeviction refuses every write from here on.
        for i in range(200):
            try:
                await filler.set(f"fill:{i}", b"x" * 100_000)
            except aioredis.ResponseError:
                break
        yield server
    finally:
        await filler.aclose()
        server.stop()


@pytest.fixture
async def client(settings: Settings, full_redis: RedisServer) -> AsyncIterator[TestClient[Any, Any]]:
    s = settings.model_copy(update={"redis_url": full_redis.url, "api_keys": [SecretStr(KEY)], "http_rate_limit": 0})
    redis = api_client(s)
    app = create_app(s, redis, open_provider=False)
    try:
        async with TestClient(TestServer(app, host="127.0.0.1")) as c:
            yield c
    finally:
        await redis.aclose()


def _call(i: int = 0) -> dict[str, Any]:
    return {"called": NUMBER[:-1] + str(i), "playList": [{"voiceId": "100001", "templateParams": [SECRET_PARAM]}],
            "priority": "2"}


@pytest.mark.slow
@pytest.mark.parametrize(("path", "payload"), [
    ("/v1/calls", _call()),
    ("/v1/calls:batch", {"items": [_call(i) for i in range(3)]}),
])
async def test_a_full_redis_answers_503_json_and_logs_no_number_or_body(
    client: TestClient[Any, Any], caplog: pytest.LogCaptureFixture, path: str, payload: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    r = await client.post(path, json=payload, headers=AUTH)
    data = await r.json()
    assert r.status == 503, data
    assert r.headers.get("Retry-After")
    assert set(data) == {"error"} and data["error"]["code"] == "redis_full", data
    assert set(data["error"]) == {"code", "message", "fields"}
    logged = "\n".join(rec.getMessage() + (caplog.text if rec.exc_info else "") for rec in caplog.records)
    logged += caplog.text
    assert NUMBER[:-1] not in logged and SECRET_PARAM not in logged, logged
    assert "Traceback" not in logged
    assert any("Redis is full" in rec.getMessage() and rec.levelno == logging.WARNING for rec in caplog.records)


@pytest.mark.parametrize("error", [ValueError(f"bad {NUMBER} {SECRET_PARAM}"),
                                   aioredis.ResponseError(f"Command # 1 (EVALSHA x {NUMBER}) of pipeline failed")])
async def test_an_unexpected_error_logs_where_it_failed_but_not_its_text(
    caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    from aiohttp import web

    from worker.http.errors import error_middleware

    async def handler(_request: web.Request) -> web.Response:
        raise error

    app = web.Application(middlewares=[error_middleware])
    app.router.add_post("/x", handler)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        r = await c.post("/x", json=_call())
        assert r.status == 500 and (await r.json())["error"]["code"] == "internal"
    assert "unhandled error" in caplog.text and "in handler" in caplog.text
    assert NUMBER not in caplog.text and SECRET_PARAM not in caplog.text, caplog.text
