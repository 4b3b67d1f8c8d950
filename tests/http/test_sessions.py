"""Logout ends a dashboard session on the server (issue 14, item 14c): a copy of the cookie taken before
logout is refused afterwards, by the dashboard, its data and the API, on every replica sharing the Redis."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from worker.http import create_app
from worker.http.auth import COOKIE
from worker.settings import Settings

KEY = "session-test-api-key-0123456789"


async def test_logout_invalidates_the_session_server_side(settings: Settings, redis_client: aioredis.Redis) -> None:
    s = settings.model_copy(update={"api_keys": [SecretStr(KEY)]})
    replica = create_app(s, redis_client, open_provider=False)
    async with TestClient(TestServer(create_app(s, redis_client, open_provider=False))) as c, \
            TestClient(TestServer(replica)) as other:
        r = await c.post("/login", data={"key": KEY}, allow_redirects=False)
        assert r.status == 303
        value = r.cookies[COOKIE].value
        stolen = {"Cookie": f"{COOKIE}={value}"}
        assert (await other.get("/dashboard/data", headers=stolen)).status == 200
        r = await c.post("/logout", allow_redirects=False, headers=stolen)
        assert r.status == 303
        # The browser forgot the cookie; a copy of it (another tab, a proxy log, an attacker) is refused too.
        for client in (c, other):
            client.session.cookie_jar.clear()
            assert (await client.get("/dashboard/data", headers=stolen)).status == 401
            page = await client.get("/", headers=stolen)
            assert page.status == 401 and "<form" in await page.text()
            api = await client.post("/v1/calls", json={"called": "1"},
                                    headers={**stolen, "X-Requested-With": "dialer-dashboard"})
            assert api.status == 401
        # A new login works as before.
        r = await c.post("/login", data={"key": KEY}, allow_redirects=False)
        assert (await c.get("/dashboard/data")).status == 200
