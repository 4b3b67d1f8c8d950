"""The ``dialer`` command.

``dialer --help`` and ``dialer COMMAND --help`` import neither arq, redis nor pydantic (tests/test_imports.py):
a command imports what it needs when it runs, and the commands other packages own are imported only
when named (see :class:`_MainGroup`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TextIO, TypeVar

import click

if TYPE_CHECKING:
    from worker.settings import Settings

T = TypeVar("T")


def _settings() -> Settings:
    from worker.errors import SettingsError
    from worker.settings import load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def _run(coro_fn: Callable[[Settings], Awaitable[T]]) -> T:
    settings = _settings()
    from worker import logs

    logs.configure(settings.log_level, settings.log_format)
    from worker.errors import NotReplicated
    from worker.store.client import UNREACHABLE, unreachable

    try:
        return asyncio.run(coro_fn(settings))  # type: ignore[arg-type]
    except UNREACHABLE as exc:
        raise click.ClickException(unreachable(settings, exc)) from None
    except NotReplicated as exc:
        raise click.ClickException(str(exc)) from None


class _Lazy(NamedTuple):
    module: str
    attribute: str
    help: str  # the command's help (its docstring), shortened by click for `dialer --help`; tested equal


# Commands owned by other packages: imported when named, so `dialer --help` does not load their modules.
_LAZY_COMMANDS: dict[str, _Lazy] = {
    "campaign": _Lazy("worker.campaigns.commands", "campaign_group",
                      "Bulk campaigns: launch a file, watch, pause, resume, cancel, delete, export."),
    "serve": _Lazy("worker.http.commands", "serve",
                   "Run the HTTP service: enqueue API (/v1), /metrics, /healthz, /readyz and the dashboard (/)."),
    "suppress": _Lazy("worker.campaigns.commands", "suppress_group",
                      "The fleet-wide do-not-call list (numbers normalized to E.164: +86..., 0086... and national "
                      "forms are one)."),
    "webhooks": _Lazy("worker.webhooks.commands", "webhooks_group",
                      "Deliver each job's events to its statusCallbackUrl, signed; status and dead letters."),
}


class _MainGroup(click.Group):
    """A click group that imports the commands of :data:`_LAZY_COMMANDS` only when one is named."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        lazy = _LAZY_COMMANDS.get(cmd_name)
        if lazy is not None and cmd_name not in self.commands:
            command = getattr(importlib.import_module(lazy.module), lazy.attribute)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # click's own, except that a lazy command not imported yet is listed with the help given for it.
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        rows = []
        for name in names:
            if name in _LAZY_COMMANDS and name not in self.commands:
                stand_in = click.Command(name, help=_LAZY_COMMANDS[name].help)
                rows.append((name, stand_in.get_short_help_str(limit)))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_MainGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """voice-dialer: bulk outbound voice-notification calls (Huawei Cloud CEC) on Redis + arq.

    Every setting is a DIALER_* environment variable (or a line of .env); see the README.
    """


# --- worker ---------------------------------------------------------------------------------------


@main.command()
@click.option("--queues", default="all", show_default=True, help="Priorities to serve: all, 1-3, 1,2,9 ...")
@click.option("--burst", is_flag=True, help="Exit when every served queue is empty.")
@click.option("--concurrency", type=click.IntRange(1, 10_000), default=None,
              help="Jobs run at once per queue [DIALER_WORKER_CONCURRENCY].")
@click.option("--check", is_flag=True, help="Health check: exit 0 if workers of these queues are alive.")
def worker(queues: str, burst: bool, concurrency: int | None, check: bool) -> None:
    """Run a worker process: one arq Worker per served priority queue."""
    from worker.dispatch.process import check_health, parse_queues, run_process

    try:
        levels = parse_queues(queues)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--queues") from None
    if check:
        ok = _run(lambda s: check_health(s, levels))
        click.echo("healthy" if ok else "unhealthy: no live worker heartbeat for every queue")
        sys.exit(0 if ok else 1)
    _run(lambda s: run_process(s, levels, burst=burst, concurrency=concurrency))


# --- enqueue --------------------------------------------------------------------------------------


