"""P10 (issue 18): a campaign's Redis bytes per pending number and launch rows/s from a CSV, at 1M and 10M
numbers, for the compact layout (chunks + number set) and today's (a full ledger job per number), in one run."""

from __future__ import annotations

import random
import time
from pathlib import Path

from bench import _dialer
from bench._harness import Run, environment
from bench._report import Config, Result, ratio
from worker.campaigns.launch import LaunchOptions, launch_file
from worker.store.keys import Keys

_TARGET_BYTES = 64
_TARGET_ROWS_S = 150_000
_PARAMS_EVERY = 1  # every row has its own templateParams (a personalised notification), as P9's bodies do


def _write_csv(path: Path, n: int, seed: int = 18) -> int:
    """A campaign file of ``n`` distinct mobile numbers in E.164 (random, so they compress as real ones do)
    with a per-row template parameter pair; returns its size in bytes."""
    rng = random.Random(seed)
    numbers = rng.sample(range(10**10), n) if n <= 10**7 else list(range(n))
    with path.open("w", encoding="utf-8") as f:
        f.write("called,templateParams\n")
        for start in range(0, n, 100_000):
            f.write("".join(f"+861{x:010d},{i % 97}|{x % 1000}\n"
                            for i, x in enumerate(numbers[start : start + 100_000], start)))
    return path.stat().st_size


async def _launch(run: Run, path: Path, n: int, layout: str) -> tuple[float, float, int]:
    """One launch into an empty Redis: (rows/s, bytes of Redis per number, numbers stored)."""
    await run.reset()
    client = run.redis.client
    settings = _dialer.settings(run)
    before = await run.redis.used_memory()
    t = time.perf_counter()
    report = await launch_file(client, settings, path, LaunchOptions(name="city", template_id="tpl-alert"),
                               layout=layout)  # type: ignore[arg-type]
    seconds = time.perf_counter() - t
    if report.enqueued != n or report.rejected_rows:
        raise RuntimeError(f"{layout}: launched {report.enqueued} of {n} ({report.rejected_rows} rejected)")
    used = await run.redis.used_memory() - before
    if layout == "rows":
        keys = Keys(settings.key_prefix)
        pending = int(await client.hget(keys.campaign_counts("city"), "pending") or 0)  # type: ignore[misc]
        if pending != n:
            raise RuntimeError(f"rows: pending {pending}, expected {n}")
    return n / seconds, used / n, n


async def p10(cfg: Config) -> Result:
    sizes = (100_000, 300_000) if cfg.quick else (1_000_000, 10_000_000)
    old_size = sizes[0]
    res = Result(
        "P10", "campaign storage and launch: bytes per pending number, rows/s",
        "`launch_file` (the code of `dialer campaign launch`: streaming read, CSV parsing, validation, do-not-call "
        "check, storage) of a generated CSV of distinct random E.164 numbers (`+861` and 10 digits) with a per-row "
        "`templateParams` pair, into an empty redis-server (default config), timed from the call to its return "
        "(rows/s = numbers / time); bytes = `INFO memory` used_memory after - before, / numbers. Compact: the rows "
        "layout of issue 18 (zlib chunks of 1,000 rows on `campaign:<name>:rows`, the number set in listpack "
        "buckets, `pending` counter). Today's: the `jobs` layout, a full ledger job (hash + queue entry + event) "
        f"per number, measured at {old_size:,} only (at 10M it needs ~5 GB and ~7 min, see the note).",
        sizes=f"{' and '.join(f'{n:,}' for n in sizes)} numbers; today's layout {old_size:,}"
              + (", QUICK" if cfg.quick else ""),
    )
    rows_s: dict[int, list[float]] = {n: [] for n in sizes}
    bytes_n: dict[int, list[float]] = {n: [] for n in sizes}
    old_rows_s: list[float] = []
    old_bytes: list[float] = []
    async with environment() as run:
        files = {n: run.workdir / f"campaign-{n}.csv" for n in sizes}
        file_bytes = {n: _write_csv(files[n], n) for n in sizes}
        for _ in range(cfg.runs):
            for n in sizes:
                speed, per, _stored = await _launch(run, files[n], n, "rows")
                rows_s[n].append(speed)
                bytes_n[n].append(per)
            speed, per, _stored = await _launch(run, files[old_size], old_size, "jobs")
            old_rows_s.append(speed)
            old_bytes.append(per)
        await run.reset()
    figs_b = {n: res.add(f"compact: Redis bytes per pending number, {n:,}", bytes_n[n], "B/number", 1) for n in sizes}
    figs_s = {n: res.add(f"compact: launch rows/s, {n:,}", rows_s[n], "rows/s") for n in sizes}
    f_ob = res.add(f"today's (a job per number): Redis bytes per number, {old_size:,}", old_bytes, "B/number")
    f_os = res.add(f"today's (a job per number): launch rows/s, {old_size:,}", old_rows_s, "rows/s")
    for n in sizes:
        res.check(f"≤ {_TARGET_BYTES} B per pending number at {n:,}", f"{figs_b[n].fmt()} B",
                  figs_b[n].median <= _TARGET_BYTES)
        res.check(f"≥ {_TARGET_ROWS_S // 1000}k rows/s launch at {n:,}", f"{figs_s[n].fmt()}/s",
                  figs_s[n].median >= _TARGET_ROWS_S)
    big = sizes[-1]
    res.notes.append(
        f"files: {', '.join(f'{n:,} rows = {file_bytes[n] / 1e6:.0f} MB' for n in sizes)}; today's layout at "
        f"{big:,} would take ~{f_ob.median * big / 1e9:.1f} GB of Redis and ~{big / f_os.median / 60:.0f} min at "
        f"the rate measured at {old_size:,} (extrapolated, not run)")
    res.summary_ours = " / ".join(f"{figs_b[n].fmt()} B, {figs_s[n].fmt()} rows/s at {n:,}" for n in sizes)
    res.summary_baseline = f"{f_ob.fmt()} B, {f_os.fmt()} rows/s (a job per number, {old_size:,})"
    res.summary_ratio = (f"{ratio(f_ob.median, figs_b[big].median):.0f}x less memory, "
                         f"{ratio(figs_s[big].median, f_os.median):.1f}x faster")
    res.summary_target = f"≤ {_TARGET_BYTES} B, ≥ {_TARGET_ROWS_S // 1000}k rows/s"
    return res
