"""Fleet-wide, priority-aware rate limit: GCRA in Redis (``gcra.lua``), one booking pump per process.

Every provider request first takes a permit::

    limiter = RateLimiter(redis, settings)
    waited = await limiter.acquire(priority=3)                       # global limit only
    await limiter.acquire(5, extra=[Limit("campaign:spring", rate=5)])  # global and the campaign's
    await limiter.close()

How it holds across processes: the schedule lives in Redis (one key per limit, see ``Keys.rate``) and
is only read and moved by one Lua script using Redis ``TIME``. The script books a *send slot* and
returns how long until it, relative to Redis time; the caller sleeps that long on its own clock, so
host clock skew does not matter. Slots are spaced for 99% of each limit, so the few ms by which a busy
event loop wakes one sender late and the next on time cannot push a 1-s window past rate + burst.
:meth:`RateLimiter.permit` returns the slot with the lateness that bound tolerates
(:attr:`Permit.tolerance`, ~15 ms at 200/s): a caller whose request would leave later books a new slot
instead (the dispatcher does, right before the request).

Priority: a priority-``p`` call may book a slot at most :func:`reserve_horizon` seconds ahead. The
horizon falls geometrically from ``rate_reserve_ahead_s`` at priority 1 to 1.5 emission intervals
(at least 10 ms) at priority 9. A backlog of priority-9 calls therefore keeps the schedule only ~1.5
intervals ahead of now, and a new priority-1 call, from any process, books the next slot after that
(within ~2.5 intervals) instead of queueing behind the backlog. If its slot is beyond its horizon the
script books nothing and says when to ask again. At the defaults (10 calls/s, 2 s)::

    priority  1     2     3     4     5     6     7     8     9
    horizon   2.00  1.45  1.05  0.76  0.55  0.40  0.29  0.21  0.15  s

Several limits (global + ``extra``) are booked by one script call: the slot is the latest any of them
allows, booked in all keys or none. A slot set by a slower extra limit (a throttled campaign) is not
booked more than half a global interval beyond the global schedule's next free slot: a booking far
ahead would leave the global capacity before it unused. Such calls get their global slot just in
time, so among them priority is strict within a process but only best effort across processes.

Efficiency: the hundreds of coroutines waiting in one process never poll Redis themselves. They wait
in a local heap (priority, then arrival order) and one pump task per distinct *limit set* (global
alone, global + campaign A, ...) asks Redis for the best waiters of its set, up to 32 slots per
script call. Booked slots go to the best waiters; a refused head makes the pump sleep for the
``retry`` the script computed, or less if a better-priority waiter arrives. So a process makes about
one Redis call per permit plus, while saturated, about one poll per interval, however many wait. One
pump per limit set (not one heap for all) is what keeps a throttled campaign's waiters from blocking
global-only waiters queued behind them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker.rules import PRIORITY_LEVELS
from worker.settings import Settings
from worker.store import scripts
from worker.store.keys import Keys
from worker.store.pipelining import AutoPipeline

__all__ = ["Limit", "Permit", "RateLimiter", "reserve_horizon"]

log = logging.getLogger(__name__)


_LOWEST_HORIZON_INTERVALS = 1.5
_LOWEST_HORIZON_MIN_S = 0.01
"""Priority 9 may book 1.5 emission intervals ahead, and at least 10 ms: enough that the schedule never
idles for a Redis round trip or a late timer between two bookings, small enough that urgent calls get
the next slot."""
_PACING = 0.99
"""Slots are spaced for 99% of each limit: the headroom absorbs the few ms by which a busy event loop
wakes one sender late and the next on time, so no 1-s window seen by the provider exceeds rate+burst
(as long as no request leaves later than :attr:`Permit.tolerance` after its slot)."""
_MAX_TOLERANCE_S = 0.05
"""However much a slow limit's arithmetic allows, a request leaves at most this long after its slot, so
that pacing stays even (at 1/s the window bound alone would let a request leave a second late)."""
_CLOCK_MARGIN_S = 0.001
"""Taken off each tolerance: a slot is mapped to this process's clock up to the one-way delay of the
fastest Redis reply late (see :class:`_ClockMap`), which the caller cannot see."""
_GLOBAL_MAX_GAP_INTERVALS = 0.5
"""A slot set by a slower extra limit may leave at most this much global capacity unused before it."""
_MAX_BATCH = 32
_MIN_POLL_S = 0.001
_ERROR_BACKOFF_S = (0.05, 2.0)
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)
_US = 1_000_000
_CLOCK_EPOCH_S = 2.0


def reserve_horizon(priority: int, rate: float, reserve_ahead_s: float) -> float:
    """Seconds ahead a priority-``priority`` call may book a slot of a ``rate``/s schedule.

    Geometric from ``reserve_ahead_s`` (priority 1) down to 1.5 intervals but at least 10 ms
    (priority 9); never above ``reserve_ahead_s``, so ``rate_reserve_ahead_s=0`` means no call books
    ahead at all.

    >>> round(reserve_horizon(9, 10.0, 2.0), 3), reserve_horizon(1, 10.0, 2.0)
    (0.15, 2.0)
    """
    if priority not in PRIORITY_LEVELS:
        raise ValueError(f"priority: must be 1..9, got {priority!r}")
    lowest = min(max(_LOWEST_HORIZON_INTERVALS / rate, _LOWEST_HORIZON_MIN_S), reserve_ahead_s)
    if lowest <= 0:
        return 0.0
    return float(reserve_ahead_s * (lowest / reserve_ahead_s) ** ((priority - 1) / 8))


def gcra_script(redis: Redis) -> AsyncScript:
    """The GCRA script (``gcra.lua``) on ``redis``: the fleet's call rate and the HTTP service's per-key
    throttle (:mod:`worker.http.throttle`) book their slots with it. Its calling convention (KEYS =
    limits; ARGV = n, n horizons, then interval/tau/max-gap per key; reply = retry, Redis now, delays)
    is documented at the top of the script."""
    return scripts.register(redis, "limits/gcra.lua")


@dataclass(frozen=True)
class Limit:
    """One rate limit shared by the fleet.

    ``name``: ``"global"`` or ``"campaign:<name>"``; the state lives at ``Keys.rate(name)``.
    ``rate``: calls per second (> 0). ``burst``: calls allowed back to back above the rate (>= 1).
    """

    name: str
    rate: float
    burst: int = 1

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Limit.name: must not be empty")
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise ValueError(f"Limit.rate: must be a positive number of calls/s, got {self.rate!r}")
        if self.burst < 1:
            raise ValueError(f"Limit.burst: must be >= 1, got {self.burst!r}")


@dataclass(frozen=True, slots=True)
class Permit:
    """A rate permit: the send slot booked (``slot``, ``time.monotonic()`` of this process; None when
    no limit applies), the seconds ``waited`` for it, and the ``tolerance``: how late after its slot a
    request may still leave.

    Slots are spaced for 99% of each limit (``_PACING``), ``I = 1 / (0.99 * rate)`` apart, and GCRA
    lets at most ``burst + floor(D / I)`` slots into any stretch of ``D`` seconds. A request leaving up
    to ``L`` after its slot lands in a 1-s window with the slots of ``1 + L`` s, so the window holds at
    most ``rate + burst`` requests while ``(1 + L) / I < floor(rate) + 1``: ``L`` is about 15 ms at
    200/s and 10.1 ms for very high rates (less 1 ms for the clock mapping, at most 50 ms; the smallest
    over the limits of the set). A request that would leave later than that (a stalled event loop, a
    slow ledger write) must not use its slot: :meth:`late` says so, and the caller books another.
    """

    slot: float | None
    waited: float
    tolerance: float

    def late(self, now: float | None = None) -> bool:
        """True when a request leaving at ``now`` (default: now) would be more than ``tolerance`` after
        the slot."""
        if self.slot is None:
            return False
        return (time.monotonic() if now is None else now) > self.slot + self.tolerance


_NO_PERMIT = Permit(None, 0.0, math.inf)


class _ClockMap:
    """Turns Redis TIME into this process's monotonic clock, without the event loop's lag.

    A reply is read some time after the script ran: the network, plus however long the loop took to
    resume the pump, which is milliseconds when hundreds of jobs share it and differs from call to call.
    Adding that lag to each deadline would bunch sends together. The smallest (receive time - Redis
    time) seen lately is the least delayed sample: an offset that is never early and the same for every
    call. "Lately" (the last 2-4 s) lets it follow clock drift; the clamp to [sent, received] + delay
    bounds the harm of a Redis clock step.
    """

    __slots__ = ("_current", "_epoch_end", "_previous")

    def __init__(self) -> None:
        self._current = self._previous = math.inf
        self._epoch_end = 0.0

    def deadline(self, sent: float, received: float, redis_now_us: int, delay_us: int) -> float:
        if received >= self._epoch_end:
            self._previous, self._current = self._current, math.inf
            self._epoch_end = received + _CLOCK_EPOCH_S
        offset = received - redis_now_us / _US
        self._current = min(self._current, offset)
        best = min(self._current, self._previous)
        delay = delay_us / _US
        return min(max(redis_now_us / _US + best + delay, sent + delay), received + delay)


class _Waiter:
    __slots__ = ("future", "order", "priority", "queued", "seq")

    def __init__(self, priority: int, order: float, seq: int, future: asyncio.Future[float]) -> None:
        self.priority = priority
        self.order = order
        self.seq = seq
        self.future = future
        self.queued = True

    def __lt__(self, other: _Waiter) -> bool:
        return (self.priority, self.order, self.seq) < (other.priority, other.order, other.seq)


class _Queue:
    """Waiters by (priority, arrival); a cancelled one is only marked, and swept out lazily, so that
    cancelling thousands of waiters at once stays linear."""

    __slots__ = ("_heap", "live")

    def __init__(self) -> None:
        self._heap: list[_Waiter] = []
        self.live = 0

    def push(self, waiter: _Waiter) -> None:
        heapq.heappush(self._heap, waiter)
        self.live += 1

    def discard(self, waiter: _Waiter) -> None:
        if not waiter.queued:
            return
        waiter.queued = False
        self.live -= 1
        if not self.live:
            self._heap.clear()
        elif len(self._heap) > 2 * self.live + 64:
            self._heap = [w for w in self._heap if w.queued]
            heapq.heapify(self._heap)

    def head(self) -> _Waiter | None:
        while self._heap and not self._heap[0].queued:
            heapq.heappop(self._heap)
        return self._heap[0] if self._heap else None

    def best(self, n: int) -> list[_Waiter]:
        self.head()
        return [w for w in heapq.nsmallest(n, self._heap) if w.queued]

    def pop(self) -> _Waiter | None:
        """The best waiter still waiting, out of the queue."""
        while (waiter := self.head()) is not None:
            heapq.heappop(self._heap)
            self.discard(waiter)
            # Cancelled, but its task has not yet run the except clause that would have discarded it.
            if not waiter.future.done():
                return waiter
        return None

    def drain(self) -> list[_Waiter]:
        waiting = [w for w in self._heap if w.queued]
        for waiter in waiting:
            waiter.queued = False
        self._heap.clear()
        self.live = 0
        return waiting


class _Group:
    """Waiters sharing one limit set, and the pump that books for them."""

    __slots__ = ("args", "horizons_us", "keys", "limits", "nap_priority", "queue", "task", "tolerance", "wake")

    def __init__(
        self, limits: tuple[Limit, ...], keys: Keys, reserve_ahead_s: float, has_global: bool
    ) -> None:
        self.limits = limits
        self.keys = [keys.rate(lim.name) for lim in limits]
        fastest = max(lim.rate for lim in limits)
        self.horizons_us = [
            round(reserve_horizon(p, fastest, reserve_ahead_s) * _US) for p in PRIORITY_LEVELS
        ]
        args: list[int] = []
        tolerances: list[float] = []
        for i, lim in enumerate(limits):
            interval = math.ceil(_US / (lim.rate * _PACING))
            tolerances.append((math.floor(lim.rate) + 1) * interval / _US - 1 - _CLOCK_MARGIN_S)
            # Extra limits (campaigns) are nested under the global one: a gap in a campaign's schedule
            # caused by the global limit is capacity no other call of that campaign could have used.
            gap = round(_GLOBAL_MAX_GAP_INTERVALS * interval) if has_global and i == 0 else -1
            args += [interval, (lim.burst - 1) * interval, gap]
        self.args = args
        self.tolerance = min(max(min(tolerances), 0.0), _MAX_TOLERANCE_S)
        self.queue = _Queue()
        self.wake = asyncio.Event()
        self.nap_priority = 0  # while the pump naps: a waiter with a better priority wakes it
        self.task: asyncio.Task[None] | None = None


class RateLimiter:
    """Fleet-wide rate permits; one instance per process, shared by all its workers and jobs.

    ``settings.rate_limit`` / ``rate_burst`` make the global limit (``rate_limit=0``: none, and no
    Redis call at all for calls without extra limits); ``rate_reserve_ahead_s`` the priority-1 horizon.
    """

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._keys = Keys(settings.key_prefix)
        self._script = gcra_script(redis)
        self._pipe = AutoPipeline.of(redis)
        self._global = (
            Limit("global", settings.rate_limit, settings.rate_burst) if settings.rate_limit > 0 else None
        )
        self._reserve_ahead_s = settings.rate_reserve_ahead_s
        self._groups: dict[tuple[Limit, ...], _Group] = {}
        self._seq = itertools.count()
        self._clock = _ClockMap()
        self._closed = False

    async def acquire(self, priority: int, extra: Sequence[Limit] = (), order: float = 0.0) -> float:
        """Block until a call of this priority may be sent under the global limit and every ``extra``
        limit; return the seconds waited.

        Within a priority, waiters are served by ``order`` (callers pass the job's queue score, so
        calls leave in queue order even when their jobs reach the limiter out of order), then arrival.

        Cancelling the wait is safe: the waiter leaves the queue. If a slot had already been booked
        for it, that one slot goes unused (the schedule is not rewound; another process may already
        have booked behind it).
        """
        return (await self.permit(priority, extra, order)).waited

    async def permit(
        self, priority: int, extra: Sequence[Limit] = (), order: float = 0.0, wait_s: float | None = None
    ) -> Permit:
        """:meth:`acquire`, returning the :class:`Permit` (its send slot, and how late the request may
        leave after it). ``wait_s`` bounds the wait: ``TimeoutError`` (a slot booked meanwhile goes
        unused). Without any limit to take a permit from, it returns at once, with no timer."""
        if priority not in PRIORITY_LEVELS:
            raise ValueError(f"priority: must be 1..9, got {priority!r}")
        if self._closed:
            raise RuntimeError("RateLimiter is closed")
        limits = self._limit_set(extra)
        if not limits:
            return _NO_PERMIT
        started = time.monotonic()
        group = self._groups.get(limits)
        if group is None:
            group = _Group(limits, self._keys, self._reserve_ahead_s, self._global is not None)
            self._groups[limits] = group
            group.task = asyncio.create_task(self._pump(group), name=f"rate-pump:{','.join(group.keys)}")
        waiter = _Waiter(priority, order, next(self._seq), asyncio.get_running_loop().create_future())
        group.queue.push(waiter)
        if priority < group.nap_priority:
            group.wake.set()
        async with asyncio.timeout(wait_s):
            try:
                send_at = await waiter.future
            except asyncio.CancelledError:
                group.queue.discard(waiter)
                if not group.queue.live:
                    group.wake.set()  # let the pump exit now rather than after its nap
                raise
            delay = send_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        return Permit(send_at, time.monotonic() - started, group.tolerance)

    async def close(self) -> None:
        """Stop every pump. Callers still queued get ``CancelledError``; booked ones keep their slot."""
        self._closed = True
        groups = list(self._groups.values())
        self._groups.clear()
        for group in groups:
            for waiter in group.queue.drain():
                waiter.future.cancel()
            if group.task is not None:
                group.task.cancel()
        await asyncio.gather(*(g.task for g in groups if g.task is not None), return_exceptions=True)

    def _limit_set(self, extra: Sequence[Limit]) -> tuple[Limit, ...]:
        # Global first (its key gets the gap cap), then extras by name: one group per distinct set.
        head = (self._global,) if self._global is not None else ()
        if not extra:
            return head
        by_name: dict[str, Limit] = {}
        for lim in extra:
            if lim.name == "global":
                raise ValueError("extra: 'global' comes from settings.rate_limit; pass only extra limits")
            if by_name.setdefault(lim.name, lim) != lim:
                raise ValueError(f"extra: limit {lim.name!r} given twice with different settings")
        return head + tuple(by_name[name] for name in sorted(by_name))

    async def _pump(self, group: _Group) -> None:
        backoff = _ERROR_BACKOFF_S[0]
        try:
            while group.queue.live:
                batch = group.queue.best(_MAX_BATCH)
                args = [len(batch), *(group.horizons_us[w.priority - 1] for w in batch), *group.args]
                sent = time.monotonic()
                try:
                    reply = await self._pipe.eval(self._script, group.keys, args)
                except _TRANSIENT as exc:
                    # Waiters keep waiting (their job's own timeout bounds that); retry with backoff.
                    log.warning(
                        "rate limiter: Redis unavailable (%s); retrying in %.2fs", type(exc).__name__, backoff
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _ERROR_BACKOFF_S[1])
                    continue
                backoff = _ERROR_BACKOFF_S[0]
                received = time.monotonic()
                retry_us, redis_now_us, delays = int(reply[0]), int(reply[1]), reply[2:]
                for delay_us in delays:
                    # Best waiters first, including any that arrived during the call; a slot booked for
                    # a waiter cancelled meanwhile goes to the next one, or is wasted if none is left.
                    waiter = group.queue.pop()
                    if waiter is None:
                        break
                    send_at = self._clock.deadline(sent, received, redis_now_us, int(delay_us))
                    waiter.future.set_result(send_at)
                head = group.queue.head()
                if not retry_us or head is None:
                    continue
                if head.priority < batch[len(delays)].priority:
                    continue  # a better waiter arrived during the call: ask for it now
                group.nap_priority = head.priority
                group.wake.clear()
                try:
                    async with asyncio.timeout(max(retry_us / _US, _MIN_POLL_S)):
                        await group.wake.wait()
                except TimeoutError:
                    pass
                finally:
                    group.nap_priority = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("rate limiter: pump for %s failed", ",".join(group.keys))
            for waiter in group.queue.drain():
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
        finally:
            if self._groups.get(group.limits) is group:
                del self._groups[group.limits]
