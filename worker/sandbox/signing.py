"""The simulator's own signer of release events (provider-api.md §3), kept apart from the receiver's.

``worker.provider.signature`` is what ``dialer serve`` verifies with. Were the simulator to sign with
it too, a mistake in it would sign and verify alike and pass every test, so this module shares no code
with it and builds the signed text another way: it follows the provider's Java reference code
(cec_07_2804, "参考代码") step by step and streams the pieces into the digest::

    String paramStr = callbackParametters.toString().replace(" ", "");     // a TreeMap: "{a=1, b=2}"
    String toSignString = appSecret + "_" + timestamp + "_" + nonce + "_"
                          + paramStr.substring(1, paramStr.length() - 1);  // "a=1,b=2"
    return Base64.encodeBase64String(tokenByHmacSha256(toSignString.getBytes(UTF_8), appSecret));

- The fields are every body field but ``timestamp``, ``nonce`` and ``signature``, in ``TreeMap`` order
  (Java's ``String.compareTo``: UTF-16 code units), each written ``name=value``.
- ``spaces="strip"`` is that ``replace(" ", "")``: every U+0020 (that character only, not tabs or other
  blanks) goes from the fields' part, values included; the shared key, timestamp and nonce keep theirs.
  ``spaces="keep"`` is provider-api.md's wording: the fields joined with bare commas, spaces kept.
- ``digest="hmac-sha256"`` is the reference code's ``HmacSHA256`` keyed with the shared key;
  ``digest="sha256"`` is the page's prose ("SHA256"): plain SHA-256 of the text.

    >>> release_signature({"b": "2", "a": "1", "nonce": "x"}, "k", "1", "2", "sha256", "keep")
    'NL+9iWposUmf+s4VEtCo2WVMZFtk84WBFt64L32lrTI='
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Literal, Protocol, get_args

__all__ = ["DIGESTS", "SPACES", "Digest", "Spaces", "release_signature"]

Digest = Literal["sha256", "hmac-sha256"]
Spaces = Literal["keep", "strip"]
DIGESTS: tuple[str, ...] = get_args(Digest)
SPACES: tuple[str, ...] = get_args(Spaces)

_NOT_SIGNED = ("timestamp", "nonce", "signature")


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


def _java_order(name: str) -> bytes:
    # TreeMap<String, ...> sorts by String.compareTo, i.e. by UTF-16 code units; big-endian UTF-16
    # bytes compare the same way.
    return name.encode("utf-16-be", "surrogatepass")


def release_signature(
    event: Mapping[str, str], shared_key: str, timestamp: str, nonce: str, digest: Digest, spaces: Spaces
) -> str:
    """Base64 of the digest of ``{shared_key}_{timestamp}_{nonce}_{fields}`` (see the module's text)."""
    h: _Hasher
    if digest == "hmac-sha256":
        h = hmac.new(shared_key.encode(), digestmod=hashlib.sha256)
    elif digest == "sha256":
        h = hashlib.sha256()
    else:
        raise ValueError(f"digest must be one of {DIGESTS}, not {digest!r}")
    if spaces not in SPACES:
        raise ValueError(f"spaces must be one of {SPACES}, not {spaces!r}")
    strip = spaces == "strip"
    for prefix_part in (shared_key, timestamp, nonce):
        h.update(prefix_part.encode())
        h.update(b"_")
    separator = b""
    for name in sorted(event, key=_java_order):
        if name in _NOT_SIGNED:
            continue
        pair = name + "=" + str(event[name])
        if strip:
            pair = pair.replace(" ", "")
        h.update(separator)
        h.update(pair.encode())
        separator = b","
    return base64.b64encode(h.digest()).decode("ascii")
