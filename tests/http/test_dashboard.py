"""The dashboard in a real headless Chromium, driven over the DevTools protocol, against the live service.

Chromium is the Debian package ``chromium``; if it is missing the test installs it with apt-get (as root)
and skips, saying why, only if that fails. :class:`Browser` is a small CDP client (aiohttp websockets):
enough to open pages, run JavaScript, click, and take screenshots.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from worker.dispatch.stats import SendStats
from worker.errors import RetryableError
from worker.http import create_app
from worker.ledger.transitions import Ledger
from worker.metrics import error_kind
from worker.settings import Settings

pytestmark = pytest.mark.slow  # every test here starts a child process

KEY = "dashboard-test-api-key-0123456789"
DASH = "dashboard-test-view-key-0123456789"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1500", "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def _find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = _find_chromium()
    if exe is not None:
        return exe
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.skip("Chromium is not installed and cannot be installed here (needs apt-get as root): "
                    "run `apt-get install -y chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in ([apt, "install", "-y", "-qq", "chromium"], [apt, "update", "-qq"],
                [apt, "install", "-y", "-qq", "chromium"]):
        subprocess.run(cmd, env=env, capture_output=True, timeout=900, check=False)
        if cmd[1] == "install" and (exe := _find_chromium()) is not None:
            return exe
    pytest.skip("Chromium is not installed and `apt-get install -y chromium` failed")


class BrowserError(Exception):
    pass


class Page:
    """One tab, attached with a flat CDP session."""

    def __init__(self, browser: Browser, session_id: str) -> None:
        self.browser = browser
        self.session_id = session_id

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, session_id=self.session_id)

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    async def eval(self, expression: str) -> Any:
        reply = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                     "awaitPromise": True})
        if "exceptionDetails" in reply:
            raise BrowserError(json.dumps(reply["exceptionDetails"])[:2000])
        return reply["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.eval(expression)
            except BrowserError:
                value = None  # e.g. while a navigation replaces the document
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for: {expression}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> Path:
        reply = await self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(reply["data"]))
        return path


class Browser:
    """Headless Chromium with a DevTools websocket. ``errors`` collects page exceptions, console errors
    and CSP violations."""

    def __init__(self, exe: str, profile: Path) -> None:
        self.exe = exe
        self.profile = profile
        self.errors: list[str] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            self.exe, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self._proc.returncode is not None or time.monotonic() > deadline:
                raise BrowserError("Chromium did not open its DevTools port")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self._reader = asyncio.create_task(self._read())

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self._http is not None:
            await self._http.close()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            else:
                self._event(data.get("method", ""), data.get("params", {}))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(BrowserError("DevTools connection closed"))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            self.errors.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append("console: " + json.dumps(params.get("args", []))[:500])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            # A page answered 401 (the login form) is expected; anything else is not.
            if "401" not in entry.get("text", ""):
                self.errors.append("log: " + entry.get("text", "")[:500])

    async def send(self, method: str, params: dict[str, Any] | None = None, *,
                   session_id: str | None = None, timeout: float = 30) -> dict[str, Any]:
        assert self._ws is not None
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        await self._ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def new_page(self) -> Page:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        return page


@pytest.fixture
async def browser(chromium: str, tmp_path: Path) -> AsyncIterator[Browser]:
    b = Browser(chromium, tmp_path / "chromium-profile")
    await b.start()
    try:
        yield b
    finally:
        await b.close()


def call(called: str, priority: int, **extra: Any) -> dict[str, Any]:
    return {"called": called, "playList": [{"voiceId": "100001"}], "priority": str(priority), **extra}


QUEUE_DEPTHS_JS = """
Object.fromEntries([...document.querySelectorAll('#queue-rows tr')].map(
  tr => [tr.dataset.priority, [tr.querySelector('.ready').textContent, tr.querySelector('.depth').textContent]]))
