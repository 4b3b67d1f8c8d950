"""The job record and the retry budget are exact (issue 14, item 13): the attempts a record counts are
the attempts its error names, a requeued job starts without its old error, and no backoff or deferral
runs past ``DIALER_RETRY_MAX_TOTAL_S``."""

from __future__ import annotations

import time
from typing import Any

from tests.helpers import Sim, enqueue, free_port, records, running
from tests.helpers import wait_until as wait_for
from worker.ledger.producer import CallJob, Producer
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.settings import Settings


def body(called: str) -> dict[str, Any]:
    return {"called": called, "playList": [{"voiceId": "100001", "templateParams": ["a", "b"]}], "priority": "5"}


async def _state(settings: Settings, job_id: str) -> State | None:
    rec = (await records(settings, [job_id]))[job_id]
    return None if rec is None else rec.state


async def test_a_dead_jobs_record_counts_the_attempts_its_error_names(sim: Sim, sim_settings: Settings) -> None:
    settings = sim_settings.model_copy(update={"retry_max_attempts": 3})
    await sim.configure(fail_500_rate=1.0)
    [job_id] = await enqueue(settings, [CallJob(request=body("41000001"), job_id="count-3")])
    async with running(settings):
        await wait_for(lambda: _is(settings, job_id, State.DEAD), 20, what="the job to be dead-lettered")
    rec = (await records(settings, [job_id]))[job_id]
    assert rec is not None and rec.attempts == 3 and (rec.last_error or "").startswith("gave up after 3 attempts")
    assert len(await sim.requests()) == 3


async def test_no_attempt_is_counted_or_claimed_for_a_call_that_never_left(sim_settings: Settings) -> None:
    # The token endpoint cannot be reached: the old dispatcher counted each failed token fetch as an
    # attempt the ledger never saw, and dead-lettered the job "after 3 attempts" with attempts 0.
    settings = sim_settings.model_copy(update={
        "retry_max_attempts": 3, "token_url": f"http://127.0.0.1:{free_port()}/token"})
    [job_id] = await enqueue(settings, [CallJob(request=body("41000002"), job_id="never-left")])
    async with running(settings):
        await wait_for(lambda: _has_error(settings, job_id), 10, what="the token failure on the record")
        await _sleep(1.5)
    rec = (await records(settings, [job_id]))[job_id]
    assert rec is not None and rec.state == State.QUEUED, rec
    assert rec.attempts == 0
    assert (rec.last_error or "").startswith("no access token") and "gave up" not in (rec.last_error or "")


async def test_requeue_clears_the_old_last_error(settings: Settings, ledger: Ledger, producer: Producer) -> None:
    [job_id] = await enqueue(settings, [CallJob(request=body("41000003"), job_id="requeue-err")])
    assert await ledger.dead_letter(job_id, "gave up after 6 attempts: HTTP 500")
    assert await producer.requeue(job_id)
    rec = await ledger.get(job_id)
    assert rec is not None and rec.state == State.QUEUED and rec.attempts == 0
    assert rec.last_error is None


async def test_the_retry_budget_is_exact_when_the_backoff_is_long(sim: Sim, sim_settings: Settings) -> None:
    # Backoffs up to 60 s, deferred on the queue (not slept in the worker): the old dispatcher let a
    # 2-s budget run for one whole backoff past its end (8 s, 57 s, ~100 s).
    budget = 2.0
    settings = sim_settings.model_copy(update={
        "retry_max_attempts": 1000, "retry_max_total_s": budget, "retry_base_s": 60.0, "retry_max_backoff_s": 60.0,
        "retry_inprocess_max_s": 0.05})
    await sim.configure(fail_500_rate=1.0)
    [job_id] = await enqueue(settings, [CallJob(request=body("41000004"), job_id="budget-exact")])
    async with running(settings):
        await wait_for(lambda: _is(settings, job_id, State.DEAD), budget + 4, what="the job to be dead-lettered")
        dead_at = time.time()
    stamps = [r["ts"] for r in await sim.requests()]
    rec = (await records(settings, [job_id]))[job_id]
    assert rec is not None and rec.attempts == len(stamps) >= 1
    assert (rec.last_error or "").startswith(f"gave up after {rec.attempts} attempts")
    # Dead at the budget's end (plus the queue's poll and one request), not a backoff later.
    assert dead_at - stamps[0] < budget + 1.5
    assert stamps[-1] - stamps[0] <= budget + 0.5


async def _is(settings: Settings, job_id: str, state: State) -> bool:
    return await _state(settings, job_id) == state


async def _has_error(settings: Settings, job_id: str) -> bool:
    rec = (await records(settings, [job_id]))[job_id]
    return rec is not None and bool(rec.last_error)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
