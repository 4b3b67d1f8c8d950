"""Unknown outcomes and their grace period: how long the dialer waits for the provider to prove a call.

A job becomes ``unknown`` when its request may have created a call but no usable answer came back (its
worker died mid-request, the answer was lost or garbled). The provider still knows: when the call ends it
POSTs a release event to the call's callBackUrl, which names the job (:mod:`worker.callback_url`), and that
event moves the job to ``sent`` (:meth:`~worker.ledger.transitions.Ledger.mark_evidenced`). Each unknown
job waits in ``Keys.unknown`` for that event for ``DIALER_UNKNOWN_GRACE_S`` (default 15 min: the ring time
plus the provider's callback delay). Then :meth:`Unknowns.sweep`, run by every worker process:

- marks it ``evidence`` = ``none``: reported as *unknown, no evidence* (``dialer job``, the HTTP API, the
  campaign's ``no_evidence`` count, one WARNING per job, ``dialer_unknown_grace_ended_total``);
- with ``DIALER_REDIAL_AMBIGUOUS=after-grace``, puts it back on its queue once (``grace_redialled``), with a
  fresh attempt and time budget. Never earlier, never twice: a call that existed but whose event comes after
  the grace still rings twice, which is why this is opt-in.

::

    unknowns = Unknowns(redis, settings)
    swept = await unknowns.sweep()        # Swept(looked_at=3, no_evidence=("a", "b"), redialled=("a",))
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker import metrics
from worker.settings import Settings
from worker.store import scripts
from worker.store.decode import text
from worker.store.keys import Keys, in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix

__all__ = ["Swept", "Unknowns"]

log = logging.getLogger(__name__)

_BATCH = 500
_MIN_EVERY_S = 1.0
_MAX_EVERY_S = 30.0


@dataclass(frozen=True)
class Swept:
    """One sweep: how many listed jobs it looked at, which it marked *no evidence*, which it redialled."""

    looked_at: int
    no_evidence: tuple[str, ...] = ()
    redialled: tuple[str, ...] = ()


class Unknowns:
    """The grace period of ``unknown`` jobs (see the module docstring). Cheap; one per worker process."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._keys = Keys(settings.key_prefix)
        self._grace_ms = int(settings.unknown_grace_s * 1000)
        self._redial = settings.redial_ambiguous == "after-grace"
        self._args = (settings.key_prefix, settings.ledger_ttl_s * 1000, "1" if self._redial else "0",
                      job_key_prefix, retry_key_prefix, result_key_prefix, in_progress_key_prefix)
        self._script = scripts.register(redis, "ledger/grace.lua", settings)
        self.every_s = min(max(settings.unknown_grace_s / 10, _MIN_EVERY_S), _MAX_EVERY_S)
        """How often :meth:`run` sweeps: a job is reported at most this long after its grace ends."""

    async def sweep(self, limit: int = _BATCH) -> Swept:
        """End the grace of up to ``limit`` unknown jobs whose grace is over (atomic per call; several
        processes may sweep at once)."""
        prefix, ttl, redial, *arq = self._args
        res = await self._script(keys=[self._keys.unknown],
                                 args=[self._grace_ms, limit, prefix, ttl, redial, *arq])
        ids = [text(v) for v in res[3:]]
        cut = ids.index("|")
        swept = Swept(int(res[0]), tuple(ids[:cut]), tuple(ids[cut + 1:]))
        for job_id in swept.no_evidence:
            log.warning("job %s: unknown, no evidence: no release event within %g s of its unknown outcome%s",
                        job_id, self._grace_ms / 1000,
                        "; redialled once (DIALER_REDIAL_AMBIGUOUS=after-grace)" if job_id in swept.redialled else "",
                        extra={"job_id": job_id, "outcome": "unknown"})
        metrics.observe_unknown_grace(len(swept.no_evidence), len(swept.redialled))
        return swept

    async def run(self) -> None:
        """Sweep every :attr:`every_s` until cancelled; a Redis outage is logged once and waited out."""
        failing = False
        while True:
            try:
                while (await self.sweep()).looked_at >= _BATCH:
                    pass
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.debug("unknown-outcome sweep failed (%s); trying again", type(exc).__name__)
                failing = True
            await asyncio.sleep(self.every_s)
