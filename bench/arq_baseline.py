"""Vanilla arq workers, the baselines: run as ``python -m bench.arq_baseline KIND --redis-url URL ...``.

``noop``: a job that does nothing, arq's defaults everywhere (max_jobs 10, poll_delay 0.5, pickle,
results kept an hour). ``post``: a naive dialer, one aiohttp POST of the job's kwargs (the seed body)
to createVoiceNotification with a token fetched once at start-up; no ledger, no limits, no retries.
Its throughput settings are the ones named in issue 6 (``--max-jobs 100 --poll-delay 0.05``); without
them it runs with arq's defaults (the P7 baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

import aiohttp
from arq.connections import RedisSettings
from arq.worker import Worker, func

from bench._harness import APP_KEY, APP_SECRET, CREATE_PATH, TOKEN_PATH

NAIVE_MAX_JOBS = 100
NAIVE_POLL_DELAY_S = 0.05


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def call(ctx: dict[str, Any], **body: Any) -> str:
    session: aiohttp.ClientSession = ctx["session"]
    async with session.post(ctx["create_url"], json=body, headers=ctx["headers"]) as resp:
        data = await resp.json()
    if resp.status != 200 or data.get("retCode") != "0":
        raise RuntimeError(f"provider answered {resp.status} {data.get('retCode')}")
    return str(data["result"]["callSerialNo"])


async def _startup(ctx: dict[str, Any]) -> None:
    sim_url: str = ctx["sim_url"]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    ctx["session"] = session
    payload = {"app_key": APP_KEY, "app_secret": APP_SECRET}
    async with session.post(sim_url + TOKEN_PATH, json=payload, headers={"X-Token-Expire": "3600"}) as r:
        token = (await r.json())["AccessToken"]
    ctx["create_url"] = sim_url + CREATE_PATH
    ctx["headers"] = {"Authorization": f"Bearer {token}", "X-APP-Key": APP_KEY}


async def _shutdown(ctx: dict[str, Any]) -> None:
    session = ctx.get("session")
    if session is not None:
        await session.close()


def build_worker(kind: str, redis_url: str, sim_url: str, *, burst: bool, max_jobs: int | None = None,
                 poll_delay: float | None = None) -> Worker:
    tuning: dict[str, Any] = {}
    if max_jobs is not None:
        tuning["max_jobs"] = max_jobs
    if poll_delay is not None:
        tuning["poll_delay"] = poll_delay
    if kind == "noop":
        return Worker(functions=[func(noop, name="noop")], redis_settings=RedisSettings.from_dsn(redis_url),
                      burst=burst, **tuning)
    if kind == "post":
        return Worker(functions=[func(call, name="call")], redis_settings=RedisSettings.from_dsn(redis_url),
                      burst=burst, on_startup=_startup, on_shutdown=_shutdown, ctx={"sim_url": sim_url}, **tuning)
    raise ValueError(f"kind: {kind!r} is not noop or post")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.arq_baseline")
    parser.add_argument("kind", choices=["noop", "post"])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--sim-url", default="http://127.0.0.1:8090")
    parser.add_argument("--burst", action="store_true")
    parser.add_argument("--max-jobs", type=int, default=None)
    parser.add_argument("--poll-delay", type=float, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    asyncio.set_event_loop(asyncio.new_event_loop())
    build_worker(args.kind, args.redis_url, args.sim_url, burst=args.burst, max_jobs=args.max_jobs,
                 poll_delay=args.poll_delay).run()


if __name__ == "__main__":
    main()
