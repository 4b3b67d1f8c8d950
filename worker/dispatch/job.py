"""What happens to one call job inside a worker: the ledger, the limits, the provider, the outcome.

This module knows nothing about arq: a run ends by returning an outcome, or by raising :class:`Defer`
to be put back on its queue for later (``queues.py`` turns that into arq's ``Retry``).

Delivery semantics (see README, "What happens when things go wrong"):

* the ledger moves a job ``queued -> sending`` atomically just before the request leaves;
* a run that finds ``sent`` (or any final state) stops; a run that finds ``sending`` left behind by a
  dead worker marks the job ``unknown`` and does not redial (unless ``DIALER_REDIAL_AMBIGUOUS``);
* retryable outcomes go back to ``queued`` and are retried with full-jitter backoff, slept in-process
  when short, deferred on the queue when long; when attempts, total time or the deadline run out the
  job is dead-lettered with the last error.

Campaign jobs (see :mod:`worker.campaigns`) also pass, at claim and again right before the request
leaves: the campaign's status (paused: parked; cancelled: ``cancelled``), the do-not-call list
(``suppressed``), the per-number cap (deferred until the number may be called, or ``suppressed`` when
that is past the deadline), the calling window (deferred to its next opening, or ``expired`` when that
is past the deadline; checked with the dispatcher's clock, which tests may inject), and the campaign's
own rate limit on top of the fleet's. None of these waits uses the job's retry budget.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from worker import metrics
from worker.campaigns.windows import Window, WindowError, cached_window
from worker.dispatch.inflight import InFlight
from worker.dispatch.ledger import Claim, JobRecord, Ledger, State
from worker.dispatch.ratelimit import Limit, RateLimiter
from worker.errors import (
    AmbiguousError,
    AuthError,
    InvalidRequest,
    PermanentError,
    ProviderError,
    RetryableError,
)
from worker.models import CallRequest
from worker.provider.client import Accepted, ProviderClient
from worker.provider.retry import backoff_delay
from worker.settings import Settings

log = logging.getLogger(__name__)

# Leave this much of a run's time budget for the request itself and the ledger writes after it, so a
# run never overruns the engine's job timeout (which would lose track of a call in flight).
_RUN_SLACK_S = 5.0


class Defer(Exception):
    """Put the job back on its queue to run again in ``seconds``; the ledger keeps it ``queued``."""

    def __init__(self, seconds: float, reason: str) -> None:
        self.seconds = max(seconds, 0.0)
        self.reason = reason
        self.priority = 0
        self.campaign: str | None = None
        super().__init__(f"defer {self.seconds:.2f}s: {reason}")


class _NotSent(Exception):
    """The ledger refused ``queued -> sending`` (cancelled or taken meanwhile): do not send."""


class _Parked(Exception):
    """The campaign was paused while the job waited: the ledger parked it; do not send."""


class _Capped(Exception):
    """The per-number cap was reached while the job waited: do not send yet."""

    def __init__(self, wait_ms: int) -> None:
        self.wait_ms = wait_ms
        super().__init__(f"number cap reached; allowed again in {wait_ms} ms")


class _WindowClosed(Exception):
    """The calling window closed (or the deadline passed) while the job waited for its permit."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a job's campaign adds to its run: calling window, rate limit, send-slot spacing."""

    window: Window | None = None
    extra: tuple[Limit, ...] = ()
    pace_ms: float = 0.0


