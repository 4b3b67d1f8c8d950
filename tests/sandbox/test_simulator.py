"""The provider simulator over real HTTP: tokens, the seed's checks and retCodes, faults, log, callbacks."""

from __future__ import annotations

import asyncio
import base64
import gc
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.sandbox.support import CREATE_PATH, TOKEN_PATH, VALID, MakeSim, Receiver, Sim, with_, with_item
from worker.provider.signature import SignatureMode, SignatureSpaces, verify
from worker.sandbox.signing import release_signature
from worker.sandbox.simulator import SimulatorConfig

# --- tokens ----------------------------------------------------------------------------------------


async def test_token_issue_honours_x_token_expire_and_answers_strings(sim: Sim) -> None:
    before = int(time.time())
    creds = {"app_key": "sim-app-key", "app_secret": "sim-app-secret"}
    async with sim.session.post(sim.url(TOKEN_PATH), json=creds, headers={"X-Token-Expire": "120"}) as resp:
        assert resp.status == 200
        data = await resp.json()
    assert set(data) == {"AccessToken", "ApplyType", "CreateTime", "Expires", "Scope", "AppKey", "UserID"}
    assert all(isinstance(v, str) for v in data.values())
    assert data["Expires"] == "120"
    assert data["ApplyType"] == "Bearer"
    assert data["AppKey"] == "sim-app-key"
    assert data["UserID"] == "Anonymous"
    assert before <= int(data["CreateTime"]) <= int(time.time())
    async with sim.session.post(sim.url(TOKEN_PATH), json=creds) as resp:
        second = await resp.json()
    assert second["Expires"] == "600"
    assert second["AccessToken"] != data["AccessToken"]
    log = await sim.log()
    assert (log["tokens_issued"], log["token_requests"]) == (2, 2)


async def test_forced_token_lifetime_overrides_header(make_sim: MakeSim) -> None:
    sim = await make_sim(token_lifetime_s=5)
    creds = {"app_key": "sim-app-key", "app_secret": "sim-app-secret"}
    async with sim.session.post(sim.url(TOKEN_PATH), json=creds, headers={"X-Token-Expire": "120"}) as resp:
        assert (await resp.json())["Expires"] == "5"


@pytest.mark.parametrize("expire", ["0", "3601", "ten"])
async def test_bad_x_token_expire_is_400(sim: Sim, expire: str) -> None:
    creds = {"app_key": "sim-app-key", "app_secret": "sim-app-secret"}
    async with sim.session.post(sim.url(TOKEN_PATH), json=creds, headers={"X-Token-Expire": expire}) as resp:
        assert resp.status == 400
        assert "AccessToken" not in await resp.json()


@pytest.mark.parametrize(
    "payload",
    [
        {"app_key": "sim-app-key", "app_secret": "wrong"},
        {"app_key": "other", "app_secret": "sim-app-secret"},
        {"app_key": "sim-app-key"},
        {"app_key": "sim-app-key", "app_secret": 5},
        ["sim-app-key", "sim-app-secret"],
        b"not json",
    ],
)
async def test_bad_credentials_or_body_get_401_without_token(sim: Sim, payload: Any) -> None:
    kwargs: dict[str, Any] = {"data": payload} if isinstance(payload, bytes) else {"json": payload}
    async with sim.session.post(sim.url(TOKEN_PATH), **kwargs) as resp:
        assert resp.status == 401
        data = await resp.json()
    assert "AccessToken" not in data
    log = await sim.log()
    assert (log["tokens_issued"], log["token_requests"]) == (0, 1)


# --- authorization of createVoiceNotification -------------------------------------------------------


async def test_create_refuses_missing_or_malformed_or_unknown_token(sim: Sim) -> None:
    token = await sim.token()
    assert (await sim.call(VALID, None))[0] == 401
    assert (await sim.call(VALID, "not-a-token"))[0] == 401
    assert (await sim.call(VALID, None, {"Authorization": f"bearer {token}"}))[0] == 401
    assert (await sim.call(VALID, None, {"Authorization": f"Bearer  {token}"}))[0] == 401
    assert (await sim.call(VALID, None, {"Authorization": token}))[0] == 401
    status, data = await sim.call(VALID, token)
    assert status == 200 and data["retCode"] == "0"
    log = await sim.log()
    assert [r["outcome"] for r in log["requests"]] == ["auth"] * 5 + ["created"]
    assert [r["status"] for r in log["requests"]] == [401] * 5 + [200]


