"""Redis replies as text: the clients return bytes (``decode_responses`` is off, since job bodies and
scripts' replies mix binary-safe values), Lua returns flat lists."""

from __future__ import annotations

from typing import Any

__all__ = ["as_dict", "text"]


def text(v: bytes | str) -> str:
    """A reply value as str (UTF-8; Redis values the dialer writes are always UTF-8)."""
    return v.decode() if isinstance(v, bytes) else v


def as_dict(raw: dict[Any, Any] | list[Any]) -> dict[str, str]:
    """HGETALL from redis-py (dict) or from Lua (flat list), bytes or str, as a str dict."""
    if isinstance(raw, dict):
        return {text(k): text(v) for k, v in raw.items()}
    it = iter(raw)
    return {text(k): text(v) for k, v in zip(it, it, strict=True)}
