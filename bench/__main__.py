"""``python -m bench [P1 ...] [--quick] [--runs N] [--write/--no-write] [--baseline REF]``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import _baseline, campaign_storage, export, hopper, latency, rate, replication, storage, throughput
from bench._harness import REPO
from bench._report import Config, Result, print_result, revision, write_markdown

Bench = Callable[[Config], Awaitable[Result]]
_BUSY_LOAD = 0.7

BENCHMARKS: dict[str, Bench] = {
    "P1": throughput.p1,
    "P2": rate.p2,
    "P3": latency.p3,
    "P4": storage.p4,
    "P5": storage.p5,
    "P6": rate.p6,
    "P7": latency.p7,
    "P8": throughput.p8,
    "P9": export.p9,
    "P10": campaign_storage.p10,
    "P11": hopper.p11,
    "P12": replication.p12,
}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("ids", nargs="*", metavar="ID",
                        help="benchmarks to run (default: all): " + " ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="small sizes and one run: a few minutes in all")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 3, --quick 1)")
    parser.add_argument("--write", action=argparse.BooleanOptionalAction, default=None,
                        help="update BENCHMARKS.md (default: yes, except with --quick)")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--baseline", metavar="REF", default=None,
                        help="P1 only: also run its worker from a temporary git worktree of REF, interleaved "
                             "run by run with the current tree, and report both and their ratio")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace) -> int:
    ids = [i.upper() for i in args.ids] or list(BENCHMARKS)
    unknown = [i for i in ids if i not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    if args.baseline is not None and "P1" not in ids:
        print("--baseline applies to P1 only; add P1 to the benchmarks", file=sys.stderr)
        return 2
    runs = args.runs or (1 if args.quick else 3)
    cfg = Config(quick=args.quick, runs=runs, command="python -m bench " + shlex.join(sys.argv[1:]),
                 runs_given=args.runs is not None, revision=revision())
    cfg.command = cfg.command.rstrip()
    print(f"voice-dialer benchmarks: {' '.join(ids)}; {runs} run(s) each"
          + ("; QUICK sizes (smaller than the figures of record)" if args.quick else ""))
    results: list[Result] = []
    write = args.write if args.write is not None else not args.quick
    started = time.monotonic()
    worktrees = contextlib.ExitStack()
    try:
        if args.baseline is not None:
            cfg.baseline = worktrees.enter_context(_baseline.worktree(args.baseline))
            print(f"current: {cfg.revision}; baseline: P1's worker also runs from {cfg.baseline.label}, "
                  f"checked out in {cfg.baseline.tree}"
                  + (f"; with {', '.join(cfg.baseline.installed)} (required there, not in the venv)"
                     if cfg.baseline.installed else "")
                  + ("" if ids == ["P1"] else "; the other benchmarks run the current tree only"))
        for bench_id in ids:
            t0 = time.monotonic()
            load = os.getloadavg()[0]
            if load > _BUSY_LOAD:
                print(f"   warning: 1-min load average {load:.2f} before {bench_id}: other processes share the "
                      f"{os.cpu_count()} cores, so figures will be lower and noisier")
            res = await BENCHMARKS[bench_id](cfg)
            res.load = load
            print_result(res)
            print(f"   ({time.monotonic() - t0:.0f}s)")
            results.append(res)
    finally:
        worktrees.close()  # removes the baseline's worktree, also on errors and interrupts
        if write and results:
            write_markdown(args.output, results, cfg)
            print(f"\nwrote {args.output}")
    print(f"\n{len(results)} benchmark(s) in {time.monotonic() - started:.0f}s: "
          + ", ".join(f"{r.id} {r.verdict}" for r in results))
    return 0


def _interrupt(signum: int, _frame: object) -> None:
    # SIGTERM ends the run like Ctrl-C, so every benchmark's `finally` stops its children.
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    # The benchmarks set every DIALER_* they need; inherited ones would make runs differ between shells.
    for name in [k for k in os.environ if k.startswith("DIALER_")]:
        del os.environ[name]
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(asyncio.run(_main(_parse(sys.argv[1:]))))


if __name__ == "__main__":
    main()
