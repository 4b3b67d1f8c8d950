"""Enqueue calls: validate, pick the job id, then write the ledger record and the queue entry at once.

::

    producer = Producer(redis, settings)
    res = await producer.enqueue({"called": "8899", "playList": [{"voiceId": "100001"}], "priority": "1"},
                                 campaign="spring-promo")
    res.job_id, res.status   # ("spring-promo:8899", "accepted"); again -> "duplicate"

Nothing is written for input that fails validation (:class:`~worker.errors.InvalidRequest` names each
field and rule). The job id is the idempotency key: an explicit ``job_id``, else ``"<campaign>:<number>"``,
else a new random id (16 characters of ``a-z 2-7``, 80 random bits: see :func:`new_job_ids`). One Lua
script (``enqueue.lua``) stores each item all-or-nothing, a batch of items per script call.

``campaign`` names a campaign: when it was created (``dialer campaign launch``, ``campaigns.create``) the
job joins its counters, job list, pacing, pause and calling window; otherwise the name is only a tag
(used for the job id and the do-not-call/cap checks).

A queued job is its ledger record (the one source of truth, body included) and its queue entry, nothing
else: arq's own job (``arq:job:<id>``, ``{"t":1,"f":"dial","a":[],"k":{},"et":<ms>}``, which carries no
body) is written by the worker when it claims the job (``dispatch/claim.lua``), which keeps queue memory
small.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from worker.callback_url import for_job, max_job_id_chars, own_callback, url_problem
from worker.errors import FieldError, InvalidRequest, NotReplicated
from worker.models import CallRequest, field_errors
from worker.numbers import number_key
from worker.rules import (
    PRODUCER_ID_RULE,
    valid_campaign_name,
    valid_job_id,
    valid_producer_id,
    valid_timezone,
)
from worker.settings import Settings, load_settings
from worker.status_callback import url_problem as status_callback_problem
from worker.store import scripts
from worker.store.client import cli_client
from worker.store.decode import text
from worker.store.keys import Keys, in_progress_key_prefix, result_key_prefix, retry_key_prefix

__all__ = ["CallJob", "EnqueueResult", "Producer", "enqueue_call", "enqueue_many", "new_job_ids"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_PIPELINES_IN_FLIGHT = 2
_QUEUED = "queued"
_BATCH = 100
"""Jobs per enqueue.lua call: amortizes the per-call cost (~2/3 of the time at one job per call) while
keeping each call short (~1 ms of Redis time) so other clients are not held up."""


_ID_CHARS = 16
_IDS_PER_DRAW = 512
# Each random byte becomes one of 32 characters (its low 5 bits: 256 is a multiple of 32, so every
# character is equally likely), in C (bytes.translate): base64's b32encode is a Python loop.
_ID_TABLE = bytes(b"abcdefghijklmnopqrstuvwxyz234567"[b & 31] for b in range(256))


def new_job_ids(n: int) -> list[str]:
    """``n`` new random job ids from one ``os.urandom`` call: 16 characters of ``a-z 2-7`` each, 5 random
    bits per character (80 bits per id), safe in URLs, Redis keys and shells, the same in any letter case,
    and never starting with "-" (so a CLI never takes one for an option)."""
    text = os.urandom(_ID_CHARS * n).translate(_ID_TABLE).decode("ascii")
    return [text[i : i + _ID_CHARS] for i in range(0, _ID_CHARS * n, _ID_CHARS)]


def _one_id() -> str:
    return new_job_ids(1)[0]


class _RandomIds:
    """Job ids for one ``enqueue_many`` call, drawn ``_IDS_PER_DRAW`` at a time: one ``os.urandom`` syscall
    per id (as uuid4() makes) was a fifth of enqueue_many's time. One per call, never kept: ids drawn
    before a fork must not be handed out by both processes."""

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: list[str] = []

    def __call__(self) -> str:
        if not self._ids:
            self._ids = new_job_ids(_IDS_PER_DRAW)
        return self._ids.pop()


@dataclass(frozen=True)
class EnqueueResult:
    """Outcome of one item. ``state`` is the ledger state ("queued", or the existing job's state for a
    duplicate); ``errors`` lists why a "rejected" item was refused; ``index`` is its position in the
    ``enqueue_many`` input."""

    job_id: str | None
    status: Literal["accepted", "duplicate", "rejected"]
    state: str | None
    errors: tuple[FieldError, ...] = ()
    index: int | None = None


@dataclass(frozen=True)
class CallJob:
    """One ``enqueue_many`` item with its own options; None options fall back to the batch's."""

    request: CallRequest | dict[str, Any]
    job_id: str | None = None
    """The producer's id (idempotency key): no ':' (ids with ':' are the dialer's own)."""
    campaign: str | None = None
    not_before: datetime | None = None
    deadline: datetime | None = None
    timezone: str | None = None
    """The callee's IANA time zone, for the campaign's calling window (default: the campaign's)."""
    status_callback_url: str | None = None
    """Where ``dialer webhooks`` POSTs this job's events (default: the batch's, else its campaign's)."""