async def test_x_app_key_must_match_when_present(sim: Sim) -> None:
    token = await sim.token()
    assert (await sim.call(VALID, token, {"X-APP-Key": "someone-else"}))[0] == 403
    async with sim.session.post(
        sim.url(CREATE_PATH), json=VALID, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        assert resp.status == 200  # X-APP-Key is optional in the seed


async def test_expired_token_is_401(sim: Sim) -> None:
    token = await sim.token(expire="1")
    assert (await sim.call(VALID, token))[0] == 200
    await asyncio.sleep(1.1)
    assert (await sim.call(VALID, token))[0] == 401


async def test_revoked_tokens_are_401_and_new_ones_work(sim: Sim) -> None:
    first, second = await sim.token(), await sim.token()
    status, data = await sim.post("/_sim/revoke")
    assert status == 200 and data == {"revoked": 2}
    assert (await sim.call(VALID, first))[0] == 401
    assert (await sim.call(VALID, second))[0] == 401
    assert (await sim.call(VALID, await sim.token()))[0] == 200


# --- success, validation ---------------------------------------------------------------------------


async def test_success_shape_and_unique_serials(sim: Sim) -> None:
    token = await sim.token()
    results = await asyncio.gather(*(sim.call(VALID, token) for _ in range(60)))
    serials = []
    for status, data in results:
        assert status == 200
        assert data.keys() == {"retMsg", "retCode", "result"}
        assert data["retCode"] == "0" and data["retMsg"] == "Created successfully."
        serial = data["result"]["callSerialNo"]
        assert isinstance(serial, str) and serial.isdigit()
        serials.append(serial)
    assert len(set(serials)) == 60


async def test_unknown_fields_and_nulls_are_ignored(sim: Sim) -> None:
    token = await sim.token()
    body = with_(someNewField={"x": 1}, callerPresent=None, priority=None)
    status, data = await sim.call(body, token)
    assert (status, data["retCode"]) == (200, "0")


@pytest.mark.parametrize(
    ("body", "ret_code"),
    [
        (with_(called=...), "5"),
        (with_(called=8899), "5"),
        (with_(called=""), "5"),
        (with_(called="12ab"), "5"),
        (with_(called="1" * 33), "5"),
        (with_(called="+" + "1" * 32), "5"),  # the seed's string(32): 33 characters
        (with_(called="13800000077\n"), "5"),
        (with_(playList=...), "11"),
        (with_(playList=[]), "11"),
        (with_(playList=[{"voiceId": "1"}] * 6), "11"),
        (with_(playList={"voiceId": "1"}), "11"),
        (with_item(voiceId=...), "12"),
        (with_item(voiceId=""), "12"),
        (with_(playList=["100001"]), "12"),
        (with_item(templateParams=[]), "15"),
        (with_item(templateParams=["1"] * 11), "15"),
        (with_item(templateParams="100"), "15"),
        (with_item(templateParams=["a$b"]), "14"),
        (with_item(templateParams=["ok", "{x}"]), "14"),
        (with_item(templateParams=["x" * 33]), "13"),
        (with_item(templateParams=["é" * 17]), "13"),  # 17 characters, 34 bytes
        (with_(callerPresent="1" * 33), "7"),  # 33 characters
        (with_(callerPresent="é" * 33), "7"),
        (with_(callerPresent=2222201), "7"),
        (with_(callBackUrl="ftp://127.0.0.1/cb"), "9"),
        (with_(callBackUrl="http://h/" + "a" * 250), "9"),
        (with_(callBackUrl=5), "9"),
        (with_(playTimes=0), "10"),
        (with_(playTimes=6), "10"),
        (with_(playTimes="1"), "10"),
        (with_(playTimes=1.5), "10"),
        (with_(playTimes=True), "10"),
    ],
)
async def test_validation_ret_codes(sim: Sim, body: dict[str, Any], ret_code: str) -> None:
    token = await sim.token()
    status, data = await sim.call(body, token)
    assert status == 200
    assert data["retCode"] == ret_code
    assert "result" not in data
    entry = (await sim.log())["requests"][-1]
    assert (entry["outcome"], entry["retCode"], entry["callSerialNo"]) == ("invalid", ret_code, None)


@pytest.mark.parametrize("body", [with_(priority="0"), with_(priority=5), with_(priority="10"), [VALID]])
async def test_bad_priority_or_non_object_body_is_400(sim: Sim, body: Any) -> None:
    token = await sim.token()
    assert (await sim.call(body, token))[0] == 400
    assert (await sim.call(None, token, raw=b"{not json"))[0] == 400
    assert [r["outcome"] for r in (await sim.log())["requests"]] == ["invalid", "invalid"]


async def test_all_valid_priorities_and_plus_numbers_pass(sim: Sim) -> None:
    token = await sim.token()
    for called in ("1" * 32, "+" + "1" * 31):  # the seed's string(32), which the dialer accepts too
        status, data = await sim.call(with_(called=called), token)
        assert (status, data["retCode"]) == (200, "0"), called
    for p in "123456789":
        status, data = await sim.call(with_(priority=p, called="+8613800000000"), token)
        assert (status, data["retCode"]) == (200, "0")


async def test_base64_callback_url_mode(make_sim: MakeSim) -> None:
    sim = await make_sim(callback_url_base64=True)
    token = await sim.token()
    encoded = base64.b64encode(b"http://127.0.0.1:8800/callbackTest").decode()
    assert (await sim.call(with_(callBackUrl=encoded), token))[1]["retCode"] == "0"
    # sent plain while Base64 is expected, or holding a character cec_07_2802 does not allow
    assert (await sim.call(VALID, token))[1]["retCode"] == "9"
    bad_chars = base64.b64encode(b"http://127.0.0.1/cb?a=1").decode()
    assert (await sim.call(with_(callBackUrl=bad_chars), token))[1]["retCode"] == "9"
    assert (await sim.call(with_(callBackUrl="%%%"), token))[1]["retCode"] == "9"


async def test_wrong_path_is_404(sim: Sim) -> None:
    async with sim.session.post(sim.url("/apiaccess/rest/voiceNotification/v3/createVoiceNotification")) as r:
        assert r.status == 404


# --- faults ----------------------------------------------------------------------------------------


async def test_fail_500_rate(make_sim: MakeSim) -> None:
    sim = await make_sim(fail_500_rate=1.0)
    token = await sim.token()
    status, data = await sim.call(VALID, token)
    assert status == 500 and "result" not in data
    entry = (await sim.log())["requests"][-1]
    assert (entry["status"], entry["outcome"], entry["callSerialNo"]) == (500, "500", None)


async def test_retcode1_rate(make_sim: MakeSim) -> None:
    sim = await make_sim(retcode1_rate=1.0)
    status, data = await sim.call(VALID, await sim.token())
    assert (status, data["retCode"]) == (200, "1")
    assert (await sim.log())["requests"][-1]["outcome"] == "retcode1"


async def test_invalid_body_is_refused_before_faults(make_sim: MakeSim) -> None:
    sim = await make_sim(fail_500_rate=1.0)
    assert (await sim.call(with_(called="x"), await sim.token())) == (200, {"retCode": "5", "retMsg": (
        "called: must be a string of up to 32 digits with an optional leading '+'")})


async def test_seed_makes_fault_injection_reproducible(make_sim: MakeSim) -> None:
    runs = []
    for _ in range(2):
        sim = await make_sim(fail_500_rate=0.4, retcode1_rate=0.3, seed=42)
        token = await sim.token()
        for _ in range(30):
            await sim.call(VALID, token)
        runs.append([r["outcome"] for r in (await sim.log())["requests"]])
    assert runs[0] == runs[1]
    assert {"created", "500", "retcode1"} <= set(runs[0])


async def test_max_rps_refuses_over_the_sliding_second(make_sim: MakeSim) -> None:
    sim = await make_sim(max_rps=3)
    token = await sim.token()
    answers = [await sim.call(VALID, token) for _ in range(6)]
    assert [s for s, _ in answers] == [200, 200, 200, 500, 500, 500]
    assert answers[-1][1]["retMsg"] == "rate exceeded"
    assert [r["outcome"] for r in (await sim.log())["requests"]][3:] == ["rate"] * 3
    await asyncio.sleep(1.05)
    assert (await sim.call(VALID, token))[0] == 200


async def test_latency_delays_the_answer(make_sim: MakeSim) -> None:
    sim = await make_sim(latency_ms=150)
    token = await sim.token()
    started = time.monotonic()
    assert (await sim.call(VALID, token))[0] == 200
    assert time.monotonic() - started >= 0.15


async def test_hang_answers_success_late_and_is_logged_meanwhile(
    make_sim: MakeSim,
) -> None:
    sim = await make_sim(hang_rate=1.0, hang_s=0.4)
    token = await sim.token()
    started = time.monotonic()
    pending = asyncio.ensure_future(sim.call(VALID, token))
    await asyncio.sleep(0.15)
    entry = sim.state.log[-1]
    assert not pending.done()
    assert (entry["outcome"], entry["status"]) == ("hang", 200)
    status, data = await pending
    assert time.monotonic() - started >= 0.4
    assert (status, data["retCode"], data["result"]["callSerialNo"]) == (200, "0", entry["callSerialNo"])


async def test_hung_request_does_not_hold_shutdown(make_sim: MakeSim) -> None:
    sim = await make_sim(hang_rate=1.0, hang_s=30)
    token = await sim.token()
    with pytest.raises(asyncio.TimeoutError):
        async with sim.session.post(
            sim.url(CREATE_PATH), json=VALID, headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=0.2),
        ):
            pass
    started = time.monotonic()
    await sim.server.close()
    assert time.monotonic() - started < 5


