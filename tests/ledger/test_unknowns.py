"""Issue 15 ★: the grace period of ``unknown`` jobs. After DIALER_UNKNOWN_GRACE_S without a release event a job
is reported *unknown, no evidence*; with DIALER_REDIAL_AMBIGUOUS=after-grace it is redialled once, never
earlier and never twice. The grace is measured on the Redis server's clock; the tests backdate a job's entry
in the unknown set rather than wait 15 minutes."""

from __future__ import annotations

import logging

import pytest
import redis.asyncio as aioredis

from tests.helpers import server_ms
from worker.campaigns.control import Campaigns, CampaignSpec
from worker.ledger.producer import Producer
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.ledger.unknowns import Unknowns
from worker.settings import Settings
from worker.store.keys import Keys

BODY = {"called": "8613800000001", "playList": [{"voiceId": "100001"}], "priority": "4"}


async def unknown_job(redis: aioredis.Redis, settings: Settings, job_id: str, *, campaign: str | None = None) -> None:
    """A job whose worker died mid-request, as its next run leaves it: unknown, listed for its event."""
    await Producer(redis, settings).enqueue(BODY, job_id=job_id, campaign=campaign)
    ledger = Ledger(redis, settings)
    await redis.delete(Keys(settings.key_prefix).queue(4))  # its arq run is this test
    assert await ledger.mark_sending(job_id)
    assert (await ledger.claim(job_id))[0] == "stale"


async def age(redis: aioredis.Redis, settings: Settings, job_id: str, seconds: float) -> None:
    keys = Keys(settings.key_prefix)
    assert await redis.zscore(keys.unknown, job_id) is not None
    await redis.zadd(keys.unknown, {job_id: await server_ms(redis) - seconds * 1000})


async def test_within_the_grace_nothing_happens(redis_client: aioredis.Redis, settings: Settings) -> None:
    await unknown_job(redis_client, settings, "j1")
    await age(redis_client, settings, "j1", settings.unknown_grace_s - 5)
    swept = await Unknowns(redis_client, settings).sweep()
    assert (swept.looked_at, swept.no_evidence) == (0, ())
    rec = await Ledger(redis_client, settings).get("j1")
    assert rec is not None and (rec.state, rec.evidence) == (State.UNKNOWN, None)


async def test_after_the_grace_it_is_unknown_no_evidence_and_not_redialled_by_default(
    redis_client: aioredis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    await Campaigns(redis_client, settings).create("promo", CampaignSpec())
    await unknown_job(redis_client, settings, "promo-1", campaign="promo")
    await age(redis_client, settings, "promo-1", settings.unknown_grace_s + 1)
    with caplog.at_level(logging.WARNING):
        swept = await Unknowns(redis_client, settings).sweep()
    assert (swept.looked_at, swept.no_evidence, swept.redialled) == (1, ("promo-1",), ())
    rec = await Ledger(redis_client, settings).get("promo-1")
    assert rec is not None and (rec.state, rec.evidence, rec.grace_redialled) == (State.UNKNOWN, "none", False)
    assert rec.as_dict()["evidence"] == "none"
    assert "job promo-1: unknown, no evidence" in caplog.text
    status = await Campaigns(redis_client, settings).status("promo")
    assert status["unknown"] == {"resolved_by_event": 0, "no_evidence": 1}
    # It left the set: a second sweep finds nothing, reports nothing twice.
    assert (await Unknowns(redis_client, settings).sweep()).looked_at == 0
    assert await redis_client.zcard(Keys(settings.key_prefix).unknown) == 0
    assert await redis_client.zcard(Keys(settings.key_prefix).queue(4)) == 0


async def test_after_grace_redials_once_never_twice(redis_client: aioredis.Redis, settings: Settings) -> None:
    s = settings.model_copy(update={"redial_ambiguous": "after-grace"})
    keys = Keys(s.key_prefix)
    ledger = Ledger(redis_client, s)
    await unknown_job(redis_client, s, "j1")
    # Never earlier: within the grace the job stays unknown, off its queue.
    await age(redis_client, s, "j1", s.unknown_grace_s - 5)
    assert (await Unknowns(redis_client, s).sweep()).redialled == ()
    await age(redis_client, s, "j1", s.unknown_grace_s + 1)
    swept = await Unknowns(redis_client, s).sweep()
    assert swept.redialled == ("j1",) and swept.no_evidence == ("j1",)
    rec = await ledger.get("j1")
    assert rec is not None and (rec.state, rec.attempts, rec.grace_redialled) == (State.QUEUED, 0, True)
    assert rec.first_attempt_ms is None  # a fresh time budget: the grace does not use it up
    assert await redis_client.zscore(keys.queue(4), "j1") is not None
    # The redial dies mid-request too: unknown again, and after its grace no second redial.
    assert await ledger.mark_sending("j1")
    assert (await ledger.claim("j1"))[0] == "stale"
    await age(redis_client, s, "j1", s.unknown_grace_s + 1)
    await redis_client.delete(keys.queue(4))
    swept = await Unknowns(redis_client, s).sweep()
    assert (swept.looked_at, swept.no_evidence, swept.redialled) == (1, (), ())
    rec = await ledger.get("j1")
    assert rec is not None and rec.state == State.UNKNOWN
    assert await redis_client.zcard(keys.queue(4)) == 0


async def test_a_job_resolved_meanwhile_just_leaves_the_set(redis_client: aioredis.Redis, settings: Settings) -> None:
    s = settings.model_copy(update={"redial_ambiguous": "after-grace"})
    ledger = Ledger(redis_client, s)
    await unknown_job(redis_client, s, "j1")
    assert await ledger.mark_evidenced("j1", "SN-1") == State.UNKNOWN
    await age(redis_client, s, "j1", s.unknown_grace_s + 1)
    swept = await Unknowns(redis_client, s).sweep()
    assert (swept.looked_at, swept.no_evidence, swept.redialled) == (1, (), ())
    rec = await ledger.get("j1")
    assert rec is not None and (rec.state, rec.evidence) == (State.SENT, "release")


async def test_an_ambiguous_answers_job_waits_for_its_event_like_a_dead_workers(
    redis_client: aioredis.Redis, settings: Settings
) -> None:
    await Producer(redis_client, settings).enqueue(BODY, job_id="j1")
    ledger = Ledger(redis_client, settings)
    assert await ledger.mark_sending("j1")
    assert await ledger.mark_final("j1", State.UNKNOWN, "ambiguous", serial="SN-7")
    assert await ledger.job_for_serial("SN-7") == "j1"
    assert await redis_client.zscore(Keys(settings.key_prefix).unknown, "j1") is not None