@dataclass(frozen=True)
class _Options:
    campaign: str  # "" = none, as the script wants it
    encoded: tuple[bytes, bytes, bytes]  # a job's fields in enqueue.lua: campaign, not_before ms, deadline ms
    timezone: bytes = b""  # a job's IANA time zone field in enqueue.lua
    status_callback_url: bytes = b""  # its statusCallbackUrl field (`scb`) in enqueue.lua
    region: str | None = None  # DIALER_DEFAULT_REGION, for a campaign job's number key


@dataclass(frozen=True, slots=True)
class _Key:
    """A campaign job's number key (:func:`~worker.numbers.number_key`), and what the record keeps of it."""

    key: str
    stored: bytes
    """The record's ``nk``: the key when gate.lua's ``number_key(called)`` (digits without '+') would
    differ from it (``13800000001`` in region CN), else empty: nothing stored for most numbers."""


_NO_KEY = _Key("", b"")


@dataclass(frozen=True, slots=True)
class _Call:
    """One job's part of an enqueue.lua call, ready to send."""

    index: int
    job_id: str
    packed: bytes  # its record in enqueue.lua's ARGV[3]


def _to_ms(dt: datetime) -> int:
    return (dt - _EPOCH) // _MS


def _check_options(
    job_id: str | None,
    campaign: str | None,
    not_before: datetime | None,
    deadline: datetime | None,
    timezone: str | None = None,
    derived: bool = False,
    status_callback_url: str | None = None,
    allow_private: bool = False,
    region: str | None = None,
) -> tuple[_Options, list[FieldError]]:
    errors: list[FieldError] = []
    if status_callback_url is not None and (
        problem := status_callback_problem(status_callback_url, allow_private=allow_private)
    ) is not None:
        errors.append(FieldError("status_callback_url", problem))
    if timezone is not None and not valid_timezone(timezone):
        errors.append(FieldError("timezone", "must be an IANA time zone such as Europe/Paris"))
    if derived:
        if job_id is None or not valid_job_id(job_id):
            errors.append(FieldError("id", "a derived job id must be 1-128 characters of A-Z a-z 0-9 . _ : @ -"))
    elif job_id is not None and not valid_producer_id(job_id):
        errors.append(FieldError("id", PRODUCER_ID_RULE))
    if campaign is not None and not valid_campaign_name(campaign):
        errors.append(FieldError("campaign", "must be 1-64 characters of A-Z a-z 0-9 . _ -"))
    nb = dl = ""
    times_ok = True
    for name, dt in (("not_before", not_before), ("deadline", deadline)):
        if dt is None:
            continue
        if not isinstance(dt, datetime):
            errors.append(FieldError(name, "must be a datetime"))
            times_ok = False
        elif dt.utcoffset() is None:
            errors.append(FieldError(name, "must be timezone-aware"))
            times_ok = False
    if times_ok:
        if not_before is not None:
            nb = str(_to_ms(not_before))
        if deadline is not None:
            # Input validation only; the worker enforces the deadline against the Redis clock.
            if not_before is not None and deadline <= not_before:
                errors.append(FieldError("deadline", "must be after not_before"))
            elif deadline <= datetime.now(UTC):
                errors.append(FieldError("deadline", "must be in the future"))
            dl = str(_to_ms(deadline))
    encoded = ((campaign or "").encode(), nb.encode(), dl.encode())
    scb = status_callback_url.encode() if isinstance(status_callback_url, str) and not errors else b""
    return _Options(campaign or "", encoded, (timezone or "").encode(), scb, region), errors


