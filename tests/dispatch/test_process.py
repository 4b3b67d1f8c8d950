"""End to end: producer -> Redis -> worker processes -> simulator over HTTP, reconciled with its log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.helpers import RedisServer, Sim, created, enqueue, records, run_dialer, running, settings_env, start_dialer
from tests.helpers import wait_until as wait_for
from worker.dispatch.engine import open_pool
from worker.ledger.producer import CallJob, Producer
from worker.ledger.states import State
from worker.settings import Settings
from worker.store.keys import Keys


def body(called: str, priority: int = 9, **extra: Any) -> dict[str, Any]:
    return {"called": called, "playList": [{"voiceId": "100001", "templateParams": ["a", "b"]}],
            "priority": str(priority), **extra}


async def all_final(settings: Settings, job_ids: list[str]) -> bool:
    recs = await records(settings, job_ids)
    return all(r is not None and r.state not in (State.QUEUED, State.SENDING) for r in recs.values())


@pytest.mark.slow
async def test_end_to_end_burst_worker_sends_each_job_once_with_the_seed_body(
    sim: Sim, sim_settings: Settings
) -> None:
    bodies = [body(f"1380000{i:04d}", priority=1 + i % 9, callerPresent="2222201", playTimes=2)
              for i in range(40)]
    job_ids = await enqueue(sim_settings, bodies, campaign="e2e")
    rc, _out, err = await run_dialer("worker", "--burst", env=settings_env(sim_settings), timeout=60)
    assert rc == 0, err

    requests = await sim.requests()
    assert len(requests) == 40
    by_called = {r["called"]: r for r in requests}
    recs = await records(sim_settings, job_ids)
    for b, job_id in zip(bodies, job_ids, strict=True):
        logged = by_called[b["called"]]
        assert logged["body"] == b  # the seed's exact field names and values, nothing added
        assert logged["headers"]["X-APP-Key"] == sim_settings.app_key
        assert logged["headers"]["Authorization-ok"] is True
        rec = recs[job_id]
        assert rec is not None and rec.state == State.SENT
        assert rec.call_serial_no == logged["callSerialNo"]
        assert rec.attempts == 1


async def test_priority_one_overtakes_a_backlog_and_each_level_stays_fifo(
    sim: Sim, sim_settings: Settings
) -> None:
    settings = sim_settings.model_copy(update={"rate_limit": 20.0, "rate_burst": 1})
    backlog = []
    for i in range(30):  # one by one, so each job has its own enqueue time
        backlog += await enqueue(settings, [body(f"9000{i:04d}", priority=9)])
    async with running(settings):
        await asyncio.sleep(0.5)
        urgent_at = time.time()
        urgent = await enqueue(settings, [body(f"1000{i:04d}", priority=1) for i in range(3)])
        await wait_for(lambda: all_final(settings, backlog + urgent), timeout=15)

    requests = created(await sim.requests())
    order = [r["called"] for r in requests]
    p9 = [c for c in order if c.startswith("9000")]
    assert p9 == sorted(p9), " ".join(f"{r['called']}@{r['ts'] - requests[0]['ts']:.3f}" for r in requests)
    last_urgent = max(order.index(f"1000{i:04d}") for i in range(3))
    # 30 p9 at 20/s take 1.5 s; the urgent ones arrive at ~0.5 s and must not wait for the backlog.
    assert last_urgent < len(order) - 10, order
    for r in requests:
        if r["called"].startswith("1000"):
            assert r["ts"] - urgent_at < 0.6, f"p1 job waited {r['ts'] - urgent_at:.2f}s"


@pytest.mark.slow
async def test_rate_limit_holds_across_two_worker_processes(sim: Sim, sim_settings: Settings) -> None:
    settings = sim_settings.model_copy(update={"rate_limit": 10.0, "rate_burst": 1})
    await enqueue(settings, [body(f"2000{i:04d}") for i in range(35)])
    env = settings_env(settings)
    procs = [await start_dialer("worker", "--burst", env=env) for _ in range(2)]
    for p in procs:
        rc, _o, err = await p.wait(60)
        assert rc == 0, err
    stamps = sorted(r["ts"] for r in created(await sim.requests()))
    assert len(stamps) == 35
    worst = max(sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps)
    assert worst <= 10 + 1 + 1, f"{worst} calls in one second under a 10/s limit"
    assert stamps[-1] - stamps[0] >= 2.8  # 35 calls at 10/s cannot finish much faster than 3.4 s


async def test_http_500_storm_is_retried_until_sent(sim: Sim, sim_settings: Settings) -> None:
    # Attempts enough that no job is dead-lettered while the storm lasts: with 10-50 ms backoffs the
    # default 6 are spent in ~0.2 s, which a loaded CI host can take to notice the storm and end it.
    settings = sim_settings.model_copy(update={"retry_max_attempts": 1000})
    await sim.configure(fail_500_rate=1.0)
    numbers = [f"3000{i:04d}" for i in range(5)]
    job_ids = await enqueue(settings, [body(n) for n in numbers])
    async with running(settings):
        await wait_for(lambda: _each_answered(sim, "500", numbers), timeout=10)
        await sim.configure(fail_500_rate=0.0)
        await wait_for(lambda: all_final(settings, job_ids), timeout=15)
    recs = await records(settings, job_ids)
    assert all(r.state == State.SENT and r.attempts >= 2 for r in recs.values())
    assert len(created(await sim.requests())) == 5


async def _each_answered(sim: Sim, outcome: str, numbers: list[str]) -> bool:
    """Every one of ``numbers`` has had at least one request answered with ``outcome``."""
    return set(numbers) <= {r["called"] for r in await sim.requests() if r["outcome"] == outcome}


@pytest.mark.slow
async def test_500_forever_dead_letters_with_reason_and_requeue_sends_it(
    sim: Sim, sim_settings: Settings
) -> None:
    settings = sim_settings.model_copy(update={"retry_max_attempts": 3})
    await sim.configure(fail_500_rate=1.0)
    [job_id] = await enqueue(settings, [CallJob(request=body("40000001"), job_id="order-42")])
    env = settings_env(settings)
    rc, _o, err = await run_dialer("worker", "--burst", env=env, timeout=60)
    assert rc == 0, err
    rec = (await records(settings, [job_id]))[job_id]
    assert rec.state == State.DEAD and "500" in (rec.last_error or "")
    assert len(await sim.requests()) == 3  # exactly retry_max_attempts provider attempts

    rc, out, _e = await run_dialer("dead-letter", "list", "--json", env=env)
    assert rc == 0 and json.loads(out.splitlines()[0])["id"] == "order-42"

    await sim.configure(fail_500_rate=0.0)
    rc, out, err = await run_dialer("dead-letter", "requeue", "order-42", env=env)
    assert rc == 0 and "requeued 1" in out, err
    rc, _o, err = await run_dialer("worker", "--burst", env=env, timeout=60)
    assert rc == 0, err
    rec = (await records(settings, [job_id]))[job_id]
    assert rec.state == State.SENT
    rc, out, _e = await run_dialer("dead-letter", "list", env=env)
    assert out.strip() == ""


async def test_the_total_retry_budget_dead_letters_before_the_attempts_run_out(
    sim: Sim, sim_settings: Settings
) -> None:
    # retry_max_total_s, not retry_max_attempts, ends this job: 500s forever, backoffs of at most 0.1 s.
    settings = sim_settings.model_copy(update={
        "retry_max_attempts": 1000, "retry_max_total_s": 1.0, "retry_base_s": 0.02, "retry_max_backoff_s": 0.1,
        "rate_limit": 0})
    await sim.configure(fail_500_rate=1.0)
    [job_id] = await enqueue(settings, [CallJob(request=body("40000002"), job_id="budget-total")])
    async with running(settings):
        await wait_for(lambda: _is_dead(settings, job_id), 20, what="the job to be dead-lettered")
    rec = (await records(settings, [job_id]))[job_id]
    assert rec is not None and "gave up after" in (rec.last_error or "") and "500" in (rec.last_error or "")
    stamps = [r["ts"] for r in await sim.requests()]
    assert 3 <= len(stamps) < 1000 and len(stamps) == rec.attempts
    # The last attempt starts once the budget is spent, not a full backoff (or more) later.
    assert 1.0 <= stamps[-1] - stamps[0] < 1.0 + 0.1 + 0.5


async def _is_dead(settings: Settings, job_id: str) -> bool:
    rec = (await records(settings, [job_id]))[job_id]
    return rec is not None and rec.state == State.DEAD


@pytest.mark.slow
async def test_kill_9_mid_request_loses_nothing_and_calls_nobody_twice(sim: Sim, sim_settings: Settings) -> None:
    settings = sim_settings.model_copy(
        update={"job_timeout_s": 15.0, "request_timeout_s": 5.0, "connect_timeout_s": 1.0}
    )
    await sim.configure(latency_ms=2500)
    job_ids = await enqueue(settings, [body(f"5000{i:04d}") for i in range(30)])
    env = settings_env(settings)
    victim = await start_dialer("worker", "--concurrency", "10", env=env)
    await wait_for(lambda: _count(sim, at_least=5), timeout=15)
    victim.proc.send_signal(signal.SIGKILL)
    await victim.wait(10)
    await sim.configure(latency_ms=0)
    survivor = await start_dialer("worker", env=env)
    try:
        await wait_for(lambda: all_final(settings, job_ids), timeout=60, interval=0.3)
    finally:
        survivor.proc.send_signal(signal.SIGTERM)
        await survivor.wait(30)

    requests = await sim.requests()
    per_number = Counter(r["called"] for r in created(requests))
    recs = await records(settings, job_ids)
    states = Counter(r.state for r in recs.values())
    assert states[State.SENT] + states[State.UNKNOWN] == 30, states
    assert states[State.UNKNOWN] >= 1  # the killed worker had requests in flight
    for rec in recs.values():
        if rec.state == State.SENT:
            assert per_number[rec.called] == 1, f"{rec.called} was called {per_number[rec.called]} times"
        else:  # unknown: the request left before the kill; it was never sent again
            assert per_number[rec.called] <= 1


async def _count(sim: Sim, at_least: int) -> bool:
    return len(await sim.requests()) >= at_least


@pytest.mark.slow
async def test_sigterm_drains_in_flight_calls_instead_of_cancelling_them(
    sim: Sim, sim_settings: Settings
) -> None:
    await sim.configure(latency_ms=1500)
    job_ids = await enqueue(sim_settings, [body(f"6000{i:04d}") for i in range(4)])
    proc = await start_dialer("worker", env=settings_env(sim_settings))
    await wait_for(lambda: _count(sim, at_least=4), timeout=15)
    proc.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    rc, _o, err = await proc.wait(sim_settings.drain_timeout_s + 10)
    assert rc == 0, err
    assert time.monotonic() - t0 < sim_settings.drain_timeout_s
    recs = await records(sim_settings, job_ids)
    assert all(r.state == State.SENT for r in recs.values()), recs
    assert len(await sim.requests()) == 4  # nothing re-dialled


@pytest.mark.slow
async def test_worker_survives_a_redis_restart(sim: Sim, sim_settings: Settings, tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    settings = sim_settings.model_copy(update={"redis_url": server.url})
    proc = await start_dialer("worker", env=settings_env(settings))
    try:
        first = await enqueue(settings, [body("70000001")])
        await wait_for(lambda: all_final(settings, first), timeout=15)
        server.stop()
        await asyncio.sleep(1.5)
        server.start()
        second = await enqueue(settings, [body("70000002")])
        await wait_for(lambda: all_final(settings, second), timeout=30)
        assert proc.proc.returncode is None, "worker exited during the outage"
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        await proc.wait(30)
        server.stop()
    assert [r["called"] for r in created(await sim.requests())] == ["70000001", "70000002"]


@pytest.mark.slow
async def test_malformed_jobs_are_dead_lettered_and_the_worker_keeps_going(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    keys = Keys(sim_settings.key_prefix)
    now_ms = int(time.time() * 1000)
    await redis_client.set(keys.arq_job("garbage"), b"\x80\x04not json or pickle")
    await redis_client.zadd(keys.queue(5), {"garbage": now_ms})
    await redis_client.set(keys.arq_job("orphan"), json.dumps({"t": 1, "f": "dial", "a": [], "k": {}, "et": now_ms}))
    await redis_client.zadd(keys.queue(5), {"orphan": now_ms})
    good = await enqueue(sim_settings, [body("80000001", priority=5)])
    rc, _o, err = await run_dialer("worker", "--burst", "--queues", "5", env=settings_env(sim_settings))
    assert rc == 0, err
    recs = await records(sim_settings, [*good, "garbage", "orphan"])
    assert recs[good[0]].state == State.SENT
    for bad in ("garbage", "orphan"):
        assert recs[bad] is not None and recs[bad].state == State.DEAD, bad
        assert recs[bad].last_error
    assert await redis_client.zcard(keys.queue(5)) == 0


@pytest.mark.slow
async def test_cli_enqueue_reports_new_duplicate_and_field_errors(sim_settings: Settings) -> None:
    env = settings_env(sim_settings)
    args = ["enqueue", "--called", "13800000001", "--voice-id", "100001", "--param", "x", "--priority", "2",
            "--id", "k-1"]
    rc, out, err = await run_dialer(*args, env=env)
    assert rc == 0, err
    assert out.strip() == "k-1\tnew (queued)"
    rc, out, _e = await run_dialer(*args, env=env)
    assert rc == 0 and "k-1\tduplicate" in out
    rc, out, err = await run_dialer("enqueue", "--called", "12ab", "--voice-id", "1", "--play-times", "9", env=env)
    assert rc == 1
    assert "called:" in err and "playTimes:" in err
    rc, out, _e = await run_dialer("job", "k-1", env=env)
    assert rc == 0 and json.loads(out)["state"] == "queued"


@pytest.mark.slow
async def test_cli_enqueue_refuses_a_called_with_a_line_break(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    """``dialer enqueue --called $'13800000077\\n' --campaign c`` was accepted, as job "c:13800000077\\n"."""
    from tests.helpers import snapshot

    env = settings_env(settings)
    before = await snapshot(redis_client)
    rc, out, err = await run_dialer("enqueue", "--called", "13800000077\n", "--voice-id", "1", "--campaign", "c",
                                    env=env)
    assert rc == 1 and "called:" in err and "Traceback" not in err, (rc, out, err)
    assert await snapshot(redis_client) == before


@pytest.mark.slow
async def test_cli_enqueue_refuses_an_id_with_a_colon(settings: Settings, redis_client: aioredis.Redis) -> None:
    """``dialer enqueue --id c:13800000001`` took campaign c's row for that number in advance."""
    from tests.helpers import snapshot

    env = settings_env(settings)
    before = await snapshot(redis_client)
    rc, out, err = await run_dialer("enqueue", "--called", "13800000001", "--voice-id", "1", "--id",
                                    "c:13800000001", env=env)
    assert rc == 1 and "id:" in err and "reserved" in err and "Traceback" not in err, (rc, out, err)
    assert await snapshot(redis_client) == before


