"""`dialer serve` as a real process: refuses to run without keys, serves, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aiohttp
import pytest

from tests.helpers import free_port, run_dialer, settings_env, start_dialer
from worker.settings import Settings

pytestmark = pytest.mark.slow  # every test here starts a child process

KEY = "serve-test-api-key-0123456789"


async def test_refuses_to_start_without_api_keys(settings: Settings) -> None:
    env = {**settings_env(settings), "DIALER_API_KEYS": ""}
    code, _, err = await run_dialer("serve", env=env, timeout=30)
    assert code == 2 and "DIALER_API_KEYS" in err and "--insecure-no-auth" in err
    code, _, err = await run_dialer("serve", "--insecure-no-auth", env={**env, "DIALER_API_KEYS": KEY}, timeout=30)
    assert code == 2 and "contradicts" in err
    code, _, err = await run_dialer("serve", env={**env, "DIALER_API_KEYS": "short"}, timeout=30)
    assert code == 1 and "DIALER_API_KEYS" in err and "16" in err


async def _get_json(url: str, headers: dict[str, str] | None = None, timeout: float = 20) -> tuple[int, object]:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url, headers=headers) as r:
                    return r.status, await r.json()
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def test_serves_and_stops_on_sigterm(settings: Settings) -> None:
    port = free_port()
    env = {**settings_env(settings), "DIALER_API_KEYS": f"{KEY},other-key-0123456789abc",
           "DIALER_LOG_FORMAT": "json"}
    proc = await start_dialer("serve", "--port", str(port), env=env)
    try:
        assert await _get_json(f"http://127.0.0.1:{port}/healthz") == (200, {"status": "ok"})
        status, _ = await _get_json(f"http://127.0.0.1:{port}/v1/calls/x", {"Authorization": f"Bearer {KEY}"})
        assert status == 404
        status, _ = await _get_json(f"http://127.0.0.1:{port}/v1/calls/x")
        assert status == 401
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        code, _, err = await proc.wait(30)
    assert code == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(f"127.0.0.1:{port}" in x["msg"] for x in lines)
    assert any(x.get("route") == "/v1/calls/{job_id}" and x.get("status") == 401 for x in lines)
    assert KEY not in err


async def test_insecure_no_auth(settings: Settings) -> None:
    port = free_port()
    env = {**settings_env(settings), "DIALER_API_KEYS": ""}
    proc = await start_dialer("serve", "--insecure-no-auth", "--port", str(port), env=env)
    try:
        status, _ = await _get_json(f"http://127.0.0.1:{port}/v1/calls/x")
        assert status == 404  # no key needed
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        code, _, err = await proc.wait(30)
    assert code == 0 and "--insecure-no-auth" in err


async def test_insecure_no_auth_refuses_a_real_provider(settings: Settings) -> None:
    # Open to anyone who reaches the port, against a real provider: real calls by anybody.
    env = {**settings_env(settings), "DIALER_API_KEYS": ""}
    for real in ({"DIALER_API_BASE_URL": "https://cec.example.com:28090"},
                 {"DIALER_TOKEN_URL": "https://auth.example.com:28070/token"}):
        code, _, err = await run_dialer("serve", "--insecure-no-auth", "--port", str(free_port()),
                                        env={**env, **real}, timeout=30)
        assert code == 2 and "--insecure-no-auth is for the local simulator only" in err, err
        assert "example.com" in err and "DIALER_API_KEYS" in err
