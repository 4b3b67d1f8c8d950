"""Redials of unanswered calls: made by the result callback as deferred campaign jobs, linked to the
number's first job, at most N, once per callback however often it is delivered, and subject to the
campaign's deadline, cancel and pause. End to end with the simulator, a worker and ``dialer serve``."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from tests.helpers import (
    Sim,
    created,
    do_launch,
    event,
    numbers_csv,
    post,
    run_dialer,
    running,
    serving,
    settings_env,
    wait_until,
)
from worker.campaigns.control import Campaigns
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.provider.signature import sign
from worker.settings import Settings
from worker.store.keys import Keys

SHARED = "redial-shared-key-0123"


def keyed(settings: Settings) -> Settings:
    return settings.model_copy(update={"callback_shared_key": SecretStr(SHARED)})


def signed(serial: str, reason: str) -> dict[str, str]:
    e = event(serial, reason)
    return {**e, "signature": sign(e, SHARED, e["timestamp"], e["nonce"], "sha256")}


async def callbacks_in(sim: Sim, n: int) -> bool:
    return len((await sim.log())["callbacks"]) >= n


@pytest.mark.slow
async def test_unanswered_calls_are_redialled_after_the_delay_at_most_n_times(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    keyed = sim_settings.model_copy(update={"callback_shared_key": SecretStr(SHARED)})
    await sim.configure(callbacks=True, ring_time_s=0.05, answer_rate=0.0, callback_shared_key=SHARED)
    async with serving(keyed, redis_client) as (_url, served):
        await do_launch(redis_client, served, numbers_csv(tmp_path, 2), redial=2, redial_after="1s")
        async with running(served):
            await wait_until(lambda: callbacks_in(sim, 6), timeout=20)
            await asyncio.sleep(1.6)  # longer than the redial delay: a third redial would be made by now
    requests = created(await sim.requests())
    assert Counter(r["called"] for r in requests) == {"13800000000": 3, "13800000001": 3}  # first call + 2 redials
    ledger = Ledger(redis_client, served)
    first = await ledger.get("camp:13800000000")
    r1, r2 = await ledger.get("camp:13800000000:r1"), await ledger.get("camp:13800000000:r2")
    assert first is not None and r1 is not None and r2 is not None
    assert first.redials == ("camp:13800000000:r1", "camp:13800000000:r2") and first.redial_of is None
    assert (r1.redial_of, r1.redial_number, r2.redial_of, r2.redial_number) == (first.job_id, 1, first.job_id, 2)
    assert all(r.state == State.SENT and r.outcome == "unanswered" for r in (first, r1, r2))
    assert await ledger.get("camp:13800000000:r3") is None
    # Each redial waited its delay after the callback of the call before it (which came after that call).
    for before, after in ((first, r1), (r1, r2)):
        assert before.sent_ms is not None and after.sent_ms is not None and after.not_before_ms is not None
        assert after.not_before_ms >= before.sent_ms + 1000 and after.sent_ms >= after.not_before_ms
    assert r1.body == first.body  # the same call again
    status = await Campaigns(redis_client, served).status("camp")
    assert status["total"] == 6 and status["redials"] == 4 and status["states"]["sent"] == 6
    assert status["outcomes"] == {"answered": 0, "unanswered": 6, "failed_to_connect": 0}
    assert status["settings"]["redial"] == {"max": 2, "after_s": 1.0}
    # `dialer job` shows the links.
    rc, out, err = await run_dialer("job", "camp:13800000000", env=settings_env(served))
    assert rc == 0, err
    shown = json.loads(out)
    assert shown["redials"] == ["camp:13800000000:r1", "camp:13800000000:r2"] and shown["outcome"] == "unanswered"


async def test_an_answered_redial_ends_the_redials(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    await sim.configure(callbacks=True, ring_time_s=0.05, answer_rate=0.0, callback_shared_key=SHARED)
    async with serving(keyed(sim_settings), redis_client) as (_url, served):
        await do_launch(redis_client, served, numbers_csv(tmp_path, 1), redial=3, redial_after="1s")
        async with running(served):
            await wait_until(lambda: callbacks_in(sim, 1), timeout=10)
            await sim.configure(answer_rate=1.0)  # the first call went unanswered; the redial is answered
            await wait_until(lambda: callbacks_in(sim, 2), timeout=10)
            await asyncio.sleep(1.5)
    assert [r["called"] for r in created(await sim.requests())] == ["13800000000"] * 2
    status = await Campaigns(redis_client, served).status("camp")
    assert status["outcomes"] == {"answered": 1, "unanswered": 1, "failed_to_connect": 0}
    assert status["redials"] == 1 and status["total"] == 2


async def test_duplicate_callbacks_make_one_redial_and_reasons_decide(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    async with serving(keyed(settings), redis_client) as (url, served):
        await do_launch(redis_client, served, numbers_csv(tmp_path, 4), redial=1, redial_after="30m")
        ledger = Ledger(redis_client, served)
        for i, serial in enumerate(("S0", "S1", "S2", "S3")):
            job = f"camp:1380000000{i}"
            assert await ledger.mark_sending(job)
            await ledger.mark_sent(job, serial)
        for _ in range(3):  # delivered three times
            assert (await post(url, signed("S0", "4")))[0] == 200
        assert (await post(url, signed("S1", "9")))[0] == 200   # queue timeout: redialled
        assert (await post(url, signed("S2", "10")))[0] == 200  # call restricted: not redialled
        assert (await post(url, signed("S3", "1")))[0] == 200   # answered
    redials = [k.decode() async for k in redis_client.scan_iter(Keys(served.key_prefix).job("*:r*"))]
    assert sorted(redials) == [Keys(served.key_prefix).job(f"camp:1380000000{i}:r1") for i in (0, 1)]
    r1 = await ledger.get("camp:13800000000:r1")
    assert r1 is not None and r1.state == State.QUEUED and r1.not_before_ms is not None
    assert r1.not_before_ms - r1.created_ms >= 30 * 60 * 1000 - 1000
    first = await ledger.get("camp:13800000000")
    assert first is not None and first.redials == ("camp:13800000000:r1",)
    status = await Campaigns(redis_client, served).status("camp")
    assert status["redials"] == 2 and status["total"] == 6 and status["states"]["queued"] == 2
    assert status["outcomes"] == {"answered": 1, "unanswered": 1, "failed_to_connect": 2}


async def test_no_redial_past_the_deadline_or_for_a_cancelled_campaign(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    deadline = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    async with serving(keyed(settings), redis_client) as (url, served):
        await do_launch(redis_client, served, numbers_csv(tmp_path, 1), redial=1, redial_after="1h",
                        deadline=deadline)
        await do_launch(redis_client, served, numbers_csv(tmp_path, 1, name="b.csv"), name="other", redial=1,
                        redial_after="1s")
        ledger = Ledger(redis_client, served)
        for job, serial in (("camp:13800000000", "S0"), ("other:13800000000", "S1")):
            assert await ledger.mark_sending(job)
            await ledger.mark_sent(job, serial)
        await Campaigns(redis_client, served).cancel("other")
        assert (await post(url, signed("S0", "4")))[0] == 200
        assert (await post(url, signed("S1", "4")))[0] == 200
    assert await ledger.get("camp:13800000000:r1") is None  # due after the deadline
    assert await ledger.get("other:13800000000:r1") is None  # campaign cancelled
    for name in ("camp", "other"):
        status = await Campaigns(redis_client, served).status(name)
        assert status["outcomes"]["unanswered"] == 1 and status["redials"] == 0


async def test_a_pending_redial_does_not_hold_back_the_campaign_after_a_pause(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """A redial due in 30 minutes must not move the campaign's pacing clock: a resume puts the parked
    backlog at the front, not behind the redial."""
    paced = settings.model_copy(update={"rate_limit": 10.0})
    async with serving(keyed(paced), redis_client) as (url, served):
        await do_launch(redis_client, served, numbers_csv(tmp_path, 5), redial=1, redial_after="30m")
        ledger, campaigns, keys = Ledger(redis_client, served), Campaigns(redis_client, served), Keys(served.key_prefix)
        assert await ledger.mark_sending("camp:13800000000")
        await ledger.mark_sent("camp:13800000000", "S0")
        assert (await post(url, signed("S0", "4")))[0] == 200
        await campaigns.pause("camp")
        for i in range(1, 5):  # workers meet the paused campaign's jobs and park them
            assert (await ledger.claim_run(f"camp:1380000000{i}")).verdict == "parked"
        assert (await campaigns.resume("camp", wait_s=0)).moved == 4
        sec, usec = await redis_client.time()
        now_ms = sec * 1000 + usec // 1000
        scores = dict(await redis_client.zrange(keys.queue(9), 0, -1, withscores=True))
        redial = scores.pop(b"camp:13800000000:r1")
        scores.pop(b"camp:13800000000")  # sent above without a worker, so still on the queue
    assert redial > now_ms + 29 * 60 * 1000
    assert len(scores) == 4 and max(scores.values()) < now_ms + 5_000, scores


async def test_a_later_callback_never_redials_an_answered_call(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14 item 1: an "unanswered" event after the "answered" one replaced it and redialled the person.
    The first outcome stands; the later one is logged at WARNING with the job id (not the number)."""
    async with serving(keyed(settings), redis_client) as (url, served):
        await do_launch(redis_client, served, numbers_csv(tmp_path, 2), redial=2, redial_after="1s")
        ledger = Ledger(redis_client, served)
        for i, serial in enumerate(("S0", "S1")):
            assert await ledger.mark_sending(f"camp:1380000000{i}")
            await ledger.mark_sent(f"camp:1380000000{i}", serial)
        assert (await post(url, signed("S0", "1")))[0] == 200  # answered
        caplog.clear()
        for reason in ("4", "9", "6"):  # then events that would redial (late, replayed or forged)
            assert (await post(url, signed("S0", reason)))[0] == 200  # the provider must not retry them
        # The other way round: unanswered first (redialled once), a later "answered" changes nothing either.
        assert (await post(url, signed("S1", "4")))[0] == 200
        assert (await post(url, signed("S1", "1")))[0] == 200
        assert (await post(url, signed("S1", "4")))[0] == 200  # the same outcome again: idempotent
    assert await ledger.get("camp:13800000000:r1") is None
    first = await ledger.get("camp:13800000000")
    assert first is not None and (first.outcome, first.release_reason, first.redials) == ("answered", "1", ())
    other = await ledger.get("camp:13800000001")
    assert other is not None and other.outcome == "unanswered" and other.redials == ("camp:13800000001:r1",)
    status = await Campaigns(redis_client, served).status("camp")
    assert status["outcomes"] == {"answered": 1, "unanswered": 1, "failed_to_connect": 0}
    assert status["redials"] == 1 and status["total"] == 3
    ignored = [r for r in caplog.records if "callback ignored" in r.getMessage()]
    assert len(ignored) == 4 and all(r.levelname == "WARNING" for r in ignored)
    assert "job camp:13800000000: callback ignored" in ignored[0].getMessage()
    assert not any("1380000000" in r.getMessage().replace("camp:1380000000", "") for r in ignored)