"""


async def test_dashboard_in_chromium(
    browser: Browser, sim_settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    settings = sim_settings.model_copy(update={"api_keys": [SecretStr(KEY)], "dashboard_key": SecretStr(DASH),
                                               "rate_limit": 20.0})
    app = create_app(settings, redis_client)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log=None)
    base = str(server.make_url("")).rstrip("/")
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        async with aiohttp.ClientSession() as http:
            async def post(body: dict[str, Any], key: str | None = None) -> None:
                headers = {**auth, **({"Idempotency-Key": key} if key else {})}
                async with http.post(base + "/v1/calls", json=body, headers=headers) as r:
                    assert r.status == 202, await r.text()

            for i in range(3):
                await post(call(f"100{i}", 1))
            await post(call("5000", 5))
            await post(call("5001", 5, notBefore="2099-01-01T00:00:00Z"))
            for i in range(7):
                await post(call(f"900{i}", 9), key=f"p9-{i}")
            async with http.get(base + "/readyz") as r:  # fetches the fleet token from the simulator
                assert r.status == 200
        stats = SendStats(redis_client, settings)
        for _ in range(5):
            await stats.record(ok=True)
        for _ in range(2):
            await stats.record(ok=False, kind=error_kind(RetryableError("x", status=500)))
        await stats.flush()
        await Ledger(redis_client, settings).dead_letter(
            "p9-0", "gave up after 6 attempts: retryable createVoiceNotification failed (HTTP 500) http=500")

        page = await browser.new_page()
        await page.goto(base + "/?key=not-a-key")
        assert await page.wait_for("document.getElementById('login-error').textContent") == "Unknown key."
        # Log in with the read-only key through the form, as a person would.
        await page.eval(f"document.getElementById('key').value = {json.dumps(DASH)}; "
                        "document.querySelector('form').submit(); true")
        await page.wait_for("document.body && document.body.dataset.loaded === '1'")

        depths = await page.eval(QUEUE_DEPTHS_JS)
        assert depths["1"] == ["3", "3"] and depths["5"] == ["1", "2"] and depths["9"] == ["7", "7"]
        assert all(depths[str(p)] == ["0", "0"] for p in (2, 3, 4, 6, 7, 8))
        assert await page.eval("document.getElementById('queued-total').textContent") == "12"
        assert await page.eval("document.getElementById('role').textContent") == "viewer"
        assert await page.eval("document.getElementById('inflight-cap').textContent") == "50"
        assert await page.eval("document.getElementById('rate-limit').textContent") == "20"
        assert (await page.eval("document.getElementById('token-age').textContent")).endswith(" old")
        assert await page.eval("document.getElementById('dead-total').textContent") == "1"
        kinds = await page.eval("[...document.querySelectorAll('#dead-rows tr')].map(t => t.dataset.kind)")
        assert kinds == ["retryable/http-500"]
        await page.wait_for("!!document.querySelector('#error-rows tr[data-kind=\"retryable/http-500\"]')", 5)
        assert await page.eval("document.querySelectorAll('#rate-chart path').length") == 2
        assert await page.eval("!!document.querySelector('#rate-chart line.limit')")
        assert "No campaigns." in await page.eval("document.getElementById('campaigns').textContent")
        assert await page.eval("document.getElementById('status').textContent") == "live"

        # Live: new calls show up without reloading the page.
        async with aiohttp.ClientSession() as http:
            for i in range(2):
                async with http.post(base + "/v1/calls", json=call(f"101{i}", 1), headers=auth) as r:
                    assert r.status == 202
        await page.wait_for(f"({QUEUE_DEPTHS_JS})['1'][1] === '5'", 10)
        await page.wait_for("[...document.querySelectorAll('#rate-chart path.sent')].length === 1", 5)

        shot = await page.screenshot(tmp_path / "dashboard.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        print(f"dashboard screenshot: {shot}")
        assert not browser.errors, browser.errors
    finally:
        await server.close()


CAMPAIGN_COUNTS_JS = """
(name) => Object.fromEntries([...document.querySelectorAll(`.campaign[data-campaign="${name}"] .count`)].map(
  s => [s.dataset.key, s.querySelector('b').textContent]))
