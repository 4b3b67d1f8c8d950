"""R6: Redis with Sentinel loses its primary (``kill -9``) mid-campaign, twice; and a worker is cut off
from Redis by the network for 20 s.

Failover (:func:`test_r6_primary_killed_mid_campaign`): one primary, two replicas and three Sentinels
(tests.faults.ha), every one a real ``redis-server``; three ``dialer worker`` processes find the primary
through the Sentinels (DIALER_REDIS_SENTINELS; their DIALER_REDIS_URL names a port nobody listens on, so
nothing reaches Redis any other way) and wait for one replica (``WAIT``, DIALER_REDIS_WAIT_REPLICAS
``auto``) before a call leaves. 60 % of the calls are a campaign launched before the workers start; the
other 40 % are enqueued into the same campaign while the primary is killed, by a producer that, like any
client, retries an enqueue that failed or was not acknowledged (not replicated) with the same ids. At ~30 %
of the calls sent the primary gets ``kill -9``; the Sentinels promote a replica, and the killed node is
started again as a replica (a supervisor with a restart delay). The full run kills the new primary too,
at ~65 %. Nobody restarts a worker. Asserted: every job final, 0 lost (an acknowledged enqueue included),
0 numbers with two created calls, every ``sent`` job has its one call, campaign counters == the ledger,
the workers alive and sending after each failover. Reported: how long each failover took (the Sentinels
naming the new primary, a write accepted) and the longest pause in requests at the provider around it.

Network cut (:func:`test_r6_worker_cut_off_from_redis`): one worker of three reaches Redis through a TCP
proxy (tests.proxy); at ~25 % of the calls the proxy blackholes it for 20 s (5 s in CI): nothing moves
either way and nothing is closed, as in a network partition. Asserted: the other workers go on at their
pace, the cut-off worker calls nobody twice, every job final, and the cut-off worker sends again after.

:func:`test_r6_sentinel_harness_keeps_every_acknowledged_write` checks the harness and the premise of
``WAIT`` with redis-py alone: a write acknowledged by one replica survives ``kill -9`` of the primary.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

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
from tests.faults.ha import MASTER, Failover, SentinelHA
from tests.helpers import free_port, load_records, settings_env, wait_until
from tests.proxy import TcpProxy
from worker.campaigns import Campaigns
from worker.campaigns.launch import LaunchOptions, launch_file
from worker.errors import NotReplicated
from worker.ledger.producer import CallJob, Producer
from worker.ledger.states import State
from worker.settings import Settings

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(900 if FULL else 240)]

JOBS = scale(300, 5000)
RATE = scale(30, 100)  # calls/s across the fleet: the kills land mid-run, and a pause shows as a gap
KILL_AT = (0.3, 0.65)[:scale(1, 2)]  # fractions of the calls sent at which the primary is killed
UPFRONT = 0.6  # the share launched before the workers start; the rest is enqueued while the primary dies
WORKERS = 3
# Jobs a worker takes at once per queue: small, so that every worker has some (one claim takes up to this
# many), and a cut-off worker holds a few.
CONCURRENCY = "4"
CUT_S = scale(5, 20)
CUT_JOBS = scale(300, 3000)
CUT_RATE = scale(30, 60)
UNREACHABLE = "Redis is not reachable at"


@pytest.fixture
async def ha(tmp_path: Path) -> AsyncIterator[SentinelHA]:
    cluster = SentinelHA(tmp_path / "ha")
    try:
        await cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _count(output: str, text: str) -> int:
    return sum(text in line for line in output.splitlines())


def _longest_gap(times: list[float], start: float, end: float) -> float:
    """The longest stretch within [start, end] without a request at the provider (its log's ``ts``)."""
    inside = sorted(t for t in times if start <= t <= end)
    points = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(points))


