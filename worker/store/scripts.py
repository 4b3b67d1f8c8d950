"""The one Lua loader: every script the dialer runs in Redis is read here.

Scripts live beside the Python that runs them (``worker/ledger/claim.lua``, ``worker/limits/gcra.lua``,
...) and are named by their path under ``worker/``. Redis has no ``require``, so a script names the
helpers it uses with include lines, which the loader replaces by those files' text::

    -- @include store/clock.lua
    -- @include limits/lease.lua

An include may include others; each file is put in once per script, before the first line that
needs it, so a helper file states its own dependencies and scripts never copy one another's rules.

    script = scripts.register(redis, "ledger/claim.lua")   # an AsyncScript (EVALSHA, EVAL on NOSCRIPT)
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any

from redis.commands.core import AsyncScript

from worker.settings import Settings

__all__ = ["register", "source"]

_INCLUDE = re.compile(r"^--\s*@include\s+(\S+)\s*$")
_EVENTS_CAP = "EVENTS_MAX_LEN"


def _read(path: str) -> str:
    try:
        return resources.files("worker").joinpath(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"Lua script worker/{path} not found") from None


def _expand(path: str, seen: set[str], stack: tuple[str, ...]) -> list[str]:
    if path in stack:
        raise ValueError(f"Lua include cycle: {' -> '.join((*stack, path))}")
    out: list[str] = []
    for line in _read(path).splitlines():
        m = _INCLUDE.match(line)
        if m is None:
            out.append(line)
        elif m[1] not in seen:
            seen.add(m[1])
            out.extend(_expand(m[1], seen, (*stack, path)))
    return out


@functools.cache
def source(path: str) -> str:
    """The full text of ``worker/<path>`` with its include lines resolved (cached: scripts are static)."""
    return "\n".join(_expand(path, set(), ())) + "\n"


def register(redis: Any, path: str, settings: Settings | None = None) -> AsyncScript:
    """``redis.register_script`` of :func:`source`: the script runs by EVALSHA, loaded on first NOSCRIPT.

    A script that writes the event stream (it includes ``ledger/events.lua``) gets the stream's cap from
    ``settings`` (``DIALER_EVENTS_MAX_LEN``) as a constant, so it needs them."""
    text = source(path)
    if _EVENTS_CAP in text:
        if settings is None:
            raise ValueError(f"worker/{path} writes the event stream: register it with the settings")
        text = f"local {_EVENTS_CAP} = {int(settings.events_max_len)}\n" + text
    script: AsyncScript = redis.register_script(text)
    return script
