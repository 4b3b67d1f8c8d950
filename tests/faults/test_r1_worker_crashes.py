"""R1: worker processes killed with SIGKILL, two at a time, every few seconds, while thousands of calls
go out; replacements start at once.

A killed worker's jobs come back when arq's in-progress key expires (job timeout + 10 s). A job found
``queued`` is then sent normally; one found ``sending`` had its request in flight when the worker died
and becomes ``unknown`` (not redialled). The ledger is reconciled with the simulator's request log:
nothing lost, nobody called twice, every ``sent`` job has exactly one created call with its serial, and
every ``unknown`` job at most one.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest
import redis.asyncio as aioredis

from tests.faults.conftest import (
    FULL,
    Procs,
    SimProcess,
    assert_no_double_calls,
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

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(900 if FULL else 240)]

JOBS = scale(5000, 10_000)
WORKERS = 4
KILL_EVERY_S = 3.0
MAX_KILL_ROUNDS = scale(5, 12)
CONCURRENCY = "30"  # per queue and process; keeps what a killed worker strands (and waits 25 s) moderate


async def test_r1_sigkill_two_of_four_workers_every_few_seconds(
    settings: Settings, redis_client: aioredis.Redis, procs: Procs
) -> None:
    s = fault_settings(settings, rate_limit=0)
    # Latency with jitter (50..300 ms) so that kills land while requests are in flight.
    sim = SimProcess(procs, settings_env(s), "--latency-ms", "50", "--jitter-ms", "250")
    await sim.start()
    s = s.model_copy(update={"api_base_url": sim.url})
    env = settings_env(s)
    started = time.monotonic()
    ids = await enqueue_all(redis_client, s, [body(f"1{i:09d}", priority=1 + i % 9) for i in range(JOBS)])
    workers = [await procs.start("worker", "worker", "--concurrency", CONCURRENCY, env=env)
               for _ in range(WORKERS)]

    rng = random.Random(20250607)
    kills: list[tuple[float, int]] = []
    for _ in range(MAX_KILL_ROUNDS):
        await asyncio.sleep(KILL_EVERY_S)
        counts = await count_states(redis_client, s, ids)
        if counts[State.QUEUED] < JOBS // 20:
            break  # the work is nearly done: further kills would hit idle workers
        for victim in rng.sample(workers, 2):
            await victim.kill()
            kills.append((time.monotonic() - started, victim.pid))
            workers.remove(victim)
            workers.append(await procs.start("worker", "worker", "--concurrency", CONCURRENCY, env=env))
    kill_phase_s = time.monotonic() - started

    # The last victims' jobs return job_timeout + 10 s after they were taken, then run.
    await wait_final(redis_client, s, ids, s.job_timeout_s + 10 + scale(120, 300), workers)
    total_s = time.monotonic() - started
    survived = sum(w.alive for w in workers)
    for w in workers:
        if w.alive:
            assert await w.stop() == 0
    await sim.sync()
    records = await load_records(redis_client, s, ids)
    rec = reconcile(records, sim.requests)
    stale = sum(1 for r in records.values() if r is not None and r.last_error == "worker died mid-request")
    report("R1 worker crashes", {
        **rec.figures(),
        "workers / killed (SIGKILL)": f"{WORKERS} / {len(kills)} in {len(kills) // 2} rounds every {KILL_EVERY_S:g} s",
        "unknown via dead worker": stale,
        "replacements alive at the end": f"{survived}/{len(workers)}",
        "kill phase s": round(kill_phase_s, 1),
        "all final after s": round(total_s, 1),
        "worker errors logged": len(procs.problems()),
    })

    assert survived == len(workers), "a worker died on its own"
    assert_no_double_calls(rec, records)
    assert len(kills) >= 4, "the scenario must kill workers mid-run"
    assert set(rec.states) <= {State.SENT, State.UNKNOWN}, rec.states
    # unknown jobs are never redialled: at most one call each (checked above), and each one is a job whose
    # worker died with its request in flight.
    assert stale == rec.states[State.UNKNOWN]
    assert rec.states[State.UNKNOWN] >= 1, "kills landed mid-request, so some outcomes must be unknown"
    assert not procs.problems(), procs.problems()[:10]
