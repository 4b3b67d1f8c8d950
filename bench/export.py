"""P9: campaign export speed and memory (issue 16, item 3): `dialer campaign export` of a 1M-number campaign."""

from __future__ import annotations

import asyncio
import csv
import io
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import _dialer
from bench._harness import Run, body, environment
from bench._report import Config, Result, ratio
from worker.campaigns.control import Campaigns, CampaignSpec
from worker.campaigns.export import COLUMNS
from worker.ledger.producer import Producer
from worker.ledger.record import JobRecord
from worker.ledger.transitions import Ledger
from worker.settings import Settings
from worker.store.decode import as_dict, text
from worker.store.keys import Keys

_ENQUEUE_BATCH = 20_000
_SHAPE_SLICE = 5_000
_TARGET_ROWS_S = 50_000
_RSS_SLACK = 1.25  # peak RSS of the big export at most this times the small one's: memory does not grow with size

# Give the enqueued (queued) records the fields a finished campaign's have, as the ledger scripts would write
# them: most numbers sent and answered; 1 in 50 failed with an error that CSV must quote; 1 in 10 unanswered
# and redialled once (a redial record `<id>:r1` appended to the job list, linked by `rdl`/`rof`), the redial
# answered. Bench-only: no counters, no queues touched (no worker runs).
_SHAPE = """
local P, list, first, count, now = ARGV[1], KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ids = redis.call('LRANGE', list, first, first + count - 1)
local redials = {}
for i, id in ipairs(ids) do
  local n = first + i
  local key = P .. 'job:' .. id
  if n % 50 == 0 then
    redis.call('HSET', key, 'state', 'failed', 'attempts', '3', 'updated', now,
      'err', 'retCode 2: "invalid, callee"\\nfrom createVoiceNotification')
  else
    local unanswered = n % 10 == 1
    redis.call('HSET', key, 'state', 'sent', 'attempts', '1', 'first', now, 'updated', now + 900,
      'serial', string.format('%019d', n), 'sent', now + n, 'outcome', unanswered and 'unanswered' or 'answered',
      'reason', unanswered and '4' or '1', 'tk', tostring(n % 97))
    if unanswered then
      local rid = id .. ':r1'
      local h = redis.call('HGETALL', key)
      local copy = {}
      for j = 1, #h, 2 do
        local f = h[j]
        if f ~= 'serial' and f ~= 'sent' and f ~= 'outcome' and f ~= 'reason' and f ~= 'tk' then
          copy[#copy + 1] = f
          copy[#copy + 1] = h[j + 1]
        end
      end
      redis.call('HSET', P .. 'job:' .. rid, unpack(copy))
      redis.call('HSET', P .. 'job:' .. rid, 'rof', id, 'rn', '1', 'serial', string.format('R%018d', n),
        'sent', now + 1800000 + n, 'outcome', 'answered', 'reason', '1', 'tk', '21')
      redis.call('HSET', key, 'rdl', rid)
      redials[#redials + 1] = rid
    end
  end
end
for _, rid in ipairs(redials) do redis.call('RPUSH', list, rid) end
return #ids
"""


async def _campaign(run: Run, settings: Settings, name: str, n: int, prefix: str) -> int:
    """A launched campaign of ``n`` numbers (``Producer.enqueue_many``, as a launch does) given the fields of
    a finished one; returns the length of its job list (numbers + redials)."""
    redis = run.redis.client
    await Campaigns(redis, settings).create(name, CampaignSpec())
    producer = Producer(redis, settings)
    for start in range(0, n, _ENQUEUE_BATCH):
        bodies = [body(i, prefix=prefix) for i in range(start, min(start + _ENQUEUE_BATCH, n))]
        results = await producer.enqueue_many(bodies, campaign=name)
        if any(r.status != "accepted" for r in results):
            raise RuntimeError(f"{name}: not every number was accepted")
    keys = Keys(settings.key_prefix)
    shape = redis.register_script(_SHAPE)
    now = int(time.time() * 1000)
    for first in range(0, n, _SHAPE_SLICE):
        await shape(keys=[keys.campaign_jobs(name)], args=[settings.key_prefix, first, _SHAPE_SLICE, now])
    return int(await redis.llen(keys.campaign_jobs(name)))  # type: ignore[misc]


