"""Campaigns against a real Redis, without workers: launch validation and idempotency, exact counters,
pause/resume/cancel bookkeeping, suppression, outcomes, the CLI."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.helpers import do_launch, numbers_csv, published, run_dialer, settings_env, write_csv
from worker.campaigns.control import STATUS_STATES, CampaignError, Campaigns, CampaignSpec
from worker.campaigns.launch import LaunchError, LaunchOptions, check_options
from worker.campaigns.outcomes import RedialPolicy, parse_duration
from worker.campaigns.suppression import Suppression, read_numbers
from worker.ledger.producer import Producer
from worker.ledger.states import OUTCOMES, State
from worker.ledger.transitions import Ledger
from worker.rules import normalize_number
from worker.settings import Settings
from worker.store.keys import Keys, in_progress_key_prefix


async def counts(redis: aioredis.Redis, settings: Settings, name: str = "camp") -> dict[str, int]:
    raw = await redis.hgetall(Keys(settings.key_prefix).campaign_counts(name))  # type: ignore[misc]
    return {k.decode(): int(v) for k, v in raw.items() if int(v)}


async def actual_states(redis: aioredis.Redis, settings: Settings, name: str = "camp") -> dict[str, int]:
    """Counts recomputed from the job records themselves."""
    ids = await Campaigns(redis, settings).job_ids(name)
    out: dict[str, int] = {}
    for st in await Ledger(redis, settings).states(ids):
        out[str(st)] = out.get(str(st), 0) + 1
    return out


# --- launch ---------------------------------------------------------------------------------------


async def test_launch_reports_bad_rows_and_enqueues_the_good_ones(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "mixed.csv", "called,priority,templateParams,voiceId,timezone,callerPresent", [
        "13800000001,1,a|b,,,",             # line 2: good
        "12ab,1,a|b,,,",                    # line 3: called
        "13800000002,0,${x},,Mars/Base,",   # line 4: priority, templateParams[0], timezone
        "+86 (138) 0000-0003,3,,v-9,Europe/Paris,4001",  # line 5: good, own voiceId, own tz
        "13800000004,,,,,123456789012345678901234567890123",  # line 6: callerPresent too long
    ])
    report = await do_launch(redis_client, settings, path, name="mixed", params=("d1",), priority=5)
    assert (report.rows, report.valid, report.rejected_rows, report.enqueued) == (5, 2, 3, 2)
    got = {(e.line, e.field) for e in report.rejected}
    assert got == {(3, "called"), (4, "priority"), (4, "templateParams[0]"), (4, "timezone"), (6, "callerPresent")}
    assert all(e.rule for e in report.rejected)
    ledger = Ledger(redis_client, settings)
    first = await ledger.get("mixed:13800000001")
    assert first is not None and first.state == State.QUEUED and first.campaign == "mixed"
    assert first.body == {"called": "13800000001", "playList": [{"templateId": "tpl-1", "templateParams": ["a", "b"]}],
                          "priority": "1"}
    own = await ledger.get("mixed:8613800000003")
    assert own is not None and own.timezone == "Europe/Paris" and own.priority == 3
    # A row naming its own source uses only it; the default --param does not apply to it either.
    assert own.body == {"called": "+8613800000003", "playList": [{"voiceId": "v-9", "templateParams": ["d1"]}],
                        "callerPresent": "4001", "priority": "3"}
    status = await Campaigns(redis_client, settings).status("mixed")
    assert status["total"] == 2 and status["states"]["queued"] == 2


async def test_relaunch_adds_nothing_and_dedupes_numbers(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "d.csv", "called,id", [
        "13800000001,", "138-0000-0001,",   # same number twice: once
        "+13800000002,", "13800000002,",    # '+' ignored for dedupe
        "13800000003,order-1", "13800000003,order-2",  # distinct ids: both
    ])
    first = await do_launch(redis_client, settings, path)
    assert (first.enqueued, first.duplicates_in_file) == (4, 2)
    keys = sorted(await redis_client.keys("*"))
    snapshot = {k: await redis_client.dump(k) for k in keys if b"campaign:camp" not in k}
    again = await do_launch(redis_client, settings, path)
    assert (again.enqueued, again.already_enqueued, again.campaign_created) == (0, 4, False)
    assert sorted(await redis_client.keys("*")) == keys
    assert {k: await redis_client.dump(k) for k in snapshot} == snapshot
    assert (await counts(redis_client, settings)) == {"queued": 4, "total": 4}
    assert await redis_client.llen(Keys(settings.key_prefix).campaign_jobs("camp")) == 4  # type: ignore[misc]
    # Another campaign may call the same numbers (dedupe by number is per campaign); an explicit id is
    # an idempotency key across the whole dialer.
    other = await do_launch(redis_client, settings, path, name="other")
    assert (other.enqueued, other.already_enqueued) == (2, 2)


async def test_dry_run_stores_nothing(redis_client: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    await Suppression(redis_client, settings).add(["13800000002"])
    before = await redis_client.dbsize()
    report = await do_launch(redis_client, settings, numbers_csv(tmp_path, 5), dry_run=True)
    assert (report.valid, report.suppressed, report.enqueued, report.dry_run) == (5, 1, 0, True)
    assert await redis_client.dbsize() == before


async def test_strict_is_all_or_nothing(redis_client: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", "called", ["13800000001", "bad", "13800000002"])
    report = await do_launch(redis_client, settings, path, strict=True)
    assert report.strict_refused and report.enqueued == 0 and report.rejected_rows == 1
    assert await redis_client.dbsize() == 0
    report = await do_launch(redis_client, settings, path)
    assert report.enqueued == 2


@pytest.mark.parametrize(("opts", "flags"), [
    ({"timezone": "Mars/Base"}, {"--timezone"}),
    ({"window": "9-20", "timezone": "UTC"}, {"--window"}),
    ({"window": "09:00-20:00"}, {"--timezone"}),
    ({"days": "mon-fryday", "timezone": "UTC"}, {"--days"}),
    ({"deadline": "2001-01-01T00:00:00Z"}, {"--deadline"}),
    ({"deadline": "tomorrow"}, {"--deadline"}),
    ({"rate": 0.0}, {"--rate"}),
    ({"priority": 10}, {"--priority"}),
    ({"name": "bad name"}, {"--name"}),
    ({"params": ("${x}",)}, {"--param"}),
])
async def test_bad_options_are_refused_naming_the_flag(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path, opts: dict[str, Any], flags: set[str]
) -> None:
    with pytest.raises(LaunchError) as exc_info:
        await do_launch(redis_client, settings, numbers_csv(tmp_path, 2), **opts)
    assert {e.field for e in exc_info.value.errors} == flags
    assert await redis_client.dbsize() == 0


async def test_file_problems_store_nothing(redis_client: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="called"):
        await do_launch(redis_client, settings, write_csv(tmp_path / "a.csv", "number", ["1"]))
    with pytest.raises(LaunchError, match="caled"):
        await do_launch(redis_client, settings, write_csv(tmp_path / "b.csv", "called,caled", ["1,2"]))
    assert await redis_client.dbsize() == 0


async def test_jsonl_rows_with_defaults_ids_and_timezones(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    lines = [
        {"called": "13800000001", "playList": [{"voiceId": "v1"}], "priority": "2"},
        {"called": "13800000002", "id": "crm-77", "timezone": "Asia/Shanghai"},
        {"called": "13800000003", "playTimes": 9},
        "not an object",
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken\n", encoding="utf-8")
    report = await do_launch(redis_client, settings, path, caller_present="4001", priority=4)
    assert report.enqueued == 2
    assert {(e.line, e.field) for e in report.rejected} == {(3, "playTimes"), (4, "body"), (5, "body")}
    ledger = Ledger(redis_client, settings)
    a = await ledger.get("camp:13800000001")
    assert a is not None and a.body == {"called": "13800000001", "playList": [{"voiceId": "v1"}],
                                        "callerPresent": "4001", "priority": "2"}
    b = await ledger.get("crm-77")
    assert b is not None and b.campaign == "camp" and b.timezone == "Asia/Shanghai" and b.priority == 4
    assert b.body["playList"] == [{"templateId": "tpl-1"}]


async def test_existing_campaign_must_keep_its_settings(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    path = numbers_csv(tmp_path, 2)
    await do_launch(redis_client, settings, path, rate=5.0)
    with pytest.raises(CampaignError, match="rate"):
        await do_launch(redis_client, settings, path, rate=6.0)
    await Campaigns(redis_client, settings).cancel("camp")
    with pytest.raises(CampaignError, match="cancelled"):
        await do_launch(redis_client, settings, path, rate=5.0)


async def test_launch_is_paced_per_campaign_and_priority(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    """Scores from the campaign's pacing clock: 1/rate apart per priority, in file order."""
    keys = Keys(settings.key_prefix)
    await do_launch(redis_client, settings, numbers_csv(tmp_path, 20, prio=lambda i: 1 if i % 2 else 9), rate=10.0)
    for prio in (1, 9):
        members = await redis_client.zrange(keys.queue(prio), 0, -1, withscores=True)
        assert [m.decode() for m, _ in members] == sorted(m.decode() for m, _ in members)  # file order
        gaps = [b - a for (_, a), (_, b) in itertools.pairwise(members)]
        assert len(gaps) == 9 and all(abs(g - 100.0) < 0.01 for g in gaps), gaps
        # The ledger record outlives its (future) run time; no arq job until a worker claims it.
        last = members[-1][0].decode()
        assert await redis_client.pttl(keys.job(last)) > settings.ledger_ttl_s * 1000 + 500
        assert await redis_client.exists(keys.arq_job(last)) == 0
    # Unpaced (no rate anywhere): still one distinct, ordered score per job.
    await do_launch(redis_client, settings, numbers_csv(tmp_path, 5), name="flat")
    queued = await redis_client.zrange(keys.queue(9), 0, -1, withscores=True)
    flat = [(m, s) for m, s in queued if m.startswith(b"flat")]
    assert [m for m, _ in flat] == sorted(m for m, _ in flat) and len({s for _, s in flat}) == 5


