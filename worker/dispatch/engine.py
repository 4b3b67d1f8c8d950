"""The queue-engine seam: the only module that knows the engine is arq (0.28.0, pinned).

Everything arq-specific is here: arq's client class and job codec, its per-job keys as our Lua uses
them, the claim and finish scripts that replace arq's per-job round trips, and a ``Worker`` subclass
that overrides arq internals. The internals it touches are listed in :data:`ARQ_INTERNALS`, and a
contract test (tests/dispatch/test_engine_contract.py) fails, naming the attribute, when an arq
release renames or removes one. The rest of the dialer sees :func:`queue_worker`, :func:`open_pool`,
and the :class:`~worker.dispatch.dispatcher.Defer` exception, which a run raises
to go back on its queue.

The producer stores only the ledger record and the queue entry; the claim writes the arq job of each
job it starts. So ``dialer worker`` runs these queues and arq's own CLI (plain arq Workers, which
expect the arq job at enqueue) cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from arq import Retry
from arq.connections import ArqRedis
from arq.utils import ms_to_datetime, timestamp_ms
from arq.worker import RetryJob, Worker, func
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from worker.dispatch.dispatcher import Defer
from worker.settings import Settings
from worker.store import client, scripts
from worker.store.keys import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from worker.store.pipelining import AutoPipeline

__all__ = ["ARQ_INTERNALS", "DIAL_FUNCTION", "QueueWorker", "open_pool", "queue_worker"]

log = logging.getLogger(__name__)

DIAL_FUNCTION = "dial"
"""The one job function of our queues: a dial, whose body lives in the ledger."""
# arq's own attempt counter also counts our deferrals (pause, windows, backoff); provider attempts are
# bounded by the ledger instead, so arq's is set out of reach.
_ARQ_MAX_TRIES = 1_000_000
_HEALTH_CHECK_INTERVAL_S = 5
ARQ_TRY_TTL_S = 88400
"""arq's TTL of a job's try counter (hard-coded in arq's ``Worker.run_job``); claim.lua sets the same."""

ARQ_INTERNALS: dict[str, tuple[str, ...]] = {
    # arq.worker.Worker: methods we override or call, attributes we read or write.
    "Worker": ("main", "start_jobs", "run_job", "async_run", "_poll_iteration", "_jobs_started",
               "_release_sem_dec_counter_on_complete"),
    "Worker()": ("ctx", "pool", "on_startup", "burst", "max_burst_jobs", "tasks", "job_tasks", "queue_name",
                 "poll_delay_s", "job_counter", "max_jobs", "sem", "in_progress_timeout_s", "functions",
                 "job_timeout_s", "jobs_complete", "jobs_retried", "jobs_failed", "loop", "job_deserializer",
                 "allow_pick_jobs", "health_check_key"),
    "Function": ("coroutine", "timeout_s"),
    "Retry()": ("defer_score",),
}
"""What the seam touches of arq beyond its documented API; tests/dispatch/test_engine_contract.py
checks each on the installed arq."""

Reject = Callable[[str, str], Awaitable[Any]]
RunJob = Callable[[str, float, "str | None"], Awaitable[str]]


# --- the job codec: JSON, never pickle --------------------------------------------------------------
# Other languages can read and write the queues, and nothing read back from Redis can execute code.

def dumps(data: dict[str, Any]) -> bytes:
    # default=str: arq stores exceptions as job results; keep their text rather than failing.
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def loads(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("job payload is not a JSON object")
    return data


def _dial_job_head() -> bytes:
    # Scripts append the enqueue time in ms and "}"; derived from dumps so the bytes are exactly what
    # dumps gives for this job.
    full = dumps({"t": 1, "f": DIAL_FUNCTION, "a": [], "k": {}, "et": 0})
    assert full.endswith(b"0}")
    return full[:-2]


DIAL_JOB_HEAD = _dial_job_head()
"""arq's JSON job for a dial, up to its enqueue time: ``{"t":1,"f":"dial","a":[],"k":{},"et":``. The
worker's claim (``dispatch/claim.lua``) writes ``DIAL_JOB_HEAD + b"<ms>}"`` as ``arq:job:<id>``."""

MALFORMED = "_malformed"
_MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z, the last instant datetime can hold


def _sane_int(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def loads_job(raw: bytes) -> dict[str, Any]:
    """Read an arq job; never raise. A payload that is not a JSON ``dial`` job (garbage, pickle, another
    function) still becomes a ``dial`` call carrying the reason, so the worker dead-letters it with that
    reason instead of arq dropping it silently. Nothing read here is ever executed."""
    try:
        data = loads(raw)
        if data.get("f") != DIAL_FUNCTION:
            reason = f"unknown function {str(data.get('f'))[:40]!r}"
        elif data.get("a", []) != [] or data.get("k", {}) != {}:
            # The body lives in the ledger; a dial job carries no arguments. (A kwarg named "ctx" would
            # also make arq's call of the job function fail before it starts.)
            reason = "arguments must be [] and {} (the job's body lives in its ledger record)"
        elif not _sane_int(data.get("et", 0), _MAX_MS) or not (data.get("t") is None or _sane_int(data["t"], 10**9)):
            # arq turns "et" into a datetime and compares "t" outside any try: a bad value there
            # would kill the worker's loop, not just this job.
            reason = "enqueue time 'et' or try count 't' is not a sane integer"
        else:
            data["a"], data["k"] = [], {}
            data.setdefault("t", None)
            data.setdefault("et", 0)
            return data
    except (ValueError, UnicodeDecodeError):
        reason = "payload is not a JSON object"
    return {"f": DIAL_FUNCTION, "a": [], "k": {MALFORMED: reason}, "t": None, "et": 0}


async def open_pool(settings: Settings) -> ArqRedis:
    """The worker process's Redis client (:func:`worker.store.client.worker_client`, as arq's client class
    with our codec): every command waits for Redis however long it is away (logging a WARNING once while
    it does); cancel the wait to give up, and the pool is closed."""
    pool = client.worker_client(settings, ArqRedis, job_serializer=dumps, job_deserializer=loads_job)
    try:
        await pool.ping()
    except BaseException:
        await pool.aclose()
        raise
    return pool


async def _job(ctx: dict[str, Any], *_args: Any, **kwargs: Any) -> str:
    """arq's job function: the run the process gave (``ctx["run"]``), its :class:`Defer` as arq's Retry.
    Arguments are ignored: the job's body lives in the ledger."""
    run: RunJob = ctx["run"]
    try:
        return await run(ctx["job_id"], float(ctx.get("score") or 0), kwargs.get(MALFORMED))
    except Defer as d:
        # (QueueWorker's finish extends the arq job's TTL past the deferral.)
        raise Retry(defer=d.seconds) from None


def queue_worker(settings: Settings, pool: ArqRedis, queue_name: str, *, run: RunJob, reject: Reject,
                 burst: bool = False, concurrency: int | None = None) -> QueueWorker:
    """The worker of one queue: ``run(job_id, order, malformed_reason)`` runs a job to a state (or raises
    :class:`Defer`), ``reject(job_id, reason)`` dead-letters a queue entry that cannot run."""
    return QueueWorker(
        functions=[func(_job, name=DIAL_FUNCTION, max_tries=_ARQ_MAX_TRIES, timeout=settings.job_timeout_s)],
        queue_name=queue_name,
        redis_pool=pool,
        burst=burst,
        handle_signals=False,
        max_jobs=concurrency or settings.worker_concurrency,
        poll_delay=settings.poll_delay_s,
        max_tries=_ARQ_MAX_TRIES,
        keep_result=0,
        job_serializer=dumps,
        job_deserializer=loads_job,
        ctx={"run": run},
        health_check_interval=_HEALTH_CHECK_INTERVAL_S,
        log_results=False,
        job_ttl_s=settings.job_ttl_s,
        reject=reject,
    )


class QueueWorker(Worker):
    """arq's Worker with our own claim step: one Lua script (``claim.lua``) per poll claims the due jobs
    and materializes their arq jobs, where arq makes 4 round trips per job (WATCH, EXISTS, ZSCORE,
    MULTI/PSETEX/EXEC). The producer writes no arq job (``arq:job:<id>``) at all, so a plain arq
    ``Worker`` cannot run our queues: this class is the only consumer.

    Also minus the ways a poisoned queue entry kills arq's loop (arq decodes every member as UTF-8 and
    casts every score with int(), outside any try): such entries are dead-lettered.

    ``job_ttl_s`` is the life of an arq job written at claim; a deferral extends it. ``reject(job_id,
    reason)`` dead-letters what cannot run. Build one with :func:`queue_worker`.
    """

    def __init__(self, *args: Any, job_ttl_s: float, reject: Reject, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._job_ttl_ms = int(job_ttl_s * 1000)
        self._reject = reject
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
                job_id = raw.decode()
            except UnicodeDecodeError:
                await self._quarantine(raw, "queue entry's job id is not UTF-8")
                continue
            running = self.tasks.get(job_id)
            if running is not None and not running.done():
                # Still running here, though its in-progress key is gone (a run that outlived the key's
                # TTL, e.g. a cancellation's ledger write on a stalled Redis): never start it twice in one
                # process, which would also lose track of the first run.
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
                args=[timestamp_ms(), int(self.in_progress_timeout_s * 1000), self._job_ttl_ms, DIAL_JOB_HEAD,
                      taken, in_progress_key_prefix, job_key_prefix, retry_key_prefix, ARQ_TRY_TTL_S, *good],
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
            job = self.job_deserializer(stored)  # type: ignore[misc]  # ours (loads_job) never raises
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
        except TimeoutError:
            # The run outlived the job timeout: it was stuck on Redis (a network cut, a failover) past its
            # own budget. Dropping it, as arq would, left its record `queued` or `sending` with no queue
            # entry to finish it (fault R6's cut): it goes back to its queue, and its next run reads the
            # ledger (a `sending` left behind becomes `unknown`, never a second call).
            log.warning("job %s: run stopped at the job timeout (%.0f s); back on its queue", job_id, timeout_s)
            outcome = ""
            self.jobs_retried += 1
        except Exception as exc:
            # Dropped, as arq drops a failed job: this is a bug or a record nobody can write (R4).
            log.exception("job %s failed, %s: %s", job_id, type(exc).__name__, exc)
            self.jobs_failed += 1
        finally:
            if self.job_tasks.get(job_id) is task:
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
        await self._reject(raw.decode("utf-8", "backslashreplace"), reason)

    # --- what the process may ask of its workers (nothing else of arq's Worker is used outside) ----

    def stop_taking_jobs(self) -> None:
        """Take no new job; the running ones go on (a drain)."""
        self.allow_pick_jobs = False

    def running(self) -> list[asyncio.Task[Any]]:
        """The runs in progress."""
        return [t for t in self.tasks.values() if not t.done()]

    async def clear_health(self) -> None:
        """Remove this worker's heartbeat (a stopped worker is not live)."""
        await self.pool.delete(self.health_check_key)
