"""The launcher's fast path for CSV rows (worker/campaigns/fast_rows.py) accepts nothing the model refuses,
and builds the same job as the model's path, on generated rows; and it does accept the common rows."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from worker.campaigns.launch import CSV_COLUMNS, LaunchOptions, LaunchReport, _Checker, _csv_item, check_options
from worker.campaigns.rows import CompactRow, request_body
from worker.settings import Settings, load_settings

_SETTINGS = load_settings(redis_url="redis://127.0.0.1:9/0", app_key="k", app_secret="s",
                          public_url="https://dialer.example")
_OPTIONS = [
    LaunchOptions(name="c", template_id="tpl-1", params=("a", "b"), caller_present="555", priority=3),
    LaunchOptions(name="camp-" + "x" * 59, voice_id="v1", play_times=2),
    LaunchOptions(name="c", template_id="t" * 64),
    LaunchOptions(name="c"),  # no default source: a row must name its own
]

_cell = st.one_of(
    st.just(""), st.text(max_size=3), st.sampled_from([" ", "  x ", "$", "{a}", "é" * 11, "é" * 17, "|", "a||b"]),
    st.text(alphabet="0123456789+-.() \t", max_size=36), st.text(min_size=30, max_size=70),
)
_CELLS: dict[str, Any] = {
    "called": st.one_of(_cell, st.from_regex(r"\+?[0-9]{1,33}", fullmatch=True),
                        st.sampled_from(["+86 (138) 0000-0001", "٣٣٣", "\uff11\uff12", "+", "0", "9" * 32,
                                         "+" + "9" * 32])),
    "priority": st.one_of(_cell, st.sampled_from(["1", "9", " 3 ", "0", "10", "٣", "3.0"])),
    "callerPresent": st.one_of(_cell, st.text(min_size=31, max_size=34), st.just("555")),
    "templateParams": st.one_of(
        _cell, st.lists(st.text(max_size=34), max_size=12).map("|".join),
        st.lists(st.sampled_from(["a", "bb", "é" * 16]), min_size=9, max_size=12).map("|".join)),
    "voiceId": st.one_of(_cell, st.sampled_from(["v1", "v" * 64, "v" * 65])),
    "templateId": st.one_of(_cell, st.sampled_from(["t1", "tpl-1", "t" * 64, "t" * 65])),
    "voiceFileName": st.one_of(_cell, st.sampled_from(["a.wav", "f" * 256, "f" * 257])),
    "playTimes": st.one_of(_cell, st.sampled_from(["1", "5", "0", "6", " 2", "05", "+3", "٣", "2.0"])),
    "id": st.one_of(_cell, st.sampled_from(["order-1", "a:b", "x" * 128, "x" * 129, "o@k"])),
    "timezone": st.one_of(_cell, st.sampled_from(["UTC", "Europe/Paris", "Mars/Base", "../etc", "utc"])),
    "statusCallbackUrl": st.one_of(_cell, st.sampled_from(["https://hooks.example/a", "http://127.0.0.1/x",
                                                           "ftp://x.example", "https://u:p@x.example/"])),
}


def _checkers(opts: LaunchOptions, header: list[str], settings: Settings = _SETTINGS) -> tuple[_Checker, _Checker]:
    """The same launch's checker twice: one taking the fast path, one forced onto the model's."""
    from worker.campaigns.outcomes import callback_url

    spec, errors = check_options(opts, callback=callback_url(settings))
    assert not errors, errors
    fast = _Checker(settings, opts, spec, LaunchReport("c", "f"))
    full = _Checker(settings, opts, spec, LaunchReport("c", "f"))
    fast.start_csv(header)
    full.start_csv(header)
    return fast, full


def _full(checker: _Checker, header: list[str], cells: list[str]) -> CompactRow | None:
    item = _csv_item(2, header, cells, checker._spec)
    return None if item is None else checker.item(item)


def _same_job(a: CompactRow, b: CompactRow, checker: _Checker) -> None:
    spec = checker._spec
    assert request_body(a, spec) == request_body(b, spec)
    assert (a.key, a.member, a.job_id, a.timezone, a.status_callback_url) == \
        (b.key, b.member, b.job_id, b.timezone, b.status_callback_url)


_VALID: dict[str, Any] = {
    "called": st.from_regex(r"\+?[1-9][0-9]{5,14}", fullmatch=True),
    "priority": st.sampled_from(["", "1", "9", "3"]),
    "callerPresent": st.one_of(st.just(""), st.text(min_size=1, max_size=32).map(str.strip)),
    "templateParams": st.one_of(st.just(""), st.lists(st.text(alphabet="abcé€ 1", min_size=1, max_size=8),
                                                      min_size=1, max_size=10).map("|".join)),
    "voiceId": st.just(""), "templateId": st.just(""), "voiceFileName": st.just(""),
    "playTimes": st.sampled_from(["", "1", "5"]),
    "id": st.sampled_from(["", "order-1", "o@k"]),
    "timezone": st.sampled_from(["", "UTC", "Europe/Paris"]),
    "statusCallbackUrl": st.sampled_from(["", "https://hooks.example/a"]),
}


@st.composite
def _rows(draw: st.DrawFn) -> tuple[int, list[str], list[str]]:
    """A row valid but for (mostly) one cell drawn from anything, so each check is reached."""
    odd_column = draw(st.sampled_from(CSV_COLUMNS))
    header = ["called", *draw(st.lists(st.sampled_from(CSV_COLUMNS[1:]), unique=True))]
    if odd_column not in header:
        header.append(odd_column)
    odd = header.index(odd_column)
    cells = [draw(_CELLS[h] if i == odd or draw(st.integers(0, 9)) == 0 else _VALID[h])
             for i, h in enumerate(header)]
    if draw(st.integers(0, 20)) == 0:
        cells = cells[:-1] if draw(st.booleans()) else [*cells, "extra"]
    return draw(st.integers(0, len(_OPTIONS) - 1)), header, cells


@hsettings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_rows())
def test_the_fast_path_accepts_nothing_the_model_refuses_and_builds_the_same_job(
    case: tuple[int, list[str], list[str]],
) -> None:
    which, header, cells = case
    fast, full = _checkers(_OPTIONS[which], header)
    quick = fast._fast.row(cells) if fast._fast is not None else None
    slow = _full(full, header, cells)
    if quick is not None:
        assert slow is not None, (cells, full._report.rejected)
        _same_job(quick, slow, full)


@pytest.mark.parametrize(("header", "cells"), [
    (["called"], ["+8613800000001"]),
    (["called"], ["+86 (138) 0000-0001"]),
    (["called", "priority", "templateParams"], ["13800000001", "1", "Zoë|12,50 €"]),
    (["called", "templateParams", "id", "timezone"], ["13800000001", "x", "order-9", "Asia/Tokyo"]),
    (["called", "voiceId", "playTimes", "callerPresent"], ["13800000001", "v9", "3", "777"]),
    (["called", "statusCallbackUrl"], ["13800000001", "https://hooks.example/x"]),
])
def test_the_fast_path_takes_the_common_rows(header: list[str], cells: list[str]) -> None:
    fast, full = _checkers(_OPTIONS[0], header)
    assert fast._fast is not None
    quick = fast._fast.row(cells)
    assert quick is not None, cells
    slow = _full(full, header, cells)
    assert slow is not None
    _same_job(quick, slow, full)


def test_a_row_refused_on_the_fast_path_gets_the_models_field_and_rule() -> None:
    header = ["called", "templateParams", "priority"]
    fast, _ = _checkers(_OPTIONS[0], header)
    assert fast.csv(7, ["12a", "ok", "1"]) is None
    assert fast.csv(8, ["1380", "a|${x}", "1"]) is None
    assert fast.csv(9, ["1380", "a", "0"]) is None
    assert [str(e) for e in fast._report.rejected] == [
        "line 7: called: must be digits with an optional leading '+'",
        "line 8: templateParams[1]: may not contain '$', '{' or '}' (retCode 14)",
        "line 9: priority: must be \"1\"..\"9\" (1 is most urgent)",
    ]
    assert fast._report.rejected_rows == 3
