"""A run that outlives the job timeout (stuck on Redis through a network cut, fault R6) is put back on its
queue, not dropped: arq's drop left the ledger record `queued` or `sending` with nothing to finish it."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from tests.helpers import wait_until
from worker.dispatch import engine
from worker.ledger.producer import Producer
from worker.settings import Settings
from worker.store.keys import Keys

BODY = {"called": "+8613800000001", "playList": [{"voiceId": "100001"}], "priority": "5"}


async def test_a_run_stopped_at_the_job_timeout_runs_again(
    settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    s = settings.model_copy(update={"job_timeout_s": 6.5, "request_timeout_s": 0.5, "connect_timeout_s": 0.5})
    pool = await engine.open_pool(s)
    runs: list[str] = []

    async def run(job_id: str, order: float, malformed: str | None) -> str:
        runs.append(job_id)
        if len(runs) == 1:
            await asyncio.sleep(60)  # stuck: a Redis write that never answers
        return "sent"

    async def reject(job_id: str, reason: str) -> None:
        raise AssertionError(f"rejected {job_id}: {reason}")

    caplog.set_level(logging.WARNING, "worker.dispatch.engine")
    try:
        result = await Producer(pool, s).enqueue(BODY, job_id="stuck")
        worker = engine.queue_worker(s, pool, Keys(s.key_prefix).queue(5), run=run, reject=reject)
        task = asyncio.ensure_future(worker.async_run())

        async def twice() -> bool:
            return len(runs) >= 2

        try:
            await wait_until(twice, 30)
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        assert runs == [result.job_id, result.job_id]
        assert any("run stopped at the job timeout" in r.getMessage() for r in caplog.records)
        assert not any(r.levelno >= logging.ERROR for r in caplog.records)
    finally:
        await pool.aclose()
