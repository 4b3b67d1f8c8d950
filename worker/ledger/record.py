"""The dial ledger: one Redis hash per job, the single source of truth for what happened to it.

The arq job only says "run job <id>"; the body, state and history live here, at ``Keys.job(id)``::

    state     queued | sending | sent | failed | dead | unknown | cancelled | expired | suppressed
    prio      "1".."9"                 called    the number dialled
    campaign  (only when set)          body      compact JSON of CallRequest.body() (its first piece)
    b1, b2 .. the rest of a body of more than 64 bytes, in pieces of at most 64 bytes (see ``_body``)
    created   ms                       updated   ms of the last transition (absent: = created)
    attempts  provider tries (absent: 0)  err    last error text (when any)
    serial    callSerialNo (when sent) sent      ms (when sent)
    nb        not_before ms (if set)   dl        deadline ms (if set)
    cm        "1" when counted in its campaign's counters (the campaign existed at enqueue)
    tz        the callee's IANA time zone (calling windows), when it differs from the campaign's
    first     ms of the first provider attempt (the retry time budget counts from it)
    pk        ms the job was parked by a paused campaign (only while parked)
    outcome   answered | unanswered | failed_to_connect, from the result callback; reason: releaseReason
    tk        talkDuration (seconds) from the result callback
    rof, rn   a redial: the id of the number's first job, and which redial this is (1, 2, ...)
    rdl       the first job of a redialled number: its redials' ids, comma-separated, in order
    ev        evidence about an unknown outcome: "release" (the provider's release event proved the call:
              now sent), "none" (no event within DIALER_UNKNOWN_GRACE_S)
    agr       "1" once the job was redialled after its grace period (DIALER_REDIAL_AMBIGUOUS=after-grace)
    scb       the job's own statusCallbackUrl (``dialer webhooks`` POSTs its events there; a campaign job
              without one uses its campaign's). Never part of ``body``: the provider never sees it

Fields are absent rather than empty or default, to keep a queued job's record small (millions of them).
Every transition is one Lua script (``ledger_*.lua``): it checks the state, writes, stamps ``updated``
with the Redis server's clock and refreshes the record's TTL (``settings.ledger_ttl_s``). The lifecycle::
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker.ledger.states import FINAL_STATES, State
from worker.models import CallRequest, parse_request
from worker.rules import ascii_int

__all__ = ["JobRecord", "reserved_field"]

_RESERVED_FIELDS = frozenset(
    {"state", "prio", "called", "campaign", "body", "created", "updated", "attempts", "err", "serial", "sent",
     "nb", "dl", "cm", "tz", "first", "pk", "outcome", "reason", "q", "rof", "rn", "rdl", "ev", "agr", "scb",
     "nk"}
)
_BODY_PIECE = re.compile(r"b[0-9]+")
"""Names of the body's continuation fields (``b1``, ``b2``, ...), reserved as well."""


def reserved_field(name: str) -> bool:
    """True when ``name`` is one of the record's own fields (or empty): extras may not use it."""
    return not name or name in _RESERVED_FIELDS or _BODY_PIECE.fullmatch(name) is not None


def _body(h: dict[str, str]) -> str:
    """The stored body: ``body`` followed by its continuation pieces ``b1``, ``b2``, ... if any.

    enqueue.lua stores a body of more than 64 bytes in pieces of at most 64 bytes, each ending on a UTF-8
    character boundary, so that the hash stays listpack-encoded at Redis' default
    ``hash-max-listpack-value`` (64): a single longer value makes it a hash table, ~400 bytes more.
    """
    text = h["body"]
    if "b1" not in h:
        return text
    parts = [text]
    k = 1
    while (piece := h.get(f"b{k}")) is not None:
        parts.append(piece)
        k += 1
    return "".join(parts)


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
    timezone: str | None = None
    first_attempt_ms: int | None = None
    outcome: str | None = None
    release_reason: str | None = None
    parked: bool = False
    seq: int = 0  # enqueue sequence number: breaks ties between jobs with the same queue score
    talk_duration_s: int | None = None
    redial_of: str | None = None
    """For a redial: the id of the first job of its number (the one the redials are linked to)."""
    redial_number: int = 0
    """0 for a first call, k for its k-th redial."""
    redials: tuple[str, ...] = ()
    """For a first call: the ids of its redials, in order."""
    evidence: str | None = None
    """``release`` when a release event resolved an unknown (or pending) call, ``none`` when an unknown one
    got no event within its grace period; None otherwise."""
    grace_redialled: bool = False
    """The job was redialled once after its grace period (DIALER_REDIAL_AMBIGUOUS=after-grace)."""
    status_callback_url: str | None = None
    """The job's own statusCallbackUrl (its events are POSTed there by ``dialer webhooks``), if it has one."""

    @classmethod
    def from_hash(cls, job_id: str, h: dict[str, str]) -> JobRecord:
        return cls(
            job_id=job_id,
            state=State(h["state"]),
            priority=int(h["prio"]),
            called=h["called"],
            campaign=h.get("campaign") or None,
            body=json.loads(_body(h)),
            attempts=int(h.get("attempts") or 0),
            last_error=h.get("err") or None,
            call_serial_no=h.get("serial") or None,
            created_ms=int(h["created"]),
            updated_ms=int(h.get("updated") or h["created"]),
            sent_ms=_int_or_none(h.get("sent")),
            not_before_ms=_int_or_none(h.get("nb")),
            deadline_ms=_int_or_none(h.get("dl")),
            timezone=h.get("tz") or None,
            seq=int(h.get("q") or 0),
            first_attempt_ms=_int_or_none(h.get("first")),
            outcome=h.get("outcome") or None,
            release_reason=h.get("reason") or None,
            parked="pk" in h,
            talk_duration_s=ascii_int(h.get("tk")),  # from a callback: a stored "²" must not break reads
            redial_of=h.get("rof") or None,
            redial_number=int(h.get("rn") or 0),
            redials=tuple(i for i in (h.get("rdl") or "").split(",") if i),
            evidence=h.get("ev") or None,
            grace_redialled="agr" in h,
            status_callback_url=h.get("scb") or None,
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
        ``body`` (the request body with the seed's field names); from the result callback ``outcome``
        (``answered``, ``unanswered``, ``failed_to_connect`` or null), ``release_reason`` (the provider's
        releaseReason) and ``talk_duration_s``; for redials (campaign option) ``redial_of`` (the number's
        first job) and, on that first job, ``redials`` (ids, in order; ``[]`` otherwise); ``evidence``
        (``release``: the provider's release event proved an unknown call; ``none``: an unknown call got no
        event within its grace period; else null) and ``grace_redialled``; ``status_callback_url`` (the job's
        own, not its campaign's). Absent values are null, never missing.
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
            "outcome": self.outcome,
            "release_reason": self.release_reason,
            "talk_duration_s": self.talk_duration_s,
            "redial_of": self.redial_of,
            "redials": list(self.redials),
            "evidence": self.evidence,
            "grace_redialled": self.grace_redialled,
            "status_callback_url": self.status_callback_url,
        }
