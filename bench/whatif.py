"""Price a proposed change before making it: P1's "ours" run with steps of the dial path stubbed out,
optionally under py-spy. Never used for the figures of record.

::

    python -m bench.whatif                       # P1 "ours" with each stub set below, median of --runs
    python -m bench.whatif --profile /tmp/p1     # py-spy profiles (raw/collapsed), one per stub set;
                                                 # the CPU column is then py-spy's, not the worker's
    python -m bench.whatif p2 [SECONDS]          # P2's fleet, probed: permit-to-request gap, loop lag,
                                                 # guard-to-socket gap

A stub removes one Redis round trip per call (or the validation) from a worker process by
monkeypatching it at start-up (``python -m bench.whatif worker --stub NAME ... -- dialer-args``);
the rate gained is what merging that step into another would win, at most.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import _dialer
from bench._harness import body, environment, median

_OURS_MAX_IN_FLIGHT = 10_000


def _stub_inflight() -> None:
    # The lease rides in begin_send's and mark_sent's scripts: without it they skip the in-flight set.
    from worker.ledger.transitions import Ledger, SendGate
    from worker.limits.inflight import Lease

    begin_send = Ledger.begin_send

    async def no_lease(self: Ledger, job_id: str, lease: Lease | None = None, *, now: bool = False) -> SendGate:
        return await begin_send(self, job_id, None, now=now)

    Ledger.begin_send = no_lease  # type: ignore[method-assign]


def _stub_begin_send() -> None:
    from worker.ledger.transitions import Ledger, SendGate
    from worker.limits.inflight import Lease

    async def begin_send(self: Ledger, job_id: str, lease: Lease | None = None, *, now: bool = False) -> SendGate:
        return SendGate(True, 1)

    Ledger.begin_send = begin_send  # type: ignore[method-assign]


def _stub_mark_sent() -> None:
    from worker.ledger.transitions import Ledger
    from worker.limits.inflight import Lease

    async def mark_sent(self: Ledger, job_id: str, call_serial_no: str, lease: Lease | None = None) -> None:
        return None

    Ledger.mark_sent = mark_sent  # type: ignore[method-assign]


def _stub_validate() -> None:
    from worker.ledger.record import JobRecord
    from worker.models import CallRequest

    def request(self: JobRecord) -> CallRequest:
        return CallRequest.model_construct(**self.body)

    JobRecord.request = request  # type: ignore[method-assign]


def _probe() -> None:
    """Record, per call, the gap from the rate permit to the request leaving, and the event loop's lag
    (oversleep of a 5-ms timer); written as JSON to $BENCH_PROBE_DIR/<pid>.json at exit."""
    import atexit
    import json
    import os

    from worker.dispatch.dispatcher import Dispatcher
    from worker.provider.client import ProviderClient

    permits: dict[int, float] = {}
    gaps: list[float] = []
    lags: list[float] = []
    send_once, post = Dispatcher._send_once, ProviderClient._post_create
    started: list[bool] = []
    dispatchers: list[Dispatcher] = []

    async def _lag_probe() -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.005)
            lags.append(loop.time() - t - 0.005)

    async def probed_send_once(self: Dispatcher, *args: Any, **kwargs: Any) -> Any:
        # Called right after the permit: the start of the permit-to-request gap.
        if not started:
            started.append(True)
            dispatchers.append(self)
            asyncio.get_running_loop().create_task(_lag_probe())
        permits[id(asyncio.current_task())] = time.monotonic()
        return await send_once(self, *args, **kwargs)

    # From the guard's last check (the gate's open() returned) to the request's headers on the socket: the
    # part of a request's lateness that no late-permit check can see.
    posts: dict[int, float] = {}
    post_gaps: list[float] = []

    async def probed_post(self: ProviderClient, *args: Any, **kwargs: Any) -> Any:
        t = permits.pop(id(asyncio.current_task()), None)
        if t is not None:
            gaps.append(time.monotonic() - t)
        posts[id(asyncio.current_task())] = time.monotonic()
        return await post(self, *args, **kwargs)

    async def headers_sent(*_a: Any) -> None:
        t = posts.pop(id(asyncio.current_task()), None)
        if t is not None:
            post_gaps.append(time.monotonic() - t)

    from worker.provider import client as _client
    _client._SENT_TRACE.on_request_headers_sent.append(headers_sent)

    def dump() -> None:
        path = Path(os.environ.get("BENCH_PROBE_DIR", ".")) / f"{os.getpid()}.json"
        late = sum(getattr(d, "late_permits", 0) for d in dispatchers)
        path.write_text(json.dumps({"gaps": gaps, "lags": lags, "late": late, "post": post_gaps}))

    atexit.register(dump)
    Dispatcher._send_once = probed_send_once  # type: ignore[method-assign]
    ProviderClient._post_create = probed_post  # type: ignore[method-assign]


def _pipe_stats() -> None:
    """Not a stub: print how well the worker's auto-pipeline coalesced its calls, at exit (stderr)."""
    import atexit
    from collections import Counter

    from worker.store.pipelining import AutoPipeline

    sizes: Counter[int] = Counter()
    send = AutoPipeline._send

    async def counted(self: AutoPipeline, commands: list[tuple[Any, ...]],
                      wait: tuple[int, int] | None = None) -> tuple[list[Any], int]:
        sizes[len(commands)] += 1
        return await send(self, commands, wait)

    def report() -> None:
        batches, commands = sum(sizes.values()), sum(n * c for n, c in sizes.items())
        print(f"auto-pipeline: {commands} commands in {batches} round trips "
              f"({commands / max(batches, 1):.2f} per trip); sizes {sorted(sizes.items())[:12]}", file=sys.stderr)

    atexit.register(report)
    AutoPipeline._send = counted  # type: ignore[method-assign]


