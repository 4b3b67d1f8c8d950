"""Issue 15 ★: the provider's release event resolves a job the ledger has as ``unknown``. The dialer's own
callBackUrl carries the job id in its path, so the event names its job even when the ledger never learnt the
callSerialNo; an ambiguous answer's serial is kept, so its event finds the job the usual way. A hint is
believed only for the job's own number, and a serial of another job is never moved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from tests.helpers import do_launch, event, numbers_csv, serving
from worker.callback_url import CALLBACK_PATH, for_job
from worker.campaigns.control import Campaigns
from worker.ledger.producer import Producer
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.provider.signature import sign
from worker.settings import Settings

SHARED = "evidence-shared-key-0123"
JOB = "camp:13800000000"  # the first row of numbers_csv


def signed(e: dict[str, str]) -> dict[str, str]:
    return {**e, "signature": sign(e, SHARED, e["timestamp"], e["nonce"], "sha256")}


def keyed(settings: Settings) -> Settings:
    return settings.model_copy(update={"callback_shared_key": SecretStr(SHARED)})


async def post_to(url: str, job_id: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(for_job(url + CALLBACK_PATH, job_id), json=body) as r:
        return r.status, await r.json()


async def died_mid_request(ledger: Ledger, job_id: str) -> None:
    """What a worker killed with its request out leaves behind, as the next run finds it: ``unknown``."""
    assert await ledger.mark_sending(job_id)
    verdict, rec = await ledger.claim(job_id)
    assert verdict == "stale" and rec is not None and rec.state == State.UNKNOWN and rec.call_serial_no is None


async def test_a_release_event_naming_its_job_resolves_an_unknown_one(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    async with serving(keyed(settings), redis_client) as (url, served):
        await do_launch(redis_client, served, numbers_csv(tmp_path, 2))
        ledger = Ledger(redis_client, served)
        await died_mid_request(ledger, JOB)
        campaigns = Campaigns(redis_client, served)
        assert (await campaigns.status("camp"))["states"]["unknown"] == 1
        # The plain route cannot place it: the ledger never learnt the serial.
        async with aiohttp.ClientSession() as s, s.post(url + CALLBACK_PATH, json=signed(event("SN-9", "1"))) as r:
            assert r.status == 404
        status, body = await post_to(url, JOB, signed(event("SN-9", "1")))
        assert (status, body) == (200, {"retCode": "0", "retMsg": "success"})
        # A replay changes nothing more.
        assert (await post_to(url, JOB, signed(event("SN-9", "1"))))[0] == 200
    rec = await ledger.get(JOB)
    assert rec is not None
    assert (rec.state, rec.call_serial_no, rec.evidence, rec.outcome) == (State.SENT, "SN-9", "release", "answered")
    assert rec.last_error == "worker died mid-request"  # the history stays
    assert await ledger.job_for_serial("SN-9") == JOB
    status_now = await campaigns.status("camp")
    assert (status_now["states"]["unknown"], status_now["states"]["sent"]) == (0, 1)
    assert status_now["outcomes"]["answered"] == 1


async def test_a_hint_for_another_number_or_another_jobs_serial_is_refused_and_changes_nothing(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = "camp:13800000001"
    async with serving(keyed(settings), redis_client) as (url, served):
        await do_launch(redis_client, served, numbers_csv(tmp_path, 2))
        ledger = Ledger(redis_client, served)
        await died_mid_request(ledger, JOB)
        assert await ledger.mark_sending(other)
        await ledger.mark_sent(other, "SN-OTHER")
        # A signed event of another number, replayed to this job's URL.
        status, body = await post_to(url, JOB, signed(event("SN-9", "1", called="13800000001")))
        assert status == 409 and body["error"]["code"] == "evidence_mismatch"
        assert [f["field"] for f in body["error"]["fields"]] == ["called"]
        no_called = {k: v for k, v in event("SN-9", "1").items() if k != "called"}
        assert (await post_to(url, JOB, signed(no_called)))[0] == 409
        # Another job's serial, sent to this job's URL.
        status, body = await post_to(url, JOB, signed(event("SN-OTHER", "1")))
        assert status == 409 and [f["field"] for f in body["error"]["fields"]] == ["callSerialNo"]
        # A job that does not exist, and a segment that is no job id.
        assert (await post_to(url, "camp:13899999999", signed(event("SN-9", "1"))))[0] == 404
        async with aiohttp.ClientSession() as s:
            async with s.post(url + CALLBACK_PATH + "/a%20b", json=signed(event("SN-9", "1"))) as r:
                assert r.status == 404
    rec = await ledger.get(JOB)
    assert rec is not None and (rec.state, rec.call_serial_no, rec.outcome) == (State.UNKNOWN, None, None)
    other_rec = await ledger.get(other)
    assert other_rec is not None and other_rec.outcome is None
    assert await ledger.job_for_serial("SN-9") is None
    assert "callback refused: called: must be the number of job" in caplog.text


async def test_an_at_sign_in_a_job_id_travels_as_an_ampersand(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    async with serving(keyed(settings), redis_client) as (url, served):
        job_id = "ops@example.com"
        body = {"called": "13800000000", "playList": [{"voiceId": "v"}], "callBackUrl": url + CALLBACK_PATH}
        await Producer(redis_client, served).enqueue(body, job_id=job_id)
        ledger = Ledger(redis_client, served)
        await died_mid_request(ledger, job_id)
        assert "&" in for_job(url + CALLBACK_PATH, job_id)
        assert (await post_to(url, job_id, signed(event("SN-AT", "4"))))[0] == 200
    rec = await ledger.get(job_id)
    assert rec is not None and (rec.state, rec.outcome) == (State.SENT, "unanswered")


async def test_an_ambiguous_answers_serial_finds_its_job_and_resolves_it(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """Issue 15 item 3: an answer without retCode but with a callSerialNo leaves the job unknown with the
    serial kept and indexed; the call's event then moves it to sent (plain route, no hint needed)."""
    async with serving(keyed(settings), redis_client) as (url, served):
        await do_launch(redis_client, served, numbers_csv(tmp_path, 1))
        ledger = Ledger(redis_client, served)
        assert await ledger.mark_sending(JOB)
        assert await ledger.mark_final(JOB, State.UNKNOWN, "ambiguous HTTP 200 without retCode", serial="SN-AMB")
        rec = await ledger.get(JOB)
        assert rec is not None and (rec.state, rec.call_serial_no) == (State.UNKNOWN, "SN-AMB")
        async with aiohttp.ClientSession() as s, s.post(url + CALLBACK_PATH, json=signed(event("SN-AMB", "1"))) as r:
            assert r.status == 200
    rec = await ledger.get(JOB)
    assert rec is not None and (rec.state, rec.evidence, rec.outcome) == (State.SENT, "release", "answered")


async def test_an_event_for_a_job_still_queued_stops_its_redial(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """A late event for a call whose job was put back on its queue (an after-grace redial scheduled, or a
    requeue) proves the call: the job becomes sent, so its queued run finds it final and never dials."""
    async with serving(keyed(settings), redis_client) as (url, served):
        await do_launch(redis_client, served, numbers_csv(tmp_path, 1))
        ledger = Ledger(redis_client, served)
        assert (await post_to(url, JOB, signed(event("SN-LATE", "1"))))[0] == 200
        verdict, rec = await ledger.claim(JOB)
    assert verdict == "final" and rec is not None and rec.state == State.SENT and rec.evidence == "release"