async def test_r6_sentinel_harness_keeps_every_acknowledged_write(ha: SentinelHA) -> None:
    """redis-py alone: a writer SETs numbered keys through the Sentinels, each followed by ``WAIT 1`` on
    the same connection, while the primary is killed (and the killed node restarted as a replica). Every
    write that one replica acknowledged is on the last primary; writes resume after each failover."""
    client = ha.client()
    acked: list[int] = []
    unacked = 0
    stop = asyncio.Event()

    async def writer() -> None:
        nonlocal unacked
        i = 0
        while not stop.is_set():
            i += 1
            try:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.set(f"w:{i}", i)
                    pipe.execute_command("WAIT", 1, 500)
                    _, replicas = await pipe.execute()
            except RedisError:
                unacked += 1
                continue
            if int(replicas) >= 1:
                acked.append(i)
            else:
                unacked += 1
            await asyncio.sleep(0.005)

    task = asyncio.ensure_future(writer())
    failovers: list[Failover] = []
    rejoined: list[float] = []
    try:
        for _ in KILL_AT:
            await asyncio.sleep(1.0)
            failovers.append(await ha.kill_primary())
            rejoined.append(await ha.restart(failovers[-1].old_port))
        before = len(acked)

        async def resumed() -> bool:
            return len(acked) > before + 20

        await wait_until(resumed, 20, 0.05, "writes after the last failover")
    finally:
        stop.set()
        await task
    present = await client.mget([f"w:{i}" for i in acked])
    missing = [i for i, v in zip(acked, present, strict=True) if v is None]
    replicas = await ha.replicas_acked()
    await client.aclose()
    report("R6 Sentinel harness (redis-py, WAIT 1)", {
        "acknowledged writes": len(acked),
        "not acknowledged (error or WAIT 0)": unacked,
        "acknowledged, missing after the failovers": len(missing),
        "failovers": [f.figures() for f in failovers],
        "killed node rejoined as a replica after s": [round(x, 1) for x in rejoined],
        "replicas in sync at the end": replicas,
    })
    assert not missing, missing[:10]
    assert len(failovers) == len(KILL_AT) and all(f.new_port != f.old_port for f in failovers)
    assert all(f.writable_s < 15 for f in failovers), failovers
    assert replicas == 2, "the restarted nodes did not rejoin as replicas"


async def _trickle(producer: Producer, jobs: list[CallJob], per_s: float) -> dict[str, Any]:
    """Enqueue ``jobs`` in batches at ``per_s``, as a client would: a batch that fails (Redis away) or is
    not acknowledged (too few replicas in time) is sent again with the same ids until acknowledged."""
    batch = max(1, round(per_s / 5))
    figures: dict[str, Any] = {"batches": 0, "not replicated, resent": 0, "failed, resent": 0,
                               "duplicates on resend": 0, "longest batch s": 0.0}
    errors: dict[str, int] = {}
    figures["errors"] = errors
    for start in range(0, len(jobs), batch):
        part = jobs[start:start + batch]
        resent = False
        began = time.monotonic()
        while True:
            try:
                results = await producer.enqueue_many(part, campaign="r6")
            except NotReplicated:
                figures["not replicated, resent"] += 1
            except RedisError as exc:
                figures["failed, resent"] += 1
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            else:
                assert all(r.status in {"accepted", "duplicate"} for r in results), results[:3]
                if resent:
                    figures["duplicates on resend"] += sum(r.status == "duplicate" for r in results)
                break
            resent = True
            await asyncio.sleep(0.1)
        figures["batches"] += 1
        figures["longest batch s"] = round(max(figures["longest batch s"], time.monotonic() - began), 2)
        await asyncio.sleep(batch / per_s)
    return figures


