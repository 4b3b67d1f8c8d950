"""Result callbacks over real HTTP: the release-event route of ``dialer serve`` against a real Redis —
signatures (both digests), refusals, idempotency, the releaseReason mapping — and end to end with the
simulator POSTing signed callbacks for calls a worker made."""

from __future__ import annotations

import functools
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from tests.helpers import (
    Sim,
    do_launch,
    event,
    free_port,
    numbers_csv,
    post,
    run_dialer,
    running,
    serving,
    settings_env,
    start_dialer,
    wait_until,
)
from worker.campaigns.control import Campaigns
from worker.campaigns.outcomes import CALLBACK_PATH, outcome_of
from worker.ledger.transitions import Ledger
from worker.provider.signature import sign
from worker.rules import normalize_number
from worker.settings import Settings

SHARED = "callback-shared-key-0123"
JOB = "camp:13800000000"


def signed(e: dict[str, str], key: str = SHARED, mode: Any = "sha256") -> dict[str, str]:
    return {**e, "signature": sign(e, key, e["timestamp"], e["nonce"], mode)}


def keyed(settings: Settings, mode: Any = "sha256") -> Settings:
    return settings.model_copy(update={"callback_shared_key": SecretStr(SHARED), "callback_signature_mode": mode})


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
    async with serving(keyed(settings, mode), redis_client) as (url, served):
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
    async with serving(keyed(settings), redis_client) as (url, served):
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
    async with serving(keyed(settings), redis_client) as (url, served):
        ledger = await sent_job(redis_client, served, tmp_path)
        status, data = await post(url, signed(event("SN-404")))
        assert status == 404 and data["error"]["code"] == "unknown_call"
        assert "no job has callSerialNo 'SN-404'" in caplog.text
        async with aiohttp.ClientSession() as s:
            async with s.post(url + CALLBACK_PATH, data=b"not json", headers={"Content-Type": "text/plain"}) as r:
                assert r.status == 400 and (await r.json())["error"]["code"] == "malformed_json"
        stamp = {k: v for k, v in event("SN-1").items() if k in ("timestamp", "nonce")}
        for body, field in (([1, 2], "body"), (signed({"releaseReason": "1", **stamp}), "callSerialNo"),
                            (signed({k: v for k, v in event("SN-1").items() if k != "releaseReason"}),
                             "releaseReason"),
                            (signed({**event("SN-1"), "releaseReason": 4}), "releaseReason")):  # type: ignore[dict-item]
            status, data = await post(url, body)
            assert status == 422, body
            assert [f["field"] for f in data["error"]["fields"]] == [field]
    rec = await ledger.get(JOB)
    assert rec is not None and rec.outcome is None  # none of them was recorded