_NO_PLAN = _Plan()


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one run ended, for logs and metrics."""

    state: str  # a ledger state, or "skipped"/"missing"/"parked"
    attempts: int = 0
    detail: str = ""
    priority: int = 0
    campaign: str | None = None


class Dispatcher:
    """Everything one worker process shares across its queues: ledger, limits, provider client.

    ``await dispatcher.dial(job_id)`` runs one job to an :class:`Outcome` or raises :class:`Defer`.
    """

    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        limiter: RateLimiter,
        in_flight: InFlight,
        client: ProviderClient,
        clock: Callable[[], float] = time.time,
        stats: metrics.SendStats | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.limiter = limiter
        self.in_flight = in_flight
        self.client = client
        self.clock = clock
        self.stats = stats

    async def dial(self, job_id: str, order: float = 0.0) -> Outcome:
        """Run one job; the outcome (or the :class:`Defer`) carries its priority and campaign.

        ``order`` is the job's position in its queue (its score in ms): permits go out in that order,
        ties (jobs enqueued in the same millisecond) broken by the enqueue sequence number.
        """
        try:
            claim = await self.ledger.claim_run(job_id)
        except (KeyError, ValueError) as exc:
            return await self.reject(job_id, f"corrupt ledger record ({type(exc).__name__}: {exc})")
        record = claim.record
        if claim.verdict == "missing" or record is None:
            return await self.reject(job_id, "no ledger record for this job (written without the producer?)")
        try:
            outcome = await self._run(claim, record, order + (record.seq % 1000) / 1000)
        except Defer as d:
            d.priority, d.campaign = record.priority, record.campaign
            raise
        return replace(outcome, priority=record.priority, campaign=record.campaign)

    async def _run(self, claim: Claim, record: JobRecord, order: float) -> Outcome:
        job_id = record.job_id
        if claim.verdict == "final":
            return Outcome("skipped", record.attempts, f"already {record.state}")
        if claim.verdict == "stale":
            log.warning("job %s was mid-request when its worker died: outcome unknown", job_id)
            return Outcome(State.UNKNOWN, record.attempts, "worker died mid-request")
        if claim.verdict == "parked":
            return Outcome("parked", record.attempts, "campaign paused")
        try:
            request = record.request()
        except InvalidRequest as exc:
            return await self.reject(job_id, f"invalid stored body: {exc}")
        try:
            plan = _plan(record, claim.campaign)
        except (WindowError, ValueError) as exc:
            return await self.reject(job_id, f"invalid campaign settings: {exc}")
        if claim.verdict == "cap":
            return await self._capped(record, claim.retry_after_ms or 0)
        return await self._attempts(record, request, plan, order)

    async def reject(self, job_id: str, reason: str) -> Outcome:
        """Dead-letter a job that cannot be run as stored; the worker carries on."""
        log.warning("job %s dead-lettered: %s", job_id, reason)
        await self.ledger.reject(job_id, reason)
        return Outcome(State.DEAD, 0, reason)

    async def _attempts(
        self, record: JobRecord, request: CallRequest, plan: _Plan = _NO_PLAN, order: float = 0.0
    ) -> Outcome:
        job_id = record.job_id
        started = self.clock()
        run_deadline = started + self.settings.job_timeout_s - self.settings.request_timeout_s - _RUN_SLACK_S
        # The time budget counts from the first provider attempt (campaign jobs may be paced hours
        # ahead of their enqueue time; pauses and window waits move it forward).
        first_try_s = record.first_attempt_ms / 1000 if record.first_attempt_ms is not None else started
        attempts = record.attempts
        while True:
            now = self.clock()
            if record.deadline_ms is not None and now * 1000 >= record.deadline_ms:
                await self.ledger.mark_final(job_id, State.EXPIRED, "deadline passed before the call was made")
                return Outcome(State.EXPIRED, attempts)
            if plan.window is not None and not plan.window.is_open(_utc(now)):
                return await self._outside_window(record, plan, now)
            try:
                waited = await asyncio.wait_for(
                    self.limiter.acquire(record.priority, plan.extra, order),
                    timeout=max(run_deadline - now, 0.001),
                )
                metrics.observe_rate_wait(record.priority, waited)
            except TimeoutError:
                # Saturated: give the worker slot back and queue again rather than overrun the job timeout.
                raise Defer(0.0, "waited too long for a rate permit") from None
            try:
                accepted = await self._send_once(record, request, plan, run_deadline)
            except _WindowClosed:
                # The permit came after the window closed or the deadline passed: the loop decides.
                continue
            except _Parked:
                return Outcome("parked", attempts, "campaign paused")
            except _Capped as capped:
                return await self._capped(record, capped.wait_ms)
            except _NotSent:
                current = await self.ledger.get(job_id)
                state = current.state if current else "missing"
                return Outcome("skipped", attempts, f"state changed to {state} before sending")
            except asyncio.CancelledError:
                await asyncio.shield(self._cancelled_mid_request(job_id))
                raise
            except Defer:
                raise
            except ProviderError as exc:
                attempts += 1
                await self._count(ok=False, kind=metrics.error_kind(exc))
                outcome = await self._failed(job_id, exc, attempts, first_try_s, record.deadline_ms)
                if outcome is not None:
                    return outcome
                metrics.observe_outcome("retried", record.priority, record.campaign)
                delay = backoff_delay(attempts, self.settings)
                if delay > self.settings.retry_inprocess_max_s or self.clock() + delay > run_deadline:
                    raise Defer(delay, exc.describe()) from None
                await asyncio.sleep(delay)
                continue
            except Exception as exc:
                # A bug or an unexpected library error: never leave a job silently in `sending`.
                log.exception("job %s: unexpected error", job_id)
                await self.ledger.mark_final(job_id, State.UNKNOWN, f"unexpected error: {type(exc).__name__}")
                return Outcome(State.UNKNOWN, attempts + 1, type(exc).__name__)
            attempts += accepted.attempts
            await self.ledger.mark_sent(job_id, accepted.call_serial_no)
            await self._count(ok=True)
            return Outcome(State.SENT, attempts, accepted.call_serial_no)

    async def _send_once(
        self, record: JobRecord, request: CallRequest, plan: _Plan, run_deadline: float
    ) -> Accepted:
        job_id = record.job_id
        sends = 0

        async def before_send() -> None:
            nonlocal sends
            sends += 1
            if sends > 1:
                # The client's one retry after a 401 is a provider attempt too: it takes its own permit.
                await self.limiter.acquire(record.priority, plan.extra)
                return
            # The last look before the request leaves: a job that waited for its permit across the
            # window's closing or its deadline is not sent.
            now = self.clock()
            if (plan.window is not None and not plan.window.is_open(_utc(now))) or (
                record.deadline_ms is not None and now * 1000 >= record.deadline_ms
            ):
                raise _WindowClosed
            gate = await self.ledger.begin_send(job_id)
            if gate.ok:
                return
            if gate.reason == "parked":
                raise _Parked
            if gate.reason == "cap":
                raise _Capped(gate.retry_after_ms or 0)
            if gate.reason == "state":
                # The script may have run once already if the connection dropped and redis-py retried
                # it; arq runs a job in one place at a time, so `sending` now can only be our own write.
                current = await self.ledger.get(job_id)
                if current is not None and current.state == State.SENDING:
                    return
            raise _NotSent

        entered = False
        try:
            async with self.in_flight.slot(wait_s=max(run_deadline - self.clock(), 0.001)):
                entered = True
                with metrics.track_in_flight():
                    return await self.client.create_voice_notification(request, before_send=before_send)
        except TimeoutError:
            if entered:
                raise
            # The provider is slower than the fleet's in-flight cap allows: queue again rather than
            # overrun the job timeout (arq would drop the run, and a request cut off becomes unknown).
            raise Defer(0.0, "waited too long for an in-flight slot") from None

    async def _count(self, *, ok: bool, kind: str | None = None) -> None:
        if self.stats is not None:
            await self.stats.record(ok=ok, kind=kind)

    async def _failed(
        self, job_id: str, exc: ProviderError, attempts: int, first_try_s: float, deadline_ms: int | None
    ) -> Outcome | None:
        """Record a failed attempt; return the final outcome, or None when the job should be retried."""
        reason = exc.describe()
        if isinstance(exc, AmbiguousError) and not self.settings.redial_ambiguous:
            await self.ledger.mark_final(job_id, State.UNKNOWN, reason)
            return Outcome(State.UNKNOWN, attempts, reason)
        if isinstance(exc, PermanentError):
            await self.ledger.mark_final(job_id, State.FAILED, reason)
            return Outcome(State.FAILED, attempts, reason)
        # Retryable, auth (credentials may be fixed by an operator; requeue from dead letters) and,
        # with DIALER_REDIAL_AMBIGUOUS, ambiguous outcomes.
        assert isinstance(exc, RetryableError | AuthError | AmbiguousError)
        now = self.clock()
        exhausted = (
            attempts >= self.settings.retry_max_attempts
            or now - first_try_s >= self.settings.retry_max_total_s
            or (deadline_ms is not None and now * 1000 >= deadline_ms)
        )
        if exhausted:
            await self.ledger.dead_letter(job_id, f"gave up after {attempts} attempts: {reason}")
            return Outcome(State.DEAD, attempts, reason)
        await self.ledger.mark_retry(job_id, reason)
        return None

    async def _outside_window(self, record: JobRecord, plan: _Plan, now: float) -> Outcome:
        """Defer a job to its window's next opening (in its campaign's paced order), or expire it when
        the deadline comes first."""
        assert plan.window is not None
        job_id = record.job_id
        opening = plan.window.next_opening(_utc(now))
        open_ms = None if opening is None else int(opening.timestamp() * 1000)
        if open_ms is None or (record.deadline_ms is not None and open_ms >= record.deadline_ms):
            await self.ledger.mark_final(job_id, State.EXPIRED, "deadline passes before the calling window opens")
            return Outcome(State.EXPIRED, record.attempts, "deadline before window")
        now_ms = int(now * 1000)
        run_at = await self.ledger.postpone(
            job_id, now_ms, open_ms, pace_ms=plan.pace_ms, slot=f"{open_ms}:{record.priority}"
        )
        if run_at is None:
            return Outcome("skipped", record.attempts, "no longer queued")
        raise Defer((run_at - now_ms) / 1000, f"outside calling window ({plan.window.describe()})")

    async def _capped(self, record: JobRecord, wait_ms: int) -> Outcome:
        """The number had its K calls in the last D days: wait until it may be called again, unless
        that is past the job's deadline (then ``suppressed``: the cap, not the provider, stopped it)."""
        job_id = record.job_id
        now_ms = int(self.clock() * 1000)
        cap = f"number cap of {self.settings.number_cap_calls} call(s) per {self.settings.number_cap_days:g} day(s)"
        if record.deadline_ms is not None and now_ms + wait_ms >= record.deadline_ms:
            await self.ledger.mark_final(job_id, State.SUPPRESSED, f"{cap} reached until after the deadline")
            return Outcome(State.SUPPRESSED, record.attempts, cap)
        if await self.ledger.postpone(job_id, now_ms, now_ms + wait_ms) is None:
            return Outcome("skipped", record.attempts, "no longer queued")
        raise Defer(wait_ms / 1000, f"{cap} reached")

    async def _cancelled_mid_request(self, job_id: str) -> None:
        """A run cancelled (shutdown past the drain time, timeout) may have left a request in flight."""
        record = await self.ledger.get(job_id)
        if record is not None and record.state == State.SENDING:
            await self.ledger.mark_final(job_id, State.UNKNOWN, "cancelled mid-request")


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _plan(record: JobRecord, campaign: dict[str, str]) -> _Plan:
    """The campaign settings that apply to this job (``campaign`` is the claim's campaign hash)."""
    if not campaign or record.campaign is None:
        return _NO_PLAN
    window = None
    if campaign.get("window") or campaign.get("days"):
        tz = record.timezone or campaign.get("tz") or "UTC"
        window = cached_window(campaign.get("window") or None, campaign.get("days") or None, tz)
    rate = float(campaign["rate"]) if campaign.get("rate") else None
    extra = (Limit(f"campaign:{record.campaign}", rate),) if rate else ()
    return _Plan(window, extra, float(campaign.get("pace") or 0.0))
