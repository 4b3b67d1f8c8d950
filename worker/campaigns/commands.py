"""``dialer campaign ...`` and ``dialer suppress ...`` (registered on the main group in ``worker/cli.py``).

Imports of Redis, pydantic models and rich happen inside the commands, so ``dialer --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from worker.settings import Settings

T = TypeVar("T")
_MAX_REJECTS_SHOWN = 50


def _with_redis(fn: Callable[[Redis, Settings], Awaitable[T]], usage: tuple[type[Exception], ...] = ()) -> T:
    """Run ``fn(redis, settings)`` with a connection of its own; DialerErrors become click errors
    (``usage`` ones exit 2, as a bad option does)."""

    from worker import logs
    from worker.errors import DialerError
    from worker.settings import load_settings
    from worker.store.client import UNREACHABLE, cli_client, unreachable

    try:
        settings = load_settings()
    except DialerError as exc:
        raise click.ClickException(str(exc)) from None
    logs.configure(settings.log_level, settings.log_format)

    async def go() -> T:
        redis = cli_client(settings)
        try:
            return await fn(redis, settings)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(go())
    except usage as exc:
        raise click.UsageError(str(exc)) from None
    except DialerError as exc:
        raise click.ClickException(str(exc)) from None
    except UNREACHABLE as exc:
        raise click.ClickException(unreachable(settings, exc)) from None


@click.group("campaign")
def campaign_group() -> None:
    """Bulk campaigns: launch a file, watch, pause, resume, cancel, delete, export."""


@campaign_group.command("launch")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Campaign name (1-64 of A-Z a-z 0-9 . _ -).")
@click.option("--priority", type=int, default=None, help="Default priority 1..9 for rows without one.")
@click.option("--voice-id", help="Default recording ID.")
@click.option("--template-id", help="Default TTS template ID.")
@click.option("--voice-file-name", help="Default recording file name.")
@click.option("--param", "params", multiple=True, help="Default template parameter (repeat, in order).")
@click.option("--caller-present", help="Default number shown to the callee.")
@click.option("--play-times", type=int, default=None, help="Default times the message plays, 1..5.")
@click.option("--rate", type=float, default=None, help="Calls/s for this campaign (under the fleet limit).")
@click.option("--window", help="Calling window, HH:MM-HH:MM in the callee's time zone (e.g. 09:00-20:00).")
@click.option("--days", help="Weekdays the window opens: mon-fri, sat,sun, all ...")
@click.option("--timezone", help="IANA time zone of the callees, or 'auto': each number's own zone, from the "
              "number (a row's timezone column overrides either).")
@click.option("--default-timezone", help="With --timezone auto: the zone of numbers that map to several zones "
              "or none (without it, such rows are rejected when a window is set).")
@click.option("--deadline", help="ISO 8601 time after which unsent calls expire.")
@click.option("--redial", type=int, default=None,
              help="Redial unanswered calls (releaseReason 4, 6, 8, 9) up to N times; needs DIALER_PUBLIC_URL.")
@click.option("--redial-after", default=None, help="Delay before each redial: 30m (default), 90s, 2h, 1h30m ...")
@click.option("--status-callback-url", default=None,
              help="POST the events of rows without their own statusCallbackUrl here, signed (dialer webhooks; "
              "docs/webhooks.md). Never sent to the provider.")
@click.option("--dry-run", is_flag=True, help="Validate and report only; store nothing.")
@click.option("--strict", is_flag=True, help="All or nothing: enqueue nothing if any row is rejected.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def launch_cmd(file: Path, name: str, priority: int | None, voice_id: str | None, template_id: str | None,
               voice_file_name: str | None, params: tuple[str, ...], caller_present: str | None,
               play_times: int | None, rate: float | None, window: str | None, days: str | None,
               timezone: str | None, default_timezone: str | None, deadline: str | None, redial: int | None,
               redial_after: str | None,
               status_callback_url: str | None, dry_run: bool, strict: bool, as_json: bool,
               progress: bool | None) -> None:
    """Validate FILE (CSV or JSONL), report rejected rows, enqueue the rest as campaign NAME.

    \b
    Exit status:
      0  no row rejected: every row enqueued (or skipped as already enqueued, repeated or on the
         do-not-call list; with --dry-run: would be)
      3  some rows rejected, the others enqueued (with --dry-run: would be)
      4  nothing enqueued: no valid row (the campaign is not created; fix the file and launch again
         under the same name) or --strict refused the file
      2  bad options or an unusable file; 1 any other error (nothing stored in either case)
    """
    from worker.campaigns.launch import LaunchError, LaunchOptions, launch_file

    opts = LaunchOptions(
        name=name, priority=priority, voice_id=voice_id, template_id=template_id, voice_file_name=voice_file_name,
        params=params, caller_present=caller_present, play_times=play_times, rate=rate, window=window, days=days,
        timezone=timezone, default_timezone=default_timezone, deadline=deadline, dry_run=dry_run, strict=strict,
        redial=redial,
        redial_after=redial_after, status_callback_url=status_callback_url,
    )
    show_bar = progress if progress is not None else (sys.stderr.isatty() and not as_json)

    async def go(redis: Redis, settings: Settings) -> Any:
        if not show_bar:
            return await launch_file(redis, settings, file, opts)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeElapsedColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        # The launch streams the file: progress is the bytes read (and stored, two batches behind), on stderr
        # (stdout is the report's).
        with Progress("[bold]launch", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), transient=True, console=Console(stderr=True)) as bar:
            task = bar.add_task("", total=None)

            def tick(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            return await launch_file(redis, settings, file, opts, progress=tick)

    report = _with_redis(go, usage=(LaunchError,))
    if as_json:
        click.echo(json.dumps(report.as_dict(), sort_keys=True))
    else:
        for err in report.rejected[:_MAX_REJECTS_SHOWN]:
            click.echo(f"rejected {err}", err=True)
        if len(report.rejected) > _MAX_REJECTS_SHOWN:
            click.echo(f"... and {len(report.rejected) - _MAX_REJECTS_SHOWN} more (--json lists all)", err=True)
        click.echo(_launch_summary(report))
    sys.exit(launch_exit_status(report))


EXIT_SOME_REJECTED = 3
EXIT_NOTHING_ENQUEUED = 4


def launch_exit_status(report: Any) -> int:
    """``dialer campaign launch``'s exit status for a report: 0, 3 (some rows rejected) or 4 (nothing
    enqueued: no valid row, or --strict refused)."""
    if report.nothing_valid or report.strict_refused:
        return EXIT_NOTHING_ENQUEUED
    return EXIT_SOME_REJECTED if report.rejected else 0


_ZONES_SHOWN = 10


def _launch_summary(report: Any) -> str:
    lines = [f"campaign {report.campaign}: {report.rows} rows, {report.valid} valid, "
             f"{report.rejected_rows} rejected, {report.duplicates_in_file} repeated numbers skipped, "
             f"{report.suppressed} on the do-not-call list"]
    if report.zones:
        top = sorted(report.zones.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{zone} {n}" for zone, n in top[:_ZONES_SHOWN])
        more = f", {len(top) - _ZONES_SHOWN} more zones" if len(top) > _ZONES_SHOWN else ""
        defaulted = f" ({report.zone_defaulted} by --default-timezone)" if report.zone_defaulted else ""
        lines.append(f"time zones: {shown}{more}{defaulted}")
    if report.dry_run:
        lines.append("dry run: nothing stored")
    elif report.strict_refused:
        lines.append("--strict: rows were rejected, nothing enqueued")
    elif report.nothing_valid:
        lines.append("no valid row: nothing enqueued, campaign not created (fix the file and launch again)")
    else:
        lines.append(f"enqueued {report.enqueued} new, {report.already_enqueued} already enqueued "
                     f"in {report.seconds:.2f}s" + (" (campaign created)" if report.campaign_created else ""))
    return "\n".join(lines)


@campaign_group.command("status")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The stable JSON shape (see README).")
def status_cmd(name: str, as_json: bool) -> None:
    """Counts per state and outcome, send rate and ETA of campaign NAME."""
    from worker.campaigns.control import Campaigns

    data = _with_redis(lambda r, s: Campaigns(r, s).status(name))
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
        return
    click.echo(_status_text(data))


def _status_text(d: dict[str, Any]) -> str:
    states = " ".join(f"{k}={v}" for k, v in d["states"].items() if v)
    outcomes = " ".join(f"{k}={v}" for k, v in d["outcomes"].items() if v)
    eta = "-" if d["eta_s"] is None else f"{d['eta_s']}s"
    lines = [
        f"{d['name']}: {d['status']}, {d['total']} jobs, {d['remaining']} remaining"
        + (f" ({d['parked']} parked)" if d["parked"] else ""),
        f"  states:   {states or '-'}",
        f"  outcomes: {outcomes or '-'}" + (f" (redials made: {d['redials']})" if d.get("redials") else ""),
        f"  sending {d['send_rate_per_s']}/s, ETA {eta}",
    ]
    unknown = d.get("unknown") or {}
    if any(unknown.values()):
        lines.insert(3, f"  unknown:  {unknown.get('resolved_by_event', 0)} resolved by release events, "
                        f"{unknown.get('no_evidence', 0)} without evidence after the grace period")
    cfg = dict(d["settings"])
    redial = cfg.pop("redial", None)
    extras = [f"{k}={v}" for k, v in cfg.items() if v not in (None, {}, [])]
    if redial:
        extras.append(f"redial={redial['max']}x after {redial['after_s']:g}s")
    if extras:
        lines.append("  settings: " + " ".join(extras))
    return "\n".join(lines)


@campaign_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of status objects.")
def list_cmd(as_json: bool) -> None:
    """Every campaign, oldest first."""
    from worker.campaigns.control import Campaigns

    data = _with_redis(lambda r, s: Campaigns(r, s).statuses())
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
        return
    for d in data:
        click.echo(f"{d['name']}\t{d['status']}\t{d['total']} jobs\t{d['states']['sent']} sent\t"
                   f"{d['remaining']} remaining")


@campaign_group.command("pause")
@click.argument("name")
def pause_cmd(name: str) -> None:
    """Hold every not-yet-sent job of NAME (calls already in flight finish)."""
    from worker.campaigns.control import Campaigns

    previous = _with_redis(lambda r, s: Campaigns(r, s).pause(name))
    click.echo(f"{name}: paused" + (" (already)" if previous == "paused" else ""))


@campaign_group.command("resume")
@click.argument("name")
def resume_cmd(name: str) -> None:
    """Continue NAME: parked jobs go back on their queues, in order."""
    from worker.campaigns.control import Campaigns

    res = _with_redis(lambda r, s: Campaigns(r, s).resume(name))
    click.echo(f"{name}: active; {res.moved} parked job(s) requeued")
    if res.left:
        click.echo(f"{res.left} job(s) still parked (their runs were finishing): run resume again", err=True)
        sys.exit(1)


@campaign_group.command("cancel")
@click.argument("name")
def cancel_cmd(name: str) -> None:
    """Cancel NAME: every job not yet sent becomes cancelled and is never dialled."""
    from worker.campaigns.control import Campaigns

    n = _with_redis(lambda r, s: Campaigns(r, s).cancel(name))
    click.echo(f"{name}: cancelled; {n} job(s) will not be dialled")


@campaign_group.command("delete")
@click.argument("name")
def delete_cmd(name: str) -> None:
    """Delete campaign NAME if it has no work left (no job queued, sending or parked), freeing the name.

    A campaign with work is refused (exit 1): cancel it first, or wait until its jobs are final. Its
    finished jobs stay in the ledger until their TTL.
    """
    from worker.campaigns.control import Campaigns

    _with_redis(lambda r, s: Campaigns(r, s).delete(name))
    click.echo(f"{name}: deleted")


@campaign_group.command("jobs")
@click.argument("name")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True)
@click.option("--state", "state", default=None, help="Only jobs in this ledger state.")
def jobs_cmd(name: str, limit: int, state: str | None) -> None:
    """Job ids of NAME with their state, in enqueue order (drill-down)."""
    from worker.campaigns.control import Campaigns
    from worker.ledger.transitions import Ledger

    async def go(redis: Redis, settings: Settings) -> list[tuple[str, str]]:
        campaigns, ledger = Campaigns(redis, settings), Ledger(redis, settings)
        out: list[tuple[str, str]] = []
        start = 0
        while len(out) < limit:
            ids = await campaigns.job_ids(name, start, start + 999)
            if not ids:
                break
            for job_id, st in zip(ids, await ledger.states(ids), strict=True):
                if state is None or str(st) == state:
                    out.append((job_id, str(st)))
            start += len(ids)
        return out[:limit]

    rows: list[tuple[str, str]] = _with_redis(go)
    for job_id, st in rows:
        click.echo(f"{job_id}\t{st}")


EXPORT_FORMATS = ("csv", "jsonl")
"""``worker.campaigns.export.FORMATS``, repeated here so ``--help`` does not import Redis (a test keeps them equal)."""
EXIT_BROKEN_PIPE = 141
"""Exit status when stdout closed early (``| head``): 128 + SIGPIPE, what a shell reports for ``cat`` there."""


@campaign_group.command("export")
@click.argument("name")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS, case_sensitive=False), default="csv",
              show_default=True, help="CSV (a header row, RFC 4180) or JSONL (one object per line).")
@click.option("--state", "states", multiple=True, metavar="S",
              help="Only numbers whose latest call is in state S; repeat or comma-separate (--state sent,failed).")
def export_cmd(name: str, fmt: str, states: tuple[str, ...]) -> None:
    """Write campaign NAME to stdout: one row per number, in launch order.

    \b
    Columns: called, job_id, latest_job_id, state, attempts, sent_at, call_serial_no,
    outcome, release_reason, talk_duration_s, redials, last_error, evidence.
    A number's row is its first job; the call fields are its latest call's (its last
    redial, if it had any); redials counts them. Streams in constant memory:

    \b
      dialer campaign export spring > spring.csv
      dialer campaign export spring --format jsonl --state failed,dead | jq .last_error

    A one-line tally (rows per state) goes to stderr. Exit status: 0 done; 1 no such
    campaign or Redis unreachable; 2 a bad option; 141 stdout closed early (| head).
    """
    from worker.campaigns.export import CampaignExport, ExportOptionError, parse_states

    try:
        wanted = parse_states(states)
    except ExportOptionError as exc:
        raise click.BadParameter(exc.rule, param_hint="'--state'") from None
    out = sys.stdout.buffer
    export: CampaignExport | None = None

    async def go(redis: Redis, settings: Settings) -> bool:
        """True when stdout took the whole export, False when it was closed early."""
        nonlocal export
        export = CampaignExport(redis, settings, name, fmt=fmt.lower(), states=wanted)
        stream = export.stream()
        try:
            async for data in stream:
                out.write(data)
            out.flush()
        except BrokenPipeError:
            return False
        finally:
            await stream.aclose()  # no more reads from Redis
        return True

    if not _with_redis(go):
        _stdout_gone()
    assert export is not None
    tally = " ".join(f"{k}={v}" for k, v in sorted(export.by_state.items())) or "-"
    note = f"; {export.missing} number(s) skipped: their records left the ledger (TTL)" if export.missing else ""
    click.echo(f"campaign {name}: {export.rows} rows ({tally}), {export.redials} redials{note}", err=True)


def _stdout_gone() -> None:
    """stdout's reader went away (``| head``): leave quietly, without Python's flush error at exit."""
    import os

    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(EXIT_BROKEN_PIPE)


# --- suppression ----------------------------------------------------------------------------------


@click.group("suppress")
def suppress_group() -> None:
    """The fleet-wide do-not-call list (numbers normalized to E.164: +86..., 0086... and national forms are one).

    Keys are E.164 digits without '+'; numbers without '+' are read in DIALER_DEFAULT_REGION: with CN,
    +8613800000001, 008613800000001 and 13800000001 are one entry (docs/campaigns.md)."""


def _numbers_or_fail(numbers: tuple[str, ...], region: str | None) -> list[str]:
    """The list's keys of NUMBERS; a UsageError (exit 2, nothing written) naming each invalid one."""
    from worker.numbers import number_key

    bad, keys = [], []
    for n in numbers:
        try:
            keys.append(number_key(n, region, strict=False))
        except ValueError as exc:
            bad.append(f"{n!r}: {exc}")
    if bad:
        raise click.UsageError("; ".join(bad))
    return keys