# --- log, reset, config ----------------------------------------------------------------------------


async def test_log_records_body_priority_headers_but_never_the_token(sim: Sim) -> None:
    token = await sim.token()
    t0 = time.time()
    _, first = await sim.call(with_(priority="3"), token)
    await sim.call(VALID, token)
    await sim.call(VALID, None)
    t1 = time.time()

    async with sim.session.get(sim.url("/_sim/log")) as resp:
        raw = await resp.text()
    assert token not in raw
    log = await sim.log()
    one, two, three = log["requests"]
    assert [one["seq"], two["seq"], three["seq"]] == [1, 2, 3]
    assert t0 <= one["ts"] <= two["ts"] <= three["ts"] <= t1
    assert one["body"] == with_(priority="3") and two["body"] == VALID
    assert (one["priority"], two["priority"]) == ("3", "9")
    assert one["called"] == "8899"
    assert one["callSerialNo"] == first["result"]["callSerialNo"]
    assert (one["status"], one["retCode"], one["outcome"]) == (200, "0", "created")
    assert one["headers"] == {"X-APP-Key": "sim-app-key", "Authorization-ok": True}
    assert three["headers"] == {"X-APP-Key": "sim-app-key", "Authorization-ok": False}
    assert (three["outcome"], three["status"], three["body"]) == ("auth", 401, VALID)
    assert token not in repr(sim.state)

    assert [r["seq"] for r in (await sim.log(since=1))["requests"]] == [2, 3]
    assert [r["seq"] for r in (await sim.log(since=1, limit=1))["requests"]] == [2]


