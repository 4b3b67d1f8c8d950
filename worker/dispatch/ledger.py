"""The dial ledger: one Redis hash per job, the single source of truth for what happened to it.

The arq job only says "run job <id>"; the body, state and history live here, at ``Keys.job(id)``::

    state     queued | sending | sent | failed | dead | unknown | cancelled | expired | suppressed
    prio      "1".."9"                 called    the number dialled
    campaign  (only when set)          body      compact JSON of CallRequest.body()
    created   ms                       updated   ms of the last transition (absent: = created)
    attempts  provider tries (absent: 0)  err    last error text (when any)
    serial    callSerialNo (when sent) sent      ms (when sent)
    nb        not_before ms (if set)   dl        deadline ms (if set)

Fields are absent rather than empty or default, to keep a queued job's record small (millions of them).
Every transition is one Lua script (``ledger_*.lua``): it checks the state, writes, stamps ``updated``
with the Redis server's clock and refreshes the record's TTL (``settings.ledger_ttl_s``). The lifecycle::

    queued -> sending -> sent
       ^         |-----> queued (mark_retry)      -> ... -> dead (dead_letter)
       |         |-----> failed / unknown (mark_final)
       +-- claim() finds "sending" left by a dead worker: unknown, or queued if redial_ambiguous

A worker uses it like this::

    verdict, rec = await ledger.claim(job_id)
    if verdict == "run" and await ledger.mark_sending(job_id):
        serial = await send(rec.request())
        await ledger.mark_sent(job_id, serial)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any, Literal

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from worker.dispatch.keys import Keys
from worker.models import CallRequest, parse_request
from worker.settings import Settings

logger = logging.getLogger(__name__)

STALE_ERROR = "worker died mid-request"

Verdict = Literal["run", "final", "stale", "missing"]


class State(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    DEAD = "dead"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"


FINAL_STATES: frozenset[State] = frozenset(State) - {State.QUEUED, State.SENDING}
# mark_final's targets; "sent" and "dead" have their own methods because they write more than a state.
_MARK_FINAL_STATES = FINAL_STATES - {State.SENT, State.DEAD}


@cache
def _lua(name: str) -> str:
    return Path(__file__).with_name(name).read_text(encoding="utf-8")


def _str(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _hash(raw: dict[Any, Any] | list[Any]) -> dict[str, str]:
    """HGETALL from redis-py (dict) or from Lua (flat list), bytes or str, as a str dict."""
    if isinstance(raw, dict):
        return {_str(k): _str(v) for k, v in raw.items()}
    it = iter(raw)
    return {_str(k): _str(v) for k, v in zip(it, it, strict=True)}


def _int_or_none(v: str | None) -> int | None:
    return None if v is None or v == "" else int(v)


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class JobRecord:
    """One ledger record, decoded. Times are Unix milliseconds from the Redis server's clock."""

    job_id: str
    state: State
    priority: int
    called: str
    campaign: str | None
    body: dict[str, Any]
    attempts: int
    last_error: str | None
    call_serial_no: str | None
    created_ms: int
    updated_ms: int
    sent_ms: int | None
    not_before_ms: int | None
    deadline_ms: int | None

    @classmethod
    def from_hash(cls, job_id: str, h: dict[str, str]) -> JobRecord:
        return cls(
            job_id=job_id,
            state=State(h["state"]),
            priority=int(h["prio"]),
            called=h["called"],
            campaign=h.get("campaign") or None,
            body=json.loads(h["body"]),
            attempts=int(h.get("attempts") or 0),
            last_error=h.get("err") or None,
            call_serial_no=h.get("serial") or None,
            created_ms=int(h["created"]),
            updated_ms=int(h.get("updated") or h["created"]),
            sent_ms=_int_or_none(h.get("sent")),
            not_before_ms=_int_or_none(h.get("nb")),
            deadline_ms=_int_or_none(h.get("dl")),
        )

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    def request(self) -> CallRequest:
        """The stored body, validated again (raises InvalidRequest if it was tampered with)."""
        return parse_request(self.body)

    def as_dict(self) -> dict[str, Any]:
        """A stable JSON shape for the CLI and HTTP API.

        Keys: ``id``, ``state``, ``priority`` (int), ``called``, ``campaign``, ``attempts``,
        ``last_error``, ``call_serial_no``, ``created_at``, ``updated_at``, ``sent_at``, ``not_before``,
        ``deadline`` (ISO 8601 UTC with milliseconds, e.g. ``"2025-01-02T03:04:05.678Z"``, or null),
        ``body`` (the request body with the seed's field names). Absent values are null, never missing.
        """
        return {
            "id": self.job_id,
            "state": str(self.state),
            "priority": self.priority,
            "called": self.called,
            "campaign": self.campaign,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "call_serial_no": self.call_serial_no,
            "created_at": _iso(self.created_ms),
            "updated_at": _iso(self.updated_ms),
            "sent_at": _iso(self.sent_ms),
            "not_before": _iso(self.not_before_ms),
            "deadline": _iso(self.deadline_ms),
            "body": self.body,
        }


