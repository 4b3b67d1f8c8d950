"""P12: the cost of the replication ``WAIT`` (issue 17): calls/s of a burst worker and enqueue jobs/s
with ``DIALER_REDIS_WAIT_REPLICAS=1`` against a primary with one replica, versus 0 on the same pair, in
one run, interleaved run by run."""

from __future__ import annotations

import asyncio
import time

from bench import _dialer
from bench._harness import _start_redis, body, environment
from bench._report import Config, Result, ratio
from bench.throughput import _BURST_TIMEOUT_S, _OURS_MAX_IN_FLIGHT, _sim_rate
from worker.ledger.producer import Producer


async def p12(cfg: Config) -> Result:
    n = 2000 if cfg.quick else 10_000
    res = Result(
        "P12", "cost of the replication WAIT: calls/s and enqueue jobs/s, WAIT 1 vs 0",
        "A private primary with one replica (`--replicaof`, same host). Each run: `Producer.enqueue_many` of n "
        "jobs (timed: jobs/s), then one `dialer worker --burst` (DIALER_RATE_LIMIT=0, "
        f"DIALER_MAX_IN_FLIGHT={_OURS_MAX_IN_FLIGHT}) judged as P1 is, by the simulator's log: calls/s. Once with "
        "DIALER_REDIS_WAIT_REPLICAS=1 (every batch of sending marks and every enqueue pipeline ends with WAIT 1 on "
        "its connection), once with 0, interleaved run by run.",
        sizes=f"{n} calls per run{', QUICK' if cfg.quick else ''}",
    )
    calls = {0: [], 1: []}  # type: dict[int, list[float]]
    enq = {0: [], 1: []}  # type: dict[int, list[float]]
    async with environment() as run:
        replica = await _start_redis(run.children, run.workdir, "--replicaof", "127.0.0.1", str(run.redis.port))
        deadline = time.monotonic() + 30
        while int((await run.redis.client.info("replication")).get("connected_slaves", 0)) < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not connect")
            await asyncio.sleep(0.1)
        for _ in range(cfg.runs):
            for wait in (0, 1):
                await run.reset()
                settings = _dialer.settings(run, redis_wait_replicas=wait, redis_wait_timeout_ms=5000)
                t = time.perf_counter()
                await Producer(run.redis.client, settings).enqueue_many([body(i) for i in range(n)])
                enq[wait].append(n / (time.perf_counter() - t))
                proc = run.worker("--burst", rate_limit=0, max_in_flight=_OURS_MAX_IN_FLIGHT,
                                  redis_wait_replicas=wait)
                await run.children.wait(proc, _BURST_TIMEOUT_S)
                calls[wait].append(_sim_rate(await run.sim.log(), n, f"wait {wait}"))
        await replica.client.aclose()
    f1 = res.add("calls/s, WAIT 1", calls[1], "calls/s")
    f0 = res.add("calls/s, no WAIT (baseline)", calls[0], "calls/s")
    e1 = res.add("enqueue jobs/s, WAIT 1", enq[1], "jobs/s")
    e0 = res.add("enqueue jobs/s, no WAIT (baseline)", enq[0], "jobs/s")
    rc, re_ = ratio(f1.median, f0.median), ratio(e1.median, e0.median)
    res.check("calls/s, WAIT 1 / none", f"{rc:.2f}x", None)
    res.check("enqueue jobs/s, WAIT 1 / none", f"{re_:.2f}x", None)
    res.summary_ours = f"{f1.fmt()} calls/s, {e1.fmt()} jobs/s enqueued"
    res.summary_baseline = f"{f0.fmt()} calls/s, {e0.fmt()} jobs/s without WAIT"
    res.summary_ratio = f"{rc:.2f}x calls, {re_:.2f}x enqueue"
    res.summary_target = "measured (no target)"
    return res
