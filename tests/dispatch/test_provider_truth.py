"""Issue 15, "provider truth", end to end: real workers (``DialerProcess``, two of them where the fleet matters)
on a real Redis against the simulator over HTTP.

- item 3: an answer that may be a call (200 without retCode, retCode "0" without callSerialNo) leaves the job
  ``unknown`` with any serial kept and indexed, and is not redialled even with DIALER_REDIAL_AMBIGUOUS=always
  when it carried a serial;
- item 4: the account refused (401 again with a fresh token): jobs wait queued, no attempt used, none
  dead-lettered, requests and tokenByAkSk calls bounded across two processes; sending resumes by itself;
- item 5: HTTP 500 retried up to DIALER_RETRY_MAX_ATTEMPTS, or failed at once, as DIALER_PROVIDER_HTTP_500 says.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from contextlib import AsyncExitStack
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.helpers import Sim, enqueue, records, running
from tests.helpers import wait_until as wait_for
from worker.ledger.producer import CallJob
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.settings import Settings


def body(called: str) -> dict[str, Any]:
    return {"called": called, "playList": [{"voiceId": "100001", "templateParams": ["a"]}], "priority": "4"}


async def _final(settings: Settings, ids: list[str]) -> bool:
    recs = await records(settings, ids)
    return all(r is not None and r.state not in (State.QUEUED, State.SENDING) for r in recs.values())


async def _all_sent(settings: Settings, ids: list[str]) -> bool:
    recs = await records(settings, ids)
    return all(r is not None and r.state == State.SENT for r in recs.values())


async def _counts(sim: Sim) -> tuple[int, int]:
    log = await sim.log()
    return len(log["requests"]), int(log["token_requests"])


# --- item 3 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("redial", ["never", "always"])
async def test_a_200_without_retcode_leaves_the_job_unknown_with_its_serial_never_redialled(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, redial: str
) -> None:
    """Before: the job `failed` (permanent), the serial thrown away; a call existed and rang."""
    settings = sim_settings.model_copy(update={"redial_ambiguous": redial, "retry_max_attempts": 3})
    await sim.configure(no_ret_code_rate=1.0)
    [job_id] = await enqueue(settings, [CallJob(request=body("43000001"), job_id="no-retcode")])
    async with running(settings):
        await wait_for(lambda: _final(settings, [job_id]), 10, what="the job to end")
    [entry] = await sim.requests()  # one request: the call very likely exists, so no redial, even "always"
    serial = entry["callSerialNo"]
    rec = (await records(settings, [job_id]))[job_id]
    assert rec is not None and rec.state == State.UNKNOWN, rec
    assert rec.call_serial_no == serial and rec.attempts == 1
    assert (rec.last_error or "").startswith("ambiguous") and f"serial={serial}" in (rec.last_error or "")
    # Indexed: the call's release event finds the job.
    assert await Ledger(redis_client, settings).job_for_serial(serial) == job_id


async def test_retcode_0_without_a_serial_is_unknown_not_failed(sim: Sim, sim_settings: Settings) -> None:
    await sim.configure(no_serial_rate=1.0)
    [job_id] = await enqueue(sim_settings, [CallJob(request=body("43000002"), job_id="no-serial")])
    async with running(sim_settings):
        await wait_for(lambda: _final(sim_settings, [job_id]), 10, what="the job to end")
    rec = (await records(sim_settings, [job_id]))[job_id]
    assert rec is not None and rec.state == State.UNKNOWN and rec.call_serial_no is None, rec
    assert len(await sim.requests()) == 1


async def test_with_redial_always_an_ambiguous_answer_without_serial_is_still_retried(
    sim: Sim, sim_settings: Settings
) -> None:
    """Pinned: DIALER_REDIAL_AMBIGUOUS=always means what it says when nothing proves the call exists."""
    settings = sim_settings.model_copy(update={"redial_ambiguous": "always", "retry_max_attempts": 3})
    await sim.configure(no_serial_rate=1.0)
    [job_id] = await enqueue(settings, [CallJob(request=body("43000003"), job_id="always-no-serial")])
    async with running(settings):
        await wait_for(lambda: _final(settings, [job_id]), 10, what="the job to end")
    rec = (await records(settings, [job_id]))[job_id]
    assert rec is not None and rec.state == State.DEAD and rec.attempts == 3, rec
    assert len(await sim.requests()) == 3


# --- item 5 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("reading", "state", "requests"), [("retry", State.DEAD, 3), ("permanent", State.FAILED, 1)])
async def test_http_500_retried_within_the_attempts_or_failed_at_once(
    sim: Sim, sim_settings: Settings, reading: str, state: State, requests: int
) -> None:
    settings = sim_settings.model_copy(update={"provider_http_500": reading, "retry_max_attempts": 3})
    await sim.configure(fail_500_rate=1.0)
    [job_id] = await enqueue(settings, [CallJob(request=body("43000005"), job_id=f"http500-{reading}")])
    async with running(settings):
        await wait_for(lambda: _final(settings, [job_id]), 15, what="the job to end")
        await asyncio.sleep(0.3)  # nothing more leaves
    rec = (await records(settings, [job_id]))[job_id]
    assert rec is not None and rec.state == state and rec.attempts == requests, rec
    assert len(await sim.requests()) == requests
    if reading == "permanent":
        assert "DIALER_PROVIDER_HTTP_500=permanent" in (rec.last_error or "")
    else:
        assert (rec.last_error or "").startswith("gave up after 3 attempts: retryable")


# --- item 4 ---------------------------------------------------------------------------------------------

JOBS = 30


async def test_the_account_refused_pauses_two_processes_burns_nothing_and_resumes(
    sim: Sim, sim_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: each job's attempt discarded the fresh token (a tokenByAkSk per job), counted the attempt, and
    after DIALER_RETRY_MAX_ATTEMPTS the job was dead-lettered "auth"."""
    settings = sim_settings.model_copy(update={
        "retry_max_attempts": 2, "retry_max_total_s": 1.0, "token_refused_retry_max_s": 0.5, "max_in_flight": 4})
    caplog.set_level(logging.INFO)
    await sim.configure(account_refused=True)
    ids = await enqueue(settings, [CallJob(request=body(f"4400{i:04d}"), job_id=f"acct-{i}") for i in range(JOBS)])
    async with AsyncExitStack() as stack:
        for _ in range(2):  # two worker processes' worth: each its own pool, token manager and client
            await stack.enter_async_context(running(settings))
        await wait_for(lambda: _refused_at_least(sim, 1), 10, interval=0.01, what="the first refusal")
        first = time.monotonic()
        await asyncio.sleep(4.0)  # eight pauses of 0.5 s, well past the jobs' retry budget of 1 s and 2 attempts
        creates, token_calls = await _counts(sim)
        pauses = math.ceil((time.monotonic() - first) / 0.5) + 1
        # Every job waits queued, no attempt used (read between two probes: a probe's job is `sending` for the
        # moment its request is out; a job dead-lettered or counted never comes back to this).
        await wait_for(lambda: _all_waiting(settings, ids), 5, interval=0.01, what="every job queued, attempts 0")
        recs = await records(settings, ids)
        assert all("account" in (r.last_error or "") for r in recs.values() if r is not None and r.last_error)
        # Bounded by the fleet, not by the jobs: the first burst by the in-flight cap (4 requests, each refused
        # twice at most), then at most one probe per process per pause (its request, one refresh, the re-send).
        # (Before: every job's every attempt sent 2 requests and fetched a token: 120 and 60 here, then dead.)
        assert creates <= 2 * 4 + pauses * 2 * 2, (creates, pauses)
        assert token_calls <= 2 + pauses * 2, (token_calls, pauses)
        assert all(r["outcome"] == "account_refused" for r in await sim.requests())

        await sim.configure(account_refused=False)
        await wait_for(lambda: _all_sent(settings, ids), 10, what="every job sent once the account is accepted")
    recs = await records(settings, ids)
    assert all(r is not None and r.attempts == 1 for r in recs.values()), recs
    created = [r for r in await sim.requests() if r["outcome"] == "created"]
    assert sorted(r["called"] for r in created) == sorted(f"4400{i:04d}" for i in range(JOBS))
    # Said once per process with the account's own words; per-job lines stay quiet.
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "may not be purchased" in r.getMessage()]
    assert 1 <= len(warnings) <= 2, warnings
    assert not any("DIALER_APP_SECRET" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert not [r for r in caplog.records if r.levelno >= logging.INFO and "acct-" in r.getMessage()
                and "deferred" in r.getMessage()]
    assert any("accepts requests again" in r.getMessage() for r in caplog.records)


async def _all_waiting(settings: Settings, ids: list[str]) -> bool:
    recs = await records(settings, ids)
    return all(r is not None and r.state == State.QUEUED and r.attempts == 0 for r in recs.values())


async def _refused_at_least(sim: Sim, n: int) -> bool:
    return sum(1 for r in await sim.requests() if r["outcome"] == "account_refused") >= n
