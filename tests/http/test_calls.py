"""The HTTP enqueue API against a real Redis, over real HTTP on 127.0.0.1: happy paths, idempotency,
batches with mixed items, every error status, and authentication."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from tests.helpers import free_port
from worker.http import DEFAULT_MODULES, Access, Reply, Route, create_app
from worker.http.auth import COOKIE, Authenticator
from worker.http.schemas import DashboardData
from worker.ledger.transitions import Ledger
from worker.settings import Settings
from worker.store.keys import Keys

KEY = "test-api-key-0123456789"
KEY2 = "second-api-key-9876543210"
DASH = "test-dashboard-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def body(called: str = "8899", priority: str | None = "2", **extra: Any) -> dict[str, Any]:
    b: dict[str, Any] = {"called": called, "playList": [{"voiceId": "100001", "templateParams": ["a"]}], **extra}
    if priority is not None:
        b["priority"] = priority
    return b


def iso(delta_s: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat()


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "api_keys": [SecretStr(KEY), SecretStr(KEY2)], "dashboard_key": SecretStr(DASH),
        "http_max_batch": 6, "http_max_body_bytes": 16 * 1024,
        # The throttle's bookkeeping key would count in the "nothing stored" checks (dbsize() == 0);
        # throttling itself is tested in test_http_throttle.py.
        "http_rate_limit": 0,
    })


@pytest.fixture
async def client(api_settings: Settings, redis_client: aioredis.Redis) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(api_settings, redis_client, open_provider=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def queue_members(redis_client: aioredis.Redis, settings: Settings, priority: int) -> set[str]:
    return {m.decode() for m in await redis_client.zrange(Keys(settings.key_prefix).queue(priority), 0, -1)}


def assert_error(data: Any, code: str) -> None:
    assert set(data) == {"error"}
    assert set(data["error"]) == {"code", "message", "fields"}
    assert data["error"]["code"] == code, data


# --- POST /v1/calls --------------------------------------------------------------------------------


async def test_enqueue_then_repeat_returns_the_first_job(
    client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis
) -> None:
    r = await client.post("/v1/calls", json=body(), headers={**AUTH, "Idempotency-Key": "order-4711"})
    assert r.status == 202
    first = await r.json()
    assert first["id"] == "order-4711" and first["status"] == "accepted" and first["state"] == "queued"
    assert r.headers["Location"] == "/v1/calls/order-4711"
    assert first["job"]["body"] == body() and first["job"]["priority"] == 2
    assert await queue_members(redis_client, api_settings, 2) == {"order-4711"}

    again = await client.post("/v1/calls", json=body(), headers={**AUTH, "Idempotency-Key": "order-4711"})
    assert again.status == 200
    second = await again.json()
    assert second["status"] == "duplicate" and second["id"] == "order-4711"
    assert second["job"]["created_at"] == first["job"]["created_at"]
    assert await queue_members(redis_client, api_settings, 2) == {"order-4711"}


async def test_same_key_with_another_call_is_a_409_and_changes_nothing(
    client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis
) -> None:
    await client.post("/v1/calls", json=body(), headers={**AUTH, "Idempotency-Key": "k1"})
    r = await client.post("/v1/calls", json=body(called="13800000001"), headers={**AUTH, "Idempotency-Key": "k1"})
    assert r.status == 409
    data = await r.json()
    assert_error(data, "idempotency_conflict")
    assert data["error"]["fields"] == [{"field": "Idempotency-Key", "rule": "already used for a different call"}]
    record = await Ledger(redis_client, api_settings).get("k1")
    assert record is not None and record.called == "8899"


async def test_explicit_default_priority_is_the_same_call(client: TestClient[Any, Any]) -> None:
    r1 = await client.post("/v1/calls", json=body(priority=None), headers={**AUTH, "Idempotency-Key": "p9"})
    r2 = await client.post("/v1/calls", json=body(priority="9"), headers={**AUTH, "Idempotency-Key": "p9"})
    assert (r1.status, r2.status) == (202, 200)


async def test_without_a_key_every_post_is_a_new_job(client: TestClient[Any, Any]) -> None:
    ids = {(await (await client.post("/v1/calls", json=body(), headers=AUTH)).json())["id"] for _ in range(3)}
    assert len(ids) == 3


async def test_campaign_not_before_and_deadline(
    client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis
) -> None:
    nb, dl = iso(3600), iso(7200)
    r = await client.post("/v1/calls", json=body(campaign="spring", notBefore=nb, deadline=dl), headers=AUTH)
    assert r.status == 202
    job = (await r.json())["job"]
    assert job["id"] == "spring:8899" and job["campaign"] == "spring"
    assert abs(datetime.fromisoformat(job["not_before"]) - datetime.fromisoformat(nb)) < timedelta(seconds=1)
    assert abs(datetime.fromisoformat(job["deadline"]) - datetime.fromisoformat(dl)) < timedelta(seconds=1)
    # campaign:called is the default key: the same number again in the campaign is a duplicate...
    again = await client.post("/v1/calls", json=body(campaign="spring", notBefore=nb), headers=AUTH)
    assert again.status == 200
    # ...and another body for that number is a conflict on "campaign".
    other = await client.post("/v1/calls", json=body(campaign="spring", playTimes=2), headers=AUTH)
    assert other.status == 409
    assert (await other.json())["error"]["fields"][0]["field"] == "campaign"
    # Deferred: on its queue with a run-at time an hour away.
    score = await redis_client.zscore(Keys(api_settings.key_prefix).queue(2), "spring:8899")
    assert score is not None and score > time.time() * 1000 + 3500 * 1000


@pytest.mark.parametrize(
    ("extra", "headers", "field"),
    [
        ({"notBefore": 0}, {}, "notBefore"),
        ({"notBefore": "2030-01-01T00:00:00"}, {}, "notBefore"),  # no offset
        ({"deadline": "2001-01-01T00:00:00Z"}, {}, "deadline"),  # past
        ({"notBefore": "2031-01-01T00:00:00Z", "deadline": "2030-01-01T00:00:00Z"}, {}, "deadline"),
        ({"campaign": "no spaces please"}, {}, "campaign"),
        ({"surprise": 1}, {}, "surprise"),
        ({"playTimes": "2"}, {}, "playTimes"),
        ({"priority": "0"}, {}, "priority"),
        ({}, {"Idempotency-Key": "has space"}, "Idempotency-Key"),
        ({"called": "13800000077\n", "campaign": "nl"}, {}, "called"),
        ({"called": "13800000077\n"}, {}, "called"),
        ({"callBackUrl": "http://h/x\n"}, {}, "callBackUrl"),
    ],
)
async def test_invalid_input_is_422_naming_the_field(
    client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis,
    extra: dict[str, Any], headers: dict[str, str], field: str,
) -> None:
    r = await client.post("/v1/calls", json=body(**extra), headers={**AUTH, **headers})
    assert r.status == 422
    data = await r.json()
    assert_error(data, "validation_failed")
    assert field in [f["field"] for f in data["error"]["fields"]], data
    assert await redis_client.dbsize() == 0  # nothing stored


async def test_field_paths_use_the_seed_names(client: TestClient[Any, Any]) -> None:
    bad = {"called": "88a", "playList": [{"voiceId": "1", "templateParams": ["ok", "x{y}"]}, {}]}
    r = await client.post("/v1/calls", json=bad, headers=AUTH)
    fields = {f["field"] for f in (await r.json())["error"]["fields"]}
    assert fields == {"called", "playList[0].templateParams[1]", "playList[1]"}


# --- POST /v1/calls:batch --------------------------------------------------------------------------


async def test_batch_with_mixed_items(
    client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis
) -> None:
    await client.post("/v1/calls", json=body(called="111", campaign="batchwide"),
                      headers={**AUTH, "Idempotency-Key": "old"})
    items = [
        {**body(called="201"), "id": "b1"},                       # accepted
        {"called": "202"},                                         # rejected: no playList
        {**body(called="203"), "id": "b1"},                       # same id, other call: conflict
        "not an object",                                           # rejected
        {**body(called="111"), "id": "old"},                      # duplicate of a stored job (same campaign)
        {**body(called="204", priority="7"), "campaign": "c1"},   # accepted, own campaign
    ]
    r = await client.post("/v1/calls:batch", json={"items": items, "campaign": "batchwide"}, headers=AUTH)
    assert r.status == 200
    data = await r.json()
    assert [x["status"] for x in data["results"]] == [
        "accepted", "rejected", "conflict", "rejected", "duplicate", "accepted"]
    assert [x["index"] for x in data["results"]] == list(range(6))
    assert (data["accepted"], data["duplicate"], data["conflict"], data["rejected"]) == (2, 1, 1, 2)
    assert data["results"][1]["errors"] == [{"field": "playList", "rule": "Field required"}]
    assert data["results"][3]["errors"] == [{"field": "body", "rule": "must be a JSON object"}]
    assert data["results"][5]["id"] == "c1:204"
    assert await queue_members(redis_client, api_settings, 2) == {"old", "b1"}
    assert await queue_members(redis_client, api_settings, 7) == {"c1:204"}
    b1 = await Ledger(redis_client, api_settings).get("b1")
    assert b1 is not None and b1.called == "201" and b1.campaign == "batchwide"


async def test_batch_limits_and_batch_wide_errors(client: TestClient[Any, Any], redis_client: aioredis.Redis) -> None:
    too_many = await client.post("/v1/calls:batch", json={"items": [body()] * 7}, headers=AUTH)
    assert too_many.status == 422
    assert (await too_many.json())["error"]["fields"][0]["field"] == "items"
    payloads: list[Any] = [{"items": []}, {"items": {}}, {}, {"items": [body()], "extra": 1}, [body()],
                           {"items": [body()], "deadline": "2001-01-01T00:00:00Z"}]
    for payload in payloads:
        r = await client.post("/v1/calls:batch", json=payload, headers=AUTH)
        assert r.status == 422, payload
        assert_error(await r.json(), "validation_failed")
    assert await redis_client.dbsize() == 0


# --- GET /v1/calls/{job_id} ------------------------------------------------------------------------


async def test_get_call(client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis) -> None:
    await client.post("/v1/calls", json=body(), headers={**AUTH, "Idempotency-Key": "g.1@x.y"})
    r = await client.get("/v1/calls/g.1@x.y", headers=AUTH)
    assert r.status == 200
    record = await Ledger(redis_client, api_settings).get("g.1@x.y")
    assert record is not None and await r.json() == record.as_dict()
    for missing in ("/v1/calls/nope", "/v1/calls/" + "x" * 300):
        r = await client.get(missing, headers=AUTH)
        assert r.status == 404
        assert_error(await r.json(), "not_found")


# --- error statuses --------------------------------------------------------------------------------


async def test_malformed_bodies_are_400_or_415(client: TestClient[Any, Any]) -> None:
    json_ct = {**AUTH, "Content-Type": "application/json"}
    for raw in (b"{bad", b"", b"   ", b'{"called": NaN}', b"\xff\xfe", b"[" * 6000 + b"]" * 6000):
        r = await client.post("/v1/calls", data=raw, headers=json_ct)
        assert r.status == 400, raw[:20]
        assert_error(await r.json(), "malformed_json")
    r = await client.post("/v1/calls", data=json.dumps(body()), headers={**AUTH, "Content-Type": "text/plain"})
    assert r.status == 415
    assert_error(await r.json(), "unsupported_media_type")


async def test_body_too_large_is_413(client: TestClient[Any, Any]) -> None:
    big = body(callerPresent="1" * 20_000)
    for path in ("/v1/calls", "/v1/calls:batch"):
        r = await client.post(path, json=big, headers=AUTH)
        assert r.status == 413
        assert_error(await r.json(), "payload_too_large")
    # Without Content-Length (chunked), aiohttp's own limit answers, in the same shape.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b" " * 1024

    r = await client.post("/v1/calls", data=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status == 413
    assert_error(await r.json(), "payload_too_large")


async def test_unknown_path_and_wrong_method_are_json(client: TestClient[Any, Any]) -> None:
    r = await client.get("/v2/nothing", headers=AUTH)
    assert r.status == 404
    assert_error(await r.json(), "not_found")
    r = await client.delete("/v1/calls", headers=AUTH)
    assert r.status == 405 and "POST" in r.headers["Allow"]
    assert_error(await r.json(), "method_not_allowed")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key-000000000000"}, {"Authorization": KEY},
     {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer "}, {"Authorization": f"Bearer {KEY}x"}],
)
async def test_auth_refused_without_or_with_a_wrong_key(
    client: TestClient[Any, Any], redis_client: aioredis.Redis, headers: dict[str, str]
) -> None:
    for method, path in (("POST", "/v1/calls"), ("POST", "/v1/calls:batch"), ("GET", "/v1/calls/x"),
                         ("GET", "/dashboard/data")):
        r = await client.request(method, path, json={"items": [body()]}, headers=headers)
        assert r.status == 401, (method, path)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert_error(await r.json(), "unauthorized")
    assert await redis_client.dbsize() == 0


async def test_every_configured_key_works_and_the_dashboard_key_is_read_only(client: TestClient[Any, Any]) -> None:
    for key in (KEY, KEY2):
        r = await client.post("/v1/calls", json=body(), headers={"Authorization": f"Bearer {key}"})
        assert r.status == 202
    r = await client.post("/v1/calls", json=body(), headers={"Authorization": f"Bearer {DASH}"})
    assert r.status == 403
    assert_error(await r.json(), "forbidden")
    r = await client.get("/dashboard/data", headers={"Authorization": f"Bearer {DASH}"})
    assert r.status == 200 and (await r.json())["role"] == "viewer"


async def test_redis_down_is_503(api_settings: Settings) -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    app = create_app(api_settings, dead, open_provider=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        for method, path in (("POST", "/v1/calls"), ("GET", "/v1/calls/x"), ("GET", "/dashboard/data"),
                             ("POST", "/v1/calls:batch")):
            r = await c.request(method, path, json={"items": [body()]} if "batch" in path else body(),
                                headers=AUTH)
            assert r.status == 503, path
            assert r.headers["Retry-After"] == "5"
            assert_error(await r.json(), "redis_unavailable")
        ready = await c.get("/readyz")
        assert ready.status == 503
        assert (await ready.json())["checks"]["redis"].startswith("unreachable")
        assert (await c.get("/healthz")).status == 200
    await dead.aclose()


async def test_unexpected_errors_are_500_without_internals(
    api_settings: Settings, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("internal detail /etc/secret")

    class Boom:
        @staticmethod
        def routes(settings: Settings) -> list[Route]:
            return [Route("GET", "/boom", boom, "Fails", Access.API, responses={200: Reply("never")})]

    app = create_app(api_settings, redis_client, open_provider=False, modules=(*DEFAULT_MODULES, Boom()))
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        r = await c.get("/boom", headers=AUTH)
        assert r.status == 500
        text = await r.text()
        assert_error(json.loads(text), "internal")
        assert "secret" not in text and "RuntimeError" not in text
    assert any("unhandled error" in rec.getMessage() for rec in caplog.records)


async def test_insecure_mode_needs_no_key(settings: Settings, redis_client: aioredis.Redis) -> None:
    app = create_app(settings, redis_client, insecure_no_auth=True, open_provider=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        assert (await c.post("/v1/calls", json=body())).status == 202
        assert (await c.get("/dashboard/data")).status == 200


# --- dashboard session -----------------------------------------------------------------------------


async def test_dashboard_login_cookie_and_csrf_guard(client: TestClient[Any, Any], api_settings: Settings) -> None:
    page = await client.get("/")
    assert page.status == 401 and "<form" in await page.text()
    bad = await client.post("/login", data={"key": "nope"}, allow_redirects=False)
    assert bad.status == 401 and "Unknown key" in await bad.text()

    r = await client.post("/login", data={"key": KEY}, allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/"
    cookie = r.cookies[COOKIE]
    assert KEY not in cookie.value and cookie["httponly"] and cookie["samesite"] == "Strict"
    page = await client.get("/")
    assert page.status == 200 and "Queue depth per priority" in await page.text()
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    data = await client.get("/dashboard/data")
    assert data.status == 200
    DashboardData.model_validate(await data.json())

    # The cookie alone does not reach the API (a cross-site form could send it)...
    assert (await client.post("/v1/calls", json=body())).status == 401
    # ...but with the header only same-origin scripts can set, an API-key session can.
    ok = await client.post("/v1/calls", json=body(), headers={"X-Requested-With": "dialer-dashboard"})
    assert ok.status == 202

    await client.post("/logout", allow_redirects=False)
    assert (await client.get("/dashboard/data")).status == 401


async def test_query_key_login_and_read_only_session(client: TestClient[Any, Any]) -> None:
    r = await client.get(f"/?key={DASH}", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/"
    assert (await client.get("/dashboard/data")).status == 200
    r = await client.post("/v1/calls", json=body(), headers={"X-Requested-With": "dialer-dashboard"})
    assert r.status == 403
    assert (await client.get("/?key=wrong-key", allow_redirects=False)).status == 401


def test_session_cookie_expires_and_cannot_be_forged(api_settings: Settings) -> None:
    auth = Authenticator(api_settings)
    now = 1_700_000_000.0
    value = auth.session_value(KEY, now=now)
    assert KEY not in value
    identity = auth.from_session(value, now=now + 60)
    assert identity is not None and identity.role.value == "admin"
    assert auth.from_session(value, now=now + 13 * 3600) is None
    issued, nonce, mac = value.split(".")
    assert auth.from_session(f"{int(issued) + 1}.{nonce}.{mac}", now=now) is None
    assert auth.from_session(f"{issued}.{nonce}.{'0' * len(mac)}", now=now) is None
    assert auth.from_session(f"{issued}.{mac}", now=now) is None  # the old format: no nonce, no session
    viewer = auth.from_session(auth.session_value(DASH, now=now), now=now)
    assert viewer is not None and viewer.role.value == "viewer"


# --- dashboard data and probes ---------------------------------------------------------------------


async def test_dashboard_data_counts_queues(client: TestClient[Any, Any]) -> None:
    for i in range(3):
        await client.post("/v1/calls", json=body(called=f"10{i}", priority="1"), headers=AUTH)
    await client.post("/v1/calls", json=body(called="200", priority="5", notBefore=iso(600)), headers=AUTH)
    data = DashboardData.model_validate(await (await client.get("/dashboard/data", headers=AUTH)).json())
    by_p = {q.priority: q for q in data.queues}
    assert (by_p[1].depth, by_p[1].ready) == (3, 3)
    assert (by_p[5].depth, by_p[5].ready) == (1, 0)
    assert data.in_flight.cap == 50 and data.token.present is False
    assert len(data.rate.attempts) == len(data.rate.sent) == data.rate.window_s


async def test_healthz_and_readyz_with_a_provider(sim_settings: Settings, redis_client: aioredis.Redis) -> None:
    app = create_app(sim_settings, redis_client)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        assert await (await c.get("/healthz")).json() == {"status": "ok"}
        r = await c.get("/readyz")
        assert r.status == 200
        assert await r.json() == {"status": "ready", "checks": {"redis": "ok", "provider": "ok"}}


async def test_readyz_says_why_the_provider_is_not_ready(settings: Settings, redis_client: aioredis.Redis) -> None:
    app = create_app(settings, redis_client)  # api_base_url points at a closed port
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        r = await c.get("/readyz")
        assert r.status == 503
        data = await r.json()
        assert data["status"] == "unready" and data["checks"]["redis"] == "ok"
        assert "tokenByAkSk" in data["checks"]["provider"]
        assert settings.app_secret.get_secret_value() not in json.dumps(data)


async def test_session_cookie_is_secure_behind_an_https_public_url(
    api_settings: Settings, redis_client: aioredis.Redis
) -> None:
    s = api_settings.model_copy(update={"public_url": "https://dialer.example.com"})
    app = create_app(s, redis_client, open_provider=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        r = await c.post("/login", data={"key": KEY}, allow_redirects=False)
        assert r.status == 303 and r.cookies[COOKIE]["secure"]


async def test_an_idempotency_key_or_item_id_with_a_colon_is_refused_and_derived_ids_still_work(
    client: TestClient[Any, Any], redis_client: aioredis.Redis
) -> None:
    """``Idempotency-Key: spring:8899`` took the id of spring's row for 8899 in advance: the real row
    then came back as a "duplicate" of a call nobody launched. ':' is reserved for the dialer's ids."""
    r = await client.post("/v1/calls", json=body(), headers={**AUTH, "Idempotency-Key": "spring:8899"})
    assert r.status == 422
    data = await r.json()
    assert_error(data, "validation_failed")
    [field] = data["error"]["fields"]
    assert field["field"] == "Idempotency-Key" and "reserved" in field["rule"], field
    r = await client.post("/v1/calls:batch", json={"items": [{**body(), "id": "spring:8899:r1"}]}, headers=AUTH)
    assert r.status == 200
    [item] = (await r.json())["results"]
    assert item["status"] == "rejected" and item["errors"][0]["field"] == "id", item
    assert await redis_client.dbsize() == 0
    r = await client.post("/v1/calls", json=body(campaign="spring"), headers=AUTH)
    assert r.status == 202 and r.headers["Location"] == "/v1/calls/spring:8899"
    assert (await client.get("/v1/calls/spring:8899", headers=AUTH)).status == 200
