"""The simulator is at least as strict as the seed (issue 15 item 7): one source per playList item,
callBackUrl's characters in both modes, callerPresent counted in characters, every retCode of
provider-api.md §2 injectable, and the odd answers other tests need (no retCode, no callSerialNo, an
account refused)."""

from __future__ import annotations

import asyncio
import base64
import gc
from collections import Counter
from typing import Any

import pytest

from tests.faults.conftest import CALL_OUTCOMES
from tests.helpers import created
from tests.sandbox.support import VALID, MakeSim, Receiver, Sim, with_, with_item
from worker.callback_url import CALLBACK_PATH, for_job
from worker.sandbox.simulator import SimulatorConfig

INJECTABLE = ["3", "6", "7", "16", "17", "18", "19", "20", "21", "22", "23"]


async def refused(sim: Sim, body: dict[str, Any], token: str) -> tuple[str, str]:
    """(retCode, retMsg) of a request the simulator must refuse with HTTP 200 and no call."""
    status, data = await sim.call(body, token)
    assert status == 200, data
    assert "result" not in data, data
    assert sim.state.log[-1]["callSerialNo"] is None
    return data["retCode"], data["retMsg"]


async def accepted(sim: Sim, body: dict[str, Any], token: str) -> str:
    status, data = await sim.call(body, token)
    assert (status, data.get("retCode")) == (200, "0"), data
    return str(data["result"]["callSerialNo"])


# --- one source per playList item ---------------------------------------------------------------


@pytest.mark.parametrize("sources", [
    {"voiceId": "100001", "templateId": "tpl-1"},
    {"voiceId": "100001", "voiceFileName": "hello.wav"},
    {"voiceFileName": "hello.wav", "templateId": "tpl-1"},
    {"voiceId": "100001", "voiceFileName": "hello.wav", "templateId": "tpl-1"},
])
async def test_several_sources_in_one_item_are_refused_with_12(sim: Sim, sources: dict[str, str]) -> None:
    token = await sim.token()
    code, msg = await refused(sim, with_item(**{"voiceId": ..., **sources}), token)
    assert code == "12"
    assert msg == "playList[0]: exactly one of voiceId, voiceFileName, templateId may be set"
    entry = sim.state.log[-1]
    assert (entry["outcome"], entry["retCode"]) == ("invalid", "12")


async def test_the_second_item_is_named_and_an_empty_source_is_not_a_source(sim: Sim) -> None:
    token = await sim.token()
    two = with_(playList=[{"voiceId": "1"}, {"voiceId": "2", "templateId": "t"}])
    assert await refused(sim, two, token) == (
        "12", "playList[1]: exactly one of voiceId, voiceFileName, templateId may be set")
    assert await refused(sim, with_item(templateId=""), token) == (
        "12", "playList[0].templateId: must be a non-empty string")
    assert await refused(sim, with_item(voiceId=5), token) == ("12", "playList[0].voiceId: must be a non-empty string")
    assert await refused(sim, with_item(voiceId=...), token) == (
        "12", "playList[0]: voiceId, voiceFileName and templateId are all empty")


@pytest.mark.parametrize("source", ["voiceId", "voiceFileName", "templateId"])
async def test_each_source_alone_is_accepted(sim: Sim, source: str) -> None:
    item = {"voiceId": ..., source: "x1", "templateParams": ["a"]}
    await accepted(sim, with_item(**item), await sim.token())


# --- callBackUrl ----------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8800/cb?a=1",      # '=' is not among cec_07_2802's characters
    "http://127.0.0.1:8800/a%20b",
    "http://127.0.0.1:8800/a b",
    "http://127.0.0.1:8800/caf\u00e9",
    "http://user@127.0.0.1/cb",
    "http://127.0.0.1/cb;x",
])
async def test_plain_callback_url_characters_are_checked(sim: Sim, url: str) -> None:
    code, msg = await refused(sim, with_(callBackUrl=url), await sim.token())
    assert (code, msg) == ("9", "callBackUrl: may contain only a-zA-Z0-9-:./_#?& (cec_07_2802)")


