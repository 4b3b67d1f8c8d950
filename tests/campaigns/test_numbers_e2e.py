"""Numbers as people and windows in the callee's own zone, end to end: the do-not-call list stops a number
whatever form it is listed and launched or enqueued in (DIALER_DEFAULT_REGION=CN), with the simulator as
the provider; ``--timezone auto`` counts rows per zone and applies the window in each callee's zone."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis
from click.testing import CliRunner

from tests.helpers import Sim, created, do_launch, running, settings_env, wait_until, write_csv
from worker.campaigns.commands import campaign_group, suppress_group
from worker.campaigns.control import Campaigns
from worker.campaigns.launch import LaunchOptions, check_options
from worker.campaigns.suppression import Suppression
from worker.ledger.producer import Producer
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.settings import Settings
from worker.store.keys import Keys


async def _sent(sim: Sim) -> list[str]:
    return sorted(r["called"] for r in created(await sim.requests()))


async def _remaining(redis: aioredis.Redis, settings: Settings, name: str) -> int:
    return int((await Campaigns(redis, settings).status(name))["remaining"])


async def test_do_not_call_matches_every_form_of_a_number(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    cn = sim_settings.model_copy(update={"default_region": "CN"})
    dnc, ledger = Suppression(redis_client, cn), Ledger(redis_client, cn)
    await dnc.add(["+8613800000001", "13800000004"])
    path = write_csv(tmp_path / "n.csv", "called", ["008613800000001", "13800000002", "+86 138 0000 0003"])
    report = await do_launch(redis_client, cn, path)
    assert (report.suppressed, report.enqueued) == (1, 2), report.as_dict()  # 0086... is +86...: skipped
    # Enqueued through the Python API into the campaign, listed in another form before.
    res = await Producer(redis_client, cn).enqueue(
        {"called": "008613800000004", "playList": [{"templateId": "tpl-1"}], "priority": "9"}, campaign="camp")
    assert (res.job_id, res.status) == ("camp:8613800000004", "accepted")
    # Listed after launch in a third form: the worker's check right before dialling finds it.
    await dnc.add(["+86 (138) 0000-0002"])
    async with running(cn):
        await wait_until(lambda: _remaining_is_zero(redis_client, cn), timeout=15)
    assert await _sent(sim) == ["+8613800000003"]  # dialled as written in the file
    for job in ("camp:8613800000002", "camp:8613800000004"):
        rec = await ledger.get(job)
        assert rec is not None and rec.state == State.SUPPRESSED, job
    assert await ledger.get("camp:8613800000001") is None
    # A re-launch in another form is the same job, not a second call.
    again = await do_launch(redis_client, cn, write_csv(tmp_path / "m.csv", "called", ["8613800000003"]))
    assert (again.enqueued, again.already_enqueued) == (0, 1)


async def _remaining_is_zero(redis: aioredis.Redis, settings: Settings) -> bool:
    return await _remaining(redis, settings, "camp") == 0


async def test_auto_zones_are_counted_and_stored_per_row(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    cn = settings.model_copy(update={"default_region": "CN"})
    rows = ["13800000001", "+8613800000002", "+12125550100", "+16505550100", "+18005550100", "8899",
            "13800000003,Europe/Paris"]
    path = write_csv(tmp_path / "z.csv", "called,timezone", [r if "," in r else r + "," for r in rows])
    report = await do_launch(redis_client, cn, path, window="09:00-20:00", timezone="auto",
                             default_timezone="Asia/Shanghai")
    assert report.rejected == [] and report.enqueued == 7
    # +1 800 is toll-free (the whole NANP) and 8899 is no CN number: both take the default.
    assert report.zones == {"Asia/Shanghai": 4, "America/New_York": 1, "America/Los_Angeles": 1, "Europe/Paris": 1}
    assert report.zone_defaulted == 2
    assert list(report.as_dict()["zones"]) == ["Asia/Shanghai", "America/Los_Angeles", "America/New_York",
                                               "Europe/Paris"]
    ledger = Ledger(redis_client, cn)
    tz = {j: (await ledger.get(j)).timezone for j in await Campaigns(redis_client, cn).job_ids("camp")}  # type: ignore[union-attr]
    # Only a zone that is not the campaign's is stored with the job.
    assert tz == {"camp:8613800000001": None, "camp:8613800000002": None, "camp:12125550100": "America/New_York",
                  "camp:16505550100": "America/Los_Angeles", "camp:18005550100": None, "camp:8899": None,
                  "camp:8613800000003": "Europe/Paris"}
    status = await Campaigns(redis_client, cn).status("camp")
    assert status["settings"]["timezone"] == "Asia/Shanghai"


async def test_auto_without_a_default_rejects_the_rows_it_cannot_place(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "z.csv", "called", ["+8613800000001", "+18005550100", "13800000002"])
    report = await do_launch(redis_client, settings, path, window="09:00-20:00", timezone="auto")
    # No region: the national 13800000002 has no known country, so no zone either.
    assert [(e.line, e.field) for e in report.rejected] == [(3, "timezone"), (4, "timezone")]
    assert "--default-timezone" in report.rejected[0].rule
    assert report.enqueued == 1 and report.zones == {"Asia/Shanghai": 1}
    # Without a window no zone is needed: nothing is rejected, zones are still counted.
    report = await do_launch(redis_client, settings, path, name="nowin", timezone="auto")
    assert report.rejected == [] and report.zones == {"Asia/Shanghai": 1}


def test_auto_options_are_checked_naming_the_flag() -> None:
    def errors(**kw: object) -> list[tuple[str, str]]:
        return [(e.field, e.rule) for e in check_options(LaunchOptions(name="c", template_id="t", **kw))[1]]

    assert errors(timezone="auto", window="09:00-20:00") == []
    assert errors(timezone="auto", default_timezone="Asia/Shanghai", window="09:00-20:00") == []
    assert [f for f, _ in errors(default_timezone="Asia/Shanghai", timezone="UTC")] == ["--default-timezone"]
    assert [f for f, _ in errors(timezone="auto", default_timezone="Mars/Base")] == ["--default-timezone"]
    assert [f for f, _ in errors(timezone="Auto")] == ["--timezone"]
    # A deadline without an offset is read in the default zone; without one it needs an offset.
    later = (datetime.now(ZoneInfo("Asia/Shanghai")) + timedelta(days=2)).replace(tzinfo=None).isoformat()
    spec, errs = check_options(LaunchOptions(name="c", template_id="t", timezone="auto",
                                             default_timezone="Asia/Shanghai", deadline=later))
    assert errs == [] and spec.timezone == "Asia/Shanghai" and spec.deadline_ms is not None
    assert spec.deadline_ms == int(datetime.fromisoformat(later).replace(
        tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() * 1000)
    assert [f for f, _ in errors(timezone="auto", deadline=later)] == ["--deadline"]


async def test_window_is_applied_in_each_callees_derived_zone(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """A window open now in Shanghai is closed in New York (12-13 hours behind): with --timezone auto the
    Chinese number is called now and the New York one waits for its own morning."""
    now_sh = datetime.now(ZoneInfo("Asia/Shanghai"))
    window = f"{(now_sh - timedelta(hours=1)):%H:%M}-{(now_sh + timedelta(hours=2)):%H:%M}"
    path = write_csv(tmp_path / "w.csv", "called", ["+8613800000001", "+12125550100"])
    report = await do_launch(redis_client, sim_settings, path, window=window, timezone="auto")
    assert report.zones == {"Asia/Shanghai": 1, "America/New_York": 1}
    ledger = Ledger(redis_client, sim_settings)
    async with running(sim_settings):
        await wait_until(lambda: _sent_one(sim), timeout=10)
        await asyncio.sleep(1.0)  # time enough for the other to be (wrongly) dialled too
    assert await _sent(sim) == ["+8613800000001"]
    rec = await ledger.get("camp:12125550100")
    assert rec is not None and rec.state == State.QUEUED and rec.timezone == "America/New_York"
    # It waits for the window's opening in New York, not in Shanghai.
    ny = ZoneInfo("America/New_York")
    opening = datetime.now(ny).replace(hour=(now_sh - timedelta(hours=1)).hour, minute=(now_sh - timedelta(
        hours=1)).minute, second=0, microsecond=0)
    if opening < datetime.now(ny):
        opening += timedelta(days=1)
    score = await redis_client.zscore(Keys(sim_settings.key_prefix).queue(9), "camp:12125550100")
    assert score is not None and abs(score / 1000 - opening.astimezone(UTC).timestamp()) < 120


async def _sent_one(sim: Sim) -> bool:
    return len(created(await sim.requests())) >= 1


# --- the CLI ------------------------------------------------------------------------------------------


def test_cli_suppress_and_launch_with_a_default_region(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = settings_env(settings.model_copy(update={"default_region": "CN"}))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    out = runner.invoke(suppress_group, ["add", "+8613800000001", "008613800000001", "13800000001"])
    assert out.exit_code == 0 and "added 1 number(s)" in out.output, out.output
    out = runner.invoke(suppress_group, ["list"])
    assert out.output.split() == ["8613800000001"]
    out = runner.invoke(suppress_group, ["add", "13800000002", "++1"])
    assert out.exit_code == 2 and "'++1'" in out.output and "1-32 digits" in out.output  # nothing written
    path = write_csv(tmp_path / "c.csv", "called", ["13800000001", "+12125550100", "+18005550100"])
    out = runner.invoke(campaign_group, ["launch", str(path), "--name", "cli", "--template-id", "t",
                                         "--window", "09:00-20:00", "--timezone", "auto",
                                         "--default-timezone", "UTC", "--no-progress"])
    assert out.exit_code == 0, out.output
    assert "time zones: America/New_York 1, Asia/Shanghai 1, UTC 1 (1 by --default-timezone)" in out.output
    assert "1 on the do-not-call list" in out.output
    out = runner.invoke(campaign_group, ["launch", str(path), "--name", "cli2", "--template-id", "t", "--json",
                                         "--timezone", "auto", "--no-progress"])
    data = json.loads(out.output)
    assert data["zones"] == {"America/New_York": 1, "Asia/Shanghai": 1} and data["zone_defaulted"] == 0
    out = runner.invoke(campaign_group, ["launch", str(path), "--name", "cli3", "--template-id", "t",
                                         "--default-timezone", "UTC"])
    assert out.exit_code == 2 and "--default-timezone" in out.output
