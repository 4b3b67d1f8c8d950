"""Result callbacks over real HTTP: the release-event route of ``dialer serve`` against a real Redis —
signatures (both digests), refusals, idempotency, the releaseReason mapping — and end to end with the
simulator POSTing signed callbacks for calls a worker made."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from tests.helpers import Sim, do_launch, event, numbers_csv, post, running, serving, wait_until
from worker.campaigns.control import Campaigns
from worker.campaigns.outcomes import CALLBACK_PATH, outcome_of
from worker.ledger.transitions import Ledger
from worker.provider.signature import sign
from worker.settings import Settings

SHARED = "callback-shared-key-0123"
JOB = "camp:13800000000"


def signed(e: dict[str, str], key: str = SHARED, mode: Any = "sha256") -> dict[str, str]:
    return {**e, "signature": sign(e, key, e["timestamp"], e["nonce"], mode)}


async def sent_job(redis: aioredis.Redis, settings: Settings, tmp_path: Path, serial: str = "SN-1") -> Ledger:
    await do_launch(redis, settings, numbers_csv(tmp_path, 2))
    ledger = Ledger(redis, settings)
    assert await ledger.mark_sending(JOB)
    await ledger.mark_sent(JOB, serial)
    return ledger


@pytest.mark.parametrize("mode", ["sha256", "hmac-sha256"])
async def test_good_signature_records_and_counts_the_outcome(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path, mode: str
) -> None:
    keyed = settings.model_copy(update={"callback_shared_key": SecretStr(SHARED), "callback_signature_mode": mode})
    async with serving(keyed, redis_client) as (url, served):
        ledger = await sent_job(redis_client, served, tmp_path)
        status, body = await post(url, signed(event("SN-1", "1"), mode=mode))
        assert (status, body) == (200, {"retCode": "0", "retMsg": "success"})
    rec = await ledger.get(JOB)
    assert rec is not None and rec.outcome == "answered" and rec.release_reason == "1" and rec.talk_duration_s == 6
    d = rec.as_dict()
    assert (d["outcome"], d["release_reason"], d["talk_duration_s"]) == ("answered", "1", 6)
    outcomes = (await Campaigns(redis_client, served).status("camp"))["outcomes"]
    assert outcomes == {"answered": 1, "unanswered": 0, "failed_to_connect": 0}


async def test_bad_signatures_are_401_and_record_nothing(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keyed = settings.model_copy(update={"callback_shared_key": SecretStr(SHARED), "callback_signature_mode": "sha256"})
    async with serving(keyed, redis_client) as (url, served):
        ledger = await sent_job(redis_client, served, tmp_path)
        good = signed(event("SN-1", "4"))
        refused = {
            "no signature": event("SN-1", "4"),
            "wrong key": signed(event("SN-1", "4"), key="another-key"),
            "other digest": signed(event("SN-1", "4"), mode="hmac-sha256"),
            "tampered": {**good, "releaseReason": "1"},
            "not a string": {**good, "signature": 12},
        }
        for what, body in refused.items():
            status, data = await post(url, body)
            assert status == 401, what
            assert data["error"]["code"] == "bad_signature", what
        old = event("SN-1", "4", timestamp=str(int((time.time() - 2 * 86400) * 1000)))
        status, data = await post(url, signed(old))
        assert (status, data["error"]["code"]) == (401, "stale_callback")
        ahead = event("SN-1", "4", timestamp=str(int((time.time() + 3600) * 1000)))
        assert (await post(url, signed(ahead)))[0] == 401
    rec = await ledger.get(JOB)
    assert rec is not None and rec.outcome is None
    assert (await Campaigns(redis_client, served).status("camp"))["outcomes"]["unanswered"] == 0
    assert "bad or missing signature" in caplog.text
    assert SHARED not in caplog.text and good["signature"] not in caplog.text


async def test_unknown_serial_and_malformed_events_are_refused_as_json(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(settings, redis_client) as (url, served):
        ledger = await sent_job(redis_client, served, tmp_path)
        status, data = await post(url, event("SN-404"))
        assert status == 404 and data["error"]["code"] == "unknown_call"
        assert "no job has callSerialNo 'SN-404'" in caplog.text
        async with aiohttp.ClientSession() as s:
            async with s.post(url + CALLBACK_PATH, data=b"not json", headers={"Content-Type": "text/plain"}) as r:
                assert r.status == 400 and (await r.json())["error"]["code"] == "malformed_json"
        for body, field in (([1, 2], "body"), ({"releaseReason": "1"}, "callSerialNo"),
                            ({k: v for k, v in event("SN-1").items() if k != "releaseReason"}, "releaseReason"),
                            ({**event("SN-1"), "releaseReason": 4}, "releaseReason")):
            status, data = await post(url, body)
            assert status == 422, body
            assert [f["field"] for f in data["error"]["fields"]] == [field]
    rec = await ledger.get(JOB)
    assert rec is not None and rec.outcome is None  # none of them was recorded


async def test_duplicate_callback_counts_once_and_unsigned_is_open_without_a_key(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    async with serving(settings, redis_client) as (url, served):
        await sent_job(redis_client, served, tmp_path)
        for _ in range(3):
            assert (await post(url, event("SN-1", "0")))[0] == 200
    status = await Campaigns(redis_client, served).status("camp")
    assert status["outcomes"] == {"answered": 1, "unanswered": 0, "failed_to_connect": 0}


@pytest.mark.parametrize(
    ("reason", "outcome"),
    [("0", "answered"), ("1", "answered"), ("4", "unanswered"), ("6", "failed_to_connect"),
     ("8", "failed_to_connect"), ("9", "failed_to_connect"), ("10", "failed_to_connect"),
     ("999", "failed_to_connect"), ("77", "failed_to_connect")],
)
def test_release_reason_mapping(reason: str, outcome: str) -> None:
    assert outcome_of(reason) == outcome


async def test_unknown_reason_keeps_its_code(settings: Settings, redis_client: aioredis.Redis, tmp_path: Path) -> None:
    async with serving(settings, redis_client) as (url, served):
        ledger = await sent_job(redis_client, served, tmp_path)
        assert (await post(url, event("SN-1", "77")))[0] == 200
    rec = await ledger.get(JOB)
    assert rec is not None and (rec.outcome, rec.release_reason) == ("failed_to_connect", "77")


async def test_simulator_callbacks_end_to_end(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """Launch -> worker -> simulator -> signed HMAC callbacks -> dialer serve -> outcomes, reconciled."""
    keyed = sim_settings.model_copy(update={"callback_shared_key": SecretStr(SHARED),
                                            "callback_signature_mode": "hmac-sha256"})
    await sim.configure(callbacks=True, ring_time_s=0.05, answer_rate=0.5, seed=3, callback_shared_key=SHARED,
                        callback_signature_mode="hmac-sha256")
    async with serving(keyed, redis_client) as (url, served):
        report = await do_launch(redis_client, served, numbers_csv(tmp_path, 12))
        assert report.enqueued == 12
        campaigns = Campaigns(redis_client, served)

        async def all_heard() -> bool:
            status = await campaigns.status("camp")
            return bool(status["states"]["sent"] == 12 and sum(status["outcomes"].values()) == 12)

        async with running(served):
            await wait_until(all_heard, timeout=15)
    log = await sim.log()
    bodies = [r["body"] for r in log["requests"] if r["outcome"] == "created"]
    assert len(bodies) == 12 and {b["callBackUrl"] for b in bodies} == {url + CALLBACK_PATH}
    assert [c["status"] for c in log["callbacks"]] == [200] * 12
    by_reason = {"1": 0, "4": 0}
    for c in log["callbacks"]:
        by_reason[c["releaseReason"]] += 1
    outcomes = (await campaigns.status("camp"))["outcomes"]
    assert outcomes == {"answered": by_reason["1"], "unanswered": by_reason["4"], "failed_to_connect": 0}
    assert by_reason["1"] and by_reason["4"]  # seed 3 gives both kinds
