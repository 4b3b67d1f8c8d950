"""The webhook delivery state in Redis: from the event stream to per-job queues, leases, retries, dead letters.

Why this shape (an operations view):

* **Intake.** One consumer group, ``webhooks``, on the event stream (``<prefix>events``, see
  :mod:`worker.ledger.events`). One delivery process at a time (a Redis lock, ``webhooks:intake``) reads it,
  as the group's one consumer ``intake``, and moves each entry in one script (``intake.lua``) that
  acknowledges it and, when its job has a statusCallbackUrl (the job's own, else its campaign's), appends it
  to that job's queue. An entry is therefore queued exactly once, even when a process dies mid-batch (its
  entries stay pending in the group and the next holder reads them first), and a job's events enter its
  queue in stream order (the script refuses a batch while an older entry is pending, and the lock token
  fences a holder that lost the lock). Entries without a URL are only acknowledged: cheap.
* **Per-job queues, per-destination leases.** A job's events wait in its own list (``webhooks:q:<job>``);
  only its first event is ever scheduled, on its destination's due set, so a later event waits until the
  earlier one is delivered or dead-lettered (order per job). A claim (``claim.lua``) takes due jobs
  destination by destination, each under ``DIALER_WEBHOOK_MAX_PER_DESTINATION`` leases held across every
  process (``webhooks:busy:<dest>``), so a slow or dead receiver holds its own few slots and never the
  others'. Leases expire: a process that dies mid-POST loses nothing (the next claim takes the job back).
* **Retries** are a due time in the future on the same sorted set, with the attempt count beside it
  (``webhooks:tries``): they survive restarts, and waiting costs nothing.
* **Dead letters** (``webhooks:dead``, ``webhooks:dead:ids``) keep the whole entry, so a replay works even
  after the job's record or the stream entry expired.

All times are the Redis server's clock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from worker.ledger.events import Event
from worker.settings import Settings
from worker.status_callback import destination
from worker.store import scripts
from worker.store.decode import text
from worker.store.keys import Keys
from worker.store.pipelining import AutoPipeline

__all__ = ["GROUP", "INTAKE_CONSUMER", "Claim", "WebhookQueue"]

GROUP = "webhooks"
"""The consumer group of the event stream that ``dialer webhooks`` reads."""
INTAKE_CONSUMER = "intake"
"""The group's one consumer name: whichever process holds the intake lock reads as it, so the entries a
dead holder read and did not move are the next holder's pending entries."""
_SCAN_DESTINATIONS = 64
"""Destinations one claim looks at (the earliest due first)."""
_LEASE_MARGIN_S = 30.0
"""A lease outlives the POST's timeout by this much: only a frozen process loses its lease mid-POST."""


@dataclass(frozen=True, slots=True)
class Claim:
    """One delivery a process leased: a job's first undelivered event."""

    job_id: str
    event_id: str
    destination: str
    url: str
    body: bytes
    attempts: int
    """Failed attempts of this event before this one."""
    first_ms: int | None
    """When its first attempt was made (None: this is the first)."""
    claimed_ms: int
    """The Redis clock at the claim."""
    entry: str

    @property
    def event_ms(self) -> int:
        """When the event happened: its stream id's milliseconds (the Redis clock at the transition)."""
        return int(self.event_id.split("-", 1)[0] or 0)


