"""P2 (rate fidelity of a 4-process fleet) and P6 (token refreshes of a 4-process fleet)."""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any

from bench import _dialer
from bench._harness import (
    APP_KEY,
    CREATE_PATH,
    Run,
    body,
    environment,
    max_window_count,
    sim_priority,
    wait_until,
)
from bench._report import Config, Result
from worker.store.keys import Keys

_WORKERS = 4
_SETTLE_S = 2.5
_P2_RUNS = 5


async def _first_request_ts(run: Run, timeout: float = 60) -> float:
    """Wall-clock (simulator) time of the first createVoiceNotification request."""
    first: list[float] = []

    async def seen() -> bool:
        async with run.sim.session.get(f"{run.sim.url}/_sim/log", params={"since": 0, "limit": 1}) as r:
            data = await r.json()
        if data["requests"]:
            first.append(data["requests"][0]["ts"])
            return True
        return False

    await wait_until(seen, timeout, 0.02, "the first provider request", run.children)
    return first[0]


async def _sleep_until_wall(t: float) -> None:
    delay = t - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


async def _fleet(run: Run, n: int, settings: dict[str, object], workers: int = _WORKERS) -> list[Any]:
    """Start the worker processes, let them finish starting, then enqueue ``n`` calls.

    Python start-up of 4 processes saturates both cores for ~2 s; a fleet is normally running before
    a campaign arrives, so the calls are enqueued once the workers are up and idle.
    """
    procs = [run.worker(**settings) for _ in range(workers)]
    health = Keys(_dialer.settings(run).key_prefix).queue(9) + ":health-check"

    async def up() -> bool:
        return bool(await run.redis.client.exists(health))

    await wait_until(up, 30, 0.05, "the workers' health-check key", run.children)
    await asyncio.sleep(_SETTLE_S)
    run.children.check_alive()
    await _dialer.enqueue_ours(run, [body(i) for i in range(n)])
    return procs


async def _paced_control(run: Run, rate: float, seconds: float) -> int:
    """Max 1-s window the simulator logs for one sender in this process on an exact absolute schedule
    at ``rate``: the measurement's own noise (simulator and host scheduling), with no dialer involved."""
    token = await run.sim.token()
    headers = {"Authorization": f"Bearer {token}", "X-APP-Key": APP_KEY}
    url = run.sim.url + CREATE_PATH
    await run.sim.reset()
    tasks: list[asyncio.Task[None]] = []

    async def send(i: int) -> None:
        async with run.sim.session.post(url, json=body(i), headers=headers) as r:
            await r.read()

    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    for i in range(int(rate * seconds)):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i)))
    await asyncio.gather(*tasks)
    ts = [e["ts"] for e in (await run.sim.log())["requests"]]
    return max_window_count(ts)