class Ledger:
    """Reads and transitions ledger records. Cheap to create; share one per process.

    ``redis`` may decode responses or not. Every ``mark_*`` is one atomic script that refuses to move a
    job out of a final state, except ``mark_sent`` (a created call is a fact; see ledger_sent.lua).
    """

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._keys = Keys(settings.key_prefix)
        self._ttl_ms = settings.ledger_ttl_s * 1000
        self._redial = "1" if settings.redial_ambiguous else "0"
        self._claim: AsyncScript = redis.register_script(_lua("ledger_claim.lua"))
        self._sending: AsyncScript = redis.register_script(_lua("ledger_sending.lua"))
        self._sent: AsyncScript = redis.register_script(_lua("ledger_sent.lua"))
        self._retry: AsyncScript = redis.register_script(_lua("ledger_retry.lua"))
        self._final: AsyncScript = redis.register_script(_lua("ledger_final.lua"))
        self._reject: AsyncScript = redis.register_script(_lua("ledger_reject.lua"))

    async def get(self, job_id: str) -> JobRecord | None:
        raw = await self._redis.hgetall(self._keys.job(job_id))  # type: ignore[misc]  # redis-py's union
        return JobRecord.from_hash(job_id, _hash(raw)) if raw else None

    async def claim(self, job_id: str) -> tuple[Verdict, JobRecord | None]:
        """Atomic start of a job run. Returns ``(verdict, record)``; the record is None only if missing.

        - ``"run"``: the job is queued (state unchanged), go ahead;
        - ``"final"``: the job is already finished, do nothing;
        - ``"stale"``: a previous run died mid-request (state was ``sending``): now ``unknown`` with
          error ``"worker died mid-request"``. With ``settings.redial_ambiguous`` the job is set back to
          ``queued`` instead and the verdict is ``"run"``;
        - ``"missing"``: no record (expired or never enqueued).
        """
        res = await self._claim(keys=[self._keys.job(job_id)], args=[self._ttl_ms, self._redial, STALE_ERROR])
        verdict: Verdict = _str(res[0])  # type: ignore[assignment]
        if verdict == "missing":
            return verdict, None
        rec = JobRecord.from_hash(job_id, _hash(res[1]))
        if len(res) > 2:
            logger.warning("job %s: previous run died mid-request; now %s", job_id, rec.state)
        return verdict, rec

    async def mark_sending(self, job_id: str) -> bool:
        """Atomic queued -> sending and attempts += 1, just before the request leaves.

        False if the job was no longer queued (e.g. cancelled meanwhile): the caller must not send.
        """
        n = await self._sending(keys=[self._keys.job(job_id)], args=[self._ttl_ms])
        return int(n) > 0

    async def mark_sent(self, job_id: str, call_serial_no: str) -> None:
        """Record the created call: state ``sent``, ``serial``, ``sent`` time, and the serial index.

        Applies whatever the state was, because the call exists: a job cancelled or marked unknown while
        its request was in flight becomes ``sent`` (logged). A job already sent keeps its first serial.
        """
        prev = _str(
            await self._sent(
                keys=[self._keys.job(job_id), self._keys.serial(call_serial_no)],
                args=[call_serial_no, self._ttl_ms, job_id],
            )
        )
        if prev != State.SENDING:
            logger.warning("job %s: mark_sent(%s) while %s", job_id, call_serial_no, prev)

    async def mark_retry(self, job_id: str, error: str) -> bool:
        """sending -> queued with ``error`` (attempts kept). False (nothing written) if the job is final."""
        prev = _str(await self._retry(keys=[self._keys.job(job_id)], args=[error, self._ttl_ms]))
        return self._applied(job_id, "mark_retry", prev)

    async def mark_final(self, job_id: str, state: State, error: str | None = None) -> bool:
        """queued/sending -> ``state`` (failed, unknown, expired, suppressed or cancelled).

        ``error`` None keeps the last error. The first final state wins: returns False (nothing written)
        if the job was already final, so ``sent`` is never overwritten.
        """
        if state not in _MARK_FINAL_STATES:
            raise ValueError(f"mark_final: state must be one of {sorted(_MARK_FINAL_STATES)}, not {state!r}")
        return await self._finish(job_id, state, error or "")

    async def dead_letter(self, job_id: str, error: str) -> bool:
        """queued/sending -> ``dead`` with ``error``, listed in the dead-letter set (``Keys.dead``).

        The set is trimmed of members older than the ledger TTL, since their records are gone.
        """
        return await self._finish(job_id, State.DEAD, error)

    async def reject(self, job_id: str, reason: str) -> None:
        """Dead-letter a job that cannot run as stored, creating a minimal record if it has none.

        Used for garbage payloads, jobs written without a ledger record, and corrupt records; a job
        already ``sent`` is left alone.
        """
        await self._reject(keys=[self._keys.job(job_id), self._keys.dead], args=[reason, self._ttl_ms, job_id])

    async def states(self, job_ids: Sequence[str]) -> list[State | None]:
        """The state of each job (None if it has no record), in one pipelined round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self._keys.job(job_id), "state")
            raw = await pipe.execute()
        return [None if v is None else State(_str(v)) for v in raw]

    async def list_dead(self, limit: int = 100) -> list[JobRecord]:
        """Dead-lettered jobs, most recent first."""
        ids = [_str(i) for i in await self._redis.zrevrange(self._keys.dead, 0, limit - 1)]
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self._keys.job(job_id))
            raws = await pipe.execute()
        out = []
        for job_id, raw in zip(ids, raws, strict=True):
            if raw:
                out.append(JobRecord.from_hash(job_id, _hash(raw)))
        return out

    async def job_for_serial(self, call_serial_no: str) -> str | None:
        """The job whose call got this callSerialNo, for the callback receiver."""
        v = await self._redis.get(self._keys.serial(call_serial_no))
        return None if v is None else _str(v)

    async def _finish(self, job_id: str, state: State, error: str) -> bool:
        prev = _str(
            await self._final(
                keys=[self._keys.job(job_id), self._keys.dead],
                args=[str(state), error, self._ttl_ms, job_id],
            )
        )
        also_ok = (State.DEAD,) if state == State.DEAD else ()
        return self._applied(job_id, f"-> {state}", prev, also_ok)

    @staticmethod
    def _applied(job_id: str, what: str, prev: str, also_ok: tuple[str, ...] = ()) -> bool:
        if prev in (State.QUEUED, State.SENDING, *also_ok):
            return True
        logger.info("job %s: %s ignored, state is %s", job_id, what, prev)
        return False
