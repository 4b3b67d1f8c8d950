"""What happens to one call job inside a worker: the ledger, the limits, the provider, the outcome.

This module knows nothing about arq: a run ends by returning an outcome, or by raising :class:`Defer`
to be put back on its queue for later (the engine seam, ``engine.py``, turns that into arq's ``Retry``).

Delivery semantics (see README, "What happens when things go wrong"):

* the ledger moves a job ``queued -> sending`` atomically just before the request leaves;
* a run that finds ``sent`` (or any final state) stops; a run that finds ``sending`` left behind by a
  dead worker marks the job ``unknown`` and does not redial (unless ``DIALER_REDIAL_AMBIGUOUS``);
* retryable outcomes go back to ``queued`` and are retried with full-jitter backoff, slept in-process
  when short, deferred on the queue when long; when attempts, total time or the deadline run out the
  job is dead-lettered with the last error.

Timing (what keeps the rate limit and arq's job timeout honest):

* order of one attempt: rate permit, this process's in-flight slot, ``begin_send`` (which also takes
  the fleet-wide in-flight lease), the request; the transition that records the outcome gives the
  lease back. Only ``begin_send`` lies between the permit and the request;
* a request never leaves later than its permit's tolerance after its slot (``Permit.late``): a permit
  made late (a token wait, a slow ``begin_send``, a stalled loop) is dropped and a new slot booked;
* every wait before a request (permit, in-flight slot, the token before the first request, the permit
  and lease of the re-send after a 401) ends with the run's time budget: the job goes back on its
  queue (``Defer``), ``sending`` put back to ``queued`` if no request left. The token wait between a
  401 and its re-send happens inside the provider client, where it cannot be told from the request:
  the token manager bounds it, and ``run_job`` ends any run 2 s before the engine's job timeout. A run
  cancelled while its request may be out ends ``unknown``.

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
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from worker import logs, metrics
from worker.callback_url import sent_url
from worker.dispatch.stats import SendStats
from worker.errors import (
    AmbiguousError,
    AuthError,
    InvalidRequest,
    PermanentError,
    ProviderError,
    RetryableError,
)
from worker.ledger.record import JobRecord
from worker.ledger.states import State
from worker.ledger.transitions import Claim, Ledger
from worker.limits.inflight import InFlight, Lease
from worker.limits.ratelimit import Limit, Permit, RateLimiter
from worker.models import CallRequest
from worker.provider.client import Accepted, ProviderClient
from worker.provider.retry import backoff_delay
from worker.settings import Settings
from worker.windows import Window, WindowError, cached_window

log = logging.getLogger(__name__)

# Leave this much of a run's time budget for the request itself and the ledger writes after it, so a
# run never overruns the engine's job timeout (which would lose track of a call in flight).
_RUN_SLACK_S = 5.0
# A job whose backoff was cut to end at its retry time budget gets its last try if its queue hands it
# back within this long after the budget; later, it is dead-lettered without one.
_BUDGET_GRACE_S = 0.5
# A job whose `sending` mark did not reach the replicas in time tries again after this long (the
# replicas catching up, or a failover finishing).
_UNREPLICATED_WAIT_MS = 1000
_UNREPLICATED_LOG_S = 30.0
END_BEFORE_JOB_TIMEOUT_S = 2.0
""":meth:`Dispatcher.run_job` ends every run this long before the engine's job timeout, whatever the run
waits for, and puts the job back on its queue; the waits of :meth:`Dispatcher.dial` end earlier."""


class Defer(Exception):
    """Put the job back on its queue to run again in ``seconds``; the ledger keeps it ``queued``."""

    def __init__(self, seconds: float, reason: str) -> None:
        self.seconds = max(seconds, 0.0)
        self.reason = reason
        self.priority = 0
        self.campaign: str | None = None
        self.quiet = False  # logged at DEBUG: the fleet waits for one cause, said once elsewhere
        super().__init__(f"defer {self.seconds:.2f}s: {reason}")


RefusalKind = Literal["window", "parked", "capped", "not_sent", "out_of_time", "unsent", "requeue"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request did not leave, decided at its gate (:class:`_Gate`), as a value the run acts on:

    - ``window``: the calling window closed (or the deadline passed) while it waited for its permit;
    - ``parked``: the campaign was paused meanwhile (the ledger parked the job);
    - ``capped``: the per-number cap was reached meanwhile (allowed again in ``wait_ms``);
    - ``not_sent``: the ledger refused ``queued -> sending`` (cancelled, suppressed or taken meanwhile);
    - ``out_of_time``: refused with a 401/403 and no time left for the re-send (the attempt counts);
    - ``unsent``: ``sending``, but the request could not leave within the run's budget;
    - ``requeue``: nothing changed, but no slot or permit within the run's budget.
    """

    kind: RefusalKind
    reason: str = ""
    wait_ms: int = 0


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
        stats: SendStats | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.limiter = limiter
        self.in_flight = in_flight
        self.client = client
        self.clock = clock
        self.stats = stats
        self.late_permits = 0
        """Rate permits not used because the request would have left too late after its slot."""
        self.unreplicated = 0
        """Requests not sent because their `sending` mark was not on enough replicas in time."""
        self.unreplicated_logged = -math.inf

    async def run_job(self, job_id: str, order: float = 0.0, malformed: str | None = None) -> str:
        """One run of a job as the queue engine starts it: :meth:`dial` within the run's time budget,
        logged and counted; returns the state it ended in, or raises :class:`Defer`. ``malformed`` is
        the engine's reason when the queue entry could not be read (the job is dead-lettered).

        A run ends ``END_BEFORE_JOB_TIMEOUT_S`` before the engine's job timeout at the latest and goes
        back on its queue: the engine would drop a job it times out, leaving its ledger record
        ``queued``. The dispatcher's own waits end well before that; this is the backstop for whatever
        else a run may wait for. A run cut while its request was out ends ``unknown``, never redialled.
        """
        started = time.monotonic()
        if malformed is not None:
            outcome = await self.reject(job_id, f"malformed job: {malformed}")
        else:
            budget = asyncio.timeout(max(self.settings.job_timeout_s - END_BEFORE_JOB_TIMEOUT_S, 1.0))
            try:
                async with budget:
                    outcome = await self.dial(job_id, order=order)
            except (Defer, TimeoutError) as exc:
                if isinstance(exc, TimeoutError) and not budget.expired():
                    raise
                d = exc if isinstance(exc, Defer) else Defer(0.0, "run ended ahead of the job timeout")
                metrics.observe_outcome("deferred", d.priority, d.campaign)
                log.log(logging.DEBUG if d.quiet else logging.INFO, "job %s deferred %.2fs: %s", job_id, d.seconds,
                        d.reason, extra=logs.job_fields(
                    job_id, campaign=d.campaign, priority=d.priority, outcome="deferred", error=d.reason))
                raise d from None
        metrics.observe_outcome(str(outcome.state), outcome.priority, outcome.campaign)
        if log.isEnabledFor(logging.INFO):  # the structured fields cost more than the call itself
            sent = outcome.state == State.SENT  # the detail is the callSerialNo, not an error
            log.info("job %s -> %s (attempts=%d) %s", job_id, outcome.state, outcome.attempts, outcome.detail,
                     extra=logs.job_fields(job_id, campaign=outcome.campaign, priority=outcome.priority,
                                           attempt=outcome.attempts, outcome=str(outcome.state),
                                           latency_s=time.monotonic() - started,
                                           serial=(outcome.detail or None) if sent else None,
                                           error=None if sent else outcome.detail or None))
        return str(outcome.state)

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
        url = sent_url(request.call_back_url, job_id, self.settings.public_url)
        if url is not request.call_back_url:
            # The dialer's own callback route gets the job id in its path: a release event then names its
            # job even if the ledger never learnt the call's callSerialNo (see worker/callback_url.py).
            request = request.model_copy(update={"call_back_url": url})
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
        budget = _Budget(first_try_s, fixed=record.first_attempt_ms is not None)
        attempts = record.attempts
        while True:
            now = self.clock()
            if record.deadline_ms is not None and now * 1000 >= record.deadline_ms:
                await self.ledger.mark_final(job_id, State.EXPIRED, "deadline passed before the call was made")
                return Outcome(State.EXPIRED, attempts)
            if attempts > 0 and now - budget.first_s >= self.settings.retry_max_total_s + _BUDGET_GRACE_S:
                # The retry time budget ran out while the job waited (on its queue, for a permit): no
                # attempt after the budget. (A backoff ends at the budget at the latest, for one last try.)
                current = await self.ledger.get(job_id)  # the last error may be this run's
                reason = (current.last_error if current else None) or record.last_error or "no error recorded"
                await self.ledger.dead_letter(job_id, f"gave up after {attempts} attempts: {reason}"
                                              f" (retry time budget of {self.settings.retry_max_total_s:g} s spent)")
                return Outcome(State.DEAD, attempts, reason)
            if plan.window is not None and not plan.window.is_open(_utc(now)):
                return await self._outside_window(record, plan, now)
            if self._token_pause() > 0:
                # tokenByAkSk refuses the AK/SK (the token manager said so once): take no permit, wait.
                return await self._wait_for_token(record, self._token_pause(), "the fleet waits for an access token")
            permit = await self._permit(record, plan, run_deadline, order)
            if permit is None:
                # Saturated: give the worker slot back and queue again rather than overrun the job timeout.
                raise Defer(0.0, "waited too long for a rate permit")
            try:
                lease = await self.in_flight.enter(job_id, wait_s=max(run_deadline - self.clock(), 0.001))
            except TimeoutError:
                # This process already has max_in_flight requests out and the provider is slow: queue
                # again rather than overrun the job timeout.
                raise Defer(0.0, "waited too long for an in-flight slot") from None
            try:
                step = await self._attempt(
                    record, request, plan, run_deadline, lease, attempts, budget, permit, order
                )
            finally:
                await self.in_flight.leave(lease)
            if isinstance(step, Outcome):
                return step
            attempts, delay = step
            if delay > 0:
                await asyncio.sleep(delay)

    async def _attempt(
        self,
        record: JobRecord,
        request: CallRequest,
        plan: _Plan,
        run_deadline: float,
        lease: Lease,
        attempts: int,
        budget: _Budget,
        permit: Permit,
        order: float,
    ) -> Outcome | tuple[int, float]:
        """One provider attempt and its ledger record: the final outcome, or (attempts so far, backoff
        to sleep) to go round again. The in-flight lease is taken by ``begin_send`` and given back by
        the script that records the outcome."""
        job_id = record.job_id
        gate = _Gate(self, record, plan, run_deadline, lease, permit, order)
        try:
            result = await self._send_once(request, gate, run_deadline)
            budget.started(gate)
        except asyncio.CancelledError:
            await asyncio.shield(self._cancelled(job_id, lease, gate))
            raise
        except ProviderError as exc:
            if gate.sends == 0:
                # No request left (the access token could not be had): not an attempt of this call.
                return await self._no_token(record, exc)
            if isinstance(exc, AuthError):
                # 401/403 even with a fresh token (the account), or no fresh token after a 401: no call was
                # created, so no attempt is used; the job waits for the fleet's pause.
                return await self._not_authorized(record, exc, lease, answered=gate.refused_once)
            # The attempt the ledger counted (begin_send): the record and the error say the same number.
            attempts = max(gate.attempt, attempts)
            budget.started(gate)
            first_try_s = budget.first_s
            await self._count(ok=False, kind=metrics.error_kind(exc))
            outcome = await self._failed(job_id, exc, attempts, first_try_s, record.deadline_ms, lease)
            if outcome is not None:
                return outcome
            metrics.observe_outcome("retried", record.priority, record.campaign)
            # No backoff runs past the retry time budget: the next attempt comes at its end at the latest.
            remaining = first_try_s + self.settings.retry_max_total_s - self.clock()
            delay = min(backoff_delay(attempts, self.settings), max(remaining, 0.0))
            if delay > self.settings.retry_inprocess_max_s or self.clock() + delay > run_deadline:
                raise Defer(delay, exc.describe()) from None
            return attempts, delay
        except Exception as exc:
            # A bug or an unexpected library error: never leave a job silently in `sending`.
            log.exception("job %s: unexpected error", job_id)
            await self.ledger.mark_final(job_id, State.UNKNOWN, f"unexpected error: {type(exc).__name__}", lease)
            return Outcome(State.UNKNOWN, max(gate.attempt, attempts), type(exc).__name__)
        if isinstance(result, Refusal):
            counted = result.kind == "out_of_time"  # answered 401/403: the attempt stays counted
            return await self._refused(record, lease, max(gate.attempt, attempts) if counted else attempts, result)
        accepted = result
        attempts = max(gate.attempt, attempts)
        await self.ledger.mark_sent(job_id, accepted.call_serial_no, lease)
        await self._count(ok=True)
        return Outcome(State.SENT, attempts, accepted.call_serial_no)

    async def _no_token(self, record: JobRecord, exc: ProviderError) -> Outcome:
        """The access token could not be had, so no request left: the job waits on its queue (the wait not
        counted against its retry time budget), its attempts untouched, with the reason as its error."""
        reason = f"no access token: {exc.describe()}"
        await self.ledger.mark_retry(record.job_id, reason)
        pause = self._pause_left()
        return await self._wait_for_token(record, pause or backoff_delay(1, self.settings), reason, quiet=pause > 0)

    async def _not_authorized(self, record: JobRecord, exc: AuthError, lease: Lease, *, answered: bool) -> Outcome:
        """createVoiceNotification answered 401/403 even with a fresh token (:class:`AccountError`: the fleet is
        paused), or the fresh token after a 401 could not be had, or the pause began while the request waited
        for its gate: no call was created. The job goes back to ``queued`` with the attempt ``begin_send``
        counted taken back (and ``lease`` given back), the reason as its last error, and waits for the pause:
        no attempt used, the wait not charged to its retry time budget, never dead-lettered for it. The token is not
        discarded again per job (the client did its one refresh-and-retry). ``answered``: a request did leave
        (and was answered 401/403), so the attempt is counted in the send stats."""
        job_id = record.job_id
        reason = exc.describe()
        if answered:
            await self._count(ok=False, kind=metrics.error_kind(exc))
        await self.ledger.mark_unsent(job_id, lease)
        await self.ledger.mark_retry(job_id, reason)  # queued already: only the error is written
        pause = self._pause_left()
        return await self._wait_for_token(record, pause or backoff_delay(1, self.settings), reason, quiet=pause > 0)

    def _token_pause(self) -> float:
        """Seconds a job waits before asking for a rate permit (0: go), in memory, no I/O: the fleet's pause while
        tokenByAkSk refuses the AK/SK or createVoiceNotification refuses the account, and after an account
        pause, while this process's one probe request is out (:meth:`TokenManager.send_wait_s`)."""
        tokens = getattr(self.client, "tokens", None)
        wait = getattr(tokens, "send_wait_s", None) or getattr(tokens, "pause_s", None)
        return float(wait()) if callable(wait) else 0.0

    def _pause_left(self) -> float:
        """The fleet's pause alone (:meth:`TokenManager.pause_s`; 0: none), without taking the probe."""
        pause_s = getattr(getattr(self.client, "tokens", None), "pause_s", None)
        return float(pause_s()) if callable(pause_s) else 0.0

    async def _wait_for_token(self, record: JobRecord, delay: float, reason: str, *, quiet: bool = True) -> Outcome:
        """Put the job back on its queue for ``delay`` s: attempts untouched, the wait not counted against
        its retry time budget (like a calling window's)."""
        now_ms = int(self.clock() * 1000)
        if await self.ledger.postpone(record.job_id, now_ms, now_ms + max(int(delay * 1000), 1)) is None:
            return Outcome("skipped", record.attempts, "no longer queued")
        d = Defer(delay, reason)
        d.quiet = quiet
        raise d

    async def _permit(self, record: JobRecord, plan: _Plan, run_deadline: float, order: float = 0.0) -> Permit | None:
        """A rate permit within the run's time budget, or None when the fleet is saturated past it."""
        try:
            permit = await self.limiter.permit(
                record.priority, plan.extra, order, wait_s=max(run_deadline - self.clock(), 0.001)
            )
        except TimeoutError:
            return None
        metrics.observe_rate_wait(record.priority, permit.waited)
        return permit

    async def _refused(
        self, record: JobRecord, lease: Lease, attempts: int, refusal: Refusal
    ) -> Outcome | tuple[int, float]:
        """Act on a gate's refusal: the run's outcome, (attempts, 0) to go round again, or :class:`Defer`."""
        job_id = record.job_id
        match refusal.kind:
            case "window":  # the loop decides: defer to the next opening, or expire
                return attempts, 0.0
            case "parked":
                return Outcome("parked", attempts, "campaign paused")
            case "capped":
                return await self._capped(record, refusal.wait_ms)
            case "not_sent":
                current = await self.ledger.get(job_id)
                state = current.state if current else "missing"
                return Outcome("skipped", attempts, f"state changed to {state} before sending")
            case "out_of_time":
                # Refused with a 401 and no time left for the re-send: nothing was created.
                await self.ledger.mark_retry(job_id, refusal.reason, lease)
            case "unsent":
                # `sending`, but the request never left: back to queued, the attempt not counted.
                await self.ledger.mark_unsent(job_id, lease)
        raise Defer(refusal.wait_ms / 1000, refusal.reason)

    async def _send_once(self, request: CallRequest, gate: _Gate, run_deadline: float) -> Accepted | Refusal:
        loop = asyncio.get_running_loop()
        # Every wait before the first request (the client's token wait included) ends with the run's
        # budget; the request itself, once it leaves, is never cut by it (the gate lifts the limit).
        gate.waits = asyncio.timeout_at(loop.time() + max(run_deadline - self.clock(), 0.001))
        try:
            async with gate.waits:
                with metrics.track_in_flight():
                    return await self.client.create_voice_notification(request, gate=gate)
        except TimeoutError:
            if not gate.waits.expired():
                raise
            if gate.refused_once and not gate.out:
                # Refused with a 401/403 and the budget ran out before the re-send: nothing was created.
                return Refusal("out_of_time", "HTTP 401/403; no time left in this run to re-send")
            # The budget ran out while waiting (for the token, most likely): no request left.
            reason = "no time left in this run before the request could leave"
            return Refusal("unsent" if gate.begun else "requeue", reason)

    async def _count(self, *, ok: bool, kind: str | None = None) -> None:
        if self.stats is not None:
            await self.stats.record(ok=ok, kind=kind)

    async def _failed(
        self,
        job_id: str,
        exc: ProviderError,
        attempts: int,
        first_try_s: float,
        deadline_ms: int | None,
        lease: Lease | None = None,
    ) -> Outcome | None:
        """Record a failed attempt (giving back ``lease``); return the final outcome, or None when the
        job should be retried."""
        reason = exc.describe()
        if isinstance(exc, AmbiguousError) and (self.settings.redial_ambiguous != "always" or exc.call_serial_no):
            # The call may exist; with a callSerialNo in the answer it very likely does, so even
            # DIALER_REDIAL_AMBIGUOUS=always does not redial it. The ledger keeps the serial and indexes it, so
            # the call's release event finds the job.
            await self.ledger.mark_final(job_id, State.UNKNOWN, reason, lease, serial=exc.call_serial_no)
            return Outcome(State.UNKNOWN, attempts, reason)
        if isinstance(exc, PermanentError):
            await self.ledger.mark_final(job_id, State.FAILED, reason, lease)
            return Outcome(State.FAILED, attempts, reason)
        # Retryable and, with DIALER_REDIAL_AMBIGUOUS=always, ambiguous outcomes without a serial. (AuthError never
        # comes here: no call was created, the job waits for the fleet's pause; see _not_authorized.)
        assert isinstance(exc, RetryableError | AmbiguousError)
        now = self.clock()
        exhausted = (
            attempts >= self.settings.retry_max_attempts
            or now - first_try_s >= self.settings.retry_max_total_s
            or (deadline_ms is not None and now * 1000 >= deadline_ms)
        )
        if exhausted:
            await self.ledger.dead_letter(job_id, f"gave up after {attempts} attempts: {reason}", lease)
            return Outcome(State.DEAD, attempts, reason)
        await self.ledger.mark_retry(job_id, reason, lease)
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

    async def _cancelled(self, job_id: str, lease: Lease, attempt: _Gate) -> None:
        """The run was cancelled (shutdown past the drain time, the end of its time budget)."""
        if attempt.out:
            await self._cancelled_mid_request(job_id, lease)
        elif attempt.begun:
            # `sending` perhaps, but no request on its way: back to the queue. (After a 401 answer the
            # attempt was made and stays counted.)
            if attempt.sends > 1:
                await self.ledger.mark_retry(job_id, "cancelled before the re-send after HTTP 401/403", lease)
            else:
                await self.ledger.mark_unsent(job_id, lease)

    async def _cancelled_mid_request(self, job_id: str, lease: Lease | None = None) -> None:
        """A run cancelled (shutdown past the drain time, timeout) may have left a request in flight."""
        record = await self.ledger.get(job_id)
        if record is not None and record.state == State.SENDING:
            await self.ledger.mark_final(job_id, State.UNKNOWN, "cancelled mid-request", lease)