@suppress_group.command("add")
@click.argument("numbers", nargs=-1, required=True)
def suppress_add(numbers: tuple[str, ...]) -> None:
    """Add NUMBERS to the do-not-call list."""
    from worker.campaigns.suppression import Suppression

    n = _with_redis(lambda r, s: Suppression(r, s).add(_numbers_or_fail(numbers, s.default_region)))
    click.echo(f"added {n} number(s)")


@suppress_group.command("remove")
@click.argument("numbers", nargs=-1, required=True)
def suppress_remove(numbers: tuple[str, ...]) -> None:
    """Remove NUMBERS from the do-not-call list."""
    from worker.campaigns.suppression import Suppression

    n = _with_redis(lambda r, s: Suppression(r, s).remove(_numbers_or_fail(numbers, s.default_region)))
    click.echo(f"removed {n} number(s)")


@suppress_group.command("list")
@click.option("--count", is_flag=True, help="Only print how many numbers are listed.")
def suppress_list(count: bool) -> None:
    """Print every listed number (normalized), one per line."""
    from worker.campaigns.suppression import Suppression

    if count:
        click.echo(str(_with_redis(lambda r, s: Suppression(r, s).count())))
        return
    for number in _with_redis(lambda r, s: Suppression(r, s).list()):
        click.echo(number)


@suppress_group.command("import")
@click.argument("file", type=click.File("r", encoding="utf-8-sig"))
def suppress_import(file: Any) -> None:
    """Add every number in FILE (one per line, or a CSV with a called/number/phone column)."""
    from worker.campaigns.suppression import Suppression, read_numbers

    numbers: list[str] = []
    bad: list[tuple[int, str, str]] = []

    async def go(redis: Redis, settings: Settings) -> int:
        numbers[:], bad[:] = read_numbers(file, settings.default_region)
        for line, text, rule in bad[:_MAX_REJECTS_SHOWN]:
            click.echo(f"skipped line {line}: {text!r}: {rule}", err=True)
        return await Suppression(redis, settings).add(numbers)

    n = _with_redis(go)
    click.echo(f"imported {len(numbers)} number(s), {n} new; {len(bad)} line(s) skipped")
    if bad:
        sys.exit(1)
