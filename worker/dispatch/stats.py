"""Fleet-wide per-second counts of provider attempts and created calls, kept in Redis: the workers
write them (:class:`SendStats` ``record``/``flush``), the dashboard reads them (``read``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.metrics import error_label
from worker.settings import Settings
from worker.store import scripts
from worker.store.decode import text

__all__ = ["SendStats", "StatsWindow"]

log = logging.getLogger(__name__)

_STATS_TTL_S = 2 * 3600



@dataclass(frozen=True)
class StatsWindow:
    """What :meth:`SendStats.read` returns.

    ``now_s``: Redis server time. ``seconds``: the last complete seconds, oldest first, as
    ``(unix second, attempts, created)``. ``errors``: failed attempts by :func:`error_kind` over the
    last ``error_window_s`` seconds (whole minutes, so up to a minute more).
    """

    now_s: float
    seconds: list[tuple[int, int, int]]
    errors: dict[str, int] = field(default_factory=dict)


class SendStats:
    """Fleet-wide per-second counts of provider attempts and created calls, kept in Redis for 2 h.

    Workers count in memory (:meth:`record`, no I/O on the hot path) and :meth:`flush` about once a
    second (:meth:`run`); the dashboard reads (:meth:`read`). Keys: ``<prefix>stats:<unix minute>``,
    hashes with fields ``a:<second>`` (attempts), ``ok:<second>`` (created calls) and ``e:<kind>``
    (failed attempts of that minute). Seconds are the workers' clocks (NTP is close enough for a chart)::

        stats = SendStats(redis, settings)
        await stats.record(ok=True)
        await stats.record(ok=False, kind=error_kind(exc))
        await stats.flush()
        window = await stats.read(seconds=300)
    """

    def __init__(self, redis: Redis, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._prefix = settings.key_prefix + "stats:"
        self._record = scripts.register(redis, "dispatch/stats_record.lua")
        self._read = scripts.register(redis, "dispatch/stats_read.lua")
        self._clock = clock
        self._seconds: dict[int, list[int]] = {}
        self._errors: dict[tuple[int, str], int] = {}

    async def record(self, *, ok: bool, kind: str | None = None) -> None:
        """Count one provider attempt in memory (never raises, never waits)."""
        sec = int(self._clock())
        counts = self._seconds.setdefault(sec, [0, 0])
        counts[0] += 1
        if ok:
            counts[1] += 1
        elif kind:
            key = (sec // 60, error_label(kind))
            self._errors[key] = self._errors.get(key, 0) + 1

    async def flush(self) -> None:
        """Write what was counted since the last flush. Never raises: stats must not fail calls; counts
        that could not be written are dropped rather than piling up during a Redis outage."""
        if not self._seconds and not self._errors:
            return
        seconds, errors = self._seconds, self._errors
        self._seconds, self._errors = {}, {}
        args: list[Any] = [self._prefix, _STATS_TTL_S, len(seconds)]
        for sec, (attempts, created) in seconds.items():
            args += [sec, attempts, created]
        for (minute, kind), n in errors.items():
            args += [minute, kind, n]
        try:
            await self._record(args=args)
        except (RedisError, OSError) as exc:
            log.debug("send stats not recorded: %s", type(exc).__name__)

    async def run(self, interval_s: float = 1.0) -> None:
        """Flush every ``interval_s`` until cancelled, then once more."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                await self.flush()
        finally:
            await asyncio.shield(self.flush())

    async def read(self, seconds: int = 300, error_window_s: int = 900) -> StatsWindow:
        """The last ``seconds`` complete seconds and the errors of the last ``error_window_s``."""
        minutes_back = (max(seconds, error_window_s) + 59) // 60 + 1
        reply: list[Any] = await self._read(args=[self._prefix, minutes_back])
        now_sec, now_usec = int(reply[0]), int(reply[1])
        attempts: dict[int, int] = {}
        created: dict[int, int] = {}
        errors: dict[str, int] = {}
        error_from_minute = (now_sec - error_window_s) // 60
        it = iter(reply[2:])
        for minute_raw, flat in zip(it, it, strict=True):
            minute = int(minute_raw)
            pairs = iter(flat)
            for name_raw, value_raw in zip(pairs, pairs, strict=True):
                name, value = text(name_raw), int(value_raw)
                kind, _, rest = name.partition(":")
                if kind == "a":
                    attempts[minute * 60 + int(rest)] = value
                elif kind == "ok":
                    created[minute * 60 + int(rest)] = value
                elif kind == "e" and minute >= error_from_minute:
                    errors[rest] = errors.get(rest, 0) + value
        last = now_sec - 1  # the current second is still being counted
        series = [(t, attempts.get(t, 0), created.get(t, 0)) for t in range(last - seconds + 1, last + 1)]
        return StatsWindow(now_sec + now_usec / 1e6, series, errors)
