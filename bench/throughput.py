"""P1 (end-to-end calls/s of one worker process) and P8 (Redis commands per sent call)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from bench import _dialer
from bench._harness import APP_KEY, CREATE_PATH, Run, Source, body, environment
from bench._report import Config, Result, ratio
from bench.arq_baseline import NAIVE_MAX_JOBS, NAIVE_POLL_DELAY_S

_BARE_CONCURRENCY = 100
_OURS_MAX_IN_FLIGHT = 10_000
_BURST_TIMEOUT_S = 300.0


async def _ours_burst(run: Run, n: int, source: Source | None = None) -> tuple[float, float]:
    """Enqueue n calls, run one burst worker (from ``source`` if given, see ``bench._baseline``); returns
    (wall seconds of the run, start-up included; CPU seconds of the worker process)."""
    await _dialer.enqueue_ours(run, [body(i) for i in range(n)])
    started = time.monotonic()
    proc = run.worker_at(source, "--burst", rate_limit=0, max_in_flight=_OURS_MAX_IN_FLIGHT)
    await run.children.wait(proc, _BURST_TIMEOUT_S)
    return time.monotonic() - started, run.children.cpu_s[proc.pid]


async def _arq_noop(run: Run, n: int) -> float:
    """arq defaults; rate = jobs / (last finish - first start), from arq's own job results."""
    await _dialer.enqueue_arq(run, "noop", [{}] * n)
    proc = run.arq_worker("noop", "--burst")
    await run.children.wait(proc, _BURST_TIMEOUT_S)
    pool = await _dialer.arq_pool(run)
    try:
        results = await pool.all_job_results()
    finally:
        await pool.aclose()
    if len(results) != n:
        raise RuntimeError(f"arq no-op: {len(results)} results for {n} jobs")
    first = min(r.start_time for r in results)
    last = max(r.finish_time for r in results)
    return n / (last - first).total_seconds()


async def _arq_naive(run: Run, n: int) -> tuple[float, float]:
    """(calls/s, CPU seconds of the worker process)."""
    await _dialer.enqueue_arq(run, "call", [body(i) for i in range(n)])
    proc = run.arq_worker("post", "--burst", "--max-jobs", str(NAIVE_MAX_JOBS), "--poll-delay", str(NAIVE_POLL_DELAY_S))
    await run.children.wait(proc, _BURST_TIMEOUT_S)
    return _sim_rate(await run.sim.log(), n, "naive arq"), run.children.cpu_s[proc.pid]


