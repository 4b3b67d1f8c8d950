"""``dialer demo``: a whole local system in one command, against the built-in provider simulator.

Starts a private ``redis-server`` (unless ``DIALER_REDIS_URL`` is set), the simulator, and worker
processes; enqueues a campaign of generated numbers with mixed priorities; shows live progress;
prints the final tally reconciled with the simulator's request log; and cleans everything up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from worker.dispatch.ledger import FINAL_STATES, Ledger
from worker.dispatch.producer import CallJob, Producer
from worker.settings import Settings

_ENV_REDIS = "DIALER_REDIS_URL"


@dataclass(frozen=True)
class DemoOptions:
    calls: int = 2000
    workers: int = 2
    rate: float = 200.0
    latency_ms: float = 40.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _redis_server(workdir: str) -> Iterator[str]:
    """A throwaway redis-server, or the one DIALER_REDIS_URL names."""
    if os.environ.get(_ENV_REDIS):
        yield os.environ[_ENV_REDIS]
        return
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit(
            "dialer demo needs redis-server on PATH (Debian/Ubuntu: apt-get install redis-server), "
            "or DIALER_REDIS_URL pointing at a Redis you own. ./scripts/demo installs it for you."
        )
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _numbers(n: int) -> Iterator[CallJob]:
    rng = random.Random(7)
    for i in range(n):
        # Mostly routine traffic, a tenth urgent: enough to watch priority 1 overtake the backlog.
        priority = 1 if i % 10 == 0 else rng.choice((5, 9, 9, 9))
        yield CallJob(request={
            "called": f"1380{i:07d}",
            "playList": [{"templateId": "tpl-reminder", "templateParams": [f"{i}", "10:30"]}],
            "callerPresent": "4001234567",
            "priority": str(priority),
        })


async def _wait_http(url: str, wait_s: float = 15) -> None:
    deadline = time.monotonic() + wait_s
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not come up")
            await asyncio.sleep(0.1)


async def run_demo(base: Settings, options: DemoOptions) -> int:
    console = Console()
    with tempfile.TemporaryDirectory(prefix="dialer-demo-") as tmp, _redis_server(tmp) as redis_url:
        sim_port = _free_port()
        settings = base.model_copy(update={
            "redis_url": redis_url, "api_base_url": f"http://127.0.0.1:{sim_port}", "token_url": None,
            "rate_limit": options.rate,
        })
        env = {**os.environ, "DIALER_REDIS_URL": redis_url, "DIALER_API_BASE_URL": settings.api_base_url,
               "DIALER_RATE_LIMIT": str(options.rate), "DIALER_LOG_LEVEL": "WARNING"}
        env.pop("DIALER_TOKEN_URL", None)
        cmd = [sys.executable, "-m", "worker.cli"]
        children = [subprocess.Popen(
            [*cmd, "simulator", "--port", str(sim_port), "--latency-ms", str(options.latency_ms),
             "--jitter-ms", "40", "--fail-500-rate", "0.03"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )]
        try:
            await _wait_http(f"{settings.api_base_url}/_sim/health")
            children += [subprocess.Popen([*cmd, "worker"], env=env, stdin=subprocess.DEVNULL)
                         for _ in range(options.workers)]
            return await _drive(console, settings, options)
        finally:
            for child in children:
                child.terminate()
            for child in children:
                try:
                    child.wait(45)
                except subprocess.TimeoutExpired:
                    child.kill()


async def _drive(console: Console, settings: Settings, options: DemoOptions) -> int:
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        t0 = time.monotonic()
        results = await Producer(client, settings).enqueue_many(list(_numbers(options.calls)), campaign="demo")
        job_ids = [str(r.job_id) for r in results if r.status == "accepted"]
        console.print(f"enqueued {len(job_ids)} calls in {time.monotonic() - t0:.2f}s "
                      f"(campaign 'demo', {options.workers} workers, limit {options.rate:g}/s)")
        ledger = Ledger(client, settings)
        states: Counter[str] = Counter()
        columns = (TextColumn("[bold]calls"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.description}"))
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("", total=len(job_ids))
            while True:
                states = Counter(str(s) for s in await ledger.states(job_ids))
                done = sum(n for s, n in states.items() if s in FINAL_STATES)
                progress.update(task, completed=done, description=" ".join(f"{k}={v}" for k, v in
                                                                            sorted(states.items())))
                if done == len(job_ids):
                    break
                await asyncio.sleep(0.25)
        elapsed = time.monotonic() - t0
        async with aiohttp.ClientSession() as s, s.get(settings.api_base_url + "/_sim/log") as r:
            sim_log = await r.json()
        created = sum(1 for q in sim_log["requests"] if q["outcome"] == "created")
        console.print(f"final: {dict(sorted(states.items()))}")
        console.print(f"{len(job_ids)} calls in {elapsed:.1f}s ({len(job_ids) / elapsed:.0f}/s); simulator "
                      f"created {created} calls, answered {len(sim_log['requests']) - created} retryable "
                      f"errors; {sim_log['tokens_issued']} token(s) issued")
        ok = states.get("sent", 0) == created == len(job_ids)
        console.print("[green]reconciled: every job sent exactly once" if ok else "[red]NOT reconciled")
        return 0 if ok else 1
    finally:
        await client.aclose()
