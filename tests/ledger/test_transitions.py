"""The dial ledger against a real Redis: every transition, claim verdicts, TTLs, serial index, dead letters."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.helpers import server_ms
from worker.ledger.producer import Producer
from worker.ledger.record import JobRecord
from worker.ledger.states import FINAL_STATES, STALE_ERROR, State
from worker.ledger.transitions import Ledger
from worker.models import CallRequest
from worker.settings import Settings
from worker.store.keys import Keys

BODY: dict[str, Any] = {
    "called": "+8613800000001",
    "playList": [{"templateId": "tpl-1", "templateParams": ["Zoë", "42"]}],
    "callBackUrl": "https://cb.example.com/voice",
    "priority": "2",
}




async def new_job(redis_client: aioredis.Redis, settings: Settings, job_id: str = "job-1") -> str:
    res = await Producer(redis_client, settings).enqueue(BODY, job_id=job_id, campaign="promo")
    assert res.status == "accepted"
    return job_id


async def rec(ledger: Ledger, job_id: str) -> JobRecord:
    record = await ledger.get(job_id)
    assert record is not None
    return record


def test_final_states() -> None:
    assert frozenset({"sent", "failed", "dead", "unknown", "cancelled", "expired", "suppressed"}) == FINAL_STATES
    assert State.QUEUED not in FINAL_STATES and State.SENDING not in FINAL_STATES


async def test_new_record_fields(redis_client: aioredis.Redis, settings: Settings, ledger: Ledger) -> None:
    before = await server_ms(redis_client)
    job_id = await new_job(redis_client, settings)
    r = await rec(ledger, job_id)
    assert r.state == State.QUEUED and r.priority == 2 and r.called == "+8613800000001"
    assert r.campaign == "promo" and r.attempts == 0 and r.last_error is None and r.call_serial_no is None
    assert r.body == CallRequest.model_validate(BODY).body()
    assert r.request() == CallRequest.model_validate(BODY)
    assert before <= r.created_ms == r.updated_ms <= await server_ms(redis_client)
    assert r.sent_ms is None and r.not_before_ms is None and r.deadline_ms is None


async def test_missing(redis_client: aioredis.Redis, ledger: Ledger) -> None:
    assert await ledger.get("nope") is None
    assert await ledger.claim("nope") == ("missing", None)
    assert await ledger.mark_sending("nope") is False
    await ledger.mark_sent("nope", "serial-x")
    assert await ledger.mark_retry("nope", "err") is False
    assert await ledger.mark_final("nope", State.FAILED, "err") is False
    assert await ledger.dead_letter("nope", "err") is False
    assert await ledger.job_for_serial("serial-x") is None
    # No transition may create a partial record out of nothing.
    assert await redis_client.dbsize() == 0


async def test_happy_path(redis_client: aioredis.Redis, settings: Settings, ledger: Ledger, keys: Keys) -> None:
    job_id = await new_job(redis_client, settings)
    verdict, r = await ledger.claim(job_id)
    assert verdict == "run" and r is not None and r.state == State.QUEUED
    assert await ledger.mark_sending(job_id) is True
    r = await rec(ledger, job_id)
    assert r.state == State.SENDING and r.attempts == 1
    await ledger.mark_sent(job_id, "SN-123")
    r = await rec(ledger, job_id)
    assert r.state == State.SENT and r.call_serial_no == "SN-123"
    assert r.sent_ms is not None and r.created_ms <= r.sent_ms == r.updated_ms
    assert await ledger.job_for_serial("SN-123") == job_id
    ttl = await redis_client.pttl(keys.serial("SN-123"))
    assert settings.ledger_ttl_s * 1000 - 5000 < ttl <= settings.ledger_ttl_s * 1000
    verdict, r = await ledger.claim(job_id)
    assert verdict == "final" and r is not None and r.state == State.SENT
    assert await ledger.mark_sending(job_id) is False


async def test_mark_sending_refused_when_not_queued(
    redis_client: aioredis.Redis, settings: Settings, ledger: Ledger
) -> None:
    job_id = await new_job(redis_client, settings)
    assert await ledger.mark_final(job_id, State.CANCELLED, "campaign cancelled") is True
    assert await ledger.mark_sending(job_id) is False
    r = await rec(ledger, job_id)
    assert r.state == State.CANCELLED and r.attempts == 0 and r.last_error == "campaign cancelled"
    # Already sending: a second worker must not send as well.
    job2 = await new_job(redis_client, settings, "job-2")
    assert await ledger.mark_sending(job2) is True
    assert await ledger.mark_sending(job2) is False
    assert (await rec(ledger, job2)).attempts == 1


async def test_retry_keeps_attempts(redis_client: aioredis.Redis, settings: Settings, ledger: Ledger) -> None:
    job_id = await new_job(redis_client, settings)
    assert await ledger.mark_sending(job_id)
    assert await ledger.mark_retry(job_id, "retryable HTTP 500") is True
    r = await rec(ledger, job_id)
    assert r.state == State.QUEUED and r.attempts == 1 and r.last_error == "retryable HTTP 500"
    assert await ledger.mark_sending(job_id)
    assert (await rec(ledger, job_id)).attempts == 2
    await ledger.mark_sent(job_id, "SN-1")
    # A late retry must not reopen a sent job.
    assert await ledger.mark_retry(job_id, "late") is False
    r = await rec(ledger, job_id)
    assert r.state == State.SENT and r.last_error == "retryable HTTP 500"


async def test_claim_stale_becomes_unknown(redis_client: aioredis.Redis, settings: Settings, ledger: Ledger) -> None:
    job_id = await new_job(redis_client, settings)
    assert await ledger.mark_sending(job_id)
    # The worker dies here; the job's next run claims it.
    verdict, r = await ledger.claim(job_id)
    assert verdict == "stale" and r is not None
    assert r.state == State.UNKNOWN and r.last_error == STALE_ERROR == "worker died mid-request"
    assert r.attempts == 1
    verdict, _ = await ledger.claim(job_id)
    assert verdict == "final"


async def test_claim_stale_redials_when_configured(redis_client: aioredis.Redis, settings: Settings) -> None:
    redial = settings.model_copy(update={"redial_ambiguous": "always"})
    ledger = Ledger(redis_client, redial)
    job_id = await new_job(redis_client, redial)
    assert await ledger.mark_sending(job_id)
    verdict, r = await ledger.claim(job_id)
    assert verdict == "run" and r is not None
    assert r.state == State.QUEUED and r.last_error == STALE_ERROR and r.attempts == 1
    assert await ledger.mark_sending(job_id)
    assert (await rec(ledger, job_id)).attempts == 2


@pytest.mark.parametrize("state", [State.FAILED, State.UNKNOWN, State.EXPIRED, State.SUPPRESSED, State.CANCELLED])
async def test_mark_final(redis_client: aioredis.Redis, settings: Settings, ledger: Ledger, state: State) -> None:
    job_id = await new_job(redis_client, settings)
    assert await ledger.mark_sending(job_id)
    assert await ledger.mark_final(job_id, state, f"because {state}") is True
    r = await rec(ledger, job_id)
    assert r.state == state and r.last_error == f"because {state}"
    assert (await ledger.claim(job_id))[0] == "final"
    # The first final state wins.
    assert await ledger.mark_final(job_id, State.FAILED if state != State.FAILED else State.EXPIRED) is False
    assert (await rec(ledger, job_id)).state == state


async def test_mark_final_without_error_keeps_last(
    redis_client: aioredis.Redis, settings: Settings, ledger: Ledger
) -> None:
    job_id = await new_job(redis_client, settings)
    assert await ledger.mark_sending(job_id)
    assert await ledger.mark_retry(job_id, "HTTP 500")
    assert await ledger.mark_final(job_id, State.EXPIRED)
    assert (await rec(ledger, job_id)).last_error == "HTTP 500"


async def test_mark_final_rejects_other_states(
    redis_client: aioredis.Redis, settings: Settings, ledger: Ledger
) -> None:
    job_id = await new_job(redis_client, settings)
    for bad in (State.SENT, State.DEAD, State.QUEUED, State.SENDING):
        with pytest.raises(ValueError, match="mark_final"):
            await ledger.mark_final(job_id, bad)
    assert (await rec(ledger, job_id)).state == State.QUEUED


async def test_final_never_overwrites_sent(redis_client: aioredis.Redis, settings: Settings, ledger: Ledger) -> None:
    job_id = await new_job(redis_client, settings)
    assert await ledger.mark_sending(job_id)
    await ledger.mark_sent(job_id, "SN-9")
    sent = await rec(ledger, job_id)
    for state in (State.FAILED, State.UNKNOWN, State.CANCELLED, State.EXPIRED, State.SUPPRESSED):
        assert await ledger.mark_final(job_id, state, "late") is False
    assert await ledger.dead_letter(job_id, "late") is False
    after = await rec(ledger, job_id)
    assert after.state == State.SENT and after.call_serial_no == "SN-9" and after.sent_ms == sent.sent_ms
    assert after.last_error is None
    assert await ledger.list_dead() == []


async def test_sent_wins_over_cancel_in_flight(
    redis_client: aioredis.Redis, settings: Settings, ledger: Ledger
) -> None:
    """Cancelled (or marked unknown) while the request was in flight: the call exists, so it is recorded."""
    job_id = await new_job(redis_client, settings)
    assert await ledger.mark_sending(job_id)
    assert await ledger.mark_final(job_id, State.CANCELLED, "campaign cancelled")
    await ledger.mark_sent(job_id, "SN-late")
    r = await rec(ledger, job_id)
    assert r.state == State.SENT and r.call_serial_no == "SN-late" and r.sent_ms is not None
    assert await ledger.job_for_serial("SN-late") == job_id


async def test_second_serial_keeps_first(redis_client: aioredis.Redis, settings: Settings, ledger: Ledger) -> None:
    job_id = await new_job(redis_client, settings)
    assert await ledger.mark_sending(job_id)
    await ledger.mark_sent(job_id, "SN-A")
    first = await rec(ledger, job_id)
    await ledger.mark_sent(job_id, "SN-B")
    r = await rec(ledger, job_id)
    assert r.call_serial_no == "SN-A" and r.sent_ms == first.sent_ms
    # Both calls' callbacks still find the job.
    assert await ledger.job_for_serial("SN-A") == job_id
    assert await ledger.job_for_serial("SN-B") == job_id


async def test_dead_letter_and_list(
    redis_client: aioredis.Redis, settings: Settings, ledger: Ledger, keys: Keys
) -> None:
    ids = [await new_job(redis_client, settings, f"job-{i}") for i in range(3)]
    for job_id in ids:
        assert await ledger.mark_sending(job_id)
        assert await ledger.dead_letter(job_id, f"gave up on {job_id}") is True
    r = await rec(ledger, ids[0])
    assert r.state == State.DEAD and r.last_error == "gave up on job-0" and r.attempts == 1
    score = await redis_client.zscore(keys.dead, ids[0])
    assert score is not None and abs(score - r.updated_ms) < 1
    dead = await ledger.list_dead()
    assert {d.job_id for d in dead} == set(ids)
    assert [d.updated_ms for d in dead] == sorted((d.updated_ms for d in dead), reverse=True)
    assert len(await ledger.list_dead(limit=2)) == 2
    # A record that has expired is skipped, not an error.
    await redis_client.delete(keys.job(ids[1]))
    assert {d.job_id for d in await ledger.list_dead()} == {ids[0], ids[2]}
    # Dead-lettering again records the newer reason; other final states are left alone.
    assert await ledger.dead_letter(ids[0], "second reason") is True
    assert (await rec(ledger, ids[0])).last_error == "second reason"


async def test_dead_set_trims_expired_members(
    redis_client: aioredis.Redis, settings: Settings, ledger: Ledger, keys: Keys
) -> None:
    old_ms = await server_ms(redis_client) - settings.ledger_ttl_s * 1000 - 60_000
    await redis_client.zadd(keys.dead, {"ancient": old_ms})
    job_id = await new_job(redis_client, settings)
    assert await ledger.dead_letter(job_id, "x")
    assert await redis_client.zrange(keys.dead, 0, -1) == [job_id.encode()]


async def test_every_transition_refreshes_ttl(
    redis_client: aioredis.Redis, settings: Settings, ledger: Ledger, keys: Keys
) -> None:
    full = settings.ledger_ttl_s * 1000
    job_id = await new_job(redis_client, settings)
    key = keys.job(job_id)

    async def shorten() -> None:
        await redis_client.pexpire(key, 10_000)

    async def assert_refreshed() -> None:
        assert full - 5000 < await redis_client.pttl(key) <= full

    await assert_refreshed()
    await shorten()
    updated = (await rec(ledger, job_id)).updated_ms
    assert await ledger.mark_sending(job_id)
    await assert_refreshed()
    await shorten()
    assert await ledger.mark_retry(job_id, "again")
    await assert_refreshed()
    assert await ledger.mark_sending(job_id)
    await shorten()
    assert (await ledger.claim(job_id))[0] == "stale"
    await assert_refreshed()
    assert (await rec(ledger, job_id)).updated_ms >= updated

    job2 = await new_job(redis_client, settings, "job-2")
    await redis_client.pexpire(keys.job(job2), 10_000)
    assert await ledger.dead_letter(job2, "x")
    assert full - 5000 < await redis_client.pttl(keys.job(job2)) <= full

    job3 = await new_job(redis_client, settings, "job-3")
    await redis_client.pexpire(keys.job(job3), 10_000)
    await ledger.mark_sent(job3, "SN-3")
    assert full - 5000 < await redis_client.pttl(keys.job(job3)) <= full
    assert full - 5000 < await redis_client.pttl(keys.serial("SN-3")) <= full
    # Every key we wrote has a TTL, except the shared sorted sets: arq's queues (members leave when their job
    # runs), the dead-letter and unknown sets (trimmed by score), the one enqueue sequence counter and the
    # event stream (trimmed by length and age).
    async for k in redis_client.scan_iter():
        shared = (keys.dead.encode(), keys.unknown.encode(), keys.seq.encode(), keys.events.encode())
        if k not in shared and not k.startswith(keys.queue(0)[:-1].encode()):
            assert await redis_client.pttl(k) > 0, k


async def test_as_dict_shape(redis_client: aioredis.Redis, settings: Settings, ledger: Ledger) -> None:
    job_id = await new_job(redis_client, settings)
    assert await ledger.mark_sending(job_id)
    await ledger.mark_sent(job_id, "SN-1")
    d = (await rec(ledger, job_id)).as_dict()
    assert list(d) == [
        "id", "state", "priority", "called", "campaign", "attempts", "last_error", "call_serial_no",
        "created_at", "updated_at", "sent_at", "not_before", "deadline", "body", "outcome", "release_reason",
        "talk_duration_s", "redial_of", "redials", "evidence", "grace_redialled", "status_callback_url",
    ]  # fmt: skip
    assert d["outcome"] is None and d["redial_of"] is None and d["redials"] == []
    assert d["id"] == job_id and d["state"] == "sent" and d["priority"] == 2 and d["call_serial_no"] == "SN-1"
    assert d["created_at"].endswith("Z") and d["not_before"] is None and d["last_error"] is None
    assert json.loads(json.dumps(d)) == d


async def test_decoding_client(redis_url: str, settings: Settings) -> None:
    """Works the same with a client that decodes responses."""
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        ledger = Ledger(r, settings)
        job_id = await new_job(r, settings)
        assert (await ledger.claim(job_id))[0] == "run"
        assert await ledger.mark_sending(job_id)
        await ledger.mark_sent(job_id, "SN-d")
        assert await ledger.job_for_serial("SN-d") == job_id
        assert (await rec(ledger, job_id)).state == State.SENT
    finally:
        await r.aclose()


async def test_the_first_outcome_of_a_call_stands(
    redis_client: aioredis.Redis, settings: Settings, ledger: Ledger
) -> None:
    """Issue 14 item 1: a later, different outcome used to replace the first one (and move the counters)."""
    job = await new_job(redis_client, settings)
    assert await ledger.mark_sending(job)
    await ledger.mark_sent(job, "SN-first")
    first = await ledger.record_outcome(job, "answered", "1", {"tk": "6"})
    assert first is not None and (first.outcome, first.release_reason, first.talk_duration_s) == ("answered", "1", 6)
    again = await ledger.record_outcome(job, "answered", "0", {"tk": "9"})  # the same outcome: idempotent
    later = await ledger.record_outcome(job, "unanswered", "4", {"tk": "0"})  # a different one: ignored
    for r in (again, later, await ledger.get(job)):
        assert r is not None and (r.outcome, r.release_reason, r.talk_duration_s) == ("answered", "1", 6)


async def test_a_record_holding_a_non_ascii_talk_duration_stays_readable(
    redis_client: aioredis.Redis, settings: Settings, ledger: Ledger, keys: Keys
) -> None:
    """Issue 14 item 2: "²" passed str.isdigit() and then failed int(): every read of the job raised."""
    job = await new_job(redis_client, settings)
    for stored in ("²", "٣", "1_0", " 7", "-1"):
        await redis_client.hset(keys.job(job), "tk", stored)  # type: ignore[misc]  # as an old callback left it
        assert (await rec(ledger, job)).talk_duration_s is None, stored
    await redis_client.hset(keys.job(job), "tk", "12")  # type: ignore[misc]
    assert (await rec(ledger, job)).talk_duration_s == 12
