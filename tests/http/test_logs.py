"""Structured logs: one JSON object per line with the job fields, a readable text mode, no secret."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from worker.http import create_app
from worker.logs import job_fields
from worker.settings import Settings

KEY = "log-test-api-key-0123456789"


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


def test_a_job_event_is_one_json_line_with_its_fields(captured: tuple[io.StringIO, io.StringIO]) -> None:
    json_out, text_out = captured
    log = logging.getLogger("worker.dispatch.dispatcher")
    log.info(
        "job %s -> %s", "spring:8899", "sent",
        extra={**job_fields("spring:8899", campaign="spring", priority="3", attempt=2, outcome="sent",
                            latency_s=0.0412, status=200, ret_code="0"),
               "authorization": "Bearer tok-SECRET", "token": SecretStr("tok-SECRET")},
    )
    [line] = [x for x in lines(json_out) if x["logger"] == "worker.dispatch.dispatcher"]
    assert line["msg"] == "job spring:8899 -> sent"
    assert line["level"] == "info" and line["ts"].endswith("Z")
    assert {k: line[k] for k in ("job_id", "campaign", "priority", "attempt", "outcome", "latency_ms")} == {
        "job_id": "spring:8899", "campaign": "spring", "priority": 3, "attempt": 2, "outcome": "sent",
        "latency_ms": 41.2,
    }
    assert line["authorization"] == "[redacted]" and line["token"] == "[redacted]"
    assert "tok-SECRET" not in json_out.getvalue() and "tok-SECRET" not in text_out.getvalue()
    text = text_out.getvalue()
    assert "job spring:8899 -> sent  job_id=spring:8899 campaign=spring priority=3 attempt=2 outcome=sent" in text


def test_secretstr_values_never_print(captured: tuple[io.StringIO, io.StringIO]) -> None:
    json_out, _ = captured
    logging.getLogger("worker.x").warning("settings", extra={"app_key": SecretStr("AK-SECRET")})
    assert "AK-SECRET" not in json_out.getvalue() and "**********" in json_out.getvalue()


async def test_access_log_lines_hold_no_key(
    captured: tuple[io.StringIO, io.StringIO], settings: Settings, redis_client: aioredis.Redis
) -> None:
    json_out, text_out = captured
    app = create_app(settings.model_copy(update={"api_keys": [SecretStr(KEY)]}), redis_client, open_provider=False)
    # access_log=None as in `dialer serve`: aiohttp's own access log would print query strings.
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log=None)
    async with TestClient(server) as c:
        r = await c.post("/v1/calls", json={"called": "8899", "playList": [{"voiceId": "1"}]},
                         headers={"Authorization": f"Bearer {KEY}", "Idempotency-Key": "log-1"})
        assert r.status == 202
        r = await c.get("/v1/calls/log-1?key=" + KEY, headers={"Authorization": "Bearer wrong-key-123456789"})
        assert r.status == 401
    access = [x for x in lines(json_out) if x["logger"] == "worker.http.access"]
    ok = next(x for x in access if x["status"] == 202)
    assert ok["method"] == "POST" and ok["route"] == "/v1/calls" and ok["latency_ms"] >= 0
    assert len(ok["key_id"]) == 8 and ok["key_id"] not in KEY
    refused = next(x for x in access if x["status"] == 401)
    assert refused["route"] == "/v1/calls/{job_id}" and refused["key_id"] is None
    for out in (json_out.getvalue(), text_out.getvalue()):
        assert KEY not in out and "wrong-key-123456789" not in out


async def test_an_oversized_authorization_or_cookie_header_never_reaches_the_log(
    captured: tuple[io.StringIO, io.StringIO], settings: Settings, redis_client: aioredis.Redis
) -> None:
    # aiohttp refuses a header over 8 KB and logged the bytes it choked on (the key) with a traceback.
    import asyncio

    json_out, text_out = captured
    app = create_app(settings.model_copy(update={"api_keys": [SecretStr(KEY)]}), redis_client, open_provider=False)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log=None)
    try:
        for header in (f"Authorization: Bearer {KEY}", f"Cookie: dialer_session={KEY}"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(f"GET /v1/calls/x HTTP/1.1\r\nHost: x\r\n{header}{'k' * 9000}\r\n\r\n".encode())
            await writer.drain()
            assert (await reader.read(64)).startswith(b"HTTP/1.0 400")
            writer.close()
        await asyncio.sleep(0.1)
    finally:
        await server.close()
    refused = [x for x in lines(json_out) if x["logger"] == "aiohttp.server"]
    assert len(refused) == 2 and all("LineTooLong" in x["msg"] and "exc" not in x for x in refused), refused
    for out in (json_out.getvalue(), text_out.getvalue()):
        assert KEY not in out and "kkkkkkkk" not in out
