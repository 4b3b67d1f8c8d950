"""Calling windows: the pure functions with injected clocks (DST, overnight, weekdays), then end to end
with a worker whose dispatcher clock is shifted so a window opens or closes a moment from now."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis

from tests.helpers import Sim, created, do_launch, numbers_csv, wait_until
from worker.campaigns.control import Campaigns
from worker.dispatch.process import DialerProcess
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.settings import Settings
from worker.store.keys import Keys
from worker.windows import Window, WindowError, parse_days, parse_hours

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def at(tz: ZoneInfo, y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, fold: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=tz, fold=fold).astimezone(UTC)


# --- pure functions -------------------------------------------------------------------------------


def test_parse_hours_and_days() -> None:
    assert parse_hours("09:00-20:00") == (540, 1200)
    assert parse_hours("22:30-06:00") == (1350, 360)
    assert parse_hours("00:00-24:00") == (0, 1440)
    for bad in ("9-20", "09:00", "25:00-26:00", "09:60-10:00", "10:00-10:00", "08:00-24:30"):
        with pytest.raises(WindowError):
            parse_hours(bad)
    assert parse_days("mon-fri") == frozenset(range(5))
    assert parse_days("Sat,sun") == frozenset({5, 6})
    assert parse_days("fri-mon") == frozenset({4, 5, 6, 0})
    assert parse_days("all") == frozenset(range(7)) == parse_days("monday-sunday")
    for bad in ("mon-fryday", "weekdays", "", "mo"):
        with pytest.raises(WindowError):
            parse_days(bad)
    with pytest.raises(WindowError, match="IANA"):
        Window.parse("09:00-20:00", None, "Mars/Base")


def test_weekday_window_in_paris() -> None:
    w = Window.parse("09:00-20:00", "mon-fri", "Europe/Paris")
    monday = at(PARIS, 2025, 1, 6, 8, 59, 59)
    assert not w.is_open(monday)
    assert w.next_opening(monday) == at(PARIS, 2025, 1, 6, 9, 0)
    assert w.is_open(at(PARIS, 2025, 1, 6, 9, 0)) and w.is_open(at(PARIS, 2025, 1, 6, 19, 59, 59))
    assert not w.is_open(at(PARIS, 2025, 1, 6, 20, 0))
    assert w.closes_at(at(PARIS, 2025, 1, 6, 12, 0)) == at(PARIS, 2025, 1, 6, 20, 0)
    friday_night = at(PARIS, 2025, 1, 10, 20, 0)
    assert w.next_opening(friday_night) == at(PARIS, 2025, 1, 13, 9, 0)  # the weekend is skipped
    inside = at(PARIS, 2025, 1, 7, 10, 0)
    assert w.next_opening(inside) == inside


def test_dst_spring_forward_and_fall_back() -> None:
    w = Window.parse("09:00-20:00", None, "Europe/Paris")
    # 2025-03-30: clocks go from 02:00 to 03:00. 09:00 local is 07:00 UTC that day, 08:00 UTC the day before.
    assert w.next_opening(at(PARIS, 2025, 3, 29, 21, 0)) == datetime(2025, 3, 30, 7, 0, tzinfo=UTC)
    assert w.next_opening(at(PARIS, 2025, 3, 28, 21, 0)) == datetime(2025, 3, 29, 8, 0, tzinfo=UTC)
    # 2025-10-26: clocks go from 03:00 back to 02:00; 20:00 local is 19:00 UTC.
    assert w.closes_at(datetime(2025, 10, 26, 12, 0, tzinfo=UTC)) == datetime(2025, 10, 26, 19, 0, tzinfo=UTC)
    # A window starting inside the skipped hour opens when the clocks jump (03:00 CEST = 01:00 UTC).
    gap = Window.parse("02:30-05:00", None, "Europe/Paris")
    assert gap.next_opening(datetime(2025, 3, 29, 23, 0, tzinfo=UTC)) == datetime(2025, 3, 30, 1, 0, tzinfo=UTC)
    assert not gap.is_open(datetime(2025, 3, 30, 0, 59, tzinfo=UTC))
    # A time that happens twice opens at its first occurrence (01:30 EDT = 05:30 UTC).
    twice = Window.parse("01:30-03:00", None, "America/New_York")
    assert twice.next_opening(datetime(2025, 11, 2, 4, 0, tzinfo=UTC)) == datetime(2025, 11, 2, 5, 30, tzinfo=UTC)
    assert twice.is_open(at(NEW_YORK, 2025, 11, 2, 1, 45, fold=1))  # second 01:45 (EST) is still inside


def test_overnight_window_belongs_to_the_day_it_starts() -> None:
    w = Window.parse("22:00-06:00", "fri", "UTC")
    friday = datetime(2025, 1, 10, tzinfo=UTC)
    assert w.next_opening(friday) == datetime(2025, 1, 10, 22, 0, tzinfo=UTC)
    assert w.is_open(datetime(2025, 1, 11, 5, 59, tzinfo=UTC))  # Saturday morning: Friday's window
    assert not w.is_open(datetime(2025, 1, 11, 6, 0, tzinfo=UTC))
    assert not w.is_open(datetime(2025, 1, 11, 23, 0, tzinfo=UTC))  # Saturday night: no window
    assert w.next_opening(datetime(2025, 1, 11, 6, 0, tzinfo=UTC)) == datetime(2025, 1, 17, 22, 0, tzinfo=UTC)
    days_only = Window.parse(None, "sat,sun", "Asia/Tokyo")
    assert days_only.next_opening(datetime(2025, 1, 10, 12, 0, tzinfo=UTC)) == datetime(2025, 1, 10, 15, 0,
                                                                                        tzinfo=UTC)
    with pytest.raises(ValueError, match="aware"):
        w.is_open(datetime(2025, 1, 10))


# --- end to end with an injected clock -----------------------------------------------------------


@asynccontextmanager
async def clocked_worker(settings: Settings, clock: Callable[[], float]) -> AsyncIterator[None]:
    """A worker process (queues 1 and 9) whose dispatcher reads ``clock`` instead of time.time."""
    proc = DialerProcess(settings, [1, 9], concurrency=50, clock=clock)
    task = asyncio.ensure_future(proc.run())
    try:
        yield
    finally:
        proc.stop()
        await asyncio.wait_for(task, 30)


def shifted_clock(second_of_minute: float) -> tuple[Callable[[], float], datetime]:
    """A clock running at real speed whose "now" is at ``second_of_minute`` of some minute (less than a
    minute off the real time, so deadlines stay meaningful). Returns it and the next whole minute."""
    real = time.time()
    offset = (second_of_minute - real % 60) % 60
    minute = datetime.fromtimestamp(real + offset + 60 - second_of_minute, UTC)
    return (lambda: time.time() + offset), minute.replace(second=0, microsecond=0)


def hhmm(dt: datetime) -> str:
    return dt.strftime("%H:%M")


async def test_nothing_is_sent_before_the_window_opens(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    clock, opening = shifted_clock(57.5)  # the window opens 2.5 s from now
    closing = opening + timedelta(hours=2)
    await do_launch(redis_client, sim_settings, numbers_csv(tmp_path, 6, prio=lambda i: 1 if i < 2 else 9),
                    window=f"{hhmm(opening)}-{hhmm(closing)}", timezone="UTC")
    opens_real = time.time() + (opening.timestamp() - clock())
    async with clocked_worker(sim_settings, clock):
        await asyncio.sleep(1.5)
        assert await sim.requests() == [], "called before the window opened"
        campaigns = Campaigns(redis_client, sim_settings)
        assert (await campaigns.status("camp"))["states"]["queued"] == 6
        await wait_until(lambda: _done(redis_client, sim_settings), timeout=10)
    stamps = [r["ts"] for r in created(await sim.requests())]
    assert len(stamps) == 6
    assert min(stamps) >= opens_real - 0.05 and max(stamps) < opens_real + 2.0
    recs = [await Ledger(redis_client, sim_settings).get(j) for j in await campaigns.job_ids("camp")]
    assert all(r is not None and r.state == State.SENT and r.attempts == 1 for r in recs)  # deferred, not retried


async def test_no_call_starts_after_the_window_closes(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = sim_settings.model_copy(update={"rate_limit": 4.0})
    clock, closing = shifted_clock(59.0)  # the window closes 1 s from now
    opened = closing - timedelta(hours=1)
    await do_launch(redis_client, settings, numbers_csv(tmp_path, 12),
                    window=f"{hhmm(opened)}-{hhmm(closing)}", timezone="UTC")
    closes_real = time.time() + (closing.timestamp() - clock())
    # All due at once: most of them are still waiting for a rate permit when the window closes.
    keys = Keys(settings.key_prefix)
    members = await redis_client.zrange(keys.queue(9), 0, -1)
    await redis_client.zadd(keys.queue(9), {m: time.time() * 1000 - 1000 + i for i, m in enumerate(members)})
    async with clocked_worker(settings, clock):
        await asyncio.sleep(3.5)
    stamps = [r["ts"] for r in created(await sim.requests())]
    assert 1 <= len(stamps) <= 6
    assert max(stamps) < closes_real + 0.05, "a call started after the window closed"
    status = await Campaigns(redis_client, settings).status("camp")
    assert status["states"]["sent"] == len(stamps) and status["states"]["queued"] == 12 - len(stamps)
    # The rest wait for tomorrow's opening, in order and paced, with their attempts untouched.
    waiting = await redis_client.zrange(keys.queue(9), 0, -1, withscores=True)
    tomorrow = (opened + timedelta(days=1)).timestamp() * 1000
    assert len(waiting) == 12 - len(stamps)
    assert all(tomorrow - 60_000 < s < tomorrow + 60_000 for _, s in waiting)
    assert [m for m, _ in waiting] == sorted(m for m, _ in waiting)
    ledger = Ledger(redis_client, settings)
    for member, _ in waiting:
        rec = await ledger.get(member.decode())
        assert rec is not None and rec.state == State.QUEUED and rec.attempts == 0


async def test_deadline_before_the_next_opening_expires_the_job(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    clock, minute = shifted_clock(30.0)
    start = minute + timedelta(hours=3)  # opens in ~3 h; the deadline is in 1 h
    deadline = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    await do_launch(redis_client, sim_settings, numbers_csv(tmp_path, 2),
                    window=f"{hhmm(start)}-{hhmm(start + timedelta(hours=1))}", timezone="UTC", deadline=deadline)
    async with clocked_worker(sim_settings, clock):
        await wait_until(lambda: _done(redis_client, sim_settings), timeout=10)
    assert await sim.requests() == []
    assert (await Campaigns(redis_client, sim_settings).status("camp"))["states"]["expired"] == 2


async def _done(redis: aioredis.Redis, settings: Settings) -> bool:
    return int((await Campaigns(redis, settings).status("camp"))["remaining"]) == 0
