"""Campaign export (``worker.campaigns.export``, ``dialer campaign export``): one row per number in launch
order with the latest call's fields and the redial count, the state filter, RFC 4180 CSV and the JSONL
shape, numbers whose record expired, reads stopping with the reader, constant memory, and the CLI's exit
codes and error lines (a closed pipe included). Rows are checked against the ledger read the slow way
(``Ledger.get`` per job, ``JobRecord.as_dict``)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.helpers import do_launch, free_port, numbers_csv, run_dialer, settings_env
from worker.campaigns import commands
from worker.campaigns.control import Campaigns, CampaignSpec, UnknownCampaign
from worker.campaigns.export import (
    COLUMNS,
    FORMATS,
    STATES,
    CampaignExport,
    ExportOptionError,
    csv_field,
    parse_states,
)
from worker.ledger.producer import Producer
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.settings import Settings
from worker.store.keys import Keys

N = [f"1380000{i:04d}" for i in range(6)]  # the numbers numbers_csv(tmp_path, 6) writes, in launch order
AWKWARD = 'retCode 1: "bad, request"\r\nsee\nline 3, ends with a quote"'


async def export_bytes(redis: aioredis.Redis, settings: Settings, name: str = "camp", **kw: Any) -> tuple[
        bytes, CampaignExport]:
    export = CampaignExport(redis, settings, name, **kw)
    out = b"".join([data async for data in export.stream()])
    return out, export


def csv_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


async def redial(redis: aioredis.Redis, settings: Settings, first: str, k: int) -> str:
    """Redial ``k`` of job ``first`` as the result callback makes it (outcomes.py): its own campaign job,
    enqueued through the producer and linked to the first job."""
    rec = await Ledger(redis, settings).get(first)
    assert rec is not None
    rid = f"{first}:r{k}"
    res = await Producer(redis, settings).enqueue(rec.body, derived_id=rid, campaign=rec.campaign)
    assert res.status == "accepted", res
    assert await Ledger(redis, settings).link_redial(first, rid, k) is True
    return rid


async def sent(ledger: Ledger, job: str, serial: str, outcome: str | None = None, reason: str = "1",
               talk: str = "12") -> None:
    assert await ledger.mark_sending(job)
    await ledger.mark_sent(job, serial)
    if outcome is not None:
        await ledger.record_outcome(job, outcome, reason, {"tk": talk})


async def mixed_campaign(redis: aioredis.Redis, settings: Settings, tmp_path: Path) -> dict[str, str]:
    """Six numbers of campaign ``camp``; returns number -> the job id of its latest call.

    N0 answered; N1 unanswered, redialled once, the redial answered; N2 failed with an awkward error;
    N3 redialled twice (r1 unanswered, r2 still queued); N4 queued; N5 unknown, then proved by its release
    event (evidence=release)."""
    report = await do_launch(redis, settings, numbers_csv(tmp_path, 6))
    assert report.enqueued == 6
    ledger = Ledger(redis, settings)
    job = {n: f"camp:{n}" for n in N}
    await sent(ledger, job[N[0]], "SN-0", "answered", talk="31")
    await sent(ledger, job[N[1]], "SN-1", "unanswered", reason="4", talk="0")
    r = await redial(redis, settings, job[N[1]], 1)
    await sent(ledger, r, "SN-1-r1", "answered", talk="7")
    assert await ledger.mark_sending(job[N[2]])
    assert await ledger.mark_final(job[N[2]], State.FAILED, AWKWARD)
    await sent(ledger, job[N[3]], "SN-3", "unanswered", reason="4")
    r1 = await redial(redis, settings, job[N[3]], 1)
    await sent(ledger, r1, "SN-3-r1", "unanswered", reason="4")
    r2 = await redial(redis, settings, job[N[3]], 2)
    assert await ledger.mark_sending(job[N[5]])
    assert await ledger.mark_final(job[N[5]], State.UNKNOWN, "read timeout")
    await ledger.mark_evidenced(job[N[5]], "SN-5")
    return {N[0]: job[N[0]], N[1]: r, N[2]: job[N[2]], N[3]: r2, N[4]: job[N[4]], N[5]: job[N[5]]}


async def expected_rows(redis: aioredis.Redis, settings: Settings, latest: dict[str, str]) -> list[dict[str, Any]]:
    """The export's rows computed the slow way, from JobRecord.as_dict() of each number's first and latest job."""
    ledger = Ledger(redis, settings)
    out = []
    for number, last in latest.items():
        first = await ledger.get(f"camp:{number}")
        rec = await ledger.get(last)
        assert first is not None and rec is not None
        d = rec.as_dict()
        out.append({
            "called": number, "job_id": first.job_id, "latest_job_id": rec.job_id, "state": d["state"],
            "attempts": d["attempts"], "sent_at": d["sent_at"], "call_serial_no": d["call_serial_no"],
            "outcome": d["outcome"], "release_reason": d["release_reason"], "talk_duration_s": d["talk_duration_s"],
            "redials": len(first.redials), "last_error": d["last_error"], "evidence": d["evidence"],
        })
    return out


def as_csv_strings(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]


# --- rows ----------------------------------------------------------------------------------------------


async def test_one_row_per_number_in_launch_order_with_its_latest_call(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    latest = await mixed_campaign(redis_client, settings, tmp_path)
    want = await expected_rows(redis_client, settings, latest)
    data, export = await export_bytes(redis_client, settings)
    rows = csv_rows(data)
    # The list holds 9 ids (6 numbers + 3 redials); the redials are folded into their numbers' rows.
    assert await redis_client.llen(Keys(settings.key_prefix).campaign_jobs("camp")) == 9  # type: ignore[misc]
    assert [r["called"] for r in rows] == N
    assert rows == as_csv_strings(want)
    by_number = {r["called"]: r for r in rows}
    assert by_number[N[1]]["latest_job_id"] == f"camp:{N[1]}:r1" and by_number[N[1]]["redials"] == "1"
    assert (by_number[N[1]]["state"], by_number[N[1]]["outcome"], by_number[N[1]]["call_serial_no"]) == (
        "sent", "answered", "SN-1-r1")
    assert (by_number[N[3]]["latest_job_id"], by_number[N[3]]["state"], by_number[N[3]]["redials"]) == (
        f"camp:{N[3]}:r2", "queued", "2")
    assert by_number[N[3]]["call_serial_no"] == "" and by_number[N[3]]["attempts"] == "0"
    assert by_number[N[5]]["evidence"] == "release" and by_number[N[5]]["state"] == "sent"
    assert by_number[N[0]]["sent_at"].endswith("Z") and by_number[N[0]]["talk_duration_s"] == "31"
    assert (export.rows, export.redials, export.missing) == (6, 3, 0)
    assert export.by_state == {"sent": 3, "failed": 1, "queued": 2}


async def test_state_filter_applies_to_the_latest_call(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    await mixed_campaign(redis_client, settings, tmp_path)
    data, _ = await export_bytes(redis_client, settings, states=parse_states(["sent"]))
    assert [r["called"] for r in csv_rows(data)] == [N[0], N[1], N[5]]  # N1 by its redial; N3's redial is queued
    data, export = await export_bytes(redis_client, settings, states=parse_states(["queued,failed", " FAILED "]))
    assert [r["called"] for r in csv_rows(data)] == [N[2], N[3], N[4]]
    assert export.by_state == {"failed": 1, "queued": 2} and export.redials == 2
    data, export = await export_bytes(redis_client, settings, states=parse_states(["dead"]))
    assert data == (",".join(COLUMNS) + "\r\n").encode() and export.rows == 0


def test_parse_states_names_the_option_and_the_allowed_values() -> None:
    assert parse_states([]) is None and parse_states(["", " , "]) is None
    assert parse_states(["sent,failed", "dead", "sent"]) == {"sent", "failed", "dead"}
    with pytest.raises(ExportOptionError) as err:
        parse_states(["sent,answered"], "state")
    assert err.value.option == "state"
    assert str(err.value) == ("state: unknown state 'answered'; allowed: queued, sending, sent, failed, dead, "
                              "unknown, cancelled, expired, suppressed, pending")
    assert set(STATES) == {str(s) for s in State} | {"pending"}  # pending: a compact row, not a job yet


async def test_csv_is_rfc4180_with_awkward_errors(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    await mixed_campaign(redis_client, settings, tmp_path)
    data, _ = await export_bytes(redis_client, settings, states=parse_states(["failed"]))
    # Quoted, quotes doubled, the line breaks kept inside the quotes; every record ends with CRLF.
    quoted = '"' + AWKWARD.replace('"', '""') + '"'
    assert data.decode("utf-8") == (
        ",".join(COLUMNS) + "\r\n"
        + f"{N[2]},camp:{N[2]},camp:{N[2]},failed,1,,,,,,0,{quoted},\r\n"
    )
    assert csv_rows(data)[0]["last_error"] == AWKWARD
    # Any text column is quoted when it needs it (values from a callback, or another producer's records).
    await redis_client.hset(Keys(settings.key_prefix).job(f"camp:{N[0]}"),  # type: ignore[misc]
                            mapping={"reason": '9,"x"', "serial": "SN\n0", "called": "+86 1380"})
    data, _ = await export_bytes(redis_client, settings)
    row = csv_rows(data)[0]
    assert (row["release_reason"], row["call_serial_no"], row["called"]) == ('9,"x"', "SN\n0", "+86 1380")
    assert data.decode().splitlines()[1].startswith('+86 1380,camp:13800000000,')


def test_csv_fields_are_quoted_exactly_as_the_csv_module_quotes_them() -> None:
    values = ["", "plain", "a,b", 'say "hi"', "line\nbreak", "cr\rhere", "crlf\r\n", '"', ",", " lead", "trail ",
              "tab\tin", "ünïcødé, \u2028", "'single'", "=1+1", "\x00nul", '""', AWKWARD]
    ours = io.StringIO()
    theirs = io.StringIO()
    csv.writer(theirs).writerows([values, list(reversed(values))])
    for row in (values, list(reversed(values))):
        ours.write(",".join(csv_field(v) for v in row) + "\r\n")
    assert ours.getvalue() == theirs.getvalue()


async def test_jsonl_has_the_same_keys_in_order_typed(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    latest = await mixed_campaign(redis_client, settings, tmp_path)
    want = await expected_rows(redis_client, settings, latest)
    data, export = await export_bytes(redis_client, settings, fmt="jsonl")
    lines = data.decode("utf-8").split("\n")
    assert lines[-1] == "" and len(lines) == 7  # one object per line, each ending in \n; no header
    objects = [json.loads(line) for line in lines[:-1]]
    assert all(list(o) == list(COLUMNS) for o in objects)
    assert objects == want  # numbers as numbers, absent values null, the error's quotes and line breaks intact
    assert isinstance(objects[0]["attempts"], int) and objects[4]["talk_duration_s"] is None
    assert objects[2]["last_error"] == AWKWARD and objects[0]["last_error"] is None
    assert export.rows == 6
    csv_data, _ = await export_bytes(redis_client, settings)
    assert csv_rows(csv_data) == as_csv_strings(objects)
    # Escapes in any column (a column is copied as it is only while none of its values needs one).
    awkward = {"called": '+86 "1"\\2\n', "serial": "S\tN\u2028é", "reason": "\x01"}
    await redis_client.hset(Keys(settings.key_prefix).job(f"camp:{N[0]}"), mapping=awkward)  # type: ignore[misc]
    data, _ = await export_bytes(redis_client, settings, fmt="jsonl")
    first = json.loads(data.decode("utf-8").split("\n")[0])
    assert (first["called"], first["call_serial_no"], first["release_reason"]) == tuple(awkward.values())
    assert [json.loads(line)["called"] for line in data.decode("utf-8").splitlines()[1:]] == N[1:]


async def test_unknown_campaign_fails_before_the_first_byte(
    redis_client: aioredis.Redis, settings: Settings
) -> None:
    for name in ("nope", "bad:name", ""):
        stream = CampaignExport(redis_client, settings, name).stream()
        with pytest.raises(UnknownCampaign, match="no campaign"):
            await stream.__anext__()
    with pytest.raises(ExportOptionError, match="--format: unknown format 'xml'; allowed: csv, jsonl"):
        CampaignExport(redis_client, settings, "x", fmt="xml")
    await Campaigns(redis_client, settings).create("empty", CampaignSpec())
    data, export = await export_bytes(redis_client, settings, "empty", fmt="jsonl")
    assert data == b"" and export.rows == 0


async def test_a_number_whose_records_expired_has_no_row_and_is_counted(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    latest = await mixed_campaign(redis_client, settings, tmp_path)
    keys = Keys(settings.key_prefix)
    await redis_client.delete(keys.job(f"camp:{N[0]}"))  # as its TTL would
    await redis_client.delete(keys.job(latest[N[1]]))  # N1's redial gone: its first job's own call stands
    data, export = await export_bytes(redis_client, settings)
    rows = csv_rows(data)
    assert [r["called"] for r in rows] == N[1:] and export.missing == 1
    assert (rows[0]["latest_job_id"], rows[0]["outcome"], rows[0]["redials"]) == (f"camp:{N[1]}", "unanswered", "1")


async def test_an_abandoned_export_stops_reading(redis_client: aioredis.Redis, settings: Settings) -> None:
    await fill_campaign(redis_client, settings, "big", 5_000)
    export = CampaignExport(redis_client, settings, "big", chunk=100)
    await redis_client.config_resetstat()
    stream = export.stream()
    got = [await stream.__anext__() for _ in range(3)]  # header + two slices
    await stream.aclose()
    await asyncio.sleep(0.2)
    stats = await redis_client.info("commandstats")
    scripts = sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("evalsha", "eval"))
    # Two slices taken and one read ahead (+1 for the NOSCRIPT reload on a fresh server), of 50 slices.
    assert scripts <= 4, stats
    assert len(csv_rows(b"".join(got))) == 200 and export.rows == 200


# --- size ------------------------------------------------------------------------------------------------

_FILL = """
local P, name, first, count, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local list = P .. 'campaign:' .. name .. ':jobs'
for i = first, first + count - 1 do
  local called = string.format('1380%07d', i)
  local id = name .. ':' .. called
  redis.call('HSET', P .. 'job:' .. id, 'state', 'sent', 'prio', '9', 'called', called, 'campaign', name,
    'body', '{"called":"' .. called .. '","playList":[{"templateId":"tpl-1"}]}', 'created', now, 'attempts', '1',
    'cm', '1', 'serial', string.format('SN%018d', i), 'sent', now + i, 'outcome', 'answered', 'reason', '1',
    'tk', tostring(i % 90))
  redis.call('RPUSH', list, id)
