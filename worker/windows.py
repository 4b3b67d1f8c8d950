"""Calling windows: the hours and weekdays at which a campaign may call, in the callee's time zone.

Pure functions of an injected "now" (a timezone-aware datetime), so they are tested with any clock::

    >>> from datetime import datetime, UTC
    >>> w = Window.parse("09:00-20:00", "mon-fri", "Europe/Paris")
    >>> w.is_open(datetime(2025, 1, 6, 8, 30, tzinfo=UTC))            # Monday 09:30 in Paris
    True
    >>> w.next_opening(datetime(2025, 1, 4, 12, 0, tzinfo=UTC))       # Saturday -> Monday 09:00 Paris
    datetime.datetime(2025, 1, 6, 8, 0, tzinfo=datetime.timezone.utc)

Rules:

* ``hours`` is ``HH:MM-HH:MM`` (end ``24:00`` allowed); an end at or before the start means the window
  runs past midnight (``22:00-06:00``) and belongs to the day it starts on. No hours = all day.
* ``days`` lists the weekdays a window may *start* on: ``mon-fri``, ``sat,sun``, ``fri-mon`` (ranges
  wrap), ``all``/``daily``. No days = every day.
* Wall-clock times that do not exist (the hour skipped when clocks go forward) open or close at the
  instant the clocks jump; times that happen twice (clocks go back) are taken at their first occurrence.
  So a ``09:00-20:00`` window is always 09:00-20:00 on the wall clock, 10 or 12 hours on DST days
  only if the window spans the change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

__all__ = ["DAY_NAMES", "Window", "WindowError", "parse_days", "parse_hours"]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS_RE = re.compile(r"^\s*([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})\s*$")  # ASCII digits only
_DAY_MINUTES = 24 * 60


class WindowError(ValueError):
    """A window, days or time zone specification is invalid; the message says which rule it broke."""


def parse_hours(spec: str) -> tuple[int, int]:
    """``"09:00-20:00"`` -> (540, 1200) minutes after midnight; the end may be 1440 (``24:00``).

    >>> parse_hours("22:30-06:00")
    (1350, 360)
    """
    m = _HOURS_RE.match(spec or "")
    if not m:
        raise WindowError("must look like 09:00-20:00 (HH:MM-HH:MM, 24-hour clock)")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2 != 0):
        raise WindowError("hours must be 00:00..23:59 (end may be 24:00)")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end % _DAY_MINUTES and not (start == 0 and end == _DAY_MINUTES):
        raise WindowError("start and end are equal: the window would be empty (use 00:00-24:00 for all day)")
    return start, end


def parse_days(spec: str) -> frozenset[int]:
    """``"mon-fri"`` -> {0..4}; ``"fri-mon"`` wraps; ``"sat,sun"``; ``"all"``/``"daily"`` -> every day.

    >>> sorted(parse_days("fri-mon"))
    [0, 4, 5, 6]
    """
    text = (spec or "").strip().lower()
    if text in ("all", "daily", "*"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        a = _day(first, part)
        b = _day(last, part) if dash else a
        d = a
        out.add(d)
        while d != b:
            d = (d + 1) % 7
            out.add(d)
    return frozenset(out)


_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day(word: str, part: str) -> int:
    w = word.strip()
    for i, full in enumerate(_FULL_DAY_NAMES):
        if len(w) >= 3 and full.startswith(w):
            return i
    raise WindowError(f"{part.strip()!r} is not a weekday or range: use mon,tue,wed,thu,fri,sat,sun, e.g. mon-fri")


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, ValueError for odd paths
        raise WindowError(f"{name!r} is not an IANA time zone (e.g. Europe/Paris, America/New_York)") from None


def _first_instant(day: date, minutes: int, tz: ZoneInfo) -> datetime:
    """The first UTC instant at which the wall clock in ``tz`` reads ``minutes`` after midnight of
    ``day`` or later (``minutes`` may be 1440: midnight of the next day)."""
    day = day + timedelta(days=minutes // _DAY_MINUTES)
    minutes %= _DAY_MINUTES
    naive = datetime.combine(day, time(minutes // 60, minutes % 60))
    early = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    late = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if early.astimezone(tz).replace(tzinfo=None) == naive:
        # Exists (fold=0 is the first occurrence when the time happens twice).
        return early
    # Skipped by a forward jump: the wall clock reaches this time at the jump, which lies between the
    # two readings (fold=1 uses the new offset, so it is the earlier instant).
    lo, hi = min(early, late), max(early, late)
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).replace(tzinfo=None) >= naive:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)


@dataclass(frozen=True)
class Window:
    """A calling window; see the module docstring for the rules."""

    start_min: int
    end_min: int
    days: frozenset[int]
    tz_name: str

    @classmethod
    def parse(cls, hours: str | None, days: str | None, tz: str) -> Window:
        """Build a window; raises :class:`WindowError`. ``hours`` None = all day, ``days`` None = daily."""
        _zone(tz)  # refuse an unknown zone now, not at the first call
        start, end = parse_hours(hours) if hours else (0, _DAY_MINUTES)
        return cls(start, end, parse_days(days) if days else frozenset(range(7)), tz)

    @property
    def tz(self) -> ZoneInfo:
        return _zone(self.tz_name)

    def _intervals(self, now: datetime) -> list[tuple[datetime, datetime]]:
        """Open intervals (UTC) starting from the day before ``now`` (an overnight window may still be
        open) to eight days after it (so a window open one day a week is always found)."""
        tz = self.tz
        today = now.astimezone(tz).date()
        end_offset = self.end_min if self.end_min > self.start_min else self.end_min + _DAY_MINUTES
        out = []
        for i in range(-1, 9):
            day = today + timedelta(days=i)
            if day.weekday() not in self.days:
                continue
            opens = _first_instant(day, self.start_min, tz)
            closes = _first_instant(day, end_offset, tz)
            if closes > opens:
                out.append((opens, closes))
        return out

    def is_open(self, now: datetime) -> bool:
        """Whether a call may start at ``now`` (a timezone-aware datetime)."""
        _aware(now)
        return any(opens <= now < closes for opens, closes in self._intervals(now))

    def next_opening(self, now: datetime) -> datetime | None:
        """The earliest instant at or after ``now`` inside the window (``now`` itself when open), in UTC;
        None if the window never opens (cannot happen for a window built by :meth:`parse`)."""
        _aware(now)
        best: datetime | None = None
        for opens, closes in self._intervals(now):
            if opens <= now < closes:
                return now.astimezone(UTC)
            if opens > now and (best is None or opens < best):
                best = opens
        return best

    def closes_at(self, now: datetime) -> datetime | None:
        """When the interval containing ``now`` ends (UTC), or None when the window is closed."""
        _aware(now)
        for opens, closes in self._intervals(now):
            if opens <= now < closes:
                return closes
        return None

    def describe(self) -> str:
        days = ",".join(DAY_NAMES[d] for d in sorted(self.days)) if len(self.days) < 7 else "daily"
        start, end = self.start_min, self.end_min
        return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d} {days} {self.tz_name}"


def _aware(now: datetime) -> None:
    if now.utcoffset() is None:
        raise ValueError("now: must be a timezone-aware datetime")


@lru_cache(maxsize=1024)
def cached_window(hours: str | None, days: str | None, tz: str) -> Window:
    """:meth:`Window.parse`, memoized: workers evaluate the same few windows for every job."""
    return Window.parse(hours, days, tz)
