"""Launch input rules (worker/campaigns/launch.py): row ids, derived ids, numbers."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis

from tests.helpers import do_launch, write_csv
from worker.ledger.transitions import Ledger
from worker.settings import Settings


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
