"""A campaign's rows as compact chunks, and its number set: how a launch stores numbers not yet dialled.

A launched row is not a job yet. It is stored as a :class:`CompactRow` — the number, and only the values in
which the row differs from its campaign (whose common fields, sources, params, callerPresent, playTimes,
priority, callBackUrl, time zone, statusCallbackUrl, are kept once, in its spec) — inside a chunk of up to
:data:`CHUNK_ROWS` rows, compressed, on the campaign's rows list (``Keys.campaign_rows``). The hopper
(``worker/campaigns/hopper.py``) turns chunks into full jobs a window ahead of the senders, through the
ledger's own enqueue, so every guarantee of a job (dedupe by id, do-not-call and cap checked at send,
windows, priorities, pacing, pause) holds for them unchanged::

    store = RowStore(redis, settings)
    res = await store.append("spring", [CompactRow("8613800000001", "+")], buckets=buckets_for(1_000_000))
    res.added, res.duplicates          # 1, []  -- again: 0, ["8613800000001"]
    rows = decode_chunk(await redis.lindex(keys.campaign_rows("spring"), 0))
    request_body(rows[0], spec)        # the seed body the job gets: common fields + the row's own

**Number set**: every member the campaign was given (:func:`member`: the number key, or ``=<id>`` for a row
with its own id), in ``buckets`` small hashes (``Keys.campaign_numbers``), so each stays listpack-encoded
(a 13-digit member is stored as an integer: ~12 bytes). The bucket count is fixed by the campaign's first
append (campaign hash field ``buckets``); aim for ~64 members a bucket (:func:`buckets_for`), below Redis'
``hash-max-listpack-entries`` (128) even for the fullest bucket. A campaign that outgrows its estimate
stays correct; its fullest buckets become hash tables (bigger). Values: ``''`` while pending (in a chunk);
the hopper and the ledger write the later ones.

**Append** (``rows_append.lua``): one script per chunk puts its members in the set, the chunk on the list
and its row count on the campaign counter ``pending``, atomically; if any member is already in the set, or
any number is on the do-not-call list, nothing is written and those are returned, and
:meth:`RowStore.append` sends the chunk again without them. So a re-run of a launch (after a crash, at any
point) appends exactly what is missing.

**Chunk format** (version 1): the byte ``\\x01``, then zlib of a compact JSON array with one entry per row:
the member-only row as a bare string (its key), else an array ``[key, called, priority, callerPresent,
playTimes, templateParams, playList, callBackUrl, id, timezone, statusCallbackUrl]`` with trailing empty
values left out. ``called`` is ``""`` for the key itself, ``"+"`` for ``+<key>``, ``"-N"`` for its last N
digits; ``""``, ``0`` or ``null`` mean "the campaign's".
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from worker.campaigns.control import CampaignError, CampaignSpec, UnknownCampaign
from worker.rules import normalize_number
from worker.settings import Settings
from worker.store import scripts
from worker.store.decode import text
from worker.store.keys import Keys

__all__ = [
    "CHUNK_ROWS", "AppendResult", "CompactRow", "RowStore", "bucket", "buckets_for", "called_code", "compact",
    "decode_chunk",
    "encode_chunk", "job_id", "member", "request_body",
]

CHUNK_ROWS = 1000
"""Rows per chunk: one append script call (~1-2 ms of Redis time) and the unit a hopper takes at once."""
MEMBERS_PER_BUCKET = 64
"""Target members per number-set bucket: a Poisson-spread bucket stays under Redis' default
hash-max-listpack-entries (128), so it stays a listpack."""
MAX_BUCKETS = 1 << 20
VERSION = b"\x01"
_LEVEL = 1
"""zlib level: 1 costs ~1 byte a row more than 6 and a third of its time (the launcher's CPU is the bound)."""
_SOURCES = ("voiceId", "templateId", "voiceFileName")
_LONG_ID = 60


@dataclass(slots=True)
class CompactRow:
    """One row as stored: its number key and the values in which it differs from its campaign."""

    key: str
    """The number key (:func:`~worker.rules.normalize_number` of ``called``: digits, no '+')."""
    called: str = ""
    """``called`` as it is dialled: ``""`` the key itself, ``"+"`` ``+<key>``, ``"-N"`` the key's last N digits
    (a national number keyed by its E.164 digits), else the text itself (never starts with '-')."""
    priority: str = ""
    caller_present: str = ""
    play_times: int = 0
    params: tuple[str, ...] | None = None
    """The templateParams of the campaign's play item, replaced (a CSV row's ``templateParams``)."""
    play_list: tuple[dict[str, Any], ...] | None = None
    """The row's whole playList, when it names its own sources (then ``params`` is unused)."""
    call_back_url: str = ""
    job_id: str = ""
    """The row's own id; ``""``: ``<campaign>:<key>``."""
    timezone: str = ""
    status_callback_url: str = ""

    @property
    def dialled(self) -> str:
        """``called`` as the job's body has it."""
        c = self.called
        if not c:
            return self.key
        if c == "+":
            return "+" + self.key
        if c[0] == "-":
            return self.key[-int(c[1:]) :]
        return c

    @property
    def member(self) -> str:
        return member(self.key, self.job_id)


def member(key: str, job_id: str = "") -> str:
    """The row's member in its campaign's number set: the number key, or ``=<id>`` for a row with its own
    id (``#`` and 30 hex of its SHA-1 when the id is over 60 characters, to keep set values short)."""
    if not job_id:
        return key
    if len(job_id) <= _LONG_ID:
        return "=" + job_id
    return "#" + hashlib.sha1(job_id.encode(), usedforsecurity=False).hexdigest()[:30]


def bucket(member: str, buckets: int) -> int:
    """The number-set bucket of a member (``number_bucket`` in ``campaigns/number_set.lua``)."""
    h = 0
    for b in member.encode()[-8:]:
        h = (h * 131 + b) % 1000003
    return h % buckets


def buckets_for(expected_rows: int) -> int:
    """A bucket count for a campaign expected to hold about ``expected_rows`` numbers."""
    return max(1, min(MAX_BUCKETS, math.ceil(expected_rows / MEMBERS_PER_BUCKET)))


def job_id(row: CompactRow, campaign: str) -> str:
    """The job id the row's job gets: its own, else ``<campaign>:<key>``."""
    return row.job_id or f"{campaign}:{row.key}"


def _default_item(spec: CampaignSpec) -> dict[str, Any]:
    d = spec.defaults
    return {k: d[k] for k in (*_SOURCES, "templateParams") if k in d}


def request_body(row: CompactRow, spec: CampaignSpec) -> dict[str, Any]:
    """The seed body of the row's job: the campaign's common fields with the row's own values over them
    (what a launch validated; the Producer validates it again when the job is enqueued)."""
    d = spec.defaults
    if row.play_list is not None:
        play_list = [dict(item) for item in row.play_list]
    else:
        item = {k: d[k] for k in _SOURCES if k in d}
        params = row.params if row.params is not None else d.get("templateParams")
        if params is not None:
            item["templateParams"] = list(params)
        play_list = [item]
    body: dict[str, Any] = {"called": row.dialled, "playList": play_list}
    caller = row.caller_present or d.get("callerPresent")
    if caller:
        body["callerPresent"] = caller
    play_times = row.play_times or d.get("playTimes")
    if play_times:
        body["playTimes"] = play_times
    priority = row.priority or (str(spec.priority) if spec.priority is not None else "")
    if priority:
        body["priority"] = priority
    url = row.call_back_url or spec.callback_url
    if url:
        body["callBackUrl"] = url
    return body


def called_code(called: str, key: str) -> str:
    """How a row stores ``called`` next to its key (see :attr:`CompactRow.called`)."""
    if called == key:
        return ""
    if called[:1] == "+" and called[1:] == key:
        return "+"
    if key.endswith(called) and called.isascii() and called.isdigit():
        return f"-{len(called)}"
    return called


def compact(body: dict[str, Any], spec: CampaignSpec, *, key: str | None = None, job_id: str | None = None,
            timezone: str | None = None, status_callback_url: str | None = None) -> CompactRow:
    """The compact form of a validated body (``CallRequest.model_dump(by_alias=True, exclude_none=True,
    exclude_unset=True)``) of a row of this campaign; :func:`request_body` gives the body back. ``key``: the
    number key (default: :func:`~worker.rules.normalize_number` of ``called``). Raises ValueError for a body
    the campaign's fields cannot express (a launch never makes one)."""
    called = body["called"]
    key = key or normalize_number(called)
    d = spec.defaults
    default_item = _default_item(spec)
    params: tuple[str, ...] | None = None
    play_list: tuple[dict[str, Any], ...] | None = None
    items = body["playList"]
    if items != [default_item]:
        own = items[0] if len(items) == 1 else None
        if own is not None and "templateParams" in own and \
                {k: v for k, v in own.items() if k != "templateParams"} == {k: d[k] for k in _SOURCES if k in d}:
            params = tuple(own["templateParams"])
        else:
            play_list = tuple(dict(i) for i in items)
    campaign_priority = str(spec.priority) if spec.priority is not None else None
    row = CompactRow(
        key=key,
        called=called_code(called, key),
        priority=p if (p := body.get("priority")) is not None and p != campaign_priority else "",
        caller_present=c if (c := body.get("callerPresent")) is not None and c != d.get("callerPresent") else "",
        play_times=t if (t := body.get("playTimes")) is not None and t != d.get("playTimes") else 0,
        params=params,
        play_list=play_list,
        call_back_url=u if (u := body.get("callBackUrl")) is not None and u != spec.callback_url else "",
        job_id=job_id or "",
        timezone=timezone or "",
        status_callback_url=status_callback_url or "",
    )
    if request_body(row, spec) != body:
        raise ValueError(f"a row of this campaign cannot carry the body {body!r}")
    return row


def _packed(row: CompactRow) -> str | list[Any]:
    if not (row.priority or row.caller_present or row.play_times or row.params is not None or
            row.play_list is not None or row.call_back_url or row.job_id or row.timezone or row.status_callback_url):
        return [row.key, row.called] if row.called else row.key
    values: list[Any] = [row.key, row.called, row.priority, row.caller_present, row.play_times,
                         None if row.params is None else list(row.params),
                         None if row.play_list is None else list(row.play_list),
                         row.call_back_url, row.job_id, row.timezone, row.status_callback_url]
    n = len(values)
    while n > 1 and not values[n - 1]:
        n -= 1
    return row.key if n == 1 else values[:n]


def encode_chunk(rows: Sequence[CompactRow]) -> bytes:
    """Rows as one versioned, compressed blob (see the module's docstring for the format)."""
    data = json.dumps([_packed(r) for r in rows], separators=(",", ":"), ensure_ascii=False)
    return VERSION + zlib.compress(data.encode(), _LEVEL)


def _unpacked(item: Any) -> CompactRow:
    if isinstance(item, str):
        return CompactRow(item)
    row = CompactRow(*item)
    if row.params is not None:
        row.params = tuple(row.params)
    if row.play_list is not None:
        row.play_list = tuple(row.play_list)
    return row


def decode_chunk(blob: bytes) -> list[CompactRow]:
    """The rows of a blob :func:`encode_chunk` made, in order. Raises ValueError for another format."""
    if blob[:1] != VERSION:
        raise ValueError(f"not a campaign row chunk of version 1 (first byte {blob[:1]!r})")
    return [_unpacked(item) for item in json.loads(zlib.decompress(blob[1:]))]


@dataclass
class AppendResult:
    """``added`` rows went into chunks; ``duplicates`` are the members that were already in the set (a
    re-run, or a repeat) and ``suppressed`` those whose number is on the do-not-call list, in input order."""

    added: int = 0
    duplicates: list[str] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)


