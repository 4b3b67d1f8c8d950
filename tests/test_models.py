"""The seed's table, rule by rule: each limit refused with a field-level error, boundaries accepted."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.errors import InvalidRequest
from worker.models import CallRequest, CallResult, ReleaseEvent, parse_request


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
        ({"playList": [{}]}, "playList[0]", "at least one of voiceId, voiceFileName, templateId"),
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