async def test_past_deadline_expires_without_dialling_and_not_before_waits(
    sim: Sim, sim_settings: Settings
) -> None:
    now = datetime.now(UTC)
    pool = await open_pool(sim_settings)
    try:
        producer = Producer(pool, sim_settings)
        late = await producer.enqueue(body("81000001"), deadline=now + timedelta(milliseconds=300))
        later = await producer.enqueue(body("81000002"), not_before=now + timedelta(seconds=1.5))
    finally:
        await pool.aclose()
    await asyncio.sleep(0.5)  # the deadline passes while the job waits in its queue
    started = time.time()
    async with running(sim_settings):
        await wait_for(lambda: all_final(sim_settings, [str(late.job_id), str(later.job_id)]), timeout=10)
    recs = await records(sim_settings, [str(late.job_id), str(later.job_id)])
    assert recs[str(late.job_id)].state == State.EXPIRED
    assert recs[str(later.job_id)].state == State.SENT
    [sent] = created(await sim.requests())
    assert sent["called"] == "81000002"
    assert sent["ts"] >= started + 0.8  # not before its not_before (1.5 s after enqueue)


@pytest.mark.slow
async def test_health_check_reports_live_workers_only(sim_settings: Settings) -> None:
    env = settings_env(sim_settings)
    rc, out, _e = await run_dialer("worker", "--check", "--queues", "1-2", env=env)
    assert rc == 1 and "unhealthy" in out
    proc = await start_dialer("worker", "--queues", "1-2", env=env)
    try:
        async def healthy() -> bool:
            rc, _o, _e = await run_dialer("worker", "--check", "--queues", "1-2", env=env)
            return rc == 0
        await wait_for(healthy, timeout=20, interval=0.5)
        rc, _o, _e = await run_dialer("worker", "--check", "--queues", "3", env=env)
        assert rc == 1  # nobody serves queue 3
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        await proc.wait(30)


