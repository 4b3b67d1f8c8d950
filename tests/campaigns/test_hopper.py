"""The hopper (worker/campaigns/hopper.py): compact rows become jobs a window ahead, exactly once, with
pause/resume/cancel/delete exact over rows not yet materialised. Real Redis, no worker."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import redis.asyncio as aioredis

from worker.campaigns.control import CampaignBusy, Campaigns, CampaignSpec
from worker.campaigns.hopper import Hopper
from worker.campaigns.rows import CHUNK_ROWS, CompactRow, RowStore, bucket, job_id, request_body
from worker.ledger.transitions import Ledger
from worker.settings import Settings
from worker.store import scripts
from worker.store.keys import Keys

SPEC = CampaignSpec(priority=3, defaults={"templateId": "tpl-1", "templateParams": ["a", "b"]})
NAME = "hop"


def _rows(n: int) -> list[CompactRow]:
    rows = [CompactRow(f"86138{i:08d}", "+") for i in range(n)]
    rows[1] = CompactRow(rows[1].key, "", "7", "555", 2, ("own",), None, "", "", "Asia/Tokyo")
    rows[2] = CompactRow(rows[2].key, "", "", "", 0, None, None, "", "given-2")
    return rows


async def _launch(redis: aioredis.Redis, settings: Settings, n: int, spec: CampaignSpec = SPEC) -> list[CompactRow]:
    await Campaigns(redis, settings).create(NAME, spec)
    rows = _rows(n)
    res = await RowStore(redis, settings).append(NAME, rows, buckets=max(1, n // 64))
    assert res.added == n
    return rows


async def _counts(redis: aioredis.Redis, keys: Keys) -> dict[str, int]:
    raw = await redis.hgetall(keys.campaign_counts(NAME))  # type: ignore[misc]
    return {k.decode(): int(v) for k, v in raw.items()}


async def _values(redis: aioredis.Redis, keys: Keys, rows: list[CompactRow]) -> Counter[str]:
    buckets = int(await redis.hget(keys.campaign(NAME), "buckets"))  # type: ignore[misc]
    async with redis.pipeline(transaction=False) as pipe:
        for r in rows:
            pipe.hget(keys.campaign_numbers(NAME, bucket(r.member, buckets)), r.member)
        return Counter(v.decode() for v in await pipe.execute())


async def _jobs(redis: aioredis.Redis, keys: Keys) -> list[str]:
    return [j.decode() for j in await redis.lrange(keys.campaign_jobs(NAME), 0, -1)]  # type: ignore[misc]


async def test_materialises_a_window_ahead_with_the_rows_bodies(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    rows = await _launch(redis_client, settings, 3500)
    hopper = Hopper(redis_client, settings, window=1500)
    res = await hopper.top_up(NAME)
    # chunks of 1,000 are taken until 1,500 are queued: two chunks
    assert (res.chunks, res.enqueued, res.stopped) == (2, 2000, "full")
    counts = await _counts(redis_client, keys)
    assert counts["pending"] == 1500 and counts["queued"] == counts["total"] == 2000
    status = await Campaigns(redis_client, settings).status(NAME)
    assert status["total"] == 3500 and status["pending"] == 1500 and status["remaining"] == 3500
    ledger = Ledger(redis_client, settings)
    for r in rows[:3]:
        rec = await ledger.get(job_id(r, NAME))
        assert rec is not None and rec.campaign == NAME
        assert rec.body == request_body(r, SPEC) | {"priority": rec.body["priority"]}
    tokyo = await ledger.get(job_id(rows[1], NAME))
    assert tokyo is not None and tokyo.timezone == "Asia/Tokyo" and tokyo.priority == 7
    assert await ledger.get("given-2") is not None
    assert (await _values(redis_client, keys, rows)) == Counter({"m": 2000, "": 1500})
    # In launch order: the campaign's job list is the rows' order.
    assert await _jobs(redis_client, keys) == [job_id(r, NAME) for r in rows[:2000]]
    # Nothing more while the window is full; the rest once the queue drains.
    assert (await hopper.top_up(NAME)).stopped == "full"
    await redis_client.hset(keys.campaign_counts(NAME), "queued", 0)  # type: ignore[misc]
    assert (await hopper.top_up(NAME)).enqueued == 1500
    assert (await _counts(redis_client, keys))["pending"] == 0
    await redis_client.hset(keys.campaign_counts(NAME), "queued", 0)  # type: ignore[misc]
    assert (await hopper.top_up(NAME)).stopped == "empty"


async def test_a_chunk_left_by_a_dead_hopper_is_taken_again_and_nothing_is_enqueued_twice(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    rows = await _launch(redis_client, settings, 2 * CHUNK_ROWS)
    dead = Hopper(redis_client, settings, lease_s=0.2, window=10_000)
    # The dead hopper took the first chunk and enqueued part of it, then died (no finish).
    take = scripts.register(redis_client, "campaigns/hopper_take.lua", settings)
    res = await take(keys=[keys.campaign(NAME), keys.campaign_counts(NAME), keys.campaign_rows(NAME),
                           keys.campaign_rows_taken(NAME)], args=["dead:1", 200, 10_000])
    assert res[0] == b"take"
    spec = await dead._spec(NAME)
    assert spec is not None
    from worker.campaigns.rows import decode_chunk

    half = decode_chunk(res[1])[:300]
    assert await dead._materialise(NAME, spec, half) == (300, 300)
    live = Hopper(redis_client, settings, window=10_000)
    first = await live.top_up(NAME)
    assert first.retaken == 0 and first.enqueued == CHUNK_ROWS  # the other chunk; the dead one's lease holds
    await asyncio.sleep(0.3)
    again = await live.top_up(NAME)
    assert again.retaken == 1 and again.enqueued == CHUNK_ROWS - 300
    assert await redis_client.hlen(keys.campaign_rows_taken(NAME)) == 0  # type: ignore[misc]
    ids = await _jobs(redis_client, keys)
    assert len(ids) == len(set(ids)) == 2 * CHUNK_ROWS
    counts = await _counts(redis_client, keys)
    assert counts["queued"] == counts["total"] == 2 * CHUNK_ROWS and counts["pending"] == 0
    assert (await _values(redis_client, keys, rows)) == Counter({"m": 2 * CHUNK_ROWS})


async def test_two_hoppers_at_once_enqueue_every_row_once(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await _launch(redis_client, settings, 6 * CHUNK_ROWS)
    a, b = Hopper(redis_client, settings, window=100_000), Hopper(redis_client, settings, window=100_000)
    ra, rb = await asyncio.gather(a.top_up(NAME), b.top_up(NAME))
    assert ra.enqueued + rb.enqueued == 6 * CHUNK_ROWS and ra.chunks + rb.chunks == 6
    ids = await _jobs(redis_client, keys)
    assert len(ids) == len(set(ids)) == 6 * CHUNK_ROWS
    assert (await _counts(redis_client, keys))["pending"] == 0


async def test_pause_stops_materialising_resume_continues(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await _launch(redis_client, settings, 2 * CHUNK_ROWS)
    campaigns, hopper = Campaigns(redis_client, settings), Hopper(redis_client, settings, window=10)
    await campaigns.pause(NAME)
    assert (await hopper.top_up(NAME)) .stopped == "status"
    assert await hopper.pass_once() == 0
    assert (await _counts(redis_client, keys))["pending"] == 2 * CHUNK_ROWS
    await campaigns.resume(NAME)
    assert await hopper.pass_once() == CHUNK_ROWS  # window 10: one chunk
    status = await campaigns.status(NAME)
    assert (status["pending"], status["states"]["queued"], status["total"]) == (CHUNK_ROWS, CHUNK_ROWS, 2 * CHUNK_ROWS)


async def test_cancel_counts_every_row_not_yet_a_job_and_delete_removes_the_rows(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    rows = await _launch(redis_client, settings, 3 * CHUNK_ROWS + 10)
    campaigns, hopper = Campaigns(redis_client, settings), Hopper(redis_client, settings, window=10)
    assert (await hopper.top_up(NAME)).enqueued == CHUNK_ROWS
    # A hopper died holding the second chunk (taken, never finished).
    take = scripts.register(redis_client, "campaigns/hopper_take.lua", settings)
    await take(keys=[keys.campaign(NAME), keys.campaign_counts(NAME), keys.campaign_rows(NAME),
                     keys.campaign_rows_taken(NAME)], args=["dead:1", 60_000, 10_000_000])
    with pytest.raises(CampaignBusy, match="pending"):
        await campaigns.delete(NAME)
    assert await campaigns.cancel(NAME) == 3 * CHUNK_ROWS + 10
    status = await campaigns.status(NAME)
    assert status["states"]["cancelled"] == status["total"] == 3 * CHUNK_ROWS + 10
    assert status["pending"] == status["remaining"] == 0
    assert (await _values(redis_client, keys, rows)) == Counter({"x": 2 * CHUNK_ROWS + 10, "m": CHUNK_ROWS})
    assert await redis_client.llen(keys.campaign_rows(NAME)) == 0  # type: ignore[misc]
    assert await redis_client.hlen(keys.campaign_rows_taken(NAME)) == 0  # type: ignore[misc]
    assert (await hopper.top_up(NAME)).stopped == "status"
    await campaigns.delete(NAME)
    assert not await redis_client.keys(f"{settings.key_prefix}campaign:{NAME}*")


async def test_a_hopper_still_at_work_when_the_campaign_is_cancelled_enqueues_nothing(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await _launch(redis_client, settings, CHUNK_ROWS)
    hopper = Hopper(redis_client, settings, window=10)
    spec = await hopper._spec(NAME)
    assert spec is not None
    take = scripts.register(redis_client, "campaigns/hopper_take.lua", settings)
    res = await take(keys=[keys.campaign(NAME), keys.campaign_counts(NAME), keys.campaign_rows(NAME),
                           keys.campaign_rows_taken(NAME)], args=["slow:1", 60_000, 10_000])
    from worker.campaigns.rows import decode_chunk

    chunk = decode_chunk(res[1])
    await Campaigns(redis_client, settings).cancel(NAME)  # cancels the taken chunk's rows too
    assert await hopper._materialise(NAME, spec, chunk) == (0, CHUNK_ROWS)
    counts = await _counts(redis_client, keys)
    assert counts["cancelled"] == counts["total"] == CHUNK_ROWS and counts["pending"] == 0
    assert await _jobs(redis_client, keys) == []


async def test_a_compact_campaign_is_dialled_through_a_real_worker_once_each_and_compacted(
    sim: object, sim_settings: Settings, redis_client: aioredis.Redis, keys: Keys
) -> None:
    from tests.helpers import Sim, created, running, wait_until
    from worker.campaigns.compaction import Compactor

    assert isinstance(sim, Sim)
    settings = sim_settings.model_copy(update={"rate_limit": 200.0})
    await _launch(redis_client, settings, 300, CampaignSpec(defaults={"templateId": "tpl-1"}, rate=100.0))
    campaigns = Campaigns(redis_client, settings)

    async def done() -> bool:
        return int((await campaigns.status(NAME))["remaining"]) == 0

    async with running(settings):
        await wait_until(done, timeout=30)
    numbers = [r["called"] for r in created(await sim.requests())]
    assert len(numbers) == len(set(numbers)) == 300
    status = await campaigns.status(NAME)
    assert status["states"]["sent"] == status["total"] == 300 and status["pending"] == 0
    swept = await Compactor(redis_client, settings, quiet_s=0, callback_wait_s=0).sweep(NAME)
    assert swept.compacted == 300 and await redis_client.llen(keys.campaign_jobs(NAME)) == 0  # type: ignore[misc]
    assert (await campaigns.status(NAME))["states"]["sent"] == 300
