"""Webhooks end to end, with real processes: a campaign driven through `dialer worker` processes, signed
release events (`dialer serve`'s route) and redials, delivered by `dialer webhooks` processes to a real HTTP
receiver that answers 500 for the first minute, reconciled one to one with the event stream, the campaign
export and the simulator's request and callback logs. Also: a receiver that takes 5 s per request does not
slow dialling, and the CLI (enqueue with a URL, status, dead list, replay, --check, SIGTERM)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from tests.helpers import (
    Proc,
    Sim,
    created,
    do_launch,
    enqueue_all,
    free_port,
    numbers_csv,
    run_dialer,
    serving,
    settings_env,
    start_dialer,
    wait_until,
)
from tests.webhooks.support import SECRET, Receiver, receiving, webhook_settings
from worker.campaigns.control import Campaigns
from worker.campaigns.export import CampaignExport
from worker.ledger.events import Event, events
from worker.ledger.producer import CallJob
from worker.settings import Settings
from worker.webhooks.queue import WebhookQueue
from worker.webhooks.signing import verify

pytestmark = pytest.mark.slow

SHARED = "callback-shared-key-0123"
DOWN_S = 60.0


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    env = settings_env(settings)
    env.update({"DIALER_LOG_LEVEL": "INFO", "DIALER_METRICS_PORT": "0", **extra})
    return env


async def _stop(procs: list[Proc]) -> list[tuple[int, str, str]]:
    for p in procs:
        if p.proc.returncode is None:
            p.proc.send_signal(signal.SIGTERM)
    return [await p.wait(60) for p in procs]


def _by_id(rec: Receiver) -> dict[str, dict[str, Any]]:
    """The receiver's delivered events, deduplicated by event id (delivery is at least once)."""
    return {h.event_id: h.event for h in rec.delivered()}


