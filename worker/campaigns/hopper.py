"""The hopper: makes a campaign's compact rows into full jobs, a window ahead of the senders.

::

    hopper = Hopper(redis, settings)
    await hopper.top_up("spring")     # materialise chunks until the campaign has its window queued
    await hopper.run()                # every worker process runs this, forever (dispatch/process.py)

A launched campaign's numbers wait as compact chunks (``Keys.campaign_rows``, :mod:`worker.campaigns.rows`):
the number and the few values that differ from the campaign's common fields, a few bytes each. A full job
(ledger record, queue entry: ~1 KB) exists only for the rows about to be dialled. For each active campaign
with ``pending`` rows, the hopper keeps about :meth:`Hopper.window` jobs queued: it takes a chunk, rebuilds
each row's request (the campaign's common fields from its spec, the row's own values over them) and
enqueues it through the ledger's own enqueue script with the derived job id ``<campaign>:<number>`` (or
the row's ``id``). So everything a job gets at enqueue, it gets here, and everything checked at send
(window, rate, priority, do-not-call, per-number cap, pause, cancel) is checked unchanged.

**Exactly once.** Taking a chunk moves it, in one script, from the rows list to the campaign's taken
chunks with a lease (``hopper_take.lua``). Each batch of its rows is enqueued by ``hopper_enqueue.lua``,
which checks the row's number-set value in the same script: only a row still pending (``""``) becomes a
job, and its value turns to ``m`` (materialised) with it, ``pending`` down and ``queued`` up. A hopper that
dies mid-chunk leaves the chunk taken; once its lease runs out another hopper takes it again, whole, and
the rows already materialised are skipped. Two hoppers (several worker processes, several hosts) never
take the same chunk while its lease holds, and even then could not enqueue a row twice.

**Pause, resume, cancel.** A paused or cancelled campaign gets no chunk taken (rows being materialised
when the pause came are parked by enqueue, as any job of a paused campaign). Cancel marks every pending
row ``x`` and counts it cancelled (:meth:`worker.campaigns.control.Campaigns.cancel`); a batch of a hopper
still at work on a cancelled campaign does the same instead of enqueuing.

**Window.** ``rate x LOOKAHEAD_S`` jobs (the campaign's rate, or the fleet's when lower), at least
``WINDOW_MIN`` and at most ``WINDOW_MAX``; with no rate at all, ``WINDOW_UNPACED``. Jobs of a paced campaign
are due one pace apart, so the window is about a minute of that campaign's sending.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from worker.campaigns import rows as compact
from worker.campaigns.compaction import Compactor
from worker.campaigns.control import CampaignSpec
from worker.ledger.producer import CallJob, Producer, _RandomIds
from worker.settings import Settings
from worker.store import scripts
from worker.store.decode import text
from worker.store.keys import Keys

__all__ = ["LOOKAHEAD_S", "WINDOW_MAX", "WINDOW_MIN", "WINDOW_UNPACED", "Hopper", "TopUp"]

log = logging.getLogger(__name__)

LOOKAHEAD_S = 60.0
"""Seconds of a paced campaign's sending kept materialised ahead of the senders."""
WINDOW_MIN = 200
WINDOW_MAX = 20_000
WINDOW_UNPACED = 5_000
"""Jobs kept queued for a campaign with no rate at all (its own or the fleet's)."""
LEASE_S = 60.0
"""How long a taken chunk is this hopper's: materialising one takes milliseconds; a chunk still taken after
this is taken again by another hopper (its rows already materialised are skipped)."""
_BATCH = 100  # rows per enqueue script call, as the producer's
_MAX_CHUNKS_PER_PASS = 8  # per campaign and pass, so one big campaign cannot hold the hopper from the others
_EVERY_S = 0.25
_IDLE_S = 1.0


