"""Helpers shared by the test files: plain functions and classes, no fixtures (those live in conftest.py).

- ports and processes: :func:`free_port`, :class:`RedisServer`, :class:`Proc`, :func:`start_dialer`,
  :func:`run_dialer`, :func:`settings_env`;
- waiting: :func:`wait_until`;
- Redis and the ledger: :func:`server_ms`, :func:`enqueue_all`, :func:`enqueue`, :func:`load_records`,
  :func:`records`, :func:`snapshot`, :func:`published`;
- the simulator: :class:`Sim`, :func:`created`;
- a worker in this process: :func:`running`;
- campaigns: :func:`write_csv`, :func:`numbers_csv`, :func:`do_launch`;
- result callbacks: :func:`event`, :func:`serving`, :func:`post`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from worker.campaigns.launch import LaunchOptions, LaunchReport, launch_file
from worker.campaigns.outcomes import CALLBACK_PATH
from worker.dispatch.engine import open_pool
from worker.dispatch.process import DialerProcess
from worker.http import create_app
from worker.ledger.producer import Producer
from worker.ledger.record import JobRecord
from worker.settings import Settings
from worker.store.decode import as_dict
from worker.store.keys import Keys

# --- ports and processes ------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound once by us, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server child process; restartable on the same port and data dir (for outage tests)."""

    def __init__(self, workdir: Path, *extra: str, password: str | None = None, config: Path | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.exit("redis-server is not installed: run ./scripts/test, which installs it", returncode=2)
        self.exe = exe
        self.port = free_port()
        self.workdir = workdir
        self.extra = (*extra, "--requirepass", password) if password is not None else extra
        self.password = password
        self.config = config  # a config file read first (a Sentinel's, which it rewrites: writable)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, *([str(self.config)] if self.config else []),
             "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, password=self.password)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: the process dies at once, with whatever it had not written or replicated."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


class Proc:
    """A `dialer` subprocess started from async tests (the in-process simulator keeps serving)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def wait(self, timeout: float = 120) -> tuple[int, str, str]:
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        return int(self.proc.returncode or 0), out.decode(), err.decode()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def start_dialer(*args: str, env: dict[str, str] | None = None) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.cli", *args,
        env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    return Proc(proc)


async def run_dialer(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> tuple[int, str, str]:
    """Run `dialer ARGS` to completion; returns (exit code, stdout, stderr)."""
    return await (await start_dialer(*args, env=env)).wait(timeout)


def settings_env(settings: Settings) -> dict[str, str]:
    """The DIALER_* environment that reproduces ``settings`` in a subprocess."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        elif isinstance(value, list):
            # Comma-separated: every list setting reads that form (API keys, Sentinel addresses), not all JSON.
            value = ",".join(v.get_secret_value() if hasattr(v, "get_secret_value") else str(v) for v in value)
        env[f"DIALER_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


# --- waiting ------------------------------------------------------------------------------------------


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.05,
    what: str | Callable[[], str] = "condition",
) -> float:
    """Poll ``predicate`` every ``interval`` s until true; returns the seconds waited. AssertionError
    naming ``what`` (a string, or a function called then, e.g. to add a process log) after ``timeout``."""
    started = time.monotonic()
    while not await predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not met within {timeout:g} s: {what() if callable(what) else what}")
        await asyncio.sleep(interval)
    return time.monotonic() - started


# --- Redis and the ledger -----------------------------------------------------------------------------


async def server_ms(r: aioredis.Redis) -> int:
    """Redis's clock (TIME) in milliseconds."""
    sec, usec = await r.time()
    return int(sec) * 1000 + int(usec) // 1000


async def enqueue_all(redis: aioredis.Redis, settings: Settings, items: list[Any], **kw: Any) -> list[str]:
    """``Producer.enqueue_many`` that asserts every item was accepted; returns the job ids."""
    results = await Producer(redis, settings).enqueue_many(items, **kw)
    assert all(r.status == "accepted" for r in results), [r for r in results if r.status != "accepted"][:3]
    return [str(r.job_id) for r in results]


async def enqueue(settings: Settings, items: list[Any], **kw: Any) -> list[str]:
    """:func:`enqueue_all` through a pool of its own (as a separate producer would)."""
    pool = await open_pool(settings)
    try:
        return await enqueue_all(pool, settings, items, **kw)
    finally:
        await pool.aclose()


async def load_records(
    redis: aioredis.Redis, settings: Settings, job_ids: Iterable[str]
) -> dict[str, JobRecord | None]:
    """Every job's ledger record (None: no record), pipelined in chunks."""
    keys = Keys(settings.key_prefix)
    ids = list(job_ids)
    out: dict[str, JobRecord | None] = {}
    for start in range(0, len(ids), 2000):
        part = ids[start:start + 2000]
        async with redis.pipeline(transaction=False) as pipe:
            for j in part:
                pipe.hgetall(keys.job(j))
            raws = await pipe.execute()
        for j, raw in zip(part, raws, strict=True):
            out[j] = JobRecord.from_hash(j, as_dict(raw)) if raw else None
    return out


async def records(settings: Settings, job_ids: Iterable[str]) -> dict[str, JobRecord | None]:
    """:func:`load_records` through a client of its own."""
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        return await load_records(client, settings, job_ids)
    finally:
        await client.aclose()


async def snapshot(redis: aioredis.Redis) -> dict[bytes, Any]:
    """Every key with its type and content in a canonical order: equal snapshots mean Redis was not
    touched. (Not DUMP: a large hash's DUMP follows its hash table's order, which a mere read can
    change while the table is being rehashed.)"""
    keys = sorted(await redis.keys("*"))
    async with redis.pipeline(transaction=False) as pipe:
        for k in keys:
            pipe.type(k)
        types = [t.decode() for t in await pipe.execute()]
    async with redis.pipeline(transaction=False) as pipe:
        for k, kind in zip(keys, types, strict=True):
            if kind == "string":
                pipe.get(k)
            elif kind == "hash":
                pipe.hgetall(k)
            elif kind == "set":
                pipe.smembers(k)
            elif kind == "zset":
                pipe.zrange(k, 0, -1, withscores=True)
            elif kind == "list":
                pipe.lrange(k, 0, -1)
            else:
                pipe.dump(k)
        values = await pipe.execute()
    out: dict[bytes, Any] = {}
    for k, kind, v in zip(keys, types, values, strict=True):
        out[k] = (kind, sorted(v.items()) if kind == "hash" else sorted(v) if kind == "set" else v)
    return out


async def published(sub: Any, seconds: float = 1.0) -> list[bytes]:
    """The messages a redis-py PubSub received within ``seconds`` (subscribe confirmations left out)."""
    out: list[bytes] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        msg = await sub.get_message(ignore_subscribe_messages=True, timeout=left)
        if msg is not None and msg["type"] == "message":
            out.append(msg["data"])
    return out


# --- the simulator ------------------------------------------------------------------------------------


class Sim:
    """A running simulator (in this test's event loop) and helpers to read its request log."""

    def __init__(self, server: Any, url: str) -> None:
        self.server = server
        self.url = url

    async def log(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.get(self.url + "/_sim/log") as r:
            r.raise_for_status()
            data: dict[str, Any] = await r.json()
            return data

    async def requests(self) -> list[dict[str, Any]]:
        return list((await self.log())["requests"])

    async def configure(self, **patch: Any) -> None:
        async with aiohttp.ClientSession() as s, s.post(self.url + "/_sim/config", json=patch) as r:
            r.raise_for_status()


def created(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The simulator requests that created a call (``hang``: created, answer held back)."""
    return [r for r in requests if r["outcome"] in ("created", "hang")]


# --- a worker in this process -------------------------------------------------------------------------


@asynccontextmanager
async def running(settings: Settings, queues: list[int] | None = None) -> AsyncIterator[DialerProcess]:
    """A worker (``DialerProcess``) running in this event loop for the block; stopped after it."""
    proc = DialerProcess(settings, queues or list(range(1, 10)))
    task = asyncio.ensure_future(proc.run())
    try:
        yield proc
    finally:
        proc.stop()
        await asyncio.wait_for(task, 30)


# --- campaigns ----------------------------------------------------------------------------------------


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def numbers_csv(tmp_path: Path, n: int, name: str = "c.csv", prio: Any = None) -> Path:
    rows = [f"1380000{i:04d},{prio(i) if prio else 9},p{i}|x" for i in range(n)]
    return write_csv(tmp_path / name, "called,priority,templateParams", rows)


async def do_launch(redis: aioredis.Redis, settings: Settings, path: Path, **opts: Any) -> LaunchReport:
    opts.setdefault("name", "camp")
    opts.setdefault("template_id", "tpl-1")
    return await launch_file(redis, settings, path, LaunchOptions(**opts))


# --- result callbacks ---------------------------------------------------------------------------------


def event(serial: str, reason: str = "1", **extra: str) -> dict[str, str]:
    """A provider release event (unsigned) for the call ``serial``."""
    e = {"callSerialNo": serial, "called": "13800000000", "callerPresent": "",
         "createCallTime": "2025/01/01,10:00:00:000", "alertingTime": "", "talkingTime": "",
         "releaseTime": "2025/01/01,10:00:07:000", "talkDuration": "6",
         "releaseReason": reason, "recordfile": "", "locationId": "0", "timestamp": str(int(time.time() * 1000)),
         "nonce": "-1482421808053124529"}
    e.update(extra)
    return e


@asynccontextmanager
async def serving(settings: Settings, redis: aioredis.Redis) -> AsyncIterator[tuple[str, Settings]]:
    """``dialer serve``'s app on a free port, with DIALER_PUBLIC_URL pointing at it."""
    port = free_port()
    settings = settings.model_copy(update={"public_url": f"http://127.0.0.1:{port}", "http_port": port,
                                           "api_keys": [SecretStr("callbacks-test-api-key-0123")]})
    server = TestServer(create_app(settings, redis, open_provider=False), host="127.0.0.1", port=port)
    await server.start_server(access_log=None)
    try:
        yield str(server.make_url("")).rstrip("/"), settings
    finally:
        await server.close()


async def post(url: str, body: Any) -> tuple[int, Any]:
    """POST ``body`` to the result-callback route of the server at ``url``."""
    async with aiohttp.ClientSession() as s, s.post(url + CALLBACK_PATH, json=body) as r:
        return r.status, await r.json()