async def _cli(run: Run, args: list[str], out: Path) -> tuple[float, float, str]:
    """Run ``dialer ARGS > out``; (seconds, peak RSS in MB, stderr).

    The peak is the child's own ``VmHWM`` (/proc/<pid>/status), read every 10 ms until it exits: its
    ``wait4`` ru_maxrss would be this process's (Linux carries the peak of the forked image across exec,
    and the bench holds ~90 MB)."""
    err_path = out.with_suffix(".err")
    peak_kb = 0
    with out.open("wb") as stdout, err_path.open("wb") as stderr:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "worker.cli", *args], stdout=stdout, stderr=stderr,
                                stdin=subprocess.DEVNULL, env=run.env())
        status_file = Path(f"/proc/{proc.pid}/status")
        try:
            while proc.poll() is None:
                peak_kb = max(peak_kb, _vm_hwm_kb(status_file))
                await asyncio.sleep(0.01)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        seconds = time.perf_counter() - t0
    err = err_path.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"dialer {' '.join(args)} exited {proc.returncode}: {err[-2000:]}")
    return seconds, peak_kb / 1024, err


def _vm_hwm_kb(status_file: Path) -> int:
    """The process's peak resident set (kB) so far; 0 once it has exited."""
    try:
        for line in status_file.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _rows_reported(err: str) -> int:
    m = re.search(r": (\d+) rows \(", err)
    if m is None:
        raise RuntimeError(f"no tally on stderr: {err[-500:]}")
    return int(m.group(1))


# --- baselines: what an export looks like without the script -------------------------------------------


def _row(first: JobRecord, latest: JobRecord) -> list[Any]:
    d = latest.as_dict()
    return [first.called, first.job_id, latest.job_id, d["state"], d["attempts"], d["sent_at"], d["call_serial_no"],
            d["outcome"], d["release_reason"], d["talk_duration_s"], len(first.redials), d["last_error"],
            d["evidence"]]


async def _naive(run: Run, settings: Settings, name: str, limit: int, out: io.StringIO) -> int:
    """Per job: ``Ledger.get`` (HGETALL + JobRecord.from_hash), one round trip at a time, and ``Ledger.get`` of
    its last redial; csv.writer."""
    campaigns, ledger = Campaigns(run.redis.client, settings), Ledger(run.redis.client, settings)
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    rows = start = 0
    while rows < limit:
        ids = await campaigns.job_ids(name, start, start + 999)
        if not ids:
            break
        start += len(ids)
        for job_id in ids:
            rec = await ledger.get(job_id)
            if rec is None or rec.redial_of is not None:
                continue
            latest = (await ledger.get(rec.redials[-1]) if rec.redials else None) or rec
            writer.writerow(_row(rec, latest))
            rows += 1
            if rows == limit:
                break
    return rows


async def _pipelined(run: Run, settings: Settings, name: str, limit: int, out: io.StringIO) -> int:
    """HGETALL of 1,000 jobs per pipelined round trip (+ one for their last redials), JobRecord.from_hash,
    csv.writer: the obvious export without a script."""
    redis, keys = run.redis.client, Keys(settings.key_prefix)
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    rows = start = 0
    while rows < limit:
        ids = [text(i) for i in await redis.lrange(keys.campaign_jobs(name), start, start + 999)]  # type: ignore[misc]
        if not ids:
            break
        start += len(ids)
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(keys.job(job_id))
            raws = await pipe.execute()
        firsts = [JobRecord.from_hash(j, as_dict(raw)) for j, raw in zip(ids, raws, strict=True) if raw]
        firsts = [r for r in firsts if r.redial_of is None][: limit - rows]
        last_ids = [r.redials[-1] for r in firsts if r.redials]
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in last_ids:
                pipe.hgetall(keys.job(job_id))
            lasts = {j: JobRecord.from_hash(j, as_dict(raw))
                     for j, raw in zip(last_ids, await pipe.execute(), strict=True) if raw}
        for rec in firsts:
            writer.writerow(_row(rec, lasts.get(rec.redials[-1], rec) if rec.redials else rec))
        rows += len(firsts)
    return rows


# --- P9 ------------------------------------------------------------------------------------------------