async def test_plain_callback_url_length_is_256_characters(sim: Sim) -> None:
    token = await sim.token()
    base = "http://127.0.0.1:8800/"
    await accepted(sim, with_(callBackUrl=base + "x" * (256 - len(base))), token)
    assert await refused(sim, with_(callBackUrl=base + "x" * (257 - len(base))), token) == (
        "9", "callBackUrl: must be a string of up to 256 characters")
    assert (await refused(sim, with_(callBackUrl="mailto:x"), token))[0] == "9"


@pytest.mark.parametrize("job_id", ["spring:8613800000001", "camp-1.a_b:8613800000001", "user@example.com"])
@pytest.mark.parametrize("base64_url", [False, True])
async def test_the_dialers_own_callback_url_with_its_job_id_passes(
    make_sim: MakeSim, job_id: str, base64_url: bool
) -> None:
    sim = await make_sim(callback_url_base64=base64_url)
    url = for_job("https://dialer.example.com" + CALLBACK_PATH, job_id)
    sent = base64.b64encode(url.encode()).decode() if base64_url else url
    await accepted(sim, with_(callBackUrl=sent), await sim.token())


async def test_base64_callback_url_limits_the_encoded_text_and_checks_the_decoded_characters(
    make_sim: MakeSim,
) -> None:
    sim = await make_sim(callback_url_base64=True)
    token = await sim.token()
    base = "http://127.0.0.1:8800/"

    def enc(url: str) -> str:
        return base64.b64encode(url.encode()).decode()

    fits = base + "x" * (192 - len(base))  # 192 characters: 256 encoded
    assert len(enc(fits)) == 256
    await accepted(sim, with_(callBackUrl=enc(fits)), token)
    assert await refused(sim, with_(callBackUrl=enc(fits + "x")), token) == (
        "9", "callBackUrl: must be Base64 text of up to 256 characters")
    assert await refused(sim, with_(callBackUrl=enc(base + "a=1")), token) == (
        "9", "callBackUrl: may contain only a-zA-Z0-9-:./_#?& (cec_07_2802)")
    assert (await refused(sim, with_(callBackUrl=enc("ftp://h/x")), token))[0] == "9"


# --- callerPresent and called, in characters ------------------------------------------------------


async def test_caller_present_is_counted_in_characters_not_bytes(sim: Sim) -> None:
    token = await sim.token()
    await accepted(sim, with_(callerPresent="\u00e9" * 17), token)  # 17 characters, 34 bytes
    await accepted(sim, with_(callerPresent="9" * 32), token)
    assert await refused(sim, with_(callerPresent="9" * 33), token) == (
        "7", "callerPresent: must be a string of up to 32 characters")


async def test_called_is_up_to_32_characters_of_digits_with_an_optional_plus(sim: Sim) -> None:
    token = await sim.token()
    await accepted(sim, with_(called="1" * 32), token)  # 32 digits, no '+'
    await accepted(sim, with_(called="+" + "1" * 31), token)
    for bad in ("1" * 33, "+" + "1" * 32, "+", "1+2", "\u0661\u0662\u0663", " 123"):
        assert (await refused(sim, with_(called=bad), token))[0] == "5", bad


# --- retCodes: injected and triggered -------------------------------------------------------------


@pytest.mark.parametrize("code", INJECTABLE)
async def test_each_ret_code_is_injectable(make_sim: MakeSim, code: str) -> None:
    sim = await make_sim(ret_code_rates={code: 1.0})
    code_got, msg = await refused(sim, VALID, await sim.token())
    assert code_got == code and msg
    entry = (await sim.log())["requests"][-1]
    assert (entry["status"], entry["retCode"], entry["outcome"]) == (200, code, f"retcode{code}")


