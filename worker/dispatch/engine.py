"""The arq seam: the only module that knows the queue engine is arq.

One worker process runs one arq ``Worker`` per served priority queue (arq reads exactly one queue per
``Worker``), all in one event loop, sharing one Redis pool, one aiohttp session, one token manager,
one rate limiter and one in-flight cap (see :class:`worker.dispatch.dispatcher.Dispatcher`).

Each is an arq ``Worker`` with its own claim step (:class:`_Worker`), which also writes the arq job of
each job it starts: the producer stores only the ledger record and the queue entry. So ``dialer worker``
runs these queues; arq's own CLI (plain arq Workers, which expect the arq job at enqueue) cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from typing import Any

from arq import Retry
from arq.connections import ArqRedis
from arq.utils import ms_to_datetime, timestamp_ms
from arq.worker import RetryJob, Worker, func
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from worker import logs, metrics
from worker.dispatch import codec
from worker.dispatch.dispatcher import Defer, Dispatcher
from worker.ledger.transitions import Ledger
from worker.limits.inflight import InFlight
from worker.limits.ratelimit import RateLimiter
from worker.provider.client import ProviderClient
from worker.runtime import freeze_start_up_objects
from worker.settings import Settings
from worker.store import client, scripts
from worker.store.keys import (
    DIAL_FUNCTION,
    PRIORITY_LEVELS,
    Keys,
    in_progress_key_prefix,
    job_key_prefix,
    retry_key_prefix,
)
from worker.store.pipelining import AutoPipeline

log = logging.getLogger(__name__)

# arq's own attempt counter also counts our deferrals (pause, windows, backoff); provider attempts are
# bounded by the ledger instead, so arq's is set out of reach.
_ARQ_MAX_TRIES = 1_000_000
_HEALTH_CHECK_INTERVAL_S = 5


def parse_queues(spec: str) -> list[int]:
    """``"1-3,7"`` -> ``[1, 2, 3, 7]``; ``"all"`` -> 1..9. Raises ValueError naming the bad part."""
    if spec.strip().lower() in ("", "all"):
        return list(PRIORITY_LEVELS)
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        lo, _, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise ValueError(f"queues: {part!r} is not a priority or range like 1-3") from None
        if not (1 <= first <= last <= 9):
            raise ValueError(f"queues: {part!r} must lie within 1..9")
        out.update(range(first, last + 1))
    return sorted(out)


async def open_pool(settings: Settings) -> ArqRedis:
    """The worker process's Redis client (:func:`worker.store.client.worker_client`, as arq's client class
    with our codec): every command waits for Redis however long it is away."""
    pool = client.worker_client(settings, ArqRedis, job_serializer=codec.dumps, job_deserializer=codec.loads_job)
    await pool.ping()
    return pool


async def _dial(ctx: dict[str, Any], *_args: Any, **_kwargs: Any) -> str:
    """The arq job function. Arguments are ignored: the job's body lives in the ledger.

    A run ends ``END_BEFORE_JOB_TIMEOUT_S`` (job.py) before arq's job timeout at the latest and goes
    back on its queue: arq would drop a job it times out, leaving its ledger record ``queued``. The
    dispatcher's own waits end well before that; this is the backstop for whatever else a run may wait
    for. A run cut while its request was out ends ``unknown`` (see ``Dispatcher``), never redialled.
    """
    from worker.dispatch.dispatcher import END_BEFORE_JOB_TIMEOUT_S

    dispatcher: Dispatcher = ctx["dispatcher"]
    job_id: str = ctx["job_id"]
    started = time.monotonic()
    if codec.MALFORMED in _kwargs:
        outcome = await dispatcher.reject(job_id, f"malformed job: {_kwargs[codec.MALFORMED]}")
    else:
        budget = asyncio.timeout(max(dispatcher.settings.job_timeout_s - END_BEFORE_JOB_TIMEOUT_S, 1.0))
        try:
            async with budget:
                outcome = await dispatcher.dial(job_id, order=float(ctx.get("score") or 0))
        except (Defer, TimeoutError) as exc:
            if isinstance(exc, TimeoutError) and not budget.expired():
                raise
            d = exc if isinstance(exc, Defer) else Defer(0.0, "run ended ahead of the job timeout")
            # (_Worker's finish extends the arq job's TTL past the deferral.)
            metrics.observe_outcome("deferred", d.priority, d.campaign)
            log.info("job %s deferred %.2fs: %s", job_id, d.seconds, d.reason, extra=logs.job_fields(
                job_id, campaign=d.campaign, priority=d.priority, outcome="deferred", error=d.reason))
            raise Retry(defer=d.seconds) from None
    metrics.observe_outcome(str(outcome.state), outcome.priority, outcome.campaign)
    if log.isEnabledFor(logging.INFO):  # the structured fields cost more than the call itself
        log.info("job %s -> %s (attempts=%d) %s", job_id, outcome.state, outcome.attempts, outcome.detail,
                 extra=logs.job_fields(job_id, campaign=outcome.campaign, priority=outcome.priority,
                                       attempt=outcome.attempts, outcome=str(outcome.state),
                                       latency_s=time.monotonic() - started, error=outcome.detail or None))
    return str(outcome.state)


class _Worker(Worker):
    """arq's Worker with our own claim step: one Lua script (``claim.lua``) per poll claims the due jobs
    and materializes their arq jobs, where arq makes 4 round trips per job (WATCH, EXISTS, ZSCORE,
    MULTI/PSETEX/EXEC). The producer writes no arq job (``arq:job:<id>``) at all, so a plain arq
    ``Worker`` cannot run our queues: this class is the only consumer.

    Also minus the ways a poisoned queue entry kills arq's loop (arq decodes every member as UTF-8 and
    casts every score with int(), outside any try): such entries are dead-lettered.

    ``job_ttl_s`` (default: the dispatcher's ``settings.job_ttl_s``) is the life of an arq job written
    at claim; a deferral extends it (see ``_dial``).
    """

    def __init__(self, *args: Any, job_ttl_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if job_ttl_s is None:
            job_ttl_s = self.ctx["dispatcher"].settings.job_ttl_s
        self._job_ttl_ms = int(job_ttl_s * 1000)
        self._claim: AsyncScript | None = None
        self._finish_script: AsyncScript | None = None
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """A job due now was enqueued on this queue: poll at once rather than at the next poll."""
        self._woken.set()

    async def main(self) -> None:
        # arq's Worker.main (arq 0.28) minus its start-up log line, with a poll sleep that wake() cuts
        # short: a job enqueued on an idle queue starts within a Redis round trip, not a poll delay.
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            self._woken.clear()
            await self._poll_iteration()
            if self.burst:
                if 0 <= self.max_burst_jobs <= self._jobs_started() or await self.pool.zcard(self.queue_name) == 0:
                    await asyncio.gather(*self.tasks.values())
                    return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(self.poll_delay_s - (loop.time() - started), 0)):
                    await self._woken.wait()

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        good: list[bytes] = []
        for raw in job_ids:
            try:
                raw.decode()
            except UnicodeDecodeError:
                await self._quarantine(raw, "queue entry's job id is not UTF-8")
                continue
            good.append(raw)
        # A place under max_jobs per job we may start, taken as arq takes them (its counter and semaphore
        # move together; the done callback gives both back).
        taken = 0
        while taken < len(good) and self.job_counter < self.max_jobs:
            await self.sem.acquire()
            self.job_counter += 1
            taken += 1
        if not taken:
            return
        if self._claim is None:
            self._claim = scripts.register(self.pool, "dispatch/claim.lua")
        try:
            claimed, bad, corrupt = await self._claim(
                keys=[self.queue_name],
                args=[timestamp_ms(), int(self.in_progress_timeout_s * 1000), self._job_ttl_ms, codec.DIAL_JOB_HEAD,
                      taken, in_progress_key_prefix, job_key_prefix, retry_key_prefix, *good],
            )
        except (RedisError, OSError) as exc:
            # Redis went away (or refused) mid-claim: nothing starts; the next poll tries again. (Jobs the
            # script did claim before a lost reply wait for their in-progress keys to expire, as after a
            # lost EXEC reply in arq.)
            self._give_back(taken)
            log.warning("queue %s: could not start jobs (%s); retrying", self.queue_name, type(exc).__name__)
            return
        except BaseException:
            self._give_back(taken)
            raise
        self._give_back(taken - len(claimed) // 4)
        for i in range(0, len(claimed), 4):
            job_id = claimed[i].decode()
            t = self.loop.create_task(
                self._run_claimed(job_id, int(float(claimed[i + 1])), int(claimed[i + 2]), claimed[i + 3]))
            t.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = t
        for i in range(0, len(bad), 2):
            await self._quarantine(bad[i], f"queue entry's score is {bad[i + 1].decode()}")
        for i in range(0, len(corrupt), 2):
            # Something else wrote arq's keys for this job; arq would crash its poll loop on them.
            job_id = corrupt[i].decode()
            await self.pool.delete(job_key_prefix + job_id, in_progress_key_prefix + job_id,
                                   retry_key_prefix + job_id)
            await self._quarantine(corrupt[i], f"arq's keys for this job are corrupt ({corrupt[i + 1].decode()})")

    def _give_back(self, slots: int) -> None:
        for _ in range(slots):
            self.job_counter -= 1
            self.sem.release()

    async def run_job(self, job_id: str, score: int) -> None:
        raise NotImplementedError("jobs start through start_jobs (claim.lua), which reads what this would")

    async def _run_claimed(self, job_id: str, score: int, job_try: int, stored: bytes) -> None:
        """arq's ``Worker.run_job`` for a job the claim script already read (its arq job, its try count),
        minus what our jobs never use (aborts, cron, results, max tries, job hooks), and with arq's
        finish_job transaction replaced by one auto-pipelined script call: a run costs no round trip of
        its own beyond its job's."""
        if stored:
            job = self.job_deserializer(stored)  # type: ignore[misc]  # ours (codec.loads_job) never raises
            name, args, kwargs, enqueue_ms = job["f"], tuple(job["a"]), job["k"], job["et"]
        else:  # the claim wrote the standard job just now
            name, args, kwargs, enqueue_ms = DIAL_FUNCTION, (), {}, timestamp_ms()
        function = self.functions.get(name)
        if function is None:
            await self._quarantine(job_id.encode(), f"arq job names no function of this worker ({name!r})")
            await self._finish(job_id, "done")
            return
        ctx = {**self.ctx, "job_id": job_id, "job_try": job_try, "enqueue_time": ms_to_datetime(enqueue_ms),
               "score": score}
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        outcome, ttl = "done", ""
        self.job_tasks[job_id] = task = self.loop.create_task(function.coroutine(ctx, *args, **kwargs))
        try:
            await asyncio.wait_for(task, timeout_s)
            self.jobs_complete += 1
        except Retry as exc:
            defer_ms = exc.defer_score or 0
            outcome = str(defer_ms + timestamp_ms() - score) if defer_ms else ""
            ttl = str(defer_ms + self._job_ttl_ms)  # the arq job must outlive the deferral
            self.jobs_retried += 1
        except (asyncio.CancelledError, RetryJob):
            # Shutdown or drain: run again (at the in-progress key's expiry at the latest), as arq does.
            outcome = ""
            self.jobs_retried += 1
        except Exception as exc:
            # Dropped, as arq drops a failed job: this is a bug or a record nobody can write (R4).
            log.exception("job %s failed, %s: %s", job_id, type(exc).__name__, exc)
            self.jobs_failed += 1
        finally:
            del self.job_tasks[job_id]
        await asyncio.shield(self._finish(job_id, outcome, ttl))

    async def _finish(self, job_id: str, outcome: str, ttl_ms: str = "") -> None:
        if self._finish_script is None:
            self._finish_script = scripts.register(self.pool, "dispatch/finish.lua")
        keys = [self.queue_name, in_progress_key_prefix + job_id, retry_key_prefix + job_id,
                job_key_prefix + job_id]
        await AutoPipeline.of(self.pool).eval(self._finish_script, keys=keys, args=[job_id, outcome, ttl_ms])

    async def _quarantine(self, raw: bytes, reason: str) -> None:
        await self.pool.zrem(self.queue_name, raw)
        dispatcher: Dispatcher = self.ctx["dispatcher"]
        await dispatcher.reject(raw.decode("utf-8", "backslashreplace"), reason)


class DialerProcess:
    """One worker process: shared resources plus one arq Worker per served queue."""

    def __init__(self, settings: Settings, queues: Sequence[int], *, burst: bool = False,
                 concurrency: int | None = None) -> None:
        self.settings = settings
        self.queues = list(queues)
        self.burst = burst
        self.concurrency = concurrency or settings.worker_concurrency
        self.workers: list[_Worker] = []
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        settings = self.settings
        pool = await open_pool(settings)
        limiter = RateLimiter(pool, settings)
        in_flight = InFlight(pool, settings)
        stats = metrics.SendStats(pool, settings)
        background = [asyncio.ensure_future(stats.run())]  # and the wake-up listener, once the workers exist
        try:
            async with ProviderClient.open(settings, pool) as client:
                dispatcher = Dispatcher(settings, Ledger(pool, settings), limiter, in_flight, client, stats=stats)
                keys = Keys(settings.key_prefix)
                self.workers = [
                    _Worker(
                        functions=[func(_dial, name=DIAL_FUNCTION, max_tries=_ARQ_MAX_TRIES,
                                        timeout=settings.job_timeout_s)],
                        queue_name=keys.queue(p),
                        redis_pool=pool,
                        burst=self.burst,
                        handle_signals=False,
                        max_jobs=self.concurrency,
                        poll_delay=settings.poll_delay_s,
                        max_tries=_ARQ_MAX_TRIES,
                        keep_result=0,
                        job_serializer=codec.dumps,
                        job_deserializer=codec.loads_job,
                        ctx={"dispatcher": dispatcher},
                        health_check_interval=_HEALTH_CHECK_INTERVAL_S,
                        log_results=False,
                    )
                    for p in self.queues
                ]
                runs = [asyncio.ensure_future(w.async_run()) for w in self.workers]
                background.append(asyncio.ensure_future(
                    _wake_on_enqueue(pool, keys.wake, {w.queue_name: w for w in self.workers})))
                stop = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait([stop, *runs], return_when=asyncio.FIRST_COMPLETED)
                if self._stopping.is_set():
                    await self._drain(runs)
                else:
                    # Burst mode: each worker returns when its queue is empty; wait for them all.
                    await asyncio.gather(*runs)
                stop.cancel()
                for w in self.workers:
                    with contextlib.suppress(Exception):
                        await pool.delete(w.health_check_key)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await limiter.close()
            await pool.aclose()

    def stop(self) -> None:
        """Stop taking jobs; in-flight calls finish within ``drain_timeout_s`` (SIGTERM/SIGINT)."""
        self._stopping.set()

    async def _drain(self, runs: Sequence[asyncio.Future[None]]) -> None:
        for w in self.workers:
            w.allow_pick_jobs = False
        running = [t for w in self.workers for t in w.tasks.values() if not t.done()]
        log.info("draining %d running job(s), up to %ss", len(running), self.settings.drain_timeout_s)
        if running:
            _done, pending = await asyncio.wait(running, timeout=self.settings.drain_timeout_s)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for r in runs:
            r.cancel()
        await asyncio.gather(*runs, return_exceptions=True)


async def _wake_on_enqueue(pool: ArqRedis, channel: str, workers: dict[str, _Worker]) -> None:
    """Wake a queue's worker when a job due now is enqueued on it (``Keys.wake``, published by
    enqueue.lua). Only a latency gain: while the subscription is down, the workers still poll every
    ``poll_delay_s``, so an error here is retried quietly."""
    while True:
        try:
            async with pool.pubsub(ignore_subscribe_messages=True) as sub:
                await sub.subscribe(channel)
                async for message in sub.listen():
                    worker = workers.get(message["data"].decode("utf-8", "replace"))
                    if message["type"] == "message" and worker is not None:
                        worker.wake()
        except (RedisError, OSError) as exc:
            log.debug("wake-up subscription lost (%s); polling meanwhile", type(exc).__name__)
            await asyncio.sleep(1.0)


async def run_process(settings: Settings, queues: Sequence[int], *, burst: bool = False,
                      concurrency: int | None = None) -> None:
    """Run a worker process until SIGTERM/SIGINT (or, with ``burst``, until the queues are empty)."""
    proc = DialerProcess(settings, queues, burst=burst, concurrency=concurrency)
    freeze_start_up_objects()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, proc.stop)
    try:
        async with metrics.serve_worker_metrics(settings, health=lambda: check_health(settings, queues)):
            await proc.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def check_health(settings: Settings, queues: Sequence[int]) -> bool:
    """True when a live worker recently recorded health for every given queue."""
    pool = client.cli_client(settings)
    try:
        keys = Keys(settings.key_prefix)
        found = await pool.exists(*[keys.queue(p) + ":health-check" for p in queues])
        return int(found) == len(queues)
    finally:
        await pool.aclose()
