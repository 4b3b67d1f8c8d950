"""What the simulator's tests share (fixtures are in conftest.py): a client for one simulator, a callback
receiver, and a valid body with ways to change it."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from worker.sandbox.simulator import SIM_STATE, SimulatorState

TOKEN_PATH = "/apigovernance/api/oauth/tokenByAkSk"
CREATE_PATH = "/apiaccess/rest/voiceNotification/v2/createVoiceNotification"
VALID: dict[str, Any] = {
    "called": "8899",
    "playList": [{"voiceId": "100001", "templateParams": ["100", "200"]}],
    "playTimes": 1,
    "callerPresent": "2222201",
    "callBackUrl": "http://127.0.0.1:8800/callbackTest",
}


@dataclass
class Sim:
    server: TestServer
    session: aiohttp.ClientSession

    @property
    def state(self) -> SimulatorState:
        return self.server.app[SIM_STATE]

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def token(self, expire: str | None = None) -> str:
        headers = {} if expire is None else {"X-Token-Expire": expire}
        async with self.session.post(
            self.url(TOKEN_PATH), json={"app_key": "sim-app-key", "app_secret": "sim-app-secret"},
            headers=headers,
        ) as resp:
            assert resp.status == 200
            return str((await resp.json())["AccessToken"])

    async def call(
        self, body: Any, token: str | None, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> tuple[int, dict[str, Any]]:
        hdrs = {"X-APP-Key": "sim-app-key"}
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        hdrs.update(headers or {})
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with self.session.post(self.url(CREATE_PATH), headers=hdrs, **kwargs) as resp:
            return resp.status, await resp.json()

    async def post(self, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        async with self.session.post(self.url(path), json=body) as resp:
            return resp.status, await resp.json()

    async def log(self, **query: int) -> dict[str, Any]:
        async with self.session.get(self.url("/_sim/log"), params=query) as resp:
            assert resp.status == 200
            data: dict[str, Any] = await resp.json()
            return data


MakeSim = Callable[..., Awaitable[Sim]]
"""The ``make_sim`` fixture: ``await make_sim(**SimulatorConfig fields)`` starts one more simulator."""


@dataclass
class Receiver:
    """A callback endpoint on 127.0.0.1 that answers ``fail_first`` POSTs with 500, then 200."""

    fail_first: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    posts: int = 0
    server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.posts += 1
        if self.posts <= self.fail_first:
            return web.json_response({"retCode": "1"}, status=500)
        self.events.append(await request.json())
        return web.json_response({"retCode": "0", "retMsg": "success"})

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/cb"))

    async def wait_for(self, n: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < n:
            assert time.monotonic() < deadline, f"got {len(self.events)} callbacks, expected {n}"
            await asyncio.sleep(0.01)


def with_(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return body


def with_item(**changes: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"voiceId": "100001", "templateParams": ["100", "200"]}
    item.update(changes)
    return with_(playList=[{k: v for k, v in item.items() if v is not ...}])
