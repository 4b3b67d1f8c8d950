"""Compaction of finished campaign jobs (worker/campaigns/compaction.py): the full record goes, the number's
compact value keeps what export, late callbacks and dedupe need; counters stay exact. Real Redis."""

from __future__ import annotations

from collections import Counter

import redis.asyncio as aioredis

from worker.campaigns.compaction import Compactor, decode
from worker.campaigns.control import Campaigns, CampaignSpec
from worker.campaigns.export import CampaignExport, parse_states
from worker.campaigns.hopper import Hopper
from worker.campaigns.outcomes import Outcomes
from worker.campaigns.rows import CompactRow, RowStore, bucket
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.models import ReleaseEvent
from worker.settings import Settings
from worker.store.keys import Keys

NAME = "cmp"
SPEC = CampaignSpec(defaults={"templateId": "tpl-1"})


async def _setup(redis: aioredis.Redis, settings: Settings, n: int) -> list[str]:
    await Campaigns(redis, settings).create(NAME, SPEC)
    rows = [CompactRow(f"86139{i:08d}", "+") for i in range(n)]
    await RowStore(redis, settings).append(NAME, rows, buckets=max(1, n // 64))
    await Hopper(redis, settings, window=10 * n).top_up(NAME)
    return [f"{NAME}:{r.key}" for r in rows]


async def _value(redis: aioredis.Redis, keys: Keys, member: str) -> str:
    buckets = int(await redis.hget(keys.campaign(NAME), "buckets"))  # type: ignore[misc]
    raw = await redis.hget(keys.campaign_numbers(NAME, bucket(member, buckets)), member)  # type: ignore[misc]
    return raw.decode()


async def _export(redis: aioredis.Redis, settings: Settings, *states: str) -> list[str]:
    exp = CampaignExport(redis, settings, NAME, fmt="csv", states=parse_states(states) if states else None)
    return b"".join([c async for c in exp.stream()]).decode().splitlines()[1:]


async def test_finished_jobs_are_compacted_and_export_status_and_callbacks_still_work(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    ids = await _setup(redis_client, settings, 200)
    ledger = Ledger(redis_client, settings)
    for i, job in enumerate(ids[:150]):
        assert await ledger.mark_sending(job)
        await ledger.mark_sent(job, f"SN-{i}")
    for job in ids[:100]:
        await ledger.record_outcome(job, "answered", "1", {"tk": "42"})
    for job in ids[150:170]:
        assert await ledger.mark_final(job, State.SUPPRESSED, "do-not-call")
    before = await Campaigns(redis_client, settings).status(NAME)
    export_before = sorted(await _export(redis_client, settings))
    # Not yet quiet long enough: nothing happens.
    assert (await Compactor(redis_client, settings).sweep(NAME)).compacted == 0
    # Quiet at once, but sent jobs without an outcome still wait for their callback.
    compactor = Compactor(redis_client, settings, quiet_s=0, callback_wait_s=3600)
    swept = await compactor.sweep(NAME)
    assert swept.compacted == 120 and swept.trimmed == 100  # ids 100..149 (waiting) hold the list's head
    assert await ledger.get(ids[0]) is None and await ledger.get(ids[120]) is not None
    assert await ledger.job_for_serial("SN-0") is None
    call = decode(await _value(redis_client, keys, ids[0].split(":")[1]))
    assert call is not None and (call.state, call.outcome, call.serial, call.talk_duration_s) == (
        "sent", "answered", "SN-0", 42)
    assert call.sent_ms is not None and call.called == "+"
    status = await Campaigns(redis_client, settings).status(NAME)
    assert status["states"] == before["states"] and status["outcomes"] == before["outcomes"]
    assert status["total"] == 200
    assert sorted(await _export(redis_client, settings)) == export_before  # the same rows, compacted or not
    # A late callback for a compacted call: recorded once, counted once; the first outcome stands.
    await Compactor(redis_client, settings, quiet_s=0, callback_wait_s=0).sweep(NAME)
    assert await ledger.get(ids[120]) is None
    outcomes = Outcomes(redis_client, settings)
    event = ReleaseEvent.model_validate({"callSerialNo": "SN-120", "releaseReason": "4", "called": "+x"})
    done = await outcomes.record(event, job_hint=ids[120])
    assert done is not None and done.outcome == "unanswered" and not done.ignored
    assert (await outcomes.record(event, job_hint=ids[120])) is not None  # again: nothing more counted
    other = ReleaseEvent.model_validate({"callSerialNo": "SN-120", "releaseReason": "1"})
    ignored = await outcomes.record(other, job_hint=ids[120])
    assert ignored is not None and ignored.ignored and ignored.outcome == "unanswered"
    wrong = ReleaseEvent.model_validate({"callSerialNo": "SN-999", "releaseReason": "1"})
    assert await outcomes.record(wrong, job_hint=ids[121]) is None
    after = await Campaigns(redis_client, settings).status(NAME)
    assert after["outcomes"]["unanswered"] == before["outcomes"]["unanswered"] + 1
    assert after["outcomes"]["answered"] == before["outcomes"]["answered"]
    rows = await _export(redis_client, settings, "sent")
    assert len(rows) == 150 and sum(",unanswered,4," in r for r in rows) == 1
    by_state = Counter(r.split(",")[3] for r in await _export(redis_client, settings))
    assert by_state == Counter({"sent": 150, "suppressed": 20, "queued": 30})
    # Dedupe after compaction: the rows are still members, a re-append adds nothing.
    res = await RowStore(redis_client, settings).append(NAME, [CompactRow(ids[0].split(":")[1], "+")], buckets=1)
    assert res.added == 0


async def test_compaction_saves_most_of_a_finished_number(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    ids = await _setup(redis_client, settings, 1000)
    ledger = Ledger(redis_client, settings)
    for i, job in enumerate(ids):
        await ledger.mark_sending(job)
        await ledger.mark_sent(job, f"{1700000000000 + i}")
        await ledger.record_outcome(job, "answered", "1", {"tk": "42"})

    async def used() -> int:
        total = 0
        async for k in redis_client.scan_iter(match=f"{settings.key_prefix}*", count=1000):
            # the event stream has its own cap; queue entries are the worker's to remove (none ran here)
            if not k.endswith(b"events") and b":queue:" not in k:
                total += int(await redis_client.memory_usage(k) or 0)
        return total

    whole = await used()
    await Compactor(redis_client, settings, quiet_s=0).sweep(NAME)
    compacted = await used()
    assert await redis_client.llen(keys.campaign_jobs(NAME)) == 0  # type: ignore[misc]
    # ~650 B a finished number whole (record, serial index), ~55 B compacted (its number-set value)
    assert compacted / 1000 < 80 and compacted < whole / 8, (whole / 1000, compacted / 1000)