def _json_items(stream: TextIO) -> Iterator[tuple[int, Any]]:
    """One JSON object, or JSONL: yields (line number, parsed value or the JSON error)."""
    try:
        text = stream.read()
    except UnicodeDecodeError:
        raise click.ClickException("--json: the input is not UTF-8 text; nothing was enqueued") from None
    stripped = text.strip()
    if not stripped:
        return
    try:
        whole = json.loads(stripped)
    except (ValueError, RecursionError):  # bad JSON, an integer over 4,300 digits, absurd nesting
        whole = None
    if isinstance(whole, dict):
        yield 1, whole
        return
    if isinstance(whole, list):
        yield from enumerate(whole, start=1)
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except (ValueError, RecursionError) as exc:
                yield n, ValueError(str(exc)[:200] or type(exc).__name__)


@main.command()
@click.option("--called", help="Number to call.")
@click.option("--voice-id", help="Recording ID for the play list.")
@click.option("--voice-file-name", help="Recording file name.")
@click.option("--template-id", help="TTS template ID.")
@click.option("--param", "params", multiple=True, help="Template parameter (repeat, in order).")
@click.option("--priority", type=click.IntRange(1, 9), default=None, help="1 (most urgent) .. 9 (default).")
@click.option("--caller-present", help="Number shown to the callee (CLIP).")
@click.option("--play-times", type=int, default=None, help="Times the message plays, 1..5.")
@click.option("--callback-url", help="URL the provider POSTs the release event to.")
@click.option("--id", "job_id", help="Idempotency key: enqueuing the same id again is a no-op. No ':' "
              "(ids with ':' are the dialer's own: <campaign>:<number>, <id>:r<k>).")
@click.option("--campaign", help="Campaign name (job id defaults to <campaign>:<number>).")
@click.option("--status-callback-url", help="POST this job's events here, signed (dialer webhooks; "
              "docs/webhooks.md). Never sent to the provider.")
@click.option("--json", "json_file", type=click.File("r"), default=None,
              help="Seed-shaped bodies: one JSON object, a JSON array, or JSONL; '-' for stdin. "
              "An 'id' key in a body is its idempotency key, a 'statusCallbackUrl' key its own URL.")
def enqueue(called: str | None, voice_id: str | None, voice_file_name: str | None, template_id: str | None,
            params: tuple[str, ...], priority: int | None, caller_present: str | None,
            play_times: int | None, callback_url: str | None, job_id: str | None, campaign: str | None,
            status_callback_url: str | None, json_file: TextIO | None) -> None:
    """Enqueue calls. Prints one line per job: its id and whether it was new."""
    from worker.ledger.producer import CallJob, Producer
    from worker.store.client import cli_client

    jobs: list[CallJob] = []
    problems: list[str] = []
    if json_file is not None:
        if called:
            raise click.UsageError("use either --json or --called, not both")
        for n, item in _json_items(json_file):
            if isinstance(item, Exception):
                problems.append(f"line {n}: body: not valid JSON ({item})")
            elif not isinstance(item, dict):
                problems.append(f"line {n}: body: must be a JSON object")
            else:
                body = dict(item)
                key = body.pop("id", None)
                scb = body.pop("statusCallbackUrl", None)
                jobs.append(CallJob(request=body, job_id=None if key is None else str(key), campaign=campaign,
                                    status_callback_url=None if scb is None else str(scb)))
    else:
        if not called:
            raise click.UsageError("--called is required (or --json FILE)")
        item_body: dict[str, Any] = {}
        if voice_id:
            item_body["voiceId"] = voice_id
        if voice_file_name:
            item_body["voiceFileName"] = voice_file_name
        if template_id:
            item_body["templateId"] = template_id
        if params:
            item_body["templateParams"] = list(params)
        body = {"called": called, "playList": [item_body]}
        for key, value in (("priority", None if priority is None else str(priority)),
                           ("callerPresent", caller_present), ("playTimes", play_times),
                           ("callBackUrl", callback_url)):
            if value is not None:
                body[key] = value
        jobs.append(CallJob(request=body, job_id=job_id, campaign=campaign))
    jobs = [job if job.status_callback_url is not None or status_callback_url is None
            else dataclasses.replace(job, status_callback_url=status_callback_url) for job in jobs]

    if problems:
        for p in problems:
            click.echo(f"rejected {p}", err=True)
        raise click.ClickException(f"{len(problems)} item(s) are not valid JSON objects; nothing was enqueued")

    async def go(settings: Settings) -> int:
        pool = cli_client(settings)
        try:
            results = await Producer(pool, settings).enqueue_many(jobs)
        finally:
            await pool.aclose()
        rejected = 0
        for r in results:
            if r.status == "rejected":
                rejected += 1
                where = f"item {(r.index or 0) + 1}"
                for e in r.errors:
                    click.echo(f"rejected {where}: {e.field}: {e.rule}", err=True)
            elif r.status == "duplicate":
                click.echo(f"{r.job_id}\tduplicate (already {r.state}; nothing enqueued)")
            else:
                click.echo(f"{r.job_id}\tnew ({r.state})")
        return rejected

    rejected = _run(go)
    if rejected:
        sys.exit(1)


