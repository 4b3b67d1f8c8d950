"""The webhook signature: what ``dialer webhooks`` puts on each POST, and how a receiver checks it.

Each POST carries::

    X-Dialer-Timestamp: 1733400000             (Unix seconds when this attempt was signed)
    X-Dialer-Signature: v1=<hex HMAC-SHA256 of "<timestamp>.<body>", keyed with DIALER_WEBHOOK_SECRET>

The timestamp is signed with the body, so a captured delivery cannot be replayed later with a fresh
timestamp; a receiver refuses timestamps too far from its clock (docs/webhooks.md shows the ten lines). The
``v1=`` prefix names the scheme, so another one can be added beside it without breaking receivers.

    >>> sign(b"a-webhook-secret-0123", "1733400000", b'{"id":"1-0"}')
    'v1=c8cbf846f3fc4c29ffa74c11f6de5333146bdaaa6c8b4dca1768e2d6e75b833c'
    >>> verify(b"a-webhook-secret-0123", "1733400000", b'{"id":"1-0"}', sign(b"a-webhook-secret-0123",
    ...        "1733400000", b'{"id":"1-0"}'), now=1733400100)
    True
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["SCHEME", "TOLERANCE_S", "sign", "verify"]

SCHEME = "v1"
TOLERANCE_S = 300
"""How far a receiver should let a timestamp be from its own clock (the example in docs/webhooks.md)."""


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """``v1=<hex>``: HMAC-SHA256 of ``timestamp + "." + body`` keyed with ``secret``."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"{SCHEME}={digest}"


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, *, now: float | None = None,
           tolerance_s: float = TOLERANCE_S) -> bool:
    """What a receiver does (the dialer itself never needs it; tests and docs/webhooks.md do)."""
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)