async def test_ret_code_rates_share_one_seeded_draw(make_sim: MakeSim) -> None:
    runs = []
    for _ in range(2):
        sim = await make_sim(ret_code_rates={"16": 0.3, "3": 0.3}, seed=7)
        token = await sim.token()
        for _ in range(60):
            await sim.call(VALID, token)
        runs.append([r["outcome"] for r in (await sim.log())["requests"]])
    assert runs[0] == runs[1]
    counts = Counter(runs[0])
    assert set(counts) == {"created", "retcode16", "retcode3"}
    assert 8 <= counts["retcode16"] <= 30 and 8 <= counts["retcode3"] <= 30, counts


async def test_injected_codes_come_after_the_body_checks(make_sim: MakeSim) -> None:
    sim = await make_sim(ret_code_rates={"3": 1.0})
    assert (await refused(sim, with_(called="x"), await sim.token()))[0] == "5"


async def test_trial_tenant_allowlist_gives_16(make_sim: MakeSim) -> None:
    sim = await make_sim(allowlist=["8899", "+8613800000001"])
    token = await sim.token()
    await accepted(sim, VALID, token)
    await accepted(sim, with_(called="+8613800000001"), token)
    assert await refused(sim, with_(called="8613800000001"), token) == (
        "16", "called: not on the trial tenant's allowlist")
    assert sim.state.log[-1]["outcome"] == "retcode16"


async def test_unknown_caller_present_gives_7_and_none_is_fine(make_sim: MakeSim) -> None:
    sim = await make_sim(caller_presents=["2222201"])
    token = await sim.token()
    await accepted(sim, VALID, token)
    await accepted(sim, with_(callerPresent=...), token)  # the tenant's default CLIP
    assert await refused(sim, with_(callerPresent="2222202"), token) == (
        "7", "callerPresent: not one of the tenant's CLIP numbers")


async def test_vdn_not_enabled_gives_6(make_sim: MakeSim) -> None:
    sim = await make_sim(vdn_enabled=False)
    token = await sim.token()
    assert await refused(sim, VALID, token) == ("6", "VDN: not enabled for this tenant")
    assert (await sim.post("/_sim/config", {"vdn_enabled": True}))[0] == 200
    await accepted(sim, VALID, token)


async def test_unknown_voice_id_gives_17(make_sim: MakeSim) -> None:
    sim = await make_sim(voice_ids=["100001"])
    token = await sim.token()
    await accepted(sim, VALID, token)
    await accepted(sim, with_item(voiceId=..., templateId="tpl-1"), token)  # only voiceIds are checked
    two = with_(playList=[{"voiceId": "100001"}, {"voiceId": "404"}])
    assert await refused(sim, two, token) == ("17", "playList[1].voiceId: no such voice file")


# --- odd answers: no retCode, no callSerialNo, account refused --------------------------------------


@pytest.mark.parametrize("quirk", ["no_retcode", "no_serial"])
async def test_odd_success_answers_still_create_the_call_and_send_its_event(
    make_sim: MakeSim, receiver: Receiver, quirk: str
) -> None:
    rate = {"no_retcode": "no_ret_code_rate", "no_serial": "no_serial_rate"}[quirk]
    sim = await make_sim(callbacks=True, ring_time_s=0.01, callback_shared_key="k", **{rate: 1.0})
    status, data = await sim.call(with_(callBackUrl=receiver.url), await sim.token())
    assert status == 200
    if quirk == "no_retcode":
        assert "retCode" not in data and data["result"]["callSerialNo"]
    else:
        assert data["retCode"] == "0" and "result" not in data
    entry = (await sim.log())["requests"][-1]
    serial = entry["callSerialNo"]
    assert serial is not None and entry["quirk"] == quirk
    assert entry["retCode"] == (None if quirk == "no_retcode" else "0")
    # Counted as a created call by the tests' helpers and the fault suite's reconciliation.
    assert entry["outcome"] in CALL_OUTCOMES and created([entry]) == [entry]
    await receiver.wait_for(1)
    assert receiver.events[0]["callSerialNo"] == serial
    assert not gc.is_tracked(sim.state.log[-1])


