"""Fleet-wide cap on concurrent provider requests: leases in one Redis sorted set (``inflight.lua``).

::

    in_flight = InFlight(redis, settings)
    async with in_flight.slot():      # waits until fewer than max_in_flight leases are held fleet-wide
        await post_request()
    print(await in_flight.held())     # leases held right now, across every process

Each lease is a member scored by its expiry on the Redis clock. A lease lives
``request_timeout_s + connect_timeout_s + 5 s``: a request can't run longer than that, so a worker killed
mid-request gives its slots back by itself once they expire. Leaving the block removes the lease at once,
also on an exception or cancellation.

Waiting costs Redis little: a local ``asyncio.Semaphore(max_in_flight)`` stops a process from asking for
more slots than the cap, and of its waiters only one at a time polls Redis, with a backoff from 2 ms to
50 ms that restarts whenever this process frees a slot.

The dial path does not pay a round trip of its own for its lease: it holds the local part with
:meth:`InFlight.hold`, and the job's ledger transitions take and give back the fleet-wide lease in the
same script (``Ledger.begin_send`` takes it, ``mark_sent`` / ``mark_retry`` / ``mark_final`` give it
back; the lease is named after the job). Only when the cap is reached does it wait here::

    async with in_flight.hold(job_id, wait_s=30) as lease:    # local slot; no lease in Redis yet
        gate = await ledger.begin_send(job_id, lease)         # "busy": await in_flight.acquire(lease)
        ...
        await ledger.mark_sent(job_id, serial, lease)         # lease given back by the script
    # leaving the block removes the lease if a script did not (exception, cancellation)
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.settings import Settings
from worker.store import scripts
from worker.store.keys import Keys
from worker.store.pipelining import AutoPipeline

__all__ = ["LEASE_GRACE_S", "InFlight", "Lease"]

log = logging.getLogger(__name__)


LEASE_GRACE_S = 5.0
"""A lease outlives the longest possible request by this much before it counts as abandoned."""
_POLL_S = (0.002, 0.05)


@dataclass(slots=True)
class Lease:
    """One job's fleet-wide in-flight lease, as the ledger scripts take and give it back.

    ``key`` is the sorted set, ``member`` the lease's name (the job id), ``cap`` and ``ttl_ms`` the
    fleet's cap and the lease's life. ``held``: a lease may exist in Redis (set before asking for it,
    cleared once a script gave it back), so leaving :meth:`InFlight.hold` knows whether to remove it.
    """

    key: str
    member: str
    cap: int
    ttl_ms: int
    held: bool = False


class InFlight:
    """Fleet-wide in-flight cap (``settings.max_in_flight``); one instance per process."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._key = Keys(settings.key_prefix).in_flight
        self._cap = settings.max_in_flight
        lease_s = settings.request_timeout_s + settings.connect_timeout_s + LEASE_GRACE_S
        self._ttl_ms = math.ceil(lease_s * 1000)
        self._script = scripts.register(redis, "limits/inflight.lua")
        self._pipe = AutoPipeline.of(redis)
        self._local = asyncio.Semaphore(settings.max_in_flight)
        self._poller = asyncio.Lock()
        self._freed = asyncio.Event()
        self._releasing: set[asyncio.Task[None]] = set()

    def slot(self, wait_s: float | None = None) -> AbstractAsyncContextManager[None]:
        """Hold one fleet-wide in-flight lease for the duration of the ``async with`` block.

        ``wait_s`` bounds the wait for a lease: ``TimeoutError`` when none came in time (nothing held).
        """
        return self._slot(wait_s)

    async def held(self) -> int:
        """Leases held now across the fleet (expired ones not counted)."""
        sec, usec = await self._redis.time()
        now_ms = int(sec) * 1000 + int(usec) // 1000
        return int(await self._redis.zcount(self._key, f"({now_ms}", "+inf"))

    def hold(self, member: str, wait_s: float | None = None) -> AbstractAsyncContextManager[Lease]:
        """:meth:`enter` ... :meth:`leave` as an ``async with`` block."""
        return self._hold(member, wait_s)

    async def enter(self, member: str, wait_s: float | None = None) -> Lease:
        """The local part of a slot, for the dial path: waits (at most ``wait_s``, else
        ``TimeoutError``) until this process holds fewer than ``max_in_flight`` slots, and returns a
        :class:`Lease` named ``member`` that is not taken yet: ``Ledger.begin_send`` takes it in Redis
        (or :meth:`acquire`, when the cap was reached). Always pair with :meth:`leave`."""
        if self._local.locked():
            async with asyncio.timeout(wait_s):
                await self._local.acquire()
        else:
            await self._local.acquire()  # free: returns at once, no timer needed
        return self.lease(member)

    async def leave(self, lease: Lease) -> None:
        """Give back the local slot, and remove the lease if it may still exist (an exception or a
        cancellation before a script gave it back)."""
        try:
            if lease.held:
                await self._release(lease.member)
                lease.held = False
        finally:
            self._local.release()
            self._freed.set()

    async def acquire(self, lease: Lease, wait_s: float | None = None) -> None:
        """Take (or extend) ``lease`` in Redis, waiting while the fleet is at its cap; ``TimeoutError``
        after ``wait_s``, the lease then removed."""
        lease.held = True  # from here a lease may exist, even if the reply is lost
        try:
            async with asyncio.timeout(wait_s):
                await self._acquire(lease.member, remove_on_cancel=False)
        except TimeoutError:
            await self._release(lease.member)
            lease.held = False
            raise

    def lease(self, member: str) -> Lease:
        """A lease named ``member``, not taken (see :meth:`hold`)."""
        return Lease(self._key, member, self._cap, self._ttl_ms)

    @asynccontextmanager
    async def _hold(self, member: str, wait_s: float | None) -> AsyncIterator[Lease]:
        lease = await self.enter(member, wait_s)
        try:
            yield lease
        finally:
            await self.leave(lease)

    @asynccontextmanager
    async def _slot(self, wait_s: float | None) -> AsyncIterator[None]:
        async with asyncio.timeout(wait_s):
            await self._local.acquire()
            try:
                lease = await self._acquire(uuid.uuid4().hex)
            except BaseException:
                self._local.release()
                raise
        try:
            yield
        finally:
            try:
                await self._release(lease)
            finally:
                self._local.release()

    async def _acquire(self, lease: str, *, remove_on_cancel: bool = True) -> str:
        async with self._poller:
            pause = _POLL_S[0]
            while True:
                self._freed.clear()  # before asking: a release during the call must not be missed
                try:
                    taken = await self._pipe.eval(self._script, [self._key], [lease, self._cap, self._ttl_ms])
                except asyncio.CancelledError:
                    # The script may have run before the reply was lost: drop the lease if it exists.
                    if remove_on_cancel:
                        self._spawn_removal(lease)
                    raise
                if taken:
                    return lease
                try:
                    async with asyncio.timeout(pause * random.uniform(0.8, 1.2)):
                        await self._freed.wait()
                    pause = _POLL_S[0]
                except TimeoutError:
                    pause = min(pause * 2, _POLL_S[1])

    async def _release(self, lease: str) -> None:
        # Shielded: a cancelled request must still give its slot back now, not after the lease TTL.
        await asyncio.shield(self._spawn_removal(lease))

    def _spawn_removal(self, lease: str) -> asyncio.Task[None]:
        task = asyncio.create_task(self._remove(lease))
        self._releasing.add(task)  # asyncio keeps only weak references to tasks
        task.add_done_callback(self._releasing.discard)
        return task

    async def _remove(self, lease: str) -> None:
        try:
            await self._pipe.execute("ZREM", self._key, lease)
        except (RedisError, OSError) as exc:
            log.warning("in-flight lease not released (%s); it expires by itself", type(exc).__name__)
        finally:
            self._freed.set()
