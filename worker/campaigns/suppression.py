"""The do-not-call list: one fleet-wide Redis set of normalized numbers (``Keys.suppress``).

::

    dnc = Suppression(redis, settings)
    await dnc.add(["+86 138-0000-0001", "(0755) 1234 5678"])   # -> 2 added
    await dnc.contains("8613800000001")                         # True: same number once normalized

Normalization (:func:`worker.numbers.number_key`, used by ``suppress add/remove/import``, by launch and
by the producer, which stores the key with a campaign job for the worker's check right before dialling):
drop spaces, tabs, ``-``, ``.``, ``(`` and ``)``; what is left must be 1-32 digits with an optional
leading ``+``; then the number becomes its E.164 form without the ``+`` (phonenumbers). With
``DIALER_DEFAULT_REGION=CN``, ``+8613800000001``, ``008613800000001``, ``8613800000001`` and
``13800000001`` are all ``8613800000001``: one person. A number written without ``+`` that is not a
possible number of the default region (an extension, a short code), or any such number when no region is
set, is listed as its digits, as before, and so is one written with ``+`` that is not a possible number
of its country (a launch refuses such a row; the list refuses no entry today's rule takes). The ``+`` is
dropped on purpose: a list holding ``+8613800000001`` must also stop a call to ``8613800000001`` (a missed
match is a call to someone who asked not to be called; a spurious one is only a call not made).

Numbers listed before the region was set keep their old entries: a national number listed then as
``13800000001`` no longer matches once the region makes it ``8613800000001``; import the list again after
setting DIALER_DEFAULT_REGION (entries are idempotent).

Launch skips listed numbers (counted in its report); workers check again right before dialling, so a
number added after launch is never called (the job becomes ``suppressed``). Jobs enqueued without a
campaign (one-off, transactional calls) are not checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TextIO

from redis.asyncio import Redis

from worker.numbers import number_key
from worker.rules import normalize_number
from worker.settings import Settings
from worker.store.decode import text
from worker.store.keys import Keys

__all__ = ["Suppression", "normalize_number", "number_key", "read_numbers"]

_CHUNK = 5000


def read_numbers(stream: TextIO, region: str | None = None) -> tuple[list[str], list[tuple[int, str, str]]]:
    """Numbers from a file: one per line, or CSV whose ``called``/``number``/``phone`` column (named in a
    header line) or else first column holds them. Blank lines and ``#`` comments are skipped. ``region``:
    DIALER_DEFAULT_REGION, for numbers written without '+'.
    Returns (normalized numbers, [(line number, text, rule)] for lines that hold no valid number)."""
    numbers: list[str] = []
    bad: list[tuple[int, str, str]] = []
    column: int | None = None
    for n, line in enumerate(stream, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        cells = [c.strip().strip('"') for c in text.split(",")]
        if column is None:
            lowered = [c.lower() for c in cells]
            named = [i for i, c in enumerate(lowered) if c in _HEADER_NAMES]
            column = named[0] if named else 0
            if named:
                continue
        cell = cells[column] if column < len(cells) else ""
        try:
            numbers.append(number_key(cell, region, strict=False))
        except ValueError as exc:
            bad.append((n, cell[:40], str(exc)))
    return numbers, bad


_HEADER_NAMES = ("called", "number", "phone")



class Suppression:
    """The fleet-wide do-not-call set. ``redis`` may decode responses or not."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._key = Keys(settings.key_prefix).suppress
        self._region = settings.default_region

    def keys(self, numbers: Iterable[str]) -> list[str]:
        """The list's keys of written numbers (:func:`~worker.numbers.number_key` in the default region);
        ValueError naming the first invalid number and its rule."""
        out = []
        for n in numbers:
            try:
                out.append(number_key(n, self._region, strict=False))
            except ValueError as exc:
                raise ValueError(f"{n!r}: {exc}") from None
        return out

    async def add(self, numbers: Iterable[str]) -> int:
        """Add numbers (normalized here; raises ValueError before writing anything if one is invalid).
        Returns how many were not listed before."""
        return await self._apply(self._redis.sadd, numbers)

    async def remove(self, numbers: Iterable[str]) -> int:
        """Remove numbers; returns how many were listed."""
        return await self._apply(self._redis.srem, numbers)

    async def contains(self, number: str) -> bool:
        return bool(await self._redis.sismember(self._key, number_key(number, self._region, strict=False)))  # type: ignore[misc]

    async def which(self, normalized: Sequence[str]) -> set[str]:
        """The listed ones among already-normalized numbers (one SMISMEMBER per 5,000)."""
        out: set[str] = set()
        for start in range(0, len(normalized), _CHUNK):
            part = list(normalized[start : start + _CHUNK])
            if not part:
                continue
            flags = await self._redis.smismember(self._key, part)  # type: ignore[misc]
            out.update(n for n, f in zip(part, flags, strict=True) if f)
        return out

    async def count(self) -> int:
        return int(await self._redis.scard(self._key))  # type: ignore[misc]

    async def list(self) -> list[str]:
        """Every listed number, sorted."""
        members = {text(m) async for m in self._redis.sscan_iter(self._key, count=5000)}
        return sorted(members)

    async def _apply(self, op: object, numbers: Iterable[str]) -> int:
        normalized = self.keys(numbers)
        done = 0
        for start in range(0, len(normalized), _CHUNK):
            part = normalized[start : start + _CHUNK]
            if part:
                done += int(await op(self._key, *part))  # type: ignore[operator]
        return done