async def p9(cfg: Config) -> Result:
    n = 100_000 if cfg.quick else 1_000_000
    small = 10_000 if cfg.quick else 100_000
    m = 10_000 if cfg.quick else 50_000
    res = Result(
        "P9", "campaign export: 1M numbers, CSV and JSONL",
        f"`dialer campaign export NAME > file` (a child process, timed from its start to its exit, interpreter "
        f"start-up included; peak RSS: the child's VmHWM, read every 10 ms) of a campaign of {n:,} numbers "
        f"launched with `Producer.enqueue_many` (the seed's 157-byte bodies), then given a finished campaign's "
        f"fields by a "
        f"bench-only script (49 in 50 sent with a serial, outcome and talk duration, 1 in 50 failed with an error "
        f"CSV must quote, 1 in 10 unanswered and redialled once, the redial answered: {n // 10:,} redial records "
        f"in the job list, folded into their numbers' rows). rows/s = the numbers exported / the time. Memory: "
        f"the same export of a {small:,}-number campaign in the same Redis; constant memory means the same peak "
        f"RSS. Baselines, over the first {m:,} numbers in this process: (a) per job `Ledger.get` (HGETALL + "
        f"`JobRecord.from_hash`) one round trip at a time, and (b) HGETALL of 1,000 jobs per pipelined round "
        f"trip + `JobRecord.from_hash`, both writing the same columns with csv.writer; rows/s.",
        sizes=f"{n:,} numbers (+{n // 10:,} redials), memory also at {small:,}; baselines {m:,}"
              f"{', QUICK' if cfg.quick else ''}",
    )
    csv_rate: list[float] = []
    jsonl_rate: list[float] = []
    rss_big: list[float] = []
    rss_small: list[float] = []
    naive: list[float] = []
    piped: list[float] = []
    async with environment() as run:
        settings = _dialer.settings(run)
        t0 = time.perf_counter()
        listed = await _campaign(run, settings, "big", n, "1380")
        await _campaign(run, settings, "small", small, "1390")
        setup_s = time.perf_counter() - t0
        used = await run.redis.used_memory()
        out = run.workdir / "export.csv"
        for _ in range(cfg.runs):
            seconds, rss, err = await _cli(run, ["campaign", "export", "big"], out)
            if _rows_reported(err) != n:
                raise RuntimeError(f"exported {_rows_reported(err)} rows of {n}")
            csv_rate.append(n / seconds)
            rss_big.append(rss)
            size_mb = out.stat().st_size / 1e6
            seconds, _rss, err = await _cli(run, ["campaign", "export", "big", "--format", "jsonl"],
                                            out.with_suffix(".jsonl"))
            if _rows_reported(err) != n:
                raise RuntimeError(f"exported {_rows_reported(err)} JSONL rows of {n}")
            jsonl_rate.append(n / seconds)
            _seconds, rss, _err = await _cli(run, ["campaign", "export", "small"], out.with_suffix(".small"))
            rss_small.append(rss)
            for values, baseline in ((naive, _naive), (piped, _pipelined)):
                t0 = time.perf_counter()
                rows = await baseline(run, settings, "big", m, io.StringIO())
                if rows != m:
                    raise RuntimeError(f"baseline exported {rows} of {m}")
                values.append(m / (time.perf_counter() - t0))
    f_csv = res.add("ours: dialer campaign export, CSV", csv_rate, "rows/s")
    f_jsonl = res.add("ours: dialer campaign export, JSONL", jsonl_rate, "rows/s")
    f_big = res.add(f"peak RSS, {n:,} numbers", rss_big, "MB", 1)
    f_small = res.add(f"peak RSS, {small:,} numbers", rss_small, "MB", 1)
    f_naive = res.add("(a) per-job Ledger.get loop", naive, "rows/s")
    f_piped = res.add("(b) pipelined HGETALL + JobRecord.from_hash", piped, "rows/s")
    r_naive, r_piped = ratio(f_csv.median, f_naive.median), ratio(f_csv.median, f_piped.median)
    grow = ratio(f_big.median, f_small.median)
    res.check(f"≥ {_TARGET_ROWS_S // 1000}k rows/s (CSV, {n:,} numbers)", f"{f_csv.fmt()}/s",
              f_csv.median >= _TARGET_ROWS_S)
    res.check(f"≥ {_TARGET_ROWS_S // 1000}k rows/s (JSONL)", f"{f_jsonl.fmt()}/s", f_jsonl.median >= _TARGET_ROWS_S)
    res.check(f"constant memory: peak RSS at {n:,} ≤ {_RSS_SLACK}x at {small:,}",
              f"{f_big.fmt()} MB vs {f_small.fmt()} MB ({grow:.2f}x)", grow <= _RSS_SLACK)
    res.notes.append(f"CSV file: {size_mb:,.0f} MB for {n:,} rows; Redis used_memory {used / 1e6:,.0f} MB for the "
                     f"{listed:,} job ids of the big campaign and the small one's; setup (enqueue + shaping) "
                     f"{setup_s:.0f} s, not timed")
    res.summary_ours = f"{f_csv.fmt()} rows/s CSV, {f_jsonl.fmt()} JSONL; peak RSS {f_big.fmt()} MB"
    res.summary_baseline = f"(a) {f_naive.fmt()} rows/s, (b) {f_piped.fmt()} rows/s"
    res.summary_ratio = f"{r_naive:.1f}x (a), {r_piped:.1f}x (b)"
    res.summary_target = f"≥ {_TARGET_ROWS_S // 1000}k rows/s; constant memory"
    return res