STUBS: dict[str, Callable[[], None]] = {
    "pipestats": _pipe_stats,
    "probe": _probe,
    "inflight": _stub_inflight,
    "begin_send": _stub_begin_send,
    "mark_sent": _stub_mark_sent,
    "validate": _stub_validate,
}

SETS: list[tuple[str, ...]] = [
    (),
    ("inflight",),
    ("inflight", "begin_send"),
    ("inflight", "begin_send", "mark_sent"),
    ("validate",),
]


async def _p2_probe(seconds: float) -> None:
    """P2's fleet with the probe in every worker: where between permit and provider the time goes."""
    import json
    import os

    from bench._harness import max_window_count, percentile
    from bench.rate import _first_request_ts, _sleep_until_wall

    async with environment(latency_ms=50) as run:
        probe_dir = run.workdir / "probe"
        probe_dir.mkdir()
        env = {**run.env(rate_limit=200, rate_burst=1), "BENCH_PROBE_DIR": str(probe_dir)}
        procs = [run.children.spawn("probe", [sys.executable, "-m", "bench.whatif", "worker", "--stub=probe", "--",
                                              "worker"], env) for _ in range(4)]
        await asyncio.sleep(4)
        await _dialer.enqueue_ours(run, [body(i) for i in range(int(200 * (seconds + 6)))])
        t0 = await _first_request_ts(run)
        await _sleep_until_wall(t0 + seconds)
        for p in procs:
            await run.children.stop(p)
        ts = [e["ts"] for e in (await run.sim.log())["requests"]]
        gaps: list[float] = []
        lags: list[float] = []
        late = 0
        post_all: list[float] = []
        for f in os.listdir(probe_dir):
            data = json.loads((probe_dir / f).read_text())
            gaps += data["gaps"]
            lags += data["lags"]
            late += data.get("late", 0)
            post_all.extend(data.get("post", []))
    ms = [g * 1000 for g in gaps]
    lag_ms = [g * 1000 for g in lags]
    print(f"P2 fleet with probes, {seconds:g} s: max 1-s window {max_window_count(ts)}, {len(ts)} requests")
    print(f"  permit -> request leaves: p50 {percentile(ms, 50):.2f} ms, p99 {percentile(ms, 99):.2f} ms, "
          f"max {max(ms):.2f} ms ({len(ms)} calls)")
    print(f"  event-loop lag (5-ms timer oversleep): p50 {percentile(lag_ms, 50):.2f} ms, "
          f"p99 {percentile(lag_ms, 99):.2f} ms, max {max(lag_ms):.2f} ms")
    pm = [g * 1000 for g in post_all]
    print(f"  guard passed -> headers written: p50 {percentile(pm, 50):.2f} ms, p99 {percentile(pm, 99):.2f} ms, "
          f"max {max(pm):.2f} ms, over 5 ms: {sum(1 for g in pm if g > 5)}, over 15 ms: {sum(1 for g in pm if g > 15)}")
    print(f"  permits not used because the request would have left too late: {late} "
          f"({100 * late / max(len(ts) + late, 1):.2f}% of permits)")


