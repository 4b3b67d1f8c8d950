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
import codecs
import contextlib
import csv
import gc
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from redis.asyncio import Redis

from worker.callback_url import for_job, max_job_id_chars, own_callback, url_problem
from worker.campaigns.control import CampaignError, Campaigns, CampaignSpec, valid_name
from worker.campaigns.fast_rows import FastCsv
from worker.campaigns.outcomes import RedialPolicy, callback_url
from worker.campaigns.rows import CompactRow, RowStore, buckets_for, compact, request_body
from worker.campaigns.suppression import Suppression
from worker.errors import FieldError
from worker.ledger.producer import (
    CallJob,
    Producer,
    _CallbackCheck,  # the producer's callBackUrl rule, applied at launch too
)
from worker.models import CallRequest, PlayItem, field_errors
from worker.numbers import key_and_e164, number_key, zone_for
from worker.rules import (
    PRODUCER_ID_RULE,
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
AUTO_TIMEZONE = "auto"
"""``--timezone auto``: each number's calling window in its own zone (docs/campaigns.md, Numbers and time zones)."""


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
    """The callees' IANA zone, or ``auto``: each number's own zone, from the number (:mod:`worker.numbers`)."""
    default_timezone: str | None = None
    """With ``timezone="auto"``: the zone of numbers that map to several zones or none (``--default-timezone``)."""
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
    """The first :data:`MAX_REJECTIONS` rejections (a launch keeps no more: memory stays constant)."""
    rejected_row_count: int = 0
    """Rows rejected in all (``rejected_rows``)."""
    rejected_more: int = 0
    """Rejections counted but not listed in ``rejected``."""
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
    zones: dict[str, int] = field(default_factory=dict)
    """Valid rows per time zone their calling window is applied in (the row's own ``timezone``, the one
    ``--timezone auto`` derived from its number, else the campaign's); rows with no zone are not counted."""
    zone_defaulted: int = 0
    """``--timezone auto``: valid rows whose number maps to several zones or none, given ``--default-timezone``."""

    @property
    def rejected_rows(self) -> int:
        return self.rejected_row_count

    def reject(self, line: int, errors: Sequence[FieldError]) -> None:
        """Row ``line`` was refused for ``errors`` (one row, however many errors)."""
        self.rejected_row_count += 1
        room = MAX_REJECTIONS - len(self.rejected)
        self.rejected += [RowError(line, e.field, e.rule) for e in errors[:room]]
        self.rejected_more += max(len(errors) - room, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "file": self.file,
            "rows": self.rows,
            "valid": self.valid,
            "rejected_rows": self.rejected_rows,
            "rejected": [{"line": e.line, "field": e.field, "rule": e.rule} for e in self.rejected],
            "rejected_not_listed": self.rejected_more,
            "duplicates_in_file": self.duplicates_in_file,
            "suppressed": self.suppressed,
            "enqueued": self.enqueued,
            "already_enqueued": self.already_enqueued,
            "dry_run": self.dry_run,
            "strict_refused": self.strict_refused,
            "nothing_valid": self.nothing_valid,
            "campaign_created": self.campaign_created,
            "seconds": round(self.seconds, 3),
            "zones": dict(sorted(self.zones.items(), key=lambda kv: (-kv[1], kv[0]))),
            "zone_defaulted": self.zone_defaulted,
        }


Progress = Callable[[int, int], None]
"""Called with (done, total): bytes of a file read, or rows of a list."""

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
    auto = opts.timezone == AUTO_TIMEZONE
    tz_ok = opts.timezone is None or auto or valid_timezone(opts.timezone)
    if not tz_ok:
        errors.append(FieldError("--timezone", "must be an IANA time zone such as Europe/Paris, or auto (each "
                                               "number's own zone)"))
    elif opts.timezone is None and (opts.window is not None or opts.days is not None):
        errors.append(FieldError("--timezone", "is required with --window/--days (the callees' local time, or "
                                               "auto; a row's timezone column overrides it)"))
    if opts.default_timezone is not None:
        if not auto:
            errors.append(FieldError("--default-timezone", "is only for --timezone auto (the zone of numbers that "
                                                           "map to several zones or none)"))
        elif not valid_timezone(opts.default_timezone):
            errors.append(FieldError("--default-timezone", "must be an IANA time zone such as Asia/Shanghai"))
    # The campaign's own zone: the one given, or with auto the default (None: every row needs its own).
    campaign_tz = (opts.default_timezone if opts.default_timezone is not None and valid_timezone(
        opts.default_timezone) else None) if auto else (opts.timezone if tz_ok else None)
    deadline_ms = None
    if opts.deadline is not None:
        try:
            dl = datetime.fromisoformat(opts.deadline.strip())
        except ValueError:
            errors.append(FieldError("--deadline", "must be an ISO 8601 time, e.g. 2025-06-01T18:00:00+02:00"))
        else:
            if dl.utcoffset() is None:
                if campaign_tz is not None:
                    dl = dl.replace(tzinfo=ZoneInfo(campaign_tz))
                else:
                    errors.append(FieldError("--deadline", "needs a UTC offset (…+02:00 or …Z), or --timezone "
                                                           "(with auto: --default-timezone)"))
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
        timezone=campaign_tz, deadline_ms=deadline_ms, callback_url=callback,
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


def _csv_values(header: Sequence[str], cells: list[str]) -> dict[str, str] | None:
    """A CSV record as csv.DictReader gives it (missing cells empty), stripped; None with more cells than
    the header."""
    if len(cells) > len(header):
        return None
    return {h: (cells[i].strip() if i < len(cells) else "") for i, h in enumerate(header)}


def _csv_item(line: int, header: Sequence[str], cells: list[str], spec: CampaignSpec) -> RowItem | None:
    """One CSV record for the full path; None for a blank record (skipped, as it always was)."""
    values = _csv_values(header, cells)
    if values is None:
        return line, None, None, None, None, [FieldError("row", "has more cells than the header")]
    if not any(values.values()):
        return None
    body, errors = _csv_body(values, spec)
    return (line, body, values.get("id") or None, values.get("timezone") or None,
            values.get("statusCallbackUrl") or None, errors)


def _csv_header(reader: Iterator[list[str]]) -> list[str]:
    try:
        header = [h.strip() for h in next(reader, [])]
    except csv.Error as exc:
        raise LaunchError([FieldError("FILE", f"is not valid CSV ({exc})")]) from None
    if "called" not in header:
        raise LaunchError([FieldError("FILE", "CSV header must have a 'called' column")])
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if unknown:
        raise LaunchError([FieldError("FILE", f"unknown CSV column(s) {', '.join(map(repr, unknown))}; "
                                              f"known: {', '.join(CSV_COLUMNS)}")])
    return header


def _csv_records(lines: Iterable[str]) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header (checked: raises LaunchError) and (line, cells) of every record after it."""
    reader = csv.reader(lines)
    header = _csv_header(reader)

    def records() -> Iterator[tuple[int, list[str]]]:
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise LaunchError([FieldError("FILE", f"line {reader.line_num}: is not valid CSV ({exc})")]) from None
            yield reader.line_num, cells

    return header, records()


def _json_line(n: int, raw: str, spec: CampaignSpec) -> RowItem | None:
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError also covers numbers too long to convert (over 4,300 digits).
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else (
            "nested too deeply" if isinstance(exc, RecursionError) else "a number is too long")
        return n, None, None, None, None, [FieldError("body", f"not valid JSON ({msg})")]
    return _json_item(n, data, spec)


def _text_rows(text: str, spec: CampaignSpec, jsonl: bool) -> Iterator[RowItem]:
    """Every data row of a file's text, for the full path (the launcher streams instead: :class:`_Stream`)."""
    if jsonl:
        for n, raw in enumerate(text.splitlines(), start=1):
            if (item := _json_line(n, raw, spec)) is not None:
                yield item
        return
    header, records = _csv_records(io.StringIO(text, newline=""))
    for line, cells in records:
        if (item := _csv_item(line, header, cells, spec)) is not None:
            yield item


MAX_REJECTIONS = 1000
"""Rejections a report lists (each with line, field and rule); every rejected row is counted."""
_BATCH = 10_000
"""Rows read, validated and stored at a time: the launcher holds one batch (and reads the next while it is
stored), so its memory does not grow with the file."""
LAYOUT: Literal["rows", "jobs"] = "jobs"
"""How a launch stores its rows: "rows", compact chunks the hopper materialises (``worker/campaigns/rows.py``),
or "jobs", a full ledger job per row at once (the layout before issue 18; kept until the hopper ships, and for
bench P10's side-by-side)."""


def _number_key(settings: Settings) -> Callable[[str], str]:
    """A row's number key (its campaign member, do-not-call and job-id key), from its validated ``called``;
    raises ValueError naming the rule. The one place the launcher keys numbers: E.164 digits
    (:func:`worker.numbers.number_key`, DIALER_DEFAULT_REGION for numbers without '+'), as the producer and
    the do-not-call list key them."""
    return partial(number_key, region=settings.default_region)


def _called_key(settings: Settings) -> Callable[[str], str]:
    """:func:`_number_key` for a ``called`` that already matches the seed's pattern (``+`` and digits): the fast
    path's (``tests/campaigns/test_fast_rows.py`` compares the two). number_key's own fast path takes such
    a ``called`` without its formatting regex."""
    return _number_key(settings)


class _Zoner:
    """``--timezone auto``: the number key function of one launch (both paths call it for every row they
    accept), keeping the E.164 form it found, from which :meth:`zone` derives the row's zone."""

    __slots__ = ("_default", "_region", "e164")

    def __init__(self, region: str | None, default: str | None) -> None:
        self._region = region
        self._default = default
        self.e164: str | None = None

    def key(self, called: str) -> str:
        key, self.e164 = key_and_e164(called, self._region)
        return key

    def zone(self) -> tuple[str | None, bool]:
        """(the zone of the number last keyed, True when it is the default: several zones or none)."""
        e164 = self.e164
        if e164 is not None and (zone := zone_for(e164)) is not None:
            return zone, False
        return self._default, True


class _Checker:
    """Validates one launch's rows into :class:`CompactRow` s and counts them into its report: CSV rows
    through the fast path (:mod:`worker.campaigns.fast_rows`) when it accepts them, every other row through
    the model, which names each refused field and rule."""

    def __init__(self, settings: Settings, opts: LaunchOptions, spec: CampaignSpec, report: LaunchReport) -> None:
        self._settings = settings
        self._opts = opts
        self._spec = spec
        self._report = report
        self._allow_private = settings.webhook_allow_private
        self.key = _number_key(settings)
        self._zoner: _Zoner | None = None
        if opts.timezone == AUTO_TIMEZONE:
            self._zoner = _Zoner(settings.default_region, spec.timezone)
            self.key = self._zoner.key
        self._windowed = spec.window is not None or spec.days is not None
        self._callback = _CallbackCheck(settings)
        self._fast: FastCsv | None = None
        self._csv_mode = False
        self._header: list[str] = []

    def start_csv(self, header: list[str]) -> None:
        self._csv_mode = True
        self._header = header
        room = None
        if self._spec.callback_url is not None and self._settings.public_url:
            room = max_job_id_chars(self._settings.public_url, base64=self._settings.callback_url_base64)
        self._fast = FastCsv(header, self._spec, name=self._opts.name,
                             number_key=self._zoner.key if self._zoner is not None else _called_key(self._settings),
                             id_room=room,
                             allow_private=self._allow_private)
        if self._spec.callback_url is not None and self._spec.callback_url != own_callback(self._settings.public_url):
            self._fast.enabled = False  # a callBackUrl not the dialer's own: the full path checks it per row

    def csv(self, line: int, cells: list[str]) -> CompactRow | None:
        """A CSV record: its row, or None (rejected, counted; or blank, skipped)."""
        if self._fast is not None and (row := self._fast.row(cells)) is not None:
            self._report.rows += 1
            return self._zoned(line, row)
        item = _csv_item(line, self._header, cells, self._spec)
        return None if item is None else self.item(item)

    def _zoned(self, line: int, row: CompactRow) -> CompactRow | None:
        """The row with the zone ``--timezone auto`` derives from its number (kept only when it is not the
        campaign's), counted per zone in the report; None when it has no zone but the window needs one."""
        report = self._report
        if self._zoner is not None and not row.timezone:
            zone, defaulted = self._zoner.zone()
            if zone is None:
                if self._windowed:
                    report.reject(line, [FieldError("timezone", "the number maps to several time zones or none: "
                                                                "give the row a timezone, or --default-timezone")])
                    return None
            else:
                report.zone_defaulted += defaulted
                if zone != self._spec.timezone:
                    row.timezone = zone
        zone = row.timezone or self._spec.timezone
        if zone:
            zones = report.zones
            zones[zone] = zones.get(zone, 0) + 1
        return row

    def item(self, item: RowItem) -> CompactRow | None:
        """A row for the full path: its compact form, or None (rejected: the report names why)."""
        line, body, job_id, tz, scb, pre_errors = item
        report = self._report
        report.rows += 1
        errors = list(pre_errors)
        request = None
        if body is not None:
            try:
                request = CallRequest.model_validate(body)
            except ValidationError as exc:
                errors += [FieldError(_csv_field(e.field) if self._csv_mode else e.field, e.rule)
                           for e in field_errors(exc)]
        if job_id is not None and not valid_producer_id(job_id):
            errors.append(FieldError("id", PRODUCER_ID_RULE))
        if tz is not None and not valid_timezone(tz):
            errors.append(FieldError("timezone", "must be an IANA time zone such as Europe/Paris"))
        if scb is not None and (problem := status_callback_problem(scb, allow_private=self._allow_private)) is not None:
            errors.append(FieldError("statusCallbackUrl", problem))
        key = ""
        if request is not None:
            try:
                key = self.key(request.called)
            except ValueError as exc:
                errors.append(FieldError("called", str(exc)))
        if errors or request is None:
            report.reject(line, errors)
            return None
        row_id = job_id or f"{self._opts.name}:{key}"
        if not valid_job_id(row_id):  # a derived id is checked like a given one
            report.reject(line, [FieldError("called", f"gives the job id {row_id!r}, which is not valid")])
            return None
        if url_errors := self._callback.errors(request.call_back_url, row_id):
            report.reject(line, url_errors)
            return None
        dump = request.model_dump(by_alias=True, exclude_none=True, exclude_unset=True)
        return self._zoned(line, compact(dump, self._spec, key=key, job_id=job_id, timezone=tz,
                                         status_callback_url=scb))


class _Stream:
    """Where a launch's rows come from, read lazily: a file (progress in bytes), a text or parsed rows."""

    def __init__(self, total: int, position: Callable[[], int],
                 rows: Callable[[_Checker, CampaignSpec], Iterator[CompactRow | None]],
                 close: Callable[[], None] = lambda: None) -> None:
        self.total = total
        self.position = position
        self.rows = rows
        self.close = close


def _file_stream(path: Path, csv_mode: bool) -> _Stream:
    try:
        raw = path.open("rb")
        size = os.fstat(raw.fileno()).st_size
        _check_utf8(raw)
    except (OSError, UnicodeDecodeError) as exc:
        raise LaunchError([FieldError("FILE", f"cannot be read: {exc}")]) from None
    # Universal newlines for JSONL (as splitlines did); CSV reads its own line ends (quoted ones included).
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="" if csv_mode else None)
    return _Stream(size, raw.tell, lambda checker, spec: _lines_rows(text, csv_mode, checker, spec), text.close)


