"""Campaign export: one row per number, in launch order, streamed in constant memory.

::

    export = CampaignExport(redis, settings, "spring", fmt="csv", states=parse_states(["sent,failed"]))
    async for data in export.stream():      # UnknownCampaign before the first byte if there is no such campaign
        out.write(data)                     # bytes: the header row, then a slice of rows at a time
    export.rows, export.by_state            # 1000000, Counter({'sent': 999000, 'failed': 1000})

**Rows.** A campaign's job ids are kept in launch (enqueue) order (``Keys.campaign_jobs``); a redial
(``<first job id>:r<k>``, :mod:`worker.campaigns.outcomes`) is appended there too, but is never a row of its
own. The row of a number is its first job, in that job's place; its call fields are those of the number's
*latest* call: the last of its redials if it had any, else the first job. The columns (:data:`COLUMNS`):

=================  ==============================================================================
called             the number dialled
job_id             the number's first job (``<campaign>:<number>``): ``dialer job``/``GET /v1/calls/{id}``
latest_job_id      the job of the latest call: ``job_id``, or its last redial ``<job_id>:r<k>``
state              the latest call's ledger state (``queued`` ... ``suppressed``); ``--state`` filters on it
attempts           the latest call's provider tries (0 when it never reached the provider)
sent_at            when the latest call was created at the provider, ISO 8601 UTC with milliseconds
call_serial_no     the latest call's callSerialNo
outcome            the latest call's outcome from its release event: answered, unanswered, failed_to_connect
release_reason     the provider's releaseReason of the latest call
talk_duration_s    the latest call's talkDuration in seconds
redials            how many redials the number had (0 if none)
last_error         the latest call's last error text
evidence           release (a release event proved an unknown call) or none (no event in the grace period)
=================  ==============================================================================

A value the record does not have is empty in CSV and ``null`` in JSONL (``attempts`` and ``redials`` are
always numbers). CSV: UTF-8, a header row, RFC 4180 (``\\r\\n`` line ends, fields with ``,``, ``"`` or a
line break quoted, ``"`` doubled). JSONL: one JSON object per line with the same keys, in the same order;
``attempts``, ``redials`` and ``talk_duration_s`` are numbers, the rest strings (U+0085, U+2028 and U+2029
escaped as well, so that only ``\\n`` ends a line).

**Consistency.** Each slice of ``CHUNK`` ids is read by one script, so a row is consistent with itself
(a number's first job and its latest redial are read together), but an export of a campaign that is still
sending is not a snapshot of one instant: later slices are read later. A number whose first job's record
has left the ledger (its TTL, ``DIALER_LEDGER_TTL_S``) has no row; :attr:`CampaignExport.missing` counts them.

**Cost.** Redis runs one read-only script per slice of ``CHUNK`` ids (a few milliseconds each, so the
fleet's commands interleave); the next slice is read while this process formats the current one. Memory
holds two slices, whatever the campaign's size (BENCHMARKS.md, P9).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import AsyncGenerator, Iterable
from json.encoder import encode_basestring
from typing import Any

from redis.asyncio import Redis

from worker.campaigns.control import CampaignError, UnknownCampaign, valid_name
from worker.ledger.states import State
from worker.settings import Settings
from worker.store import scripts
from worker.store.keys import Keys

__all__ = [
    "CHUNK", "COLUMNS", "FORMATS", "MEDIA_TYPES", "STATES", "CampaignExport", "ExportOptionError", "check_format",
    "csv_field", "filename", "json_string", "parse_states",
]

COLUMNS: tuple[str, ...] = (
    "called", "job_id", "latest_job_id", "state", "attempts", "sent_at", "call_serial_no", "outcome",
    "release_reason", "talk_duration_s", "redials", "last_error", "evidence",
)
"""The export's columns, in order (the CSV header; the JSONL keys)."""
FORMATS: tuple[str, ...] = ("csv", "jsonl")
MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}
STATES: tuple[str, ...] = (*(str(s) for s in State), "pending")
"""Row states: the ledger's, and ``pending`` for a row launched compactly that is not a job yet."""
CHUNK = 1000
"""Job ids read per script call: about 10 ms of Redis time, so the fleet's own commands interleave."""