class _Budget:
    """When a job's retry time budget started: its first request (the ledger's ``first``, or this run's)."""

    __slots__ = ("first_s", "fixed")

    def __init__(self, first_s: float, *, fixed: bool) -> None:
        self.first_s, self.fixed = first_s, fixed

    def started(self, gate: _Gate) -> None:
        if not self.fixed and gate.sent_at is not None:
            self.first_s, self.fixed = gate.sent_at, True


class _Gate:
    """The dispatcher's side of one provider attempt (:class:`~worker.provider.client.RequestGate`): the
    last checks and waits before each request leaves, and what the attempt has done so far, so that a
    cancellation knows what to record."""

    def __init__(self, d: Dispatcher, record: JobRecord, plan: _Plan, run_deadline: float, lease: Lease,
                 permit: Permit, order: float) -> None:
        self.d, self.record, self.plan, self.run_deadline = d, record, plan, run_deadline
        self.lease, self.permit, self.order = lease, permit, order
        self.waits: asyncio.Timeout = asyncio.timeout(None)
        self.sends = 0  # requests the client asked to send (a second one after a 401)
        self.begun = False  # begin_send was called: the ledger may say `sending`
        self.out = False  # a request may be on its way or awaiting its answer
        self.refused_once = False  # the first request was answered 401/403 (the attempt was made)
        self.attempt = 0  # the attempt number begin_send recorded in the ledger (0: none)
        self.sent_at: float | None = None  # the dispatcher's clock when the first request left

    def _budget(self) -> float:
        return max(self.run_deadline - self.d.clock(), 0.001)

    async def open(self, *, resend: bool) -> Refusal | None:
        self.sends += 1
        if resend:
            return await self._open_resend()
        d, record, plan = self.d, self.record, self.plan
        while True:
            # The last look before the request leaves: a job that waited for its permit across the
            # window's closing or its deadline is not sent.
            now = d.clock()
            if (plan.window is not None and not plan.window.is_open(_utc(now))) or (
                record.deadline_ms is not None and now * 1000 >= record.deadline_ms
            ):
                return Refusal("window")
            if self.permit.late():
                # A request this late after its slot could crowd a 1-s window past the limit: book a new
                # slot (this one is lost), while the job is still `queued`.
                d.late_permits += 1
                permit = await d._permit(record, plan, self.run_deadline, self.order)
                if permit is None:
                    return Refusal("requeue", "waited too long for a rate permit")
                self.permit = permit
                continue
            # A paced request goes straight after this write: it does not queue behind other calls.
            self.begun = True
            gate = await d.ledger.begin_send(record.job_id, self.lease, now=self.permit.slot is not None)
            if gate.ok:
                self.attempt = gate.attempts
            if gate.reason != "busy":
                break
            # The fleet is at its in-flight cap: wait for a lease (nothing was changed), then pass.
            try:
                await d.in_flight.acquire(self.lease, wait_s=self._budget())
            except TimeoutError:
                return Refusal("requeue", "waited too long for an in-flight slot")
        if not gate.ok:
            if gate.reason == "parked":
                return Refusal("parked")
            if gate.reason == "cap":
                return Refusal("capped", wait_ms=gate.retry_after_ms or 0)
            # "state": the script may have run once already if the connection dropped and redis-py
            # retried it; the engine runs a job in one place at a time, so `sending` now can only be our
            # own write.
            current = await d.ledger.get(record.job_id) if gate.reason == "state" else None
            if current is None or current.state != State.SENDING:
                return Refusal("not_sent")
        elif not gate.replicated:
            # Not on enough replicas in time: a failover now could lose the mark and let another worker
            # call the number again. The job waits (the attempt not counted) for the replicas to catch up.
            d.unreplicated += 1
            now = time.monotonic()
            if now - d.unreplicated_logged >= _UNREPLICATED_LOG_S:
                d.unreplicated_logged = now
                log.warning("Redis replicas did not acknowledge a sending mark within %d ms (%d call(s) held back so "
                            "far): calls wait for the replicas", d.settings.redis_wait_timeout_ms, d.unreplicated)
            return Refusal("unsent", f"the sending mark was not acknowledged by {d.settings.wait_replicas} Redis "
                           f"replica(s) within {d.settings.redis_wait_timeout_ms} ms: not sent",
                           wait_ms=_UNREPLICATED_WAIT_MS)
        while self.permit.late():
            # begin_send itself (or the loop) made the request late: same rule, now `sending`.
            d.late_permits += 1
            permit = await d._permit(record, plan, self.run_deadline, self.order)
            if permit is None:
                return Refusal("unsent", "waited too long for a rate permit")
            self.permit = permit
        self.waits.reschedule(None)
        self.out = True
        self.sent_at = d.clock()
        return None

    async def _open_resend(self) -> Refusal | None:
        # The client's one retry after a 401 is a provider attempt too: it takes its own permit, and
        # extends the lease, within the run's time budget.
        d, record, plan = self.d, self.record, self.plan
        self.out = False  # the first request was answered (401/403)
        try:
            async with asyncio.timeout(self._budget()):
                await d.in_flight.acquire(self.lease)
                self.permit = await d.limiter.permit(record.priority, plan.extra, self.order)
                while self.permit.late():
                    d.late_permits += 1
                    self.permit = await d.limiter.permit(record.priority, plan.extra, self.order)
        except TimeoutError:
            return Refusal("out_of_time", "HTTP 401/403; no time left in this run to re-send")
        self.waits.reschedule(None)
        self.out = True
        return None

    def refused(self) -> None:
        # The first request was answered 401/403: nothing is out until the re-send, and the wait for a
        # fresh token before it is bounded by the run's budget again, like the first one.
        self.out = False
        self.refused_once = True
        self.waits.reschedule(asyncio.get_running_loop().time() + self._budget())


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
