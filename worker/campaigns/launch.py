"""Launch a campaign from a CSV or JSONL file: validate every row, report, then enqueue the good ones.

::

    opts = LaunchOptions(name="spring", template_id="tpl-1", rate=20, window="09:00-20:00",
                         days="mon-fri", timezone="Europe/Paris")
    report = await launch_file(redis, settings, Path("numbers.csv"), opts)
    report.enqueued, report.rejected_rows, report.suppressed

Files:

* CSV with a header row. ``called`` is required; optional columns ``priority``, ``callerPresent``,
  ``templateParams`` (``|``-separated), ``voiceId``, ``templateId``, ``voiceFileName``, ``playTimes``,
  ``id`` (idempotency key, without ':'; default ``<campaign>:<number>``), ``timezone`` (the callee's IANA zone,
  overriding ``--timezone``) and ``statusCallbackUrl`` (where this row's events are POSTed, overriding
  ``--status-callback-url``). An unknown column refuses the whole file (a typo would drop data silently).
* JSONL (``.jsonl``/``.ndjson``/``.json``, or a file starting with ``{``): one seed-shaped request body
  per line, plus optional ``id``, ``timezone`` and ``statusCallbackUrl`` keys.

Options give defaults for what rows leave out. A row that names any of ``voiceId``/``templateId``/
``voiceFileName`` uses only its own sources; ``templateParams`` in a row replaces ``--param``. In
``called``, spaces, ``-``, ``.``, ``(`` and ``)`` are removed before validation.

From memory (the HTTP API): :func:`launch_text` takes the text of a CSV or JSONL file, :func:`launch_rows`
a list of JSONL-shaped dicts (row ``n`` of the report is ``rows[n - 1]``); everything else is the same.

Callbacks and redials: when ``DIALER_PUBLIC_URL`` is set, every row without its own ``callBackUrl`` gets
``<public url>/v1/callbacks/release`` (stored in the job's body, so ``dialer job`` shows it), and the
campaign may redial unanswered calls (``redial``/``redial_after``, see :mod:`worker.campaigns.outcomes`;
refused without a public URL, since no outcome would ever arrive).

Order of work: options are checked first (an error names the flag; nothing is read or stored); every
row is validated (rejections name the line, field and rule); with ``dry_run`` it stops there; with
``strict`` one rejected row stops it; with no valid row it stops too (``nothing_valid``: the campaign is
not created, so a corrected file can be launched under the same name); the campaign is created (or
found with the same settings);
suppressed numbers are skipped; rows are enqueued in pipelined chunks. A number (after
normalization, see :mod:`~worker.campaigns.suppression`) appears once per campaign: a repeat in the file
is reported and skipped, and a re-run of the same launch enqueues nothing twice, since job ids are
derived from the campaign and the number.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import gc
import io
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from redis.asyncio import Redis

from worker.callback_url import for_job, url_problem
from worker.campaigns.control import CampaignError, Campaigns, CampaignSpec, valid_name
from worker.campaigns.outcomes import RedialPolicy, callback_url
from worker.campaigns.suppression import Suppression
from worker.errors import FieldError
from worker.ledger.producer import CallJob, Producer
from worker.models import CallRequest, PlayItem, field_errors
from worker.rules import (
    PRODUCER_ID_RULE,
    normalize_number,
    strip_number_formatting,
    valid_job_id,
    valid_producer_id,
    valid_timezone,
)
from worker.settings import Settings
from worker.status_callback import url_problem as status_callback_problem
from worker.windows import WindowError, parse_days, parse_hours

__all__ = [
    "LaunchError", "LaunchOptions", "LaunchReport", "RowError", "check_options", "launch_file", "launch_rows",
    "launch_text", "read_rows",
]

CSV_COLUMNS = ("called", "priority", "callerPresent", "templateParams", "voiceId", "templateId",
               "voiceFileName", "playTimes", "id", "timezone", "statusCallbackUrl")
_SOURCES = ("voiceId", "templateId", "voiceFileName")
_ENQUEUE_CHUNK = 10_000


class LaunchError(CampaignError):
    """Launch options refused before anything was read or stored; ``errors`` name each flag."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


