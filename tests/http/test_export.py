"""``GET /v1/campaigns/{name}/export`` over real HTTP against a real Redis: who may download it (API key,
dashboard key, the dashboard's session cookie), 404 and 422 naming the parameter, the streamed body equal to
the module's export, reads stopping when the client leaves, the event loop kept free, an incomplete download
when Redis fails mid-stream, the OpenAPI entry, and the dashboard's link in a real Chromium."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from tests.campaigns.test_export import N, csv_rows, fill_campaign, mixed_campaign
from tests.helpers import free_port
from tests.http.test_dashboard import Browser, browser, chromium  # noqa: F401  (fixtures)
from worker.campaigns.export import COLUMNS, CampaignExport, parse_states
from worker.http import create_app
from worker.http.auth import COOKIE
from worker.http.openapi import OPENAPI_DOC
from worker.settings import Settings
from worker.store.keys import Keys

KEY = "export-api-key-0123456789"
DASH = "export-dash-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_keys": [SecretStr(KEY)], "dashboard_key": SecretStr(DASH)})


@pytest.fixture
async def client(api_settings: Settings, redis_client: aioredis.Redis) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(api_settings, redis_client, open_provider=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def module_export(redis: aioredis.Redis, settings: Settings, **kw: Any) -> bytes:
    return b"".join([d async for d in CampaignExport(redis, settings, "camp", **kw).stream()])


async def test_streams_the_export_as_a_chunked_attachment(
    client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    await mixed_campaign(redis_client, api_settings, tmp_path)
    r = await client.get("/v1/campaigns/camp/export", headers=AUTH)
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert r.headers["Content-Disposition"] == 'attachment; filename="camp-export.csv"'
    assert r.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in r.headers
    body = await r.read()
    assert body == await module_export(redis_client, api_settings)
    assert [row["called"] for row in csv_rows(body)] == N

    r = await client.get("/v1/campaigns/camp/export?format=jsonl&state=queued&state=failed", headers=AUTH)
    assert r.status == 200 and r.headers["Content-Type"] == "application/x-ndjson; charset=utf-8"
    assert r.headers["Content-Disposition"] == 'attachment; filename="camp-export.jsonl"'
    body = await r.read()
    assert body == await module_export(redis_client, api_settings, fmt="jsonl",
                                       states=parse_states(["queued", "failed"]))
    assert len(body.splitlines()) == 3

    r = await client.get("/v1/campaigns/camp/export?state=sent,unknown", headers=AUTH)
    assert [row["called"] for row in csv_rows(await r.read())] == [N[0], N[1], N[5]]


async def test_who_may_download(client: TestClient[Any, Any], api_settings: Settings,
                                redis_client: aioredis.Redis, tmp_path: Path) -> None:
    await mixed_campaign(redis_client, api_settings, tmp_path)
    path = "/v1/campaigns/camp/export"
    assert (await client.get(path)).status == 401
    assert (await client.get(path, headers={"Authorization": "Bearer wrong-key-0123456789"})).status == 401
    # A VIEW route: the read-only dashboard key may download it ...
    assert (await client.get(path, headers={"Authorization": f"Bearer {DASH}"})).status == 200
    # ... and so may the dashboard's session cookie alone (a plain link sends no X-Requested-With).
    r = await client.post("/login", data={"key": DASH}, allow_redirects=False)
    assert r.status == 303 and COOKIE in r.cookies
    r = await client.get(path)
    assert r.status == 200 and (await r.read()).startswith(",".join(COLUMNS).encode())
    await client.post("/logout", allow_redirects=False)
    assert (await client.get(path)).status == 401


async def test_404_and_422_name_what_is_wrong(client: TestClient[Any, Any], api_settings: Settings,
                                              redis_client: aioredis.Redis, tmp_path: Path) -> None:
    await mixed_campaign(redis_client, api_settings, tmp_path)
    r = await client.get("/v1/campaigns/nope/export", headers=AUTH)
    assert r.status == 404 and (await r.json())["error"]["message"] == "no campaign 'nope'"
    assert (await client.get("/v1/campaigns/a%20b/export", headers=AUTH)).status == 404

    async def refused(query: str) -> list[dict[str, str]]:
        r = await client.get("/v1/campaigns/camp/export?" + query, headers=AUTH)
        assert r.status == 422, await r.text()
        body = await r.json()
        assert body["error"]["code"] == "validation_failed"
        return list(body["error"]["fields"])

    allowed = "queued, sending, sent, failed, dead, unknown, cancelled, expired, suppressed, pending"
    assert await refused("format=xml") == [{"field": "format", "rule": "unknown format 'xml'; allowed: csv, jsonl"}]
    assert await refused("format=csv&format=jsonl") == [{"field": "format", "rule": "given more than once"}]
    assert await refused("state=sent,ringing") == [
        {"field": "state", "rule": f"unknown state 'ringing'; allowed: {allowed}"}]
    assert await refused("states=sent") == [
        {"field": "states", "rule": "unknown query parameter: use format and state"}]
    # Nothing is checked against Redis before the parameters are right: an unknown campaign with a bad
    # parameter is 422 too.
    r = await client.get("/v1/campaigns/nope/export?format=xml", headers=AUTH)
    assert r.status == 422


@pytest.mark.parametrize("cancel", [False, True], ids=["as-dialer-serve", "handler-cancellation"])
async def test_a_client_that_leaves_stops_the_reads(
    cancel: bool, api_settings: Settings, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # `dialer serve`'s runner leaves a handler running when its client goes away (the next write fails);
    # aiohttp's test server cancels it instead. Either way the reads stop.
    await fill_campaign(redis_client, api_settings, "big", 100_000)  # 100 slices of 1,000
    runner = web.AppRunner(create_app(api_settings, redis_client, open_provider=False), access_log=None,
                           handle_signals=False, handler_cancellation=cancel)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await redis_client.config_resetstat()
    try:
        with caplog.at_level(logging.INFO, logger="worker.http.campaigns"):
            async with aiohttp.ClientSession() as http:
                r = await http.get(f"http://127.0.0.1:{port}/v1/campaigns/big/export", headers=AUTH)
                assert r.status == 200
                first = await r.content.readline()
                assert first == (",".join(COLUMNS) + "\r\n").encode()
                r.close()  # the client goes away with the download unread

            async def left() -> bool:
                return any("the client left" in m or "cancelled" in m for m in caplog.messages)

            deadline = time.monotonic() + 10
            while not await left():
                assert time.monotonic() < deadline, caplog.messages
                await asyncio.sleep(0.05)
        assert ("the client left" if not cancel else "cancelled") in " ".join(caplog.messages)
        calls_then = await _script_calls(redis_client)
        await asyncio.sleep(0.5)
        assert await _script_calls(redis_client) == calls_then  # nothing more is read
        assert calls_then < 30, calls_then  # of 100 slices
    finally:
        await runner.cleanup()


async def _script_calls(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))


async def test_the_event_loop_stays_free_while_a_big_export_streams(
    client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis
) -> None:
    await fill_campaign(redis_client, api_settings, "big", 100_000)
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:  # the server runs in this event loop: a long stall shows as a long gap
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        r = await client.get("/v1/campaigns/big/export?format=jsonl", headers=AUTH)
        lines = 0
        async for line in r.content:
            lines += 1
            assert line.endswith(b"}\n")
    finally:
        done.set()
        await tick
    assert lines == 100_000
    assert max(gaps) < 0.5, f"longest stall {max(gaps) * 1000:.0f} ms"  # the whole export takes seconds


async def test_a_failure_mid_stream_leaves_the_download_incomplete(
    client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await fill_campaign(redis_client, api_settings, "camp", 3_000)
    keys = Keys(api_settings.key_prefix)
    # The 2,500th job's record is not a hash: the script of the third slice fails after two were sent.
    bad = (await redis_client.lindex(keys.campaign_jobs("camp"), 2_499)).decode()  # type: ignore[misc]
    await redis_client.delete(keys.job(bad))
    await redis_client.set(keys.job(bad), "not a hash")
    r = await client.get("/v1/campaigns/camp/export", headers=AUTH)
    assert r.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):  # not a clean end: the client knows the file is cut short
        await r.read()
    assert "export of campaign camp stopped after 2000 rows: ResponseError" in caplog.messages


async def test_the_route_is_documented(client: TestClient[Any, Any]) -> None:
    doc = client.server.app[OPENAPI_DOC]
    op = doc["paths"]["/v1/campaigns/{name}/export"]["get"]
    assert op["operationId"] == "exportCampaign"
    assert op["security"] == [{"bearerAuth": []}, {"sessionCookie": []}]
    params = {p["name"]: p for p in op["parameters"]}
    assert params["format"]["schema"]["enum"] == ["csv", "jsonl"] and params["format"]["in"] == "query"
    assert "suppressed" in params["state"]["schema"]["description"]
    assert set(op["responses"]) >= {"200", "401", "404", "422", "503"}
    assert "text/csv" in op["responses"]["200"]["content"]
    assert "Content-Disposition" in op["responses"]["200"]["headers"]


@pytest.mark.slow
async def test_the_dashboard_links_each_campaigns_export(
    browser: Browser, api_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path  # noqa: F811
) -> None:
    await mixed_campaign(redis_client, api_settings, tmp_path)
    server = TestServer(create_app(api_settings, redis_client, open_provider=False), host="127.0.0.1")
    await server.start_server(access_log=None)
    base = str(server.make_url("")).rstrip("/")
    try:
        page = await browser.new_page()
        await page.goto(base + "/?key=" + DASH)  # a read-only session: the link works for it too
        link = "document.querySelector('.campaign[data-campaign=\"camp\"] a[data-role=\"export\"]')"
        await page.wait_for(link + " !== null")
        assert await page.eval(link + ".getAttribute('href')") == "/v1/campaigns/camp/export?format=csv"
        assert await page.eval(link + ".getAttribute('download')") == "camp-export.csv"
        assert await page.eval(link + ".textContent") == "export CSV"
        # Following the link with nothing but the page's session cookie downloads the export.
        got = await page.eval(f"fetch({link}.href, {{credentials: 'same-origin'}}).then("
                              "r => r.text().then(t => [r.status, r.headers.get('content-disposition'), t]))")
        status, disposition, text = got
        assert status == 200 and disposition == 'attachment; filename="camp-export.csv"'
        assert text.encode() == await module_export(redis_client, api_settings)
        assert not browser.errors, browser.errors
    finally:
        await server.close()
