"""Launch input rules (worker/campaigns/launch.py): row ids, derived ids, numbers; streaming, resumable launches."""

from __future__ import annotations

import itertools
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.helpers import do_launch, run_dialer, settings_env, write_csv
from worker.campaigns.control import Campaigns
from worker.campaigns.launch import MAX_REJECTIONS, LaunchOptions, launch_file
from worker.campaigns.rows import CompactRow, RowStore, decode_chunk, job_id, request_body
from worker.ledger.transitions import Ledger
from worker.settings import Settings
from worker.store.keys import Keys


async def test_a_row_id_with_a_colon_is_refused_so_no_row_takes_another_campaigns_id(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    """A row of campaign "a" with id "b:13800000001" took campaign b's row for that number in advance."""
    path = write_csv(tmp_path / "a.csv", "called,id", ["13800000002,b:13800000001", "13800000003,order-3"])
    report = await do_launch(redis_client, settings, path, name="a")
    [err] = report.rejected
    assert (err.line, err.field) == (2, "id") and "reserved" in err.rule, err
    assert report.enqueued == 1
    ledger = Ledger(redis_client, settings)
    assert await ledger.get("b:13800000001") is None
    assert await ledger.get("order-3") is not None
    b = await do_launch(redis_client, settings, write_csv(tmp_path / "b.csv", "called", ["+13800000001"]), name="b")
    assert (b.enqueued, b.already_enqueued) == (1, 0)
    assert await ledger.get("b:13800000001") is not None  # derived ids keep their ':'


async def test_numbers_in_a_file_are_normalised_once_and_dedupe_across_forms(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "n.csv", "called", ["+86 (138) 0000-0001", "8613800000001", '"86138000000 02\t"'])
    report = await do_launch(redis_client, settings, path, name="n")
    assert (report.enqueued, report.duplicates_in_file, report.rejected) == (2, 1, [])
    assert await Ledger(redis_client, settings).get("n:8613800000002") is not None


# --- issue 18: streaming, resumable launches into compact rows ---------------------------------------------


def _big_csv(tmp_path: Path, n: int, name: str = "big.csv", bad_every: int = 0) -> Path:
    path = tmp_path / name
    with path.open("w", encoding="utf-8") as f:
        f.write("called,templateParams\n")
        for i in range(n):
            called = "12a" if bad_every and i % bad_every == 0 else f"+86138{i:08d}"
            f.write(f"{called},p{i}|x\n")
    return path


async def _stored_rows(redis: aioredis.Redis, keys: Keys, name: str) -> list[CompactRow]:
    return [r for blob in await redis.lrange(keys.campaign_rows(name), 0, -1)  # type: ignore[misc]
            for r in decode_chunk(blob)]


async def test_a_launch_into_rows_stores_chunks_not_jobs_and_a_rerun_adds_nothing(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "r.csv", "called,templateParams,priority,id",
                     ["+8613800000001,a|b,,", "8613800000002,,1,", "8613800000001,c,,", "8613800000003,,,own-3",
                      "99999,,,", "bad,,,"])
    await redis_client.sadd(keys.suppress, "99999")  # type: ignore[misc]
    opts = LaunchOptions(name="r", template_id="tpl-1", params=("x",))
    report = await launch_file(redis_client, settings, path, opts, layout="rows")
    assert (report.rows, report.valid, report.rejected_rows, report.duplicates_in_file, report.suppressed,
            report.enqueued, report.campaign_created) == (6, 4, 1, 1, 1, 3, True), report.as_dict()
    assert await redis_client.keys(keys.job("*")) == []  # no ledger job yet: the hopper makes them
    rows = await _stored_rows(redis_client, keys, "r")
    spec = await Campaigns(redis_client, settings).spec("r")
    assert spec is not None
    assert [request_body(r, spec) for r in rows] == [
        {"called": "+8613800000001", "playList": [{"templateId": "tpl-1", "templateParams": ["a", "b"]}]},
        {"called": "8613800000002", "playList": [{"templateId": "tpl-1", "templateParams": ["x"]}], "priority": "1"},
        {"called": "8613800000003", "playList": [{"templateId": "tpl-1", "templateParams": ["x"]}]},
    ]
    assert [job_id(r, "r") for r in rows] == ["r:8613800000001", "r:8613800000002", "own-3"]
    assert await redis_client.hget(keys.campaign_counts("r"), "pending") == b"3"  # type: ignore[misc]
    again = await launch_file(redis_client, settings, path, opts, layout="rows")
    assert (again.enqueued, again.already_enqueued, again.campaign_created) == (0, 3, False)
    assert len(await _stored_rows(redis_client, keys, "r")) == 3


async def test_a_launch_that_crashed_halfway_continues_on_a_rerun_and_stores_each_number_once(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _big_csv(tmp_path, 35_000)
    opts = LaunchOptions(name="crash", template_id="tpl-1")
    real = RowStore.append
    calls = 0

    async def dying(self: RowStore, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise ConnectionError("the launcher's host went away")
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(RowStore, "append", dying)
    with pytest.raises(ConnectionError):
        await launch_file(redis_client, settings, path, opts, layout="rows")
    monkeypatch.setattr(RowStore, "append", real)
    first = len(await _stored_rows(redis_client, keys, "crash"))
    assert first == 20_000  # two batches of 10,000 stored before the crash
    report = await launch_file(redis_client, settings, path, opts, layout="rows")
    assert (report.enqueued, report.already_enqueued) == (15_000, 20_000)
    rows = await _stored_rows(redis_client, keys, "crash")
    assert len(rows) == 35_000 and len({r.key for r in rows}) == 35_000
    assert [r.key for r in rows[:3]] == ["8613800000000", "8613800000001", "8613800000002"]  # launch order
    assert await redis_client.hget(keys.campaign_counts("crash"), "pending") == b"35000"  # type: ignore[misc]


async def test_a_report_lists_the_first_1000_rejections_and_counts_them_all(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    path = _big_csv(tmp_path, 3000, bad_every=2)
    report = await launch_file(redis_client, settings, path, LaunchOptions(name="rej", template_id="tpl-1"),
                               layout="rows")
    assert (report.rejected_rows, len(report.rejected), report.enqueued) == (1500, MAX_REJECTIONS, 1500)
    assert report.as_dict()["rejected_rows"] == 1500 and report.rejected[0].line == 2


async def test_strict_reads_the_file_twice_and_stores_nothing_for_a_late_bad_row(
    redis_client: aioredis.Redis, settings: Settings, keys: Keys, tmp_path: Path
) -> None:
    path = _big_csv(tmp_path, 25_000)
    with path.open("a") as f:
        f.write("nope,x\n")
    opts = LaunchOptions(name="strict", template_id="tpl-1", strict=True)
    report = await launch_file(redis_client, settings, path, opts, layout="rows")
    assert report.strict_refused and report.rejected_rows == 1 and report.valid == 25_000
    assert await Campaigns(redis_client, settings).spec("strict") is None
    assert await redis_client.exists(keys.campaign_rows("strict")) == 0
    ok = await launch_file(redis_client, settings, _big_csv(tmp_path, 25_000, "ok.csv"), opts, layout="rows")
    assert (ok.strict_refused, ok.enqueued) == (False, 25_000)


async def test_progress_is_the_bytes_read_and_ends_at_the_file_size(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    path = _big_csv(tmp_path, 30_000)
    seen: list[tuple[int, int]] = []
    await launch_file(redis_client, settings, path, LaunchOptions(name="p", template_id="tpl-1"),
                      progress=lambda done, total: seen.append((done, total)), layout="rows")
    size = path.stat().st_size
    assert seen[0] == (0, size) and seen[-1] == (size, size) and len(seen) >= 4
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))


async def test_the_launcher_memory_does_not_grow_with_the_file(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    """Peak Python allocations (tracemalloc) of launching 40k and 160k rows: the same, give or take."""
    peaks = []
    for n in (40_000, 160_000):
        path = _big_csv(tmp_path, n, f"m{n}.csv")
        tracemalloc.start()
        try:
            report = await launch_file(redis_client, settings, path, LaunchOptions(name=f"m{n}", template_id="t"),
                                       layout="rows")
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert report.enqueued == n
    assert peaks[1] < peaks[0] * 1.3, peaks
    assert peaks[1] < 40 * 2**20, peaks


async def test_the_cli_launch_shows_a_progress_bar_of_bytes(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    path = _big_csv(tmp_path, 20_000)
    env = {**settings_env(settings), "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1"}  # rich draws on a pipe too
    code, out, err = await run_dialer("campaign", "launch", str(path), "--name", "cli", "--template-id", "t",
                                      "--progress", env=env)
    assert code == 0, err
    assert out.startswith("campaign cli: 20000 rows") and "enqueued 20000 new" in out  # the bar is not on stdout
    size = path.stat().st_size / 1000
    assert "launch" in err and f"{size:.1f}/{size:.1f} kB" in err  # rich's bar on stderr: bytes of the file