async def _bare(run: Run, n: int) -> float:
    token = await run.sim.token()
    headers = {"Authorization": f"Bearer {token}", "X-APP-Key": APP_KEY}
    url = run.sim.url + CREATE_PATH
    todo = iter(range(n))
    connector = aiohttp.TCPConnector(limit=_BARE_CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def loop() -> None:
            for i in todo:
                async with session.post(url, json=body(i), headers=headers) as resp:
                    await resp.read()

        await asyncio.gather(*(loop() for _ in range(_BARE_CONCURRENCY)))
    return _sim_rate(await run.sim.log(), n, "bare loop")


def _sim_rate(log: dict[str, Any], n: int, who: str) -> float:
    done = _dialer.created(log)
    if len(done) != n or len(log["requests"]) != n:
        raise RuntimeError(f"{who}: simulator saw {len(log['requests'])} requests, {len(done)} created, for {n} jobs")
    return _dialer.span_rate(done)


async def p1(cfg: Config) -> Result:
    n = 2000 if cfg.quick else 10_000
    n_noop = 600 if cfg.quick else 2000
    res = Result(
        "P1", "end-to-end calls/s, 1 worker process, zero-latency simulator, no limit",
        "Jobs pre-enqueued, then one burst worker process. Ours and (b), (c): (n-1) / (last - first "
        "createVoiceNotification timestamp in the simulator's log). (a) has no simulator: n / (last finish - "
        "first start) from arq's own job results. Ours: `dialer worker --burst`, DIALER_RATE_LIMIT=0, "
        f"DIALER_MAX_IN_FLIGHT={_OURS_MAX_IN_FLIGHT}, other settings default (9 queues, concurrency 100, poll "
        "0.05 s), log level WARNING. (b): arq max_jobs=100, poll_delay=0.05, pickle, one aiohttp POST per job. "
        f"(c): {_BARE_CONCURRENCY} concurrent POST loops in the bench process.",
        sizes=f"{n} calls (a: {n_noop} no-op jobs){', QUICK' if cfg.quick else ''}",
    )
    ours: list[float] = []
    wall: list[float] = []
    a: list[float] = []
    b: list[float] = []
    c: list[float] = []
    cpu_ours: list[float] = []
    cpu_naive: list[float] = []
    # --baseline REF: the same "ours" run from a worktree of REF (bench._baseline), interleaved run by run.
    # Only the worker process runs REF's code; the jobs are enqueued by the current Producer, which is
    # sound only while both revisions keep one Redis data layout (the restructure of issue 13 does).
    base = cfg.baseline
    base_rate: list[float] = []
    base_wall: list[float] = []
    base_cpu: list[float] = []
    idle_base = 0.0
    if base is not None:
        lacking = f"; {', '.join(base.installed)} after it, which that commit requires and the venv lacks" \
            if base.installed else ""
        res.method += (f" Baseline {base.label}: the same `dialer worker --burst` run, started from a temporary "
                       f"git worktree of that commit (cwd there, the worktree first on PYTHONPATH{lacking}), "
                       "interleaved with ours run by run, baseline first; enqueueing, the simulator and the log "
                       "reads are the current code (both revisions keep one Redis layout).")
    async with environment() as run:
        # CPU of a burst run with nothing to do: imports and set-up, subtracted from the per-call figures.
        # The first idle run of a tree may compile its bytecode: not counted.
        idle_ours = await _idle_cpu(run, None)
        if base is not None:
            idle_base = await _idle_cpu(run, base.source)
        idle = run.arq_worker("post", "--burst")
        await run.children.wait(idle, _BURST_TIMEOUT_S)
        idle_naive = run.children.cpu_s[idle.pid]
        for _ in range(cfg.runs):
            await run.reset()
            a.append(await _arq_noop(run, n_noop))
            await run.reset()
            rate_b, cpu_b = await _arq_naive(run, n)
            b.append(rate_b)
            cpu_naive.append((cpu_b - idle_naive) / n * 1e6)
            if base is not None:
                await run.reset()
                wall_s, cpu_w = await _ours_burst(run, n, base.source)
                base_wall.append(n / wall_s)
                base_cpu.append((cpu_w - idle_base) / n * 1e6)
                base_rate.append(_sim_rate(await run.sim.log(), n, f"baseline {base.commit}"))
            await run.reset()
            wall_s, cpu_o = await _ours_burst(run, n)
            wall.append(n / wall_s)
            cpu_ours.append((cpu_o - idle_ours) / n * 1e6)
            ours.append(_sim_rate(await run.sim.log(), n, "ours"))
            await run.reset()
            c.append(await _bare(run, n))
    f_ours = res.add("ours: dialer worker --burst", ours, "calls/s")
    if base is not None:
        f_base = res.add(f"ours at baseline {base.label}: dialer worker --burst", base_rate, "calls/s")
    res.add("ours, wall time of the burst run (process start-up included)", wall, "calls/s")
    if base is not None:
        res.add(f"ours at baseline {base.label}, wall time of the burst run", base_wall, "calls/s")
    f_a = res.add("(a) vanilla arq no-op jobs, defaults", a, "jobs/s")
    f_b = res.add("(b) naive arq POST job, max_jobs=100, poll 0.05", b, "calls/s")
    f_c = res.add("(c) bare aiohttp POST loop (ceiling)", c, "calls/s")
    f_cpu_o = res.add("ours: worker process CPU per call (user+sys, start-up subtracted)", cpu_ours, "µs")
    if base is not None:
        f_cpu_base = res.add(f"ours at baseline {base.label}: worker process CPU per call", base_cpu, "µs")
    f_cpu_b = res.add("(b): worker process CPU per call (user+sys, start-up subtracted)", cpu_naive, "µs")
    ra, rb, rc = ratio(f_ours.median, f_a.median), ratio(f_ours.median, f_b.median), ratio(f_ours.median, f_c.median)
    res.check("≥ 5x (a)", f"{ra:.1f}x", ra >= 5)
    res.check("≥ 1.0x (b)", f"{rb:.2f}x", rb >= 1.0)
    res.check("vs (c) ceiling", f"{rc:.2f}x", None)
    res.check("worker CPU per call, ours / (b)", f"{ratio(f_cpu_o.median, f_cpu_b.median):.2f}x", None)
    res.summary_ours = f"{f_ours.fmt()} calls/s"
    res.summary_baseline = f"(a) {f_a.fmt()}/s, (b) {f_b.fmt()}/s, (c) {f_c.fmt()}/s"
    res.summary_ratio = f"{ra:.1f}x (a), {rb:.2f}x (b), {rc:.2f}x (c)"
    res.summary_target = "≥ 5x (a), ≥ 1.0x (b)"
    if base is not None:
        r_base = ratio(f_ours.median, f_base.median)
        r_cpu = ratio(f_cpu_o.median, f_cpu_base.median)
        res.check(f"≥ 0.95x baseline {base.commit} (at most 5 % slower)", f"{r_base:.3f}x", r_base >= 0.95)
        res.check(f"worker CPU per call, ours / baseline {base.commit}", f"{r_cpu:.3f}x", None)
        pairs = ", ".join(f"{ratio(o, b):.3f}x" for o, b in zip(ours, base_rate, strict=True))
        cpu_pairs = ", ".join(f"{ratio(o, b):.3f}x" for o, b in zip(cpu_ours, base_cpu, strict=True))
        res.notes.append(f"ours / baseline {base.commit}, run by run: calls/s {pairs}; CPU per call {cpu_pairs}")
        res.summary_baseline += f", {base.commit} {f_base.fmt()}/s"
        res.summary_ratio += f", {r_base:.2f}x {base.commit}"
        res.summary_target += f", ≥ 0.95x {base.commit}"
    return res


async def _idle_cpu(run: Run, source: Source | None) -> float:
    """CPU seconds of a burst worker with nothing to do (from ``source`` if given), after a warm-up run."""
    for _ in range(2):
        idle = run.worker_at(source, "--burst", rate_limit=0)
        await run.children.wait(idle, _BURST_TIMEOUT_S)
    return run.children.cpu_s[idle.pid]


# --- P8 --------------------------------------------------------------------------------------------


def _delta(before: dict[str, int], after: dict[str, int]) -> Counter[str]:
    out: Counter[str] = Counter()
    for k, v in after.items():
        d = v - before.get(k, 0)
        if d:
            out[k] = d
    out["info"] -= 1  # the "before" snapshot itself
    return +out


async def _count(run: Run, start: Callable[[], subprocess.Popen[bytes]]) -> Counter[str]:
    """Commands Redis ran while the burst worker ``start()`` starts ran to completion."""
    before = await run.redis.commandstats()
    proc = start()
    await run.children.wait(proc, _BURST_TIMEOUT_S)
    return _delta(before, await run.redis.commandstats())


async def _monitor_split(run: Run, n: int) -> tuple[Counter[str], Counter[str]]:
    """(client-sent, run-inside-scripts) command counts of one burst run of ours, read with MONITOR."""
    await run.reset()
    await _dialer.enqueue_ours(run, [body(i) for i in range(n)])
    client: Counter[str] = Counter()
    script: Counter[str] = Counter()
    ready = asyncio.Event()

    async def watch() -> None:
        async with run.redis.client.monitor() as mon:
            ready.set()
            while True:
                info = await mon.next_command()
                name = str(info["command"]).split(" ", 1)[0].lower()
                (script if info.get("client_type") == "lua" else client)[name] += 1

    task = asyncio.create_task(watch())
    await asyncio.wait_for(ready.wait(), 10)
    await asyncio.sleep(0.2)
    proc = run.worker("--burst", rate_limit=0, max_in_flight=_OURS_MAX_IN_FLIGHT)
    await run.children.wait(proc, _BURST_TIMEOUT_S)
    await asyncio.sleep(0.2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return client, script


def _top(c: Counter[str], n: int, k: int = 8) -> str:
    return ", ".join(f"{name} {count / n:.2f}" for name, count in c.most_common(k))


async def p8(cfg: Config) -> Result:
    n = 500 if cfg.quick else 2000
    limited_rate = 500
    res = Result(
        "P8", "Redis commands per sent call",
        "`INFO commandstats` delta over a burst worker run on pre-enqueued jobs (enqueueing excluded), divided by "
        "the jobs run. Commands run inside Lua scripts count (commandstats counts them), as does every poll, "
        "heartbeat and start-up command of the worker. The split client-sent / inside-scripts comes from one "
        "MONITOR-ed run of ours.",
        sizes=f"{n} jobs{', QUICK' if cfg.quick else ''}",
    )
    ours: list[float] = []
    limited: list[float] = []
    arq_noop: list[float] = []
    last_ours: Counter[str] = Counter()
    last_limited: Counter[str] = Counter()
    last_arq: Counter[str] = Counter()
    async with environment() as run:
        for _ in range(cfg.runs):
            await run.reset()
            await _dialer.enqueue_ours(run, [body(i) for i in range(n)])
            last_ours = await _count(run, lambda: run.worker("--burst", rate_limit=0,
                                                                max_in_flight=_OURS_MAX_IN_FLIGHT))
            ours.append(sum(last_ours.values()) / n)
            await run.reset()
            await _dialer.enqueue_ours(run, [body(i) for i in range(n)])
            last_limited = await _count(run, lambda: run.worker("--burst", rate_limit=limited_rate,
                                                                   max_in_flight=_OURS_MAX_IN_FLIGHT))
            limited.append(sum(last_limited.values()) / n)
            await run.reset()
            await _dialer.enqueue_arq(run, "noop", [{}] * n)
            last_arq = await _count(run, lambda: run.arq_worker("noop", "--burst"))
            arq_noop.append(sum(last_arq.values()) / n)
        client, script = await _monitor_split(run, min(n, 500))
    m = min(n, 500)
    f_ours = res.add("ours, no rate limit", ours, "commands/call", 1)
    res.add(f"ours, rate limit {limited_rate}/s (GCRA permits)", limited, "commands/call", 1)
    f_arq = res.add("vanilla arq no-op job, defaults", arq_noop, "commands/job", 1)
    res.add("ours: sent by the worker (round-trip commands, MONITOR)", [sum(client.values()) / m], "commands/call", 1)
    res.add("ours: run inside Lua scripts (MONITOR)", [sum(script.values()) / m], "commands/call", 1)
    r = ratio(f_ours.median, f_arq.median)
    res.check("report", f"{f_ours.fmt()} vs {f_arq.fmt()} ({r:.2f}x)", None)
    res.notes.append(f"ours, per call: {_top(last_ours, n, 12)}")
    res.notes.append(f"ours with limit, per call: {_top(last_limited, n, 12)}")
    res.notes.append(f"arq no-op, per job: {_top(last_arq, n, 12)}")
    res.notes.append(f"ours, client-sent per call (MONITOR): {_top(client, m, 12)}")
    res.notes.append(f"ours, inside scripts per call (MONITOR): {_top(script, m, 12)}")
    res.summary_ours = f"{f_ours.fmt()} commands/call"
    res.summary_baseline = f"{f_arq.fmt()} commands/job (no-op)"
    res.summary_ratio = f"{r:.2f}x"
    res.summary_target = "report; then reduce"
    return res
