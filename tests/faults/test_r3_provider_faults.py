"""R3: a misbehaving provider. 30 % HTTP 500, 5 % hangs (longer than the request timeout), latency with
jitter and a latency spike, the token revoked mid-run, a burst of 401s (revoked again and again for a few
seconds), and the provider down for 10 s (its process killed, then started again on the same port).

Reconciled exactly with the simulator's request log (kept across its restart):

* every job is final; none ``failed`` (nothing permanent was injected); nobody was called twice;
* ``sent`` jobs == ``created`` requests, one each, with the same callSerialNo;
* ``unknown`` jobs == ``hang`` requests (the client timed out on them) — plus, counted apart, requests
  in flight at the instant the provider's process was killed (the request left, no answer came back);
* ``dead`` jobs made exactly ``DIALER_RETRY_MAX_ATTEMPTS`` attempts;
* tokenByAkSk was called about once per revocation, not once per refused request.

The simulator's log lives in its process: before killing it the scenario turns every answer into a 500
(nothing created, nothing hanging) for longer than the request timeout, so that no created call is in
flight or unlogged when the log is fetched for the last time; the outage then starts.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.faults.conftest import (
    FULL,
    Procs,
    SimProcess,
    body,
    count_states,
    fault_settings,
    reconcile,
    report,
    scale,
    wait_final,
)
from tests.helpers import enqueue_all, load_records, settings_env
from worker.ledger.states import State
from worker.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(600 if FULL else 240)]

JOBS = scale(1500, 6000)
RATE = scale(80, 150)
WORKERS = 3
ATTEMPTS = 8
DOWN_S = 10.0
HANG_S = 6.0  # above the 3 s request timeout: the client gives up, the call exists
FAULTS: dict[str, Any] = {"fail_500_rate": 0.3, "hang_rate": 0.05, "hang_s": HANG_S, "latency_ms": 20.0,
                          "jitter_ms": 300.0, "seed": 3}


async def test_r3_provider_500s_hangs_spikes_revocations_and_outage(
    settings: Settings, redis_client: aioredis.Redis, procs: Procs
) -> None:
    s = fault_settings(
        settings, rate_limit=float(RATE), rate_burst=5, retry_max_attempts=ATTEMPTS, retry_base_s=0.5,
        retry_max_backoff_s=4.0, retry_inprocess_max_s=2.0,
    )
    sim = SimProcess(procs, settings_env(s))
    await sim.start(FAULTS)
    s = s.model_copy(update={"api_base_url": sim.url})
    env = settings_env(s)
    ids = await enqueue_all(redis_client, s, [body(f"3{i:09d}", priority=1 + i % 9) for i in range(JOBS)])
    workers = [await procs.start("worker", "worker", env=env) for _ in range(WORKERS)]
    t0 = time.monotonic()
    revocations = 0

    async def at(second: float) -> None:
        await asyncio.sleep(max(0.0, t0 + second - time.monotonic()))

    await at(4)
    await sim.revoke()  # token revoked mid-run
    revocations += 1
    await at(7)
    while time.monotonic() < t0 + 10:  # a burst of 401s: revoked again every 250 ms for 3 s
        await sim.revoke()
        revocations += 1
        await asyncio.sleep(0.25)
    await at(11)
    await sim.configure(latency_ms=1000.0, jitter_ms=500.0)  # a latency spike, still under the timeout
    await at(13)
    await sim.configure(latency_ms=FAULTS["latency_ms"], jitter_ms=FAULTS["jitter_ms"])
    await at(15)
    # Provider down: first nothing new is created or hung, until every answer already owed is settled
    # (the request timeout), so the log fetched now is the whole story of this incarnation.
    await sim.configure(fail_500_rate=1.0, hang_rate=0.0)
    await asyncio.sleep(s.request_timeout_s + 0.5)
    await sim.sync()
    down_at = time.time()
    await sim.stop(signal.SIGKILL)
    before_down = await count_states(redis_client, s, ids)
    await asyncio.sleep(DOWN_S)
    up_at = time.time()  # the restart begins; the simulator answers a moment later
    await sim.start(FAULTS)

    await wait_final(redis_client, s, ids, JOBS * 2 / RATE + 180, workers)
    total_s = time.monotonic() - t0
    survived = sum(w.alive for w in workers)
    for w in workers:
        if w.alive:
            assert await w.stop() == 0
    await sim.sync()
    records = await load_records(redis_client, s, ids)
    rec = reconcile(records, sim.requests)

    hangs = {j for j, calls in rec.calls_per_job.items() if any(e["outcome"] == "hang" for e in calls)}
    created = {j for j, calls in rec.calls_per_job.items() if any(e["outcome"] == "created" for e in calls)}
    unknown = {j for j, r in records.items() if r is not None and r.state == State.UNKNOWN}
    sent = {j for j, r in records.items() if r is not None and r.state == State.SENT}
    dead = [r for r in records.values() if r is not None and r.state == State.DEAD]
    # Requests in flight when the provider's process was killed: no answer, nothing logged as created.
    cut = {j for j in unknown - hangs if (r := records[j]) is not None and "no answer after sending" in
           (r.last_error or "") and down_at - 1 <= r.updated_ms / 1000 <= down_at + 2}
    life2_created = sum(1 for e in sim.requests if e["life"] == 2 and e["outcome"] == "created")
    dead_attempts = Counter(r.attempts for r in dead)
    restarts = 1
    report("R3 provider faults", {
        **rec.figures(),
        "faults": "500 30%, hang 5% (6 s > 3 s timeout), latency 20+0..300 ms, spike 1000+0..500 ms",
        "states before the outage": dict(sorted(before_down.items())),
        "token revocations / sim restarts": f"{revocations} / {restarts}",
        "tokenByAkSk requests": sim.token_requests,
        "hang requests -> unknown": f"{len(hangs & unknown)}/{len(hangs)}",
        "created requests -> sent": f"{len(created & sent)}/{len(created)}",
        "unknown, cut by the provider's kill": len(cut),
        "dead jobs by attempts": dict(dead_attempts),
        "created after the outage": life2_created,
        "first created after restart began s": round(min((e["ts"] for e in sim.requests if e["life"] == 2
                                                    and e["outcome"] == "created"), default=up_at) - up_at, 2),
        "workers alive at the end": f"{survived}/{WORKERS}",
        "all final after s": round(total_s, 1),
        "worker errors logged": len(procs.problems()),
    })

    assert survived == WORKERS, "a worker exited"
    assert not rec.lost, rec.lost[:5]
    assert not rec.multi_called, {j: rec.calls_per_job[j] for j in rec.multi_called[:3]}
    assert rec.states[State.FAILED] == 0 and set(rec.states) <= {State.SENT, State.UNKNOWN, State.DEAD}
    # sent == created requests, one to one, same serial
    assert created == sent, (sorted(created - sent)[:5], sorted(sent - created)[:5])
    assert not rec.sent_serial_mismatch
    assert all(len(rec.calls_per_job[j]) == 1 for j in sent)
    # unknown == hung requests (+ the ones cut by the kill, which created nothing)
    assert hangs <= unknown, sorted(hangs - unknown)[:5]
    assert unknown - hangs == cut, [records[j] for j in sorted(unknown - hangs - cut)[:5]]
    assert len(cut) <= max(5, RATE // 10), cut  # at most ~100 ms of traffic
    assert rec.stray_calls == 0
    # dead: exactly the attempt budget, with the reason
    assert set(dead_attempts) <= {ATTEMPTS}, dead_attempts
    assert all(f"gave up after {ATTEMPTS} attempts" in (r.last_error or "") for r in dead)
    # the token was refreshed (after revocations and the restart, calls were created again) ...
    assert life2_created > 0 and sim.token_requests >= 2
    # ... but not hammered: about one tokenByAkSk call per revocation, fleet-wide
    assert sim.token_requests <= 2 * (1 + revocations + restarts) + WORKERS, (sim.token_requests, revocations)
    assert not procs.problems(), procs.problems()[:10]


async def test_r3_provider_slower_than_the_in_flight_cap_loses_nothing(
    settings: Settings, redis_client: aioredis.Redis, procs: Procs
) -> None:
    """Overload: every answer takes 2.5 s (under the 3 s timeout) and the fleet may have 2 requests in
    flight, so 16 jobs taken at once wait up to ~20 s for a slot, longer than one run may last (the job
    timeout, 15 s). Waiting jobs must go back on their queue, not be dropped: every job ends sent."""
    jobs = 16
    s = fault_settings(settings, rate_limit=0, max_in_flight=2)
    sim = SimProcess(procs, settings_env(s))
    await sim.start({"latency_ms": 2500.0})
    s = s.model_copy(update={"api_base_url": sim.url})
    ids = await enqueue_all(redis_client, s, [body(f"3900000{i:03d}", priority=5) for i in range(jobs)])
    worker = await procs.start("worker", "worker", "--queues", "5", env=settings_env(s))
    t0 = time.monotonic()
    counts = await wait_final(redis_client, s, ids, 60, [worker])
    total_s = time.monotonic() - t0
    alive = worker.alive
    if alive:
        assert await worker.stop() == 0
    await sim.sync()
    records = await load_records(redis_client, s, ids)
    rec = reconcile(records, sim.requests)
    timeouts = sum(1 for line in worker.output().splitlines() if "failed, TimeoutError" in line)
    report("R3 overload (provider slower than the in-flight cap)", {
        **rec.figures(), "max in flight / answer time": "2 / 2.5 s", "job timeout s": s.job_timeout_s,
        "runs ended by arq's job timeout": timeouts, "all final after s": round(total_s, 1),
    })
    assert alive
    assert not rec.lost, f"{len(rec.lost)} jobs lost ({dict(counts)}), e.g. {[records[j] for j in rec.lost[:2]]}"
    assert rec.states == {State.SENT: jobs} and not rec.multi_called
    assert timeouts == 0, "a run outlived the job timeout: arq dropped it"


async def test_r3_wrong_app_secret_pauses_the_fleet_and_nothing_is_burnt(
    settings: Settings, redis_client: aioredis.Redis, procs: Procs
) -> None:
    """The provider refuses the fleet's AK/SK (tokenByAkSk 401) for a while, then accepts it (the operator
    fixed it): no job may be dead-lettered or charged an attempt meanwhile, each worker says so in one
    WARNING naming the settings (never their values), tokenByAkSk is asked with backoff (not per job),
    and every job is sent once the credentials work, without anybody restarting anything."""
    jobs = scale(200, 1000)
    wrong_s = 6.0
    s = fault_settings(settings, rate_limit=0, retry_max_attempts=3, retry_max_total_s=2.0,
                       token_refused_retry_max_s=2.0)
    secret = s.app_secret.get_secret_value()
    sim = SimProcess(procs, settings_env(s))
    await sim.start({"app_secret": "someone-rotated-it"})
    s = s.model_copy(update={"api_base_url": sim.url})
    ids = await enqueue_all(redis_client, s, [body(f"3800000{i:04d}", priority=5) for i in range(jobs)])
    workers = [await procs.start(f"worker{i}", "worker", env=settings_env(s)) for i in range(2)]
    await asyncio.sleep(wrong_s)
    during = await load_records(redis_client, s, ids)
    states_during = Counter(str(r.state) if r else "missing" for r in during.values())
    attempts_during = sum(r.attempts for r in during.values() if r)
    await sim.sync()
    asked_while_wrong = sim.token_requests
    t0 = time.monotonic()
    await sim.configure(app_secret=secret)
    counts = await wait_final(redis_client, s, ids, 60, workers)
    resumed_s = time.monotonic() - t0
    for w in workers:
        assert await w.stop() == 0
    await sim.sync()
    records = await load_records(redis_client, s, ids)
    rec = reconcile(records, sim.requests)
    outputs = [w.output() for w in workers]
    warnings = [sum(1 for line in out.splitlines() if "WARNING" in line and "DIALER_APP_SECRET" in line)
                for out in outputs]
    report("R3 wrong app secret (tokenByAkSk refused, then fixed)", {
        **rec.figures(), "refused for s": wrong_s, "states while refused": dict(states_during),
        "attempts charged while refused": attempts_during, "tokenByAkSk calls while refused": asked_while_wrong,
        "WARNINGs naming the AK/SK per worker": warnings, "all sent after the fix, s": round(resumed_s, 1),
    })
    assert states_during == {State.QUEUED: jobs} and attempts_during == 0
    # Backoff 1, 2, 2 ... s over ~6 s from each of 2 workers' views: a handful, not one per job.
    assert asked_while_wrong <= 10, asked_while_wrong
    assert warnings == [1, 1], warnings
    assert all(secret not in out and "someone-rotated-it" not in out for out in outputs)
    assert rec.states == {State.SENT: jobs} and not rec.lost and not rec.multi_called, dict(counts)