@pytest.mark.slow
async def test_cli_enqueue_json_lines_from_stdin_is_all_or_nothing_per_item(
    sim_settings: Settings, tmp_path: Path
) -> None:
    env = settings_env(sim_settings)
    lines = [json.dumps({**body("83000001"), "id": "j-1"}), json.dumps(body("83000002", priority=2)),
             json.dumps({"called": "83000003", "playList": [], "id": "j-3"})]
    path = tmp_path / "calls.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rc, out, err = await run_dialer("enqueue", "--json", str(path), env=env)
    assert rc == 1  # one item was rejected
    assert "rejected item 3: playList:" in err
    new = [line.split("\t") for line in out.strip().splitlines()]
    assert [status for _id, status in new] == ["new (queued)", "new (queued)"]
    assert new[0][0] == "j-1"
    client = aioredis.Redis.from_url(sim_settings.redis_url)
    try:
        keys = Keys(sim_settings.key_prefix)
        assert await client.exists(keys.job("j-3")) == 0  # the bad item left nothing behind
        assert await client.zcard(keys.queue(9)) == 1 and await client.zcard(keys.queue(2)) == 1
    finally:
        await client.aclose()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.cli", "enqueue", "--json", "-", env={**os.environ, **env},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out_b, _err_b = await proc.communicate(lines[0].encode())
    assert proc.returncode == 0 and out_b.decode().startswith("j-1\tduplicate")


