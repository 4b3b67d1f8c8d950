"""No secret (app secret, access token) in any log record, exception text or repr.

Runs a full life cycle at DEBUG: token fetch, call, 401 and refresh, then every kind of failure.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import aiohttp
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from worker.errors import ProviderError
from worker.models import CallRequest
from worker.provider.client import ProviderClient
from worker.sandbox.simulator import SIM_STATE
from worker.settings import TOKEN_PATH, Settings
from worker.store.keys import Keys

if TYPE_CHECKING:
    from conftest import Sim

REQUEST = CallRequest.model_validate({"called": "8899", "playList": [{"voiceId": "100001"}]})


def _exception_texts(exc: BaseException) -> list[str]:
    """str and repr of an exception and of every exception chained to it."""
    out: list[str] = []
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out += [str(e), repr(e), repr(e.args)]
        if isinstance(e, ProviderError):
            out.append(e.describe())
        todo += [e.__cause__, e.__context__]
    return out


async def test_no_secret_anywhere(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = sim_settings.app_secret.get_secret_value()
    token_key = Keys(sim_settings.key_prefix).token
    tokens: set[str] = set()
    errors: list[BaseException] = []
    objects: list[object] = [sim_settings]

    async def remember_token() -> None:
        raw = await redis_client.get(token_key)
        if raw is not None:
            tokens.add(json.loads(raw)["v"])
        tokens.update(sim.server.app[SIM_STATE].tokens)  # every token the simulator still honours

    async def revoke() -> None:
        await remember_token()
        async with aiohttp.ClientSession() as s, s.post(sim.url + "/_sim/revoke") as r:
            r.raise_for_status()

    async def expect_error(coro: Awaitable[object]) -> None:
        try:
            await coro
        except ProviderError as exc:
            errors.append(exc)
        else:
            raise AssertionError("expected a ProviderError")

    async with ProviderClient.open(sim_settings, redis_client) as client:
        assert client.tokens is not None
        objects += [client, client.tokens]
        await client.create_voice_notification(REQUEST)  # fetch + call
        await remember_token()
        objects.append(await client.tokens.get())

        await revoke()
        await client.create_voice_notification(REQUEST)  # 401 -> refresh -> call
        await remember_token()

        await sim.configure(fail_500_rate=1.0)
        await expect_error(client.create_voice_notification(REQUEST))  # RetryableError, HTTP 500
        await sim.configure(fail_500_rate=0.0, hang_rate=1.0, hang_s=2.0)
        short = sim_settings.model_copy(update={"request_timeout_s": 0.3})
        async with ProviderClient.open(short, redis_client) as hanging:
            await expect_error(hanging.create_voice_notification(REQUEST))  # AmbiguousError
            await remember_token()
        await sim.configure(hang_rate=0.0)

        hook_calls = 0

        class RevokeEveryTime:
            async def open(self, *, resend: bool) -> None:
                nonlocal hook_calls
                hook_calls += 1
                await revoke()

            def refused(self) -> None:
                pass

        # AccountError: refused again even with a fresh token. It pauses the fleet (a key in Redis) until a
        # request is accepted again; ended here at once, so the clients below get to send.
        await expect_error(client.create_voice_notification(REQUEST, gate=RevokeEveryTime()))
        await remember_token()
        await redis_client.delete(Keys(sim_settings.key_prefix).account_refused)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = sim_settings.model_copy(
        update={"api_base_url": f"http://127.0.0.1:{port}", "token_url": sim.url + TOKEN_PATH}
    )
    async with ProviderClient.open(refused, redis_client) as client:
        await expect_error(client.create_voice_notification(REQUEST))  # RetryableError, connect refused
        await remember_token()
    await redis_client.delete(token_key)
    wrong = sim_settings.model_copy(update={"app_secret": SecretStr("wrong-" + secret)})
    async with ProviderClient.open(wrong, redis_client) as client:
        await expect_error(client.create_voice_notification(REQUEST))  # AuthError from tokenByAkSk
    objects.append(wrong)

    # The run did what it claims, so the checks below look at real tokens and errors.
    kinds = {type(e).__name__ for e in errors}
    assert kinds == {"AccountError", "AuthError", "AmbiguousError", "RetryableError"}
    # The two RetryableErrors: an HTTP 500 and a refused connection (no status).
    retryable = sorted(str(getattr(e, "status", None)) for e in errors if type(e).__name__ == "RetryableError")
    assert retryable == ["500", "None"]
    assert hook_calls == 2
    assert len(tokens) >= 3

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    texts = [formatter.format(r) for r in caplog.records]
    texts += [str(r.args) for r in caplog.records]
    for exc in errors:
        texts += _exception_texts(exc)
    for obj in objects:
        texts += [str(obj), repr(obj)]
    assert any("refreshed" in t for t in texts), "the refresh was logged"

    needles = [secret, *tokens]
    for text in texts:
        for needle in needles:
            assert needle not in text, f"secret leaked in: {text[:200]!r}"
        assert "Bearer " not in text