async def test_odd_answers_draw_nothing_unless_set(make_sim: MakeSim) -> None:
    runs = []
    for extra in ({}, {"no_ret_code_rate": 0.0, "no_serial_rate": 0.0, "ret_code_rates": {}}):
        sim = await make_sim(fail_500_rate=0.4, retcode1_rate=0.3, seed=42, **extra)
        token = await sim.token()
        for _ in range(20):
            await sim.call(VALID, token)
        runs.append([(r["outcome"], r["quirk"]) for r in (await sim.log())["requests"]])
    assert runs[0] == runs[1]
    assert {q for _, q in runs[0]} == {None}


async def test_account_refused_answers_401_to_every_call_while_tokens_keep_coming(make_sim: MakeSim) -> None:
    sim = await make_sim(account_refused=True)
    for _ in range(2):
        status, data = await sim.call(VALID, await sim.token())  # a fresh token each time
        assert status == 401 and data["retCode"] == "401"
        assert "purchased" in data["retMsg"]
    log = await sim.log()
    assert [r["outcome"] for r in log["requests"]] == ["account_refused"] * 2
    assert [r["callSerialNo"] for r in log["requests"]] == [None, None]
    assert log["tokens_issued"] == 2
    assert (await sim.call(VALID, None))[0] == 401  # a bad token is still told apart in the log
    assert sim.state.log[-1]["outcome"] == "auth"
    assert (await sim.post("/_sim/config", {"account_refused": False}))[0] == 200
    await accepted(sim, VALID, await sim.token())


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("patch", "field"), [
    ({"ret_code_rates": {"2": 0.1}}, "ret_code_rates"),
    ({"ret_code_rates": {"0": 0.1}}, "ret_code_rates"),
    ({"ret_code_rates": {"3": 1.5}}, "ret_code_rates"),
    ({"ret_code_rates": {"3": "x"}}, "ret_code_rates"),
    ({"ret_code_rates": {"3": 0.6, "16": 0.5}}, "ret_code_rates"),
    ({"ret_code_rates": [3]}, "ret_code_rates"),
    ({"no_ret_code_rate": 2}, "no_ret_code_rate"),
    ({"no_serial_rate": -0.1}, "no_serial_rate"),
    ({"account_refused": "yes"}, "account_refused"),
    ({"vdn_enabled": 0}, "vdn_enabled"),
    ({"allowlist": "8899"}, "allowlist"),
    ({"caller_presents": [1]}, "caller_presents"),
    ({"voice_ids": {"a": 1}}, "voice_ids"),
    ({"callback_signature_spaces": "trim"}, "callback_signature_spaces"),
    ({"_ret_draw": []}, "_ret_draw"),
])
async def test_new_fields_are_validated_naming_the_field(sim: Sim, patch: dict[str, Any], field: str) -> None:
    status, data = await sim.post("/_sim/config", patch)
    assert status == 400 and field in data["retMsg"], data
    if not field.startswith("_"):
        with pytest.raises(ValueError, match=field):
            SimulatorConfig(**patch)


async def test_new_fields_are_patched_and_served(sim: Sim) -> None:
    patch = {"ret_code_rates": {"16": 0.5, "3": 0.5}, "allowlist": ["8899"], "callback_signature_spaces": "strip",
             "no_serial_rate": 0.25}
    status, data = await sim.post("/_sim/config", patch)
    assert status == 200
    assert {k: data["config"][k] for k in patch} == patch
    assert not [k for k in data["config"] if k.startswith("_")]
    assert sim.state.config._ret_draw == ((0.5, "3"), (1.0, "16"))
    token = await sim.token()
    outcomes = {(await sim.call(VALID, token))[1]["retCode"] for _ in range(20)}
    assert outcomes == {"3", "16"}
    await asyncio.sleep(0)