# --- job & dead letters ---------------------------------------------------------------------------


@main.command()
@click.argument("job_id")
def job(job_id: str) -> None:
    """Show one job's ledger record as JSON."""
    from worker.ledger.transitions import Ledger
    from worker.store.client import cli_client

    async def go(settings: Settings) -> dict[str, Any] | None:
        pool = cli_client(settings)
        try:
            record = await Ledger(pool, settings).get(job_id)
        finally:
            await pool.aclose()
        return None if record is None else record.as_dict()

    data = _run(go)
    if data is None:
        raise click.ClickException(f"no job {job_id!r} in the ledger")
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@main.command()
@click.option("--campaign", default=None, help="Only this campaign's events.")
@click.option("--type", "types", multiple=True, help="Only events of this type (repeatable): queued, retrying, "
              "sent, failed, dead, unknown, cancelled, expired, suppressed, outcome, redial, no_evidence.")
@click.option("--since", default="0", show_default=True,
              help="Events after this id (as printed: 1733400000000-0); 0 = the oldest kept, $ = only new ones.")
@click.option("--follow", "-f", is_flag=True, help="Then wait for new events and print them as they come.")
def events(campaign: str | None, types: tuple[str, ...], since: str, follow: bool) -> None:
    """Print the event stream (one JSON object per line): what happened to each job, in order."""
    from worker.ledger.events import EVENT_TYPES
    from worker.ledger.events import events as read_events
    from worker.store.client import cli_client

    bad = [t for t in types if t not in EVENT_TYPES]
    if bad:
        raise click.BadParameter(f"{bad[0]!r}: must be one of {', '.join(EVENT_TYPES)}", param_hint="--type")
    if since not in ("0", "$") and not _STREAM_ID.fullmatch(since):
        raise click.BadParameter("must be an event id such as 1733400000000-0 (or 1733400000000), 0 or $",
                                 param_hint="--since")

    async def go(settings: Settings) -> None:
        pool = cli_client(settings, blocking=follow)
        try:
            async for event in read_events(pool, settings, campaign=campaign, since=since, follow=follow,
                                           types=types):
                click.echo(json.dumps(event.as_dict(), separators=(",", ":")))
        finally:
            await pool.aclose()

    try:
        _run(go)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:
        # `dialer events | head`: the reader left; say nothing more (stdout is gone).
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # the closed stdout, replaced for the interpreter's exit


_STREAM_ID = re.compile(r"[0-9]{1,20}(?:-[0-9]{1,20})?")


@main.group("dead-letter")
def dead_letter() -> None:
    """Jobs that exhausted their retries."""


@dead_letter.command("list")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def dead_list(limit: int, as_json: bool) -> None:
    """List dead-lettered jobs with their last error."""
    from worker.ledger.transitions import Ledger
    from worker.store.client import cli_client

    async def go(settings: Settings) -> list[dict[str, Any]]:
        pool = cli_client(settings)
        try:
            return [r.as_dict() for r in await Ledger(pool, settings).list_dead(limit)]
        finally:
            await pool.aclose()

    for rec in _run(go):
        if as_json:
            click.echo(json.dumps(rec, sort_keys=True))
        else:
            click.echo(f"{rec['id']}\tp{rec['priority']}\t{rec['called']}\t{rec.get('last_error') or ''}")


@dead_letter.command("requeue")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Requeue every dead-lettered job.")
def dead_requeue(job_ids: tuple[str, ...], all_: bool) -> None:
    """Put dead-lettered jobs back on their queues (attempts start again)."""
    from worker.ledger.producer import Producer
    from worker.store.client import cli_client

    if not job_ids and not all_:
        raise click.UsageError("give JOB_ID(s) or --all")

    async def go(settings: Settings) -> tuple[int, list[str]]:
        pool = cli_client(settings)
        try:
            producer = Producer(pool, settings)
            if all_:
                return await producer.requeue_dead(), []
            missing = [j for j in job_ids if not await producer.requeue(j)]
            return len(job_ids) - len(missing), missing
        finally:
            await pool.aclose()

    count, missing = _run(go)
    click.echo(f"requeued {count} job(s)")
    for j in missing:
        click.echo(f"not requeued: {j} (unknown, or not dead/failed/unknown)", err=True)
    if missing:
        sys.exit(1)