@dataclass(frozen=True)
class TopUp:
    """One :meth:`Hopper.top_up`: chunks taken (and how many of them again after a lease ran out), rows
    enqueued, and why it stopped (``full``, ``empty``, ``status``, ``budget``)."""

    chunks: int = 0
    retaken: int = 0
    enqueued: int = 0
    rows: int = 0
    stopped: str = ""


def _window(spec: CampaignSpec, global_rate: float) -> int:
    rates = [r for r in (spec.rate, global_rate) if r and r > 0]
    if not rates:
        return WINDOW_UNPACED
    return int(min(max(min(rates) * LOOKAHEAD_S, WINDOW_MIN), WINDOW_MAX))


class Hopper:
    """Materialises campaign rows ahead of the senders. One per worker process; any number may run."""

    def __init__(self, redis: Redis, settings: Settings, *, lease_s: float = LEASE_S,
                 window: int | None = None) -> None:
        self._redis = redis
        self._settings = settings
        self._keys = Keys(settings.key_prefix)
        self._producer = Producer(redis, settings)
        self._consts = (settings.key_prefix.encode(), str(settings.ledger_ttl_s * 1000).encode())
        self._lease_ms = int(lease_s * 1000)
        self._fixed_window = window
        self._take = scripts.register(redis, "campaigns/hopper_take.lua", settings)
        self._finish = scripts.register(redis, "campaigns/hopper_finish.lua", settings)
        self._enqueue = scripts.register(redis, "campaigns/hopper_enqueue.lua", settings)
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
        self._takes = 0
        self._specs: dict[str, tuple[str, CampaignSpec]] = {}

    def window(self, spec: CampaignSpec) -> int:
        """Jobs kept queued for a campaign with this spec (see the module docstring)."""
        return self._fixed_window or _window(spec, self._settings.rate_limit)

    async def top_up(self, name: str, *, max_chunks: int | None = None) -> TopUp:
        """Take and materialise chunks of ``name`` until it has its window of jobs queued, has no chunk
        left, is not active, or ``max_chunks`` were taken."""
        spec = await self._spec(name)
        if spec is None:
            return TopUp(stopped="status")
        window = self.window(spec)
        k = self._keys
        chunks = retaken = enqueued = rows = 0
        stopped = "budget"
        while max_chunks is None or chunks < max_chunks:
            self._takes += 1
            token = f"{self._owner}:{self._takes}"
            res = await self._take(
                keys=[k.campaign(name), k.campaign_counts(name), k.campaign_rows(name), k.campaign_rows_taken(name)],
                args=[token, self._lease_ms, window],
            )
            verdict = text(res[0])
            if verdict not in ("take", "retake"):
                stopped = verdict
                break
            blob = res[1] if isinstance(res[1], bytes) else str(res[1]).encode("latin-1")
            chunks += 1
            if verdict == "retake":
                retaken += 1
                log.warning("campaign %s: a chunk taken %s ago by %s was not finished: taken again",
                            name, f"{self._lease_ms / 1000:g}s+", text(res[2]).rsplit(":", 1)[0],
                            extra={"campaign": name})
            done, total = await self._materialise(name, spec, compact.decode_chunk(blob))
            enqueued += done
            rows += total
            await self._finish(keys=[k.campaign_rows_taken(name)], args=[token])
        return TopUp(chunks, retaken, enqueued, rows, stopped)

    async def _spec(self, name: str) -> CampaignSpec | None:
        raw = await self._redis.hget(self._keys.campaign(name), "spec")  # type: ignore[misc]
        if raw is None:
            self._specs.pop(name, None)
            return None
        spec_text = text(raw)
        cached = self._specs.get(name)
        if cached is None or cached[0] != spec_text:
            cached = self._specs[name] = (spec_text, CampaignSpec.from_canonical(spec_text))
        return cached[1]

    async def _materialise(self, name: str, spec: CampaignSpec, rows: Sequence[compact.CompactRow]) -> tuple[int, int]:
        """Enqueue the rows still pending; returns (enqueued, rows)."""
        deadline = None if spec.deadline_ms is None else datetime.fromtimestamp(spec.deadline_ms / 1000, UTC)
        buckets = await self._buckets(name)
        results: list[Any] = []
        new_id = _RandomIds()
        base_opts = self._producer_options(name, deadline)
        enqueued = 0
        async with self._redis.pipeline(transaction=False) as pipe:
            sent = 0
            for start in range(0, len(rows), _BATCH):
                packed: list[bytes] = []
                bkeys: list[str] = []
                fields: list[str] = []
                for row in rows[start : start + _BATCH]:
                    index = len(results)
                    call = self._producer._prepare(
                        CallJob(request=compact.request_body(row, spec), job_id=row.job_id or None,
                                timezone=row.timezone or None, status_callback_url=row.status_callback_url or None),
                        index, base_opts, name, None, deadline, results, new_id, None,
                    )
                    if call is None:
                        # Validated at launch; a row refused now (e.g. its callBackUrl grew too long for a new
                        # DIALER_PUBLIC_URL) stays pending and is reported, never dropped silently.
                        log.warning("campaign %s: row %s refused at materialisation: %s", name, row.member,
                                    "; ".join(str(e) for e in results[index].errors), extra={"campaign": name})
                        continue
                    packed.append(call.packed)
                    member = row.member
                    bkeys.append(self._keys.campaign_numbers(name, compact.bucket(member, buckets)))
                    fields.append(member)
                if not packed:
                    continue
                await self._enqueue(keys=[], args=[*self._consts, b"\x1e".join(packed), name,
                                                   "\x1e".join(bkeys), "\x1e".join(fields)], client=pipe)
                sent += 1
            replies = await pipe.execute() if sent else []
        for flags, *_states in replies:
            enqueued += text(flags).count("1")
        return enqueued, len(rows)

    def _producer_options(self, name: str, deadline: datetime | None) -> Any:
        from worker.ledger.producer import _check_options

        opts, errors = _check_options(None, name, None, deadline)
        if errors:  # the campaign's own options: checked at launch
            raise ValueError("; ".join(map(str, errors)))
        return opts

    async def _buckets(self, name: str) -> int:
        raw = await self._redis.hget(self._keys.campaign(name), "buckets")  # type: ignore[misc]
        return int(raw) if raw is not None else 1

    async def pass_once(self) -> int:
        """One pass over every campaign: top each active one with pending rows up; rows enqueued."""
        names = [text(n) for n in await self._redis.zrange(self._keys.campaigns, 0, -1)]
        if not names:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for n in names:
                pipe.hget(self._keys.campaign(n), "status")
                pipe.hmget(self._keys.campaign_counts(n), ["pending", "queued"])
                pipe.exists(self._keys.campaign_rows_taken(n))
            found = await pipe.execute()
        done = 0
        for i, name in enumerate(names):
            status, (pending, _queued), taken = found[3 * i], found[3 * i + 1], found[3 * i + 2]
            if status is None or text(status) != "active":
                continue
            if int(pending or 0) <= 0 and not taken:
                continue
            done += (await self.top_up(name, max_chunks=_MAX_CHUNKS_PER_PASS)).enqueued
        return done

    async def run(self) -> None:
        """Top campaigns up, and compact their finished jobs (:mod:`.compaction`), until cancelled; a Redis
        outage is logged once and waited out."""
        compactor = asyncio.ensure_future(Compactor(self._redis, self._settings).run())
        try:
            await self._top_up_forever()
        finally:
            compactor.cancel()
            await asyncio.gather(compactor, return_exceptions=True)

    async def _top_up_forever(self) -> None:
        failing = False
        while True:
            try:
                done = await self.pass_once()
                failing = False
            except (RedisError, OSError) as exc:
                if not failing:
                    log.warning("hopper: Redis unavailable (%s); trying again", type(exc).__name__)
                failing = True
                done = 0
            await asyncio.sleep(_EVERY_S if done else _IDLE_S)
