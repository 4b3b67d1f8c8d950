"""The dial ledger's transitions: one Redis hash per job (its fields: :mod:`worker.ledger.record`),
the single source of truth for what happened to it.
Every transition is one Lua script (``ledger_*.lua``): it checks the state, writes, stamps ``updated``
with the Redis server's clock and refreshes the record's TTL (``settings.ledger_ttl_s``). The lifecycle::

    queued -> sending -> sent
       ^         |-----> queued (mark_retry)      -> ... -> dead (dead_letter)
       |         |-----> failed / unknown (mark_final)
       +-- claim() finds "sending" left by a dead worker: unknown, or queued if redial_ambiguous
    queued -> cancelled | suppressed (campaign checks at claim and again right before sending)

The hot transitions (``claim_run``, ``begin_send``, ``mark_*``) go through the Redis client's
:class:`~worker.store.pipelining.AutoPipeline`: those of a worker's concurrent jobs share round trips.
``begin_send`` can also take the job's fleet-wide in-flight lease, and ``mark_sent`` / ``mark_retry`` /
``mark_final`` / ``dead_letter`` give it back, in the same script (``lease=``; see ``inflight.py``).

Campaign jobs (``cm``) are also counted per state in ``Keys.campaign_counts``: every script that moves a
job moves its count in the same atomic step (``ledger/counts.lua``), so a campaign's status is exact and O(1).

A worker uses it like this::

    verdict, rec = await ledger.claim(job_id)
    if verdict == "run" and await ledger.mark_sending(job_id):
        serial = await send(rec.request())
        await ledger.mark_sent(job_id, serial)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from worker.ledger.record import JobRecord, reserved_field
from worker.ledger.states import FINAL_STATES, OUTCOMES, STALE_ERROR, State
from worker.limits.inflight import Lease
from worker.settings import Settings
from worker.store import scripts
from worker.store.decode import as_dict, text
from worker.store.keys import Keys
from worker.store.pipelining import AutoPipeline

logger = logging.getLogger(__name__)

Verdict = Literal["run", "final", "stale", "missing"]
ClaimVerdict = Literal["run", "final", "stale", "missing", "parked", "cap"]
# mark_final's targets; "sent" and "dead" have their own methods because they write more than a state.
_MARK_FINAL_STATES = FINAL_STATES - {State.SENT, State.DEAD}


def _released(lease: Lease | None) -> None:
    """The script just run gave the lease back."""
    if lease is not None:
        lease.held = False


@dataclass(frozen=True)
class Claim:
    """What :meth:`Ledger.claim_run` found. ``campaign`` is the campaign's hash (``status``, ``rate``,
    ``window``, ``days``, ``tz``, ``pace`` ...) when the job counts in a campaign, else empty;
    ``retry_after_ms`` is set with verdict ``"cap"``: how long until the number may be called again."""

    verdict: ClaimVerdict
    record: JobRecord | None
    campaign: dict[str, str]
    retry_after_ms: int | None = None


@dataclass(frozen=True)
class SendGate:
    """Answer of :meth:`Ledger.begin_send`. ``ok``: the job is now ``sending`` (attempt ``attempts``);
    else ``reason``: ``"state"`` (no longer queued), ``"busy"`` (the fleet's in-flight cap is reached;
    nothing changed), ``"parked"``, ``"cancelled"``, ``"suppressed"`` or ``"cap"`` (then
    ``retry_after_ms``)."""

    ok: bool
    attempts: int = 0
    reason: str = ""
    retry_after_ms: int | None = None
    replicated: bool = True
    """False when ``ok`` but fewer replicas than DIALER_REDIS_WAIT_REPLICAS acknowledged the ``sending``
    mark in time: a failover could lose it, so the request must not leave (the job goes back to queued)."""


class Ledger:
    """Reads and transitions ledger records. Cheap to create; share one per process.

    ``redis`` may decode responses or not. Every ``mark_*`` is one atomic script that refuses to move a
    job out of a final state, except ``mark_sent`` (a created call is a fact; see sent.lua).
    """

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._keys = Keys(settings.key_prefix)
        self._ttl_ms = settings.ledger_ttl_s * 1000
        self._redial = "1" if settings.redial_ambiguous == "always" else "0"
        self._prefix = settings.key_prefix
        self._pipe = AutoPipeline.of(redis)
        self._wait = (settings.wait_replicas, settings.redis_wait_timeout_ms) if settings.wait_replicas else None
        self._cap = (str(settings.number_cap_calls), str(round(settings.number_cap_days * 86_400_000)))
        self._claim: AsyncScript = scripts.register(redis, "ledger/claim.lua", settings)
        self._sending: AsyncScript = scripts.register(redis, "ledger/sending.lua", settings)
        self._sent: AsyncScript = scripts.register(redis, "ledger/sent.lua", settings)
        self._retry: AsyncScript = scripts.register(redis, "ledger/retry.lua", settings)
        self._final: AsyncScript = scripts.register(redis, "ledger/final.lua", settings)
        self._reject: AsyncScript = scripts.register(redis, "ledger/reject.lua", settings)
        self._outcome: AsyncScript = scripts.register(redis, "ledger/outcome.lua", settings)
        self._postpone: AsyncScript = scripts.register(redis, "ledger/postpone.lua", settings)
        self._link: AsyncScript = scripts.register(redis, "ledger/link.lua", settings)

    async def get(self, job_id: str) -> JobRecord | None:
        raw = await self._redis.hgetall(self._keys.job(job_id))  # type: ignore[misc]  # redis-py's union
        return JobRecord.from_hash(job_id, as_dict(raw)) if raw else None

    async def claim(self, job_id: str) -> tuple[Verdict, JobRecord | None]:
        """Atomic start of a job run. Returns ``(verdict, record)``; the record is None only if missing.

        - ``"run"``: the job is queued (state unchanged), go ahead;
        - ``"final"``: the job is already finished, do nothing;
        - ``"stale"``: a previous run died mid-request (state was ``sending``): now ``unknown`` with
          error ``"worker died mid-request"``. With ``settings.redial_ambiguous`` the job is set back to
          ``queued`` instead and the verdict is ``"run"``;
        - ``"missing"``: no record (expired or never enqueued).

        Campaign checks run here too (see :meth:`claim_run`); a job parked or held by the number cap is
        reported as ``"final"`` by this simpler form, with its record (still ``queued``).
        """
        c = await self.claim_run(job_id)
        verdict: Verdict = "final" if c.verdict in ("parked", "cap") else c.verdict  # type: ignore[assignment]
        return verdict, c.record

    async def claim_run(self, job_id: str) -> Claim:
        """:meth:`claim` with the campaign checks' answers, in one round trip.

        For a queued job of a campaign: cancelled campaign -> the job becomes ``cancelled`` (verdict
        ``"final"``); paused -> it is parked (``"parked"``: end the run, resume requeues it); number on
        the do-not-call list -> ``suppressed`` (``"final"``); per-number cap reached -> ``"cap"`` with
        ``retry_after_ms``. Otherwise ``"run"`` with the campaign's settings in ``Claim.campaign``.
        """
        res = await self._pipe.eval(
            self._claim,
            [self._keys.job(job_id), self._keys.unknown],
            [self._ttl_ms, self._redial, STALE_ERROR, self._prefix, job_id, *self._cap],
        )
        verdict: ClaimVerdict = text(res[0])  # type: ignore[assignment]
        if verdict == "missing":
            return Claim(verdict, None, {})
        rec = JobRecord.from_hash(job_id, as_dict(res[1]))
        campaign = as_dict(res[2]) if len(res) > 2 else {}
        extra = text(res[3]) if len(res) > 3 else None
        if extra == "stale":
            logger.warning("job %s: previous run died mid-request; now %s", job_id, rec.state)
        retry_after = int(extra) if verdict == "cap" and extra is not None else None
        return Claim(verdict, rec, campaign, retry_after)

    async def mark_sending(self, job_id: str) -> bool:
        """Atomic queued -> sending and attempts += 1, just before the request leaves.

        False if the job was no longer queued (e.g. cancelled meanwhile) or a campaign check refused it
        (see :meth:`begin_send`): the caller must not send.
        """
        return (await self.begin_send(job_id)).ok

    async def begin_send(self, job_id: str, lease: Lease | None = None, *, now: bool = False) -> SendGate:
        """The last gate before a request leaves: queued -> sending and attempts += 1, unless the job's
        campaign was paused (the job is parked) or cancelled, its number was suppressed, or the
        per-number cap is reached (the call is booked against the cap when it passes).

        With ``lease`` (not held yet) the same script takes the job's in-flight lease, or answers
        ``"busy"`` without changing anything when the fleet's cap is reached. ``lease.held`` is left
        True whenever the lease may exist (also if this call fails), so that it is given back.
        ``now``: do not wait for other calls' round trip (see ``AutoPipeline.eval``): the request is paced."""
        keys = [self._keys.job(job_id)]
        args: list[str | int] = [self._ttl_ms, self._prefix, job_id, *self._cap]
        if lease is not None and not lease.held:
            keys.append(lease.key)
            args += [lease.member, lease.cap, lease.ttl_ms]
            lease.held = True
        acked = 0
        if self._wait is None:
            res = await self._pipe.eval(self._sending, keys, args, now=now)
        else:
            # The mark must be on a replica before the request leaves: a failover to a replica without it
            # would find the job `queued` and call the number again.
            res, acked = await self._pipe.eval_replicated(self._sending, keys, args, self._wait, now=now)
        n = int(res[0])
        if n > 0:
            return SendGate(True, n, replicated=self._wait is None or acked >= self._wait[0])
        reason = text(res[1])
        if len(keys) > 1 and reason != "state":
            # Refused before the lease was taken. ("state": a first run of this script, retried by
            # redis-py after a dropped connection, may have taken it.)
            assert lease is not None
            lease.held = False
        retry_after = int(text(res[2])) if len(res) > 2 else None
        return SendGate(False, 0, reason, retry_after)

    async def mark_sent(self, job_id: str, call_serial_no: str, lease: Lease | None = None) -> None:
        """Record the created call: state ``sent``, ``serial``, ``sent`` time, and the serial index.

        Applies whatever the state was, because the call exists: a job cancelled or marked unknown while
        its request was in flight becomes ``sent`` (logged). A job already sent keeps its first serial.
        A held ``lease`` is given back in the same script.
        """
        keys = [self._keys.job(job_id), self._keys.serial(call_serial_no)]
        args: list[str | int] = [call_serial_no, self._ttl_ms, job_id, self._prefix, ""]
        self._add_release(keys, args, lease)
        prev = text(await self._pipe.eval(self._sent, keys, args))
        _released(lease)
        if prev != State.SENDING:
            logger.warning("job %s: mark_sent(%s) while %s", job_id, call_serial_no, prev)

    async def mark_evidenced(self, job_id: str, call_serial_no: str) -> str:
        """The provider's release event proves the job's call exists: the job becomes ``sent`` with
        ``call_serial_no`` (indexed), whatever its state (``unknown`` above all; ``queued`` after an
        after-grace redial was scheduled, which then never leaves), and keeps ``ev`` = "release". A job
        already sent keeps its serial; this one is indexed too. Returns the previous state ("missing")."""
        keys = [self._keys.job(job_id), self._keys.serial(call_serial_no)]
        args: list[str | int] = [call_serial_no, self._ttl_ms, job_id, self._prefix, "release"]
        return text(await self._sent(keys=keys, args=args))

    async def mark_retry(self, job_id: str, error: str, lease: Lease | None = None) -> bool:
        """sending -> queued with ``error`` (attempts kept). False (nothing written) if the job is final.
        A held ``lease`` is given back in the same script (in any case)."""
        return await self._requeue(job_id, error, lease, sent=True)

    async def mark_unsent(self, job_id: str, lease: Lease | None = None) -> bool:
        """sending -> queued, the attempt ``begin_send`` counted taken back and the last error kept: the
        request did not leave after all (no rate permit in time). Otherwise as :meth:`mark_retry`."""
        return await self._requeue(job_id, "", lease, sent=False)

    async def _requeue(self, job_id: str, error: str, lease: Lease | None, *, sent: bool) -> bool:
        keys = [self._keys.job(job_id)]
        args: list[str | int] = [error, self._ttl_ms, self._prefix, "0" if sent else "1"]
        self._add_release(keys, args, lease)
        prev = text(await self._pipe.eval(self._retry, keys, args))
        _released(lease)
        return self._applied(job_id, "mark_retry" if sent else "mark_unsent", prev)

    async def mark_final(
        self, job_id: str, state: State, error: str | None = None, lease: Lease | None = None, *,
        serial: str | None = None,
    ) -> bool:
        """queued/sending -> ``state`` (failed, unknown, expired, suppressed or cancelled).

        ``error`` None keeps the last error. The first final state wins: returns False (nothing written)
        if the job was already final, so ``sent`` is never overwritten. A held ``lease`` is given back in
        the same script (in any case). An ``unknown`` job is listed in ``Keys.unknown`` to wait for its
        release event; ``serial`` (a callSerialNo from an answer that was otherwise not a success) is kept
        on it and indexed, so that event finds it.
        """
        if state not in _MARK_FINAL_STATES:
            raise ValueError(f"mark_final: state must be one of {sorted(_MARK_FINAL_STATES)}, not {state!r}")
        return await self._finish(job_id, state, error or "", lease, serial or "")

    async def dead_letter(self, job_id: str, error: str, lease: Lease | None = None) -> bool:
        """queued/sending -> ``dead`` with ``error``, listed in the dead-letter set (``Keys.dead``).

        The set is trimmed of members older than the ledger TTL, since their records are gone. A held
        ``lease`` is given back in the same script (in any case).
        """
        return await self._finish(job_id, State.DEAD, error, lease)

    async def reject(self, job_id: str, reason: str) -> None:
        """Dead-letter a job that cannot run as stored, creating a minimal record if it has none.

        Used for garbage payloads, jobs written without a ledger record, and corrupt records; a job
        already ``sent`` is left alone.
        """
        await self._pipe.eval(
            self._reject, [self._keys.job(job_id), self._keys.dead], [reason, self._ttl_ms, job_id, self._prefix]
        )

    async def states(self, job_ids: Sequence[str]) -> list[State | None]:
        """The state of each job (None if it has no record), in one pipelined round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hget(self._keys.job(job_id), "state")
            raw = await pipe.execute()
        return [None if v is None else State(text(v)) for v in raw]

    async def list_dead(self, limit: int = 100) -> list[JobRecord]:
        """Dead-lettered jobs, most recent first."""
        ids = [text(i) for i in await self._redis.zrevrange(self._keys.dead, 0, limit - 1)]
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self._keys.job(job_id))
            raws = await pipe.execute()
        out = []
        for job_id, raw in zip(ids, raws, strict=True):
            if raw:
                out.append(JobRecord.from_hash(job_id, as_dict(raw)))
        return out

    async def record_outcome(
        self, job_id: str, outcome: str, release_reason: str, extra: dict[str, str] | None = None
    ) -> JobRecord | None:
        """Store a call's outcome (from its result callback) on the job: fields ``outcome`` and ``reason``
        (the releaseReason) plus ``extra`` fields, and count it in the job's campaign (``answered``,
        ``unanswered`` or ``failed_to_connect``), all in one script.

        The first outcome stands: once the job has one, nothing is written or counted (the same outcome
        again is idempotent; a different one is ignored, and the returned record's ``outcome`` is the one
        that stands, which the caller compares with its own). Returns the record, or None if the job has
        no record. ``extra`` may not use the ledger's own field names.
        """
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome: must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        pairs: list[str] = []
        for key, value in (extra or {}).items():
            if reserved_field(key):
                raise ValueError(f"extra: field {key!r} is reserved by the ledger")
            pairs += [key, value]
        raw = await self._outcome(
            keys=[self._keys.job(job_id)], args=[self._ttl_ms, self._prefix, outcome, release_reason, *pairs]
        )
        return JobRecord.from_hash(job_id, as_dict(raw)) if raw else None

    async def postpone(
        self, job_id: str, now_ms: int, until_ms: int, *, pace_ms: float = 0.0, slot: str = ""
    ) -> int | None:
        """A queued job will run again at ``until_ms`` (ms of the caller's clock, as ``now_ms``): its
        record is kept alive past that, and the wait does not count against its retry time budget.

        With ``slot`` (``"<opening ms>:<priority>"``) the job takes the next free send slot at or after
        ``until_ms`` among the campaign's jobs deferred to the same window opening, ``pace_ms`` apart.
        Returns the time to run at (ms, caller's clock), or None if the job is no longer queued.
        """
        res = await self._pipe.eval(
            self._postpone,
            [self._keys.job(job_id)],
            [self._ttl_ms, self._prefix, now_ms, until_ms, f"{pace_ms:.3f}", slot],
        )
        if int(res[0]) != 1:
            return None
        return int(float(text(res[1])))

    async def link_redial(self, first_id: str, redial_id: str, number: int) -> bool | None:
        """Link redial number ``number`` (a job already enqueued) to the first job of its number: the redial
        gets ``redial_of``, the first job lists it in ``redials``, and the campaign counts one more
        ``redials``. Idempotent: True when the link is new, False when it existed, None when the redial
        has no record."""
        res = int(await self._link(
            keys=[self._keys.job(first_id), self._keys.job(redial_id)],
            args=[self._prefix, first_id, redial_id, number],
        ))
        return None if res < 0 else res == 1

    async def job_for_serial(self, call_serial_no: str) -> str | None:
        """The job whose call got this callSerialNo, for the callback receiver."""
        v = await self._redis.get(self._keys.serial(call_serial_no))
        return None if v is None else text(v)

    async def _finish(self, job_id: str, state: State, error: str, lease: Lease | None = None,
                      serial: str = "") -> bool:
        job_key = self._keys.job(job_id)
        keys = [job_key, self._keys.dead, self._keys.unknown, self._keys.serial(serial) if serial else job_key]
        args: list[str | int] = [str(state), error, self._ttl_ms, job_id, self._prefix, serial]
        self._add_release(keys, args, lease)
        prev = text(await self._pipe.eval(self._final, keys, args))
        _released(lease)
        also_ok = (State.DEAD,) if state == State.DEAD else ()
        return self._applied(job_id, f"-> {state}", prev, also_ok)

    @staticmethod
    def _add_release(keys: list[str], args: list[Any], lease: Lease | None) -> None:
        # The scripts that end an attempt take the in-flight set as their last key, the lease last.
        if lease is not None and lease.held:
            keys.append(lease.key)
            args.append(lease.member)

    @staticmethod
    def _applied(job_id: str, what: str, prev: str, also_ok: tuple[str, ...] = ()) -> bool:
        if prev in (State.QUEUED, State.SENDING, *also_ok):
            return True
        logger.info("job %s: %s ignored, state is %s", job_id, what, prev)
        return False