async def test_log_entries_stay_out_of_the_garbage_collector(sim: Sim) -> None:
    # The benchmarks time requests by the simulator's stamps: a log the collector had to walk made
    # full collections stop the loop for 40-75 ms at ~5,000 requests and bunched the stamps after.
    token = await sim.token()
    await sim.call(VALID, token)
    await sim.call(VALID, None)
    await sim.call(None, token, raw=b"\xff not JSON")
    await sim.call([1, {"a": [2]}], token)
    entries = sim.state.log
    assert len(entries) == 4
    assert [gc.is_tracked(e) for e in entries] == [False] * 4
    served = (await sim.log())["requests"]
    assert [r["body"] for r in served] == [VALID, VALID, None, [1, {"a": [2]}]]
    assert [r["outcome"] for r in served] == ["created", "auth", "invalid", "invalid"]
    assert served[2]["headers"] == {"X-APP-Key": "sim-app-key", "Authorization-ok": True}
    assert all(not k.startswith("_") for r in served for k in r)


async def test_reset_clears_log_and_counters_but_keeps_tokens(sim: Sim) -> None:
    token = await sim.token()
    await sim.call(VALID, token)
    assert (await sim.post("/_sim/reset"))[0] == 200
    log = await sim.log()
    assert (log["requests"], log["tokens_issued"], log["token_requests"]) == ([], 0, 0)
    assert (await sim.call(VALID, token))[0] == 200
    log = await sim.log(since=1)  # seq keeps counting, so a pager's cursor stays valid
    assert [r["seq"] for r in log["requests"]] == [2]


