"""Compaction of a campaign's finished jobs: what a finished number costs once its call is over.

::

    compactor = Compactor(redis, settings)
    await compactor.sweep("spring")            # Swept(examined=2000, compacted=1990, trimmed=1990)
    decode(value)                              # the number's CompactCall, from its number-set value

A job of a campaign launched with compact rows (:mod:`worker.campaigns.rows`) keeps its full ledger record
(~1 KB) only while something can still happen to it. Once it is final and quiet, the sweep (every worker
process runs it, :meth:`Compactor.run`, next to the hopper) deletes the record and its callSerialNo index,
and writes what export, late callbacks and dedupe need into its number's value in the campaign's number
set, one short string (``campaign_compact.lua``)::

    <state><outcome>|attempts|sent ms (base 36)|releaseReason|talkDuration|k|redials|evidence|called|tail

``state``: ``s`` sent, ``f`` failed, ``c`` cancelled, ``e`` expired, ``p`` suppressed; ``outcome``: ``a``
answered, ``u`` unanswered, ``f`` failed_to_connect, ``.`` none yet; ``k``: which call of the number the
fields are (0 the first, k its k-th redial); ``redials``: how many redials the number had (when it is more
than ``k``, the latest call is the live job ``<job id>:r<redials>``); ``called``: ``""`` the number key, ``+``
with a plus, else the text; ``tail``: the callSerialNo of a sent call, else the last error (40 characters).
Other values: ``""`` pending (in a chunk), ``m`` a live job, ``x`` cancelled before it was a job, ``d`` its
row's own id was another job's (no job of the campaign).

**When.** ``sent`` with its outcome, ``failed``, ``cancelled``, ``expired`` and ``suppressed`` jobs are
compacted :data:`QUIET_S` after their last transition (the event stream's webhooks have read the record by
then, and ``dialer job`` shows it whole meanwhile); a ``sent`` job without an outcome waits for its result
callback up to ``DIALER_UNKNOWN_GRACE_S`` after it was sent. ``dead`` and ``unknown`` jobs stay whole (a
requeue needs the body; an unknown one waits for its evidence): they are few.

**After.** Counters are untouched (a compacted job stays counted in its state: status is exact). Export
reads the compact value. A late callback finds the call by the job id in its callBackUrl and records its
outcome in the compact value, counted once, the first outcome standing (:meth:`Compactor.record_outcome`);
it makes no redial (the row's own values are gone). ``dialer job`` of a compacted id finds no record.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.settings import Settings
from worker.store import scripts
from worker.store.decode import text
from worker.store.keys import Keys

__all__ = ["QUIET_S", "CompactCall", "Compactor", "Swept", "decode", "member_of"]

log = logging.getLogger(__name__)

QUIET_S = 60.0
"""A final job stays whole this long after its last transition before it is compacted."""
_SWEEP_IDS = 2000
_EVERY_S = 5.0
STATES = {"s": "sent", "f": "failed", "c": "cancelled", "e": "expired", "p": "suppressed"}
OUTCOMES = {"a": "answered", "u": "unanswered", "f": "failed_to_connect"}
OUTCOME_CODES = {v: k for k, v in OUTCOMES.items()}


@dataclass(frozen=True)
class CompactCall:
    """A number's compacted call (see the module docstring)."""

    state: str
    outcome: str | None
    attempts: int
    sent_ms: int | None
    release_reason: str | None
    talk_duration_s: int | None
    call: int
    """0: the number's first call; k: its k-th redial."""
    redials: int
    evidence: str | None
    called: str
    """As in :class:`~worker.campaigns.rows.CompactRow`: ``""`` the key, ``+`` the key with a plus, else the text."""
    serial: str | None
    last_error: str | None


def decode(value: str) -> CompactCall | None:
    """The compact call in a number-set value, or None for another value (pending, live, cancelled row)."""
    if len(value) < 2 or value[0] not in STATES or value[2:3] != "|":
        return None
    parts = value.split("|", 9)
    if len(parts) != 10:
        return None
    head, attempts, sent, reason, tk, k, n, ev, called, tail = parts
    state = STATES[head[0]]
    return CompactCall(
        state=state, outcome=OUTCOMES.get(head[1]), attempts=int(attempts or 0),
        sent_ms=int(sent, 36) if sent else None, release_reason=reason or None,
        talk_duration_s=int(tk) if tk.isascii() and tk.isdigit() else None, call=int(k or 0), redials=int(n or 0),
        evidence=ev or None, called=called, serial=(tail or None) if state == "sent" else None,
        last_error=(tail or None) if state != "sent" else None,
    )


def member_of(campaign: str, job_id: str) -> tuple[str, int] | None:
    """(number-set member, which call) of a derived job id ``<campaign>:<key>`` or ``…:r<k>``; None otherwise."""
    head = campaign + ":"
    if not job_id.startswith(head):
        return None
    rest = job_id[len(head):]
    key, sep, k = rest.rpartition(":r")
    if sep and k.isdigit() and key:
        return key, int(k)
    return (rest, 0) if ":" not in rest else None


@dataclass(frozen=True)
class Swept:
    examined: int = 0
    compacted: int = 0
    trimmed: int = 0


class Compactor:
    """Compacts finished campaign jobs; cheap, one per worker process."""

    def __init__(self, redis: Redis, settings: Settings, *, quiet_s: float = QUIET_S,
                 callback_wait_s: float | None = None) -> None:
        self._redis = redis
        self._keys = Keys(settings.key_prefix)
        self._quiet_ms = int(quiet_s * 1000)
        self._wait_ms = int((settings.unknown_grace_s if callback_wait_s is None else callback_wait_s) * 1000)
        self._sweep = scripts.register(redis, "campaigns/campaign_compact.lua", settings)
        self._outcome = scripts.register(redis, "campaigns/campaign_compact_outcome.lua", settings)

    async def sweep(self, name: str, ids: int = _SWEEP_IDS) -> Swept:
        """One slice of ``name``'s job list examined (atomic; several processes may sweep at once)."""
        k = self._keys
        res = await self._sweep(keys=[k.campaign(name), k.campaign_jobs(name)],
                                args=[k.prefix, name, ids, self._quiet_ms, self._wait_ms])
        return Swept(*(int(x) for x in res))

    async def sweep_all(self) -> int:
        """A slice of every campaign's job list; how many jobs were compacted."""
        names = [text(n) for n in await self._redis.zrange(self._keys.campaigns, 0, -1)]
        done = 0
        for name in names:
            done += (await self.sweep(name)).compacted
        return done

    async def record_outcome(self, campaign: str, job_id: str, serial: str, outcome: str, reason: str,
                             talk: int | None) -> tuple[str, CompactCall | None]:
        """A result callback for a compacted call: ``("recorded" | "stands" | "superseded" | "missing", call)``."""
        found = member_of(campaign, job_id)
        if found is None:
            return "missing", None
        member, call = found
        k = self._keys
        res = await self._outcome(
            keys=[k.campaign(campaign), k.campaign_counts(campaign)],
            args=[k.prefix, campaign, member, call, serial, OUTCOME_CODES[outcome], reason,
                  "" if talk is None else str(talk), outcome],
        )
        verdict = text(res[0])
        return verdict, decode(text(res[1])) if len(res) > 1 else None

    async def run(self) -> None:
        """Sweep every campaign every few seconds until cancelled; a Redis outage is waited out quietly."""
        failing = False
        while True:
            try:
                await self.sweep_all()
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.debug("compaction sweep failed (%s); trying again", type(exc).__name__)
                failing = True
            await asyncio.sleep(_EVERY_S)
