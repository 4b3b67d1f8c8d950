"""The event stream: what happened to each job, in order, for the systems that enqueued them.

Every ledger transition a producer cares about appends one entry to the Redis Stream ``<prefix>events``
in the same Lua script, hence the same atomic step, as the transition (``ledger/events.lua``): no event
without its state, no state without its event. Entry ids are Redis stream ids (``1733400000000-0``):
unique and increasing, so a consumer resumes after the last id it handled. The stream keeps about
``DIALER_EVENTS_MAX_LEN`` entries and none older than ``DIALER_EVENTS_MAX_AGE_S``.

Event types (``type``) and their ``data``:

===============  ============  ==========================================================================
type             state         data
===============  ============  ==========================================================================
queued           queued        ``priority``, ``not_before`` (ms) when deferred; ``requeued`` (the state
                               it left) for an operator's requeue; ``grace_redial`` for an after-grace one
retrying         queued        ``error``: an attempt failed and will be retried (or a run died mid-request
                               with DIALER_REDIAL_AMBIGUOUS=always)
sent             sent          ``serial`` (callSerialNo); ``evidence`` "release" when a release event,
                               not the worker, recorded it
failed, dead,    (the type)    ``error``; ``serial`` for an unknown answer that carried one
unknown,
cancelled,
expired,
suppressed
outcome          (the job's)   ``outcome`` (answered, unanswered, failed_to_connect), ``release_reason``,
                               ``talk_duration_s``: the result callback
redial           (first job's) ``redial`` (the new job's id), ``number`` (1, 2, ...), ``redial_of``
no_evidence      unknown       ``grace_s``: no release event within DIALER_UNKNOWN_GRACE_S
===============  ============  ==========================================================================

From Python::

    async for event in events(redis, settings, campaign="spring", follow=True):
        print(event.as_dict())

From any language, with a consumer group (each entry to one consumer of the group, acknowledged)::

    XGROUP CREATE dialer:events billing 0 MKSTREAM
    XREADGROUP GROUP billing worker-1 COUNT 100 BLOCK 5000 STREAMS dialer:events >
    XACK dialer:events billing <id> ...

Each entry has the fields ``type``, ``job``, ``campaign`` ("" for none), ``state``, ``attempt``, ``ts``
(ms, Redis clock) and ``data`` (JSON, "" for none).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from worker.settings import Settings
from worker.store.client import BLOCKING_WAIT_MS
from worker.store.decode import text
from worker.store.keys import Keys

__all__ = ["EVENT_TYPES", "Event", "EventStream", "events"]

log = logging.getLogger(__name__)

EVENT_TYPES = ("queued", "retrying", "sent", "failed", "dead", "unknown", "cancelled", "expired", "suppressed",
               "outcome", "redial", "no_evidence")
_TRIM_EVERY_S = 60.0


@dataclass(frozen=True)
class Event:
    """One entry of the stream, decoded."""

    id: str
    type: str
    job_id: str
    campaign: str | None
    state: str
    attempt: int
    ts_ms: int
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_entry(cls, entry_id: Any, fields: dict[Any, Any]) -> Event:
        f = {text(k): text(v) for k, v in fields.items()}
        raw = f.get("data") or ""
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"raw": raw}
        return cls(id=text(entry_id), type=f.get("type", ""), job_id=f.get("job", ""),
                   campaign=f.get("campaign") or None, state=f.get("state", ""),
                   attempt=int(f.get("attempt") or 0), ts_ms=int(f.get("ts") or 0),
                   data=data if isinstance(data, dict) else {"raw": data})

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape (``dialer events``, webhooks): ``id``, ``type``, ``job_id``, ``campaign``, ``state``,
        ``attempt``, ``time`` (ISO 8601 UTC with ms), ``data``."""
        time = datetime.fromtimestamp(self.ts_ms / 1000, UTC).isoformat(timespec="milliseconds")
        return {"id": self.id, "type": self.type, "job_id": self.job_id, "campaign": self.campaign,
                "state": self.state, "attempt": self.attempt, "time": time.replace("+00:00", "Z"),
                "data": self.data}


