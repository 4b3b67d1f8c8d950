"""A worker process and an absent Redis: one WARNING per outage (password masked), one when Redis is
back, retries for ever, and SIGTERM obeyed at any moment (waiting at start-up, or mid-outage)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import Proc, RedisServer, settings_env, start_dialer, wait_until
from worker.settings import Settings

pytestmark = pytest.mark.slow

UNREACHABLE = "Redis is not reachable at"
BACK = "Redis is reachable again at"


class Stderr:
    """The lines a subprocess writes to stderr, collected as they come."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.proc.proc.stderr is not None
        while line := await self.proc.proc.stderr.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def wait_for(self, text: str, n: int = 1, timeout: float = 15) -> None:
        async def seen() -> bool:
            return self.count(text) >= n
        await wait_until(seen, timeout, what=lambda: f"{n}x {text!r} in the worker's log:\n" + "\n".join(self.lines))

    async def stop(self, timeout: float) -> tuple[int, float]:
        """SIGTERM; the exit code and the seconds it took."""
        started = time.monotonic()
        self.proc.proc.send_signal(signal.SIGTERM)
        try:
            rc = await asyncio.wait_for(self.proc.proc.wait(), timeout)
        finally:
            self.proc.kill()
        await self.task
        return rc, time.monotonic() - started


def _password_url(server: RedisServer) -> str:
    return f"redis://default:s3cr%40t@127.0.0.1:{server.port}/0"


async def test_a_worker_waiting_for_redis_at_start_up_warns_once_and_obeys_sigterm(
    settings: Settings, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path)  # never started: nothing listens on its port
    env = {**settings_env(settings), "DIALER_REDIS_URL": _password_url(server)}
    log = Stderr(await start_dialer("worker", env=env))
    await log.wait_for(UNREACHABLE)
    await asyncio.sleep(3)  # retrying meanwhile, quietly
    rc, took = await log.stop(timeout=10)
    assert rc == 0, log.lines
    assert took < 5, took
    assert log.count(UNREACHABLE) == 1, log.lines
    line = next(x for x in log.lines if UNREACHABLE in x)
    assert "WARNING" in line and f"redis://default:***@127.0.0.1:{server.port}/0" in line
    assert "s3cr" not in "\n".join(log.lines)
    assert "Traceback" not in "\n".join(log.lines)


async def test_a_worker_logs_an_outage_once_survives_it_and_exits_promptly_during_one(
    settings: Settings, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path, password="s3cr@t")
    server.start()
    env = {**settings_env(settings), "DIALER_REDIS_URL": _password_url(server), "DIALER_POLL_DELAY_S": "0.05"}
    log = Stderr(await start_dialer("worker", env=env))
    try:
        await asyncio.sleep(2)  # up and polling
        server.stop()
        await log.wait_for(UNREACHABLE)
        await asyncio.sleep(4)  # nine queues polling, the wake-up subscription, stats: still one line
        assert log.count(UNREACHABLE) == 1, log.lines
        server.start()
        await log.wait_for(BACK)
        assert log.proc.proc.returncode is None, "worker exited during the outage"
        server.stop()  # a second outage: a second warning, then SIGTERM while Redis is away
        await log.wait_for(UNREACHABLE, n=2)
        rc, took = await log.stop(timeout=20)
    finally:
        log.proc.kill()
        server.stop()
    assert rc == 0, log.lines
    assert took < 10, took
    assert log.count(UNREACHABLE) == 2 and log.count(BACK) == 1, log.lines
    assert "s3cr" not in "\n".join(log.lines)