async def test_a_campaign_with_callbacks_and_redials_agrees_one_to_one_across_stream_webhooks_export_and_simulator(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    await sim.configure(callbacks=True, ring_time_s=0.2, answer_rate=0.5, seed=11, fail_500_rate=0.1,
                        callback_shared_key=SHARED, callback_signature_mode="sha256")
    base = webhook_settings(sim_settings, callback_shared_key=SecretStr(SHARED), callback_signature_mode="sha256",
                            retry_max_attempts=30, rate_limit=20.0, webhook_retry_base_s=0.5,
                            webhook_retry_max_backoff_s=5.0, webhook_max_per_destination=4)
    async with receiving() as rec, serving(base, redis_client) as (_url, served):
        down_until = time.monotonic() + DOWN_S
        rec.answer = lambda n: 500 if time.monotonic() < down_until else 200
        report = await do_launch(redis_client, served, numbers_csv(tmp_path, 40), redial=1, redial_after="2s",
                                 status_callback_url=rec.url)
        assert report.enqueued == 40
        env = _env(served)
        procs = [await start_dialer("worker", env=env) for _ in range(2)]
        procs += [await start_dialer("webhooks", env=env) for _ in range(2)]
        campaigns = Campaigns(redis_client, served)
        try:
            async def campaign_heard() -> bool:
                s = await campaigns.status("camp")
                return bool(s["remaining"] == 0 and sum(s["outcomes"].values()) == s["states"]["sent"] == s["total"])
            await wait_until(campaign_heard, 60, 0.2, what=lambda: "the campaign did not finish")
            assert time.monotonic() < down_until, "the campaign should finish while the receiver is still down"
            assert rec.hits and not rec.delivered(), "every attempt so far was answered 500"
            stream = [e async for e in events(redis_client, served)]

            async def all_delivered() -> bool:
                return {e.id for e in stream} <= set(_by_id(rec))
            await wait_until(all_delivered, DOWN_S + 60, 0.5,
                             what=lambda: f"{len(_by_id(rec))}/{len(stream)} events delivered")
            await asyncio.sleep(1.0)  # nothing else arrives
        finally:
            results = await _stop(procs)
        export = [json.loads(line) async for line in _lines(CampaignExport(redis_client, served, "camp", fmt="jsonl"))]
    for rc, _out, err in results:
        assert rc == 0, err[-2000:]
        assert SECRET not in err and SHARED not in err
    sim_log = await sim.log()
    _reconcile(stream, rec, export, sim_log)


async def _lines(export: CampaignExport) -> Any:
    buf = b""
    async for data in export.stream():
        buf += data
    for line in buf.decode().splitlines():
        if line.strip():
            yield line


def _reconcile(stream: list[Event], rec: Receiver, export: list[dict[str, Any]], sim_log: dict[str, Any]) -> None:
    delivered = _by_id(rec)
    # The receiver got exactly the stream, each event once after deduplication, in order per job, signed.
    assert set(delivered) == {e.id for e in stream}
    assert all(delivered[e.id] == e.as_dict() for e in stream)
    per_job: dict[str, list[str]] = {}
    for h in rec.delivered():
        if h.event_id not in per_job.get(h.event["job_id"], []):
            per_job.setdefault(h.event["job_id"], []).append(h.event_id)
    assert all(ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) for ids in per_job.values())
    assert all(verify(SECRET.encode(), h.headers["X-Dialer-Timestamp"], h.body, h.headers["X-Dialer-Signature"],
                      now=h.at - time.monotonic() + time.time()) for h in rec.delivered())
    assert sum(1 for h in rec.hits if h.status == 500) >= 1

    # Calls: every call the simulator created is one `sent` event (first calls and redials), and back.
    made = created(sim_log["requests"])
    sent = {e.job_id: e.data["serial"] for e in stream if e.type == "sent"}
    assert Counter(sent.values()) == Counter(q["callSerialNo"] for q in made) and len(sent) == len(made)
    job_of = {serial: job for job, serial in sent.items()}
    assert {job_of[q["callSerialNo"]].split(":")[1] for q in made} == {q["called"] for q in made}
    # Outcomes: each accepted release event is one `outcome` event of the job that made that call.
    heard = {c["callSerialNo"]: c["releaseReason"] for c in sim_log["callbacks"] if c["status"] == 200}
    outcomes = {e.job_id: e.data["release_reason"] for e in stream if e.type == "outcome"}
    assert heard == {sent[job]: reason for job, reason in outcomes.items()}
    assert len(heard) == len(made) == len(outcomes)
    # Redials: one `redial` event per unanswered first call, naming the job that then made a call.
    redials = {e.job_id: e.data["redial"] for e in stream if e.type == "redial"}
    unanswered = {job for job, reason in outcomes.items() if reason in ("4", "6", "8", "9") and ":r" not in job}
    assert redials and set(redials) == unanswered and all(r in sent for r in redials.values())
    assert {j for j in sent if ":r" in j} == set(redials.values())
    assert any(e.type == "retrying" for e in stream), "the 10% HTTP 500s were retried (and reported)"
    # The export: one row per number, its latest call's serial and outcome as the stream says.
    assert len(export) == 40 == len({r["called"] for r in export})
    for row in export:
        latest = redials.get(row["job_id"], row["job_id"])
        assert row["latest_job_id"] == latest and row["redials"] == (1 if row["job_id"] in redials else 0)
        assert row["call_serial_no"] == sent[latest] and row["state"] == "sent"
        assert row["release_reason"] == outcomes[latest]
    # statusCallbackUrl is the dialer's own: the provider never saw it.
    assert made and all("statusCallbackUrl" not in json.dumps(q["body"]) and rec.url not in json.dumps(q["body"])
                        for q in sim_log["requests"] if q["body"] is not None)


# --- a slow receiver does not slow dialling -------------------------------------------------------------


async def _sim_log(url: str) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(url + "/_sim/log") as r:
        data: dict[str, Any] = await r.json()
    return list(data["requests"])


async def _burst(settings: Settings, redis: aioredis.Redis, prefix: str, n: int, url: str) -> float:
    """Enqueue ``n`` calls at once (each with a statusCallbackUrl) and return the calls/s the simulator saw,
    from its first to its last call of the burst."""
    jobs = [CallJob({"called": f"{prefix}{i:05d}", "playList": [{"voiceId": "100001"}]}, status_callback_url=url)
            for i in range(n)]
    await enqueue_all(redis, settings, jobs)
    stamps: list[float] = []

    async def done() -> bool:
        nonlocal stamps
        stamps = sorted(q["ts"] for q in created(await _sim_log(settings.api_base_url))
                        if q["called"].startswith(prefix))
        return len(stamps) >= n
    await wait_until(done, 120, 0.5, what=lambda: f"{len(stamps)}/{n} calls made")
    return (n - 1) / (stamps[-1] - stamps[0])