@dataclass(frozen=True)
class LaunchOptions:
    """The ``dialer campaign launch`` options (flags give defaults for what rows leave out)."""

    name: str
    priority: int | None = None
    voice_id: str | None = None
    template_id: str | None = None
    voice_file_name: str | None = None
    params: tuple[str, ...] = ()
    caller_present: str | None = None
    play_times: int | None = None
    rate: float | None = None
    window: str | None = None
    days: str | None = None
    timezone: str | None = None
    deadline: str | None = None
    dry_run: bool = False
    strict: bool = False
    redial: int | None = None
    """Redial unanswered calls (releaseReason 4, 6, 8, 9) up to this many times (1..10)."""
    redial_after: str | float | None = None
    """Delay before each redial: ``30m``, ``90s``, ``2h``, ``1h30m`` or seconds (default 30m)."""
    status_callback_url: str | None = None
    """Where ``dialer webhooks`` POSTs the events of rows without a ``statusCallbackUrl`` of their own."""


@dataclass(frozen=True)
class RowError:
    """One refused row: its line in the file, the field (CSV column or seed path) and the rule."""

    line: int
    field: str
    rule: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.rule}"


@dataclass
class LaunchReport:
    """What a launch did. ``as_dict()`` is the ``--json`` shape (documented in the README)."""

    campaign: str
    file: str
    rows: int = 0
    valid: int = 0
    rejected: list[RowError] = field(default_factory=list)
    duplicates_in_file: int = 0
    suppressed: int = 0
    enqueued: int = 0
    already_enqueued: int = 0
    dry_run: bool = False
    strict_refused: bool = False
    nothing_valid: bool = False
    """No row was valid: nothing was stored and the campaign was not created (its name stays free)."""
    campaign_created: bool = False
    seconds: float = 0.0

    @property
    def rejected_rows(self) -> int:
        return len({e.line for e in self.rejected})

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "file": self.file,
            "rows": self.rows,
            "valid": self.valid,
            "rejected_rows": self.rejected_rows,
            "rejected": [{"line": e.line, "field": e.field, "rule": e.rule} for e in self.rejected],
            "duplicates_in_file": self.duplicates_in_file,
            "suppressed": self.suppressed,
            "enqueued": self.enqueued,
            "already_enqueued": self.already_enqueued,
            "dry_run": self.dry_run,
            "strict_refused": self.strict_refused,
            "nothing_valid": self.nothing_valid,
            "campaign_created": self.campaign_created,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    request: CallRequest
    job_id: str
    number: str
    timezone: str | None
    given_id: str | None
    """The row's own ``id``; None: the producer derives ``job_id`` (``<campaign>:<number>``) itself."""
    status_callback_url: str | None = None
    """The row's own statusCallbackUrl (None: the campaign's is used, and nothing is stored per job)."""


Progress = Callable[[int, int], None]
"""Called with (rows enqueued so far, rows to enqueue)."""

RowItem = tuple[int, dict[str, Any] | None, str | None, str | None, str | None, list[FieldError]]
"""(line, body, id, timezone, statusCallbackUrl, errors) of one data row."""


