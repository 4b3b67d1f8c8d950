"""Authentication of ``dialer serve`` over real HTTP, for input the audit of issue 14 sent: a session cookie
whose time stamp is not made of ASCII digits is an unauthenticated request (401), never a 500."""

from __future__ import annotations

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.helpers import serving
from worker.http.auth import COOKIE
from worker.settings import Settings


@pytest.mark.parametrize(
    "stamp", ["²", "\u0661\u0667" + "\u0660" * 8, "1_700_000_000", " 1700000000", "+1700000000", ""]
)
async def test_a_session_cookie_with_a_non_ascii_number_is_401_not_500(
    settings: Settings, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture, stamp: str
) -> None:
    async with serving(settings, redis_client) as (url, _served), aiohttp.ClientSession() as s:
        for path in ("/dashboard/data", "/"):
            # aiohttp sends the header as UTF-8, as a browser (or an attacker) would.
            headers = {"Cookie": f"{COOKIE}={stamp}.x"}
            async with s.get(url + path, headers=headers, allow_redirects=False) as r:
                assert r.status == 401, (path, r.status, await r.text())
    assert "Traceback" not in caplog.text and "ERROR" not in caplog.text