def _validate(request: Any) -> tuple[CallRequest | None, list[FieldError]]:
    if isinstance(request, CallRequest):
        return request, []
    if not isinstance(request, dict):
        return None, [FieldError("body", "must be a JSON object")]
    try:
        return CallRequest.model_validate(request), []
    except ValidationError as exc:
        return None, field_errors(exc)


def _number_key(req: CallRequest, opts: _Options) -> tuple[_Key, list[FieldError]]:
    """A campaign job's number key (E.164 digits, see :mod:`worker.numbers`): the do-not-call list, the
    per-number cap and the derived job id see ``+8613800000001``, ``008613800000001`` and ``13800000001``
    (region CN) as one person. Jobs without a campaign are not checked, so they need none. The number
    dialled (``called``) is not rewritten."""
    if not opts.campaign:
        return _NO_KEY, []
    try:
        key = number_key(req.called, opts.region)
    except ValueError as exc:
        return _NO_KEY, [FieldError("called", str(exc))]
    # `called` is validated: digits with an optional '+', so gate.lua's own key is this.
    return _Key(key, b"" if key == req.called.removeprefix("+") else key.encode()), []


def _job_id(
    req: CallRequest, job_id: str | None, opts: _Options, new_id: Callable[[], str], key: _Key = _NO_KEY
) -> tuple[str, list[FieldError]]:
    """The job id: the given one, else ``<campaign>:<number key>`` (:func:`_number_key`, as launch and
    the do-not-call list key numbers), else a new random id. A derived id is checked like any other (it
    becomes part of Redis keys and the ``Location`` URL)."""
    if job_id is not None:
        return job_id, []
    if not opts.campaign:
        return new_id(), []
    derived = f"{opts.campaign}:{key.key}"
    if not valid_job_id(derived):
        return "", [FieldError("called", f"gives the job id {derived!r}, which is not a valid job id")]
    return derived, []


class _CallbackCheck:
    """The callBackUrl as it will be sent (the dialer's own with the job id appended, Base64-encoded when the
    tenant wants it), checked against the provider's rules at enqueue: a URL it would refuse on every attempt
    is refused here instead. A campaign's rows share one URL, so each distinct URL is checked once."""

    def __init__(self, settings: Settings) -> None:
        self._base64 = settings.callback_url_base64
        self._own = own_callback(settings.public_url)
        self._room = max_job_id_chars(settings.public_url, base64=self._base64) if settings.public_url else 0
        self._seen: dict[str, str | None] = {}

    def errors(self, url: str | None, job_id: str) -> list[FieldError]:
        if url is None:
            return []
        if url == self._own:
            # Job ids hold only allowed characters ('@' is written '&'): only the length can break the rule.
            if len(job_id) <= self._room:
                return []
            return [FieldError("callBackUrl", f"{url}/<job id> {url_problem(for_job(url, job_id), base64=self._base64)}"
                                              f": a job id for it may be at most {self._room} characters")]
        problem = self._seen.get(url, "")
        if problem == "":
            if len(self._seen) >= _URLS_REMEMBERED:
                self._seen.clear()
            problem = self._seen[url] = url_problem(url, base64=self._base64)
        return [] if problem is None else [FieldError("callBackUrl", problem)]


_URLS_REMEMBERED = 1024


