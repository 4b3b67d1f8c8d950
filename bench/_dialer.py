"""Enqueue helpers for both sides (ours through the Producer, vanilla arq through ``enqueue_job``) and
reading throughput and latency out of the simulator's request log."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool

from bench._harness import Run
from worker.ledger.producer import Producer
from worker.settings import Settings, load_settings

_ARQ_ENQUEUE_CONCURRENCY = 50


def settings(run: Run, **overrides: Any) -> Settings:
    """Our settings for the bench process itself (no ``.env``; DIALER_* were cleared at start)."""
    return load_settings(redis_url=run.redis.url, api_base_url=run.sim.url, _env_file=None, **overrides)


async def enqueue_ours(run: Run, bodies: Sequence[dict[str, Any]]) -> None:
    results = await Producer(run.redis.client, settings(run)).enqueue_many(bodies)
    bad = [r for r in results if r.status != "accepted"]
    if bad:
        raise RuntimeError(f"{len(bad)} job(s) not accepted, e.g. {bad[0]}")


async def arq_pool(run: Run) -> ArqRedis:
    pool: ArqRedis = await create_pool(RedisSettings.from_dsn(run.redis.url))
    return pool


async def enqueue_arq(run: Run, function: str, kwargs_list: Sequence[dict[str, Any]]) -> None:
    """Fill an arq queue quickly (concurrent ``enqueue_job``); not the P4 baseline, which is a plain loop."""
    pool = await arq_pool(run)
    gate = asyncio.Semaphore(_ARQ_ENQUEUE_CONCURRENCY)

    async def one(kw: dict[str, Any]) -> None:
        async with gate:
            await pool.enqueue_job(function, **kw)

    try:
        await asyncio.gather(*(one(kw) for kw in kwargs_list))
    finally:
        await pool.aclose()


def created(log: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in log["requests"] if e["outcome"] == "created"]


def span_rate(entries: Sequence[dict[str, Any]]) -> float:
    """Calls/s from the first to the last request timestamp of the simulator: (n - 1) / span."""
    if len(entries) < 2:
        return float("nan")
    ts = sorted(float(e["ts"]) for e in entries)
    return (len(ts) - 1) / (ts[-1] - ts[0])