async def p2(cfg: Config) -> Result:
    limit, burst, latency_ms = 200, 1, 50.0
    # The 1-s window of a single run carries the host's scheduling noise (see BENCHMARKS.md, P2): its
    # median needs more runs than the other figures, so 5 unless --runs says otherwise.
    runs = cfg.runs if cfg.runs_given or cfg.quick else max(cfg.runs, _P2_RUNS)
    duration = 6.0 if cfg.quick else 20.0
    res = Result(
        "P2", "rate fidelity: limit 200/s, 4 worker processes, simulator latency 50 ms",
        f"A backlog larger than the window can drain, {_WORKERS} `dialer worker` processes (all queues, default "
        f"concurrency), DIALER_RATE_LIMIT={limit}, DIALER_RATE_BURST={burst}, started and idle before the calls "
        "are enqueued. From the simulator's log: achieved = "
        f"requests with a timestamp in [first, first + {duration:g} s) / {duration:g} s; max 1-s window = most "
        "requests in any [t, t + 1 s) over the whole run (drain included). Control: the bench process alone "
        "sends on an exact schedule at 99% of the limit (the dialer's pacing) to the same simulator, for the same "
        f"time: what the measurement itself adds. Then the same fleet with one worker process per core. The "
        f"simulator runs at {sim_priority()} (bench/_harness.py).",
        sizes=f"{duration:g} s window, {runs} runs{', QUICK' if cfg.quick else ''}",
    )
    achieved: list[float] = []
    peak: list[float] = []
    rejected: list[float] = []
    control: list[float] = []
    per_core_achieved: list[float] = []
    per_core_peak: list[float] = []
    cores = os.cpu_count() or 1

    async def fleet_run(run: Run, workers: int) -> tuple[float, int, int]:
        """(achieved calls/s, max 1-s window, requests not created) of one fleet run."""
        await run.reset()
        procs = await _fleet(run, int(limit * (duration + 6)), {"rate_limit": limit, "rate_burst": burst}, workers)
        t0 = await _first_request_ts(run)
        await _sleep_until_wall(t0 + duration + 0.5)
        for p in procs:
            await run.children.stop(p)
        log = await run.sim.log()
        ts = [e["ts"] for e in log["requests"]]
        return (sum(1 for t in ts if t0 <= t < t0 + duration) / duration, max_window_count(ts),
                sum(1 for e in log["requests"] if e["outcome"] != "created"))

    async with environment(latency_ms=latency_ms) as run:
        for _ in range(runs):
            ach, top, bad = await fleet_run(run, _WORKERS)
            achieved.append(ach)
            peak.append(top)
            rejected.append(bad)
            control.append(await _paced_control(run, limit * 0.99, duration))
            # The same fleet sized to the machine: whether a miss above is the dialer's or the
            # oversubscribed host's (4 workers + Redis + simulator + this driver on 2 cores).
            ach, top, _bad = await fleet_run(run, cores)
            per_core_achieved.append(ach)
            per_core_peak.append(top)
    f_ach = res.add("achieved rate in the window", achieved, "calls/s", 1)
    f_peak = res.add("max sliding 1-s window", peak, "calls")
    res.add("requests not answered 'created'", rejected, "requests")
    f_ctl = res.add(f"control: max 1-s window of one exactly paced sender at {limit * 0.99:g}/s (no dialer)",
                    control, "calls")
    f_pc_ach = res.add(f"{cores} worker processes (one per core): achieved rate", per_core_achieved, "calls/s", 1)
    res.add(f"{cores} worker processes (one per core): max sliding 1-s window", per_core_peak, "calls")
    frac = f_ach.median / limit
    res.check("achieved ≥ 98% of the limit", f"{frac:.1%}", frac >= 0.98)
    # Judged on the median of the runs, as every figure of this file is: single runs carry the host's
    # scheduling noise, which the control (no dialer) and the one-per-core fleet show in the same runs.
    res.check(f"max 1-s window ≤ limit + burst = {limit + burst} (median of runs)", f_peak.fmt(),
              f_peak.median <= limit + burst)
    res.check("worst run: ours / control sender (no dialer) / one worker process per core (report)",
              f"{max(peak):.0f} / {max(control):.0f} / {max(per_core_peak):.0f}", None)
    res.check(f"one worker process per core ({cores}): achieved ≥ 98% (report)", f"{f_pc_ach.median / limit:.1%}",
              None)
    res.summary_ours = (f"{f_ach.fmt()}/s ({frac:.1%}), peak 1-s window {f_peak.fmt()} (worst {max(peak):.0f}); "
                        f"one process per core: {f_pc_ach.fmt()}/s, worst window {max(per_core_peak):.0f}")
    res.summary_baseline = (f"limit {limit}/s, burst {burst}; control sender's window {f_ctl.fmt()} "
                            f"(worst {max(control):.0f})")
    res.summary_ratio = f"{frac:.3f}"
    res.summary_target = f"≥ 98%; window ≤ {limit + burst} (median of runs)"
    return res


