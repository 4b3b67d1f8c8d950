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