end
return count
"""


async def fill_campaign(redis: aioredis.Redis, settings: Settings, name: str, n: int) -> None:
    """Campaign ``name`` with ``n`` sent, answered numbers, written straight into Redis (fast)."""
    await Campaigns(redis, settings).create(name, CampaignSpec())
    fill = redis.register_script(_FILL)
    now = int(time.time() * 1000)
    for start in range(0, n, 10_000):
        await fill(args=[settings.key_prefix, name, start, min(10_000, n - start), now])


@pytest.mark.slow  # ~15 s: 200k numbers written, then exported under tracemalloc
async def test_memory_stays_constant_for_200k_numbers(redis_client: aioredis.Redis, settings: Settings) -> None:
    n = 200_000
    await fill_campaign(redis_client, settings, "huge", n)
    export = CampaignExport(redis_client, settings, "huge")
    size = 0
    lines = 0
    tracemalloc.start()
    try:
        async for data in export.stream():
            size += len(data)
            lines += data.count(b"\r\n")
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert export.rows == n and lines == n + 1
    # ~23 MB of CSV (Python would hold several times that as rows); the export holds two slices, ~2 MB.
    assert size > 20_000_000
    assert peak < 6_000_000, f"peak {peak:,} bytes traced for {size:,} bytes exported"


# --- the CLI -----------------------------------------------------------------------------------------


def test_the_cli_knows_the_formats_without_importing_them() -> None:
    assert commands.EXPORT_FORMATS == FORMATS


@pytest.mark.slow
async def test_cli_exports_filters_and_reports_errors_in_one_line(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    latest = await mixed_campaign(redis_client, settings, tmp_path)
    env = settings_env(settings)
    rc, out, err = await run_dialer("campaign", "export", "camp", env=env)
    assert rc == 0, err
    assert csv_rows(out.encode()) == as_csv_strings(await expected_rows(redis_client, settings, latest))
    assert err == "campaign camp: 6 rows (failed=1 queued=2 sent=3), 3 redials\n"

    rc, out, err = await run_dialer("campaign", "export", "camp", "--format", "JSONL", "--state", "queued",
                                    "--state", "failed", env=env)
    assert rc == 0, err
    assert [json.loads(line)["called"] for line in out.splitlines()] == [N[2], N[3], N[4]]

    rc, out, err = await run_dialer("campaign", "export", "camp", "--state", "sent,ringing", env=env)
    assert (rc, out) == (2, "")
    assert err.splitlines()[-1] == ("Error: Invalid value for '--state': unknown state 'ringing'; allowed: queued, "
                                    "sending, sent, failed, dead, unknown, cancelled, expired, suppressed, pending")

    rc, out, err = await run_dialer("campaign", "export", "camp", "--format", "xml", env=env)
    assert rc == 2 and "'--format'" in err and "csv" in err and "jsonl" in err

    rc, out, err = await run_dialer("campaign", "export", "nope", env=env)
    assert (rc, out, err) == (1, "", "Error: no campaign 'nope'\n")

    away = {**env, "DIALER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    rc, out, err = await run_dialer("campaign", "export", "camp", env=away)
    assert rc == 1 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("Error: Redis is not reachable at redis://127.0.0.1:")


@pytest.mark.slow
async def test_cli_into_a_closed_pipe_ends_quietly(redis_client: aioredis.Redis, settings: Settings) -> None:
    await fill_campaign(redis_client, settings, "piped", 20_000)  # ~1.8 MB: far more than a pipe holds
    read_end, write_end = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.cli", "campaign", "export", "piped",
        env={**os.environ, **settings_env(settings)}, stdin=asyncio.subprocess.DEVNULL, stdout=write_end,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:  # `| head -1`: read one line, then go away
        assert reader.readline() == (",".join(COLUMNS) + "\r\n").encode()
    assert proc.stderr is not None
    err = (await asyncio.wait_for(proc.stderr.read(), 60)).decode()
    assert await proc.wait() == commands.EXIT_BROKEN_PIPE
    assert err == "", err  # no traceback, no "Exception ignored ... BrokenPipeError"


# --- dialer demo -------------------------------------------------------------------------------------


async def test_the_demo_export_reconciles_only_when_every_number_was_sent_once_per_call(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    from rich.console import Console

    from worker.demo import _export

    await fill_campaign(redis_client, settings, "d", 40)
    out = io.StringIO()
    console = Console(file=out, width=200)
    assert await _export(console, redis_client, settings, "d", tmp_path, numbers=40, created=40) is True
    path = tmp_path / "d-export.csv"
    assert out.getvalue().splitlines() == [
        f"export: {path}",
        "export tally: 40 rows (sent=40), 40 first calls + 0 redials = 40 calls; simulator created 40: reconciled",
    ]
    assert len(csv_rows(path.read_bytes())) == 40
    out.truncate(0)
    out.seek(0)
    # One call the simulator created that no row accounts for: not reconciled.
    assert await _export(console, redis_client, settings, "d", tmp_path, numbers=40, created=41) is False
    assert out.getvalue().rstrip().endswith("simulator created 41: NOT reconciled")


@pytest.mark.slow
async def test_dialer_demo_ends_by_writing_its_export() -> None:
    rc, out, err = await run_dialer("demo", "--calls", "60", "--rate", "400", env={"DIALER_REDIS_URL": ""},
                                    timeout=60)
    assert rc == 0, out + err
    final = json.loads(out[out.index("{"): out.rindex("}") + 1])
    lines = out.splitlines()
    path = Path(next(line for line in lines if line.startswith("export: ")).removeprefix("export: "))
    try:
        rows = csv_rows(path.read_bytes())
        assert len(rows) == 60 and {r["state"] for r in rows} == {"sent"}
        assert sum(int(r["redials"]) for r in rows) == final["redials"]
        assert [r["called"] for r in rows] == [f"1380{i:07d}" for i in range(60)]  # the demo's file order
        calls = 60 + final["redials"]
        assert (f"export tally: 60 rows (sent=60), 60 first calls + {final['redials']} redials = {calls} calls; "
                f"simulator created {calls}: reconciled") in lines
    finally:
        path.unlink(missing_ok=True)
