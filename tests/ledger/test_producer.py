"""The producer against a real Redis: the queued job's layout, priorities, dedupe, validation, batches, requeue."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from tests.helpers import published, server_ms, snapshot
from worker.errors import InvalidRequest
from worker.ledger.producer import CallJob, Producer, enqueue_call, enqueue_many, new_job_ids
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.models import CallRequest
from worker.settings import Settings
from worker.store.keys import Keys, in_progress_key_prefix, result_key_prefix, retry_key_prefix


def body(called: str = "8613800000001", **extra: Any) -> dict[str, Any]:
    return {"called": called, "playList": [{"voiceId": "100001"}], **extra}





async def created_ms(r: aioredis.Redis, keys: Keys, job_id: str) -> int:
    return int(await r.hget(keys.job(job_id), "created"))  # type: ignore[misc,arg-type]  # redis-py's union


async def test_a_queued_job_is_its_ledger_record_and_queue_entry_only(
    redis_client: aioredis.Redis, producer: Producer, keys: Keys, settings: Settings
) -> None:
    before = await server_ms(redis_client)
    res = await producer.enqueue(body(priority="3"), job_id="order-42")
    after = await server_ms(redis_client)
    assert (res.job_id, res.status, res.state, res.errors) == ("order-42", "accepted", "queued", ())
    # No arq job: the worker's claim writes it (tests/dispatch/test_claim.py). Besides the enqueue sequence
    # counter and the event stream's "queued" entry, nothing else is stored.
    assert await redis_client.exists(keys.arq_job("order-42")) == 0
    assert sorted(await redis_client.keys("*")) == sorted(
        [keys.job("order-42").encode(), keys.queue(3).encode(), keys.seq.encode(), keys.events.encode()]
    )
    created = await created_ms(redis_client, keys, "order-42")
    assert before <= created <= after
    assert await redis_client.zscore(keys.queue(3), "order-42") == created


async def test_queue_by_priority_scored_now(
    redis_client: aioredis.Redis, producer: Producer, keys: Keys, settings: Settings
) -> None:
    await producer.enqueue(body(priority="3"), job_id="p3")
    await producer.enqueue(body("8613800000002", priority=1), job_id="p1")
    await producer.enqueue(body("8613800000003"), job_id="p9")  # seed default "9"
    for prio, job_id in ((3, "p3"), (1, "p1"), (9, "p9")):
        members = await redis_client.zrange(keys.queue(prio), 0, -1, withscores=True)
        assert members == [(job_id.encode(), float(await created_ms(redis_client, keys, job_id)))]
    for prio in (2, 4, 5, 6, 7, 8):
        assert await redis_client.zcard(keys.queue(prio)) == 0
    ledger_ttl = await redis_client.pttl(keys.job("p3"))
    assert settings.ledger_ttl_s * 1000 - 5000 < ledger_ttl <= settings.ledger_ttl_s * 1000


async def test_not_before_and_deadline(
    redis_client: aioredis.Redis, producer: Producer, ledger: Ledger, keys: Keys, settings: Settings
) -> None:
    nb = datetime.now(UTC) + timedelta(hours=2)
    dl = nb + timedelta(hours=1)
    res = await producer.enqueue(body(), job_id="later", not_before=nb, deadline=dl)
    assert res.status == "accepted"
    nb_ms = int(nb.timestamp() * 1000)
    assert abs(await redis_client.zscore(keys.queue(9), "later") - nb_ms) <= 1
    # The record outlives the wait.
    delay_ms = nb_ms - await server_ms(redis_client)
    assert await redis_client.pttl(keys.job("later")) > settings.ledger_ttl_s * 1000 + delay_ms - 5000
    rec = await ledger.get("later")
    assert rec is not None and rec.not_before_ms is not None and rec.deadline_ms is not None
    assert abs(rec.not_before_ms - nb_ms) <= 1 and abs(rec.deadline_ms - int(dl.timestamp() * 1000)) <= 1
    # A not_before in the past runs now.
    past = datetime.now(UTC) - timedelta(minutes=5)
    await producer.enqueue(body("8613800000002"), job_id="past", not_before=past)
    assert await redis_client.zscore(keys.queue(9), "past") == await created_ms(redis_client, keys, "past")


async def test_job_ids(redis_client: aioredis.Redis, producer: Producer, ledger: Ledger) -> None:
    by_campaign = await producer.enqueue(body("+8613800000001"), campaign="spring.promo-1")
    assert by_campaign.job_id == "spring.promo-1:8613800000001"  # the number as normalize_number gives it
    rec = await ledger.get(by_campaign.job_id)
    assert rec is not None and rec.campaign == "spring.promo-1"
    explicit = await producer.enqueue(body(), job_id="a.b@d_e-f", campaign="spring")
    assert explicit.job_id == "a.b@d_e-f"
    random = await producer.enqueue(body())
    assert random.job_id is not None and re.fullmatch(r"[a-z2-7]{16}", random.job_id)
    rec = await ledger.get(random.job_id)
    assert rec is not None and rec.campaign is None
    many = await producer.enqueue_many([body(f"86{i}") for i in range(1200)])  # more than one draw of ids
    ids = [r.job_id for r in many]
    assert all(r.status == "accepted" for r in many) and len(set(ids)) == 1200
    assert all(i is not None and re.fullmatch(r"[a-z2-7]{16}", i) for i in ids)


def test_new_job_ids_are_16_safe_characters_with_80_random_bits() -> None:
    ids = new_job_ids(50_000)
    assert len(ids) == len(set(ids)) == 50_000
    assert all(re.fullmatch(r"[a-z2-7]{16}", i) for i in ids)
    # Every character position takes all 32 values (a stuck or short alphabet would show here), so each id
    # carries 16 x 5 = 80 bits.
    for pos in (0, 7, 15):
        assert len({i[pos] for i in ids}) == 32
    assert new_job_ids(1)[0] != new_job_ids(1)[0]


async def test_body_stored_compact_and_unicode(redis_client: aioredis.Redis, producer: Producer, keys: Keys) -> None:
    req = CallRequest.model_validate(body(playList=[{"templateId": "t", "templateParams": ["Zoë 東京"]}], playTimes=2))
    await producer.enqueue(req, job_id="u")
    stored = await redis_client.hmget(keys.job("u"), ["body", "b1", "b2", "called", "prio"])  # type: ignore[misc]
    # Over 64 bytes, the body is stored in pieces (body, b1, ...: see enqueue.lua and test_ledger_body.py).
    assert [b"".join(stored[:2]), *stored[2:]] == [
        json.dumps(req.body(), separators=(",", ":"), ensure_ascii=False).encode(),
        None,
        b"8613800000001",
        b"9",
    ]


async def test_duplicate_writes_nothing(
    redis_client: aioredis.Redis, producer: Producer, ledger: Ledger, keys: Keys
) -> None:
    await producer.enqueue(body(priority="2"), campaign="c1")
    before = await snapshot(redis_client)
    again = await producer.enqueue(body(priority="5", callerPresent="123"), campaign="c1")
    assert (again.job_id, again.status, again.state) == ("c1:8613800000001", "duplicate", "queued")
    assert await snapshot(redis_client) == before
    assert await redis_client.zcard(keys.queue(5)) == 0
    # The existing record's current state is reported.
    assert await ledger.mark_sending("c1:8613800000001")
    await ledger.mark_sent("c1:8613800000001", "SN-1")
    third = await producer.enqueue(body(), campaign="c1")
    assert (third.status, third.state) == ("duplicate", "sent")


@pytest.mark.parametrize(
    ("request_body", "options", "fields"),
    [
        ({"playList": [{"voiceId": "1"}]}, {}, {"called"}),
        (body(priority="0"), {}, {"priority"}),
        (body(priority=True), {}, {"priority"}),
        ({"called": "12ab", "playList": []}, {}, {"called", "playList"}),
        (body(playList=[{"templateParams": ["x"]}]), {}, {"playList[0]"}),
        (body(playList=[{"voiceId": "1", "templateParams": ["${x}"]}]), {}, {"playList[0].templateParams[0]"}),
        (body(playTimes=6, bogus=1), {}, {"playTimes", "bogus"}),
        ("not a dict", {}, {"body"}),
        (body(), {"job_id": "has space"}, {"id"}),
        (body(), {"job_id": "x" * 129}, {"id"}),
        (body(), {"campaign": "no:colon"}, {"campaign"}),
        (body(), {"campaign": ""}, {"campaign"}),
        (body(), {"not_before": datetime(2030, 1, 1)}, {"not_before"}),
        (body(), {"deadline": datetime(2030, 1, 1)}, {"deadline"}),
        (body(), {"deadline": datetime.now(UTC) - timedelta(seconds=1)}, {"deadline"}),
        (
            body(),
            {"not_before": datetime.now(UTC) + timedelta(hours=2), "deadline": datetime.now(UTC) + timedelta(hours=1)},
            {"deadline"},
        ),
        (body(priority="x"), {"job_id": "", "campaign": "bad/name"}, {"priority", "id", "campaign"}),
    ],
)
async def test_invalid_input_stores_nothing(
    redis_client: aioredis.Redis, producer: Producer, request_body: Any, options: dict[str, Any], fields: set[str]
) -> None:
    with pytest.raises(InvalidRequest) as exc_info:
        await producer.enqueue(request_body, **options)
    errors = exc_info.value.errors
    assert {e.field for e in errors} == fields
    assert all(e.rule for e in errors)
    assert await redis_client.dbsize() == 0


async def test_enqueue_many_mixed(redis_client: aioredis.Redis, producer: Producer, ledger: Ledger, keys: Keys) -> None:
    await producer.enqueue(body("999"), campaign="camp")  # exists before the batch
    nb = datetime.now(UTC) + timedelta(minutes=30)
    items: list[Any] = [
        body("111", priority="1"),
        {"called": "bad!", "playList": [{"voiceId": "1"}]},
        body("222"),
        body("111", priority="4"),  # same campaign + number as item 0
        body("999"),  # already in Redis
        CallJob(body("333"), job_id="own-id", not_before=nb),
        CallJob(body("444"), job_id="bad id"),
        CallJob(body("555"), campaign="other"),
        42,
    ]
    results = await producer.enqueue_many(items, campaign="camp")
    assert [r.index for r in results] == list(range(len(items)))
    assert [(r.status, r.state) for r in results] == [
        ("accepted", "queued"),
        ("rejected", None),
        ("accepted", "queued"),
        ("duplicate", "queued"),
        ("duplicate", "queued"),
        ("accepted", "queued"),
        ("rejected", None),
        ("accepted", "queued"),
        ("rejected", None),
    ]
    assert [r.job_id for r in results] == [
        "camp:111", None, "camp:222", "camp:111", "camp:999", "own-id", "bad id", "other:555", None,
    ]  # fmt: skip
    assert [e.field for e in results[1].errors] == ["called"]
    assert [e.field for e in results[6].errors] == ["id"]
    assert [e.field for e in results[8].errors] == ["body"]
    # Only the good items are stored: 5 ledger records (no arq jobs) + their queues + the sequence counter,
    # and one "queued" event each in the event stream.
    assert await redis_client.zrange(keys.queue(1), 0, -1) == [b"camp:111"]
    assert await redis_client.zcard(keys.queue(4)) == 0
    assert set(await redis_client.zrange(keys.queue(9), 0, -1)) == {b"camp:222", b"camp:999", b"own-id", b"other:555"}
    assert await redis_client.dbsize() == 5 + 2 + 1 + 1
    assert await redis_client.xlen(keys.events) == 5
    assert await redis_client.get(keys.seq) == b"5"
    own = await ledger.get("own-id")
    assert own is not None and own.campaign == "camp" and own.not_before_ms is not None
    assert abs(await redis_client.zscore(keys.queue(9), "own-id") - own.not_before_ms) <= 1


async def test_enqueue_many_chunks_and_in_batch_duplicates(
    redis_client: aioredis.Redis, producer: Producer, keys: Keys
) -> None:
    items = [body(f"86{i:04d}", priority=str(1 + i % 9)) for i in range(50)]
    items += [body("860003"), body("860049")]  # repeats land in other chunks
    results = await producer.enqueue_many(items, campaign="big", chunk=7)
    assert [r.status for r in results] == ["accepted"] * 50 + ["duplicate"] * 2
    assert [r.job_id for r in results[50:]] == ["big:860003", "big:860049"]
    assert sum([await redis_client.zcard(keys.queue(p)) for p in range(1, 10)]) == 50
    assert await redis_client.zcard(keys.queue(1)) == 6  # i = 0, 9, ..., 45


async def test_enqueue_many_bad_batch_options(redis_client: aioredis.Redis, producer: Producer) -> None:
    with pytest.raises(InvalidRequest) as exc_info:
        await producer.enqueue_many([body()], campaign="bad campaign")
    assert [e.field for e in exc_info.value.errors] == ["campaign"]
    assert await redis_client.dbsize() == 0


async def test_redis_error_is_raised_and_item_left_out(
    redis_client: aioredis.Redis, producer: Producer, keys: Keys
) -> None:
    await redis_client.set(keys.queue(3), b"not a sorted set")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await producer.enqueue(body(priority="3"), job_id="w")
    with pytest.raises(ResponseError, match="WRONGTYPE"):  # not an ExceptionGroup
        await producer.enqueue_many([body("1"), body("2", priority="3")], campaign="w", chunk=1)
    # Each item is all or nothing. (The good one may or may not have been sent before the failure.)
    assert await redis_client.exists(keys.job("w"), keys.job("w:2")) == 0
    assert await redis_client.exists(keys.job("w:1")) in (0, 1)
    assert await redis_client.keys("arq:*") == []


async def test_requeue_from_dead(
    redis_client: aioredis.Redis, producer: Producer, ledger: Ledger, keys: Keys, settings: Settings
) -> None:
    await producer.enqueue(body(priority="4"), job_id="j1")
    assert await ledger.mark_sending("j1")
    assert await ledger.dead_letter("j1", "gave up after 6 attempts")
    # What arq leaves behind after the run that dead-lettered it, and a foreign arq job.
    await redis_client.zrem(keys.queue(4), "j1")
    await redis_client.set(result_key_prefix + "j1", b"{}", ex=3600)
    await redis_client.set(retry_key_prefix + "j1", b"3", ex=3600)
    await redis_client.set(keys.arq_job("j1"), b"left behind")

    sub = redis_client.pubsub()
    await sub.subscribe(keys.wake)
    assert await producer.requeue("j1") is True
    assert await published(sub, 0.5) == [keys.queue(4).encode()]  # its queue's idle workers start it now
    await sub.aclose()
    rec = await ledger.get("j1")
    assert rec is not None and rec.state == State.QUEUED and rec.attempts == 0
    assert await redis_client.zscore(keys.dead, "j1") is None
    assert await redis_client.zscore(keys.queue(4), "j1") == rec.updated_ms
    # As a new job: no arq keys at all (the worker's claim writes a fresh arq job).
    assert await redis_client.exists(keys.arq_job("j1"), result_key_prefix + "j1", retry_key_prefix + "j1") == 0
    # Queued now: not requeueable again.
    assert await producer.requeue("j1") is False
    assert await producer.requeue("nope") is False


async def test_requeue_rules(redis_client: aioredis.Redis, producer: Producer, ledger: Ledger, keys: Keys) -> None:
    for job_id in ("failed", "unknown", "sent", "cancelled", "busy"):
        await producer.enqueue(body(), job_id=job_id)
        assert await ledger.mark_sending(job_id)
    await ledger.mark_final("failed", State.FAILED, "retCode 5")
    await ledger.mark_final("unknown", State.UNKNOWN, "timeout")
    await ledger.mark_sent("sent", "SN")
    await ledger.mark_final("cancelled", State.CANCELLED)
    await ledger.mark_final("busy", State.FAILED)
    await redis_client.set(in_progress_key_prefix + "busy", b"1", px=10_000)
    assert await producer.requeue("failed") is True
    assert await producer.requeue("unknown") is True
    assert await producer.requeue("sent") is False
    assert await producer.requeue("cancelled") is False
    # An arq run is still finishing: its cleanup would delete the new job.
    assert await producer.requeue("busy") is False
    states = {j: (await ledger.get(j)).state for j in ("failed", "unknown", "sent", "cancelled", "busy")}  # type: ignore[union-attr]
    assert states == {
        "failed": State.QUEUED, "unknown": State.QUEUED, "sent": State.SENT,
        "cancelled": State.CANCELLED, "busy": State.FAILED,
    }  # fmt: skip


async def test_requeue_dead(redis_client: aioredis.Redis, producer: Producer, ledger: Ledger, keys: Keys) -> None:
    for i in range(5):
        await producer.enqueue(body(f"86{i}", priority=str(i + 1)), job_id=f"d{i}")
        assert await ledger.dead_letter(f"d{i}", "boom")
    await redis_client.zadd(keys.dead, {"gone": 1})  # record expired meanwhile
    assert await producer.requeue_dead(chunk=2) == 5
    assert await redis_client.zcard(keys.dead) == 0
    for i in range(5):
        rec = await ledger.get(f"d{i}")
        assert rec is not None and rec.state == State.QUEUED
        assert await redis_client.zscore(keys.queue(i + 1), f"d{i}") is not None
    assert await ledger.list_dead() == []


async def test_module_level_helpers(redis_client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    one = await enqueue_call(body(), job_id="m1", settings=settings)
    assert one.status == "accepted"
    many = await enqueue_many([body("1"), body("2"), body("1")], campaign="m", settings=settings)
    assert [r.status for r in many] == ["accepted", "accepted", "duplicate"]
    assert await redis_client.zcard(keys.queue(9)) == 3
    with pytest.raises(InvalidRequest):
        await enqueue_call({"called": "1"}, settings=settings)


async def test_decoding_client(redis_url: str, settings: Settings) -> None:
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        producer = Producer(r, settings)
        assert (await producer.enqueue(body(), job_id="x")).status == "accepted"
        assert (await producer.enqueue(body(), job_id="x")).state == "queued"
        res = await producer.enqueue_many([body("1"), body("1")], campaign="d")
        assert [x.status for x in res] == ["accepted", "duplicate"]
        await Ledger(r, settings).dead_letter("x", "boom")
        assert await producer.requeue_dead() == 1
    finally:
        await r.aclose()


async def test_a_batch_wakes_each_queue_it_made_due_once_and_no_other(
    redis_client: aioredis.Redis, producer: Producer, keys: Keys
) -> None:
    sub = redis_client.pubsub()
    await sub.subscribe(keys.wake)
    later = datetime.now(UTC) + timedelta(hours=1)
    await producer.enqueue_many([body(priority="2"), body(priority="2", called="8613800000002"),
                                 body(priority="7", called="8613800000003")])
    await producer.enqueue_many([body(called="8613800000004")], not_before=later)  # due in an hour
    assert sorted(await published(sub, 0.5)) == [keys.queue(2).encode(), keys.queue(7).encode()]
    await sub.aclose()


@pytest.mark.parametrize("called", ["13800000077\n", "13800000077\r\n", "+13800000077\n"])
async def test_a_called_with_a_line_break_is_refused_and_stores_nothing(
    redis_client: aioredis.Redis, producer: Producer, called: str
) -> None:
    """It used to pass (``$`` matches before a final newline), skip the do-not-call list and the
    campaign's dedupe (its key differed from the number's), and store the job id "c:13800000077\n"."""
    before = await snapshot(redis_client)
    with pytest.raises(InvalidRequest) as exc:
        await producer.enqueue(body(called), campaign="c")
    assert [e.field for e in exc.value.errors] == ["called"]
    [res] = await producer.enqueue_many([body(called)], campaign="c")
    assert res.status == "rejected" and res.errors[0].field == "called"
    assert await snapshot(redis_client) == before


async def test_a_campaign_job_id_is_the_normalised_number_so_plus_and_digits_dedupe(producer: Producer) -> None:
    first = await producer.enqueue(body("+8613800000009"), campaign="dd")
    again = await producer.enqueue(body("8613800000009"), campaign="dd")
    assert first.job_id == again.job_id == "dd:8613800000009"
    assert (first.status, again.status) == ("accepted", "duplicate")
    longest = await producer.enqueue(body("1" * 32), campaign="x" * 64)
    assert longest.status == "accepted" and longest.job_id == "x" * 64 + ":" + "1" * 32


@pytest.mark.parametrize("taken", ["spring:8613800000001", "spring:8613800000001:r1", "order-1:r1", ":"])
async def test_a_producer_cannot_take_an_id_the_dialer_derives(
    redis_client: aioredis.Redis, producer: Producer, taken: str
) -> None:
    """A producer's id with ':' could be a campaign row's (<campaign>:<number>) or a redial's (<id>:r<k>):
    taken in advance, it silently turned the real one into a "duplicate". ':' is the dialer's."""
    before = await snapshot(redis_client)
    with pytest.raises(InvalidRequest) as exc:
        await producer.enqueue(body(), job_id=taken)
    [err] = exc.value.errors
    assert err.field == "id" and "no ':'" in err.rule and "reserved" in err.rule
    [res] = await producer.enqueue_many([CallJob(body(), job_id=taken)])
    assert res.status == "rejected" and res.errors[0].field == "id" and "reserved" in res.errors[0].rule
    assert await snapshot(redis_client) == before


async def test_the_dialers_own_derived_ids_keep_working(producer: Producer, ledger: Ledger) -> None:
    row = await producer.enqueue(body("+8613800000001"), campaign="spring")
    assert (row.job_id, row.status) == ("spring:8613800000001", "accepted")
    redial = await producer.enqueue(body("+8613800000001"), derived_id="spring:8613800000001:r1", campaign="spring")
    assert (redial.job_id, redial.status) == ("spring:8613800000001:r1", "accepted")
    assert (await ledger.get("spring:8613800000001:r1")) is not None
    with pytest.raises(InvalidRequest) as exc:  # a derived id is checked as a job id
        await producer.enqueue(body(), derived_id="x" * 126 + ":r1")
    assert exc.value.errors[0].field == "id"
    with pytest.raises(InvalidRequest):
        await producer.enqueue(body(), job_id="a", derived_id="a:r1")
