"""Prometheus metrics: counters move (scraped over HTTP and parsed), labels stay bounded and secret-free,
the Redis-backed send counter feeds the dashboard, and a worker can serve its own /metrics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.helpers import free_port
from worker import metrics
from worker.dispatch.stats import SendStats
from worker.errors import AmbiguousError, AuthError, PermanentError, RetryableError
from worker.http import create_app
from worker.settings import Settings

KEY = "metrics-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample as {(name, labels): value}."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def client(settings: Settings, redis_client: aioredis.Redis) -> AsyncIterator[TestClient[Any, Any]]:
    s = settings.model_copy(update={"api_keys": [SecretStr(KEY)]})
    app = create_app(s, redis_client, open_provider=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


async def scrape(client: TestClient[Any, Any]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = await client.get("/metrics")
    assert r.status == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    text = await r.text()
    assert KEY not in text and "test-sk-DO-NOT-LEAK" not in text
    return parse(text)


async def test_worker_side_counters_move(client: TestClient[Any, Any]) -> None:
    before = await scrape(client)
    metrics.observe_outcome("sent", 3, "spring")
    metrics.observe_outcome("sent", "3", "spring")
    metrics.observe_outcome("retried", 3, "spring")
    metrics.observe_outcome("dead", 9, None)
    metrics.observe_outcome("unknown", 1, None)
    metrics.observe_outcome("failed", 1, None)
    metrics.observe_provider_response(200, "0", 0.042)
    metrics.observe_provider_response(500, None, 0.2)
    metrics.observe_provider_response(None, None, None)
    metrics.observe_rate_wait(3, 0.25)
    metrics.observe_token_refresh(True)
    metrics.observe_token_refresh(False)
    with metrics.track_in_flight():
        during = await scrape(client)
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dialer_calls_total", outcome="sent", priority="3", campaign="spring") == 2
    assert delta("dialer_calls_total", outcome="retried", priority="3", campaign="spring") == 1
    assert delta("dialer_calls_total", outcome="dead", priority="9", campaign="") == 1
    assert delta("dialer_calls_total", outcome="unknown", priority="1", campaign="") == 1
    assert delta("dialer_calls_total", outcome="failed", priority="1", campaign="") == 1
    assert delta("dialer_provider_responses_total", endpoint="create", status="200", ret_code="0") == 1
    assert delta("dialer_provider_responses_total", endpoint="create", status="500", ret_code="none") == 1
    assert delta("dialer_provider_responses_total", endpoint="create", status="none", ret_code="none") == 1
    assert delta("dialer_provider_request_seconds_count", endpoint="create") == 2  # answered ones only
    assert delta("dialer_provider_request_seconds_bucket", endpoint="create", le="0.05") == 1
    assert delta("dialer_rate_limit_wait_seconds_count", priority="3") == 1
    assert delta("dialer_rate_limit_wait_seconds_sum", priority="3") == pytest.approx(0.25)
    assert delta("dialer_token_refreshes_total", result="ok") == 1
    assert delta("dialer_token_refreshes_total", result="error") == 1
    assert value(during, "dialer_in_flight_requests") == value(after, "dialer_in_flight_requests") + 1


async def test_enqueue_moves_api_counters_and_queue_gauges(client: TestClient[Any, Any]) -> None:
    before = await scrape(client)
    call = {"called": "8899", "playList": [{"voiceId": "1"}], "priority": "4"}
    for i in range(3):
        r = await client.post("/v1/calls", json={**call, "called": f"88{i}"}, headers=AUTH)
        assert r.status == 202
    assert (await client.post("/v1/calls", json={**call, "priority": "x"}, headers=AUTH)).status == 422
    assert (await client.post("/v1/calls", json=call)).status == 401
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dialer_enqueued_total", result="accepted") == 3
    assert delta("dialer_enqueued_total", result="rejected") == 1
    assert delta("dialer_http_requests_total", method="POST", route="/v1/calls", status="202") == 3
    assert delta("dialer_http_requests_total", method="POST", route="/v1/calls", status="401") == 1
    assert value(after, "dialer_queue_depth", priority="4") == 3
    assert value(after, "dialer_queue_ready", priority="4") == 3
    assert value(after, "dialer_queue_depth", priority="1") == 0
    assert value(after, "dialer_redis_up") == 1


def test_labels_stay_bounded() -> None:
    metrics.observe_outcome("exploded", 42, "not a campaign!")
    metrics.observe_provider_response(200, "Bearer abc.def", 0.1)
    text = metrics.render()[0].decode()
    assert 'dialer_calls_total{campaign="other",outcome="other",priority="other"}' in text
    assert 'ret_code="other"' in text and "Bearer abc" not in text


def test_error_kinds() -> None:
    assert metrics.error_kind(RetryableError("x", status=500)) == "retryable/http-500"
    assert metrics.error_kind(RetryableError("x", status=200, ret_code="1")) == "retryable/retcode-1"
    permanent = PermanentError("x", status=200, ret_code="12", ret_msg="secret?")
    assert metrics.error_kind(permanent) == "permanent/retcode-12"
    assert metrics.error_kind(AuthError("x", status=401)) == "auth/http-401"
    assert metrics.error_kind(AmbiguousError("x")) == "ambiguous/no-answer"
    assert metrics.error_kind(ValueError("x")) == "error/valueerror"


async def test_send_stats_feed_the_dashboard(client: TestClient[Any, Any], settings: Settings,
                                             redis_client: aioredis.Redis) -> None:
    stats = SendStats(redis_client, settings)
    for _ in range(4):
        await stats.record(ok=True)
    await stats.record(ok=False, kind=metrics.error_kind(RetryableError("x", status=500)))
    await stats.record(ok=False, kind="Weird Kind/Ünicode")
    await stats.flush()

    deadline = time.monotonic() + 3
    while True:  # the current second is left out until it is complete
        window = await stats.read(seconds=60)
        if sum(a for _, a, _ in window.seconds) >= 6 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert len(window.seconds) == 60
    assert sum(a for _, a, _ in window.seconds) == 6
    assert sum(s for _, _, s in window.seconds) == 4
    assert window.errors == {"retryable/http-500": 1, "weird-kind/-nicode": 1}
    data = await (await client.get("/dashboard/data", headers=AUTH)).json()
    assert sum(data["rate"]["attempts"]) == 6 and sum(data["rate"]["sent"]) == 4
    assert data["errors"]["by_kind"]["retryable/http-500"] == 1


async def test_send_stats_never_fail_the_caller(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Recording and flushing against a Redis nobody listens on: no exception reaches the caller, the
    failed write is logged, and the background flusher keeps going until cancelled."""
    caplog.set_level(logging.DEBUG, logger="worker.dispatch.stats")
    dead = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    try:
        stats = SendStats(dead, settings)
        await stats.record(ok=True)
        await stats.record(ok=False, kind="retryable/http-500")
        await stats.flush()  # the write fails: no exception
        assert [r.getMessage() for r in caplog.records if r.name == "worker.dispatch.stats"] == [
            "send stats not recorded: ConnectionError"]
        caplog.clear()

        await stats.record(ok=True)
        runner = asyncio.ensure_future(stats.run(interval_s=0.01))
        await asyncio.sleep(0.2)
        assert not runner.done()  # failed flushes did not end the loop
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):  # cancelled, nothing else: the final flush failed quietly
            await runner
        assert "send stats not recorded: ConnectionError" in [r.getMessage() for r in caplog.records]
    finally:
        await dead.aclose()


async def test_metrics_survive_a_redis_outage(settings: Settings) -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    app = create_app(settings.model_copy(update={"api_keys": [SecretStr(KEY)]}), dead, open_provider=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        samples = await scrape(c)
    assert value(samples, "dialer_redis_up") == 0
    assert not [k for k in samples if k[0] == "dialer_queue_depth"]
    await dead.aclose()


async def test_worker_metrics_endpoint(settings: Settings) -> None:
    port = free_port()
    healthy = True

    async def health() -> bool:
        return healthy

    s = settings.model_copy(update={"metrics_port": port})
    async with metrics.serve_worker_metrics(s, health=health) as bound, aiohttp.ClientSession() as http:
        assert bound == port
        metrics.observe_outcome("sent", 2, None)
        async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
            samples = parse(await r.text())
        assert value(samples, "dialer_calls_total", outcome="sent", priority="2", campaign="") >= 1
        async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 200
        healthy = False
        async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
            assert r.status == 503
    async with metrics.serve_worker_metrics(settings) as bound:  # metrics_port 0: off
        assert bound == 0
