"""Signed webhooks (statusCallbackUrl, dialer webhooks) against a real Redis and real HTTP receivers on
127.0.0.1: the documented signature check, the field in every producer and never in the provider's body,
order per job under concurrency, outages that lose nothing, the per-destination limit, dead letters and
replay, the SSRF rules, shutdown, and secrets kept out of the logs."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from tests.helpers import do_launch, numbers_csv, running, wait_until
from tests.webhooks.support import (
    SECRET,
    add_events,
    delivering,
    doc_example,
    give_url,
    receiving,
    webhook_settings,
)
from worker import metrics
from worker.campaigns.launch import LaunchError
from worker.errors import InvalidRequest
from worker.http import create_app
from worker.ledger.producer import CallJob, Producer
from worker.ledger.transitions import Ledger
from worker.settings import Settings
from worker.store.keys import Keys
from worker.webhooks.delivery import WebhookProcess, backoff_s, start_up_problem
from worker.webhooks.queue import WebhookQueue
from worker.webhooks.signing import sign

BODY = {"called": "13800000001", "playList": [{"voiceId": "100001"}], "priority": "1"}
API_KEY = "webhooks-api-key-0123456789"


def _verify_fn() -> Any:
    namespace: dict[str, Any] = {}
    exec(compile(doc_example(), "docs/webhooks.md", "exec"), namespace)  # the doc's own example
    return namespace["verify"]


def _counter(result: str) -> float:
    return metrics.WEBHOOK_DELIVERIES.labels(result)._value.get()  # type: ignore[attr-defined,no-any-return]


# --- the signature ------------------------------------------------------------------------------------


async def test_the_documented_verify_example_accepts_a_delivery_and_refuses_tampering(
    settings: Settings, producer: Producer
) -> None:
    example = doc_example()
    assert len([line for line in example.splitlines() if line.strip()]) <= 10, "the doc promises ten lines"
    verify = _verify_fn()
    ws = webhook_settings(settings)
    async with receiving() as rec:
        await Producer(producer._redis, ws).enqueue(BODY, job_id="sig-1", status_callback_url=rec.url)
        async with delivering(ws):
            await wait_until(lambda: _true(rec.delivered()), 10, what="a delivery")
    [hit] = rec.delivered()
    headers, body = hit.headers, hit.body
    from multidict import CIMultiDict

    lower = CIMultiDict({k.lower(): v for k, v in headers.items()})  # receivers' mappings are case-insensitive
    assert verify(SECRET.encode(), headers, body) and verify(SECRET.encode(), lower, body)
    assert headers["X-Dialer-Signature"] == sign(SECRET.encode(), headers["X-Dialer-Timestamp"], body)
    assert hit.event["job_id"] == "sig-1" and hit.event["id"] == headers["X-Dialer-Event-Id"]
    assert headers["X-Dialer-Event-Type"] == "queued" and headers["X-Dialer-Attempt"] == "1"
    # Any change fails: the body, the timestamp, the key; an old timestamp fails even when signed right.
    assert not verify(SECRET.encode(), headers, body.replace(b'"queued"', b'"sent"'))
    assert not verify(SECRET.encode(), headers, body + b" ")
    assert not verify(b"another-secret-0123456789", headers, body)
    moved = {**headers, "X-Dialer-Timestamp": str(int(headers["X-Dialer-Timestamp"]) + 1)}
    assert not verify(SECRET.encode(), moved, body)
    old = str(int(time.time()) - 3600)
    stale = {**headers, "X-Dialer-Timestamp": old, "X-Dialer-Signature": sign(SECRET.encode(), old, body)}
    assert not verify(SECRET.encode(), stale, body)
    assert not verify(SECRET.encode(), {k: v for k, v in headers.items() if k != "X-Dialer-Signature"}, body)


async def _true(x: Any) -> bool:
    return bool(x)


# --- the field: every producer, never in the provider's body ---------------------------------------------


async def test_the_url_is_stored_on_the_record_never_in_the_body_and_shown_by_the_api(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    ws = webhook_settings(settings, api_keys=[SecretStr(API_KEY)], http_rate_limit=0)
    p = Producer(redis_client, ws)
    await p.enqueue(BODY, job_id="own", status_callback_url="https://hooks.example.com/a?t=1")
    results = await p.enqueue_many(
        [{**BODY, "called": "13800000002"}, CallJob({**BODY, "called": "13800000003"}, job_id="item-own",
                                                    status_callback_url="https://other.example.com/b")],
        status_callback_url="https://batch.example.com/")
    assert [r.status for r in results] == ["accepted", "accepted"]
    await p.enqueue({**BODY, "called": "13800000004"}, job_id="none")
    ledger = Ledger(redis_client, ws)
    own, item, batch, none = [await ledger.get(j) for j in ("own", "item-own", str(results[0].job_id), "none")]
    assert own and item and batch and none
    assert (own.status_callback_url, item.status_callback_url, batch.status_callback_url,
            none.status_callback_url) == ("https://hooks.example.com/a?t=1", "https://other.example.com/b",
                                          "https://batch.example.com/", None)
    for rec in (own, item, batch, none):
        assert "statusCallbackUrl" not in rec.body and "status_callback_url" not in rec.body
        assert rec.request().body() == rec.body  # what the worker sends: the seed's fields only
    assert "scb" not in {k.decode() for k in await redis_client.hkeys(Keys(ws.key_prefix).job("none"))}

    app = create_app(ws, redis_client, open_provider=False)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        r = await c.post("/v1/calls", json={**BODY, "called": "13800000005",
                                            "statusCallbackUrl": "https://hooks.example.com/x"},
                         headers={**auth, "Idempotency-Key": "api-1"})
        data = await r.json()
        assert r.status == 202, data
        assert data["job"]["status_callback_url"] == "https://hooks.example.com/x"
        assert "statusCallbackUrl" not in data["job"]["body"]
        # The same key with another URL is another call: 409, as for a different body.
        r = await c.post("/v1/calls", json={**BODY, "called": "13800000005",
                                            "statusCallbackUrl": "https://hooks.example.com/y"},
                         headers={**auth, "Idempotency-Key": "api-1"})
        assert r.status == 409
        r = await c.post("/v1/calls:batch", json={"statusCallbackUrl": "https://b.example.com/", "items": [
            {**BODY, "called": "13800000006", "id": "b-1"},
            {**BODY, "called": "13800000007", "id": "b-2", "statusCallbackUrl": "https://own.example.com/"}]},
            headers=auth)
        assert r.status == 200 and [x["status"] for x in (await r.json())["results"]] == ["accepted", "accepted"]
        r = await c.get("/openapi.json")
        spec = await r.json()
        assert "statusCallbackUrl" in spec["components"]["schemas"]["CallCreate"]["properties"]
    assert (await ledger.get("b-1")).status_callback_url == "https://b.example.com/"  # type: ignore[union-attr]
    assert (await ledger.get("b-2")).status_callback_url == "https://own.example.com/"  # type: ignore[union-attr]


async def test_bad_urls_are_refused_naming_the_field_and_nothing_is_stored(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    ws = settings.model_copy(update={"api_keys": [SecretStr(API_KEY)], "http_rate_limit": 0})
    p = Producer(redis_client, ws)
    bad = {"ftp://h.example.com/": "http:// or https://", "https://" + "a" * 2050: "at most 2048",
           "http://127.0.0.1:9/x": "DIALER_WEBHOOK_ALLOW_PRIVATE", "http://localhost/": "this machine",
           "http://10.1.2.3/": "non-public", "http://[::1]/": "non-public", "https://u:p@h.example.com/": "password",
           "http://169.254.169.254/latest/meta-data": "non-public", "https://h.example.com/a b": "spaces",
           "https:///nohost": "host", "http://2130706433/": "numeric host"}
    for url, rule in bad.items():
        with pytest.raises(InvalidRequest) as info:
            await p.enqueue(BODY, job_id="x", status_callback_url=url)
        [err] = info.value.errors
        assert err.field == "status_callback_url" and rule in err.rule, (url, err)
    [res] = await p.enqueue_many([CallJob(BODY, job_id="y", status_callback_url="http://10.0.0.1/")])
    assert res.status == "rejected" and res.errors[0].field == "status_callback_url"
    with pytest.raises(InvalidRequest):
        await p.enqueue_many([BODY], status_callback_url="gopher://h.example.com/")
    app = create_app(ws, redis_client, open_provider=False)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        r = await c.post("/v1/calls", json={**BODY, "statusCallbackUrl": "http://127.0.0.1/"}, headers=auth)
        data = await r.json()
        assert r.status == 422 and [f["field"] for f in data["error"]["fields"]] == ["statusCallbackUrl"], data
        r = await c.post("/v1/calls", json={**BODY, "statusCallbackUrl": "x" * 3000}, headers=auth)
        assert r.status == 422 and (await r.json())["error"]["fields"][0]["field"] == "statusCallbackUrl"
        r = await c.post("/v1/calls:batch", json={"items": [{**BODY, "statusCallbackUrl": "ftp://a/"}]}, headers=auth)
        [item] = (await r.json())["results"]
        assert item["status"] == "rejected" and item["errors"][0]["field"] == "statusCallbackUrl"
        r = await c.post("/v1/campaigns", json={"name": "c", "voiceId": "1", "statusCallbackUrl": "http://10.0.0.1/",
                                                "rows": [{"called": "13800000001"}]}, headers=auth)
        data = await r.json()
        assert r.status == 422 and data["error"]["fields"][0]["field"] == "statusCallbackUrl", data
    with pytest.raises(LaunchError) as launch:
        await do_launch(redis_client, ws, numbers_csv(tmp_path, 2), status_callback_url="http://127.0.0.1/")
    assert launch.value.errors[0].field == "--status-callback-url"
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"called": "13800000001", "statusCallbackUrl": "http://10.0.0.9/"}\n'
                    '{"called": "13800000002"}\n')
    report = await do_launch(redis_client, ws, rows, name="rows")
    assert report.enqueued == 1 and [(e.line, e.field) for e in report.rejected] == [(1, "statusCallbackUrl")]
    assert await redis_client.exists(Keys(ws.key_prefix).job("x"), Keys(ws.key_prefix).job("y")) == 0


async def test_a_campaign_url_serves_its_rows_and_a_row_or_redial_keeps_its_own(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    ws = webhook_settings(settings)
    async with receiving("/campaign") as camp, receiving("/row") as own:
        rows = tmp_path / "c.csv"
        rows.write_text(f"called,statusCallbackUrl\n13800000001,\n13800000002,{own.url}\n")
        report = await do_launch(redis_client, ws, rows, status_callback_url=camp.url)
        assert report.enqueued == 2
        ledger = Ledger(redis_client, ws)
        first, second = await ledger.get("camp:13800000001"), await ledger.get("camp:13800000002")
        assert first and second and first.status_callback_url is None  # the campaign's: nothing per row
        assert second.status_callback_url == own.url
        # A relaunch with the same options is the same campaign; another URL is other settings.
        assert (await do_launch(redis_client, ws, rows, status_callback_url=camp.url)).already_enqueued == 2
        status = await __import__("worker.campaigns.control", fromlist=["Campaigns"]).Campaigns(
            redis_client, ws).status("camp")
        assert status["settings"]["status_callback_url"] == camp.url
        async with delivering(ws):
            await wait_until(lambda: _true(camp.delivered() and own.delivered()), 10)
        assert [h.event["job_id"] for h in camp.delivered()] == ["camp:13800000001"]
        assert [h.event["job_id"] for h in own.delivered()] == ["camp:13800000002"]


# --- order, exactly-once intake, outages ----------------------------------------------------------------


async def test_each_event_arrives_once_and_in_order_per_job_under_concurrency(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    """50 jobs x 6 events, two processes, a receiver with random latency that fails a fifth of the
    requests: each job's deliveries still arrive in stream order, each event delivered exactly once."""
    ws = webhook_settings(settings, webhook_max_per_destination=20, webhook_concurrency=16)
    rng = random.Random(5)
    async with receiving() as rec:
        rec.answer = lambda n: 500 if rng.random() < 0.2 else 200
        rec.delay_s = 0.002
        expected: dict[str, list[str]] = {}
        for j in range(50):
            await give_url(redis_client, ws, f"job-{j}", rec.url)
        for round_ in range(6):  # interleaved across jobs, as a fleet's events are
            for j in range(50):
                expected.setdefault(f"job-{j}", []).extend(
                    await add_events(redis_client, ws, f"job-{j}", [f"t{round_}"]))
        async with delivering(ws, n=2):
            await wait_until(lambda: _true(len(rec.delivered()) >= 300), 30,
                             what=lambda: f"{len(rec.delivered())}/300 delivered")
    delivered = rec.delivered()
    assert len(delivered) == 300 and len(set(h.event_id for h in delivered)) == 300
    assert any(h.status == 500 for h in rec.hits), "some attempts failed and were retried"
    by_job: dict[str, list[str]] = {}
    for h in delivered:
        by_job.setdefault(h.event["job_id"], []).append(h.event_id)
    assert by_job == expected
    # A job's attempts never overlap: each request of a job starts after the previous one was answered.
    assert rec.max_in_flight <= 20


