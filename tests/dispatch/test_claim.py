"""The worker's batched claim (engine.QueueWorker.start_jobs + dispatch/claim.lua) against a real Redis: one
script per poll claims due jobs, skips running and deferred ones, writes the arq job the producer no
longer writes, gives unused slots back, and still dead-letters poisoned queue entries."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from arq import Retry
from arq.connections import ArqRedis
from arq.worker import Worker, func

from tests.helpers import Sim
from worker.dispatch import engine
from worker.dispatch.engine import DIAL_FUNCTION, QueueWorker, open_pool
from worker.dispatch.process import DialerProcess
from worker.ledger.producer import Producer
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.settings import Settings
from worker.store.keys import Keys, in_progress_key_prefix, retry_key_prefix

QUEUE = 5


def body(called: str, priority: int = QUEUE) -> dict[str, Any]:
    return {"called": called, "playList": [{"voiceId": "100001"}], "priority": str(priority)}


class Runs:
    """A real arq job function that records each run: which job, by which worker, and its arq job as the
    run saw it (bytes and TTL)."""

    def __init__(self, hold_s: float = 0.0) -> None:
        self.hold_s = hold_s
        self.runs: list[tuple[str, str]] = []
        self.arq_jobs: dict[str, tuple[bytes | None, int]] = {}

    def function(self, name: str, pool: ArqRedis) -> Any:
        async def dial(ctx: dict[str, Any], *_a: Any, **_k: Any) -> None:
            job_id = ctx["job_id"]
            key = Keys("").arq_job(job_id)
            self.arq_jobs[job_id] = (await pool.get(key), await pool.pttl(key))
            self.runs.append((job_id, name))
            if self.hold_s:
                await asyncio.sleep(self.hold_s)

        return func(dial, name=DIAL_FUNCTION)


async def no_reject(job_id: str, reason: str) -> None:
    raise AssertionError(f"{job_id} rejected: {reason}")


@pytest.fixture
async def pools(settings: Settings) -> AsyncIterator[list[ArqRedis]]:
    made = [await open_pool(settings) for _ in range(2)]
    yield made
    for p in made:
        await p.aclose()


def make_worker(pool: ArqRedis, settings: Settings, runs: Runs, name: str = "w", *, max_jobs: int = 50,
                job_ttl_s: float = 3600, burst: bool = True) -> QueueWorker:
    return QueueWorker(
        functions=[runs.function(name, pool)], queue_name=Keys(settings.key_prefix).queue(QUEUE), redis_pool=pool,
        burst=burst, handle_signals=False, max_jobs=max_jobs, poll_delay=0.01, keep_result=0,
        job_serializer=engine.dumps, job_deserializer=engine.loads_job, log_results=False, job_ttl_s=job_ttl_s,
        reject=no_reject,
    )


async def enqueue(settings: Settings, client: aioredis.Redis, n: int, **kw: Any) -> list[str]:
    res = await Producer(client, settings).enqueue_many([body(f"8613{i:07d}") for i in range(n)], **kw)
    assert all(r.status == "accepted" for r in res)
    return [str(r.job_id) for r in res]


async def queue_ids(client: aioredis.Redis, settings: Settings) -> list[bytes]:
    return list(await client.zrange(Keys(settings.key_prefix).queue(QUEUE), 0, -1))


async def finish(w: QueueWorker) -> None:
    await asyncio.gather(*w.tasks.values())


def slots_free(w: QueueWorker) -> bool:
    """Every place under max_jobs is back: the counter and the semaphore arq keeps in step (arq sizes it
    max_jobs + 1)."""
    return w.job_counter == 0 and w.sem._value == w.max_jobs + 1  # arq keeps no public view


async def test_claim_writes_the_arq_job_and_the_job_runs(
    settings: Settings, redis_client: aioredis.Redis, pools: list[ArqRedis]
) -> None:
    [job_id] = await enqueue(settings, redis_client, 1)
    key = Keys("").arq_job(job_id)
    assert await redis_client.exists(key) == 0  # the producer writes none
    runs = Runs()
    w = make_worker(pools[0], settings, runs, job_ttl_s=600)
    t0 = int(time.time() * 1000)
    await w.start_jobs(await queue_ids(redis_client, settings))
    await finish(w)
    assert runs.runs == [(job_id, "w")]
    raw, ttl = runs.arq_jobs[job_id]
    # Byte for byte arq's JSON job as engine.dumps writes it, stamped with the claim time, living job_ttl_s.
    assert raw is not None and raw.startswith(engine.DIAL_JOB_HEAD)
    et = engine.loads(raw)["et"]
    assert t0 - 5 <= et <= int(time.time() * 1000) + 5
    assert raw == engine.dumps({"t": 1, "f": "dial", "a": [], "k": {}, "et": et})
    assert 590_000 < ttl <= 600_000
    # arq's own end of a run: the job left its queue, its arq keys are gone.
    assert await queue_ids(redis_client, settings) == []
    assert await redis_client.exists(key, in_progress_key_prefix + job_id, retry_key_prefix + job_id) == 0
    assert slots_free(w)


async def test_an_existing_arq_job_is_kept(
    settings: Settings, redis_client: aioredis.Redis, pools: list[ArqRedis]
) -> None:
    # A deferred job keeps the arq job of its first claim (and arq's try counter that goes with it).
    [job_id] = await enqueue(settings, redis_client, 1)
    mine = engine.dumps({"t": 1, "f": "dial", "a": [], "k": {}, "et": 123})
    await redis_client.set(Keys("").arq_job(job_id), mine, px=50_000)
    runs = Runs()
    w = make_worker(pools[0], settings, runs)
    await w.start_jobs(await queue_ids(redis_client, settings))
    await finish(w)
    raw, ttl = runs.arq_jobs[job_id]
    assert raw == mine and 0 < ttl <= 50_000


async def test_a_run_sees_its_try_count_and_a_deferral_moves_it_and_keeps_its_arq_job(
    settings: Settings, redis_client: aioredis.Redis, pools: list[ArqRedis]
) -> None:
    # The claim does what arq's run_job pipeline did (count the try), and the finish script what arq's
    # finish_job did: move a deferred job's score, and now also keep its arq job alive past the wait.
    [job_id] = await enqueue(settings, redis_client, 1)
    queue = Keys(settings.key_prefix).queue(QUEUE)
    seen: list[tuple[int, str]] = []

    async def dial(ctx: dict[str, Any], *_a: Any, **_k: Any) -> None:
        seen.append((ctx["job_try"], ctx["job_id"]))
        if len(seen) == 1:
            raise Retry(defer=30)

    w = QueueWorker(functions=[func(dial, name=DIAL_FUNCTION)], queue_name=queue, redis_pool=pools[0], burst=True,
                handle_signals=False, max_jobs=5, poll_delay=0.01, keep_result=0, job_serializer=engine.dumps,
                job_deserializer=engine.loads_job, log_results=False, job_ttl_s=600,
                reject=no_reject)
    before = int(time.time() * 1000)  # arq counts whole ms
    await w.start_jobs(await queue_ids(redis_client, settings))
    await finish(w)
    assert seen == [(1, job_id)] and slots_free(w)
    score = await redis_client.zscore(queue, job_id)
    assert score is not None and before + 30_000 <= score <= time.time() * 1000 + 30_001  # arq rounds
    assert 629_000 < await redis_client.pttl(Keys("").arq_job(job_id)) <= 630_000
    assert await redis_client.exists(in_progress_key_prefix + job_id) == 0
    assert await redis_client.get(retry_key_prefix + job_id) == b"1"
    await redis_client.zadd(queue, {job_id: int(time.time() * 1000) - 1})  # due again
    await w.start_jobs(await queue_ids(redis_client, settings))
    await finish(w)
    assert seen == [(1, job_id), (2, job_id)] and slots_free(w)
    assert await queue_ids(redis_client, settings) == []
    assert await redis_client.exists(Keys("").arq_job(job_id), in_progress_key_prefix + job_id,
                                     retry_key_prefix + job_id) == 0


async def test_a_cancelled_run_stays_queued_to_run_again(
    settings: Settings, redis_client: aioredis.Redis, pools: list[ArqRedis]
) -> None:
    [job_id] = await enqueue(settings, redis_client, 1)
    queue = Keys(settings.key_prefix).queue(QUEUE)
    score = await redis_client.zscore(queue, job_id)
    runs = Runs(hold_s=30)
    w = make_worker(pools[0], settings, runs)
    await w.start_jobs(await queue_ids(redis_client, settings))
    await asyncio.sleep(0.1)
    assert runs.runs == [(job_id, "w")] and await redis_client.exists(in_progress_key_prefix + job_id) == 1
    w.tasks[job_id].cancel()  # as a drain that ran out of time does
    await asyncio.gather(*w.tasks.values(), return_exceptions=True)
    await asyncio.sleep(0.05)  # the shielded finish outlives the cancelled task
    assert await redis_client.zscore(queue, job_id) == score  # same place, due now
    assert await redis_client.exists(in_progress_key_prefix + job_id) == 0
    assert await redis_client.exists(Keys("").arq_job(job_id)) == 1
    assert slots_free(w)


async def test_a_run_that_outlives_its_in_progress_key_is_not_started_again_by_its_own_worker(
    settings: Settings, redis_client: aioredis.Redis, pools: list[ArqRedis]
) -> None:
    # A run that lasts past its in-progress key's TTL (a cancellation's ledger write on a stalled Redis)
    # made the next poll of the same worker start it a second time, and the first run's end then
    # failed with a KeyError that killed the worker's poll loop (fault suite R1, under load).
    [job_id] = await enqueue(settings, redis_client, 1)
    runs = Runs(hold_s=0.5)
    w = make_worker(pools[0], settings, runs)
    await w.start_jobs(await queue_ids(redis_client, settings))
    await asyncio.sleep(0.1)
    await redis_client.delete(in_progress_key_prefix + job_id)  # as if its TTL ran out
    await w.start_jobs(await queue_ids(redis_client, settings))
    first = w.tasks[job_id]
    await finish(w)
    assert runs.runs == [(job_id, "w")]  # started once
    assert first.exception() is None and not w.job_tasks
    assert slots_free(w)


async def test_two_workers_racing_for_the_same_ids_never_both_run_one(
    settings: Settings, redis_client: aioredis.Redis, pools: list[ArqRedis]
) -> None:
    ids = await enqueue(settings, redis_client, 40)
    runs = Runs(hold_s=0.05)
    a = make_worker(pools[0], settings, runs, "a")
    b = make_worker(pools[1], settings, runs, "b")
    polled = await queue_ids(redis_client, settings)
    # Both saw the same ids in the same poll; each claim is one atomic script, so one of them gets each.
    await asyncio.gather(a.start_jobs(polled), b.start_jobs(list(reversed(polled))))
    await asyncio.gather(finish(a), finish(b))
    ran = Counter(job for job, _ in runs.runs)
    assert set(ran) == set(ids) and set(ran.values()) == {1}
    assert slots_free(a) and slots_free(b)

    # And two whole burst workers polling one queue (arq's loop, our claim): every job exactly once.
    ids = await enqueue(settings, redis_client, 300, campaign="race")
    runs = Runs(hold_s=0.01)
    a = make_worker(pools[0], settings, runs, "a", max_jobs=20)
    b = make_worker(pools[1], settings, runs, "b", max_jobs=20)
    await asyncio.wait_for(asyncio.gather(a.async_run(), b.async_run()), 60)
    ran = Counter(job for job, _ in runs.runs)
    assert set(ran) == set(ids) and set(ran.values()) == {1}, ran.most_common(3)
    assert {name for _, name in runs.runs} == {"a", "b"}  # both took part
    await a.close()
    await b.close()


async def test_deferred_and_running_jobs_are_not_claimed(
    settings: Settings, redis_client: aioredis.Redis, pools: list[ArqRedis]
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    [deferred] = await Producer(redis_client, settings).enqueue_many([body("861")], not_before=later)
    [running, due] = await enqueue(settings, redis_client, 2)
    await redis_client.set(in_progress_key_prefix + running, b"1", px=60_000)
    runs = Runs()
    w = make_worker(pools[0], settings, runs)
    # arq polls only due ids; the deferred one stands for a job re-scored into the future meanwhile.
    await w.start_jobs([str(deferred.job_id).encode(), running.encode(), due.encode()])
    await finish(w)
    assert runs.runs == [(due, "w")]
    assert await redis_client.exists(Keys("").arq_job(str(deferred.job_id)), Keys("").arq_job(running)) == 0
    assert await redis_client.exists(in_progress_key_prefix + str(deferred.job_id)) == 0
    assert 50_000 < await redis_client.pttl(in_progress_key_prefix + running) <= 60_000  # left alone
    assert slots_free(w)
    # Ids that are no longer queued (finished, cancelled) are skipped too.
    await w.start_jobs([due.encode(), b"never-enqueued"])
    assert all(t.done() for t in w.tasks.values()) and slots_free(w)
    await finish(w)
    assert len(runs.runs) == 1


async def test_claims_only_free_slots_in_queue_order_and_gives_the_rest_back(
    settings: Settings, redis_client: aioredis.Redis, pools: list[ArqRedis]
) -> None:
    await enqueue(settings, redis_client, 5)
    polled = await queue_ids(redis_client, settings)
    ids = [p.decode() for p in polled]  # queue order (one millisecond's jobs sort by id)
    runs = Runs(hold_s=0.2)
    w = make_worker(pools[0], settings, runs, max_jobs=3)
    await w.start_jobs(polled)
    assert list(w.tasks) == ids[:3] and w.job_counter == 3  # started in claim order
    assert await redis_client.exists(*[in_progress_key_prefix + j for j in ids[3:]]) == 0
    assert await redis_client.exists(*[Keys("").arq_job(j) for j in ids[3:]]) == 0
    await w.start_jobs(polled)  # full: nothing more starts, nothing is taken
    assert w.job_counter == 3
    await finish(w)
    assert slots_free(w)
    await w.start_jobs(await queue_ids(redis_client, settings))
    assert list(w.tasks)[3:] == ids[3:]
    await finish(w)
    assert sorted(j for j, _ in runs.runs) == sorted(ids) and len(runs.runs) == 5 and slots_free(w)


async def test_a_redis_error_mid_claim_gives_the_slots_back_and_the_next_poll_retries(
    settings: Settings, redis_client: aioredis.Redis, pools: list[ArqRedis]
) -> None:
    ids = await enqueue(settings, redis_client, 3)
    polled = await queue_ids(redis_client, settings)
    queue = Keys(settings.key_prefix).queue(QUEUE)
    members = await redis_client.zrange(queue, 0, -1, withscores=True)
    await redis_client.rename(queue, "elsewhere")
    await redis_client.set(queue, b"a string where the queue belongs")  # the claim script fails (WRONGTYPE)
    runs = Runs()
    w = make_worker(pools[0], settings, runs)
    await w.start_jobs(polled)
    assert runs.runs == [] and not w.tasks and slots_free(w)
    await redis_client.delete(queue)
    await redis_client.zadd(queue, dict(members))
    await w.start_jobs(polled)
    await finish(w)
    assert sorted(j for j, _ in runs.runs) == sorted(ids) and slots_free(w)


async def test_poisoned_queue_entries_are_dead_lettered_and_good_jobs_still_run(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    keys = Keys(sim_settings.key_prefix)
    now = int(time.time() * 1000)
    good = await enqueue(sim_settings, redis_client, 2)
    # No ledger record and no arq job: the claim writes the arq job, the run finds no record.
    await redis_client.zadd(keys.queue(QUEUE), {"bare": now})
    # Queue entries arq itself would crash on, and an arq job of the wrong type.
    await redis_client.zadd(keys.queue(QUEUE), {b"\xff\xfe not utf-8": now, "minus-infinity": float("-inf")})
    [hashed] = await enqueue(sim_settings, redis_client, 1, campaign="h")
    await redis_client.hset(keys.arq_job(hashed), "a hash", "where a string belongs")  # type: ignore[misc]
    [counted] = await enqueue(sim_settings, redis_client, 1, campaign="c")
    await redis_client.hset(retry_key_prefix + counted, "a hash", "where a counter belongs")  # type: ignore[misc]
    proc = DialerProcess(sim_settings, [QUEUE], burst=True)
    await asyncio.wait_for(proc.run(), 60)
    assert await redis_client.zcard(keys.queue(QUEUE)) == 0
    ledger = Ledger(redis_client, sim_settings)
    for job in good:
        rec = await ledger.get(job)
        assert rec is not None and rec.state == State.SENT
    reasons = {
        "bare": "no ledger record",
        "minus-infinity": "score is -inf",
        "\\xff\\xfe not utf-8": "not UTF-8",
        hashed: "corrupt (its arq job is not a string)",
        counted: "corrupt (its try counter is not an integer)",
    }
    for job, reason in reasons.items():
        state, err = await redis_client.hmget(keys.job(job), ["state", "err"])  # type: ignore[misc]
        assert state == b"dead" and reason in err.decode(), (job, state, err)
        assert await redis_client.zscore(keys.dead, job) is not None


async def test_a_plain_arq_worker_finds_no_arq_job_and_calls_nobody(
    settings: Settings, redis_client: aioredis.Redis, pools: list[ArqRedis], ledger: Ledger
) -> None:
    # What `arq some.WorkerSettings` would run against our queue: arq's own Worker, not QueueWorker. The
    # producer writes no arq job, so it finds nothing to run; the job stays queued in our ledger. (arq does
    # count it as a failed "job expired": it removes the id from the queue and writes arq:result:<id>.)
    [job_id] = await enqueue(settings, redis_client, 1)
    runs = Runs()
    plain = Worker(functions=[runs.function("plain", pools[0])], queue_name=Keys(settings.key_prefix).queue(QUEUE),
                   redis_pool=pools[0], burst=True, handle_signals=False, poll_delay=0.01)
    await plain.main()
    assert runs.runs == []  # the dial function was never called
    assert plain.jobs_complete == 0 and plain.jobs_retried == 0
    rec = await ledger.get(job_id)
    assert rec is not None and rec.state == State.QUEUED and rec.attempts == 0
