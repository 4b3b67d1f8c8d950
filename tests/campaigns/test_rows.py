"""Compact campaign rows and the number set (worker/campaigns/rows.py, rows_append.lua), on a real Redis."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis

from worker.campaigns.control import CampaignError, Campaigns, CampaignSpec, UnknownCampaign
from worker.campaigns.rows import (
    CHUNK_ROWS,
    CompactRow,
    RowStore,
    bucket,
    buckets_for,
    compact,
    decode_chunk,
    encode_chunk,
    job_id,
    member,
    request_body,
)
from worker.models import CallRequest
from worker.settings import Settings
from worker.store import scripts
from worker.store.keys import Keys

SPEC = CampaignSpec(priority=3, defaults={"templateId": "tpl-1", "templateParams": ["a", "b"], "callerPresent": "555"},
                    callback_url="https://dialer.example/v1/callbacks/release")


def _rows(n: int, start: int = 0) -> list[CompactRow]:
    return [CompactRow(f"86138{i:08d}", "+") for i in range(start, start + n)]


async def _chunks(redis: aioredis.Redis, keys: Keys, name: str) -> list[CompactRow]:
    blobs = await redis.lrange(keys.campaign_rows(name), 0, -1)  # type: ignore[misc]
    return [r for b in blobs for r in decode_chunk(b)]


# --- format --------------------------------------------------------------------------------------------


def test_a_chunk_round_trips_every_kind_of_row() -> None:
    rows = [
        CompactRow("8613800000001"),
        CompactRow("8613800000002", "+", "1"),
        CompactRow("13800000003", "", "", "Café ☎ 1", 3, ("Zoë", "x|y,\"z\"\n"), None, "", "order-7", "Asia/Tokyo",
                   "https://hooks.example/a?b=1"),
        CompactRow("5", "0005", play_list=({"voiceId": "v1"}, {"templateId": "t", "templateParams": ["p"]})),
        CompactRow("44", call_back_url="https://other.example/cb"),
    ]
    blob = encode_chunk(rows)
    assert blob[:1] == b"\x01"
    assert decode_chunk(blob) == rows
    with pytest.raises(ValueError, match="version 1"):
        decode_chunk(b"\x02" + blob[1:])


def test_a_number_only_row_costs_a_few_bytes_in_a_chunk() -> None:
    rng = random.Random(7)
    rows = [CompactRow(f"86138{rng.randrange(10**8):08d}", "+") for _ in range(CHUNK_ROWS)]
    size = len(encode_chunk(rows))
    assert size / CHUNK_ROWS < 9, size  # 8 random digits are ~3.3 bytes of entropy


def test_request_body_is_the_campaigns_fields_under_the_rows_own() -> None:
    assert request_body(CompactRow("8613800000001", "+"), SPEC) == {
        "called": "+8613800000001", "playList": [{"templateId": "tpl-1", "templateParams": ["a", "b"]}],
        "callerPresent": "555", "priority": "3", "callBackUrl": "https://dialer.example/v1/callbacks/release"}
    own = CompactRow("13800000002", priority="1", params=("x",), play_times=2)
    body = request_body(own, SPEC)
    assert body["playList"] == [{"templateId": "tpl-1", "templateParams": ["x"]}]
    assert (body["priority"], body["playTimes"], body["called"]) == ("1", 2, "13800000002")


@pytest.mark.parametrize("body", [
    {"called": "+8613800000001", "playList": [{"templateId": "tpl-1", "templateParams": ["a", "b"]}]},
    {"called": "8613800000001", "playList": [{"templateId": "tpl-1", "templateParams": ["q"]}], "priority": "9"},
    {"called": "8613800000001", "playList": [{"voiceId": "v"}, {"templateId": "tpl-1"}], "playTimes": 5},
    {"called": "8613800000001", "playList": [{"templateId": "tpl-2", "templateParams": ["a", "b"]}],
     "callerPresent": "777", "callBackUrl": "https://x.example/cb"},
])
def test_compact_then_request_body_gives_the_validated_body_back(body: dict[str, object]) -> None:
    full = {"callerPresent": "555", "priority": "3", "callBackUrl": SPEC.callback_url, **body}
    dump = CallRequest.model_validate(full).model_dump(by_alias=True, exclude_none=True, exclude_unset=True)
    row = compact(dump, SPEC, job_id="given", timezone="UTC")
    assert request_body(row, SPEC) == dump
    assert (row.job_id, row.timezone, job_id(row, "c")) == ("given", "UTC", "given")
    assert job_id(CompactRow("1"), "c") == "c:1"
    assert decode_chunk(encode_chunk([row])) == [row]


def test_compact_refuses_a_body_the_campaign_cannot_express() -> None:
    # The campaign gives every row its callerPresent: a row without one cannot be stored as "the campaign's".
    dump = {"called": "1", "playList": [{"templateId": "tpl-1", "templateParams": ["a", "b"]}], "priority": "3"}
    with pytest.raises(ValueError, match="cannot carry"):
        compact(dump, SPEC)


def test_members_and_buckets() -> None:
    assert member("8613800000001") == "8613800000001"
    assert member("86", "order-1") == "=order-1"
    long_id = "x" * 100
    assert member("86", long_id).startswith("#") and len(member("86", long_id)) == 31
    assert buckets_for(0) == 1 and buckets_for(64) == 1 and buckets_for(65) == 2 and buckets_for(10**7) == 156_250
    counts = [0] * 100
    for i in range(6400):
        counts[bucket(f"86138{i:08d}", 100)] += 1
    assert max(counts) < 128 and min(counts) > 20, (min(counts), max(counts))


async def test_lua_buckets_members_as_python_does(redis_client: aioredis.Redis) -> None:
    src = scripts.source("campaigns/number_set.lua") + "return number_bucket(ARGV[1], tonumber(ARGV[2]))"
    for m in ("8613800000001", "1", "=order-7", "#" + "ab" * 15, "0086138000000012345678901234567"):
        for n in (1, 7, 15_625, 1 << 20):
            assert await redis_client.eval(src, 0, m, n) == bucket(m, n), (m, n)  # type: ignore[misc]


# --- append ----------------------------------------------------------------------------------------------


async def test_append_stores_chunks_members_and_the_pending_count_and_a_rerun_adds_nothing(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await Campaigns(redis_client, settings).create("c", SPEC)
    store = RowStore(redis_client, settings)
    rows = _rows(2500)
    res = await store.append("c", rows, buckets=buckets_for(2500))
    assert (res.added, res.duplicates) == (2500, [])
    assert await redis_client.llen(keys.campaign_rows("c")) == 3  # type: ignore[misc]
    assert await _chunks(redis_client, keys, "c") == rows  # launch order kept
    assert await redis_client.hget(keys.campaign_counts("c"), "pending") == b"2500"  # type: ignore[misc]
    assert await redis_client.hget(keys.campaign("c"), "buckets") == b"40"  # type: ignore[misc]
    assert await store.statuses("c", [rows[0].member, "999"]) == ["", None]
    # A re-run (the same rows, plus 500 new ones): only the new ones are added, once.
    again = await store.append("c", [*rows[:1000], *_rows(500, 2500), *rows[1000:]], buckets=999)
    assert again.added == 500 and len(again.duplicates) == 2500
    assert await redis_client.hget(keys.campaign("c"), "buckets") == b"40"  # fixed by the first append  # type: ignore[misc]
    assert await redis_client.hget(keys.campaign_counts("c"), "pending") == b"3000"  # type: ignore[misc]
    stored = await _chunks(redis_client, keys, "c")
    assert sorted(r.key for r in stored) == sorted(r.key for r in [*rows, *_rows(500, 2500)])
    assert len({r.key for r in stored}) == len(stored) == 3000


async def test_a_repeat_within_one_chunk_and_given_ids_are_members_of_their_own(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await Campaigns(redis_client, settings).create("c", SPEC)
    store = RowStore(redis_client, settings)
    rows = [CompactRow("1"), CompactRow("1", job_id="order-1"), CompactRow("1")]
    res = await store.append("c", rows, buckets=1)
    assert (res.added, res.duplicates) == (2, ["1"])
    assert [(r.key, r.job_id) for r in await _chunks(redis_client, keys, "c")] == [("1", ""), ("1", "order-1")]


async def test_concurrent_launchers_append_each_member_exactly_once(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await Campaigns(redis_client, settings).create("c", SPEC)
    rows = _rows(6000)
    stores = [RowStore(redis_client, settings) for _ in range(3)]
    orders = [rows, rows[::-1], rows[3000:] + rows[:3000]]
    results = await asyncio.gather(*(s.append("c", o, buckets=100) for s, o in zip(stores, orders, strict=True)))
    assert sum(r.added for r in results) == 6000
    stored = await _chunks(redis_client, keys, "c")
    assert len(stored) == 6000 and {r.key for r in stored} == {r.key for r in rows}
    assert await redis_client.hget(keys.campaign_counts("c"), "pending") == b"6000"  # type: ignore[misc]


async def test_no_rows_for_a_missing_or_cancelled_campaign(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    store = RowStore(redis_client, settings)
    with pytest.raises(UnknownCampaign):
        await store.append("nope", _rows(3), buckets=1)
    campaigns = Campaigns(redis_client, settings)
    await campaigns.create("c", SPEC)
    await campaigns.cancel("c")
    with pytest.raises(CampaignError, match="cancelled"):
        await store.append("c", _rows(3), buckets=1)
    assert await redis_client.exists(keys.campaign_rows("c"), keys.campaign_rows("nope")) == 0
    assert await redis_client.hget(keys.campaign_counts("c"), "pending") is None  # type: ignore[misc]


async def test_a_pending_number_costs_under_40_bytes_of_redis(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    """used_memory delta / numbers (chunks + number set + bucket keys), and each bucket stays a listpack."""
    n = 100_000
    await Campaigns(redis_client, settings).create("c", SPEC)
    store = RowStore(redis_client, settings)
    rng = random.Random(1)
    numbers = list({f"86{rng.randrange(10**11):011d}" for _ in range(n)})
    before = int((await redis_client.info("memory"))["used_memory"])
    for i in range(0, len(numbers), 10_000):
        await store.append("c", [CompactRow(k, "+") for k in numbers[i : i + 10_000]], buckets=buckets_for(n))
    per_number = (int((await redis_client.info("memory"))["used_memory"]) - before) / len(numbers)
    print(f"bytes per pending number: {per_number:.1f}")
    assert per_number < 40, per_number
    b = bucket(numbers[0], buckets_for(n))
    assert await redis_client.object("encoding", keys.campaign_numbers("c", b)) == b"listpack"
    rows_bytes = int(await redis_client.memory_usage(keys.campaign_rows("c"), samples=0) or 0)
    assert rows_bytes / len(numbers) < 12, rows_bytes / len(numbers)


async def test_numbers_on_the_do_not_call_list_are_skipped_and_named(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys
) -> None:
    await Campaigns(redis_client, settings).create("c", SPEC)
    await redis_client.sadd(keys.suppress, "8613800000002", "13800000009")  # type: ignore[misc]
    rows = [CompactRow("8613800000001"), CompactRow("8613800000002"), CompactRow("13800000009", job_id="own-id")]
    res = await RowStore(redis_client, settings).append("c", rows, buckets=1)
    assert (res.added, res.duplicates, res.suppressed) == (1, [], ["8613800000002", "=own-id"])
    assert [r.key for r in await _chunks(redis_client, keys, "c")] == ["8613800000001"]
    assert await RowStore(redis_client, settings).statuses("c", ["8613800000002", "=own-id"]) == [None, None]