async def test_r6_primary_killed_mid_campaign(
    settings: Settings, ha: SentinelHA, procs: Procs, tmp_path: Path
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"  # with Sentinels only the scheme and db are used
    s = fault_settings(settings, redis_url=nowhere, rate_limit=float(RATE), rate_burst=5,
                       redis_sentinels=ha.addresses, redis_sentinel_master=MASTER)
    assert s.wait_replicas == 1
    sim = SimProcess(procs, settings_env(s), "--latency-ms", "20", "--jitter-ms", "80")
    await sim.start()
    s = s.model_copy(update={"api_base_url": sim.url})
    env = settings_env(s)
    client = ha.client()
    upfront = round(JOBS * UPFRONT)
    numbers = [f"3{i:09d}" for i in range(JOBS)]
    csv = tmp_path / "r6.csv"
    csv.write_text("called,priority\n" + "".join(f"{n},{1 + i % 9}\n" for i, n in enumerate(numbers[:upfront])))
    launched = await launch_file(client, s, csv, LaunchOptions(name="r6", voice_id="100001"))
    assert launched.enqueued == upfront, launched.as_dict()
    later = [CallJob(body(n, priority=1 + i % 9), job_id=f"r6b-{n}") for i, n in enumerate(numbers[upfront:])]
    ids = [f"r6:{n}" for n in numbers[:upfront]] + [str(j.job_id) for j in later]

    started = time.monotonic()
    workers = [await procs.start("worker", "worker", "--concurrency", CONCURRENCY, env=env) for _ in range(WORKERS)]
    # The trickle lasts until some seconds after the last kill is due, so enqueues meet every failover.
    trickle_s = KILL_AT[-1] * JOBS / RATE + 8
    trickle = asyncio.ensure_future(_trickle(Producer(client, s), later, len(later) / trickle_s))
    rejoined: list[float] = []
    sent_at_kill: list[int] = []
    try:
        for fraction in KILL_AT:
            async def reached(fraction: float = fraction) -> bool:
                return (await count_states(client, s, ids))[State.SENT] >= JOBS * fraction

            await wait_until(reached, JOBS / RATE + 120, 0.1, f"{fraction:.0%} of the calls sent")
            sent_at_kill.append((await count_states(client, s, ids))[State.SENT])
            failover = await ha.kill_primary()
            rejoined.append(await ha.restart(failover.old_port))
        trickled = await asyncio.wait_for(trickle, JOBS / RATE + 120)
        counts = await wait_final(client, s, ids, JOBS / RATE + 180, workers)
        total_s = time.monotonic() - started
        status = await Campaigns(client, s).status("r6")
        records = await load_records(client, s, ids)
        replicas = await ha.replicas_acked()
    finally:
        trickle.cancel()
        await client.aclose()
    survived = [w.alive for w in workers]
    for w in workers:
        if w.alive:
            assert await w.stop() == 0
    await sim.sync()
    rec = reconcile(records, sim.requests)
    created = [e["ts"] for e in sim.requests if e["outcome"] == "created"]
    gaps = [_longest_gap(created, f.killed_at - 1, f.killed_at + f.writable_s + 10) for f in ha.failovers]
    after = [sum(1 for t in created if t > f.killed_at + f.writable_s) for f in ha.failovers]
    warned = [(_count(w.output(), UNREACHABLE), _count(w.output(), "Redis is reachable again")) for w in workers]
    report("R6 Redis Sentinel failover", {
        **rec.figures(),
        "workers / Sentinels / replicas": f"{WORKERS} / {len(ha.sentinels)} / {len(ha.nodes) - 1}",
        "enqueued before / during the kills": f"{upfront} / {len(later)}",
        "producer during the kills": trickled,
        "sent when the primary was killed": sent_at_kill,
        "failovers (kill -9 of the primary)": [f.figures() for f in ha.failovers],
        "longest pause in provider requests s": [round(g, 2) for g in gaps],
        "killed node rejoined as a replica after s": [round(x, 1) for x in rejoined],
        "replicas in sync at the end": replicas,
        "campaign counters == ledger": status["states"] == {k: rec.states.get(k, 0) for k in status["states"]},
        "workers survived": f"{sum(survived)}/{len(survived)}",
        "outage WARNINGs per worker (down, back)": [f"{d}, {b}" for d, b in warned],
        "all final after s": round(total_s, 1),
        "worker errors logged": len(procs.problems()),
    })

    assert all(survived), "a worker exited during a failover"
    assert len(ha.failovers) == len(KILL_AT)
    assert all(n > 0 for n in after), ("nothing was sent after a failover", after)
    # The fleet goes on by itself, soon: a failover takes ~2-3 s here, a worker's reconnect backoff <= 2 s.
    assert all(g < 15 for g in gaps), gaps
    assert_no_double_calls(rec, records)
    assert status["total"] == JOBS, status
    assert status["states"] == {k: rec.states.get(k, 0) for k in status["states"]}, (status, rec.states)
    assert set(rec.states) <= {State.SENT, State.UNKNOWN}, (rec.states, counts)
    assert not procs.problems(), procs.problems()[:10]


async def _sent_by(port: int) -> float:
    """Calls a worker process has sent, from its own ``/metrics``."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("dialer_calls_total{") and 'outcome="sent"' in line)


async def test_r6_worker_cut_off_from_redis(
    settings: Settings, redis_client: aioredis.Redis, procs: Procs
) -> None:
    s = fault_settings(settings, rate_limit=float(CUT_RATE), rate_burst=5)
    sim = SimProcess(procs, settings_env(s), "--latency-ms", "20", "--jitter-ms", "80")
    await sim.start()
    s = s.model_copy(update={"api_base_url": sim.url})
    env = settings_env(s)
    target = int(s.redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(target)
    await proxy.start()
    ids = [f"r6c-4{i:09d}" for i in range(CUT_JOBS)]
    results = await Producer(redis_client, s).enqueue_many(
        [CallJob(body(f"4{i:09d}", priority=1 + i % 9), job_id=j) for i, j in enumerate(ids)])
    assert all(r.status == "accepted" for r in results)
    metrics = free_port()
    cut_off = await procs.start("worker-cut", "worker", "--concurrency", CONCURRENCY, env={
        **env, "DIALER_REDIS_URL": proxy.url, "DIALER_METRICS_PORT": str(metrics)})
    others = [await procs.start("worker", "worker", "--concurrency", CONCURRENCY, env=env)
              for _ in range(WORKERS - 1)]
    workers = [cut_off, *others]
    started = time.monotonic()
    try:

        async def quarter() -> bool:
            return (await count_states(redis_client, s, ids))[State.SENT] >= CUT_JOBS * 0.25

        await wait_until(quarter, CUT_JOBS / CUT_RATE + 60, 0.1, "25 % of the calls sent")
        by_cut_before = await _sent_by(metrics)
        cut_at = time.time()
        proxy.cut("blackhole")
        await asyncio.sleep(CUT_S)
        # /metrics reads no Redis: it answers during the cut. A run is counted once its result is recorded,
        # which a worker cut off from Redis cannot do.
        by_cut_during = await _sent_by(metrics) - by_cut_before
        restored_at = time.time()
        proxy.restore()
        counts = await wait_final(redis_client, s, ids, CUT_JOBS / CUT_RATE + 120, workers)
        total_s = time.monotonic() - started
        by_cut_total = await _sent_by(metrics)
        records = await load_records(redis_client, s, ids)
        survived = [w.alive for w in workers]
        for w in workers:
            if w.alive:
                assert await w.stop() == 0
    finally:
        for w in workers:  # before the proxy: a worker's last writes go through it
            if w.alive:
                await w.kill()
        await proxy.stop()
    await sim.sync()
    rec = reconcile(records, sim.requests)
    created = [e["ts"] for e in sim.requests if e["outcome"] == "created"]
    during = sum(1 for t in created if cut_at + 1 <= t <= restored_at)
    report("R6 worker cut off from Redis (blackhole)", {
        **rec.figures(),
        "cut (s) / at sent": f"{CUT_S} / 25 %",
        "connections held by the cut": proxy.held,
        "calls created during the cut (fleet)": f"{during} ({during / max(1e-9, restored_at - cut_at - 1):.0f}/s, "
                                                 f"rate limit {CUT_RATE}/s)",
        "sent by the cut-off worker before / during / in all": f"{by_cut_before:.0f} / {by_cut_during:.0f} / "
                                                                 f"{by_cut_total:.0f}",
        "longest pause in provider requests during the cut s": round(_longest_gap(created, cut_at, restored_at), 2),
        "workers survived": f"{sum(survived)}/{len(survived)}",
        "cut-off worker's outage WARNINGs": _count(cut_off.output(), UNREACHABLE),
        "all final after s": round(total_s, 1),
        "worker errors logged": len(procs.problems()),
    })

    assert all(survived), "a worker exited during the cut"
    assert_no_double_calls(rec, records)
    assert set(rec.states) <= {State.SENT, State.UNKNOWN}, (rec.states, counts)
    # The others go on: at least half the fleet's rate while one of three workers is cut off.
    assert during >= 0.5 * CUT_RATE * (restored_at - cut_at - 1), during
    assert by_cut_before > 0, "the cut-off worker had sent nothing before the cut: the cut tested nothing"
    assert by_cut_during == 0, "the cut-off worker recorded calls during the cut: it was not cut off"
    assert by_cut_total > by_cut_before, "the cut-off worker sent nothing after the cut"
    assert not procs.problems(), procs.problems()[:10]