class EventStream:
    """Reading, consumer groups and age trimming of the event stream. Cheap; share one per process."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self.key = Keys(settings.key_prefix).events
        self._max_age_ms = int(settings.events_max_age_s * 1000)

    async def read(self, after: str = "0", *, count: int = 500, block_ms: int | None = None) -> list[Event]:
        """Up to ``count`` entries after id ``after`` ("0": from the oldest kept; "$": only new ones, which
        makes sense with ``block_ms``), waiting up to ``block_ms`` for one when there are none."""
        res = await self._redis.xread({self.key: after}, count=count, block=block_ms)
        return [Event.from_entry(i, f) for _, entries in res or [] for i, f in entries]

    async def follow(self, after: str = "0", *, campaign: str | None = None,
                     types: Sequence[str] = (), block_ms: int = BLOCKING_WAIT_MS) -> AsyncIterator[Event]:
        """Every entry after ``after``, then each new one as it comes, for ever (cancel to stop)."""
        last = after
        if last == "$":
            # "$" means "after the newest entry now": pin it, or a reconnect would skip what came meanwhile.
            info = await self._redis.xrevrange(self.key, count=1)
            last = text(info[0][0]) if info else "0"
        while True:
            batch = await self.read(last, block_ms=block_ms)
            for event in batch:
                last = event.id
                if _wanted(event, campaign, types):
                    yield event

    async def create_group(self, group: str, start: str = "0") -> bool:
        """Create consumer group ``group`` reading from ``start`` (and the stream if needed); False when the
        group exists already."""
        try:
            await self._redis.xgroup_create(self.key, group, id=start, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    async def read_group(self, group: str, consumer: str, *, count: int = 100, block_ms: int | None = 5000,
                         pending: bool = False) -> list[Event]:
        """Entries for ``consumer`` of ``group``: new ones, or with ``pending`` the ones it was given before
        and has not acknowledged (read those first after a restart)."""
        res = await self._redis.xreadgroup(group, consumer, {self.key: "0" if pending else ">"}, count=count,
                                           block=None if pending else block_ms)
        return [Event.from_entry(i, f) for _, entries in res or [] for i, f in entries if f]

    async def ack(self, group: str, *ids: str) -> int:
        return int(await self._redis.xack(self.key, group, *ids)) if ids else 0

    async def trim(self) -> int:
        """Drop entries older than DIALER_EVENTS_MAX_AGE_S (by their id's time); returns how many."""
        server_s, micro = await self._redis.time()
        cutoff = int(server_s) * 1000 + int(micro) // 1000 - self._max_age_ms
        return int(await self._redis.xtrim(self.key, minid=f"{max(cutoff, 0)}-0", approximate=True))

    async def run_trim(self, every_s: float = _TRIM_EVERY_S) -> None:
        """:meth:`trim` every ``every_s`` until cancelled (run by every worker process; cheap)."""
        while True:
            with contextlib.suppress(RedisError, OSError):
                await self.trim()
            await asyncio.sleep(every_s)


def _wanted(event: Event, campaign: str | None, types: Sequence[str]) -> bool:
    return (campaign is None or event.campaign == campaign) and (not types or event.type in types)


async def events(redis: Redis, settings: Settings, *, campaign: str | None = None, since: str = "0",
                 follow: bool = False, types: Sequence[str] = ()) -> AsyncIterator[Event]:
    """The stream's events after ``since`` ("0": the oldest kept), optionally of one campaign or some
    types; with ``follow`` it then waits for new ones for ever, else it ends at the newest.

    ::

        async for event in events(redis, settings, campaign="spring"):
            print(event.type, event.job_id, event.data)
    """
    stream = EventStream(redis, settings)
    if follow:
        async for event in stream.follow(since, campaign=campaign, types=types):
            yield event
        return
    last = since
    while batch := await stream.read(last, count=1000):
        for event in batch:
            last = event.id
            if _wanted(event, campaign, types):
                yield event