def check_options(
    opts: LaunchOptions, now: datetime | None = None, *, callback: str | None = None, callback_base64: bool = False,
    allow_private: bool = False,
) -> tuple[CampaignSpec, list[FieldError]]:
    """Validate the flags; errors name the flag (``--rate``, ``--window`` ...). ``callback`` is the
    callBackUrl rows get (:func:`~worker.campaigns.outcomes.callback_url`), None without a public URL.
    ``allow_private``: DIALER_WEBHOOK_ALLOW_PRIVATE, for ``--status-callback-url``."""
    now = now or datetime.now(UTC)
    errors: list[FieldError] = []
    if opts.status_callback_url is not None and (
        problem := status_callback_problem(opts.status_callback_url, allow_private=allow_private)
    ) is not None:
        errors.append(FieldError("--status-callback-url", problem))
    policy, problems = RedialPolicy.build(opts.redial, opts.redial_after)
    errors += [FieldError("--" + option.replace("_", "-"), rule) for option, rule in problems]
    if opts.redial is not None and callback is None:
        errors.append(FieldError("--redial", "redials need result callbacks: set DIALER_PUBLIC_URL to the URL "
                                             "at which the provider reaches `dialer serve`"))
    if callback is not None and valid_name(opts.name):
        # Each row's callBackUrl carries its job id, <name>:<number>: refuse the launch when not even the
        # shortest number would fit, rather than every row (longer numbers are refused row by row).
        problem = url_problem(for_job(callback, f"{opts.name}:0"), base64=callback_base64)
        if problem is not None:
            errors.append(FieldError("DIALER_PUBLIC_URL", f"the callBackUrl {callback}/<job id> {problem}"))
    if not valid_name(opts.name):
        errors.append(FieldError("--name", "must be 1-64 characters of A-Z a-z 0-9 . _ -"))
    if opts.priority is not None and not 1 <= opts.priority <= 9:
        errors.append(FieldError("--priority", "must be 1..9"))
    if opts.rate is not None and not (opts.rate > 0 and opts.rate < 1e6):
        errors.append(FieldError("--rate", "must be a number of calls per second > 0"))
    if opts.window is not None:
        try:
            parse_hours(opts.window)
        except WindowError as exc:
            errors.append(FieldError("--window", str(exc)))
    if opts.days is not None:
        try:
            parse_days(opts.days)
        except WindowError as exc:
            errors.append(FieldError("--days", str(exc)))
    tz_ok = opts.timezone is None or valid_timezone(opts.timezone)
    if not tz_ok:
        errors.append(FieldError("--timezone", "must be an IANA time zone such as Europe/Paris"))
    elif opts.timezone is None and (opts.window is not None or opts.days is not None):
        errors.append(FieldError("--timezone", "is required with --window/--days (the callees' local time; "
                                               "a row's timezone column overrides it)"))
    deadline_ms = None
    if opts.deadline is not None:
        try:
            dl = datetime.fromisoformat(opts.deadline.strip())
        except ValueError:
            errors.append(FieldError("--deadline", "must be an ISO 8601 time, e.g. 2025-06-01T18:00:00+02:00"))
        else:
            if dl.utcoffset() is None:
                if opts.timezone is not None and tz_ok:
                    dl = dl.replace(tzinfo=ZoneInfo(opts.timezone))
                else:
                    errors.append(FieldError("--deadline", "needs a UTC offset (…+02:00 or …Z) or --timezone"))
            if dl.utcoffset() is not None:
                if dl <= now:
                    errors.append(FieldError("--deadline", "is in the past"))
                deadline_ms = int(dl.timestamp() * 1000)
    if opts.play_times is not None and not 1 <= opts.play_times <= 5:
        errors.append(FieldError("--play-times", "must be 1..5"))
    if opts.caller_present is not None and not 1 <= len(opts.caller_present) <= 32:
        errors.append(FieldError("--caller-present", "must be 1-32 characters"))
    defaults = _defaults(opts)
    item = {k: v for k, v in defaults.items() if k in (*_SOURCES, "templateParams")}
    if item:
        try:
            PlayItem.model_validate(item)
        except ValidationError as exc:
            flag = {"voiceId": "--voice-id", "templateId": "--template-id", "voiceFileName": "--voice-file-name",
                    "templateParams": "--param"}
            for e in field_errors(exc):
                name = flag.get(e.field.split("[")[0].split(".")[0], "--voice-id/--template-id/--voice-file-name")
                errors.append(FieldError(name, e.rule))
    spec = CampaignSpec(
        priority=opts.priority, defaults=defaults, rate=opts.rate, window=opts.window, days=opts.days,
        timezone=opts.timezone, deadline_ms=deadline_ms, callback_url=callback,
        redial=policy.as_spec() if policy is not None else None, status_callback_url=opts.status_callback_url,
    )
    return spec, errors


