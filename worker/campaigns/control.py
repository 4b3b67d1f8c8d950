"""Campaign configuration and state in Redis: create, pause, resume, cancel, status, list.

::

    campaigns = Campaigns(redis, settings)
    await campaigns.create("spring", CampaignSpec(rate=5, window="09:00-20:00", days="mon-fri",
                                                  timezone="Europe/Paris"))
    await campaigns.pause("spring")
    await campaigns.resume("spring")          # parked jobs back on their queues, in order
    await campaigns.cancel("spring")          # every job not yet sent -> cancelled
    await campaigns.delete("spring")          # only once nothing is queued, sending or parked
    (await campaigns.status("spring"))["states"]["sent"]

A campaign is a hash (``Keys.campaign``: status, settings, pacing clocks), exact per-state counters kept
by the ledger scripts (``Keys.campaign_counts``), its job ids in enqueue order (``Keys.campaign_jobs``),
and the jobs a pause holds (``Keys.campaign_parked``).

How pause works: the status flips to ``paused``. Workers check it when they claim a job and again right
before sending; a job of a paused campaign is *parked* — moved to the campaign's parked set with its
place in line, its record made persistent — and its arq run ends normally. Parked jobs cost nothing
while they wait (no polling, no retries, no TTL), so a pause may hold any number of jobs for any time.
``resume`` flips the status back and moves the parked jobs onto their queues, in order, with fresh
send slots from the campaign's pacing clock.

How delete works: a campaign with no job queued, sending or parked (never given a job, every job final,
or cancelled) can be deleted: its hash, counters, job list, pacing state and index entry go, in one
script that checks the counters first (:class:`CampaignBusy` otherwise), so the name can be launched
again. Its finished jobs stay in the ledger until their TTL; since a campaign row's job id is
``<campaign>:<number>``, a re-launch under the same name reports those numbers as already enqueued.

How cancel works: the status flips to ``cancelled`` (workers refuse to send from then on), then every
job still queued is marked ``cancelled`` and removed from its queue, in slices of 1,000 per script.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from worker.errors import DialerError
from worker.ledger.states import OUTCOMES, State
from worker.rules import valid_campaign_name
from worker.settings import Settings
from worker.store import scripts
from worker.store.decode import as_dict, text
from worker.store.keys import Keys, in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix

__all__ = [
    "STATUS_STATES", "CampaignBusy", "CampaignError", "CampaignSpec", "Campaigns", "ResumeResult", "UnknownCampaign",
    "valid_name",
]

STATUS_STATES: tuple[str, ...] = tuple(str(s) for s in State)
"""Ledger states counted per campaign, in the order ``status`` reports them."""
_SCRIPTS = Path(__file__).parent
_CHUNK = 1000
_RATE_WINDOW_S = 60
_RESUME_IDLE_S = 0.05
_DELETE_BUCKETS = 2000


class CampaignError(DialerError):
    """A campaign operation was refused (unknown campaign, cancelled, different settings ...)."""


class UnknownCampaign(CampaignError):
    """No campaign has this name (never created, or expired)."""


class CampaignBusy(CampaignError):
    """The campaign still has work (jobs queued, sending or parked), so it cannot be deleted."""


def valid_name(name: str) -> bool:
    """Campaign names: 1-64 characters of ``A-Z a-z 0-9 . _ -`` (they are part of job ids and keys)."""
    return valid_campaign_name(name)


@dataclass(frozen=True)
class CampaignSpec:
    """The settings a campaign is created with; a later launch into it must give the same ones.

    ``priority``: default for rows without one. ``defaults``: request fields for rows that leave them
    out (``voiceId``/``templateId``/``voiceFileName``/``templateParams``/``callerPresent``/``playTimes``).
    ``rate``: calls/s for this campaign (under the fleet-wide limit). ``window``/``days``/``timezone``:
    calling window (see :mod:`worker.windows`). ``deadline_ms``: jobs not sent by then expire.
    ``callback_url``: the callBackUrl filled into rows without one (``DIALER_PUBLIC_URL`` +
    ``/v1/callbacks/release``). ``redial``: ``{"max": N, "after_s": S}``, see :mod:`worker.campaigns.outcomes`.
    ``status_callback_url``: where ``dialer webhooks`` POSTs the events of the campaign's jobs that have no
    statusCallbackUrl of their own; kept in the campaign hash (``scb``), so a row costs no copy of it.
    """

    priority: int | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    rate: float | None = None
    window: str | None = None
    days: str | None = None
    timezone: str | None = None
    deadline_ms: int | None = None
    callback_url: str | None = None
    redial: dict[str, Any] | None = None
    status_callback_url: str | None = None

    def canonical(self) -> str:
        data = asdict(self)
        if data["status_callback_url"] is None:
            # Left out when unset, so a campaign created before the field existed is still "the same".
            del data["status_callback_url"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_canonical(cls, text: str) -> CampaignSpec:
        data = json.loads(text) if text else {}
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        return cls(**known)

    def pace_ms(self, global_rate: float) -> float:
        """Spacing of this campaign's send slots per priority: 1/rate of its own limit or the fleet's,
        whichever is lower; 0 when neither is set (no pacing: launch order only)."""
        rates = [r for r in (self.rate, global_rate) if r and r > 0]
        return 1000.0 / min(rates) if rates else 0.0

    def hash_fields(self, global_rate: float) -> list[str]:
        """The flat fields the worker reads from the campaign hash (absent when unset)."""
        out: list[str] = ["pace", f"{self.pace_ms(global_rate):.3f}"]
        for name, value in (("rate", self.rate), ("window", self.window), ("days", self.days),
                            ("tz", self.timezone), ("dl", self.deadline_ms), ("priority", self.priority),
                            ("callback", self.callback_url), ("scb", self.status_callback_url)):
            if value is not None:
                out += [name, str(value)]
        return out


@dataclass(frozen=True)
class ResumeResult:
    """``moved`` jobs went back on their queues; ``dropped`` had meanwhile left ``queued``;
    ``left`` are still parked (their runs were still finishing when ``resume`` gave up waiting)."""

    previous: str
    moved: int
    dropped: int
    left: int


def _iso(ms: float | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _script(redis: Redis, name: str, settings: Settings) -> AsyncScript:
    return scripts.register(redis, f"campaigns/{name}", settings)


class Campaigns:
    """Campaign control; cheap to create, share one per process. ``redis`` may decode responses or not."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = Keys(settings.key_prefix)
        self._ttl_ms = settings.ledger_ttl_s * 1000
        self._create = _script(redis, "campaign_create.lua", settings)
        self._state = _script(redis, "campaign_state.lua", settings)
        self._resume = _script(redis, "campaign_resume.lua", settings)
        self._cancel = _script(redis, "campaign_cancel.lua", settings)
        self._delete = _script(redis, "campaign_delete.lua", settings)
        self._cancel_rows = _script(redis, "campaign_cancel_rows.lua", settings)

    async def create(self, name: str, spec: CampaignSpec) -> Literal["created", "exists"]:
        """Create the campaign, or confirm it exists with the same spec. Raises CampaignError if it
        exists with other settings or was cancelled."""
        if not valid_name(name):
            raise CampaignError(f"campaign name {name!r}: must be 1-64 characters of A-Z a-z 0-9 . _ -")
        res = await self._create(
            keys=[self._keys.campaign(name), self._keys.campaigns],
            args=[name, spec.canonical(), self._ttl_ms, *spec.hash_fields(self._settings.rate_limit)],
        )
        verdict, other = text(res[0]), text(res[1])
        if verdict == "cancelled":
            raise CampaignError(f"campaign {name!r} was cancelled; launch under a new name")
        if verdict == "different":
            stored = CampaignSpec.from_canonical(other)
            diff = [k for k, v in asdict(spec).items() if asdict(stored).get(k) != v]
            raise CampaignError(
                f"campaign {name!r} exists with other settings ({', '.join(diff)}); "
                "launch again with the same options, or use a new name"
            )
        return "created" if verdict == "created" else "exists"

    async def spec(self, name: str) -> CampaignSpec | None:
        raw = await self._redis.hget(self._keys.campaign(name), "spec")  # type: ignore[misc]
        return None if raw is None else CampaignSpec.from_canonical(text(raw))

    async def pause(self, name: str) -> str:
        """active -> paused; returns the previous status. Jobs are parked as workers meet them."""
        return await self._transition(name, "pause")

    async def resume(self, name: str, *, wait_s: float | None = None) -> ResumeResult:
        """paused -> active, then every parked job back on its queue in order (also finishes a resume
        that was interrupted: the campaign may already be active).

        A job parked a moment ago may still be ending its arq run; resume waits for it (milliseconds,
        usually) to keep the order, up to ``wait_s`` (default: the job timeout + 10 s, the longest a dead
        worker's run can look busy), then moves the rest without it."""
        previous = await self._transition(name, "resume", allowed=("paused", "active"))
        keys = [self._keys.campaign(name), self._keys.campaign_parked(name)]
        args: list[str | int | bytes] = [
            self._keys.prefix, _CHUNK, self._ttl_ms,
            job_key_prefix, in_progress_key_prefix, retry_key_prefix, result_key_prefix,
        ]
        limit = time.monotonic() + (wait_s if wait_s is not None else self._settings.job_timeout_s + 10)
        moved = dropped = 0
        left = 0
        in_order = "1"
        while True:
            m, busy, d, left = (int(x) for x in await self._resume(keys=keys, args=[*args, in_order]))
            moved += m
            dropped += d
            if left <= 0:
                left = max(left, 0)
                break
            if busy and m + d < _CHUNK:
                if in_order == "0":
                    break  # only busy ones are left
                if time.monotonic() > limit:
                    in_order = "0"
                else:
                    await asyncio.sleep(_RESUME_IDLE_S)
        return ResumeResult(previous, moved, dropped, left)

    async def cancel(self, name: str) -> int:
        """Cancel the campaign: every job not yet sent becomes ``cancelled``. Returns how many of its jobs
        are cancelled now (workers that meet a job first cancel it themselves, so the sweep alone may
        count fewer)."""
        await self._transition(name, "cancel", allowed=("active", "paused", "cancelled"))
        keys = [self._keys.campaign_jobs(name), self._keys.campaign_parked(name)]
        start = 0
        while True:
            _cancelled, read = (int(x) for x in await self._cancel(
                keys=keys,
                args=[self._keys.prefix, name, start, _CHUNK, self._ttl_ms, job_key_prefix, in_progress_key_prefix],
            ))
            start += read
            if read < _CHUNK:
                break
        await self._cancel_pending(name)
        count = await self._redis.hget(self._keys.campaign_counts(name), str(State.CANCELLED))  # type: ignore[misc]
        return int(count or 0)

    async def _cancel_pending(self, name: str) -> int:
        """Every row still in a chunk (on the rows list, or taken by a hopper, alive or dead) -> ``cancelled``,
        one chunk per script; a hopper still at work on a taken one marks its rows the same way."""
        from worker.campaigns import rows  # rows imports this module

        k = self._keys
        buckets = await self._redis.hget(k.campaign(name), "buckets")  # type: ignore[misc]
        if buckets is None:
            return 0
        done = 0
        while True:
            head = await self._redis.lindex(k.campaign_rows(name), 0)  # type: ignore[misc]
            if head is None:
                break
            head = head if isinstance(head, bytes) else head.encode("latin-1")
            members = ",".join(r.member for r in rows.decode_chunk(head))
            n = await self._cancel_rows(keys=[k.campaign_rows(name), k.campaign_counts(name)],
                                        args=[k.prefix, name, int(buckets), "", head, members])
            done += max(int(n), 0)
        taken = await self._redis.hgetall(k.campaign_rows_taken(name))  # type: ignore[misc]
        for token, value in taken.items():
            raw = value if isinstance(value, bytes) else value.encode("latin-1")
            blob = raw.split(b":", 1)[1]
            members = ",".join(r.member for r in rows.decode_chunk(blob))
            n = await self._cancel_rows(keys=[k.campaign_rows_taken(name), k.campaign_counts(name)],
                                        args=[k.prefix, name, int(buckets), token, raw, members])
            done += max(int(n), 0)
        return done

    async def delete(self, name: str) -> None:
        """Delete a campaign that has no work left (no job queued, sending or parked), so its name is
        free again. Raises UnknownCampaign, or CampaignBusy naming what is left (cancel it first, or let
        it finish). Finished jobs stay in the ledger until their TTL."""
        if not valid_name(name):
            raise UnknownCampaign(f"no campaign {name!r}")
        k = self._keys
        first = 0
        while True:
            verdict, *found = await self._delete(
                keys=[k.campaign(name), k.campaign_counts(name), k.campaign_jobs(name), k.campaign_parked(name),
                      k.campaign_sent(name), k.campaign_window_slots(name), k.rate(f"campaign:{name}"), k.campaigns,
                      k.campaign_rows(name), k.campaign_rows_taken(name)],
                args=[name, k.prefix, first, _DELETE_BUCKETS],
            )
            verdict = text(verdict)
            if verdict != "more":
                break
            first = int(found[0])
        if verdict == "missing":
            raise UnknownCampaign(f"no campaign {name!r}")
        if verdict == "busy":
            queued, sending, parked, pending = (int(x) for x in found)
            raise CampaignBusy(
                f"campaign {name!r} still has work ({queued} queued, {sending} sending, {parked} parked, "
                f"{pending} pending): only a campaign with no queued, sending, parked or pending job can be "
                "deleted; cancel it first, or wait until its jobs are final"
            )

    async def status(self, name: str) -> dict[str, Any]:
        """The campaign's status as a stable JSON-able dict (see README, "Campaign status JSON")."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.campaign(name))
            pipe.hgetall(self._keys.campaign_counts(name))
            pipe.zcard(self._keys.campaign_parked(name))
            pipe.hgetall(self._keys.campaign_sent(name))
            pipe.time()
            meta_raw, counts_raw, parked, ring_raw, (sec, usec) = await pipe.execute()
        if not meta_raw:
            raise UnknownCampaign(f"no campaign {name!r}")
        meta, counts = as_dict(meta_raw), as_dict(counts_raw)
        now_ms = int(sec) * 1000 + int(usec) // 1000
        spec = CampaignSpec.from_canonical(meta.get("spec", ""))
        states = {s: max(int(counts.get(s, 0)), 0) for s in STATUS_STATES}
        outcomes = {o: max(int(counts.get(o, 0)), 0) for o in OUTCOMES}
        pending = max(int(counts.get("pending", 0)), 0)
        remaining = pending + states["queued"] + states["sending"]
        rate = _send_rate(as_dict(ring_raw), now_ms // 1000)
        status = meta.get("status", "active")
        eta = remaining / rate if rate > 0 and remaining and status == "active" else None
        return {
            "name": name,
            "status": status,
            "created_at": _iso(int(meta["created"])) if "created" in meta else None,
            "settings": {
                "priority": spec.priority,
                "rate": spec.rate,
                "window": spec.window,
                "days": spec.days,
                "timezone": spec.timezone,
                "deadline": _iso(spec.deadline_ms),
                "defaults": spec.defaults,
                "callback_url": spec.callback_url,
                "redial": spec.redial,
                "status_callback_url": spec.status_callback_url,
            },
            "total": max(int(counts.get("total", 0)), 0) + pending,
            "pending": pending,
            "states": states,
            "parked": int(parked),
            "outcomes": outcomes,
            "redials": max(int(counts.get("redials", 0)), 0),
            "unknown": {"resolved_by_event": max(int(counts.get("unknown_resolved", 0)), 0),
                        "no_evidence": max(int(counts.get("no_evidence", 0)), 0)},
            "remaining": remaining,
            "send_rate_per_s": round(rate, 2),
            "eta_s": None if eta is None else math.ceil(eta),
            "as_of": _iso(now_ms),
        }

    async def names(self) -> list[str]:
        """Campaigns by creation time; names whose campaign has expired are dropped from the index."""
        raw = await self._redis.zrange(self._keys.campaigns, 0, -1)
        names = [text(n) for n in raw]
        if not names:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for n in names:
                pipe.exists(self._keys.campaign(n))
            alive = await pipe.execute()
        gone = [n for n, a in zip(names, alive, strict=True) if not a]
        if gone:
            await self._redis.zrem(self._keys.campaigns, *gone)
        return [n for n, a in zip(names, alive, strict=True) if a]

    async def statuses(self, limit: int | None = None) -> list[dict[str, Any]]:
        """:meth:`status` of every campaign (or of the ``limit`` newest), oldest first."""
        out = []
        names = await self.names()
        if limit is not None:
            names = names[-limit:] if limit > 0 else []
        for name in names:
            try:
                out.append(await self.status(name))
            except CampaignError:  # expired between the two reads
                continue
        return out

    async def job_ids(self, name: str, start: int = 0, stop: int = -1) -> list[str]:
        """A slice of the campaign's job ids, in enqueue order."""
        return [text(j) for j in await self._redis.lrange(self._keys.campaign_jobs(name), start, stop)]  # type: ignore[misc]

    async def _transition(self, name: str, action: str, allowed: tuple[str, ...] | None = None) -> str:
        previous = text(await self._state(keys=[self._keys.campaign(name)], args=[action]))
        if previous == "missing":
            raise UnknownCampaign(f"no campaign {name!r}")
        ok = allowed or {"pause": ("active", "paused"), "resume": ("paused",), "cancel": ("active", "paused")}[action]
        if previous not in ok:
            raise CampaignError(f"campaign {name!r} is {previous}: cannot {action} it")
        return previous


def _send_rate(ring: dict[str, str], now_s: int) -> float:
    """Calls/s over the last minute, from the per-second ring; over less when sending began later."""
    total = 0
    earliest: int | None = None
    for value in ring.values():
        sec_text, _, count = value.partition(":")
        sec = int(sec_text)
        if now_s - _RATE_WINDOW_S < sec <= now_s:
            total += int(count)
            earliest = sec if earliest is None else min(earliest, sec)
    if not total or earliest is None:
        return 0.0
    return total / max(now_s - earliest + 1, 1)