async def test_a_receiver_answering_500_for_a_while_loses_nothing(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    ws = webhook_settings(settings)
    retried, delivered = _counter("retried"), _counter("delivered")
    async with receiving() as rec:
        down_until = time.monotonic() + 3.0
        rec.answer = lambda n: 500 if time.monotonic() < down_until else 200
        for j in range(20):
            await give_url(redis_client, ws, f"j{j}", rec.url)
            await add_events(redis_client, ws, f"j{j}", ["queued", "sent", "outcome"])
        async with delivering(ws):
            await wait_until(lambda: _true(len(set(rec.delivered_ids())) >= 60), 20)
            await asyncio.sleep(0.5)  # nothing more arrives
    assert len(rec.delivered_ids()) == len(set(rec.delivered_ids())) == 60
    assert sum(1 for h in rec.hits if h.status == 500) >= 20
    assert _counter("retried") - retried >= 20 and _counter("delivered") - delivered == 60
    status = await WebhookQueue(redis_client, ws).status()
    assert (status["waiting"], status["in_flight"], status["dead"], status["intake_pending"]) == (0, 0, 0, 0)


async def test_a_restarted_or_crashed_process_loses_nothing(settings: Settings, redis_client: aioredis.Redis) -> None:
    """Stop mid-backlog (graceful), then a crash mid-POST (its lease left to expire): all delivered."""
    ws = webhook_settings(settings, webhook_max_per_destination=2)
    async with receiving() as rec:
        rec.delay_s = 0.2
        for j in range(10):
            await give_url(redis_client, ws, f"r{j}", rec.url)
            await add_events(redis_client, ws, f"r{j}", ["queued", "sent"])
        async with delivering(ws):
            await wait_until(lambda: _true(len(rec.delivered()) >= 2), 10)
        first = len(rec.delivered())
        assert 2 <= first < 20
        # A crash: a claim whose process died holds a lease; once it expires the next claim takes it back.
        queue = WebhookQueue(redis_client, ws)
        claims, _, _ = await queue.claim(1)
        assert len(claims) == 1
        busy = Keys(ws.key_prefix).webhook_busy(claims[0].destination)
        await redis_client.zadd(busy, {claims[0].job_id: 1})  # expired long ago
        rec.delay_s = 0.0
        async with delivering(ws):
            await wait_until(lambda: _true(len(set(rec.delivered_ids())) >= 20), 15)
    assert sorted(set(rec.delivered_ids())) == sorted(rec.delivered_ids())  # each once
    assert len(rec.delivered_ids()) == 20


async def test_stop_lets_posts_in_flight_finish_and_leaves_the_rest_queued(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    ws = webhook_settings(settings, webhook_max_per_destination=3)
    async with receiving() as rec:
        rec.delay_s = 0.6
        for j in range(9):
            await give_url(redis_client, ws, f"s{j}", rec.url)
            await add_events(redis_client, ws, f"s{j}", ["queued"])
        proc = WebhookProcess(ws, consumer="stopping")
        task = asyncio.ensure_future(proc.run())
        await wait_until(lambda: _true(rec.in_flight == 3), 10)
        proc.stop()
        await asyncio.wait_for(task, 10)
        assert len(rec.delivered()) == 3 and rec.in_flight == 0  # the three in flight finished, no new one
        status = await WebhookQueue(redis_client, ws).status()
        assert (status["waiting"], status["in_flight"]) == (6, 0)
        rec.delay_s = 0
        async with delivering(ws):
            await wait_until(lambda: _true(len(rec.delivered()) >= 9), 10)
    assert len(set(rec.delivered_ids())) == len(rec.delivered_ids()) == 9


# --- per destination ------------------------------------------------------------------------------------


async def test_a_slow_receiver_gets_its_share_across_processes_and_never_delays_another(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    ws = webhook_settings(settings, webhook_max_per_destination=2, webhook_timeout_s=5.0)
    async with receiving("/slow") as slow, receiving("/fast") as fast:
        slow.delay_s = 1.0
        for j in range(12):
            await give_url(redis_client, ws, f"slow-{j}", slow.url)
            await add_events(redis_client, ws, f"slow-{j}", ["queued"])
        for j in range(30):
            await give_url(redis_client, ws, f"fast-{j}", fast.url)
            await add_events(redis_client, ws, f"fast-{j}", ["queued"])
        async with delivering(ws, n=2):
            took = await wait_until(lambda: _true(len(fast.delivered()) >= 30), 10)
            assert took < 1.5, f"the fast receiver waited behind the slow one ({took:.1f} s)"
            await wait_until(lambda: _true(len(slow.delivered()) >= 12), 20)
    assert slow.max_in_flight == 2, slow.max_in_flight  # two processes, one fleet-wide limit


# --- dead letters ---------------------------------------------------------------------------------------


async def test_410_dead_letters_at_once_the_next_event_follows_and_replay_delivers(
    settings: Settings, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    ws = webhook_settings(settings)
    async with receiving() as rec:
        rec.answer = lambda n: 410 if n == 0 else 200
        await give_url(redis_client, ws, "g", rec.url)
        ids = await add_events(redis_client, ws, "g", ["queued", "sent"])
        async with delivering(ws):
            await wait_until(lambda: _true(rec.delivered()), 10)
        assert [h.status for h in rec.hits] == [410, 200] and rec.delivered_ids() == [ids[1]]
        queue = WebhookQueue(redis_client, ws)
        [dead] = await queue.dead()
        assert (dead["id"], dead["job_id"], dead["type"], dead["url"], dead["attempts"]) == (
            ids[0], "g", "queued", rec.url, 1)
        assert "410" in dead["reason"] and dead["event"]["id"] == ids[0]
        assert f"dialer webhooks dead replay {ids[0]}" in caplog.text
        assert await queue.replay([ids[0], "1-1"]) == 1
        assert await queue.dead() == []
        async with delivering(ws):
            await wait_until(lambda: _true(len(rec.delivered()) >= 2), 10)
        assert rec.delivered_ids() == [ids[1], ids[0]]
        assert rec.delivered()[1].headers["X-Dialer-Attempt"] == "1"


async def test_out_of_retry_time_is_dead_lettered_then_replayed_once_the_receiver_is_back(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    ws = webhook_settings(settings, webhook_retry_max_s=0.5)
    async with receiving() as rec:
        rec.answer = lambda n: 503
        await give_url(redis_client, ws, "d", rec.url)
        [event_id] = await add_events(redis_client, ws, "d", ["sent"])
        queue = WebhookQueue(redis_client, ws)
        async with delivering(ws):
            await wait_until(lambda: queue_dead(queue), 10)
        [dead] = await queue.dead()
        assert dead["attempts"] >= 2 and "HTTP 503" in dead["reason"] and "gave up" in dead["reason"]
        rec.answer = lambda n: 200
        assert await queue.replay_all() == 1
        async with delivering(ws):
            await wait_until(lambda: _true(rec.delivered()), 10)
        assert rec.delivered_ids() == [event_id]


async def queue_dead(queue: WebhookQueue) -> bool:
    return bool(await queue.dead())


def test_backoff_is_full_jitter_under_a_doubling_ceiling(settings: Settings) -> None:
    ws = webhook_settings(settings, webhook_retry_base_s=1.0, webhook_retry_max_backoff_s=600.0)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (5, 16.0), (10, 512.0), (11, 600.0), (500, 600.0)):
        waits = [backoff_s(attempt, ws) for _ in range(300)]
        assert all(0 <= w <= ceiling for w in waits) and max(waits) > ceiling * 0.8, attempt


# --- SSRF -----------------------------------------------------------------------------------------------


async def test_private_destinations_are_refused_at_delivery_unless_allowed(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    """URLs accepted while DIALER_WEBHOOK_ALLOW_PRIVATE was on are refused by a process without it, both a
    literal address and a name that resolves to one; no request is made."""
    allowed = webhook_settings(settings)
    strict = webhook_settings(settings, webhook_allow_private=False)
    async with receiving() as rec:
        by_name = rec.url.replace("127.0.0.1", "localhost")
        p = Producer(redis_client, allowed)
        await p.enqueue(BODY, job_id="lit", status_callback_url=rec.url)
        await p.enqueue(BODY, job_id="name", status_callback_url=by_name)
        queue = WebhookQueue(redis_client, strict)
        async with delivering(strict):
            await wait_until(lambda: _len_at_least(queue, 2), 10)
        assert rec.hits == []
        reasons = {d["job_id"]: d["reason"] for d in await queue.dead()}
        assert "127.0.0.1 is not a public address" in reasons["lit"]
        assert "non-public" in reasons["name"] and "DIALER_WEBHOOK_ALLOW_PRIVATE" in reasons["name"]
        await queue.replay_all()
        async with delivering(allowed):
            await wait_until(lambda: _true(len(rec.delivered()) >= 2), 10)


async def _len_at_least(queue: WebhookQueue, n: int) -> bool:
    return len(await queue.dead()) >= n


# --- start-up and secrets -------------------------------------------------------------------------------


def test_start_up_needs_a_secret_or_the_insecure_opt_in(settings: Settings) -> None:
    assert "DIALER_WEBHOOK_SECRET" in (start_up_problem(settings) or "")
    assert start_up_problem(settings.model_copy(update={"webhook_insecure_unsigned": True})) is None
    assert start_up_problem(webhook_settings(settings)) is None
    assert "DIALER_EVENTS_MAX_LEN" in (start_up_problem(webhook_settings(settings, events_max_len=0)) or "")
    from worker.errors import SettingsError
    from worker.settings import load_settings

    for weak in ("short", "aaaaaaaaaaaaaaaaaaaa", "abcdefghijklmnopqrst"):
        with pytest.raises(SettingsError, match="DIALER_WEBHOOK_SECRET"):
            load_settings(webhook_secret=weak)


async def test_unsigned_deliveries_only_with_the_opt_in_and_secrets_never_logged(
    settings: Settings, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    unsigned = webhook_settings(settings, webhook_secret=None, webhook_insecure_unsigned=True)
    from worker.webhooks.delivery import log_start_up

    log_start_up(unsigned)
    assert "INSECURE" in caplog.text and "DIALER_WEBHOOK_ALLOW_PRIVATE=true" in caplog.text
    async with receiving() as rec:
        rec.answer = lambda n: 500 if n == 0 else 200
        url = rec.url + "?token=do-not-log-this-token"
        await Producer(redis_client, unsigned).enqueue(BODY, job_id="u", status_callback_url=url)
        async with delivering(unsigned):
            await wait_until(lambda: _true(rec.delivered()), 10)
        assert "X-Dialer-Signature" not in rec.delivered()[0].headers
        signed = webhook_settings(settings)
        await Producer(redis_client, signed).enqueue(BODY, job_id="s", status_callback_url=url)
        rec.answer = lambda n: 500 if n == 2 else 200
        async with delivering(signed):
            await wait_until(lambda: _true(len(rec.delivered()) >= 2), 10)
        assert "X-Dialer-Signature" in rec.delivered()[1].headers
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("worker"))  # not the receiver's
    assert SECRET not in caplog.text and "do-not-log-this-token" not in ours
    assert "are failing (HTTP 500)" in ours and "delivered again" in ours


# --- a campaign through a worker: the stream, the webhooks and the simulator agree ------------------------


async def test_a_campaign_through_a_worker_and_the_simulator_agrees_with_its_webhooks(
    sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """The quick cousin of tests/webhooks/test_end_to_end.py: no callbacks, a receiver down for 2 s."""
    from worker.ledger.events import events

    ws = webhook_settings(sim_settings)
    async with receiving() as rec:
        down_until = time.monotonic() + 2.0
        rec.answer = lambda n: 500 if time.monotonic() < down_until else 200
        report = await do_launch(redis_client, ws, numbers_csv(tmp_path, 15), status_callback_url=rec.url)
        assert report.enqueued == 15
        async with delivering(ws), running(ws):
            await wait_until(lambda: _true(len(set(rec.delivered_ids())) >= 30), 20,
                             what=lambda: f"{len(set(rec.delivered_ids()))}/30")
        stream = [e async for e in events(redis_client, ws)]
    assert Counter(e.type for e in stream) == {"queued": 15, "sent": 15}
    assert sorted(rec.delivered_ids()) == sorted(e.id for e in stream)  # each event once, no other
    from aiohttp import ClientSession

    async with ClientSession() as s, s.get(ws.api_base_url + "/_sim/log") as r:
        sim_log = await r.json()
    created = [q for q in sim_log["requests"] if q["outcome"] == "created"]
    sent = {h.event["job_id"]: h.event["data"]["serial"] for h in rec.delivered() if h.event["type"] == "sent"}
    assert sorted(sent.values()) == sorted(q["callSerialNo"] for q in created)
    assert all("statusCallbackUrl" not in q["body"] and rec.url not in str(q["body"]) for q in sim_log["requests"])


# --- the intake's guarantees ----------------------------------------------------------------------------


async def test_the_intake_is_fenced_by_its_lock_and_keeps_stream_order_against_a_stale_reader(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    """A holder that lost the lock changes nothing; a batch read while an older entry is pending (read by
    that stale holder) is refused until the older one is moved first."""
    from worker.webhooks.queue import GROUP, INTAKE_CONSUMER

    ws = webhook_settings(settings)
    queue = WebhookQueue(redis_client, ws)
    await queue.ensure_group()
    await give_url(redis_client, ws, "x", "https://hooks.example.com/x")
    e1, e2 = await add_events(redis_client, ws, "x", ["queued", "sent"])
    assert await queue.hold_intake("A", 60_000) and not await queue.hold_intake("B", 60_000)
    await redis_client.delete(Keys(ws.key_prefix).webhook_intake)  # A's lock expired; B takes it
    assert await queue.hold_intake("B", 60_000)
    stream = Keys(ws.key_prefix).events
    stale = await redis_client.xreadgroup(GROUP, INTAKE_CONSUMER, {stream: ">"}, count=1)  # A, late: e1
    newer = await redis_client.xreadgroup(GROUP, INTAKE_CONSUMER, {stream: ">"}, count=1)  # B: e2
    [(_, [(id1, f1)])], [(_, [(id2, f2)])] = stale, newer
    assert (id1.decode(), id2.decode()) == (e1, e2)
    assert await queue.intake("A", [(e1, f1)]) == -1  # fenced: nothing moved
    assert await queue.intake("B", [(e2, f2)]) == -2  # e1 is older and still pending: not yet
    assert await queue.intake("B", await queue.read(10, 0)) == 2  # the pending ones, oldest first
    q = await redis_client.lrange(Keys(ws.key_prefix).webhook_queue("x"), 0, -1)
    assert [entry.decode().split("\x1f")[1] for entry in q] == [e1, e2]
    assert await queue.intake("B", [(e1, f1)]) == 0  # already moved: never queued twice


async def test_entries_trimmed_from_the_stream_while_pending_are_acknowledged_not_stuck(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    ws = webhook_settings(settings)
    queue = WebhookQueue(redis_client, ws)
    await queue.ensure_group()
    async with receiving() as rec:
        await give_url(redis_client, ws, "t", rec.url)
        await add_events(redis_client, ws, "t", ["queued", "sent"])
        assert await queue.hold_intake("gone", 60_000)
        assert len(await queue.read(10, 0)) == 2  # read by a holder that then died
        await redis_client.xtrim(Keys(ws.key_prefix).events, maxlen=0)
        await redis_client.delete(Keys(ws.key_prefix).webhook_intake)
        [later] = await add_events(redis_client, ws, "t", ["outcome"])
        async with delivering(ws):
            await wait_until(lambda: _true(rec.delivered()), 10)
        assert rec.delivered_ids() == [later]
        assert (await queue.status())["intake_pending"] == 0
