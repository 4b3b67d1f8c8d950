"""The pure rules (worker/rules.py), and the one rule Lua repeats: a number's normalised key."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from worker.rules import normalize_number, valid_job_id
from worker.store import scripts

NUMBERS = [
    "13800000077", "+8613800000001", " +86 (138) 0000-0001 ", "138.0000.0001", "13800000077\n", "\t138\r\n",
    "1" * 32, "+" + "1" * 32, "1" * 33, "++138", "+", "", "()", "138a", "1+38", "١٣٨", "\uff11\uff13\uff18",
    "138\u00a0000", "138\x0b000", "138\x0c000", "138\x00000", "-1", "(+86)138",
]


async def test_lua_number_key_agrees_with_normalize_number(redis_client: aioredis.Redis) -> None:
    """gate.lua's number_key decides the do-not-call and per-number-cap keys at dial time; it must give
    exactly what normalize_number gives (None where Python refuses the number)."""
    src = scripts.source("ledger/gate.lua") + "\nreturn number_key(ARGV[1]) or false\n"
    run = redis_client.register_script(src)
    for raw in NUMBERS:
        try:
            expected: str | None = normalize_number(raw)
        except ValueError:
            expected = None
        got = await run(keys=[], args=[raw.encode()])
        assert (None if got is None else got.decode()) == expected, raw


def test_normalize_number_rules() -> None:
    assert normalize_number(" +86 (138) 0000-0001 ") == "8613800000001"
    assert normalize_number("13800000077\n") == "13800000077"  # a cell's formatting, never a stored `called`
    for bad in ("1" * 33, "138\u00a0000", "١٣٨", "++1", ""):
        with pytest.raises(ValueError):
            normalize_number(bad)


def test_valid_job_id_matches_the_whole_string() -> None:
    assert valid_job_id("order-4711")
    for bad in ("order-4711\n", "x" * 129, "", "a b", "a/b", "a+b"):
        assert not valid_job_id(bad), bad
