"""P3 (priority-1 latency behind a priority-9 backlog) and P7 (idle enqueue-to-send latency).

Enqueue times are ``time.time()`` in this process just before the enqueue call; send times are the
simulator's ``ts`` (its ``time.time()`` when the request arrived). Both processes run on this host, so
they read the same clock.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from bench import _dialer
from bench._harness import Run, body, environment, percentile, wait_until
from bench._report import Config, Result, ratio
from bench.rate import _first_request_ts, _sleep_until_wall
from worker.ledger.producer import Producer
from worker.store.keys import Keys

_P3_WORKERS = 2


async def _send_times(run: Run, prefix: str, expected: int, timeout: float) -> dict[str, float]:
    """called -> simulator timestamp of its first request, for numbers starting with ``prefix``."""
    found: dict[str, float] = {}
    since = 0

    async def all_seen() -> bool:
        nonlocal since
        entries = (await run.sim.log(since))["requests"]
        for e in entries:
            called = e.get("called")
            if isinstance(called, str) and called.startswith(prefix) and called not in found:
                found[called] = e["ts"]
        if entries:
            since = entries[-1]["seq"]
        return len(found) >= expected

    await wait_until(all_seen, timeout, 0.25, f"{expected} calls to {prefix}*", run.children)
    return found


def _latencies_ms(enqueued: dict[str, float], sent: dict[str, float]) -> list[float]:
    return [(sent[c] - t) * 1000 for c, t in enqueued.items()]


async def p3(cfg: Config) -> Result:
    rate, latency_ms = 100.0, 50.0
    backlog = 5000 if cfg.quick else 20_000
    injections = 10 if cfg.quick else 30
    res = Result(
        "P3", "priority: p1 jobs injected at 1/s into a 20k p9 backlog at 100/s",
        f"{backlog} priority-9 calls enqueued, {_P3_WORKERS} `dialer worker` processes (all queues), "
        f"DIALER_RATE_LIMIT={rate:g}, simulator latency {latency_ms:g} ms. Once sending has run for 3 s, one "
        f"priority-1 call per second (at a random moment of each second) for {injections} s via "
        "`Producer.enqueue`. Latency = simulator timestamp of "
        "its request - time.time() just before the enqueue call. FIFO (one queue) = the priority-9 backlog "
        "still queued right after each injection (ZCARD) / rate: the wait it would have had behind it.",
        sizes=f"{backlog} backlog, {injections} injections{', QUICK' if cfg.quick else ''}",
    )
    p50: list[float] = []
    p99: list[float] = []
    worst: list[float] = []
    fifo99: list[float] = []
    async with environment(latency_ms=latency_ms) as run:
        settings = _dialer.settings(run)
        queue9 = Keys(settings.key_prefix).queue(9)
        for _ in range(cfg.runs):
            await run.reset()
            await _dialer.enqueue_ours(run, [body(i) for i in range(backlog)])
            procs = [run.worker(rate_limit=rate) for _ in range(_P3_WORKERS)]
            t0 = await _first_request_ts(run)
            await _sleep_until_wall(t0 + 3)
            producer = Producer(run.redis.client, settings)
            enqueued: dict[str, float] = {}
            fifo: list[float] = []
            start = time.time()
            rng = random.Random(3)
            for k in range(injections):
                # A random moment in each second: a fixed 1-s period would lock onto the workers' poll
                # period and sample one phase of it only.
                await _sleep_until_wall(start + k + rng.random())
                job = body(k, priority=1, prefix="1390")
                t = time.time()
                await producer.enqueue(job)
                enqueued[job["called"]] = t
                fifo.append(int(await run.redis.client.zcard(queue9)) / rate * 1000)
            sent = await _send_times(run, "1390", injections, 30)
            for p in procs:
                await run.children.stop(p)
            lat = _latencies_ms(enqueued, sent)
            p50.append(percentile(lat, 50))
            p99.append(percentile(lat, 99))
            worst.append(max(lat))
            fifo99.append(percentile(fifo, 99))
    f99 = res.add("p1 enqueue→send p99", p99, "ms", 1)
    res.add("p1 enqueue→send p50", p50, "ms", 1)
    res.add("p1 enqueue→send max", worst, "ms", 1)
    f_fifo = res.add("FIFO in one queue: p99 wait behind the backlog", fifo99, "ms")
    res.check("p1 enqueue→send p99 ≤ 250 ms", f"{f99.fmt()} ms", f99.median <= 250)
    speedup = ratio(f_fifo.median, f99.median)
    res.summary_ours = f"p99 {f99.fmt()} ms"
    res.summary_baseline = f"FIFO p99 {f_fifo.median / 1000:,.0f} s"
    res.summary_ratio = f"{speedup:,.0f}x sooner"
    res.summary_target = "p99 ≤ 250 ms"
    return res


async def p7(cfg: Config) -> Result:
    jobs = 10 if cfg.quick else 30
    res = Result(
        "P7", "idle latency enqueue→send, 1 job/s",
        f"One `dialer worker` (default settings: poll 0.05 s, rate limit 10/s) and, in the same run, one naive arq "
        f"worker with arq's defaults (poll_delay 0.5 s, max_jobs 10), both idle, zero-latency simulator. {jobs} "
        "jobs at 1/s to each, interleaved half a second apart (ours via `Producer.enqueue`, arq via "
        "`enqueue_job`), after one warm-up job each (token fetch, connection). Latency = simulator timestamp "
        "- time.time() just before the enqueue call.",
        sizes=f"{jobs} jobs each{', QUICK' if cfg.quick else ''}",
    )
    ours99: list[float] = []
    ours50: list[float] = []
    arq99: list[float] = []
    arq50: list[float] = []
    async with environment() as run:
        settings = _dialer.settings(run)
        for _ in range(cfg.runs):
            await run.reset()
            ours_proc = run.worker()
            arq_proc = run.arq_worker("post")
            producer = Producer(run.redis.client, settings)
            pool = await _dialer.arq_pool(run)
            try:
                await producer.enqueue(body(0, prefix="1381"))
                await pool.enqueue_job("call", **body(0, prefix="1382"))
                await _send_times(run, "138", 2, 60)
                ours: dict[str, float] = {}
                theirs: dict[str, float] = {}
                start = time.time() + 0.5
                rng = random.Random(7)
                for k in range(jobs):
                    # Random moments (ours in the first half of each second, arq's in the second): a fixed
                    # period would lock onto the poll periods (0.05 s, 0.5 s) and sample one phase only.
                    await _sleep_until_wall(start + k + rng.random() * 0.5)
                    job = body(k, prefix="1391")
                    ours[job["called"]] = time.time()
                    await producer.enqueue(job)
                    await _sleep_until_wall(start + k + 0.5 + rng.random() * 0.5)
                    kw: dict[str, Any] = body(k, prefix="1392")
                    theirs[kw["called"]] = time.time()
                    await pool.enqueue_job("call", **kw)
                sent_ours = await _send_times(run, "1391", jobs, 10)
                sent_theirs = await _send_times(run, "1392", jobs, 10)
            finally:
                await pool.aclose()
                await asyncio.gather(run.children.stop(ours_proc), run.children.stop(arq_proc))
            lo = _latencies_ms(ours, sent_ours)
            la = _latencies_ms(theirs, sent_theirs)
            ours99.append(percentile(lo, 99))
            ours50.append(percentile(lo, 50))
            arq99.append(percentile(la, 99))
            arq50.append(percentile(la, 50))
    f_o = res.add("ours p99", ours99, "ms", 1)
    res.add("ours p50", ours50, "ms", 1)
    f_a = res.add("naive arq, defaults, p99", arq99, "ms", 1)
    res.add("naive arq, defaults, p50", arq50, "ms", 1)
    res.check("ours p99 ≤ 60 ms", f"{f_o.fmt()} ms", f_o.median <= 60)
    r = ratio(f_a.median, f_o.median)
    res.summary_ours = f"p99 {f_o.fmt()} ms"
    res.summary_baseline = f"arq defaults p99 {f_a.fmt()} ms"
    res.summary_ratio = f"{r:.1f}x lower"
    res.summary_target = "p99 ≤ 60 ms"
    return res