def _defaults(opts: LaunchOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (("voiceId", opts.voice_id), ("templateId", opts.template_id),
                       ("voiceFileName", opts.voice_file_name), ("callerPresent", opts.caller_present),
                       ("playTimes", opts.play_times)):
        if value is not None:
            out[key] = value
    if opts.params:
        out["templateParams"] = list(opts.params)
    return out


def _clean_called(value: Any) -> Any:
    return strip_number_formatting(value) if isinstance(value, str) else value


def _csv_body(row: dict[str, str], spec: CampaignSpec) -> tuple[dict[str, Any], list[FieldError]]:
    errors: list[FieldError] = []
    d = spec.defaults
    item: dict[str, Any] = {}
    own_sources = {k: row[k] for k in _SOURCES if row.get(k)}
    for k in _SOURCES:
        if own_sources:
            if k in own_sources:
                item[k] = own_sources[k]
        elif k in d:
            item[k] = d[k]
    params = row.get("templateParams")
    if params:
        item["templateParams"] = params.split("|")
    elif "templateParams" in d:
        item["templateParams"] = d["templateParams"]
    body: dict[str, Any] = {"called": _clean_called(row.get("called") or ""), "playList": [item]}
    caller = row.get("callerPresent") or d.get("callerPresent")
    if caller:
        body["callerPresent"] = caller
    play = row.get("playTimes")
    if play:
        try:
            body["playTimes"] = int(play)
        except ValueError:
            errors.append(FieldError("playTimes", "must be a whole number 1..5"))
    elif "playTimes" in d:
        body["playTimes"] = d["playTimes"]
    prio = row.get("priority") or (str(spec.priority) if spec.priority is not None else None)
    if prio:
        body["priority"] = prio.strip()
    if spec.callback_url is not None:
        body["callBackUrl"] = spec.callback_url
    return body, errors


def _jsonl_body(data: dict[str, Any], spec: CampaignSpec) -> dict[str, Any]:
    d = spec.defaults
    body = dict(data)
    if "called" in body:
        body["called"] = _clean_called(body["called"])
    if "playList" not in body:
        body["playList"] = [{k: d[k] for k in (*_SOURCES, "templateParams") if k in d}]
    for key in ("callerPresent", "playTimes"):
        if key not in body and key in d:
            body[key] = d[key]
    if "priority" not in body and spec.priority is not None:
        body["priority"] = str(spec.priority)
    if "callBackUrl" not in body and spec.callback_url is not None:
        body["callBackUrl"] = spec.callback_url
    return body


def _csv_field(path: str) -> str:
    """A seed path of a CSV-built body back to the CSV column (``playList[0].templateParams[1]``)."""
    if path.startswith("playList[0]."):
        return path.removeprefix("playList[0].")
    if path in ("playList[0]", "playList"):
        return "voiceId/templateId/voiceFileName"
    return path


def _is_jsonl(path: Path, head: str) -> bool:
    return path.suffix.lower() in (".jsonl", ".ndjson", ".json") or head.lstrip().startswith("{")


def read_rows(path: Path, spec: CampaignSpec) -> Iterator[RowItem]:
    """Yield (line, body, id, timezone, errors) per data row; raises LaunchError for a file-level
    problem (unreadable, no ``called`` column, unknown column)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LaunchError([FieldError("FILE", f"cannot be read: {exc}")]) from None
    yield from _text_rows(text, spec, _is_jsonl(path, text[:200]))


def _json_item(n: int, data: Any, spec: CampaignSpec) -> RowItem:
    """One JSONL line or JSON row, already parsed: a seed-shaped body plus optional ``id``/``timezone``/
    ``statusCallbackUrl``."""
    if not isinstance(data, dict):
        return n, None, None, None, None, [FieldError("body", "must be a JSON object")]
    data = dict(data)
    job_id = data.pop("id", None)
    tz = data.pop("timezone", None)
    scb = data.pop("statusCallbackUrl", None)
    errors = []
    if job_id is not None and not isinstance(job_id, str):
        errors.append(FieldError("id", "must be a string"))
        job_id = None
    if tz is not None and not isinstance(tz, str):
        errors.append(FieldError("timezone", "must be a string"))
        tz = None
    if scb is not None and not isinstance(scb, str):
        errors.append(FieldError("statusCallbackUrl", "must be a string"))
        scb = None
    return n, _jsonl_body(data, spec), job_id, tz, scb, errors


def json_rows(rows: Iterable[Any], spec: CampaignSpec) -> Iterator[RowItem]:
    """Rows given as parsed JSON (the HTTP API): row ``n`` (from 1) is the n-th item."""
    for n, data in enumerate(rows, start=1):
        yield _json_item(n, data, spec)


def _text_rows(text: str, spec: CampaignSpec, jsonl: bool) -> Iterator[RowItem]:
    if jsonl:
        for n, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
            except (ValueError, RecursionError) as exc:
                # ValueError also covers numbers too long to convert (over 4,300 digits).
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else (
                    "nested too deeply" if isinstance(exc, RecursionError) else "a number is too long")
                yield n, None, None, None, None, [FieldError("body", f"not valid JSON ({msg})")]
                continue
            yield _json_item(n, data, spec)
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise LaunchError([FieldError("FILE", f"is not valid CSV ({exc})")]) from None
    reader.fieldnames = header
    if "called" not in header:
        raise LaunchError([FieldError("FILE", "CSV header must have a 'called' column")])
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        raise LaunchError([FieldError("FILE", f"unknown CSV column(s) {', '.join(map(repr, unknown))}; "
                                              f"known: {', '.join(CSV_COLUMNS)}")])
    row: dict[str | None, Any]
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error as exc:
            raise LaunchError([FieldError("FILE", f"line {reader.line_num}: is not valid CSV ({exc})")]) from None
        line = reader.line_num
        values = {k: (v or "").strip() if isinstance(v, str) else "" for k, v in row.items() if isinstance(k, str)}
        if None in row:
            yield line, None, None, None, None, [FieldError("row", "has more cells than the header")]
            continue
        if not any(values.values()):
            continue
        body, errors = _csv_body(values, spec)
        yield (line, body, values.get("id") or None, values.get("timezone") or None,
               values.get("statusCallbackUrl") or None, errors)


def _validate_rows(
    items: Iterable[RowItem], csv_mode: bool, opts: LaunchOptions, report: LaunchReport, allow_private: bool = False
) -> list[_Row]:
    rows: list[_Row] = []
    first_line: dict[str, int] = {}
    for line, body, job_id, tz, scb, pre_errors in items:
        report.rows += 1
        errors = list(pre_errors)
        request = None
        if body is not None:
            try:
                request = CallRequest.model_validate(body)
            except ValidationError as exc:
                errors += [FieldError(_csv_field(e.field) if csv_mode else e.field, e.rule) for e in field_errors(exc)]
        if job_id is not None and not valid_producer_id(job_id):
            errors.append(FieldError("id", PRODUCER_ID_RULE))
        if tz is not None and not valid_timezone(tz):
            errors.append(FieldError("timezone", "must be an IANA time zone such as Europe/Paris"))
        if scb is not None and (problem := status_callback_problem(scb, allow_private=allow_private)) is not None:
            errors.append(FieldError("statusCallbackUrl", problem))
        if errors or request is None:
            report.rejected += [RowError(line, e.field, e.rule) for e in errors]
            continue
        number = normalize_number(request.called)
        row_id = job_id or f"{opts.name}:{number}"
        if not valid_job_id(row_id):  # a derived id is checked like a given one
            report.rejected.append(RowError(line, "called", f"gives the job id {row_id!r}, which is not valid"))
            continue
        key = job_id or number
        if key in first_line:
            report.duplicates_in_file += 1
            continue
        first_line[key] = line
        rows.append(_Row(line, request, row_id, number, tz, job_id, scb))
    report.valid = len(rows)
    return rows


def _head(path: Path) -> str:
    try:
        with path.open(encoding="utf-8-sig") as f:
            return f.read(200)
    except (OSError, UnicodeDecodeError):
        return ""


@contextlib.contextmanager
def _bulk() -> Iterator[None]:
    """No cyclic garbage collection while a launch builds and sends its rows: with 100k rows alive, every
    full collection walks them all, and that was half the validation time. Nothing here forms cycles;
    the collector is restored (and run once) afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def launch_file(
    redis: Redis,
    settings: Settings,
    path: Path,
    opts: LaunchOptions,
    *,
    progress: Progress | None = None,
) -> LaunchReport:
    """Validate and (unless ``dry_run``, or ``strict`` with a rejected row) enqueue a campaign file.

    Raises LaunchError for bad options or an unusable file, CampaignError if the campaign exists with
    other settings or was cancelled; in both cases nothing was stored.
    """
    csv_mode = not _is_jsonl(path, _head(path))
    return await _launch_checked(redis, settings, opts, str(path), csv_mode,
                                 lambda spec: read_rows(path, spec), progress)


async def launch_text(
    redis: Redis,
    settings: Settings,
    text: str,
    opts: LaunchOptions,
    *,
    jsonl: bool | None = None,
    source: str = "upload",
    progress: Progress | None = None,
) -> LaunchReport:
    """:func:`launch_file` for the text of a file (an upload). ``jsonl`` None: JSONL if the text starts
    with ``{``, else CSV. ``source`` is what the report calls the file."""
    text = text.removeprefix("\ufeff")
    if jsonl is None:
        jsonl = text.lstrip().startswith("{")
    return await _launch_checked(redis, settings, opts, source, not jsonl,
                                 lambda spec: _text_rows(text, spec, jsonl), progress)


async def launch_rows(
    redis: Redis,
    settings: Settings,
    rows: Sequence[Any],
    opts: LaunchOptions,
    *,
    source: str = "request",
    progress: Progress | None = None,
) -> LaunchReport:
    """:func:`launch_file` for rows already parsed from JSON (each a JSONL line's object); row ``n``
    of the report is ``rows[n - 1]``."""
    return await _launch_checked(redis, settings, opts, source, False, lambda spec: json_rows(rows, spec), progress)


async def _launch_checked(
    redis: Redis,
    settings: Settings,
    opts: LaunchOptions,
    source: str,
    csv_mode: bool,
    items: Callable[[CampaignSpec], Iterable[RowItem]],
    progress: Progress | None,
) -> LaunchReport:
    started = time.monotonic()
    spec, errors = check_options(opts, callback=callback_url(settings), callback_base64=settings.callback_url_base64,
                                 allow_private=settings.webhook_allow_private)
    if errors:
        raise LaunchError(errors)
    report = LaunchReport(campaign=opts.name, file=source, dry_run=opts.dry_run)
    with _bulk():
        # Parsing and validating 100k rows takes ~1 s of CPU: in a thread, so `dialer serve` keeps answering.
        rows = await asyncio.to_thread(_validate_rows, items(spec), csv_mode, opts, report,
                                       settings.webhook_allow_private)
        await _launch(redis, settings, rows, opts, spec, report, progress)
    report.seconds = time.monotonic() - started
    return report


async def _launch(
    redis: Redis,
    settings: Settings,
    rows: list[_Row],
    opts: LaunchOptions,
    spec: CampaignSpec,
    report: LaunchReport,
    progress: Progress | None,
) -> None:
    campaigns = Campaigns(redis, settings)
    if opts.dry_run or (opts.strict and report.rejected):
        report.strict_refused = bool(opts.strict and report.rejected and not opts.dry_run)
        report.nothing_valid = not rows
        if opts.dry_run:
            # Read-only look-ups, so the dry run says what a real one would skip.
            existing = await campaigns.spec(opts.name)
            if existing is not None and existing != spec:
                raise CampaignError(f"campaign {opts.name!r} exists with other settings; a launch would be refused")
            listed = await Suppression(redis, settings).which([r.number for r in rows])
            report.suppressed = sum(1 for r in rows if r.number in listed)
        return
    listed = await Suppression(redis, settings).which([r.number for r in rows])
    todo = [r for r in rows if r.number not in listed]
    report.suppressed = len(rows) - len(todo)
    if not rows:
        # Nothing valid: create nothing, so the name stays free for the corrected file.
        report.nothing_valid = True
        return
    report.campaign_created = await campaigns.create(opts.name, spec) == "created"
    producer = Producer(redis, settings)
    deadline = None if spec.deadline_ms is None else datetime.fromtimestamp(spec.deadline_ms / 1000, UTC)
    done = 0
    if progress:
        progress(0, len(todo))
    for start in range(0, len(todo), _ENQUEUE_CHUNK):
        part = todo[start : start + _ENQUEUE_CHUNK]
        results = await producer.enqueue_many(
            [CallJob(request=r.request, job_id=r.given_id, timezone=r.timezone,
                     status_callback_url=r.status_callback_url) for r in part],
            campaign=opts.name,
            deadline=deadline,
        )
        for r in results:
            if r.status == "accepted":
                report.enqueued += 1
            elif r.status == "duplicate":
                report.already_enqueued += 1
            else:  # pragma: no cover - rows were validated above
                report.rejected += [RowError(part[r.index or 0].line, e.field, e.rule) for e in r.errors]
        done += len(part)
        if progress:
            progress(done, len(todo))
