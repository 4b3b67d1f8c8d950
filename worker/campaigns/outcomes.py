"""Result callbacks and redials: what a release event means for its job and its campaign.

::

    outcomes = Outcomes(redis, settings)
    done = await outcomes.record(ReleaseEvent.model_validate(body))   # None: no job has this callSerialNo
    done.outcome, done.redial                                          # ("unanswered", "spring:8613800000001:r1")

The provider's ``releaseReason`` (provider-api.md §3) becomes the job's ``outcome``:

=====================  =====================  ==========================================
releaseReason          outcome                redialled (campaign option ``--redial``)
=====================  =====================  ==========================================
0, 1                   ``answered``           no
4                      ``unanswered``         yes (rejected, or no answer before the ring timeout)
6, 8, 9                ``failed_to_connect``  yes (failed before ringing, no resources, queue timeout)
10, 999                ``failed_to_connect``  no (call restricted; recording failed to start)
anything else          ``failed_to_connect``  no (the code is kept in ``release_reason``)
=====================  =====================  ==========================================

**Redials.** A campaign launched with a redial policy (``--redial N --redial-after 30m``) redials a number
whose call ended with a redialled reason, at most N times. Each redial is its own ledger entry and job,
``<first job id>:r<k>``, enqueued through the producer as a deferred job (``not_before`` = now + the
delay), so everything that applies to a campaign job applies to it: the calling window (a redial falling
due at night waits for the opening), the do-not-call list, the per-number cap, pause and cancel, the
deadline (no redial is made that would fall due after it). It is linked to the first job of its number
(``redial_of`` on the redial, ``redials`` on the first job) and counted in the campaign's ``redials``.

The redial is made *before* the outcome is recorded, and both steps are idempotent (the redial's id is
derived from the first job's, the outcome is recorded once): a callback delivered twice, or retried by the
provider after a crash between the two steps, never makes two redials; and once a call's outcome is
counted, its redial (if any) exists.

**The first outcome stands.** Once a job has an outcome, a callback with a different one (a late event,
or a forged one) changes nothing: no redial, nothing written or counted; it is logged at WARNING with the
job id (never the number). So a callback can never get an answered call redialled. (Two *different*
callbacks for one call arriving within the same few milliseconds could still both pass the check before
either is recorded: the first recorded stands, and a redial the other one made is named in its WARNING.)
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from worker.callback_url import CALLBACK_PATH, own_callback
from worker.campaigns.compaction import Compactor
from worker.campaigns.control import CampaignSpec
from worker.errors import InvalidRequest
from worker.ledger.producer import Producer
from worker.ledger.record import JobRecord
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.models import ReleaseEvent
from worker.rules import ascii_int, normalize_number, valid_job_id
from worker.settings import Settings
from worker.store.decode import text
from worker.store.keys import Keys

__all__ = [
    "CALLBACK_PATH",
    "MAX_REDIALS",
    "REDIAL_REASONS",
    "EvidenceMismatch",
    "Outcomes",
    "Recorded",
    "RedialPolicy",
    "callback_url",
    "outcome_of",
    "parse_duration",
]

log = logging.getLogger(__name__)


ANSWERED_REASONS = frozenset({"0", "1"})
UNANSWERED_REASONS = frozenset({"4"})
REDIAL_REASONS = frozenset({"4", "6", "8", "9"})
MAX_REDIALS = 10
DEFAULT_REDIAL_AFTER_S = 1800.0
MIN_REDIAL_AFTER_S = 1.0
MAX_REDIAL_AFTER_S = 7 * 86400.0

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_PLAIN_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def outcome_of(release_reason: str) -> str:
    """The outcome of a releaseReason (see the module's table).

    >>> outcome_of("1"), outcome_of("4"), outcome_of("9"), outcome_of("77")
    ('answered', 'unanswered', 'failed_to_connect', 'failed_to_connect')
    """
    if release_reason in ANSWERED_REASONS:
        return "answered"
    if release_reason in UNANSWERED_REASONS:
        return "unanswered"
    return "failed_to_connect"


def parse_duration(text: str | float) -> float:
    """Seconds in ``30m``, ``90s``, ``2h``, ``1h30m``, ``1.5d``, ``500ms`` or a plain number of seconds;
    raises ValueError.

    >>> parse_duration("1h30m"), parse_duration("45"), parse_duration(2.5)
    (5400.0, 45.0, 2.5)
    """
    if isinstance(text, bool):
        raise ValueError("must be a duration such as 30m, 90s, 2h or 1h30m")
    if isinstance(text, int | float):
        return float(text)
    cleaned = text.strip().lower().replace(" ", "")
    if _PLAIN_NUMBER.fullmatch(cleaned):  # ASCII only: float() would also take "١٢", "1_0" or "inf"
        return float(cleaned)
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(cleaned):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if not cleaned or pos != len(cleaned):
        raise ValueError("must be a duration such as 30m, 90s, 2h or 1h30m")
    return total


@dataclass(frozen=True)
class RedialPolicy:
    """Redial a number whose call ended with a reason in :data:`REDIAL_REASONS`, at most ``max`` times,
    ``after_s`` seconds after the callback of the previous call."""

    max: int
    after_s: float

    @classmethod
    def build(cls, redial: int | None, after: str | float | None) -> tuple[RedialPolicy | None, list[tuple[str, str]]]:
        """A policy from the launch options, or the problems as (option, rule); ``redial`` None = none."""
        problems: list[tuple[str, str]] = []
        if redial is None:
            if after is not None:
                problems.append(("redial_after", "needs --redial (how many times to redial)"))
            return None, problems
        if isinstance(redial, bool) or not isinstance(redial, int) or not 1 <= redial <= MAX_REDIALS:
            problems.append(("redial", f"must be 1..{MAX_REDIALS}"))
        after_s = DEFAULT_REDIAL_AFTER_S
        if after is not None:
            try:
                after_s = parse_duration(after)
            except ValueError as exc:
                problems.append(("redial_after", str(exc)))
            else:
                if not MIN_REDIAL_AFTER_S <= after_s <= MAX_REDIAL_AFTER_S:
                    problems.append(("redial_after", "must be from 1s to 7d"))
        if problems:
            return None, problems
        return cls(redial, after_s), []

    def as_spec(self) -> dict[str, Any]:
        return {"max": self.max, "after_s": self.after_s}

    @classmethod
    def from_spec(cls, data: dict[str, Any] | None) -> RedialPolicy | None:
        if not data:
            return None
        try:
            return cls(int(data["max"]), float(data["after_s"]))
        except (KeyError, TypeError, ValueError):
            return None


def callback_url(settings: Settings) -> str | None:
    """The callBackUrl campaign calls get: ``DIALER_PUBLIC_URL`` + :data:`CALLBACK_PATH`, or None."""
    return own_callback(settings.public_url)


class EvidenceMismatch(Exception):
    """A release event that names, through its callback URL, a job it cannot belong to; nothing recorded."""

    def __init__(self, field: str, rule: str) -> None:
        self.field, self.rule = field, rule
        super().__init__(f"{field}: {rule}")


def _same_number(called: str | None, number: str) -> bool:
    """Whether a release event's ``called`` is the job's number (formatting and a leading '+' aside)."""
    if called is None:
        return False
    try:
        return normalize_number(called) == normalize_number(number)
    except ValueError:
        return False


@dataclass(frozen=True)
class Recorded:
    """A recorded callback: the job, its outcome, and the redial made for it (new or already there)."""

    job_id: str
    outcome: str
    record: JobRecord
    redial: str | None = None
    ignored: bool = False
    """True when the job already had a different outcome: the first outcome stands, this one changed nothing."""


def _show(value: str) -> str:
    """A short, log-safe rendering of an untrusted value."""
    return repr(value)[:40]


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class Outcomes:
    """Records release events on their jobs and makes the redials. Cheap; share one per process."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._keys = Keys(settings.key_prefix)
        self._ledger = Ledger(redis, settings)
        self._producer = Producer(redis, settings)
        self._compactor = Compactor(redis, settings)

    async def record(self, event: ReleaseEvent, job_hint: str | None = None) -> Recorded | None:
        """Record ``event`` on the job that got its callSerialNo (and redial it if its campaign says so).

        ``job_hint`` is the job id the callback URL's path named (:mod:`worker.callback_url`): it finds the
        job when the ledger never learnt the serial (a worker killed while its request was out). The event
        is the provider's evidence that the call exists, so a job not yet ``sent`` (``unknown`` above all)
        becomes ``sent`` with the serial (:meth:`Ledger.mark_evidenced`). A hint is believed only when the
        event's ``called`` is the job's number and the serial belongs to no other job (raises
        :class:`EvidenceMismatch`). None when no job has that callSerialNo (or the hinted id)."""
        serial = event.call_serial_no
        job_id = await self._ledger.job_for_serial(serial)
        if job_id is not None and job_hint is not None and job_hint != job_id:
            raise EvidenceMismatch("callSerialNo", f"belongs to another job than the one the callback URL names "
                                                   f"({job_hint!r})")
        target = job_id or job_hint
        record = None if target is None else await self._ledger.get(target)
        if record is None:
            return None if job_hint is None else await self._compacted(event, job_hint)
        if job_id is None and not _same_number(event.called, record.called):
            raise EvidenceMismatch("called", f"must be the number of job {record.job_id!r}, which the callback URL "
                                             "names")
        indexed, job_id = job_id is not None, record.job_id
        if record.state != State.SENT or not indexed:
            # Not sent yet, or sent with another serial (two calls for one job: this one is indexed too).
            prev = await self._ledger.mark_evidenced(job_id, serial)
            if prev != State.SENT:
                log.info("job %s: %s until its release event proved the call: now sent (callSerialNo %s)",
                         job_id, prev, _show(serial),
                         extra={"job_id": job_id, "campaign": record.campaign, "outcome": "sent"})
            record = await self._ledger.get(job_id) or record
        reason = event.release_reason or ""
        outcome = outcome_of(reason)
        if record.outcome is not None and record.outcome != outcome:
            return self._ignored(record, outcome, reason)
        # The same outcome again (a retry or a replay) decides its redial by the reason that was recorded.
        standing_reason = reason if record.outcome is None else (record.release_reason or "")
        redial = await self._redial(record) if standing_reason in REDIAL_REASONS else None
        talk = ascii_int(event.talk_duration)  # ASCII digits only: "²" passed str.isdigit()
        extra = {"tk": str(talk)} if talk is not None else {}
        updated = await self._ledger.record_outcome(job_id, outcome, reason, extra)
        if updated is None:
            return None
        if updated.outcome != outcome:  # another callback's outcome landed in between: it stands
            return self._ignored(updated, outcome, reason, redial)
        log.info("job %s: %s (releaseReason %s)%s", job_id, outcome, reason,
                 f"; redial {redial}" if redial else "",
                 extra={"job_id": job_id, "campaign": record.campaign, "outcome": outcome})
        return Recorded(job_id, outcome, updated, redial)

    async def _compacted(self, event: ReleaseEvent, job_id: str) -> Recorded | None:
        """A callback for a campaign call whose job was compacted before it came (:mod:`.compaction`): its
        outcome goes into the number's compact value, counted once; no redial (the row's values are gone)."""
        campaign = job_id.split(":", 1)[0] if ":" in job_id else None
        if campaign is None:
            return None
        reason = event.release_reason or ""
        outcome = outcome_of(reason)
        verdict, call = await self._compactor.record_outcome(
            campaign, job_id, event.call_serial_no, outcome, reason, ascii_int(event.talk_duration))
        if call is None:
            return None
        record = JobRecord(job_id=job_id, state=State.SENT, priority=0, called=event.called or "", campaign=campaign,
                           body={}, attempts=call.attempts, last_error=None, call_serial_no=call.serial,
                           created_ms=0, updated_ms=0, sent_ms=call.sent_ms, not_before_ms=None, deadline_ms=None,
                           outcome=call.outcome, release_reason=call.release_reason,
                           talk_duration_s=call.talk_duration_s)
        if verdict == "recorded":
            log.info("job %s: %s (releaseReason %s), recorded on its compacted call", job_id, outcome, _show(reason),
                     extra={"job_id": job_id, "campaign": campaign, "outcome": outcome})
            return Recorded(job_id, outcome, record)
        if verdict == "stands" and call.outcome == outcome:
            return Recorded(job_id, outcome, record)
        if verdict == "stands":
            return self._ignored(record, outcome, reason)
        return Recorded(job_id, call.outcome or outcome, record, ignored=True)  # superseded by a later call

    @staticmethod
    def _ignored(record: JobRecord, outcome: str, reason: str, redial: str | None = None) -> Recorded:
        """A callback whose outcome differs from the one the job has: the first stands; logged, not counted.
        (``redial``: one made just before a concurrent callback's outcome landed; it stays, named in the log.)"""
        log.warning("job %s: callback ignored: its outcome %s (releaseReason %s) differs from the %s recorded "
                    "first, which stands%s", record.job_id, outcome, _show(reason), record.outcome,
                    f"; redial {redial} was made before the first outcome landed" if redial else "",
                    extra={"job_id": record.job_id, "campaign": record.campaign, "outcome": record.outcome})
        return Recorded(record.job_id, record.outcome or outcome, record, redial, ignored=True)

    async def _redial(self, record: JobRecord) -> str | None:
        if record.campaign is None:
            return None
        status, spec_text = await self._redis.hmget(  # type: ignore[misc]
            self._keys.campaign(record.campaign), ["status", "spec"]
        )
        if spec_text is None:
            return None  # the campaign name is only a tag, or the campaign has expired
        policy = RedialPolicy.from_spec(CampaignSpec.from_canonical(text(spec_text)).redial)
        if policy is None or (status is not None and text(status) == "cancelled"):
            return None
        first = record.redial_of or record.job_id
        number = record.redial_number + 1
        if number > policy.max:
            return None
        redial_id = f"{first}:r{number}"
        if not valid_job_id(redial_id):
            log.warning("job %s: no redial: id %r would exceed 128 characters", record.job_id, redial_id)
            return None
        run_at = time.time() + policy.after_s
        if record.deadline_ms is not None and run_at * 1000 >= record.deadline_ms:
            log.info("job %s: no redial: it would fall due after the campaign's deadline", record.job_id)
            return None
        try:
            await self._producer.enqueue(
                record.body, derived_id=redial_id, campaign=record.campaign, not_before=_utc(run_at),
                deadline=None if record.deadline_ms is None else _utc(record.deadline_ms / 1000),
                timezone=record.timezone, status_callback_url=record.status_callback_url,
            )
        except InvalidRequest as exc:  # e.g. the deadline passed meanwhile
            log.warning("job %s: no redial: %s", record.job_id, exc)
            return None
        await self._ledger.link_redial(first, redial_id, number)
        return redial_id