def _check_utf8(raw: Any) -> None:
    """Reads the whole file once as UTF-8 (1 MB at a time, ~1 s for 1 GB), so a file that is not UTF-8 is
    refused before anything is stored; leaves the file at its start."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    while block := raw.read(1 << 20):
        decoder.decode(block)
    decoder.decode(b"", final=True)
    raw.seek(0)


def _lines_rows(lines: Iterable[str], csv_mode: bool, checker: _Checker,
                spec: CampaignSpec) -> Iterator[CompactRow | None]:
    if csv_mode:
        header, records = _csv_records(lines)
        checker.start_csv(header)
        csv_row = checker.csv
        for line, cells in records:
            yield csv_row(line, cells)
        return
    item = checker.item
    for n, raw in enumerate(lines, start=1):
        if (parsed := _json_line(n, raw, spec)) is not None:
            yield item(parsed)


def _text_stream(text: str, csv_mode: bool) -> _Stream:
    buffer = io.StringIO(text, newline="" if csv_mode else None)
    return _Stream(len(text), buffer.tell, lambda checker, spec: _lines_rows(buffer, csv_mode, checker, spec))


def _rows_stream(rows: Sequence[Any]) -> _Stream:
    done = [0]

    def read(checker: _Checker, spec: CampaignSpec) -> Iterator[CompactRow | None]:
        for n, data in enumerate(rows, start=1):
            done[0] = n
            yield checker.item(_json_item(n, data, spec))

    return _Stream(len(rows), lambda: done[0], read)


def _batches(rows: Iterator[CompactRow | None], report: LaunchReport, size: int) -> Iterator[list[CompactRow]]:
    """Valid rows ``size`` at a time (the last batch may be shorter); a repeat of a member within a batch is
    counted as a duplicate in the file and skipped (farther repeats are found by the number set, or the
    ledger, as already enqueued: the launcher keeps no memory of the whole file)."""
    batch: list[CompactRow] = []
    seen: set[str] = set()
    for row in rows:
        if row is None:
            continue
        m = row.member if row.job_id else row.key
        if m in seen:
            report.duplicates_in_file += 1
            continue
        seen.add(m)
        batch.append(row)
        report.valid += 1
        if len(batch) >= size:
            yield batch
            batch = []
            seen = set()
    if batch:
        yield batch


def _head(path: Path) -> str:
    try:
        with path.open(encoding="utf-8-sig") as f:
            return f.read(200)
    except (OSError, UnicodeDecodeError):
        return ""


@contextlib.contextmanager
def _bulk() -> Iterator[None]:
    """No cyclic garbage collection while a launch builds and sends its rows: with a batch of rows alive,
    every full collection walks them all. Nothing here forms cycles; the collector is restored afterwards."""
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
    layout: Literal["rows", "jobs"] | None = None,
) -> LaunchReport:
    """Validate and (unless ``dry_run``, or ``strict`` with a rejected row) store a campaign file, streaming:
    memory stays the same whatever the file's size. ``progress(bytes read, file size)`` is called as it goes.

    Raises LaunchError for bad options or an unusable file, CampaignError if the campaign exists with
    other settings or was cancelled; in both cases nothing was stored. ``layout``: see :data:`LAYOUT`.
    """
    csv_mode = not _is_jsonl(path, _head(path))
    return await _launch_checked(redis, settings, opts, str(path), lambda: _file_stream(path, csv_mode),
                                 progress, layout)


async def launch_text(
    redis: Redis,
    settings: Settings,
    text: str,
    opts: LaunchOptions,
    *,
    jsonl: bool | None = None,
    source: str = "upload",
    progress: Progress | None = None,
    layout: Literal["rows", "jobs"] | None = None,
) -> LaunchReport:
    """:func:`launch_file` for the text of a file (an upload). ``jsonl`` None: JSONL if the text starts
    with ``{``, else CSV. ``source`` is what the report calls the file."""
    text = text.removeprefix("\ufeff")
    if jsonl is None:
        jsonl = text.lstrip().startswith("{")
    csv_mode = not jsonl
    return await _launch_checked(redis, settings, opts, source, lambda: _text_stream(text, csv_mode), progress,
                                 layout)


async def launch_rows(
    redis: Redis,
    settings: Settings,
    rows: Sequence[Any],
    opts: LaunchOptions,
    *,
    source: str = "request",
    progress: Progress | None = None,
    layout: Literal["rows", "jobs"] | None = None,
) -> LaunchReport:
    """:func:`launch_file` for rows already parsed from JSON (each a JSONL line's object); row ``n``
    of the report is ``rows[n - 1]``."""
    return await _launch_checked(redis, settings, opts, source, lambda: _rows_stream(rows), progress, layout)


async def _launch_checked(
    redis: Redis,
    settings: Settings,
    opts: LaunchOptions,
    source: str,
    open_stream: Callable[[], _Stream],
    progress: Progress | None,
    layout: Literal["rows", "jobs"] | None,
) -> LaunchReport:
    started = time.monotonic()
    spec, errors = check_options(opts, callback=callback_url(settings), callback_base64=settings.callback_url_base64,
                                 allow_private=settings.webhook_allow_private)
    if errors:
        raise LaunchError(errors)
    report = LaunchReport(campaign=opts.name, file=source, dry_run=opts.dry_run)
    with _bulk():
        if opts.dry_run:
            existing = await Campaigns(redis, settings).spec(opts.name)
            if existing is not None and existing != spec:
                raise CampaignError(f"campaign {opts.name!r} exists with other settings; a launch would be refused")
            await _run(open_stream(), settings, opts, spec, report, _DrySink(redis, settings, report), progress)
        else:
            if opts.strict:
                # Pass 1 reads and validates the whole file, storing nothing; pass 2 (only when no row was
                # rejected) reads it again and stores it. Two passes keep a strict launch streaming.
                await _run(open_stream(), settings, opts, spec, report, None, progress)
                if report.rejected_rows:
                    report.strict_refused = True
                    report.nothing_valid = report.valid == 0
                    report.seconds = time.monotonic() - started
                    return report
                report = LaunchReport(campaign=opts.name, file=source)
            chosen = layout or LAYOUT
            sink: _Sink = (_RowSink(redis, settings, opts, spec, report) if chosen == "rows"
                           else _JobSink(redis, settings, opts, spec, report))
            await _run(open_stream(), settings, opts, spec, report, sink, progress)
        report.nothing_valid = report.valid == 0
    report.seconds = time.monotonic() - started
    return report


async def _run(stream: _Stream, settings: Settings, opts: LaunchOptions, spec: CampaignSpec, report: LaunchReport,
               sink: _Sink | None, progress: Progress | None) -> None:
    """Reads, validates and stores batch after batch: batches are read and validated in a thread (so ``dialer
    serve`` keeps answering) while a sender task stores the ones before them, in order, up to two ahead."""
    queue: asyncio.Queue[tuple[list[CompactRow], int, int] | None] = asyncio.Queue(maxsize=2)

    async def send() -> None:
        while (item := await queue.get()) is not None:
            batch, expected, position = item
            if sink is not None:
                await sink.put(batch, expected)
            if progress:
                progress(position, stream.total)

    sender = asyncio.create_task(send())
    try:
        checker = _Checker(settings, opts, spec, report)
        batches = _batches(stream.rows(checker, spec), report, _BATCH)
        if progress:
            progress(0, stream.total)
        while True:
            batch = await asyncio.to_thread(next, batches, None)
            item = None if batch is None else (batch, _estimate(stream, report), stream.position())
            put = asyncio.ensure_future(queue.put(item))
            await asyncio.wait({put, sender}, return_when=asyncio.FIRST_COMPLETED)
            if not put.done():  # the sender failed: its error is raised below
                put.cancel()
                break
            if item is None:
                break
        await sender
        if progress:
            progress(stream.total, stream.total)
    finally:
        if not sender.done():
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        stream.close()


def _estimate(stream: _Stream, report: LaunchReport) -> int:
    """Rows the whole input will have, from the share read so far (sizes the number set once)."""
    done = stream.position()
    if done <= 0 or stream.total <= 0:
        return report.rows
    return max(report.rows, math.ceil(report.rows * stream.total / done))


class _Sink:
    async def put(self, batch: list[CompactRow], expected_rows: int) -> None:
        raise NotImplementedError


class _DrySink(_Sink):
    """A dry run: nothing stored; the do-not-call list is looked up so the report says what would be skipped."""

    def __init__(self, redis: Redis, settings: Settings, report: LaunchReport) -> None:
        self._suppression = Suppression(redis, settings)
        self._report = report

    async def put(self, batch: list[CompactRow], expected_rows: int) -> None:
        listed = await self._suppression.which([r.key for r in batch])
        self._report.suppressed += sum(1 for r in batch if r.key in listed)


class _StoreSink(_Sink):
    """Creates the campaign with its first valid batch (no valid row: no campaign), skips listed numbers."""

    def __init__(self, redis: Redis, settings: Settings, opts: LaunchOptions, spec: CampaignSpec,
                 report: LaunchReport) -> None:
        self._campaigns = Campaigns(redis, settings)
        self._suppression = Suppression(redis, settings)
        self._opts = opts
        self._spec = spec
        self._report = report
        self._created = False

    async def put(self, batch: list[CompactRow], expected_rows: int) -> None:
        if not self._created:
            self._report.campaign_created = await self._campaigns.create(self._opts.name, self._spec) == "created"
            self._created = True
        await self.store(batch, expected_rows)

    async def store(self, rows: list[CompactRow], expected_rows: int) -> None:
        raise NotImplementedError


class _RowSink(_StoreSink):
    """Rows into compact chunks and the number set (:class:`~worker.campaigns.rows.RowStore`)."""

    def __init__(self, redis: Redis, settings: Settings, opts: LaunchOptions, spec: CampaignSpec,
                 report: LaunchReport) -> None:
        super().__init__(redis, settings, opts, spec, report)
        self._store = RowStore(redis, settings)
        self._buckets = 0

    async def store(self, rows: list[CompactRow], expected_rows: int) -> None:
        if not self._buckets:
            self._buckets = buckets_for(expected_rows)  # used only if this launch is the campaign's first
        # The append script skips numbers on the do-not-call list itself (no round trip of its own).
        res = await self._store.append(self._opts.name, rows, buckets=self._buckets)
        self._report.enqueued += res.added
        self._report.already_enqueued += len(res.duplicates)
        self._report.suppressed += len(res.suppressed)


class _JobSink(_StoreSink):
    """A full ledger job per row at once (``Producer.enqueue_many``): the layout before issue 18."""

    def __init__(self, redis: Redis, settings: Settings, opts: LaunchOptions, spec: CampaignSpec,
                 report: LaunchReport) -> None:
        super().__init__(redis, settings, opts, spec, report)
        self._producer = Producer(redis, settings)
        self._deadline = None if spec.deadline_ms is None else datetime.fromtimestamp(spec.deadline_ms / 1000, UTC)

    async def store(self, rows: list[CompactRow], expected_rows: int) -> None:
        listed = await self._suppression.which([r.key for r in rows])
        todo = [r for r in rows if r.key not in listed] if listed else rows
        self._report.suppressed += len(rows) - len(todo)
        if not todo:
            return
        rows = todo
        spec = self._spec
        results = await self._producer.enqueue_many(
            [CallJob(request=request_body(r, spec), job_id=r.job_id or None, timezone=r.timezone or None,
                     status_callback_url=r.status_callback_url or None) for r in rows],
            campaign=self._opts.name, deadline=self._deadline,
        )
        report = self._report
        for r in results:
            if r.status == "accepted":
                report.enqueued += 1
            elif r.status == "duplicate":
                report.already_enqueued += 1
            else:  # pragma: no cover - rows were validated above
                report.reject(0, list(r.errors))