class RowStore:
    """Appends rows to campaigns (and reads the number set); cheap, share one per process."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._keys = Keys(settings.key_prefix)
        self._append: AsyncScript = scripts.register(redis, "campaigns/rows_append.lua", settings)

    async def append(self, name: str, rows: Sequence[CompactRow], *, buckets: int) -> AppendResult:
        """Append rows in chunks of :data:`CHUNK_ROWS`, pipelined; rows whose member is already in the set,
        or earlier in ``rows``, are skipped and returned as duplicates, and rows whose number is on the
        do-not-call list as suppressed. ``buckets`` fixes the campaign's
        bucket count if its first append is this one. Raises UnknownCampaign / CampaignError
        (cancelled); chunks appended before that stay (each chunk is all or nothing)."""
        result = AppendResult()
        seen: set[str] = set()
        unique: list[CompactRow] = []
        for r in rows:
            m = r.member
            if m in seen:
                result.duplicates.append(m)
            else:
                seen.add(m)
                unique.append(r)
        todo = [unique[i : i + CHUNK_ROWS] for i in range(0, len(unique), CHUNK_ROWS)]
        while todo:
            replies = await self._send(name, todo, buckets)
            again: list[list[CompactRow]] = []
            for chunk, reply in zip(todo, replies, strict=True):
                verdict = text(reply[0])
                if verdict == "ok":
                    result.added += int(reply[1])
                elif verdict == "skip":
                    n_dups = int(reply[1])
                    dups = {text(m) for m in reply[2 : 2 + n_dups]}
                    listed = {text(m) for m in reply[2 + n_dups :]}
                    result.duplicates += [r.member for r in chunk if r.member in dups]
                    result.suppressed += [r.member for r in chunk if r.member in listed]
                    rest = [r for r in chunk if r.member not in dups and r.member not in listed]
                    if rest:
                        again.append(rest)
                elif verdict == "missing":
                    raise UnknownCampaign(f"no campaign {name!r}")
                else:
                    raise CampaignError(f"campaign {name!r} was cancelled; launch under a new name")
            todo = again
        return result

    async def _send(self, name: str, chunks: list[list[CompactRow]], buckets: int) -> list[Any]:
        k = self._keys
        keys = [k.campaign(name), k.campaign_counts(name), k.campaign_rows(name), k.suppress]
        async with self._redis.pipeline(transaction=False) as pipe:
            for chunk in chunks:
                members = [r.member if r.job_id else r.key for r in chunk]
                numbers = [r.key for r in chunk]
                await self._append(keys=keys, args=[k.prefix, name, buckets, ",".join(members), encode_chunk(chunk),
                                                    "" if members == numbers else ",".join(numbers)],
                                   client=pipe)
            return list(await pipe.execute())

    async def statuses(self, name: str, members: Sequence[str]) -> list[str | None]:
        """The number-set value of each member (``''`` pending, None: not in the campaign)."""
        raw = await self._redis.hget(self._keys.campaign(name), "buckets")  # type: ignore[misc]
        if raw is None:
            return [None] * len(members)
        n = int(raw)
        async with self._redis.pipeline(transaction=False) as pipe:
            for m in members:
                pipe.hget(self._keys.campaign_numbers(name, bucket(m, n)), m)
            return [None if v is None else text(v) for v in await pipe.execute()]