async def test_an_enqueued_job_wakes_an_idle_worker_instead_of_waiting_for_its_poll(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    # A poll every 5 s: only the wake-up (enqueue.lua publishes, the worker process listens) can start
    # these jobs within a second of their enqueue.
    settings = sim_settings.model_copy(update={"poll_delay_s": 5.0})

    async def subscribed() -> bool:
        counts = await redis_client.pubsub_numsub(Keys(settings.key_prefix).wake)
        return bool(counts and counts[0][1] >= 1)

    async def latency(called: str) -> float:
        enqueued = time.time()
        [job] = await enqueue(settings, [body(called, priority=2)])
        await wait_for(lambda: all_final(settings, [job]), timeout=10)
        [req] = [r for r in created(await sim.requests()) if r["called"] == called]
        return float(req["ts"]) - enqueued

    async with running(settings):
        await wait_for(subscribed, timeout=10)
        await asyncio.sleep(0.3)  # every queue has made its first poll and sleeps for 5 s
        assert await latency("70000001") < 1.0
        # The subscription survives its connection being killed (a Redis restart, a proxy timeout).
        await redis_client.client_kill_filter(_type="pubsub")
        await asyncio.sleep(0.2)
        await wait_for(subscribed, timeout=10)
        assert await latency("70000002") < 1.0


@pytest.mark.slow
async def test_worker_process_freezes_its_start_up_objects_out_of_the_collector(settings: Settings) -> None:
    # A full collection walked the ~65k objects imports leave behind and stopped a worker's loop
    # ~40 ms (BENCHMARKS.md, P1/P2); run_process moves them to the collector's permanent generation.
    script = (
        "import asyncio, gc\n"
        "from worker.dispatch.process import run_process\n"
        "from worker.settings import Settings\n"
        "before = gc.get_freeze_count()\n"
        "asyncio.run(run_process(Settings(), [9], burst=True))\n"
        "print(before, gc.get_freeze_count())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, env={**os.environ, **settings_env(settings)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    before, frozen = map(int, out.split())
    assert before == 0
    assert frozen > 10_000