async def _token_run(run: Run, duration: float, rate: float, **settings: object) -> tuple[int, int, int, int]:
    """(tokenByAkSk calls, tokens issued, 401 answers, create requests) from worker start to first + duration."""
    await run.reset()
    await run.sim.revoke()  # no token from a previous run may be valid
    procs = await _fleet(run, int(rate * (duration + 10)), {"rate_limit": rate, **settings})
    t0 = await _first_request_ts(run)
    await _sleep_until_wall(t0 + duration)
    log = await run.sim.log()
    for p in procs:
        await run.children.stop(p)
    entries = [e for e in log["requests"] if e["ts"] < t0 + duration]
    auth = sum(1 for e in entries if e["outcome"] == "auth")
    return int(log["token_requests"]), int(log["tokens_issued"]), auth, len(entries)


async def p6(cfg: Config) -> Result:
    lifetime, latency_ms, call_rate = 10, 50.0, 100.0
    duration = 20.0 if cfg.quick else 60.0
    # Counts, not timings, and 2 x 60 s per run: one run per variant unless --runs says otherwise.
    runs = cfg.runs if cfg.runs_given else 1
    baseline = math.ceil(duration / lifetime)  # the first token, then one per lifetime (... - 1 + 1)
    res = Result(
        "P6", f"token refreshes: 4 workers, {duration:g} s, token lifetime {lifetime} s",
        f"Simulator forces a {lifetime}-s token lifetime (`--token-lifetime-s {lifetime}`, latency {latency_ms:g} "
        f"ms); {_WORKERS} `dialer worker` processes send {call_rate:g} calls/s continuously. Counted from worker "
        f"start to first request + {duration:g} s: tokenByAkSk calls (`token_requests`) and create requests "
        "answered 401 (outcome `auth`). Default settings (DIALER_TOKEN_REFRESH_MARGIN_S=60, capped at half the "
        "token's life), and DIALER_TOKEN_REFRESH_MARGIN_S=1.",
        sizes=f"{duration:g} s, {runs} run(s) per variant{', QUICK' if cfg.quick else ''}",
    )
    calls_default: list[float] = []
    auth_default: list[float] = []
    calls_margin: list[float] = []
    auth_margin: list[float] = []
    sent: list[float] = []
    async with environment(latency_ms=latency_ms, token_lifetime_s=lifetime) as run:
        for _ in range(runs):
            tok, _issued, auth, n = await _token_run(run, duration, call_rate)
            calls_default.append(tok)
            auth_default.append(auth)
            sent.append(n)
            tok, _issued, auth, _n = await _token_run(run, duration, call_rate, token_refresh_margin_s=1)
            calls_margin.append(tok)
            auth_margin.append(auth)
    target = baseline + 2  # issue 6: ≤ 8 in 60 s with a 10-s lifetime
    f_def = res.add("tokenByAkSk calls, default settings", calls_default, "calls")
    f_def401 = res.add("requests answered 401, default settings", auth_default, "requests")
    f_m = res.add("tokenByAkSk calls, DIALER_TOKEN_REFRESH_MARGIN_S=1", calls_margin, "calls")
    f_m401 = res.add("requests answered 401, DIALER_TOKEN_REFRESH_MARGIN_S=1", auth_margin, "requests")
    res.add("create requests in the window (default settings)", sent, "requests")
    res.check(f"≤ {target} tokenByAkSk calls (default settings)", f_def.fmt(), max(calls_default) <= target)
    res.check("0 requests with an expired token (default settings)", f_def401.fmt(), max(auth_default) == 0)
    res.check(f"≤ {target} tokenByAkSk calls (margin 1 s)", f_m.fmt(), max(calls_margin) <= target)
    res.check("0 requests with an expired token (margin 1 s)", f_m401.fmt(), max(auth_margin) == 0)
    res.summary_ours = f"{f_def.fmt()} calls, {f_def401.fmt()}x401 (margin 1 s: {f_m.fmt()}, {f_m401.fmt()}x401)"
    res.summary_baseline = f"one per lifetime: {baseline}"
    res.summary_ratio = f"{f_def.median / baseline:.1f}x ({f_m.median / baseline:.1f}x)"
    res.summary_target = f"≤ {target}; 0x401"
    return res