async def test_a_receiver_taking_5_s_per_request_does_not_slow_dialling(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    """The simulator, a worker and `dialer webhooks` each in a process of their own (as deployed); the calls/s
    of bursts whose every webhook goes to a receiver that sleeps 5 s per request, against the same bursts with
    no delivery process running. Alternated three times and the best of each compared: on a small machine
    one burst's rate varies by a quarter from run to run whatever else runs."""
    port = free_port()
    settings = webhook_settings(settings, webhook_timeout_s=10.0, rate_limit=0,
                                api_base_url=f"http://127.0.0.1:{port}")
    env = _env(settings, DIALER_LOG_LEVEL="WARNING")
    n = 1000
    sim = await start_dialer("simulator", "--port", str(port), "--app-key", settings.app_key, env=env)
    procs = [sim]
    with_slow: list[float] = []
    without: list[float] = []
    held: list[int] = []
    async with receiving() as slow:
        slow.delay_s = 5.0
        try:
            await wait_until(lambda: _up(settings.api_base_url), 15, 0.1)
            procs.append(await start_dialer("worker", env=env))
            await _burst(settings, redis_client, "1390", 20, slow.url)  # warm-up: token, connections
            for r in range(3):
                hooks = await start_dialer("webhooks", env=env)
                await wait_until(lambda: _busy(slow), 20, 0.1)
                with_slow.append(await _burst(settings, redis_client, f"13{91 + 2 * r}", n, slow.url))
                held.append(slow.in_flight)
                await _stop([hooks])
                without.append(await _burst(settings, redis_client, f"13{92 + 2 * r}", n, slow.url))
        finally:
            await _stop(procs)
    print(f"\ndialling: {', '.join(f'{x:.0f}' for x in with_slow)} calls/s while a receiver takes 5 s per webhook; "
          f"{', '.join(f'{x:.0f}' for x in without)} calls/s with no delivery process", file=sys.stderr)
    assert held == [settings.webhook_max_per_destination] * 3  # the slow receiver held its share throughout
    assert max(with_slow) >= 0.8 * max(without), (with_slow, without)


async def _up(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(url + "/_sim/health") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def _busy(rec: Receiver) -> bool:
    return rec.in_flight > 0


# --- the CLI --------------------------------------------------------------------------------------------


async def test_the_cli_enqueues_with_a_url_lists_and_replays_dead_letters_and_stops_on_sigterm(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    ws = webhook_settings(settings, webhook_retry_max_s=1.0)
    env = _env(ws)
    async with receiving() as rec:
        rec.answer = lambda n: 503
        rc, out, err = await run_dialer("enqueue", "--called", "13800000001", "--voice-id", "100001", "--id", "cli-1",
                                        "--status-callback-url", rec.url, env=env)
        assert rc == 0, err
        body = tmp_path / "b.jsonl"
        body.write_text(json.dumps({"called": "13800000002", "playList": [{"voiceId": "1"}], "id": "cli-2",
                                    "statusCallbackUrl": rec.url + "?own=1"}) + "\n")
        rc, out, err = await run_dialer("enqueue", "--json", str(body), env=env)
        assert rc == 0, err
        rc, out, err = await run_dialer("enqueue", "--called", "13800000003", "--voice-id", "1",
                                        "--status-callback-url", "http://10.0.0.1/x",
                                        env={**env, "DIALER_WEBHOOK_ALLOW_PRIVATE": "false"})
        assert rc == 1 and "rejected item 1: status_callback_url: names a loopback, private" in err
        rc, out, _ = await run_dialer("job", "cli-2", env=env)
        assert json.loads(out)["status_callback_url"] == rec.url + "?own=1"

        rc, _out, err = await run_dialer("webhooks", env={**env, "DIALER_WEBHOOK_SECRET": ""})
        assert rc == 1 and "DIALER_WEBHOOK_SECRET is not set" in err
        rc, out, _ = await run_dialer("webhooks", "--check", env=env)
        assert rc == 1 and "unhealthy" in out

        hooks = await start_dialer("webhooks", env=env)
        queue = WebhookQueue(redis_client, ws)

        async def two_dead() -> bool:
            return len(await queue.dead()) == 2
        await wait_until(two_dead, 20, 0.2)
        rc, out, _ = await run_dialer("webhooks", "--check", env=env)
        assert rc == 0 and out.strip() == "healthy"
        rc, out, err = await run_dialer("webhooks", "status", env=env)
        status = json.loads(out)
        assert rc == 0 and status["dead"] == 2 and status["processes"] == 1 and status["intake_lag"] == 0, status
        rc, out, err = await run_dialer("webhooks", "dead", "list", "--json", env=env)
        dead = [json.loads(line) for line in out.splitlines()]
        assert rc == 0 and {d["job_id"] for d in dead} == {"cli-1", "cli-2"}
        assert all("HTTP 503" in d["reason"] and d["type"] == "queued" for d in dead)
        rc, out, err = await run_dialer("webhooks", "dead", "list", env=env)
        assert rc == 0 and len(out.splitlines()) == 2 and "cli-1" in out
        rc, out, err = await run_dialer("webhooks", "dead", "replay", env=env)
        assert rc == 2 and "--all" in err
        rec.answer = lambda n: 200
        rec.delay_s = 1.5
        rc, out, err = await run_dialer("webhooks", "dead", "replay", dead[0]["id"], "1-1", env=env)
        assert rc == 1 and out.strip() == "replayed 1 webhook(s)" and "not replayed: 1-1" in err
        await wait_until(lambda: _busy(rec), 10, 0.05)
        hooks.proc.send_signal(signal.SIGTERM)  # mid-POST: it finishes that one, then exits
        rc, _out, err = await hooks.wait(30)
        assert rc == 0, err
        assert [h.event["job_id"] for h in rec.delivered()] == [dead[0]["job_id"]]
        rc, out, _ = await run_dialer("webhooks", "dead", "replay", "--all", env=env)
        assert rc == 0 and out.strip() == "replayed 1 webhook(s)"
        rec.delay_s = 0
        hooks2 = await start_dialer("webhooks", env=env)

        async def both() -> bool:
            return len(rec.delivered()) == 2
        await wait_until(both, 20, 0.2)
        rc, _o, err2 = (await _stop([hooks2]))[0]
    assert rc == 0
    assert SECRET not in err + err2
    assert os.environ.get("DIALER_WEBHOOK_SECRET") is None




# --- Redis away -----------------------------------------------------------------------------------------


async def test_redis_away_one_warning_deliveries_resume_and_sigterm_is_obeyed(
    settings: Settings, tmp_path: Path
) -> None:
    from tests.dispatch.test_redis_outage import BACK, UNREACHABLE, Stderr
    from tests.helpers import RedisServer

    server = RedisServer(tmp_path)  # not started yet: the process waits for it
    ws = webhook_settings(settings, redis_url=server.url)
    env = _env(ws)
    async with receiving() as rec:
        log = Stderr(await start_dialer("webhooks", env=env))
        try:
            await log.wait_for(UNREACHABLE)
            await asyncio.sleep(2)
            assert log.count(UNREACHABLE) == 1, log.lines
            server.start()
            client = aioredis.Redis.from_url(server.url)
            try:
                await enqueue_all(client, ws, [CallJob({"called": "13800000001", "playList": [{"voiceId": "1"}]},
                                                       job_id="a", status_callback_url=rec.url)])
                await wait_until(lambda: _delivered(rec, 1), 20, 0.1, what=lambda: "\n".join(log.lines))
                server.stop()  # an outage while running (this Redis keeps no data: it comes back empty)
                await log.wait_for(UNREACHABLE, n=2)
                await asyncio.sleep(3)
                assert log.count(UNREACHABLE) == 2, log.lines
                server.start()
                await log.wait_for(BACK)
            finally:
                await client.aclose()
            client = aioredis.Redis.from_url(server.url)
            try:  # the group is made again and a new event is delivered
                await enqueue_all(client, ws, [CallJob({"called": "13800000002", "playList": [{"voiceId": "1"}]},
                                                       job_id="b", status_callback_url=rec.url)])
                await wait_until(lambda: _delivered(rec, 2), 20, 0.1, what=lambda: "\n".join(log.lines))
            finally:
                await client.aclose()
            server.stop()
            await log.wait_for(UNREACHABLE, n=3)
            rc, took = await log.stop(timeout=30)
        finally:
            log.proc.kill()
            server.stop()
    assert rc == 0, log.lines
    assert took < 15, took
    assert [h.event["job_id"] for h in rec.delivered()] == ["a", "b"]
    assert "Traceback" not in "\n".join(log.lines) and SECRET not in "\n".join(log.lines)


async def _delivered(rec: Receiver, n: int) -> bool:
    return len(rec.delivered()) >= n
