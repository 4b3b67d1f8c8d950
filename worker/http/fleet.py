"""What the fleet looks like right now, read from Redis: queue depths, live workers, in-flight leases,
dead letters and the shared token's age. Used by ``/metrics`` and the dashboard.

Nothing here returns or logs the token itself: only its timestamps are read.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

from redis.asyncio import Redis

from worker.ledger.transitions import Ledger
from worker.rules import PRIORITY_LEVELS
from worker.store.keys import Keys

_KIND_RE = re.compile(r"\b(retryable-exhausted|retryable|auth|permanent|ambiguous)\b")
_HTTP_RE = re.compile(r"\bhttp=(\d{3})\b")
_RET_RE = re.compile(r"\bretCode=(-?\d{1,6})\b")


@dataclass(frozen=True)
class Queue:
    priority: int
    depth: int
    ready: int
    worker: bool


@dataclass(frozen=True)
class TokenAge:
    present: bool
    age_s: float | None = None
    expires_in_s: float | None = None


@dataclass(frozen=True)
class Snapshot:
    now_s: float
    queues: list[Queue]
    in_flight: int
    dead_total: int
    token: TokenAge



async def snapshot(redis: Redis, keys: Keys) -> Snapshot:
    """Two round trips: the Redis clock, then every count in one pipeline."""
    sec, usec = await redis.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    async with redis.pipeline(transaction=False) as pipe:
        for p in PRIORITY_LEVELS:
            pipe.zcard(keys.queue(p))
            pipe.zcount(keys.queue(p), "-inf", now_ms)
            pipe.exists(keys.queue_health(p))
        pipe.zcount(keys.in_flight, f"({now_ms}", "+inf")
        pipe.zcard(keys.dead)
        pipe.get(keys.token)
        replies = await pipe.execute()
    queues = [
        Queue(p, int(replies[3 * i]), int(replies[3 * i + 1]), bool(replies[3 * i + 2]))
        for i, p in enumerate(PRIORITY_LEVELS)
    ]
    in_flight, dead_total, raw_token = replies[-3:]
    now_s = now_ms / 1000
    return Snapshot(now_s, queues, int(in_flight), int(dead_total), _token_age(raw_token, now_s))


def _token_age(raw: bytes | str | None, now_s: float) -> TokenAge:
    if raw is None:
        return TokenAge(False)
    try:
        data = json.loads(raw)
        obtained, expires = float(data["at"]), float(data["exp"])
    except (ValueError, TypeError, KeyError):
        return TokenAge(False)
    return TokenAge(True, round(now_s - obtained, 1), round(expires - now_s, 1))


def error_class(text: str | None) -> str:
    """A dead letter's last error as a short kind, like :func:`worker.metrics.error_kind` does for live
    errors: ``retryable/http-500``, ``permanent/retcode-12``, ``invalid-job`` (garbage, no record)."""
    if not text:
        return "unknown"
    kind = _KIND_RE.search(text)
    if kind is None:
        return "invalid-job"
    if (ret := _RET_RE.search(text)) is not None and ret.group(1) != "0":
        return f"{kind.group(1)}/retcode-{ret.group(1)}"
    if (http := _HTTP_RE.search(text)) is not None:
        return f"{kind.group(1)}/http-{http.group(1)}"
    return f"{kind.group(1)}/no-answer"


async def dead_by_kind(ledger: Ledger, limit: int = 200) -> dict[str, int]:
    """The most recent ``limit`` dead letters grouped by :func:`error_class`."""
    records = await ledger.list_dead(limit)
    return dict(Counter(error_class(r.last_error) for r in records).most_common())
