"""Signature of the provider's release-event callback (provider-api.md §3).

Every body field except ``timestamp``, ``nonce`` and ``signature`` is sorted by name and joined as
``k=v`` with commas; the string ``{shared_key}_{timestamp}_{nonce}_{joined}`` is hashed and the
digest Base64-encoded. Whether the provider uses plain SHA-256 or HMAC-SHA256 keyed with the shared
key is unconfirmed, so both are supported; so are two space handlings (``spaces``):

- ``"keep"`` (default): the string is hashed as written above, spaces in values included.
- ``"strip"``: what the provider's Java reference code does (cec_07_2804, "参考代码"). It builds the
  joined part from ``TreeMap.toString()`` (``{a=1, b=2}``), removes every ASCII space (U+0020, and only
  that character: ``String.replace(" ", "")``) from it, and drops the braces. So every space *in the
  joined fields* goes, including those inside values, while the shared key, timestamp and nonce are
  kept as they are. Values that differ only in spaces then sign alike.

The same page's code keys an HMAC-SHA256 with the shared key, while its prose says "SHA256"; real
signed callbacks settle both questions (tests/provider/vectors/README.md)::

    >>> sign({"b": "2", "a": "1"}, "key", "1645524163326", "42", "sha256") == sign(
    ...     {"a": "1", "b": "2", "nonce": "x"}, "key", "1645524163326", "42", "sha256")
    True
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from typing import Literal, get_args

SignatureMode = Literal["sha256", "hmac-sha256"]
SIGNATURE_MODES: tuple[str, ...] = get_args(SignatureMode)
SignatureSpaces = Literal["keep", "strip"]
SIGNATURE_SPACES: tuple[str, ...] = get_args(SignatureSpaces)

_UNSIGNED = frozenset(("timestamp", "nonce", "signature"))
_KEY = re.compile(r"[A-Za-z0-9_]{1,64}")
_DIGITS = re.compile(r"[0-9]{1,18}")


def _material(
    fields: Mapping[str, str], shared_key: str, timestamp: str, nonce: str, spaces: SignatureSpaces
) -> str:
    joined = ",".join(f"{k}={fields[k]}" for k in sorted(fields) if k not in _UNSIGNED)
    if spaces == "strip":
        joined = joined.replace(" ", "")
    elif spaces != "keep":
        raise ValueError(f"signature spaces must be one of {SIGNATURE_SPACES}, not {spaces!r}")
    return f"{shared_key}_{timestamp}_{nonce}_{joined}"


def sign(
    fields: Mapping[str, str], shared_key: str, timestamp: str, nonce: str, mode: SignatureMode,
    *, spaces: SignatureSpaces = "keep",
) -> str:
    """Base64 signature of ``fields`` (``timestamp``, ``nonce``, ``signature`` keys are skipped).

    ``mode`` "sha256" hashes the whole string; "hmac-sha256" uses ``shared_key`` as the HMAC key too.
    ``spaces`` "strip" removes every U+0020 from the joined fields first (the Java reference's way).

    >>> sign({"t": "a b"}, "k", "1", "2", "sha256", spaces="strip") == sign({"t": "ab"}, "k", "1", "2", "sha256")
    True
    """
    data = _material(fields, shared_key, timestamp, nonce, spaces).encode()
    if mode == "sha256":
        digest = hashlib.sha256(data).digest()
    elif mode == "hmac-sha256":
        digest = hmac.new(shared_key.encode(), data, hashlib.sha256).digest()
    else:
        raise ValueError(f"signature mode must be one of {SIGNATURE_MODES}, not {mode!r}")
    return base64.b64encode(digest).decode("ascii")


def ambiguities(body: Mapping[str, object]) -> list[tuple[str, str]]:
    """The (field, rule) pairs that make ``body``'s signed string ambiguous; empty when it is not.

    The provider's scheme is fixed and joins ``k=v`` with commas although values hold commas
    (``releaseTime`` "2022/02/22,10:04:36:318"), so ``{"releaseReason": "1", "releaseTime": "a,b"}`` and
    ``{"releaseReason": "1,releaseTime=a,b"}`` sign the same string. The string reads back one way only
    when every key is a plain name, every value one in which no comma is followed by an ``=``
    before the next comma (a comma-separated piece holding ``=`` can then only start a field), and the
    ``timestamp`` (ASCII digits) and ``nonce`` hold no ``_`` (the separator of the prefix).

    >>> ambiguities({"releaseReason": "1,releaseTime=a,b", "timestamp": "1", "nonce": "2"})
    [('releaseReason', 'may not hold "=" after a comma (the signed string would be ambiguous)')]
    >>> ambiguities({"releaseTime": "2022/02/22,10:04:36:318", "recordfile": "x?a=b", "timestamp": "1", "nonce": "-2"})
    []
    """
    problems: list[tuple[str, str]] = []
    for key, value in body.items():
        if key == "signature":
            continue
        if _KEY.fullmatch(key) is None:
            problems.append((key[:64], "field names must be 1-64 of A-Z a-z 0-9 _ (the signed string would be "
                                       "ambiguous)"))
        elif key == "timestamp":
            if not isinstance(value, str) or _DIGITS.fullmatch(value) is None:
                problems.append((key, "must be 1-18 ASCII digits (ms since the epoch)"))
        elif key == "nonce":
            if not isinstance(value, str) or "_" in value or not 1 <= len(value) <= 128:
                problems.append((key, 'must be 1-128 characters without "_" (the signed string would be '
                                      "ambiguous)"))
        # Signed as str(value): a value that is not a string (refused later, 422) is checked as that text.
        elif any("=" in piece for piece in str(value).split(",")[1:]):
            problems.append((key, 'may not hold "=" after a comma (the signed string would be ambiguous)'))
    return problems


def verify(
    body: Mapping[str, str], shared_key: str, mode: SignatureMode, *, spaces: SignatureSpaces = "keep"
) -> bool:
    """True when ``body["signature"]`` matches the rest of ``body``; False when any part is missing.
    ``mode`` and ``spaces`` as for :func:`sign`.

    >>> body = {"callSerialNo": "1", "timestamp": "1", "nonce": "2"}
    >>> verify({**body, "signature": sign(body, "k", "1", "2", "sha256")}, "k", "sha256")
    True
    """
    signature, timestamp, nonce = body.get("signature"), body.get("timestamp"), body.get("nonce")
    # Parsed JSON may hold any type: only strings can be a signature or its inputs.
    if not (isinstance(signature, str) and isinstance(timestamp, str) and isinstance(nonce, str)):
        return False
    try:
        expected = sign(body, shared_key, timestamp, nonce, mode, spaces=spaces)
        return hmac.compare_digest(expected.encode(), signature.encode())
    except UnicodeEncodeError:  # JSON can carry lone surrogates; no signed body holds one
        return False