async def test_duplicate_callback_counts_once(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    async with serving(keyed(settings), redis_client) as (url, served):
        await sent_job(redis_client, served, tmp_path)
        once = signed(event("SN-1", "0"))
        for _ in range(3):
            assert (await post(url, once))[0] == 200
    status = await Campaigns(redis_client, served).status("camp")
    assert status["outcomes"] == {"answered": 1, "unanswered": 0, "failed_to_connect": 0}


async def test_unsigned_callbacks_are_refused_without_a_key_unless_the_insecure_opt_out_is_set(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14 item 1: the default (no DIALER_CALLBACK_SHARED_KEY) used to accept anyone's unsigned event."""
    assert settings.callback_shared_key is None and settings.callback_insecure_unsigned is False
    async with serving(settings, redis_client) as (url, served):
        ledger = await sent_job(redis_client, served, tmp_path)
        for body in (event("SN-1", "4"), signed(event("SN-1", "4"))):  # a signature cannot be checked either
            status, data = await post(url, body)
            assert status == 401 and data["error"]["code"] == "unsigned_callback", data
            assert "DIALER_CALLBACK_SHARED_KEY" in data["error"]["message"]
    rec = await ledger.get(JOB)
    assert rec is not None and rec.outcome is None and rec.redials == ()
    assert "unsigned callbacks are refused without DIALER_CALLBACK_SHARED_KEY" in caplog.text
    insecure = settings.model_copy(update={"callback_insecure_unsigned": True})
    async with serving(insecure, redis_client) as (url, served):
        assert (await post(url, event("SN-1", "4")))[0] == 200
    rec = await ledger.get(JOB)
    assert rec is not None and rec.outcome == "unanswered"


async def test_serve_says_at_start_up_how_callbacks_are_authenticated(settings: Settings) -> None:
    """`dialer serve` logs why callbacks are refused (no key), and a loud WARNING with the insecure opt-out."""
    lines = {}
    for name, extra in (("default", {}), ("insecure", {"DIALER_CALLBACK_INSECURE_UNSIGNED": "true"}),
                        ("keyed", {"DIALER_CALLBACK_SHARED_KEY": SHARED})):
        port = free_port()
        env = {**settings_env(settings.model_copy(update={"http_port": port})), **extra}
        proc = await start_dialer("serve", "--insecure-no-auth", env=env)
        try:
            await wait_until(functools.partial(_listening, port), timeout=20, what="dialer serve to listen")
        finally:
            proc.proc.send_signal(signal.SIGTERM)
            _rc, _out, err = await proc.wait(30)
        lines[name] = [line for line in err.splitlines() if "result callbacks" in line or "INSECURE" in line]
    assert any("every event is refused (401 unsigned_callback) because DIALER_CALLBACK_SHARED_KEY is not set" in line
               for line in lines["default"]), lines
    assert any("WARNING" in line and "INSECURE: DIALER_CALLBACK_INSECURE_UNSIGNED=true" in line
               for line in lines["insecure"]), lines
    assert any("signed events only" in line for line in lines["keyed"]), lines
    assert not any("INSECURE" in line for line in lines["default"] + lines["keyed"]), lines


async def _listening(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/healthz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


@pytest.mark.parametrize(
    ("reason", "outcome"),
    [("0", "answered"), ("1", "answered"), ("4", "unanswered"), ("6", "failed_to_connect"),
     ("8", "failed_to_connect"), ("9", "failed_to_connect"), ("10", "failed_to_connect"),
     ("999", "failed_to_connect"), ("77", "failed_to_connect")],
)
def test_release_reason_mapping(reason: str, outcome: str) -> None:
    assert outcome_of(reason) == outcome


async def test_unknown_reason_keeps_its_code(settings: Settings, redis_client: aioredis.Redis, tmp_path: Path) -> None:
    async with serving(keyed(settings), redis_client) as (url, served):
        ledger = await sent_job(redis_client, served, tmp_path)
        assert (await post(url, signed(event("SN-1", "77"))))[0] == 200
    rec = await ledger.get(JOB)
    assert rec is not None and (rec.outcome, rec.release_reason) == ("failed_to_connect", "77")


async def test_simulator_callbacks_end_to_end(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """Launch -> worker -> simulator -> signed HMAC callbacks -> dialer serve -> outcomes, reconciled."""
    hmac_keyed = keyed(sim_settings, "hmac-sha256")
    await sim.configure(callbacks=True, ring_time_s=0.05, answer_rate=0.5, seed=3, callback_shared_key=SHARED,
                        callback_signature_mode="hmac-sha256")
    async with serving(hmac_keyed, redis_client) as (url, served):
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
    # Each call's callBackUrl names its job (the dialer's own route gets the job id in its path).
    assert sorted(b["callBackUrl"] for b in bodies) == sorted(
        f"{url}{CALLBACK_PATH}/camp:{normalize_number(b['called'])}" for b in bodies)
    assert len(bodies) == 12
    assert [c["status"] for c in log["callbacks"]] == [200] * 12
    by_reason = {"1": 0, "4": 0}
    for c in log["callbacks"]:
        by_reason[c["releaseReason"]] += 1
    outcomes = (await campaigns.status("camp"))["outcomes"]
    assert outcomes == {"answered": by_reason["1"], "unanswered": by_reason["4"], "failed_to_connect": 0}
    assert by_reason["1"] and by_reason["4"]  # seed 3 gives both kinds


async def test_a_non_ascii_talk_duration_leaves_the_job_readable(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14 item 2: talkDuration "²" passed str.isdigit(), was stored, and every read then raised (500)."""
    async with serving(keyed(settings), redis_client) as (url, served):
        ledger = await sent_job(redis_client, served, tmp_path)
        assert (await post(url, signed(event("SN-1", "1", talkDuration="²"))))[0] == 200
        auth = {"Authorization": "Bearer callbacks-test-api-key-0123"}
        async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/calls/{JOB}", headers=auth) as r:
            assert r.status == 200, await r.text()
            shown = await r.json()
    assert shown["outcome"] == "answered" and shown["talk_duration_s"] is None
    rec = await ledger.get(JOB)
    assert rec is not None and rec.talk_duration_s is None
    rc, _out, err = await run_dialer("job", JOB, env=settings_env(served))
    assert rc == 0 and "Traceback" not in err, err
    assert "ERROR" not in caplog.text


async def test_a_rearranged_signed_body_is_refused(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14 item 3: the signed string joins k=v with commas and releaseTime holds one, so a captured
    answered event regrouped as {releaseReason: "1,releaseTime=<date>", releaseTime: <rest>}... signs the
    same string; it used to be recorded (outcome failed_to_connect, reason "1,releaseTime=...")."""
    async with serving(keyed(settings), redis_client) as (url, served):
        ledger = await sent_job(redis_client, served, tmp_path)
        captured = signed(event("SN-1", "1", releaseTime="2025/01/01,10:00:07:000"))
        forged = {k: v for k, v in captured.items() if k != "releaseTime"}
        forged["releaseReason"] = "1,releaseTime=2025/01/01,10:00:07:000"
        assert sign(forged, SHARED, forged["timestamp"], forged["nonce"], "sha256") == captured["signature"]
        status, data = await post(url, forged)
        assert status == 400 and data["error"]["code"] == "ambiguous_callback", data
        assert [f["field"] for f in data["error"]["fields"]] == ["releaseReason"]
        assert (await ledger.get(JOB)).outcome is None  # type: ignore[union-attr]
        for field, value in (("nonce", "12_34"), ("timestamp", "\u0661" * 13), ("recordfile", "a,b=c")):
            status, data = await post(url, signed({**event("SN-1", "1"), field: value}))
            assert status == 400 and data["error"]["fields"][0]["field"] == field, (field, data)
        # The provider's own commas (in the times) and an "=" before any comma (a URL's query) still pass.
        ok = signed(event("SN-1", "1", releaseTime="2025/01/01,10:00:07:000", recordfile="https://r.example/x?id=7"))
        assert (await post(url, ok))[0] == 200
    rec = await ledger.get(JOB)
    assert rec is not None and (rec.outcome, rec.release_reason) == ("answered", "1")
    assert "would make the signed string ambiguous" in caplog.text
