"""A wrong app secret (issue 14, item 12): one WARNING naming the likely cause, no per-job noise, the
fleet takes no jobs while tokenByAkSk refuses (jobs wait, none is burnt or dead-lettered), it asks again
with backoff, and resumes by itself once the credentials work; ``/readyz`` does not ask once per probe."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from tests.helpers import Sim, enqueue, records, running
from tests.helpers import wait_until as wait_for
from worker.http import create_app
from worker.ledger.producer import CallJob
from worker.ledger.states import State
from worker.settings import Settings

WRONG = "not-the-secret-at-all"


def body(called: str) -> dict[str, Any]:
    return {"called": called, "playList": [{"voiceId": "100001", "templateParams": ["a", "b"]}], "priority": "5"}


async def _token_requests(sim: Sim) -> int:
    return int((await sim.log())["token_requests"])


async def test_a_refused_app_secret_pauses_the_fleet_and_it_resumes_by_itself(
    sim: Sim, sim_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = sim_settings.model_copy(update={
        "retry_max_attempts": 3, "retry_max_total_s": 1.0, "token_refused_retry_max_s": 1.0})
    secret = settings.app_secret.get_secret_value()
    await sim.configure(app_secret=WRONG)  # the provider's secret changed: ours is now wrong
    ids = await enqueue(settings, [CallJob(request=body(f"4200000{i}"), job_id=f"wrong-{i}") for i in range(6)])
    caplog.set_level(logging.INFO)
    async with running(settings):
        await wait_for(lambda: _token_requests_at_least(sim, 2), 10, what="tokenByAkSk asked again")
        await asyncio.sleep(2.5)  # well past the retry budget and the attempts
        recs = await records(settings, ids)
        asked = await _token_requests(sim)
        assert all(r is not None and r.state == State.QUEUED and r.attempts == 0 for r in recs.values()), recs
        assert await sim.requests() == []  # no createVoiceNotification left while refused
        # Backoff 1 s (max 1 s) over ~3.5 s: a handful of calls fleet-wide, not one per job run.
        assert 2 <= asked <= 6, asked
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "DIALER_APP_SECRET" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        per_job = [r for r in caplog.records if r.levelno >= logging.INFO and "wrong-" in r.getMessage()]
        assert per_job == [], [r.getMessage() for r in per_job][:5]
        await sim.configure(app_secret=secret)  # the operator fixes it (here: the provider side)
        await wait_for(lambda: _all_sent(settings, ids), 10, what="every job sent once the credentials work")
    recs = await records(settings, ids)
    assert all(r is not None and r.attempts == 1 for r in recs.values())
    assert secret not in caplog.text and WRONG not in caplog.text
    assert any("taking jobs again" in r.getMessage() for r in caplog.records)


async def test_readyz_does_not_ask_tokenbyaksk_once_per_probe(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    await sim.configure(app_secret=WRONG)
    app = create_app(sim_settings, redis_client)
    async with TestClient(TestServer(app)) as client:
        for _ in range(30):
            r = await client.get("/readyz")
            assert r.status == 503
            data = await r.json()
            assert "tokenByAkSk" in data["checks"]["provider"], data
    assert await _token_requests(sim) <= 2


async def _token_requests_at_least(sim: Sim, n: int) -> bool:
    return await _token_requests(sim) >= n


async def _all_sent(settings: Settings, ids: list[str]) -> bool:
    recs = await records(settings, ids)
    return all(r is not None and r.state == State.SENT for r in recs.values())