_WIDTH = len(COLUMNS)
_STATE, _SENT, _REDIALS = COLUMNS.index("state"), COLUMNS.index("sent_at"), COLUMNS.index("redials")
_NUMBERS = frozenset({"attempts", "redials"})  # always digits (the script makes sure)
_NULLABLE_NUMBERS = frozenset({"talk_duration_s"})
_TEXT_COLUMNS = tuple(i for i, c in enumerate(COLUMNS) if c not in {*_NUMBERS, *_NULLABLE_NUMBERS, "sent_at"})
"""Columns whose values may need CSV quoting (the others are digits or times)."""
_JSON_ESCAPE = re.compile('["\\\\\x00-\x1f\x85\u2028\u2029]')
"""What a JSONL string escapes: what JSON must (``"``, ``\\``, U+0000-U+001F), and the line breaks other than
``\\n`` that ``str.splitlines()`` and some JSON Lines readers split on (U+0085, U+2028, U+2029)."""
_LINE_BREAKS = {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_SEND_STEPS = 3
"""Loop turns a read ahead needs to put its request on the wire: one, or two with a socket timeout (redis-py
then writes in a task of its own, through asyncio.wait_for); one more to spare. Fewer only cost speed."""
_BUCKETS = 16  # number-set buckets per script: ~1,000 numbers (rows.MEMBERS_PER_BUCKET is 64)
_STAMP_CACHE = 4096  # seconds formatted and kept, at most (sent_at values cluster in time)


class ExportOptionError(CampaignError):
    """A bad export option: ``option`` names it (``--state`` on the CLI, ``state`` over HTTP)."""

    def __init__(self, option: str, rule: str) -> None:
        self.option = option
        self.rule = rule
        super().__init__(f"{option}: {rule}")


def check_format(value: str, option: str = "--format") -> str:
    """``csv`` or ``jsonl`` (case-insensitive); ExportOptionError naming ``option`` otherwise."""
    fmt = value.strip().lower()
    if fmt not in FORMATS:
        raise ExportOptionError(option, f"unknown format {value!r}; allowed: {', '.join(FORMATS)}")
    return fmt


def parse_states(values: Iterable[str], option: str = "--state") -> frozenset[str] | None:
    """The ledger states to keep, from repeated values and/or comma lists (``["sent,failed", "dead"]``);
    None (every row) when none is given. ExportOptionError naming ``option`` and the allowed values for an
    unknown one."""
    out: set[str] = set()
    for value in values:
        for part in value.split(","):
            state = part.strip().lower()
            if not state:
                continue
            if state not in STATES:
                raise ExportOptionError(option, f"unknown state {part.strip()!r}; allowed: {', '.join(STATES)}")
            out.add(state)
    return frozenset(out) or None


def filename(name: str, fmt: str) -> str:
    """The file name an export is offered under: ``<campaign>-export.csv`` (names are ``A-Z a-z 0-9 . _ -``)."""
    return f"{name}-export.{fmt}"


class CampaignExport:
    """One export of one campaign; read :attr:`rows`, :attr:`by_state`, :attr:`redials` and
    :attr:`missing` once :meth:`stream` is done. ``redis`` may decode responses or not."""

    def __init__(self, redis: Redis, settings: Settings, name: str, *, fmt: str = "csv",
                 states: frozenset[str] | None = None, chunk: int = CHUNK) -> None:
        self._redis = redis
        self._keys = Keys(settings.key_prefix)
        self._script = scripts.register(redis, "campaigns/campaign_export.lua")
        self._numbers_script = scripts.register(redis, "campaigns/campaign_export_numbers.lua")
        self.name = name
        self.fmt = check_format(fmt)
        self._filter = "" if not states else "," + ",".join(sorted(states)) + ","
        self._chunk = chunk
        self.rows = 0
        """Rows written so far."""
        self.by_state: Counter[str] = Counter()
        """Rows per state (the latest call's)."""
        self.redials = 0
        """Redials of the numbers written (their sum of ``redials``)."""
        self.missing = 0
        """Numbers without a row: their first job's record has left the ledger (TTL)."""
        self._stamps: dict[str, str] = {}  # seconds (text) -> "2025-01-02T03:04:05."

    async def check(self) -> None:
        """UnknownCampaign unless the campaign exists."""
        if not valid_name(self.name) or not await self._redis.exists(self._keys.campaign(self.name)):
            raise UnknownCampaign(f"no campaign {self.name!r}")

    async def stream(self) -> AsyncGenerator[bytes, None]:
        """The export as UTF-8 chunks: the CSV header row first, then one chunk per slice of the job list
        that has rows. Checks the campaign first (UnknownCampaign before anything is yielded). Stop
        iterating (or ``aclose()``) and no more is read from Redis."""
        await self.check()
        if self.fmt == "csv":
            yield (",".join(COLUMNS) + "\r\n").encode()
        slices = self._slices()
        try:
            async for values in slices:
                yield self._format(values)
        finally:
            await slices.aclose()

    # --- reading ---------------------------------------------------------------------------------------

    async def _read(self, conn: Redis, start: int) -> tuple[int, int, list[Any]]:
        read, missing, flat = await self._script(
            keys=[self._keys.campaign_jobs(self.name), self._keys.campaign(self.name)],
            args=[self._keys.prefix, start, self._chunk, self._filter, self.name],
            client=conn,
        )
        return int(read), int(missing), flat

    async def _numbers(self, conn: Redis) -> AsyncGenerator[list[str], None]:
        """The rows of the campaign's number set (rows launched compactly: pending, live, compacted), a slice
        of buckets per script (:data:`_BUCKETS`, about ``CHUNK`` numbers)."""
        bucket = 0
        while bucket >= 0:
            nxt, missing, flat = await self._numbers_script(
                keys=[self._keys.campaign(self.name)],
                args=[self._keys.prefix, self.name, bucket, _BUCKETS, self._filter], client=conn)
            bucket = int(nxt)
            self.missing += int(missing)
            if flat:
                yield _text(flat)

    async def _slices(self) -> AsyncGenerator[list[str], None]:
        """Each slice's row values (``_WIDTH`` per row), reading the next slice while the caller formats
        this one: one read ahead at most.

        The reads use one connection of the client's pool, held for the export: a command taken from the
        pool waits for the loop a few times before it is sent (the pool checks the connection first), so
        the read ahead would leave only when this slice's formatting was over; on a held connection it
        leaves within the few ``sleep(0)`` below, and Redis works while this process formats."""
        conn = self._redis.client()  # the same pool and settings, one connection kept
        start = 0
        pending: asyncio.Future[tuple[int, int, list[Any]]] | None = asyncio.ensure_future(self._read(conn, start))
        try:
            while pending is not None:
                read, missing, flat = await pending
                start += read
                pending = None
                if read >= self._chunk:
                    pending = asyncio.ensure_future(self._read(conn, start))
                    for _ in range(_SEND_STEPS):  # let the request leave before the formatting starts
                        await asyncio.sleep(0)
                self.missing += missing
                if flat:
                    yield _text(flat)
            async for values in self._numbers(conn):
                yield values
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending
            await conn.aclose()  # the connection goes back to the pool (dropped if a read was cut short)

    # --- formatting ------------------------------------------------------------------------------------

    def _iso(self, values: list[str]) -> list[str]:
        """Unix ms (text of digits, as the script checks) -> ``2025-01-02T03:04:05.678Z``, as JobRecord.as_dict
        writes times. Seconds are formatted once each (a bounded cache: sent times cluster)."""
        stamps = self._stamps
        out = []
        for v in values:
            if len(v) < 4:
                out.append(self._stamp(int(v)) if v else "")
                continue
            head = stamps.get(v[:-3])
            if head is None:
                if len(stamps) >= _STAMP_CACHE:
                    stamps.clear()
                head = stamps[v[:-3]] = self._stamp(int(v[:-3]) * 1000)[:-4]
            out.append(f"{head}{v[-3:]}Z" if head else "")
        return out

    @staticmethod
    def _stamp(ms: int) -> str:
        try:
            return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
        except (OverflowError, OSError, ValueError):  # not a time (a value no dialer wrote)
            return ""

    def _format(self, values: list[str]) -> bytes:
        values[_SENT::_WIDTH] = self._iso(values[_SENT::_WIDTH])
        self.rows += len(values) // _WIDTH
        self.by_state.update(values[_STATE::_WIDTH])
        self.redials += sum(map(int, values[_REDIALS::_WIDTH]))
        if self.fmt == "csv":
            for i in _TEXT_COLUMNS:
                column = values[i::_WIDTH]
                joined = "".join(column)  # one scan of the slice's column instead of one per value
                if '"' in joined or "," in joined or "\n" in joined or "\r" in joined:
                    values[i::_WIDTH] = [csv_field(v) for v in column]
            return ("\r\n".join(map(",".join, zip(*[iter(values)] * _WIDTH, strict=True))) + "\r\n").encode()
        # JSONL: a column of the slice with no empty value and nothing to escape goes in as it is, between
        # quotes the line's template holds; the others are encoded value by value ("" -> null).
        parts = []
        for i, column_name in enumerate(COLUMNS):
            if column_name in _NUMBERS:
                parts.append(f'"{column_name}":%s')
                continue
            column = values[i::_WIDTH]
            empty = "" in column
            if column_name in _NULLABLE_NUMBERS:
                if empty:
                    values[i::_WIDTH] = [v or "null" for v in column]
                parts.append(f'"{column_name}":%s')
            elif not empty and _JSON_ESCAPE.search("".join(column)) is None:
                parts.append(f'"{column_name}":"%s"')
            else:
                values[i::_WIDTH] = [json_string(v) if v else "null" for v in column]
                parts.append(f'"{column_name}":%s')
        line = "{" + ",".join(parts) + "}\n"
        return "".join(map(line.__mod__, zip(*[iter(values)] * _WIDTH, strict=True))).encode("utf-8")


def _text(flat: list[Any]) -> list[str]:
    """A reply's values as str: UTF-8, as the dialer writes them (anything else another producer wrote is
    decoded with replacement characters rather than stopping the export)."""
    if not isinstance(flat[0], bytes):
        return flat  # a client that decodes responses
    try:
        return list(map(bytes.decode, flat))
    except UnicodeDecodeError:
        return [v.decode("utf-8", "replace") for v in flat]


def json_string(value: str) -> str:
    """``value`` as a JSON string, as json.dumps(ensure_ascii=False) writes it, with U+0085, U+2028 and
    U+2029 escaped too, so that no line reader splits a JSONL line inside a value."""
    text = encode_basestring(value)
    if "\x85" in text or "\u2028" in text or "\u2029" in text:
        for char, escaped in _LINE_BREAKS.items():
            text = text.replace(char, escaped)
    return text


def csv_field(value: str) -> str:
    """One CSV field as RFC 4180 and the csv module's excel dialect (QUOTE_MINIMAL) write it: quoted when it
    holds ``,``, ``"``, CR or LF, with ``"`` doubled; as it is otherwise (tests hold it equal to csv.writer)."""
    if '"' in value or "," in value or "\n" in value or "\r" in value:
        return '"' + value.replace('"', '""') + '"'
    return value
