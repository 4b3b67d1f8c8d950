"""The seed's table, rule by rule: each limit refused with a field-level error, boundaries accepted; and
the two rules of issue 15 item 2 (``called`` up to 32 characters, '+' included; exactly one sound per
``playList`` item) at every entry point: the Python API, the HTTP API and its OpenAPI document, ``dialer
enqueue``, a campaign launch, the do-not-call list and the dial-time check in Lua."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from tests.helpers import run_dialer, settings_env
from worker.campaigns.launch import LaunchError, LaunchOptions, launch_text
from worker.campaigns.suppression import Suppression
from worker.errors import InvalidRequest
from worker.http import create_app
from worker.http.openapi import OPENAPI_DOC
from worker.ledger.producer import Producer
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.models import CallRequest, CallResult, ReleaseEvent, parse_request
from worker.settings import Settings


def ok_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"called": "8899", "playList": [{"voiceId": "100001"}]}
    body.update(over)
    return body


def refused(body: Any) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as exc:
        parse_request(body)
    return {e.field: e.rule for e in exc.value.errors}


def test_seed_example_round_trips_with_exact_field_names() -> None:
    seed = {"called": "8899", "playList": [{"voiceId": "100001", "templateParams": ["100", "200"]}],
            "playTimes": 1, "callerPresent": "2222201", "callBackUrl": "http://10.1.2.3:8800/callbackTest"}
    req = parse_request(seed)
    assert req.body() == seed  # unset optionals (priority) are left out, names are the seed's
    assert req.priority == "9" and req.priority_level == 9


@pytest.mark.parametrize(
    ("over", "field", "rule_part"),
    [
        ({"called": "1" * 33}, "called", "at most 32"),
        ({"called": ""}, "called", "at least 1"),
        ({"called": "12-34"}, "called", "digits"),
        ({"called": 8899}, "called", "string"),
        ({"playList": []}, "playList", "at least 1"),
        ({"playList": [{"voiceId": "1"}] * 6}, "playList", "at most 5"),
        ({"playList": [{}]}, "playList[0]", "exactly one of voiceId, voiceFileName, templateId"),
        ({"playList": [{"voiceId": "1", "templateParams": []}]}, "playList[0].templateParams", "at least 1"),
        ({"playList": [{"voiceId": "1", "templateParams": ["a"] * 11}]}, "playList[0].templateParams", "at most 10"),
        ({"playList": [{"voiceId": "1", "templateParams": ["ok", "x" * 33]}]}, "playList[0].templateParams[1]",
         "32 bytes"),
        ({"playList": [{"voiceId": "1", "templateParams": ["é" * 17]}]}, "playList[0].templateParams[0]",
         "32 bytes"),
        ({"playList": [{"voiceId": "1", "templateParams": ["${x}"]}]}, "playList[0].templateParams[0]", "'$'"),
        ({"callBackUrl": "ftp://host/x"}, "callBackUrl", "http"),
        ({"callBackUrl": "http://h/" + "a" * 250}, "callBackUrl", "at most 256"),
        ({"callerPresent": "1" * 33}, "callerPresent", "at most 32"),
        ({"playTimes": 0}, "playTimes", "greater than or equal to 1"),
        ({"playTimes": 6}, "playTimes", "less than or equal to 5"),
        ({"playTimes": True}, "playTimes", "integer"),
        ({"playTimes": "2"}, "playTimes", "integer"),
        ({"priority": "0"}, "priority", '"1".."9"'),
        ({"priority": "10"}, "priority", '"1".."9"'),
        ({"priority": True}, "priority", '"1".."9"'),
        ({"unexpected": 1}, "unexpected", "unknown field"),
    ],
)
def test_each_rule_is_refused_naming_field_and_rule(over: dict[str, Any], field: str, rule_part: str) -> None:
    errors = refused(ok_body(**over))
    assert field in errors, errors
    assert rule_part in errors[field], errors[field]


def test_missing_required_fields_and_non_object_bodies() -> None:
    assert refused({"playList": [{"voiceId": "1"}]})["called"] == "Field required"
    assert refused({"called": "1"})["playList"] == "Field required"
    assert refused(["not", "an", "object"]) == {"body": "must be a JSON object"}


def test_boundary_values_are_accepted() -> None:
    req = parse_request(ok_body(
        called="+" + "1" * 31,
        playList=[{"templateId": "t", "templateParams": ["x" * 32] * 10}] * 5,
        callBackUrl="https://h/" + "a" * 246,
        callerPresent="1" * 32,
        playTimes=5,
        priority=1,  # an int is accepted and sent as the string the seed wants
    ))
    assert len(req.call_back_url or "") == 256
    assert req.body()["priority"] == "1"
    assert parse_request(ok_body(playTimes=1, priority="9")).body()["playTimes"] == 1


@settings(max_examples=200, deadline=None)
@given(
    called=st.from_regex(r"\A\+?[0-9]{1,31}\Z"),
    items=st.lists(
        st.fixed_dictionaries(
            {"voiceId": st.text("0123456789", min_size=1, max_size=10)},
            optional={"templateParams": st.lists(st.text("abcxyz019 :", min_size=1, max_size=32),
                                                 min_size=1, max_size=10)},
        ),
        min_size=1, max_size=5,
    ),
    play_times=st.integers(1, 5),
    priority=st.sampled_from([str(p) for p in range(1, 10)]),
)
def test_any_valid_body_is_accepted_and_serialised_unchanged(
    called: str, items: list[dict[str, Any]], play_times: int, priority: str
) -> None:
    body = {"called": called, "playList": items, "playTimes": play_times, "priority": priority}
    assert parse_request(body).body() == body


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.none() | st.integers() | st.text(max_size=40), max_size=6))
def test_arbitrary_objects_never_crash_the_validator(body: dict[str, Any]) -> None:
    try:
        parse_request(body)
    except InvalidRequest as exc:
        assert exc.errors and all(e.field and e.rule for e in exc.errors)


def test_response_and_release_event_models() -> None:
    ok = CallResult.model_validate({"retMsg": "Created successfully.", "retCode": "0",
                                    "result": {"callSerialNo": "1308434073450058757"}})
    assert ok.ret_code == "0" and ok.call_serial_no == "1308434073450058757"
    assert CallResult.model_validate({"retCode": 5}).ret_code == "5"
    event = ReleaseEvent.model_validate({"callSerialNo": "1197765398201387012", "called": "88880067",
                                         "releaseReason": "4", "talkDuration": "0", "signature": "x=",
                                         "somethingNew": "kept"})
    assert event.release_reason == "4" and event.call_serial_no == "1197765398201387012"
    assert isinstance(CallRequest.model_json_schema(by_alias=True)["properties"]["playList"], dict)


@pytest.mark.parametrize("called", ["13800000077\n", "13800000077\r\n", "\n13800000077", "+13800000077\n",
                                    "1380000\n0077", "\uff11\uff13\uff18", "+" + "1" * 32])
def test_called_must_match_whole_and_not_end_in_a_line_break(called: str) -> None:
    """``re.match`` with ``$`` let "13800000077\\n" through (``$`` matches before a final newline)."""
    assert "called" in refused(ok_body(called=called))


def test_called_holds_up_to_32_characters_as_the_seed_says() -> None:
    assert parse_request(ok_body(called="1" * 32)).called == "1" * 32  # 31 digits was the limit
    assert parse_request(ok_body(called="+" + "1" * 31)).called == "+" + "1" * 31
    assert "at most 32" in refused(ok_body(called="1" * 33))["called"]


@pytest.mark.parametrize("url", ["http://h/x\n", "https://h/a b", "http://h\r\nX-Evil: 1"])
def test_callback_url_must_match_whole(url: str) -> None:
    assert "callBackUrl" in refused(ok_body(callBackUrl=url))


# --- issue 15 item 2: called holds 32 characters, '+' included, everywhere ---------------------------

DIGITS_32 = "12345678901234567890123456789012"
PLUS_31 = "+" + DIGITS_32[:31]
PLUS_32 = "+" + DIGITS_32  # 33 characters: over the seed's string(32)
SEVERAL = [{"voiceId": "v1", "templateId": "t1"}, {"voiceId": "v1", "voiceFileName": "f.wav"},
           {"templateId": "t1", "voiceFileName": "f.wav", "templateParams": ["x"]},
           {"voiceId": "v1", "voiceFileName": "f.wav", "templateId": "t1"}]
SOURCE_ERROR = "needs exactly one of voiceId, voiceFileName, templateId"
API_KEY = "models-test-api-key-0123456789"


@pytest.mark.parametrize("item", SEVERAL)
def test_a_play_item_with_several_sources_is_refused_naming_the_item(item: dict[str, Any]) -> None:
    """Several sources were accepted (and sent) before; the simulator, like the provider, now refuses them."""
    with pytest.raises(InvalidRequest) as exc:
        parse_request(ok_body(playList=[{"voiceId": "ok"}, item]))
    assert [str(e) for e in exc.value.errors] == [f"playList[1]: {SOURCE_ERROR}"]
    assert str(exc.value) == f"playList[1]: {SOURCE_ERROR}"


def test_a_play_item_with_one_source_and_explicit_nulls_is_accepted() -> None:
    req = parse_request(ok_body(playList=[{"templateId": "t1", "voiceId": None, "templateParams": ["a"]}]))
    assert req.body()["playList"] == [{"templateId": "t1", "templateParams": ["a"]}]


async def test_openapi_called_pattern_alone_holds_32_characters_and_play_items_need_exactly_one_source(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    """The document's ``pattern`` was ``^\\+?[0-9]{1,32}$``: 33 characters with '+' for a client that reads
    the pattern alone; and ``anyOf`` let an item with several sources through."""
    doc = create_app(settings, redis_client, open_provider=False)[OPENAPI_DOC]
    schemas = doc["components"]["schemas"]
    for name in ("CallCreate", "BatchItem"):
        pattern = re.compile(schemas[name]["properties"]["called"]["pattern"])
        assert pattern.search(DIGITS_32) and pattern.search(PLUS_31) and pattern.search("8899"), name
        assert not pattern.search(PLUS_32) and not pattern.search(DIGITS_32 + "3"), name
        assert not pattern.search("++1") and not pattern.search("") and not pattern.search("+"), name
    play = jsonschema.Draft202012Validator(schemas["PlayItem"])
    for item in [*SEVERAL, {}, {"voiceId": None}]:
        assert not play.is_valid(item), item
    for item in ({"voiceId": "v"}, {"templateId": "t", "templateParams": ["a"]},
                 {"voiceFileName": "f", "voiceId": None}):
        assert play.is_valid(item), item


async def test_python_api_takes_32_digits_and_refuses_33_characters(
    producer: Producer, ledger: Ledger
) -> None:
    r = await producer.enqueue(ok_body(called=DIGITS_32), campaign="c32")
    assert (r.job_id, r.status) == (f"c32:{DIGITS_32}", "accepted")
    r = await producer.enqueue(ok_body(called=PLUS_31), job_id="plus-31")
    assert r.status == "accepted"
    rec = await ledger.get(f"c32:{DIGITS_32}")
    assert rec is not None and rec.called == DIGITS_32
    with pytest.raises(InvalidRequest) as exc:
        await producer.enqueue(ok_body(called=PLUS_32), job_id="plus-32")
    assert [e.field for e in exc.value.errors] == ["called"]
    with pytest.raises(InvalidRequest) as exc:
        await producer.enqueue(ok_body(playList=[SEVERAL[0]]), job_id="two-sources")
    assert [str(e) for e in exc.value.errors] == [f"playList[0]: {SOURCE_ERROR}"]
    assert await ledger.get("plus-32") is None and await ledger.get("two-sources") is None


async def test_http_api_takes_32_digits_and_refuses_33_characters(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    api = settings.model_copy(update={"api_keys": [SecretStr(API_KEY)], "http_rate_limit": 0})
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with TestClient(TestServer(create_app(api, redis_client, open_provider=False), host="127.0.0.1")) as c:
        r = await c.post("/v1/calls", json=ok_body(called=DIGITS_32), headers={**auth, "Idempotency-Key": "h32"})
        assert r.status == 202, await r.text()
        assert (await r.json())["job"]["called"] == DIGITS_32
        r = await c.post("/v1/calls", json=ok_body(called=PLUS_32), headers={**auth, "Idempotency-Key": "h33"})
        assert r.status == 422
        assert [f["field"] for f in (await r.json())["error"]["fields"]] == ["called"]
        r = await c.post("/v1/calls", json=ok_body(playList=[SEVERAL[1]]), headers={**auth, "Idempotency-Key": "h2s"})
        assert r.status == 422
        assert (await r.json())["error"]["fields"] == [{"field": "playList[0]", "rule": SOURCE_ERROR}]
        r = await c.post("/v1/calls:batch", headers=auth, json={"items": [
            ok_body(called=DIGITS_32, id="b32"), ok_body(called=PLUS_31, id="b31"), ok_body(called=PLUS_32, id="b33"),
            ok_body(playList=[SEVERAL[2]], id="b2s")]})
        assert r.status == 200, await r.text()
        results = (await r.json())["results"]
        assert [x["status"] for x in results] == ["accepted", "accepted", "rejected", "rejected"]
        assert [e["field"] for e in results[2]["errors"]] == ["called"]
        assert results[3]["errors"] == [{"field": "playList[0]", "rule": SOURCE_ERROR}]


async def test_cli_enqueue_takes_32_digits_and_refuses_33_characters(settings: Settings, tmp_path: Path) -> None:
    bodies = tmp_path / "bodies.jsonl"
    bodies.write_text("\n".join(json.dumps(b) for b in [
        {**ok_body(called=DIGITS_32), "id": "cli-32"}, {**ok_body(called=PLUS_31), "id": "cli-31"},
        {**ok_body(called=PLUS_32), "id": "cli-33"}, {**ok_body(playList=[SEVERAL[0]]), "id": "cli-2s"}]) + "\n")
    code, out, err = await run_dialer("enqueue", "--json", str(bodies), env=settings_env(settings))
    assert code == 1, err  # some items were rejected
    assert sorted(line.split("\t")[0] for line in out.splitlines()) == ["cli-31", "cli-32"], out
    assert "rejected item 3: called:" in err, err
    assert f"rejected item 4: playList[0]: {SOURCE_ERROR}" in err, err
    # The flags build one play item: two sources given as flags are refused the same way.
    code, out, err = await run_dialer("enqueue", "--called", DIGITS_32, "--voice-id", "v", "--template-id", "t",
                                      env=settings_env(settings))
    assert code == 1 and f"playList[0]: {SOURCE_ERROR}" in err, (out, err)
    code, out, err = await run_dialer("enqueue", "--called", DIGITS_32, "--voice-id", "v", "--id", "cli-flags",
                                      env=settings_env(settings))
    assert code == 0 and out.startswith("cli-flags\tnew"), (out, err)


async def test_campaign_launch_and_do_not_call_list_take_32_digits(
    settings: Settings, redis_client: aioredis.Redis, ledger: Ledger
) -> None:
    listed = "9" * 32
    assert await Suppression(redis_client, settings).add([listed]) == 1
    assert await Suppression(redis_client, settings).contains("+" + listed)  # the same number, '+' dropped
    spaced = " ".join(DIGITS_32[i:i + 4] for i in range(0, 32, 4))  # formatting is dropped first
    csv = ("called,voiceId,templateId\n"
           f"{spaced},,\n{listed},,\n{PLUS_32},,\n{'7' * 32},v1,t1\n{'8' * 32},,\n")
    report = await launch_text(redis_client, settings, csv, LaunchOptions(name="c32", template_id="tpl-1"))
    assert (report.rows, report.enqueued, report.suppressed) == (5, 2, 1), report.as_dict()
    assert [(e.line, e.field) for e in report.rejected] == [(4, "called"), (5, "voiceId/templateId/voiceFileName")]
    assert report.rejected[1].rule == SOURCE_ERROR
    rec = await ledger.get(f"c32:{DIGITS_32}")
    assert rec is not None and rec.called == DIGITS_32
    # Added to the list after launch: the dial-time check (gate.lua's number_key) finds the 32 digits.
    await Suppression(redis_client, settings).add([DIGITS_32])
    claim = await ledger.claim_run(f"c32:{DIGITS_32}")
    assert claim.verdict == "final" and claim.record is not None and claim.record.state == State.SUPPRESSED
    claim = await ledger.claim_run(f"c32:{'8' * 32}")
    assert claim.verdict == "run"


async def test_campaign_launch_refuses_several_default_sources_naming_the_flags(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    with pytest.raises(LaunchError) as exc:
        await launch_text(redis_client, settings, f"called\n{DIGITS_32}\n",
                          LaunchOptions(name="c2s", voice_id="v1", template_id="t1"))
    assert [str(e) for e in exc.value.errors] == [f"--voice-id/--template-id/--voice-file-name: {SOURCE_ERROR}"]
