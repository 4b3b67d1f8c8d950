"""P11 (issue 18): worker throughput with a 10M-number campaign backlog vs a 1k one (the hopper materialising
jobs as the senders go), and ``campaign status`` time at 1M vs 10M numbers."""

from __future__ import annotations

import asyncio
import statistics
import time

from bench import _dialer
from bench._harness import Run, environment
from bench._report import Config, Result, ratio
from worker.campaigns.control import Campaigns, CampaignSpec
from worker.campaigns.rows import CompactRow, RowStore, buckets_for

_SPEC = CampaignSpec(defaults={"templateId": "tpl-alert", "templateParams": ["x"]})
_APPEND = 200_000  # rows per RowStore.append call while building a backlog
_SKIP = 100  # the first calls of a run (start-up, first token) are not counted
_TIMEOUT_S = 300.0


async def _backlog(run: Run, name: str, start: int, n: int, total: int) -> None:
    """Append rows ``start .. start + n`` to campaign ``name`` (created first), sized for ``total`` numbers."""
    settings = _dialer.settings(run, rate_limit=0)  # as the worker's: the campaign is not paced
    client = run.redis.client
    await Campaigns(client, settings).create(name, _SPEC)
    store = RowStore(client, settings)
    for first in range(start, start + n, _APPEND):
        rows = [CompactRow(f"861{x:010d}", "+") for x in range(first, min(first + _APPEND, start + n))]
        res = await store.append(name, rows, buckets=buckets_for(total))
        if res.added != len(rows):
            raise RuntimeError(f"{name}: appended {res.added} of {len(rows)}")


async def _created(run: Run) -> list[float]:
    return sorted(float(e["ts"]) for e in _dialer.created(await run.sim.log()))


async def _calls_per_s(run: Run, calls: int) -> float:
    """Start a worker, wait for ``calls`` created calls, stop it; calls/s from call _SKIP to the last."""
    await run.sim.reset()
    proc = run.worker(rate_limit=0, max_in_flight=10_000)
    deadline = time.monotonic() + _TIMEOUT_S
    try:
        while len(ts := await _created(run)) < calls:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(ts)} of {calls} calls within {_TIMEOUT_S:.0f} s")
            run.children.check_alive()
            await asyncio.sleep(0.5)
    finally:
        await run.children.stop(proc)
    ts = ts[_SKIP:calls]
    return (len(ts) - 1) / (ts[-1] - ts[0])


async def _status_ms(run: Run, name: str, times: int = 200) -> float:
    campaigns = Campaigns(run.redis.client, _dialer.settings(run))
    spent = []
    for _ in range(times):
        t = time.perf_counter()
        await campaigns.status(name)
        spent.append((time.perf_counter() - t) * 1000)
    return statistics.median(spent)


async def p11(cfg: Config) -> Result:
    small, mid, big = (1000, 100_000, 300_000) if cfg.quick else (1000, 1_000_000, 10_000_000)
    calls = 5000 if cfg.quick else 20_000
    res = Result(
        "P11", "campaign backlog: worker calls/s with a big backlog vs a small one; status time vs size",
        f"One `dialer worker` (DIALER_RATE_LIMIT=0, DIALER_MAX_IN_FLIGHT=10000, zero-latency simulator) on a "
        f"campaign of compact rows (appended with the launcher's RowStore, no rate: the hopper keeps 5,000 jobs "
        f"materialised); calls/s from the simulator's log, from call {_SKIP} to the last one counted. Small: a "
        f"campaign of {small:,} numbers, all of it ({small - _SKIP:,} calls counted). Big: a campaign of {big:,} "
        f"numbers, its first {small:,} calls (the same window as small) and its first {calls:,}. Status: median of "
        "200 `Campaigns.status` calls from the bench process (one pipelined round trip), at each size.",
        sizes=f"backlogs {small:,} and {big:,}; status at {mid:,} and {big:,}" + (", QUICK" if cfg.quick else ""),
    )
    small_rates: list[float] = []
    big_same: list[float] = []
    big_long: list[float] = []
    status: dict[int, float] = {}
    async with environment() as run:
        await run.reset()
        for i in range(cfg.runs):
            await _backlog(run, f"small-{i}", 0, small, small)
            small_rates.append(await _calls_per_s(run, small))
        t = time.perf_counter()
        await _backlog(run, "city", 0, mid, big)
        status[mid] = await _status_ms(run, "city")
        await _backlog(run, "city", mid, big - mid, big)
        build_s = time.perf_counter() - t
        status[big] = await _status_ms(run, "city")
        used = await run.redis.used_memory()
        for _ in range(cfg.runs):
            big_same.append(await _calls_per_s(run, small))
            big_long.append(await _calls_per_s(run, calls))
        await run.reset()
    f_small = res.add(f"calls/s, backlog {small:,} (calls {_SKIP}..{small})", small_rates, "calls/s")
    f_same = res.add(f"calls/s, backlog {big:,} (calls {_SKIP}..{small})", big_same, "calls/s")
    res.add(f"calls/s, backlog {big:,} (calls {_SKIP}..{calls:,})", big_long, "calls/s")
    f_mid = res.add(f"campaign status, {mid:,} numbers", [status[mid]], "ms", 2)
    f_big = res.add(f"campaign status, {big:,} numbers", [status[big]], "ms", 2)
    r = ratio(f_same.median, f_small.median)
    res.check(f"calls/s with a {big:,} backlog within 10 % of a {small:,} one", f"{r:.2f}x", r >= 0.9)
    rs = ratio(f_big.median, f_mid.median)
    res.check(f"status time independent of size ({big:,} vs {mid:,})", f"{rs:.2f}x", rs <= 1.5)
    res.notes.append(f"backlog of {big:,} built in {build_s:.0f} s; Redis used_memory with it {used / 1e6:,.0f} MB")
    res.summary_ours = f"{f_same.fmt()} calls/s ({big:,} backlog), status {f_big.fmt()} ms"
    res.summary_baseline = f"{f_small.fmt()} calls/s ({small:,} backlog), status {f_mid.fmt()} ms at {mid:,}"
    res.summary_ratio = f"{r:.2f}x calls/s, {rs:.2f}x status time"
    res.summary_target = "≥ 0.9x calls/s, status time flat"
    return res