def _worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.whatif worker")
    parser.add_argument("--stub", action="append", default=[], choices=sorted(STUBS))
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    for name in args.stub:
        STUBS[name]()
    from worker.cli import main

    rest = [a for a in args.rest if a != "--"]
    main(rest, prog_name="dialer")


async def _p1(stubs: tuple[str, ...], n: int, profile: str | None) -> tuple[float, float]:
    """(calls/s from the simulator log, worker CPU µs per call) of one burst run with these stubs."""
    async with environment() as run:
        cmd = [sys.executable, "-m", "bench.whatif", "worker", *(f"--stub={s}" for s in stubs), "--",
               "worker", "--burst"]
        env = run.env(rate_limit=0, max_in_flight=_OURS_MAX_IN_FLIGHT)
        idle = run.children.spawn("whatif-idle", cmd, env)
        await run.children.wait(idle, 300)
        idle_cpu = run.children.cpu_s[idle.pid]
        await _dialer.enqueue_ours(run, [body(i) for i in range(n)])
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if profile:
            out = f"{profile}-{'+'.join(stubs) or 'none'}.txt"
            cmd = [spy, "record", "-r", "200", "-f", "raw", "-o", out, "--", *cmd]
        proc = run.children.spawn("whatif", cmd, env)
        await run.children.wait(proc, 300)
        if "pipestats" in stubs:
            print("  " + run.children.log_tail(proc, 1))
        log = await run.sim.log()
        done = _dialer.created(log)
        if len(done) != n:
            raise RuntimeError(f"{len(done)} of {n} calls created")
        return _dialer.span_rate(done), (run.children.cpu_s[proc.pid] - idle_cpu) / n * 1e6


async def _drive(args: argparse.Namespace) -> None:
    sets = [tuple(s.split("+")) if s else () for s in args.sets] if args.sets else SETS
    print(f"P1 'ours' with stubs, {args.n} calls, median of {args.runs} run(s); CPU = worker process user+sys, "
          "start-up subtracted")
    base: tuple[float, float] | None = None
    for stubs in sets:
        rates: list[float] = []
        cpus: list[float] = []
        for _ in range(args.runs):
            r, c = await _p1(stubs, args.n, args.profile)
            rates.append(r)
            cpus.append(c)
        m, cpu = median(rates), median(cpus)
        base = (m, cpu) if base is None else base
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        print(f"  {'+'.join(stubs) or '(none: as shipped)':<34} {m:8,.0f} calls/s {m / base[0]:5.2f}x  "
              f"CPU {cpu:6,.0f} µs/call {cpu / base[1]:5.2f}x   (runs: {runs})")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        _worker_main(argv[1:])
        return
    if argv[:1] == ["p2"]:
        asyncio.run(_p2_probe(float(argv[1]) if len(argv) > 1 else 20))
        return
    parser = argparse.ArgumentParser(prog="python -m bench.whatif")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", default=None,
                        help="py-spy raw output prefix (the CPU column then measures py-spy, not the worker)")
    parser.add_argument("sets", nargs="*", help="stub sets like inflight+begin_send (default: a ladder)")
    asyncio.run(_drive(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