"""


def _campaign_js(name: str, tail: str) -> str:
    return f"document.querySelector('.campaign[data-campaign=\"{name}\"]{tail}')"


async def test_dashboard_campaign_rows_and_controls(
    browser: Browser, settings: Settings, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    from worker.campaigns.control import Campaigns

    settings = settings.model_copy(update={"api_keys": [SecretStr(KEY)], "dashboard_key": SecretStr(DASH),
                                           "rate_limit": 20.0})
    server = TestServer(create_app(settings, redis_client, open_provider=False), host="127.0.0.1")
    await server.start_server(access_log=None)
    base = str(server.make_url("")).rstrip("/")
    campaigns = Campaigns(redis_client, settings)
    try:
        async with aiohttp.ClientSession() as http:
            for name, n in (("spring", 6), ("small", 2)):
                rows = [{"called": f"1391{i:07d}"} for i in range(n)]
                async with http.post(base + "/v1/campaigns", json={"name": name, "templateId": "t", "rows": rows},
                                     headers={"Authorization": f"Bearer {KEY}"}) as r:
                    assert r.status == 201, await r.text()
        ledger = Ledger(redis_client, settings)
        for i, outcome in ((0, "answered"), (1, "unanswered")):
            job = f"spring:1391{i:07d}"
            assert await ledger.mark_sending(job)
            await ledger.mark_sent(job, f"SN-{i}")
            await ledger.record_outcome(job, outcome, "1" if outcome == "answered" else "4")

        # Read-only session: the counts, no controls, and 403 if it tries anyway.
        page = await browser.new_page()
        await page.goto(base + "/?key=" + DASH)
        await page.wait_for(_campaign_js("spring", "") + " !== null")
        counts = await page.eval(f"({CAMPAIGN_COUNTS_JS})('spring')")
        assert counts == {"queued": "4", "sent": "2", "answered": "1", "unanswered": "1", "failed_to_connect": "0",
                          "redials": "0"}, counts
        assert await page.eval(_campaign_js("spring", " .progress-text") + ".textContent") == "2 / 6 done (33%)"
        assert await page.eval("document.querySelectorAll('.campaign button').length") == 0
        assert "read-only" in await page.eval(_campaign_js("spring", "") + ".textContent")
        forbidden = await page.eval("fetch('/v1/campaigns/spring:pause', {method: 'POST', credentials: 'same-origin', "
                                    "headers: {'X-Requested-With': 'dialer-dashboard'}}).then(r => r.status)")
        assert forbidden == 403
        assert (await campaigns.status("spring"))["status"] == "active"
        browser.errors[:] = [e for e in browser.errors if "403" not in e]  # the refused fetch, on purpose

        # An API-key session: press pause.
        await page.goto(base + "/?key=" + KEY)
        await page.wait_for(_campaign_js("spring", " button[data-action=\"pause\"]") + " !== null")
        await page.eval(_campaign_js("spring", " button[data-action=\"pause\"]") + ".click(); true")

        async def paused() -> bool:
            return bool((await campaigns.status("spring"))["status"] == "paused")

        deadline = time.monotonic() + 10
        while not await paused():
            assert time.monotonic() < deadline, "pressing pause did not pause the campaign"
            await asyncio.sleep(0.1)
        await page.wait_for(_campaign_js("spring", "") + ".dataset.status === 'paused'")
        await page.wait_for(_campaign_js("spring", " button[data-action=\"resume\"]") + " !== null")

        # Cancel asks first; "No" changes nothing, "Yes, cancel" cancels.
        await page.eval(_campaign_js("small", " button[data-action=\"cancel\"]") + ".click(); true")
        await page.wait_for(_campaign_js("small", " .confirm-text") + " !== null")
        await page.eval(_campaign_js("small", " button[data-action=\"cancel-no\"]") + ".click(); true")
        await page.wait_for(_campaign_js("small", " button[data-action=\"cancel\"]") + " !== null")
        assert (await campaigns.status("small"))["status"] == "active"
        await page.eval(_campaign_js("small", " button[data-action=\"cancel\"]") + ".click(); true")
        await page.eval(_campaign_js("small", " button[data-action=\"cancel-yes\"]") + ".click(); true")
        await page.wait_for(_campaign_js("small", "") + ".dataset.status === 'cancelled'")
        status = await campaigns.status("small")
        assert status["status"] == "cancelled" and status["states"]["cancelled"] == 2
        await page.wait_for(f"({CAMPAIGN_COUNTS_JS})('small').cancelled === '2'")

        shot = await page.screenshot(tmp_path / "dashboard-campaigns.png")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"dashboard screenshot: {shot}")
        assert not browser.errors, browser.errors
    finally:
        await server.close()
