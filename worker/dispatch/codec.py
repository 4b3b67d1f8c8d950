"""JSON (never pickle) for arq jobs and results, so other languages can read and write the queues
and nothing read back from Redis can execute code."""

from __future__ import annotations

import json
from typing import Any


def dumps(data: dict[str, Any]) -> bytes:
    # default=str: arq stores exceptions as job results; keep their text rather than failing.
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def loads(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("job payload is not a JSON object")
    return data


MALFORMED = "_malformed"


def loads_job(raw: bytes) -> dict[str, Any]:
    """Read an arq job; never raise. A payload that is not a JSON ``dial`` job (garbage, pickle, another
    function) still becomes a ``dial`` call carrying the reason, so the worker dead-letters it with that
    reason instead of arq dropping it silently. Nothing read here is ever executed."""
    from worker.dispatch.keys import DIAL_FUNCTION

    try:
        data = loads(raw)
        if data.get("f") != DIAL_FUNCTION:
            reason = f"unknown function {str(data.get('f'))[:40]!r}"
        elif not isinstance(data.get("a", []), list) or not isinstance(data.get("k", {}), dict):
            reason = "arguments are not a list and an object"
        else:
            data.setdefault("a", [])
            data.setdefault("k", {})
            data.setdefault("t", None)
            data.setdefault("et", 0)
            return data
    except (ValueError, UnicodeDecodeError):
        reason = "payload is not a JSON object"
    return {"f": DIAL_FUNCTION, "a": [], "k": {MALFORMED: reason}, "t": None, "et": 0}
