"""The one Lua loader (worker/store/scripts.py): include lines, and every script the dialer ships, each
checked on its own against a real Redis and against the key formats of worker/store/keys.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from worker.store import scripts
from worker.store.keys import Keys

WORKER = Path(__file__).resolve().parents[2] / "worker"
INCLUDED = {"store/clock.lua", "ledger/counts.lua", "ledger/keep_alive.lua", "ledger/gate.lua", "ledger/park.lua",
            "limits/lease.lua", "ledger/events.lua", "webhooks/common.lua", "campaigns/number_set.lua"}
SCRIPTS = sorted(name for p in WORKER.rglob("*.lua") if (name := str(p.relative_to(WORKER))) not in INCLUDED)
_FUNCTION = re.compile(r"^local function (\w+)\(", re.M)


def _helpers() -> dict[str, str]:
    """Every helper function an include file defines -> that file."""
    return {name: inc for inc in INCLUDED for name in _FUNCTION.findall((WORKER / inc).read_text())}


def test_every_lua_file_is_a_script_or_an_include() -> None:
    # A new include must be named in INCLUDED, or the checks below would take it for a script.
    for inc in INCLUDED:
        assert (WORKER / inc).is_file(), inc
        assert "redis.call" not in re.sub(r"local function.*?\nend\n", "", (WORKER / inc).read_text(), flags=re.S), inc
    assert len(SCRIPTS) >= 20, SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS)
def test_each_script_includes_every_helper_it_calls_once(path: str) -> None:
    text = scripts.source(path)
    assert "@include" not in text
    defined = _FUNCTION.findall(text)
    assert len(defined) == len(set(defined)), f"{path}: a helper is defined twice: {defined}"
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    for name, inc in _helpers().items():
        if re.search(rf"(?<![\w.]){name}\(", code):
            assert name in defined, f"{path} calls {name}() but does not include {inc}"


@pytest.mark.parametrize("path", SCRIPTS)
async def test_each_script_compiles_in_redis(redis_client: aioredis.Redis, path: str) -> None:
    sha = await redis_client.script_load(scripts.source(path))
    assert [bool(x) for x in await redis_client.script_exists(sha)] == [True]


def _known_keys() -> set[str]:
    """Every key form keys.py builds, with "X" standing for the variable part, without the prefix."""
    k = Keys("")
    out = {k.wake, k.seq, k.dead, k.token, k.token_lock, k.in_flight, k.campaigns, k.suppress, k.events}
    out |= {k.queue("X"), k.job("X"), k.serial("X"), k.rate("X"), k.number_calls("X")}  # type: ignore[arg-type]
    out |= {k.campaign("X"), k.campaign_counts("X"), k.campaign_jobs("X"), k.campaign_parked("X"),
            k.campaign_sent("X"), k.campaign_window_slots("X"), k.campaign_rows("X"), k.campaign_rows_taken("X")}
    out |= {k.webhook_queue("X"), k.webhook_due("X"), k.webhook_busy("X"), k.webhook_destinations, k.webhook_tries,
            k.webhook_dead, k.webhook_dead_ids, k.webhook_intake}
    return out


@pytest.mark.parametrize("path", SCRIPTS)
def test_each_script_builds_keys_as_keys_py_does(path: str) -> None:
    """A key a script builds from the prefix (``P .. 'queue:' .. prio``, ``campaign_key(P, name, ':jobs')``)
    must be one keys.py builds too: a typo in one script fails here, whatever the others say."""
    known = _known_keys()
    code = "\n".join(line for line in scripts.source(path).splitlines() if not line.lstrip().startswith("--"))
    for literal, rest in re.findall(r"\bP \.\. '([^']*)'( \.\.)?", code):
        form = literal + ("X" if rest else "")
        assert form in known, f"{path}: P .. {literal!r} builds a key keys.py does not know ({form})"
    for suffix in re.findall(r"campaign_key\(P, [^,]+, '([^']*)'\)", code):
        assert "campaign:X" + suffix in known, f"{path}: campaign key suffix {suffix!r} is not in keys.py"
    for suffix in re.findall(r"\{('[^}]*)\}", code):  # suffix lists looped over with campaign_key
        for s in re.findall(r"'([^']*)'", suffix):
            if s.startswith(":") or s == "":
                assert "campaign:X" + s in known, f"{path}: campaign key suffix {s!r} is not in keys.py"


def test_include_lines_are_resolved_once_and_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.lua").write_text("-- @include b.lua\n-- @include c.lua\nlocal x = f() + g()\n")
    (tmp_path / "b.lua").write_text("-- @include c.lua\nlocal function f() return g() end\n")
    (tmp_path / "c.lua").write_text("local function g() return 1 end\n")
    (tmp_path / "loop.lua").write_text("-- @include loop2.lua\n")
    (tmp_path / "loop2.lua").write_text("-- @include loop.lua\n")
    monkeypatch.setattr(scripts, "_read", lambda path: (tmp_path / path).read_text())
    scripts.source.cache_clear()
    try:
        assert scripts.source("a.lua").split("\n") == [
            "local function g() return 1 end", "local function f() return g() end", "local x = f() + g()", ""]
        with pytest.raises(ValueError, match=re.escape("include cycle: loop.lua -> loop2.lua -> loop.lua")):
            scripts.source("loop.lua")
        with pytest.raises(FileNotFoundError):
            scripts.source("missing.lua")
    finally:
        scripts.source.cache_clear()


def test_a_missing_script_is_named() -> None:
    with pytest.raises(FileNotFoundError, match=re.escape("worker/ledger/nope.lua")):
        scripts.source("ledger/nope.lua")
