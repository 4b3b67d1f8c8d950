"""A worker process: the shared resources, one queue worker per served priority, the wake-up on
enqueue, signals and the drain, and the health check.

One process runs one :class:`~worker.dispatch.engine.QueueWorker` per served priority queue (the engine
reads exactly one queue per worker), all in one event loop, sharing one Redis pool, one aiohttp
session, one token manager, one rate limiter and one in-flight cap (see
:class:`worker.dispatch.dispatcher.Dispatcher`)::

    await run_process(load_settings(), parse_queues("1-3"))     # until SIGTERM/SIGINT
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker import metrics
from worker.campaigns.hopper import Hopper
from worker.dispatch import engine
from worker.dispatch.dispatcher import Dispatcher
from worker.dispatch.stats import SendStats
from worker.ledger.events import EventStream
from worker.ledger.transitions import Ledger
from worker.ledger.unknowns import Unknowns
from worker.limits.inflight import InFlight
from worker.limits.ratelimit import RateLimiter
from worker.provider.client import ProviderClient
from worker.rules import PRIORITY_LEVELS
from worker.runtime import freeze_start_up_objects
from worker.settings import Settings
from worker.store import client
from worker.store.keys import Keys
from worker.store.replication import replication_warning

__all__ = ["DialerProcess", "check_health", "parse_queues", "run_process"]

log = logging.getLogger(__name__)


_SHUTDOWN_REDIS_S = 5.0
"""How long a stopping process waits for Redis to clear its heartbeats and end its runs (Redis may be
away: retries there are forever)."""


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


class DialerProcess:
    """One worker process: shared resources plus one queue worker per served queue.

    ``clock`` is the dispatcher's clock (calling windows, deadlines); tests may inject one."""

    def __init__(self, settings: Settings, queues: Sequence[int], *, burst: bool = False,
                 concurrency: int | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.queues = list(queues)
        self.burst = burst
        self.concurrency = concurrency or settings.worker_concurrency
        self.clock = clock
        self.workers: list[engine.QueueWorker] = []
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        settings = self.settings
        # Redis may be away at start-up (open_pool waits for it, forever): a stop meanwhile ends the wait.
        opening = asyncio.ensure_future(engine.open_pool(settings))
        stopped = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait([opening, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not opening.done():
            log.info("stopped while waiting for Redis")
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
            return
        pool = opening.result()
        if (warning := await replication_warning(pool, settings)) is not None:
            log.warning("%s", warning)
        limiter = RateLimiter(pool, settings)
        in_flight = InFlight(pool, settings)
        stats = SendStats(pool, settings)
        # The wake-up listener joins these once the workers exist.
        background = [asyncio.ensure_future(stats.run()), asyncio.ensure_future(Unknowns(pool, settings).run()),
                      asyncio.ensure_future(EventStream(pool, settings).run_trim()),
                      # Campaign rows become jobs a window ahead of the senders; finished ones are compacted.
                      asyncio.ensure_future(Hopper(pool, settings).run())]
        try:
            async with ProviderClient.open(settings, pool) as client:
                dispatcher = Dispatcher(settings, Ledger(pool, settings), limiter, in_flight, client,
                                        clock=self.clock, stats=stats)
                keys = Keys(settings.key_prefix)
                self.workers = [
                    engine.queue_worker(settings, pool, keys.queue(p), run=dispatcher.run_job,
                                        reject=dispatcher.reject, burst=self.burst, concurrency=self.concurrency)
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
                # Redis may be away: the heartbeats expire by themselves, so do not wait for it.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        asyncio.gather(*(w.clear_health() for w in self.workers)), _SHUTDOWN_REDIS_S)
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
            w.stop_taking_jobs()
        running = [t for w in self.workers for t in w.running()]
        log.info("draining %d running job(s), up to %ss", len(running), self.settings.drain_timeout_s)
        if running:
            _done, pending = await asyncio.wait(running, timeout=self.settings.drain_timeout_s)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for r in runs:
            r.cancel()
        # A cancelled run finishing its bookkeeping may wait for an absent Redis: bounded.
        if runs:
            await asyncio.wait(runs, timeout=_SHUTDOWN_REDIS_S)


async def _wake_on_enqueue(pool: Redis, channel: str, workers: dict[str, engine.QueueWorker]) -> None:
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
        found = await pool.exists(*[keys.queue_health(p) for p in queues])
        return int(found) == len(queues)
    finally:
        await pool.aclose()