# --- simulator ------------------------------------------------------------------------------------


def _ret_code_rates(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, float]:
    """``--ret-code 16=0.1 --ret-code 3=0.05`` as ``{"16": 0.1, "3": 0.05}`` (codes checked by SimulatorConfig)."""
    rates: dict[str, float] = {}
    for value in values:
        code, sep, rate = value.partition("=")
        try:
            number = float(rate)
        except ValueError:
            number = -1.0
        if not sep or not code.strip() or not 0 <= number <= 1:
            raise click.BadParameter(f"{value!r}: write CODE=RATE, a retCode and a fraction from 0 to 1 (16=0.1)")
        if code.strip() in rates:
            raise click.BadParameter(f"retCode {code.strip()} is given twice")
        rates[code.strip()] = number
    return rates


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8090, show_default=True)
@click.option("--latency-ms", type=float, default=0.0, show_default=True)
@click.option("--jitter-ms", type=float, default=0.0, show_default=True)
@click.option("--fail-500-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--retcode1-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--hang-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True)
@click.option("--max-rps", type=float, default=None)
@click.option("--token-lifetime-s", type=int, default=None, help="Force this token lifetime.")
@click.option("--ret-code", "ret_code_rates", metavar="CODE=RATE", multiple=True, callback=_ret_code_rates,
              help="Answer retCode CODE to this fraction of requests (repeatable; any non-zero retCode of "
              "provider-api.md §2).")
@click.option("--callbacks/--no-callbacks", default=False,
              help="POST release events to callBackUrl, signed with DIALER_CALLBACK_SHARED_KEY when set.")
@click.option("--callback-signature-spaces", type=click.Choice(["keep", "strip"]), default=None,
              help="Spaces in the signed string [DIALER_CALLBACK_SIGNATURE_SPACES].")
@click.option("--app-key", default=None, help="Accepted AK [DIALER_APP_KEY].")
def simulator(host: str, port: int, latency_ms: float, jitter_ms: float, fail_500_rate: float,
              retcode1_rate: float, hang_rate: float, max_rps: float | None, token_lifetime_s: int | None,
              ret_code_rates: dict[str, float], callbacks: bool,
              callback_signature_spaces: Literal["keep", "strip"] | None,
              app_key: str | None) -> None:
    """Run the provider simulator (a sandbox CEC) for demos, tests and benchmarks.

    More behaviours (an allowlist, answers without retCode, an account refused...) are set at run
    time with POST /_sim/config; see worker/sandbox/simulator.py.
    """
    from worker import logs
    from worker.sandbox.simulator import SimulatorConfig, run

    settings = _settings()
    logs.configure(settings.log_level, settings.log_format)
    try:
        config = SimulatorConfig(
            app_key=app_key or settings.app_key,
            app_secret=settings.app_secret.get_secret_value(),
            latency_ms=latency_ms, jitter_ms=jitter_ms, fail_500_rate=fail_500_rate, retcode1_rate=retcode1_rate,
            hang_rate=hang_rate, max_rps=max_rps, token_lifetime_s=token_lifetime_s, callbacks=callbacks,
            ret_code_rates=ret_code_rates, callback_url_base64=settings.callback_url_base64,
            # Signed like the provider, so `dialer serve` with the same DIALER_CALLBACK_SHARED_KEY accepts them.
            callback_shared_key=None if settings.callback_shared_key is None
            else settings.callback_shared_key.get_secret_value(),
            callback_signature_mode=settings.callback_signature_mode,
            callback_signature_spaces=callback_signature_spaces or settings.callback_signature_spaces,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    run(host, port, config)


@main.command()
@click.option("--calls", type=click.IntRange(1, 1_000_000), default=2000, show_default=True)
@click.option("--workers", type=click.IntRange(1, 32), default=2, show_default=True)
@click.option("--rate", type=click.FloatRange(0.1), default=200.0, show_default=True, help="Calls/s limit.")
@click.option("--latency-ms", type=float, default=40.0, show_default=True, help="Simulated provider latency.")
def demo(calls: int, workers: int, rate: float, latency_ms: float) -> None:
    """Run a whole local system (Redis, simulator, workers) and a sample campaign, then clean up."""
    from worker.demo import DemoOptions, run_demo

    opts = DemoOptions(calls=calls, workers=workers, rate=rate, latency_ms=latency_ms)
    sys.exit(asyncio.run(run_demo(None, opts)))  # never the environment's settings: its own Redis


if __name__ == "__main__":
    main()