def _claim(job: str, entry: str, tries: str, now_ms: int) -> Claim:
    dest, event_id, url, body = entry.split("\x1f", 3)
    attempts, _, first = tries.partition(":")
    return Claim(job_id=job, event_id=event_id, destination=dest, url=url, body=body.encode(),
                 attempts=int(attempts or 0), first_ms=int(first) if first else None, claimed_ms=now_ms,
                 entry=entry)


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class WebhookQueue:
    """The Redis side of webhook delivery. Cheap; share one per process. ``redis`` may decode or not."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._keys = Keys(settings.key_prefix)
        self._prefix = settings.key_prefix
        self._limit = settings.webhook_max_per_destination
        self._lease_ms = int((settings.webhook_timeout_s + _LEASE_MARGIN_S) * 1000)
        self._dead_max = settings.webhook_dead_max_len
        self._pipe = AutoPipeline.of(redis)
        self._intake = scripts.register(redis, "webhooks/intake.lua")
        self._claim = scripts.register(redis, "webhooks/claim.lua")
        self._finish = scripts.register(redis, "webhooks/finish.lua")
        self._replay = scripts.register(redis, "webhooks/replay.lua")
        self._lock = scripts.register(redis, "webhooks/lock.lua")

    # --- intake ------------------------------------------------------------------------------------

    async def ensure_group(self) -> bool:
        """Create the consumer group, reading from the oldest entry kept (so events of jobs enqueued before
        the first ``dialer webhooks`` ran are delivered too); False when it exists."""
        try:
            await self._redis.xgroup_create(self._keys.events, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            raise
        return True

    async def hold_intake(self, token: str, ttl_ms: int) -> bool:
        """Take the intake lock, or keep it for ``ttl_ms`` more; False when another process holds it."""
        return int(await self._lock(keys=[self._keys.webhook_intake], args=[token, ttl_ms])) == 1

    async def release_intake(self, token: str) -> None:
        if text(await self._redis.get(self._keys.webhook_intake) or b"") == token:
            await self._redis.delete(self._keys.webhook_intake)

    async def read(self, count: int, block_ms: int) -> list[tuple[str, dict[Any, Any] | None]]:
        """The intake's next entries: those it was given before and has not moved (after a restart, or
        read by a holder that lost the lock) first, else new ones (waiting up to ``block_ms``). An entry
        trimmed from the stream while pending comes back with None fields."""
        for start, block in (("0", None), (">", block_ms)):
            try:
                res = await self._redis.xreadgroup(GROUP, INTAKE_CONSUMER, {self._keys.events: start}, count=count,
                                                   block=block)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self.ensure_group()  # the stream was deleted (FLUSHALL, a restore): start again
                return []
            entries = [(text(i), f) for _, batch in res or [] for i, f in batch]
            if entries:
                return entries
        return []

    async def intake(self, token: str, entries: Sequence[tuple[str, dict[Any, Any] | None]]) -> int:
        """Move ``entries`` (as :meth:`read` gave them) to their jobs' queues; how many were queued, -1 when
        the lock is lost, -2 when older entries must be read first. Jobs without a URL are acknowledged only."""
        events = [(i, Event.from_entry(i, f) if f else None) for i, f in entries]
        jobs = sorted({e.job_id for _, e in events if e is not None and e.job_id})
        campaigns = sorted({e.campaign for _, e in events if e is not None and e.campaign})
        async with self._redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.hget(self._keys.job(job), "scb")
            for name in campaigns:
                pipe.hget(self._keys.campaign(name), "scb")
            found = await pipe.execute() if jobs or campaigns else []
        urls = {job: text(u) for job, u in zip(jobs, found[: len(jobs)], strict=True) if u}
        by_campaign = {c: text(u) for c, u in zip(campaigns, found[len(jobs):], strict=True) if u}
        records: list[bytes] = []
        for entry_id, event in events:
            url = None
            if event is not None:
                url = urls.get(event.job_id) or (by_campaign.get(event.campaign) if event.campaign else None)
            if event is None or url is None:
                records.append(f"{entry_id}\x1f\x1f\x1f\x1f".encode())
                continue
            body = json.dumps(event.as_dict(), separators=(",", ":"), ensure_ascii=False)
            records.append("\x1f".join((entry_id, event.job_id, destination(url), url, body)).encode())
        return int(await self._intake(args=[self._prefix, token, GROUP, self._limit, b"\x1e".join(records)]))

    # --- delivery ----------------------------------------------------------------------------------

    async def claim(self, n: int) -> tuple[list[Claim], int, int | None]:
        """Lease up to ``n`` due deliveries; (claims, the Redis clock in ms, when the next one is due or None)."""
        reply = await self._claim(args=[self._prefix, self._limit, n, self._lease_ms, _SCAN_DESTINATIONS])
        now = int(text(reply[0]))
        nxt = text(reply[1])
        flat = [text(x) for x in reply[2:]]
        claims = [_claim(flat[i], flat[i + 1], flat[i + 2], now) for i in range(0, len(flat), 3)]
        return claims, now, int(float(nxt)) if nxt else None

    async def finish(self, claim: Claim, verdict: str, *, delay_ms: int = 0, tries: str = "",
                     dead: dict[str, Any] | None = None) -> bool:
        """Record a claim's end: ``delivered``, ``retry`` (due again in ``delay_ms``, with ``tries``),
        ``release`` (given back unattempted, due in ``delay_ms``) or ``dead`` (``dead``: the letter's
        details). False when the claim was no longer this caller's (its lease expired and was taken)."""
        letter = "" if dead is None else json.dumps({"job": claim.job_id, "entry": claim.entry, **dead},
                                                    separators=(",", ":"), ensure_ascii=False)
        reply = await self._pipe.eval(
            self._finish, keys=[],
            args=[self._prefix, self._limit, claim.job_id, claim.event_id, verdict, max(int(delay_ms), 0), tries,
                  letter, self._dead_max],
        )
        return int(reply) == 1

    # --- dead letters ------------------------------------------------------------------------------

    async def dead(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` dead letters, newest first: ``id`` (the event id), ``job_id``, ``type``,
        ``url``, ``reason``, ``attempts``, ``first_attempt_at``, ``dead_at``, ``event`` (the body sent)."""
        ids = await self._redis.zrevrange(self._keys.webhook_dead_ids, 0, limit - 1, withscores=True)
        if not ids:
            return []
        raws = await self._redis.hmget(self._keys.webhook_dead, [i for i, _ in ids])  # type: ignore[misc]
        out = []
        for (event_id, score), raw in zip(ids, raws, strict=True):
            if raw is None:
                continue
            rec = json.loads(text(raw))
            _dest, _id, url, body = rec["entry"].split("\x1f", 3)
            event = json.loads(body)
            out.append({"id": text(event_id), "job_id": rec["job"], "type": event.get("type"), "url": url,
                        "reason": rec.get("reason"), "attempts": rec.get("attempts"),
                        "first_attempt_at": _iso(rec.get("first_ms")), "dead_at": _iso(int(score)), "event": event})
        return out

    async def replay(self, ids: Sequence[str]) -> int:
        """Put these dead letters back on their jobs' queues (attempts start again); how many were found."""
        if not ids:
            return 0
        return int(await self._replay(args=[self._prefix, self._limit, *ids]))

    async def replay_all(self, chunk: int = 500) -> int:
        """Replay every dead letter, oldest first; how many."""
        done = 0
        while ids := [text(i) for i in await self._redis.zrange(self._keys.webhook_dead_ids, 0, chunk - 1)]:
            done += await self.replay(ids)
        return done

    # --- status ------------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """Backlog and health: ``intake_lag`` (stream entries not read by the group yet; null when Redis
        cannot tell), ``intake_pending`` (read, not moved), ``destinations``, ``waiting`` (jobs with an event
        due or in backoff), ``in_flight`` (leased), ``dead``, ``processes`` (live ``dialer webhooks``)."""
        keys = self._keys
        lag: int | None = None
        pending = 0
        try:
            for group in await self._redis.xinfo_groups(keys.events):
                g = {text(k): v for k, v in group.items()}
                if text(g.get("name", b"")) == GROUP:
                    pending = int(g.get("pending") or 0)
                    lag = None if g.get("lag") is None else int(g["lag"])
        except ResponseError:
            pass  # no stream yet
        dests = [text(d) for d in await self._redis.zrange(keys.webhook_destinations, 0, 9_999)]
        async with self._redis.pipeline(transaction=False) as pipe:
            for d in dests:
                pipe.zcard(keys.webhook_due(d))
                pipe.zcard(keys.webhook_busy(d))
            pipe.zcard(keys.webhook_dead_ids)
            counts = [int(c) for c in await pipe.execute()]
        alive = 0
        async for _ in self._redis.scan_iter(match=keys.webhook_alive("*"), count=1000):
            alive += 1
        return {"intake_lag": lag, "intake_pending": pending, "destinations": len(dests),
                "waiting": sum(counts[0:-1:2]), "in_flight": sum(counts[1:-1:2]), "dead": counts[-1],
                "processes": alive}
