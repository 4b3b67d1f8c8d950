"""Campaigns end to end: launch -> Redis -> worker -> simulator over HTTP, reconciled with its request log."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.helpers import Sim, created, do_launch, numbers_csv, run_dialer, running, settings_env, wait_until, write_csv
from worker.campaigns.control import Campaigns
from worker.campaigns.suppression import Suppression
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.settings import Settings
from worker.store.keys import Keys


async def sent_numbers(sim: Sim) -> list[str]:
    return [r["called"] for r in created(await sim.requests())]


async def campaign_done(redis: aioredis.Redis, settings: Settings, name: str = "camp") -> bool:
    return int((await Campaigns(redis, settings).status(name))["remaining"]) == 0


async def test_pause_holds_everything_and_resume_sends_the_rest_in_order(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = sim_settings.model_copy(update={"rate_limit": 25.0})
    await do_launch(redis_client, settings, numbers_csv(tmp_path, 40))
    campaigns = Campaigns(redis_client, settings)
    async with running(settings):
        await wait_until(lambda: _at_least(sim, 8), timeout=10)
        await campaigns.pause("camp")
        await asyncio.sleep(0.3)  # calls already in flight finish
        before = len(await sent_numbers(sim))
        await asyncio.sleep(1.2)
        assert len(await sent_numbers(sim)) == before, "a call was made while the campaign was paused"
        status = await campaigns.status("camp")
        assert status["states"]["sent"] == before and status["parked"] == status["remaining"] == 40 - before
        ledger = Ledger(redis_client, settings)
        parked = [r for r in [await ledger.get(j) for j in await campaigns.job_ids("camp")] if r and r.parked]
        assert len(parked) == 40 - before and all(r.attempts == 0 for r in parked)
        res = await campaigns.resume("camp")
        assert res.moved == 40 - before
        await wait_until(lambda: campaign_done(redis_client, settings), timeout=15)
    numbers = await sent_numbers(sim)
    assert len(numbers) == len(set(numbers)) == 40  # everything sent, nobody twice
    # After the resume the parked jobs go in launch order, right where the campaign stopped. (The very
    # first calls may swap places while the worker fetches its first token.)
    assert numbers[before:] == sorted(numbers[before:])
    assert max(numbers[:before]) < min(numbers[before:])
    assert (await campaigns.status("camp"))["states"]["sent"] == 40


async def _at_least(sim: Sim, n: int) -> bool:
    return len(await sent_numbers(sim)) >= n


async def test_cancel_stops_the_rest_for_good(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = sim_settings.model_copy(update={"rate_limit": 20.0})
    await do_launch(redis_client, settings, numbers_csv(tmp_path, 40))
    campaigns = Campaigns(redis_client, settings)
    async with running(settings):
        await wait_until(lambda: _at_least(sim, 5), timeout=10)
        cancelled = await campaigns.cancel("camp")
        await asyncio.sleep(1.0)
    numbers = await sent_numbers(sim)
    status = await campaigns.status("camp")
    assert status["states"]["sent"] == len(numbers) == len(set(numbers)) == 40 - cancelled, (status, cancelled)
    assert status["states"]["cancelled"] == cancelled > 20
    ledger = Ledger(redis_client, settings)
    for job_id in await campaigns.job_ids("camp"):
        rec = await ledger.get(job_id)
        assert rec is not None
        assert (rec.called in numbers) == (rec.state == State.SENT)


async def test_suppressed_after_launch_is_never_dialled(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    await Suppression(redis_client, sim_settings).add(["13800000001"])
    report = await do_launch(redis_client, sim_settings, numbers_csv(tmp_path, 6))
    assert report.suppressed == 1  # skipped at launch
    await Suppression(redis_client, sim_settings).add(["+1 380 000 0003"])  # listed after launch
    async with running(sim_settings):
        await wait_until(lambda: campaign_done(redis_client, sim_settings), timeout=10)
    numbers = await sent_numbers(sim)
    assert sorted(numbers) == ["13800000000", "13800000002", "13800000004", "13800000005"]
    rec = await Ledger(redis_client, sim_settings).get("camp:13800000003")
    assert rec is not None and rec.state == State.SUPPRESSED
    status = await Campaigns(redis_client, sim_settings).status("camp")
    assert status["states"]["suppressed"] == 1 and status["states"]["sent"] == 4 and status["total"] == 5


async def test_number_cap_across_campaigns(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = sim_settings.model_copy(update={"number_cap_calls": 1, "number_cap_days": 7.0})
    path = numbers_csv(tmp_path, 3)
    await do_launch(redis_client, settings, path, name="first")
    async with running(settings):
        await wait_until(lambda: campaign_done(redis_client, settings, "first"), timeout=10)
        # Deadline within the week: the cap stops these for good.
        soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
        await do_launch(redis_client, settings, path, name="soon", deadline=soon)
        # No deadline: they wait until the number may be called again.
        await do_launch(redis_client, settings, path, name="later")
        await wait_until(lambda: campaign_done(redis_client, settings, "soon"), timeout=10)
        await asyncio.sleep(0.5)
    assert sorted(await sent_numbers(sim)) == ["13800000000", "13800000001", "13800000002"]
    campaigns = Campaigns(redis_client, settings)
    assert (await campaigns.status("soon"))["states"]["suppressed"] == 3
    later = await campaigns.status("later")
    assert later["states"]["queued"] == 3
    keys = Keys(settings.key_prefix)
    score = await redis_client.zscore(keys.queue(9), "later:13800000000")
    assert score is not None and score / 1000 > time.time() + 6.9 * 86400  # deferred a week, not retried


async def test_campaign_rate_holds_on_a_backlog(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    await do_launch(redis_client, sim_settings, numbers_csv(tmp_path, 16), rate=5.0)
    # Make the whole campaign due at once (as after a long outage), so only the limiter paces it.
    keys = Keys(sim_settings.key_prefix)
    now_ms = time.time() * 1000 - 1000
    members = await redis_client.zrange(keys.queue(9), 0, -1)
    await redis_client.zadd(keys.queue(9), {m: now_ms + i for i, m in enumerate(members)})
    async with running(sim_settings):
        await wait_until(lambda: campaign_done(redis_client, sim_settings), timeout=15)
    stamps = sorted(r["ts"] for r in created(await sim.requests()))
    assert len(stamps) == 16
    worst = max(sum(1 for t in stamps if s <= t < s + 1.0) for s in stamps)
    assert worst <= 5 + 1, f"{worst} calls in one second under a 5/s campaign limit"
    assert stamps[-1] - stamps[0] >= 2.6


async def test_two_campaigns_of_one_priority_share_capacity(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """A small campaign launched after a big one of the same priority is not starved by it."""
    settings = sim_settings.model_copy(update={"rate_limit": 20.0})
    big = write_csv(tmp_path / "big.csv", "called", [f"1110000{i:04d}" for i in range(150)])
    small = write_csv(tmp_path / "small.csv", "called", [f"2220000{i:04d}" for i in range(10)])
    await do_launch(redis_client, settings, big, name="big")
    async with running(settings):
        await asyncio.sleep(1.0)
        launched = time.time()
        await do_launch(redis_client, settings, small, name="small")
        await wait_until(lambda: campaign_done(redis_client, settings, "small"), timeout=10)
        small_done = time.time() - launched
        big_status = await Campaigns(redis_client, settings).status("big")
    order = [n[:3] for n in await sent_numbers(sim)]
    assert order.count("222") == 10
    last_small = max(i for i, n in enumerate(order) if n == "222")
    first_small = order.index("222")
    # Interleaved: the 10 small calls took about 20 slots of the shared 20/s, not 150 + 10.
    assert last_small - first_small < 30, order
    assert small_done < 3.0, f"the small campaign took {small_done:.1f}s"
    assert big_status["remaining"] > 80  # the big one was far from done


@pytest.mark.slow
async def test_status_json_reconciles_with_the_simulator(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    # 6 attempts at a 30% failure rate dead-letter a job in ~2% of runs (0.3**6 * 30): give every job
    # enough attempts that all 30 are sent, which is what this test reconciles.
    sim_settings = sim_settings.model_copy(update={"retry_max_attempts": 20})
    await sim.configure(fail_500_rate=0.3)
    path = numbers_csv(tmp_path, 30, prio=lambda i: 1 + i % 9)
    await do_launch(redis_client, sim_settings, path)
    async with running(sim_settings):
        await wait_until(lambda: campaign_done(redis_client, sim_settings), timeout=20)
    rc, out, err = await run_dialer("campaign", "status", "camp", "--json", env=settings_env(sim_settings))
    assert rc == 0, err
    status: dict[str, Any] = json.loads(out)
    requests = await sim.requests()
    calls = Counter(r["called"] for r in created(requests))
    assert status["states"]["sent"] == len(calls) == 30 and set(calls.values()) == {1}
    assert sum(status["states"].values()) == status["total"] == 30
    assert status["remaining"] == 0 and status["eta_s"] is None
    assert any(r["outcome"] == "500" for r in requests)  # retries happened and were not counted as calls
