"""Fixtures of the simulator's tests: simulators on 127.0.0.1 (``make_sim``, ``sim``) and a callback
``receiver``; the classes and bodies they use are in support.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.sandbox.support import MakeSim, Receiver, Sim
from worker.sandbox.simulator import SimulatorConfig, create_app


@pytest.fixture
async def make_sim() -> AsyncIterator[MakeSim]:
    servers: list[TestServer] = []
    session = aiohttp.ClientSession()

    async def make(**config: Any) -> Sim:
        server = TestServer(create_app(SimulatorConfig(**config)), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return Sim(server, session)

    yield make
    await session.close()
    for server in servers:
        await server.close()


@pytest.fixture
async def sim(make_sim: MakeSim) -> Sim:
    return await make_sim()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/cb", rec.handle)
    rec.server = TestServer(app, host="127.0.0.1")
    await rec.server.start_server()
    yield rec
    await rec.server.close()