class Producer:
    """Enqueues calls into Redis. ``redis`` may decode responses or not; share one per process."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._keys = Keys(settings.key_prefix)
        self._ledger_ttl_ms = settings.ledger_ttl_s * 1000
        self._consts = (settings.key_prefix.encode(), str(self._ledger_ttl_ms).encode())
        self._prefix = settings.key_prefix
        self._allow_private = settings.webhook_allow_private
        self._region = settings.default_region
        self._callback = _CallbackCheck(settings)
        self._enqueue: AsyncScript = scripts.register(redis, "ledger/enqueue.lua", settings)
        self._requeue: AsyncScript = scripts.register(redis, "ledger/requeue.lua", settings)
        self._wait = (settings.wait_replicas, settings.redis_wait_timeout_ms) if settings.wait_replicas else None

    async def enqueue(
        self,
        request: CallRequest | dict[str, Any],
        *,
        job_id: str | None = None,
        campaign: str | None = None,
        not_before: datetime | None = None,
        deadline: datetime | None = None,
        timezone: str | None = None,
        derived_id: str | None = None,
        status_callback_url: str | None = None,
    ) -> EnqueueResult:
        """Enqueue one call. Raises InvalidRequest (nothing stored) on bad input.

        ``job_id`` is a producer's id: no ':' (``rules.PRODUCER_ID_PATTERN``; ids with ':' are the
        dialer's own). ``derived_id`` is for the dialer itself only: an id it derived (a redial's
        ``<id>:r<k>``), checked with ``rules.valid_job_id``; give one of the two, not both.

        ``not_before`` defers the call; ``deadline`` is when the worker gives up on it (state
        ``expired``). Both must be timezone-aware. ``timezone`` is the callee's IANA zone for the
        campaign's calling window (default: the campaign's own). ``status_callback_url``: where ``dialer
        webhooks`` POSTs the job's events (http(s), at most 2,048 characters; no private address unless
        DIALER_WEBHOOK_ALLOW_PRIVATE), stored on the record, never sent to the provider; default: its
        campaign's, if any.
        """
        req, errors = _validate(request)
        if derived_id is not None and job_id is not None:
            raise InvalidRequest([FieldError("id", "give job_id or derived_id, not both")])
        derived = derived_id is not None
        opts, opt_errors = _check_options(derived_id if derived else job_id, campaign, not_before, deadline,
                                          timezone, derived, status_callback_url, self._allow_private,
                                          self._region)
        job_id = derived_id if derived else job_id
        errors += opt_errors
        if errors or req is None:
            raise InvalidRequest(errors)
        key, id_errors = _number_key(req, opts)
        jid = ""
        if not id_errors:
            jid, id_errors = _job_id(req, job_id, opts, _one_id, key)
        if id_errors or (id_errors := self._callback.errors(req.call_back_url, jid)):
            raise InvalidRequest(id_errors)
        call = self._script_call(req, jid, opts, 0, key)
        if self._wait is None:
            flags, *states = await self._enqueue(keys=[], args=[*self._consts, call.packed])
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                await self._enqueue(keys=[], args=[*self._consts, call.packed], client=pipe)
                [(flags, *states)] = await self._replicated(pipe)
        if text(flags) == "1":
            return EnqueueResult(call.job_id, "accepted", _QUEUED)
        return EnqueueResult(call.job_id, "duplicate", text(states[0]))

    async def enqueue_many(
        self,
        items: Iterable[CallRequest | dict[str, Any] | CallJob],
        *,
        campaign: str | None = None,
        not_before: datetime | None = None,
        deadline: datetime | None = None,
        chunk: int = 2000,
        status_callback_url: str | None = None,
    ) -> list[EnqueueResult]:
        """Enqueue many calls; one result per item, in input order. Bad items are "rejected" (with
        ``errors``), never raised; a repeated id, in the batch or already in Redis, is "duplicate".
        ``status_callback_url`` is the batch's default (a :class:`CallJob` may give its own).

        Raises InvalidRequest only when the batch-wide options themselves are invalid.
        """
        base_opts, base_errors = _check_options(None, campaign, not_before, deadline,
                                                status_callback_url=status_callback_url,
                                                allow_private=self._allow_private, region=self._region)
        if base_errors:
            raise InvalidRequest(base_errors)
        results: list[EnqueueResult | None] = []
        first_of: dict[str, int] = {}  # job id -> index of its first item in this batch
        repeats: list[tuple[int, str, int]] = []
        new_id = _RandomIds()
        step = max(1, chunk)
        # Two pipelines in flight: Python validates and packs the next chunk while Redis runs the scripts
        # of this one; each chunk is sent as soon as it is ready.
        gate = asyncio.Semaphore(_PIPELINES_IN_FLIGHT)
        try:
            async with asyncio.TaskGroup() as tg:
                part: list[_Call] = []
                for index, item in enumerate(items):
                    call = self._prepare(item, index, base_opts, campaign, not_before, deadline, results, new_id,
                                         status_callback_url)
                    if call is None:
                        continue
                    # A repeat within the batch is answered here: chunks run concurrently, so Redis alone
                    # could not tell which of the two came first.
                    if call.job_id in first_of:
                        repeats.append((index, call.job_id, first_of[call.job_id]))
                        continue
                    first_of[call.job_id] = index
                    part.append(call)
                    if len(part) >= step:
                        tg.create_task(self._send(part, results, gate))
                        part = []
                        await asyncio.sleep(0)  # let the sends progress
                if part:
                    tg.create_task(self._send(part, results, gate))
        except BaseExceptionGroup as group:
            # Callers catch redis errors, not groups. Chunks already sent stay stored (each item is atomic);
            # enqueue_many again to finish: the stored ones come back as duplicates.
            raise group.exceptions[0] from None
        for index, jid, first in repeats:
            state = results[first].state  # type: ignore[union-attr]  # filled by _send
            results[index] = EnqueueResult(jid, "duplicate", state, (), index)
        return results  # type: ignore[return-value]  # every None was filled above

    def _prepare(
        self,
        item: CallRequest | dict[str, Any] | CallJob,
        index: int,
        base_opts: _Options,
        campaign: str | None,
        not_before: datetime | None,
        deadline: datetime | None,
        results: list[EnqueueResult | None],
        new_id: Callable[[], str],
        status_callback_url: str | None = None,
    ) -> _Call | None:
        """Validate one ``enqueue_many`` item; a rejected one gets its result now and None is returned."""
        opts = base_opts
        job_id = None
        if isinstance(item, CallJob):
            job_id = item.job_id
            req, errors = _validate(item.request)
            if (item.job_id, item.campaign, item.not_before, item.deadline, item.timezone,
                    item.status_callback_url) != (None, None, None, None, None, None):
                opts, opt_errors = _check_options(
                    item.job_id,
                    item.campaign if item.campaign is not None else campaign,
                    item.not_before if item.not_before is not None else not_before,
                    item.deadline if item.deadline is not None else deadline,
                    item.timezone,
                    status_callback_url=(item.status_callback_url if item.status_callback_url is not None
                                         else status_callback_url),
                    allow_private=self._allow_private,
                    region=self._region,
                )
                errors += opt_errors
        else:
            req, errors = _validate(item)
        results.append(None)
        if errors or req is None:
            results[index] = EnqueueResult(job_id, "rejected", None, tuple(errors), index)
            return None
        key, id_errors = _number_key(req, opts)
        jid = ""
        if not id_errors:
            jid, id_errors = _job_id(req, job_id, opts, new_id, key)
        if id_errors or (id_errors := self._callback.errors(req.call_back_url, jid)):
            results[index] = EnqueueResult(job_id, "rejected", None, tuple(id_errors), index)
            return None
        return self._script_call(req, jid, opts, index, key)

    async def _send(self, part: list[_Call], results: list[EnqueueResult | None], gate: asyncio.Semaphore) -> None:
        script = self._enqueue
        batches = [part[i : i + _BATCH] for i in range(0, len(part), _BATCH)]
        async with gate, self._redis.pipeline(transaction=False) as pipe:
            for batch in batches:
                await script(keys=[], args=[*self._consts, b"\x1e".join([c.packed for c in batch])], client=pipe)
            if self._wait is None:
                replies = await pipe.execute()
            else:
                replies = await self._replicated(pipe)
        for batch, (flags, *states) in zip(batches, replies, strict=True):
            dup = iter(states)
            for call, flag in zip(batch, text(flags), strict=True):
                if flag == "1":
                    results[call.index] = EnqueueResult(call.job_id, "accepted", _QUEUED, (), call.index)
                else:
                    results[call.index] = EnqueueResult(call.job_id, "duplicate", text(next(dup)), (), call.index)

    async def _replicated(self, pipe: Pipeline) -> list[Any]:
        """Execute ``pipe`` (the enqueue scripts) followed by ``WAIT`` on the same connection: the scripts'
        replies. Raises :class:`NotReplicated` when too few did in time, since
        a failover could then lose what the producer would be told is stored."""
        assert self._wait is not None
        pipe.execute_command("WAIT", *self._wait)
        replies = await pipe.execute()
        acked = int(replies.pop())
        if acked < self._wait[0]:
            raise NotReplicated(acked, *self._wait)
        return replies

    async def requeue(self, job_id: str) -> bool:
        """Put a dead, failed or unknown job back on its priority queue, attempts reset to 0, and take it
        off the dead-letter list. False if there is no such job, it is in another state, or an arq run of
        it is still finishing (try again shortly)."""
        return await self._requeue_ids([job_id]) == 1

    async def requeue_dead(self, *, chunk: int = 500) -> int:
        """Requeue every job on the dead-letter list; returns how many were requeued."""
        ids = [text(i) for i in await self._redis.zrange(self._keys.dead, 0, -1)]
        done = 0
        for start in range(0, len(ids), chunk):
            done += await self._requeue_ids(ids[start : start + chunk])
        return done

    async def _requeue_ids(self, ids: Sequence[str]) -> int:
        # The queue key depends on the stored priority; read it first so the script declares every key
        # it touches (the script re-checks it).
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self._keys.job(job_id), "prio")
            prios = await pipe.execute()
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id, prio in zip(ids, prios, strict=True):
                if prio is None:
                    pipe.zrem(self._keys.dead, job_id)
                    continue
                p = text(prio)
                await self._requeue(
                    keys=[
                        self._keys.job(job_id),
                        self._keys.arq_job(job_id),
                        self._keys.queue(int(p)),
                        self._keys.dead,
                        retry_key_prefix + job_id,
                        result_key_prefix + job_id,
                        in_progress_key_prefix + job_id,
                    ],
                    args=[job_id, self._ledger_ttl_ms, p, self._prefix],
                    client=pipe,
                )
            replies = await pipe.execute()
        return sum(1 for r in replies if isinstance(r, bytes | str) and text(r) == "requeued")

    def _script_call(self, req: CallRequest, job_id: str, opts: _Options, index: int = 0, key: _Key = _NO_KEY) -> _Call:
        called = req.called
        prio = req.priority
        # model_dump_json is compact and UTF-8 (no \u escapes): the same document as body(), smaller.
        body = req.model_dump_json(by_alias=True, exclude_none=True, exclude_unset=True)
        # One record per job, one argument per batch of records: redis-py's pure-Python packing, per
        # argument, was a sixth of enqueue_many's time. No field can hold \x1e or \x1f: the others are
        # validated, and JSON escapes every control character in the body.
        campaign, nb, dl = opts.encoded
        packed = b"\x1f".join(
            (job_id.encode(), prio.encode(), called.encode(), campaign, nb, dl, opts.timezone,
             opts.status_callback_url, key.stored, body.encode())
        )
        return _Call(index, job_id, packed)


async def enqueue_call(
    request: CallRequest | dict[str, Any],
    *,
    job_id: str | None = None,
    campaign: str | None = None,
    not_before: datetime | None = None,
    deadline: datetime | None = None,
    settings: Settings | None = None,
    status_callback_url: str | None = None,
) -> EnqueueResult:
    """:meth:`Producer.enqueue` on a connection of its own (``settings`` default: ``load_settings()``)."""
    settings = settings or load_settings()
    redis = cli_client(settings)
    try:
        return await Producer(redis, settings).enqueue(
            request, job_id=job_id, campaign=campaign, not_before=not_before, deadline=deadline,
            status_callback_url=status_callback_url,
        )
    finally:
        await redis.aclose()


async def enqueue_many(
    requests: Iterable[CallRequest | dict[str, Any] | CallJob],
    *,
    campaign: str | None = None,
    not_before: datetime | None = None,
    deadline: datetime | None = None,
    settings: Settings | None = None,
    status_callback_url: str | None = None,
) -> list[EnqueueResult]:
    """:meth:`Producer.enqueue_many` on a connection of its own (``settings``: ``load_settings()``)."""
    settings = settings or load_settings()
    redis = cli_client(settings)
    try:
        return await Producer(redis, settings).enqueue_many(
            requests, campaign=campaign, not_before=not_before, deadline=deadline,
            status_callback_url=status_callback_url,
        )
    finally:
        await redis.aclose()
