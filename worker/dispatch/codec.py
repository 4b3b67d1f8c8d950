"""JSON (never pickle) for arq jobs and results, so other languages can read and write the queues
and nothing read back from Redis can execute code."""

from __future__ import annotations

import json
from typing import Any

from worker.store.keys import DIAL_FUNCTION


def dumps(data: dict[str, Any]) -> bytes:
    # default=str: arq stores exceptions as job results; keep their text rather than failing.
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def loads(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("job payload is not a JSON object")
    return data


def _dial_job_head() -> bytes:
    # Scripts append the enqueue time in ms and "}"; derived from dumps so the bytes are exactly what
    # dumps gives for this job.
    full = dumps({"t": 1, "f": DIAL_FUNCTION, "a": [], "k": {}, "et": 0})
    assert full.endswith(b"0}")
    return full[:-2]


DIAL_JOB_HEAD = _dial_job_head()
"""arq's JSON job for a dial, up to its enqueue time: ``{"t":1,"f":"dial","a":[],"k":{},"et":``. The
worker's claim (``dispatch/claim.lua``) writes ``DIAL_JOB_HEAD + b"<ms>}"`` as ``arq:job:<id>``."""

MALFORMED = "_malformed"
_MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z, the last instant datetime can hold


def _sane_int(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


def loads_job(raw: bytes) -> dict[str, Any]:
    """Read an arq job; never raise. A payload that is not a JSON ``dial`` job (garbage, pickle, another
    function) still becomes a ``dial`` call carrying the reason, so the worker dead-letters it with that
    reason instead of arq dropping it silently. Nothing read here is ever executed."""
    try:
        data = loads(raw)
        if data.get("f") != DIAL_FUNCTION:
            reason = f"unknown function {str(data.get('f'))[:40]!r}"
        elif data.get("a", []) != [] or data.get("k", {}) != {}:
            # The body lives in the ledger; a dial job carries no arguments. (A kwarg named "ctx" would
            # also make arq's call of the job function fail before it starts.)
            reason = "arguments must be [] and {} (the job's body lives in its ledger record)"
        elif not _sane_int(data.get("et", 0), _MAX_MS) or not (data.get("t") is None or _sane_int(data["t"], 10**9)):
            # arq turns "et" into a datetime and compares "t" outside any try: a bad value there
            # would kill the worker's loop, not just this job.
            reason = "enqueue time 'et' or try count 't' is not a sane integer"
        else:
            data["a"], data["k"] = [], {}
            data.setdefault("t", None)
            data.setdefault("et", 0)
            return data
    except (ValueError, UnicodeDecodeError):
        reason = "payload is not a JSON object"
    return {"f": DIAL_FUNCTION, "a": [], "k": {MALFORMED: reason}, "t": None, "et": 0}