async def test_config_patch_at_run_time(sim: Sim) -> None:
    token = await sim.token()
    status, data = await sim.post("/_sim/config", {"fail_500_rate": 1.0})
    assert status == 200
    assert data["config"]["fail_500_rate"] == 1.0
    assert data["config"]["app_secret"] != "sim-app-secret"
    assert (await sim.call(VALID, token))[0] == 500

    for bad in ({"no_such_field": 1}, {"fail_500_rate": 2}, {"fail_500_rate": "x"}, {"callbacks": 1}, [1]):
        status, data = await sim.post("/_sim/config", bad)
        assert status == 400, bad
    assert sim.state.config.fail_500_rate == 1.0

    assert (await sim.post("/_sim/config", {"fail_500_rate": 0}))[0] == 200
    assert (await sim.call(VALID, token))[0] == 200


def test_config_is_validated_and_hides_secrets() -> None:
    with pytest.raises(ValueError, match="fail_500_rate"):
        SimulatorConfig(fail_500_rate=1.5)
    with pytest.raises(ValueError, match="max_rps"):
        SimulatorConfig(max_rps=0)
    cfg = SimulatorConfig(app_secret="top-secret-sk", callback_shared_key="cb-secret")
    assert "top-secret-sk" not in repr(cfg) and "cb-secret" not in repr(cfg)


async def test_health(sim: Sim) -> None:
    async with sim.session.get(sim.url("/_sim/health")) as resp:
        assert resp.status == 200


# --- callbacks -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sha256", "hmac-sha256"])
async def test_callbacks_are_delivered_and_signed(
    make_sim: MakeSim, receiver: Receiver, mode: SignatureMode
) -> None:
    sim = await make_sim(
        callbacks=True, ring_time_s=0.05, callback_shared_key="cb-key", callback_signature_mode=mode,
        answer_rate=1.0,
    )
    token = await sim.token()
    serials = {(await sim.call(with_(callBackUrl=receiver.url), token))[1]["result"]["callSerialNo"]
               for _ in range(2)}
    await sim.call(with_(callBackUrl=...), token)  # no callBackUrl: nothing to deliver
    await receiver.wait_for(2)
    await asyncio.sleep(0.1)
    assert len(receiver.events) == 2
    other: SignatureMode = "hmac-sha256" if mode == "sha256" else "sha256"
    for event in receiver.events:
        assert all(isinstance(v, str) for v in event.values())
        assert {"callSerialNo", "called", "callerPresent", "createCallTime", "alertingTime", "talkingTime",
                "releaseTime", "talkDuration", "releaseReason", "recordfile", "locationId", "timestamp",
                "nonce", "signature"} == set(event)
        assert (event["called"], event["callerPresent"], event["releaseReason"]) == ("8899", "2222201", "1")
        assert event["talkingTime"] != ""
        assert len(event["createCallTime"]) == len("2022/02/22,10:04:28:823")
        assert verify(event, "cb-key", mode)
        assert not verify(event, "cb-key", other)
        assert not verify({**event, "releaseReason": "4"}, "cb-key", mode)
    assert {e["callSerialNo"] for e in receiver.events} == serials
    for entry in (await sim.log())["callbacks"]:
        assert (entry["url"], entry["status"], entry["attempts"]) == (receiver.url, 200, 1)


