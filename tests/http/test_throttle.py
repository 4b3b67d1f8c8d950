"""Per-key throttle of ``dialer serve`` (DIALER_HTTP_RATE_LIMIT / DIALER_HTTP_RATE_BURST), against the test
Redis over real HTTP: 429 with the error JSON and Retry-After, nothing done for a refused request, keys
independent, the limit shared by two app instances, open routes exempt, 0 = off, bad settings refused,
no key material anywhere, and fail-open when Redis is down.

Rates are slow (one request per 10 s) wherever a test needs a burst to be exhausted before any slot
comes back, so a slow, shared machine cannot make them flaky; only the refill test waits for real time.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.helpers import free_port, run_dialer
from worker.errors import SettingsError
from worker.http import DEFAULT_MODULES, Access, Reply, Route, create_app
from worker.http.auth import COOKIE, key_id
from worker.http.openapi import OPENAPI_DOC
from worker.ledger.transitions import Ledger
from worker.settings import Settings, load_settings
from worker.store.keys import Keys

KEY = "throttle-test-key-0123456789"
KEY2 = "throttle-other-key-9876543210"
DASH = "throttle-dashboard-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
AUTH2 = {"Authorization": f"Bearer {KEY2}"}
DASH_AUTH = {"Authorization": f"Bearer {DASH}"}
SLOW = 0.1  # requests/s: one slot every 10 s, so nothing refills while a test exhausts a burst
ROOT = Path(__file__).resolve().parents[2]

Client = TestClient[Any, Any]


def call(called: str = "8899") -> dict[str, Any]:
    return {"called": called, "playList": [{"voiceId": "100001"}], "priority": "4"}


class Probe:
    """A route module with one protected route that needs no Redis and counts how often it ran."""

    def __init__(self) -> None:
        self.runs = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.runs += 1
        return web.json_response({"ok": True})

    def routes(self, settings: Settings) -> list[Route]:
        return [Route("POST", "/probe", self.handle, "Probe", Access.API, operation_id="probe", uses_redis=False,
                      responses={200: Reply("Ran.", None)})]


def limited(settings: Settings, rate: float = SLOW, burst: int = 3) -> Settings:
    return settings.model_copy(update={
        "api_keys": [SecretStr(KEY), SecretStr(KEY2)], "dashboard_key": SecretStr(DASH),
        "http_rate_limit": rate, "http_rate_burst": burst,
    })


@asynccontextmanager
async def serving(settings: Settings, redis: aioredis.Redis, probe: Probe | None = None) -> AsyncIterator[Client]:
    modules = (*DEFAULT_MODULES, probe) if probe is not None else DEFAULT_MODULES
    app = create_app(settings, redis, open_provider=False, modules=modules)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def throttle_keys(redis: aioredis.Redis, settings: Settings) -> list[str]:
    return sorted(k.decode() for k in await redis.keys(Keys(settings.key_prefix).rate("http:*")))


def assert_429(status: int, headers: Any, data: Any) -> int:
    """The common error JSON with code too_many_requests and a sane Retry-After; returns Retry-After."""
    assert status == 429, (status, data)
    assert set(data) == {"error"} and set(data["error"]) == {"code", "message", "fields"}
    assert data["error"]["code"] == "too_many_requests" and data["error"]["fields"] == []
    retry_after = headers["Retry-After"]
    assert re.fullmatch(r"[1-9][0-9]*", retry_after), retry_after
    assert f"Retry in {retry_after} s" in data["error"]["message"], data
    return int(retry_after)


async def throttled_count(client: Client, key: str, route: str) -> float:
    r = await client.get("/metrics")
    assert r.status == 200
    for family in text_string_to_metric_families(await r.text()):
        if family.name == "dialer_http_throttled":
            for s in family.samples:
                if s.name.endswith("_total") and s.labels == {"key_id": key_id(SecretStr(key)), "route": route}:
                    return float(s.value)
    return 0.0


# --- the limit itself ------------------------------------------------------------------------------


async def test_a_key_over_its_burst_gets_429_and_the_refused_request_does_nothing(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    s = limited(settings, burst=3)
    probe = Probe()
    async with serving(s, redis_client, probe) as client:
        metric_before = await throttled_count(client, KEY, "/v1/calls")
        for i in range(3):
            r = await client.post("/v1/calls", json=call(f"880{i}"), headers={**AUTH, "Idempotency-Key": f"ok-{i}"})
            assert r.status == 202, await r.text()
        r = await client.post("/v1/calls", json=call("8809"), headers={**AUTH, "Idempotency-Key": "refused"})
        retry_after = assert_429(r.status, r.headers, await r.json())
        assert retry_after <= 10  # one slot per 10 s
        message = (await r.json())["error"]["message"]
        assert "0.1 requests/s" in message and "bursts of 3" in message

        # Nothing of the refused call reached Redis: no ledger record, no arq job, not on its queue.
        keys = Keys(s.key_prefix)
        assert await Ledger(redis_client, s).get("refused") is None
        assert not await redis_client.exists(keys.job("refused"), keys.arq_job("refused"))
        queued = {m.decode() for m in await redis_client.zrange(keys.queue(4), 0, -1)}
        assert queued == {"ok-0", "ok-1", "ok-2"}

        # Every protected route of that key is refused, reads included, and the handler never runs.
        r = await client.post("/probe", headers=AUTH)
        assert_429(r.status, r.headers, await r.json())
        assert probe.runs == 0
        r = await client.get("/v1/calls/ok-0", headers=AUTH)
        assert_429(r.status, r.headers, await r.json())

        assert await throttled_count(client, KEY, "/v1/calls") == metric_before + 1
        assert await throttled_count(client, KEY, "/probe") >= 1
    assert await throttle_keys(redis_client, s) == [Keys(s.key_prefix).rate("http:" + key_id(SecretStr(KEY)))]


async def test_another_key_is_not_affected(settings: Settings, redis_client: aioredis.Redis) -> None:
    s = limited(settings, burst=2)
    probe = Probe()
    async with serving(s, redis_client, probe) as client:
        statuses = [(await client.post("/probe", headers=AUTH)).status for _ in range(4)]
        assert statuses == [200, 200, 429, 429]
        assert [(await client.post("/probe", headers=AUTH2)).status for _ in range(2)] == [200, 200]
        r = await client.get("/dashboard/data", headers=DASH_AUTH)
        assert r.status == 200
        assert probe.runs == 4
        assert (await client.post("/probe", headers=AUTH)).status == 429  # still refused


async def test_a_refused_key_is_served_again_after_retry_after(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    s = limited(settings, rate=0.5, burst=2)  # a slot every 2 s
    probe = Probe()
    async with serving(s, redis_client, probe) as client:
        served = 0
        for _ in range(10):
            r = await client.post("/probe", headers=AUTH)
            if r.status == 429:
                break
            assert r.status == 200
            served += 1
        assert 2 <= served <= 3, served  # the burst (plus a slot, on a very slow machine)
        retry_after = assert_429(r.status, r.headers, await r.json())
        assert retry_after <= 2
        await asyncio.sleep(retry_after + 0.25)
        r = await client.post("/probe", headers=AUTH)
        assert r.status == 200, await r.text()
        # Only one slot came back: the next request at once is refused again.
        r = await client.post("/probe", headers=AUTH)
        assert_429(r.status, r.headers, await r.json())
        assert probe.runs == served + 1


async def test_two_app_instances_share_the_limit(
    settings: Settings, redis_client: aioredis.Redis, redis_url: str
) -> None:
    s = limited(settings, burst=4)
    other_redis = aioredis.Redis.from_url(redis_url)  # as another `dialer serve` process would have
    try:
        async with serving(s, redis_client, Probe()) as a, serving(s, other_redis, Probe()) as b:
            assert [(await a.post("/probe", headers=AUTH)).status for _ in range(2)] == [200, 200]
            assert [(await b.post("/probe", headers=AUTH)).status for _ in range(2)] == [200, 200]
            for client in (a, b):
                r = await client.post("/probe", headers=AUTH)
                assert_429(r.status, r.headers, await r.json())
            # The other key is still fresh on both.
            assert (await b.post("/probe", headers=AUTH2)).status == 200
            assert (await a.post("/probe", headers=AUTH2)).status == 200
    finally:
        await other_redis.aclose()


async def test_open_routes_and_failed_authentication_are_never_throttled(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    s = limited(settings, burst=1)
    async with serving(s, redis_client, Probe()) as client:
        assert (await client.post("/probe", headers=AUTH)).status == 200
        assert (await client.post("/probe", headers=AUTH)).status == 429  # the key has nothing left
        release = {"callSerialNo": "1197765398201387012", "releaseReason": "1"}
        for _ in range(5):
            got = {
                "healthz": (await client.get("/healthz", headers=AUTH)).status,
                "readyz": (await client.get("/readyz", headers=AUTH)).status,
                "metrics": (await client.get("/metrics", headers=AUTH)).status,
                "openapi": (await client.get("/openapi.json", headers=AUTH)).status,
                "callback": (await client.post("/v1/callbacks/release", json=release, headers=AUTH)).status,
                "index": (await client.get("/", headers=AUTH)).status,
                "script": (await client.get("/dashboard.js", headers=AUTH)).status,
                "style": (await client.get("/dashboard.css", headers=AUTH)).status,
                "login": (await client.post("/login", data={"key": KEY}, allow_redirects=False)).status,
                "logout": (await client.post("/logout", allow_redirects=False)).status,
            }
            assert 429 not in got.values(), got
            assert got["healthz"] == got["metrics"] == got["openapi"] == got["index"] == 200, got
            # The callback is refused by its own rule (unsigned, no shared key set), never by the throttle.
            assert got["callback"] == 401 and got["login"] == got["logout"] == 303, got
            # A wrong key is refused by authentication, never counted (it has no key_id to count against).
            r = await client.post("/probe", headers={"Authorization": "Bearer not-a-configured-key-000"})
            assert r.status == 401
            assert (await client.post("/probe")).status == 401
        assert (await client.post("/probe", headers=AUTH)).status == 429  # the limit was in force all along
    assert await throttle_keys(redis_client, s) == [Keys(s.key_prefix).rate("http:" + key_id(SecretStr(KEY)))]


async def test_a_dashboard_session_counts_against_the_key_that_logged_in(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    s = limited(settings, burst=2)
    async with serving(s, redis_client) as client:
        login = await client.post("/login", data={"key": DASH}, allow_redirects=False)
        assert login.status == 303
        cookie = {"Cookie": f"{COOKIE}={login.cookies[COOKIE].value}"}
        client.session.cookie_jar.clear()
        assert (await client.get("/dashboard/data", headers=cookie)).status == 200
        assert (await client.get("/dashboard/data", headers=DASH_AUTH)).status == 200
        r = await client.get("/dashboard/data", headers=cookie)
        assert_429(r.status, r.headers, await r.json())
        assert (await client.get("/dashboard/data", headers=AUTH)).status == 200  # an API key is separate


def test_the_default_limit_leaves_room_for_many_polling_dashboards() -> None:
    found = re.search(r"const POLL_MS = (\d+);", (ROOT / "worker/http/dashboard.js").read_text())
    assert found is not None
    poll_ms = int(found[1])
    rate = Settings.model_fields["http_rate_limit"].default
    burst = Settings.model_fields["http_rate_burst"].default
    # One open dashboard makes 1000/POLL_MS requests/s; the default must carry dozens on one key, so that
    # a shared dashboard key (or an API key also used by scripts) never starves the page.
    assert rate * poll_ms / 1000 >= 50, (rate, poll_ms)
    assert burst >= 10


async def test_limit_zero_turns_the_throttle_off(settings: Settings, redis_client: aioredis.Redis) -> None:
    s = limited(settings, rate=0, burst=1)
    probe = Probe()
    async with serving(s, redis_client, probe) as client:
        statuses = [(await client.post("/probe", headers=AUTH)).status for _ in range(40)]
        assert statuses == [200] * 40
        doc = await (await client.get("/openapi.json")).json()
    assert probe.runs == 40
    assert await throttle_keys(redis_client, s) == []  # not even a Redis call
    assert not [op for ops in doc["paths"].values() for op in ops.values() if "429" in op["responses"]]


async def test_openapi_documents_429_with_retry_after_on_exactly_the_throttled_routes(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    app = create_app(limited(settings), redis_client, open_provider=False)
    doc = app[OPENAPI_DOC]
    validate(doc)
    with_429 = {(m.upper(), p) for p, ops in doc["paths"].items() for m, op in ops.items() if "429" in op["responses"]}
    protected = {(m.upper(), p) for p, ops in doc["paths"].items() for m, op in ops.items() if op["security"]}
    assert with_429 == protected
    assert {("POST", "/v1/calls"), ("POST", "/v1/calls:batch"), ("GET", "/dashboard/data")} <= with_429
    for never in [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/openapi.json"),
                  ("POST", "/v1/callbacks/release"), ("GET", "/"), ("POST", "/login")]:
        assert never not in with_429, never
    reply = doc["paths"]["/v1/calls"]["post"]["responses"]["429"]
    assert reply["headers"]["Retry-After"]["schema"] == {"type": "integer", "minimum": 1}
    assert reply["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


# --- settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"http_rate_limit": -1}, "DIALER_HTTP_RATE_LIMIT"),
        ({"http_rate_limit": "fast"}, "DIALER_HTTP_RATE_LIMIT"),
        ({"http_rate_limit": float("inf")}, "DIALER_HTTP_RATE_LIMIT"),
        ({"http_rate_limit": float("nan")}, "DIALER_HTTP_RATE_LIMIT"),
        ({"http_rate_limit": 0.001}, "DIALER_HTTP_RATE_LIMIT"),
        ({"http_rate_burst": 0}, "DIALER_HTTP_RATE_BURST"),
        ({"http_rate_burst": 2.5}, "DIALER_HTTP_RATE_BURST"),
        ({"http_rate_burst": 1_000_000}, "DIALER_HTTP_RATE_BURST"),
    ],
)
def test_bad_throttle_settings_are_refused_naming_the_variable(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(**overrides)


def test_throttle_settings_defaults_and_off() -> None:
    assert load_settings(http_rate_limit=0).http_rate_limit == 0
    assert load_settings(http_rate_limit="0.01", http_rate_burst="1").http_rate_burst == 1


@pytest.mark.slow
async def test_dialer_serve_refuses_a_bad_throttle_setting(redis_url: str) -> None:
    rc, _out, err = await run_dialer("serve", env={"DIALER_HTTP_RATE_BURST": "0", "DIALER_REDIS_URL": redis_url,
                                                   "DIALER_API_KEYS": KEY}, timeout=60)
    assert rc != 0
    assert "DIALER_HTTP_RATE_BURST" in err and "Traceback" not in err


# --- secrets and outages ---------------------------------------------------------------------------


async def test_no_key_material_in_the_429_or_the_logs(
    settings: Settings, redis_client: aioredis.Redis, captured: tuple[io.StringIO, io.StringIO]
) -> None:
    s = limited(settings, burst=1)
    async with serving(s, redis_client, Probe()) as client:
        assert (await client.post("/probe", headers=AUTH)).status == 200
        r = await client.post("/probe", headers=AUTH)
        raw = await r.text()
        assert_429(r.status, r.headers, json.loads(raw))
        metrics_text = await (await client.get("/metrics")).text()
    json_out, text_out = captured
    for text in (raw, str(dict(r.headers)), metrics_text, json_out.getvalue(), text_out.getvalue()):
        assert KEY not in text and KEY[:12] not in text
    assert f'key_id="{key_id(SecretStr(KEY))}"' in metrics_text
    access = [json.loads(line) for line in json_out.getvalue().splitlines()
              if line.startswith("{") and json.loads(line).get("status") == 429]
    assert access and access[0]["key_id"] == key_id(SecretStr(KEY)) and access[0]["route"] == "/probe"


async def test_redis_down_fails_open_with_one_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """With Redis unreachable the throttle lets requests through (routes that need Redis answer 503 on
    their own), and says so once, not once per request."""
    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
    s = limited(settings, burst=1).model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    probe = Probe()
    try:
        with caplog.at_level(logging.WARNING, logger="worker.http.throttle"):
            async with serving(s, dead, probe) as client:
                assert [(await client.post("/probe", headers=AUTH)).status for _ in range(3)] == [200] * 3
                r = await client.get("/v1/calls/anything", headers=AUTH)
                assert r.status == 503 and (await r.json())["error"]["code"] == "redis_unavailable"
    finally:
        await dead.aclose()
    assert probe.runs == 3
    warnings = [rec for rec in caplog.records if rec.name == "worker.http.throttle"]
    assert len(warnings) == 1, [w.getMessage() for w in warnings]
    assert "Redis unavailable" in warnings[0].getMessage() and KEY not in warnings[0].getMessage()