async def test_hundred_thousand_rows_launch_in_seconds(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    rows = [f"1390{i:07d},{1 + i % 9},{i}|10:30" for i in range(100_000)]
    path = write_csv(tmp_path / "big.csv", "called,priority,templateParams", rows)
    t0 = time.monotonic()
    report = await do_launch(redis_client, settings, path, name="big")
    elapsed = time.monotonic() - t0
    assert report.enqueued == 100_000
    assert (await Campaigns(redis_client, settings).status("big"))["states"]["queued"] == 100_000
    assert elapsed < 60, elapsed  # "seconds, not minutes"; measured ~7 s on 2 vCPUs (see README)


# --- counters and control --------------------------------------------------------------------------


async def test_counters_follow_every_transition_exactly(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    await do_launch(redis_client, settings, numbers_csv(tmp_path, 8))
    ledger = Ledger(redis_client, settings)
    producer = Producer(redis_client, settings)
    ids = await Campaigns(redis_client, settings).job_ids("camp")
    assert await ledger.mark_sending(ids[0])
    await ledger.mark_sent(ids[0], "SN-0")
    await ledger.mark_sent(ids[0], "SN-0b")  # a second serial changes nothing
    assert await ledger.mark_sending(ids[1])
    assert await ledger.mark_retry(ids[1], "HTTP 500")
    assert await ledger.mark_sending(ids[1])
    assert await ledger.dead_letter(ids[1], "gave up")
    assert await ledger.dead_letter(ids[1], "again")  # dead -> dead: no move
    assert await producer.requeue(ids[1])
    assert await ledger.mark_final(ids[2], State.FAILED, "retCode 5")
    assert await ledger.mark_final(ids[3], State.EXPIRED)
    assert await ledger.mark_sending(ids[4])
    assert (await ledger.claim(ids[4]))[0] == "stale"  # -> unknown
    await ledger.reject(ids[5], "corrupt")
    assert await ledger.mark_sending(ids[6])
    assert await ledger.mark_final(ids[6], State.CANCELLED)
    await ledger.mark_sent(ids[6], "SN-6")  # cancelled while in flight: the call exists
    expected = {"queued": 2, "sent": 2, "failed": 1, "expired": 1, "unknown": 1, "dead": 1, "total": 8}
    assert await counts(redis_client, settings) == expected
    recomputed = await actual_states(redis_client, settings)
    assert recomputed == {k: v for k, v in expected.items() if k != "total"}


async def test_record_outcome_counts_once_and_the_first_outcome_stands(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    await do_launch(redis_client, settings, numbers_csv(tmp_path, 2))
    ledger = Ledger(redis_client, settings)
    job = "camp:13800000000"
    assert await ledger.mark_sending(job)
    await ledger.mark_sent(job, "SN-1")
    rec = await ledger.record_outcome(job, "answered", "1", {"talkDuration": "12", "releaseTime": "t"})
    assert rec is not None and rec.outcome == "answered" and rec.release_reason == "1"
    assert (await redis_client.hget(Keys(settings.key_prefix).job(job), "talkDuration")) == b"12"  # type: ignore[misc]
    await ledger.record_outcome(job, "answered", "1", {})  # the same callback twice
    status = await Campaigns(redis_client, settings).status("camp")
    assert status["outcomes"] == {"answered": 1, "unanswered": 0, "failed_to_connect": 0}
    kept = await ledger.record_outcome(job, "unanswered", "4")  # a later, different outcome is ignored
    assert kept is not None and (kept.outcome, kept.release_reason) == ("answered", "1")
    assert (await Campaigns(redis_client, settings).status("camp"))["outcomes"] == {
        "answered": 1, "unanswered": 0, "failed_to_connect": 0}
    assert await ledger.record_outcome("nope", "answered", "0") is None
    with pytest.raises(ValueError, match="outcome"):
        await ledger.record_outcome(job, "maybe", "0")
    with pytest.raises(ValueError, match="reserved"):
        await ledger.record_outcome(job, "answered", "0", {"state": "x"})
    assert set(OUTCOMES) == {"answered", "unanswered", "failed_to_connect"}


async def test_pause_parks_on_claim_and_resume_requeues_in_order(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    keys = Keys(settings.key_prefix)
    await do_launch(redis_client, settings, numbers_csv(tmp_path, 6))
    campaigns, ledger = Campaigns(redis_client, settings), Ledger(redis_client, settings)
    ids = await campaigns.job_ids("camp")
    assert await campaigns.pause("camp") == "active"
    # A worker meets two of them: parked, not sent, no attempt used; their arq runs then end normally.
    for job in ids[:2]:
        c = await ledger.claim_run(job)
        assert c.verdict == "parked" and c.record is not None and c.record.attempts == 0
        assert await redis_client.pttl(keys.job(job)) == -1  # held for as long as the pause lasts
        await redis_client.zrem(keys.queue(9), job)
        await redis_client.delete(keys.arq_job(job))
    await redis_client.set(keys.arq_job(ids[1]), b"left behind")  # a foreign arq job: resume drops it
    # A job that passed its claim before the pause is parked by the last gate instead.
    gate = await ledger.begin_send(ids[2])
    assert (gate.ok, gate.reason) == (False, "parked")
    await redis_client.zrem(keys.queue(9), ids[2])
    await redis_client.delete(keys.arq_job(ids[2]))
    # A job enqueued into the paused campaign goes straight to its parked set.
    await do_launch(redis_client, settings, write_csv(tmp_path / "late.csv", "called", ["13800009999"]))
    assert (await campaigns.status("camp"))["parked"] == 4
    # One of them is still finishing its arq run: resume waits for it.
    await redis_client.set(in_progress_key_prefix + ids[0], b"1", px=300)
    sub = redis_client.pubsub()
    await sub.subscribe(keys.wake)
    t0 = time.monotonic()
    res = await campaigns.resume("camp", wait_s=5)
    assert (res.moved, res.dropped, res.left) == (4, 0, 0)
    # Due now: their queue's idle workers are woken rather than left to their next poll.
    assert keys.queue(9).encode() in await published(sub, 0.5)
    await sub.aclose()
    assert time.monotonic() - t0 >= 0.2
    order = [m.decode() for m in await redis_client.zrange(keys.queue(9), 0, -1)]
    assert order[:3] == ids[3:]  # never parked: kept their places
    assert sorted(order[3:]) == sorted([*ids[:3], "camp:13800009999"])
    assert order[3:6] == ids[:3] and order[6] == "camp:13800009999"  # parked ones in their order
    for job in ids[:3]:
        assert await redis_client.exists(keys.arq_job(job)) == 0  # written by the claim, as for a new job
        assert await redis_client.pttl(keys.job(job)) > 0
        r = await ledger.get(job)
        assert r is not None and r.state == State.QUEUED and not r.parked and r.attempts == 0
    assert (await campaigns.status("camp"))["parked"] == 0
    assert (await campaigns.resume("camp")).moved == 0  # idempotent


async def test_cancel_marks_every_unsent_job_and_clears_the_queues(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    keys = Keys(settings.key_prefix)
    await do_launch(redis_client, settings, numbers_csv(tmp_path, 2500, prio=lambda i: 1 + i % 9))
    campaigns, ledger = Campaigns(redis_client, settings), Ledger(redis_client, settings)
    ids = await campaigns.job_ids("camp")
    assert await ledger.mark_sending(ids[0])  # in flight: will be recorded as sent
    assert await ledger.mark_sending(ids[1])
    await ledger.mark_sent(ids[1], "SN-1")
    await campaigns.pause("camp")
    assert (await ledger.claim_run(ids[2])).verdict == "parked"
    assert await campaigns.cancel("camp") == 2498
    await ledger.mark_sent(ids[0], "SN-0")
    status = await campaigns.status("camp")
    assert status["status"] == "cancelled"
    assert status["states"]["cancelled"] == 2498 and status["states"]["sent"] == 2 and status["remaining"] == 0
    assert status["parked"] == 0
    assert sum([await redis_client.zcard(keys.queue(p)) for p in range(1, 10)]) == 2  # the two arq jobs ran
    assert await redis_client.exists(keys.arq_job(ids[5])) == 0
    # A straggler picked up later is cancelled by its claim; pause/resume are refused now.
    assert (await ledger.claim_run(ids[5])).verdict == "final"
    with pytest.raises(CampaignError):
        await campaigns.resume("camp")
    with pytest.raises(CampaignError):
        await campaigns.pause("nope")


async def test_finished_campaign_expires_with_its_records(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    keys = Keys(settings.key_prefix)
    await do_launch(redis_client, settings, numbers_csv(tmp_path, 2))
    assert await redis_client.pttl(keys.campaign("camp")) == -1  # work to do: kept
    ledger = Ledger(redis_client, settings)
    for job in await Campaigns(redis_client, settings).job_ids("camp"):
        assert await ledger.mark_final(job, State.FAILED)
    for key in (keys.campaign("camp"), keys.campaign_counts("camp"), keys.campaign_jobs("camp")):
        assert 0 < await redis_client.pttl(key) <= settings.ledger_ttl_s * 1000
    await redis_client.delete(keys.campaign("camp"))
    assert await Campaigns(redis_client, settings).names() == []


async def test_status_shape_rate_and_eta(redis_client: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    await do_launch(redis_client, settings, numbers_csv(tmp_path, 30), rate=50.0)
    ledger = Ledger(redis_client, settings)
    for job in (await Campaigns(redis_client, settings).job_ids("camp"))[:10]:
        assert await ledger.mark_sending(job)
        await ledger.mark_sent(job, f"SN-{job}")
    status = await Campaigns(redis_client, settings).status("camp")
    assert list(status) == ["name", "status", "created_at", "settings", "total", "pending", "states", "parked",
                            "outcomes", "redials", "unknown", "remaining", "send_rate_per_s", "eta_s", "as_of"]
    assert list(status["settings"]) == ["priority", "rate", "window", "days", "timezone", "deadline", "defaults",
                                        "callback_url", "redial", "status_callback_url"]
    assert status["redials"] == 0 and status["settings"]["redial"] is None
    assert list(status["states"]) == list(STATUS_STATES)
    assert status["settings"]["rate"] == 50.0 and status["total"] == 30 and status["remaining"] == 20
    assert status["send_rate_per_s"] >= 5  # 10 sent within the last second or two
    assert status["eta_s"] is not None and 0 < status["eta_s"] <= 4
    assert json.loads(json.dumps(status)) == status
    listed = await Campaigns(redis_client, settings).statuses()
    assert [s["name"] for s in listed] == ["camp"]


async def test_spec_round_trip() -> None:
    spec = CampaignSpec(priority=3, defaults={"templateId": "t"}, rate=2.5, window="09:00-20:00", days="mon-fri",
                        timezone="Europe/Paris", deadline_ms=123)
    assert CampaignSpec.from_canonical(spec.canonical()) == spec
    assert spec.pace_ms(10.0) == 400.0 and spec.pace_ms(0) == 400.0
    assert CampaignSpec().pace_ms(0) == 0.0 and CampaignSpec().pace_ms(20.0) == 50.0


# --- suppression and the number cap ---------------------------------------------------------------


def test_normalize_number() -> None:
    assert normalize_number(" +86 (138) 0000-0001 ") == "8613800000001" == normalize_number("8613800000001")
    assert normalize_number("1.555.010.9999") == "15550109999"
    for bad in ("", "+", "12ab", "++1", "1" * 33):
        with pytest.raises(ValueError, match="digits"):
            normalize_number(bad)


def test_read_numbers(tmp_path: Path) -> None:
    path = tmp_path / "dnc.csv"
    path.write_text("name,phone\nann,+1 555 0100\n# comment\n\nbob,12ab\ncy,5550102\n", encoding="utf-8")
    with path.open() as f:
        numbers, bad = read_numbers(f)
    assert numbers == ["15550100", "5550102"] and [b[0] for b in bad] == [5]


async def test_suppression_before_and_after_launch_at_the_claim(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    dnc = Suppression(redis_client, settings)
    assert await dnc.add(["+1 380-000-0001", "13800000001"]) == 1  # one number once normalized
    report = await do_launch(redis_client, settings, numbers_csv(tmp_path, 4))
    assert (report.suppressed, report.enqueued) == (1, 3)
    assert await Ledger(redis_client, settings).get("camp:13800000001") is None
    await dnc.add(["13800000002"])
    c = await Ledger(redis_client, settings).claim_run("camp:13800000002")
    assert c.verdict == "final" and c.record is not None and c.record.state == State.SUPPRESSED
    assert "do-not-call" in (c.record.last_error or "")
    # ... and at the last gate, for a number listed while its job waited for a permit.
    await dnc.add(["13800000003"])
    gate = await Ledger(redis_client, settings).begin_send("camp:13800000003")
    assert (gate.ok, gate.reason) == (False, "suppressed")
    assert (await counts(redis_client, settings)) == {"queued": 1, "suppressed": 2, "total": 3}
    assert await dnc.remove(["13800000002"]) == 1 and await dnc.count() == 2
    assert await dnc.list() == ["13800000001", "13800000003"]


async def test_number_cap_counts_each_job_once_across_campaigns(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    capped = settings.model_copy(update={"number_cap_calls": 1, "number_cap_days": 1.0})
    path = numbers_csv(tmp_path, 1)
    await do_launch(redis_client, capped, path, name="a")
    await do_launch(redis_client, capped, path, name="b")
    ledger = Ledger(redis_client, capped)
    assert (await ledger.begin_send("a:13800000000")).ok
    assert await ledger.mark_retry("a:13800000000", "HTTP 500")
    assert (await ledger.begin_send("a:13800000000")).ok  # its own retry is the same call
    c = await ledger.claim_run("b:13800000000")
    assert c.verdict == "cap" and c.retry_after_ms is not None
    assert 86_400_000 - 10_000 < c.retry_after_ms <= 86_400_000
    gate = await ledger.begin_send("b:13800000000")
    assert (gate.ok, gate.reason) == (False, "cap")
    # Jobs without a campaign are not capped.
    await Producer(redis_client, capped).enqueue({"called": "13800000000", "playList": [{"voiceId": "1"}]}, job_id="tx")
    assert (await ledger.begin_send("tx")).ok


# --- CLI ------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_cli_launch_status_pause_resume_cancel_list(settings: Settings, tmp_path: Path) -> None:
    env = settings_env(settings)
    path = write_csv(tmp_path / "cli.csv", "called,priority", ["13800000001,1", "bad,1", "13800000002,2"])
    rc, out, err = await run_dialer("campaign", "launch", str(path), "--name", "cli", "--voice-id", "v1", "--json",
                                    env=env)
    assert rc == 3, err  # a row was rejected; the good ones are enqueued
    report = json.loads(out)
    assert report["enqueued"] == 2 and report["rejected"] == [
        {"line": 3, "field": "called", "rule": "must be digits with an optional leading '+'"}]
    rc, out, err = await run_dialer("campaign", "launch", str(path), "--name", "cli2", "--window", "9-5", env=env)
    assert rc == 2 and "--window" in err and "--timezone" in err
    rc, out, _ = await run_dialer("campaign", "status", "cli", "--json", env=env)
    assert rc == 0 and json.loads(out)["states"]["queued"] == 2
    rc, out, _ = await run_dialer("campaign", "pause", "cli", env=env)
    assert rc == 0 and "paused" in out
    rc, out, _ = await run_dialer("campaign", "resume", "cli", env=env)
    assert rc == 0 and "active" in out
    rc, out, _ = await run_dialer("campaign", "status", "cli", env=env)
    assert rc == 0 and "queued=2" in out
    rc, out, _ = await run_dialer("campaign", "jobs", "cli", "--state", "queued", env=env)
    assert rc == 0 and out.split() == ["cli:13800000001", "queued", "cli:13800000002", "queued"]
    rc, out, _ = await run_dialer("campaign", "cancel", "cli", env=env)
    assert rc == 0 and "2 job(s)" in out
    rc, out, _ = await run_dialer("campaign", "list", "--json", env=env)
    assert rc == 0 and [c["status"] for c in json.loads(out)] == ["cancelled"]
    rc, _, err = await run_dialer("campaign", "status", "nope", env=env)
    assert rc == 1 and "no campaign" in err


@pytest.mark.slow
async def test_cli_launch_with_redials_and_callback_url(settings: Settings, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", "called", ["13800000001"])
    env = settings_env(settings)
    rc, _, err = await run_dialer("campaign", "launch", str(path), "--name", "r", "--voice-id", "v", "--redial", "2",
                                  env=env)
    assert rc == 2 and "--redial: redials need result callbacks: set DIALER_PUBLIC_URL" in err
    env["DIALER_PUBLIC_URL"] = "https://dialer.example.com/"
    rc, _, err = await run_dialer("campaign", "launch", str(path), "--name", "r", "--voice-id", "v", "--redial", "2",
                                  "--redial-after", "soon", env=env)
    assert rc == 2 and "--redial-after: must be a duration" in err
    rc, _, err = await run_dialer("campaign", "launch", str(path), "--name", "r", "--voice-id", "v", "--redial", "2",
                                  "--redial-after", "1h30m", env=env)
    assert rc == 0, err
    rc, out, _ = await run_dialer("campaign", "status", "r", "--json", env=env)
    status = json.loads(out)
    assert status["settings"]["redial"] == {"max": 2, "after_s": 5400.0}
    assert status["settings"]["callback_url"] == "https://dialer.example.com/v1/callbacks/release"
    rc, out, _ = await run_dialer("job", "r:13800000001", env=env)
    job = json.loads(out)
    assert job["body"]["callBackUrl"] == "https://dialer.example.com/v1/callbacks/release"
    assert (job["outcome"], job["redial_of"], job["redials"]) == (None, None, [])
    rc, out, _ = await run_dialer("campaign", "status", "r", env=env)
    assert "redial=2x after 5400s" in out


def test_redial_policy_and_durations() -> None:
    assert [parse_duration(t) for t in ("30m", "90s", "2h", "1h30m", "1.5d", "500ms", "45", " 1H ")] == [
        1800.0, 90.0, 7200.0, 5400.0, 129600.0, 0.5, 45.0, 3600.0]
    for bad in ("", "m", "1x", "1h 30", "h1", "-5s", "1h30mx"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    assert RedialPolicy.build(None, None) == (None, [])
    assert RedialPolicy.build(3, None) == (RedialPolicy(3, 1800.0), [])
    assert RedialPolicy.build(None, "1h")[1] == [("redial_after", "needs --redial (how many times to redial)")]
    assert RedialPolicy.build(11, "0.5s")[1] == [("redial", "must be 1..10"), ("redial_after", "must be from 1s to 7d")]
    spec, errors = check_options(LaunchOptions(name="x", voice_id="v", redial=2, redial_after="10m"),
                                 callback="https://d.example.com/v1/callbacks/release")
    assert errors == [] and spec.redial == {"max": 2, "after_s": 600.0}
    assert CampaignSpec.from_canonical(spec.canonical()) == spec
    assert RedialPolicy.from_spec(spec.redial) == RedialPolicy(2, 600.0)
    _, errors = check_options(LaunchOptions(name="x", voice_id="v"), callback="https://d.example.com/" + "x" * 300)
    assert [e.field for e in errors] == ["DIALER_PUBLIC_URL"]


@pytest.mark.slow
async def test_cli_suppress(settings: Settings, tmp_path: Path) -> None:
    env = settings_env(settings)
    rc, out, _ = await run_dialer("suppress", "add", "+86 138-0000-0001", "13800000002", env=env)
    assert rc == 0 and "added 2" in out
    rc, _, err = await run_dialer("suppress", "add", "12ab", env=env)
    assert rc == 2 and "12ab" in err
    f = tmp_path / "dnc.txt"
    f.write_text("13800000003\nnot-a-number\n8613800000001\n", encoding="utf-8")
    rc, out, err = await run_dialer("suppress", "import", str(f), env=env)
    assert rc == 1 and "imported 2 number(s), 1 new; 1 line(s) skipped" in out and "line 2" in err
    rc, out, _ = await run_dialer("suppress", "remove", "13800000002", env=env)
    assert rc == 0 and "removed 1" in out
    rc, out, _ = await run_dialer("suppress", "list", env=env)
    assert out.split() == ["13800000003", "8613800000001"]


async def test_a_failing_job_in_a_batch_leaves_the_earlier_ones_counted(
    redis_client: aioredis.Redis, settings: Settings
) -> None:
    from redis.exceptions import ResponseError

    keys = Keys(settings.key_prefix)
    await Campaigns(redis_client, settings).create("camp", CampaignSpec())
    await redis_client.set(keys.queue(3), b"not a sorted set")
    body = {"playList": [{"voiceId": "1"}]}
    items = [{**body, "called": "1"}, {**body, "called": "2", "priority": "3"}, {**body, "called": "3"}]
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await Producer(redis_client, settings).enqueue_many(items, campaign="camp")
    assert await counts(redis_client, settings) == {"queued": 1, "total": 1}
    assert await Campaigns(redis_client, settings).job_ids("camp") == ["camp:1"]
    assert await redis_client.exists(keys.job("camp:2"), keys.job("camp:3")) == 0


# --- nothing valid, delete (issue 14, item 6) -------------------------------------------------------


async def test_a_launch_with_no_valid_row_creates_nothing_so_the_name_stays_free(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    """Every row rejected: the campaign used to be created anyway and its name locked to these options,
    so the corrected re-run (other options) was refused."""
    bad = write_csv(tmp_path / "bad.csv", "called", ["bad", "13800000077x", "+"])
    report = await do_launch(redis_client, settings, bad, name="fix")
    assert (report.valid, report.rejected_rows, report.nothing_valid, report.campaign_created) == (0, 3, True, False)
    assert await redis_client.dbsize() == 0
    empty = await do_launch(redis_client, settings, write_csv(tmp_path / "e.csv", "called", []), name="fix")
    assert empty.nothing_valid and await redis_client.dbsize() == 0
    good = write_csv(tmp_path / "good.csv", "called", ["13800000001"])
    fixed = await do_launch(redis_client, settings, good, name="fix", rate=2)
    assert (fixed.enqueued, fixed.campaign_created, fixed.nothing_valid) == (1, True, False)


async def test_delete_only_a_campaign_with_no_queued_sending_or_parked_job(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    from worker.campaigns.control import CampaignBusy, UnknownCampaign

    campaigns = Campaigns(redis_client, settings)
    await do_launch(redis_client, settings, numbers_csv(tmp_path, 2))
    ledger = Ledger(redis_client, settings)
    with pytest.raises(CampaignBusy, match="2 queued, 0 sending, 0 parked"):
        await campaigns.delete("camp")
    assert await ledger.mark_sending("camp:13800000000")
    with pytest.raises(CampaignBusy, match="1 queued, 1 sending"):
        await campaigns.delete("camp")
    await ledger.mark_sent("camp:13800000000", "SN-1")
    await campaigns.cancel("camp")
    await campaigns.delete("camp")
    assert "camp" not in await campaigns.names()
    assert [k async for k in redis_client.scan_iter(Keys(settings.key_prefix).campaign("camp") + "*")] == []
    with pytest.raises(UnknownCampaign):
        await campaigns.delete("camp")
    # Its finished jobs stay in the ledger until their TTL.
    assert (await ledger.get("camp:13800000000")) is not None
    # A campaign that never got a job can go too.
    await campaigns.create("never", CampaignSpec())
    await campaigns.delete("never")
    assert await campaigns.names() == []


@pytest.mark.slow
async def test_cli_launch_exit_codes_and_delete(
    settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """0 all enqueued, 3 some rows rejected, 4 nothing enqueued (no valid row: nothing created)."""
    env = settings_env(settings)
    bad = write_csv(tmp_path / "bad.csv", "called", ["bad", "nope"])
    rc, out, err = await run_dialer("campaign", "launch", str(bad), "--name", "x", "--voice-id", "v1", env=env)
    assert rc == 4, (rc, out, err)
    assert "nothing enqueued, campaign not created" in out and "Traceback" not in err
    assert await redis_client.dbsize() == 0
    rc, out, err = await run_dialer("campaign", "launch", str(bad), "--name", "x", "--voice-id", "v1", "--dry-run",
                                    env=env)
    assert rc == 4, (rc, out, err)
    mixed = write_csv(tmp_path / "mixed.csv", "called", ["13800000001", "bad"])
    rc, out, err = await run_dialer("campaign", "launch", str(mixed), "--name", "x", "--voice-id", "v2", env=env)
    assert rc == 3, (rc, out, err)
    rc, out, err = await run_dialer("campaign", "launch", str(mixed), "--name", "x", "--voice-id", "v2", "--strict",
                                    env=env)
    assert rc == 4, (rc, out, err)
    good = write_csv(tmp_path / "good.csv", "called", ["13800000002"])
    rc, out, err = await run_dialer("campaign", "launch", str(good), "--name", "x", "--voice-id", "v2", env=env)
    assert rc == 0, (rc, out, err)
    rc, out, err = await run_dialer("campaign", "delete", "x", env=env)
    assert rc == 1 and "still has work (2 queued" in err and "Traceback" not in err, (rc, out, err)
    rc, out, err = await run_dialer("campaign", "cancel", "x", env=env)
    rc, out, err = await run_dialer("campaign", "delete", "x", env=env)
    assert rc == 0 and out.strip() == "x: deleted", (rc, out, err)
    rc, out, err = await run_dialer("campaign", "delete", "x", env=env)
    assert rc == 1 and "no campaign 'x'" in err
    rc, out, _ = await run_dialer("campaign", "launch", "--help", env=env)
    assert "3  some rows rejected" in out and "4  nothing enqueued" in out