@pytest.mark.parametrize("mode", ["sha256", "hmac-sha256"])
@pytest.mark.parametrize("spaces", ["keep", "strip"])
async def test_callback_signature_spaces_agree_with_the_receiver(
    make_sim: MakeSim, receiver: Receiver, mode: SignatureMode, spaces: SignatureSpaces
) -> None:
    # The simulator signs with its own code (worker.sandbox.signing); the receiver's verify must agree,
    # and only under the same space handling once a value holds a space.
    sim = await make_sim(callbacks=True, ring_time_s=0.01, callback_shared_key="cb key", callback_signature_mode=mode,
                         callback_signature_spaces=spaces)
    await sim.call(with_(callBackUrl=receiver.url, callerPresent="222 2201"), await sim.token())
    await receiver.wait_for(1)
    event = receiver.events[0]
    assert event["callerPresent"] == "222 2201" and "," in event["releaseTime"]
    other: SignatureSpaces = "strip" if spaces == "keep" else "keep"
    assert verify(event, "cb key", mode, spaces=spaces)
    assert not verify(event, "cb key", mode, spaces=other)
    assert release_signature(event, "cb key", event["timestamp"], event["nonce"], mode, spaces) == event["signature"]


async def test_unanswered_unsigned_callback_to_base64_url(
    make_sim: MakeSim, receiver: Receiver
) -> None:
    sim = await make_sim(callbacks=True, ring_time_s=0.01, answer_rate=0.0, callback_url_base64=True)
    encoded = base64.b64encode(receiver.url.encode()).decode()
    assert (await sim.call(with_(callBackUrl=encoded), await sim.token()))[1]["retCode"] == "0"
    await receiver.wait_for(1)
    event = receiver.events[0]
    assert "signature" not in event
    assert (event["releaseReason"], event["talkingTime"], event["talkDuration"]) == ("4", "", "0")


async def test_failed_callbacks_are_retried(
    make_sim: MakeSim, receiver: Receiver
) -> None:
    receiver.fail_first = 2
    sim = await make_sim(callbacks=True, ring_time_s=0.01)
    _, data = await sim.call(with_(callBackUrl=receiver.url), await sim.token())
    await receiver.wait_for(1)
    await asyncio.sleep(0.05)
    assert receiver.posts == 3
    assert (await sim.log())["callbacks"] == [{
        "callSerialNo": data["result"]["callSerialNo"], "url": receiver.url, "status": 200, "attempts": 3,
        "releaseReason": receiver.events[0]["releaseReason"],
    }]


async def test_undeliverable_callback_is_recorded_and_harmless(
    make_sim: MakeSim, receiver: Receiver
) -> None:
    dead_url = receiver.url
    assert receiver.server is not None
    await receiver.server.close()  # nothing listens there any more
    sim = await make_sim(callbacks=True, ring_time_s=0.01)
    token = await sim.token()
    await sim.call(with_(callBackUrl=dead_url), token)
    deadline = time.monotonic() + 5
    while not sim.state.callbacks:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert sim.state.callbacks[0]["status"] is None
    assert sim.state.callbacks[0]["attempts"] == 4  # first try + 3 retries
    assert (await sim.call(VALID, token))[0] == 200


async def test_cleanup_cancels_pending_callbacks(
    make_sim: MakeSim, receiver: Receiver
) -> None:
    sim = await make_sim(callbacks=True, ring_time_s=30)
    await sim.call(with_(callBackUrl=receiver.url), await sim.token())
    pending = list(sim.state._tasks)
    assert len(pending) == 1
    started = time.monotonic()
    await sim.server.close()
    assert time.monotonic() - started < 5
    assert pending[0].cancelled()
    assert receiver.posts == 0


# --- start-up cost ---------------------------------------------------------------------------------


def test_the_simulator_loads_neither_pydantic_nor_the_code_it_checks() -> None:
    # Cheap to start (the benchmarks restart it), and independent of the receiver's signature code and
    # the client's models, so that a mistake there cannot hide behind the same mistake here.
    code = ("import sys, worker.sandbox.simulator; "
            "print(sorted(m for m in sys.modules if m == 'pydantic' or m in "
            "('worker.provider.signature', 'worker.models', 'worker.callback_url')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout.strip() == "[]"
