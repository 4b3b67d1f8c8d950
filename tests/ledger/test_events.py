"""Issue 16 item 1: the event stream. Each ledger transition a producer cares about writes one entry in the
same script as the transition; a refused transition writes none. Read with the Python helper, consumer groups
(as documented for other languages) and ``dialer events``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.helpers import run_dialer, settings_env
from worker.campaigns.control import Campaigns, CampaignSpec
from worker.ledger.events import Event, EventStream, events
from worker.ledger.producer import Producer
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.ledger.unknowns import Unknowns
from worker.settings import Settings
from worker.store.keys import Keys

BODY = {"called": "8613800000001", "playList": [{"voiceId": "100001"}], "priority": "3"}


async def all_events(redis: aioredis.Redis, settings: Settings, **kw: Any) -> list[Event]:
    return [e async for e in events(redis, settings, **kw)]


def kinds(evs: list[Event]) -> list[tuple[str, str, str, int]]:
    return [(e.type, e.job_id, e.state, e.attempt) for e in evs]


async def test_a_job_s_life_is_its_events_in_order(redis_client: aioredis.Redis, settings: Settings) -> None:
    await Campaigns(redis_client, settings).create("promo", CampaignSpec())
    producer, ledger = Producer(redis_client, settings), Ledger(redis_client, settings)
    await producer.enqueue(BODY, campaign="promo")  # the id is promo:8613800000001
    job = "promo:8613800000001"
    assert await ledger.mark_sending(job)
    assert await ledger.mark_retry(job, "retryable createVoiceNotification failed http=500")
    assert await ledger.mark_sending(job)
    assert await ledger.mark_unsent(job)  # the request never left: not an event
    assert await ledger.mark_sending(job)
    await ledger.mark_sent(job, "SN-1")
    await ledger.record_outcome(job, "unanswered", "4", {"tk": "0"})
    await ledger.record_outcome(job, "unanswered", "4")  # the same outcome again: nothing new
    await producer.enqueue(BODY, derived_id=job + ":r1", campaign="promo")
    assert await ledger.link_redial(job, job + ":r1", 1)
    assert await ledger.link_redial(job, job + ":r1", 1) is False  # idempotent: no second event
    evs = await all_events(redis_client, settings)
    assert kinds(evs) == [
        ("queued", job, "queued", 0),
        ("retrying", job, "queued", 1),
        ("sent", job, "sent", 2),
        ("outcome", job, "sent", 2),
        ("queued", job + ":r1", "queued", 0),
        ("redial", job, "sent", 2),
    ]
    assert all(e.campaign == "promo" for e in evs)
    assert evs[0].data == {"priority": 3}
    assert evs[1].data == {"error": "retryable createVoiceNotification failed http=500"}
    assert evs[2].data == {"serial": "SN-1"}
    assert evs[3].data == {"outcome": "unanswered", "release_reason": "4", "talk_duration_s": 0}
    assert evs[5].data == {"redial": job + ":r1", "number": 1, "redial_of": job}
    ids = [e.id for e in evs]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) and len(set(ids)) == len(ids)
    d = evs[2].as_dict()
    assert list(d) == ["id", "type", "job_id", "campaign", "state", "attempt", "time", "data"]
    assert d["time"].endswith("Z")


async def test_final_states_and_refusals(redis_client: aioredis.Redis, settings: Settings) -> None:
    producer, ledger = Producer(redis_client, settings), Ledger(redis_client, settings)
    for j in ("f", "u", "d", "x", "stale"):
        await producer.enqueue(BODY, job_id=j)
    assert await ledger.mark_sending("f")
    assert await ledger.mark_final("f", State.FAILED, "permanent retCode 5")
    assert not await ledger.mark_final("f", State.UNKNOWN, "late")  # refused: no event
    assert await ledger.mark_sending("u")
    assert await ledger.mark_final("u", State.UNKNOWN, "ambiguous", serial="SN-U")
    assert await ledger.dead_letter("d", "gave up")
    await ledger.reject("x", "malformed job")
    assert await ledger.mark_sending("stale")
    assert (await ledger.claim("stale"))[0] == "stale"
    await ledger.mark_evidenced("u", "SN-U")
    evs = [e for e in await all_events(redis_client, settings) if e.type != "queued"]
    assert [(e.type, e.job_id, e.data) for e in evs] == [
        ("failed", "f", {"error": "permanent retCode 5"}),
        ("unknown", "u", {"error": "ambiguous", "serial": "SN-U"}),
        ("dead", "d", {"error": "gave up"}),
        ("dead", "x", {"error": "malformed job"}),
        ("unknown", "stale", {"error": "worker died mid-request"}),
        ("sent", "u", {"serial": "SN-U", "evidence": "release"}),
    ]


async def test_campaign_checks_requeue_and_the_grace_period_emit_too(
    redis_client: aioredis.Redis, settings: Settings
) -> None:
    s = settings.model_copy(update={"redial_ambiguous": "after-grace"})
    campaigns = Campaigns(redis_client, s)
    await campaigns.create("c", CampaignSpec())
    producer, ledger = Producer(redis_client, s), Ledger(redis_client, s)
    await producer.enqueue(BODY, campaign="c")
    await producer.enqueue({**BODY, "called": "8613800000002"}, campaign="c")
    await campaigns.cancel("c")
    await producer.enqueue(BODY, job_id="solo")
    assert await ledger.dead_letter("solo", "gave up")
    assert await producer.requeue("solo")
    await producer.enqueue(BODY, job_id="lost")
    assert await ledger.mark_sending("lost")
    assert (await ledger.claim("lost"))[0] == "stale"
    keys = Keys(s.key_prefix)
    await redis_client.zadd(keys.unknown, {"lost": 1})
    await Unknowns(redis_client, s).sweep()
    evs = [e for e in await all_events(redis_client, s) if e.type not in ("queued",) or e.data != {"priority": 3}]
    assert [(e.type, e.job_id, e.data) for e in evs] == [
        ("cancelled", "c:8613800000001", {"error": "campaign cancelled"}),
        ("cancelled", "c:8613800000002", {"error": "campaign cancelled"}),
        ("dead", "solo", {"error": "gave up"}),
        ("queued", "solo", {"requeued": "dead"}),
        ("unknown", "lost", {"error": "worker died mid-request"}),
        ("no_evidence", "lost", {"grace_s": s.unknown_grace_s}),
        ("queued", "lost", {"grace_redial": True}),
    ]


async def test_the_stream_is_capped_and_can_be_off(redis_client: aioredis.Redis, settings: Settings) -> None:
    keys = Keys(settings.key_prefix)
    capped = settings.model_copy(update={"events_max_len": 100})
    await Producer(redis_client, capped).enqueue_many([{**BODY, "called": f"86138{i:08d}"} for i in range(2000)])
    # Approximate trimming removes whole nodes (100 entries by default): at most one node over the cap.
    assert 100 <= await redis_client.xlen(keys.events) <= 200
    await redis_client.delete(keys.events)
    off = settings.model_copy(update={"events_max_len": 0})
    await Producer(redis_client, off).enqueue(BODY, job_id="quiet")
    assert await redis_client.exists(keys.events) == 0


async def test_age_trimming(redis_client: aioredis.Redis, settings: Settings) -> None:
    keys = Keys(settings.key_prefix)
    for i in range(300):  # entries a day old (ids carry their time)
        await redis_client.xadd(keys.events, {"type": "queued", "job": f"old{i}"}, id=f"{1_000 + i}-0")
    await Producer(redis_client, settings).enqueue(BODY, job_id="new")
    await EventStream(redis_client, settings).trim()
    left = [e.job_id for e in await all_events(redis_client, settings)]
    assert "new" in left and len(left) <= 101  # approximate: at most one partial node of old ones stays


async def test_campaign_filter_follow_and_since(redis_client: aioredis.Redis, settings: Settings) -> None:
    await Campaigns(redis_client, settings).create("a", CampaignSpec())
    producer = Producer(redis_client, settings)
    await producer.enqueue(BODY, campaign="a")
    await producer.enqueue(BODY, job_id="other")
    only_a = await all_events(redis_client, settings, campaign="a")
    assert [e.job_id for e in only_a] == ["a:8613800000001"]
    first = (await all_events(redis_client, settings))[0]
    assert [e.job_id for e in await all_events(redis_client, settings, since=first.id)] == ["other"]

    got: list[Event] = []

    async def follow() -> None:
        async for e in events(redis_client, settings, since="$", follow=True):
            got.append(e)
            return

    task = asyncio.ensure_future(follow())
    await asyncio.sleep(0.2)
    await producer.enqueue(BODY, job_id="later")
    await asyncio.wait_for(task, 5)
    assert [e.job_id for e in got] == ["later"]


async def test_consumer_groups_as_documented(redis_client: aioredis.Redis, settings: Settings) -> None:
    """The XGROUP / XREADGROUP / XACK usage the docs give other languages, run verbatim."""
    stream = EventStream(redis_client, settings)
    assert stream.key == "dialer:events"
    await redis_client.execute_command("XGROUP", "CREATE", "dialer:events", "billing", "0", "MKSTREAM")
    assert not await stream.create_group("billing")  # exists
    producer = Producer(redis_client, settings)
    for j in ("g1", "g2"):
        await producer.enqueue(BODY, job_id=j)
    res = await redis_client.execute_command(
        "XREADGROUP", "GROUP", "billing", "worker-1", "COUNT", "100", "BLOCK", "5000", "STREAMS", "dialer:events", ">")
    stream_name, entries = res[0]  # redis-py parses the reply into [[stream, [(id, {field: value})]]]
    assert stream_name == b"dialer:events"
    fields = entries[0][1]
    assert {k.decode() for k in fields} == {"type", "job", "campaign", "state", "attempt", "ts", "data"}
    assert json.loads(fields[b"data"]) == {"priority": 3}
    # Unacknowledged entries come back as pending to the same consumer (after a crash, say).
    pending = await stream.read_group("billing", "worker-1", pending=True)
    assert [e.job_id for e in pending] == ["g1", "g2"]
    assert await stream.ack("billing", *(e.id for e in pending)) == 2
    assert await stream.read_group("billing", "worker-1", pending=True) == []


@pytest.mark.slow
async def test_cli_events(redis_client: aioredis.Redis, settings: Settings) -> None:
    await Campaigns(redis_client, settings).create("a", CampaignSpec())
    producer = Producer(redis_client, settings)
    await producer.enqueue(BODY, campaign="a")
    await producer.enqueue(BODY, job_id="other")
    env = settings_env(settings)
    rc, out, err = await run_dialer("events", "--campaign", "a", env=env)
    assert rc == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(e["type"], e["job_id"], e["campaign"]) for e in lines] == [("queued", "a:8613800000001", "a")]
    rc, _out, err = await run_dialer("events", "--type", "nope", env=env)
    assert rc == 2 and "--type" in err and "queued" in err and "Traceback" not in err
    rc, _out, err = await run_dialer("events", "--since", "yesterday", env=env)
    assert rc == 2 and "--since" in err
    rc, _out, err = await run_dialer("events", env={**env, "DIALER_REDIS_URL": "redis://:pw@127.0.0.1:1/0"})
    assert rc == 1 and len(err.strip().splitlines()) == 1 and "pw" not in err
