"""Issue 15, "provider truth", at the client and the token manager, over real HTTP against the simulator:

- item 3: a 200 without retCode (even with a callSerialNo), or retCode "0" without a callSerialNo, may be a
  call: ambiguous, the serial kept;
- item 4: 401/403 again with a fresh token is the account (the seed's "service not purchased, account
  status"), not the token: the fleet pauses (in Redis), the token is kept, other processes stop at their
  first 401, a new token does not end the pause, an accepted request does;
- item 5: HTTP 500 is retryable or permanent as DIALER_PROVIDER_HTTP_500 says.

Each "process" is a ProviderClient + TokenManager with its own Redis connection and HTTP session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from worker.errors import AccountError, AmbiguousError, AuthError, PermanentError, RetryableError
from worker.models import CallRequest
from worker.provider.client import Accepted, ProviderClient
from worker.provider.token import TokenManager
from worker.settings import CREATE_PATH, TOKEN_PATH, Settings
from worker.store.keys import Keys

if TYPE_CHECKING:
    from conftest import Sim

REQUEST = CallRequest.model_validate({"called": "8899", "playList": [{"voiceId": "100001"}]})
MakeClient = Callable[..., Awaitable[ProviderClient]]


@pytest.fixture
async def make_client(sim_settings: Settings, redis_url: str) -> AsyncIterator[MakeClient]:
    """ProviderClients that share nothing but Redis and the simulator (like separate processes)."""
    async with AsyncExitStack() as stack:

        async def make(settings: Settings | None = None) -> ProviderClient:
            redis = aioredis.Redis.from_url(redis_url)
            stack.push_async_callback(redis.aclose)
            return await stack.enter_async_context(ProviderClient.open(settings or sim_settings, redis))

        yield make


def tokens(client: ProviderClient) -> TokenManager:
    assert client.tokens is not None
    return client.tokens


async def counts(sim: Sim) -> tuple[int, int]:
    """(createVoiceNotification requests, tokenByAkSk requests) the simulator has seen."""
    log = await sim.log()
    return len(log["requests"]), int(log["token_requests"])


async def stored_pause(redis: aioredis.Redis, settings: Settings) -> dict[str, Any] | None:
    raw = await redis.get(Keys(settings.key_prefix).account_refused)
    return None if raw is None else dict(json.loads(raw))


async def stored_token(redis: aioredis.Redis, settings: Settings) -> str | None:
    raw = await redis.get(Keys(settings.key_prefix).token)
    return None if raw is None else str(json.loads(raw)["v"])


# --- item 3: answers that may be a call -------------------------------------------------------------


async def test_a_200_without_retcode_is_ambiguous_and_keeps_its_serial(make_client: MakeClient, sim: Sim) -> None:
    """It was PermanentError ("retCode None"), the serial thrown away, the job `failed`: the call exists."""
    await sim.configure(no_ret_code_rate=1.0)
    client = await make_client()
    with pytest.raises(AmbiguousError) as info:
        await client.create_voice_notification(REQUEST)
    [entry] = await sim.requests()
    assert entry["outcome"] == "created" and entry["quirk"] == "no_retcode" and entry["callSerialNo"]
    error = info.value
    assert type(error) is AmbiguousError and error.kind == "ambiguous"
    assert error.call_serial_no == entry["callSerialNo"]
    assert (error.status, error.ret_code) == (200, None)
    assert error.describe().endswith(f"serial={entry['callSerialNo']}")


async def test_retcode_0_without_a_serial_is_ambiguous(make_client: MakeClient, sim: Sim) -> None:
    """It was PermanentError: the call exists (the simulator created it), only its serial is missing."""
    await sim.configure(no_serial_rate=1.0)
    client = await make_client()
    with pytest.raises(AmbiguousError) as info:
        await client.create_voice_notification(REQUEST)
    [entry] = await sim.requests()
    assert entry["outcome"] == "created" and entry["quirk"] == "no_serial"
    assert info.value.call_serial_no is None and info.value.ret_code == "0"
    assert "serial=" not in info.value.describe()


def test_ambiguous_error_takes_a_serial_by_keyword_only() -> None:
    assert AmbiguousError("x").call_serial_no is None
    e = AmbiguousError("no retCode", status=200, call_serial_no="SN-1")
    assert e.describe() == "ambiguous no retCode http=200 serial=SN-1"
    with pytest.raises(TypeError):
        AmbiguousError("x", None, None, None, "SN-1")  # type: ignore[misc]


# --- item 5: HTTP 500 as a setting ------------------------------------------------------------------


@pytest.mark.parametrize("reading", ["retry", "permanent"])
async def test_http_500_is_what_the_setting_says(
    make_client: MakeClient, sim: Sim, sim_settings: Settings, reading: str
) -> None:
    await sim.configure(fail_500_rate=1.0)
    client = await make_client(sim_settings.model_copy(update={"provider_http_500": reading}))
    with pytest.raises((RetryableError, PermanentError)) as info:
        await client.create_voice_notification(REQUEST)
    error = info.value
    assert error.status == 500 and len(await sim.requests()) == 1
    if reading == "retry":
        assert type(error) is RetryableError
    else:  # the seed: "Business failure. Check the values of parameters in the request."
        assert type(error) is PermanentError
        assert "DIALER_PROVIDER_HTTP_500=permanent" in str(error) and "parameters" in str(error)


@pytest.mark.parametrize(("status", "expected"), [(503, RetryableError), (429, RetryableError), (502, AmbiguousError)])
async def test_http_500_permanent_leaves_the_other_5xx_as_they_were(
    sim_settings: Settings, redis_client: aioredis.Redis, status: int, expected: type[Exception]
) -> None:
    async def token(_: web.Request) -> web.Response:
        return web.json_response({"AccessToken": "t", "Expires": "600"})

    async def create(_: web.Request) -> web.Response:
        return web.Response(status=status, body=b"")

    app = web.Application()
    app.router.add_post(TOKEN_PATH, token)
    app.router.add_post(CREATE_PATH, create)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        settings = sim_settings.model_copy(update={"api_base_url": str(server.make_url("")).rstrip("/"),
                                                   "provider_http_500": "permanent"})
        async with ProviderClient.open(settings, redis_client) as client:
            with pytest.raises(expected) as info:
                await client.create_voice_notification(REQUEST)
        assert type(info.value) is expected and info.value.status == status
    finally:
        await server.close()


# --- item 4: the account refused ---------------------------------------------------------------------


def account_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "may not be purchased" in r.getMessage()]


async def test_401_again_with_a_fresh_token_pauses_the_fleet_and_keeps_the_token(
    make_client: MakeClient, sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: AuthError, the fresh token discarded, and the next job did the same (a tokenByAkSk per job)."""
    caplog.set_level(logging.INFO)
    settings = sim_settings.model_copy(update={"token_refused_retry_max_s": 30.0})  # the first pause: 1 s
    a, b = await make_client(settings), await make_client(settings)
    for c in (a, b):  # both processes hold the fleet's token
        assert isinstance(await c.create_voice_notification(REQUEST), Accepted)
    assert await counts(sim) == (2, 1)
    await sim.configure(account_refused=True)

    with pytest.raises(AccountError) as info:
        await a.create_voice_notification(REQUEST)
    assert isinstance(info.value, AuthError) and info.value.kind == "account" and info.value.status == 401
    # One refresh-and-retry: 2 more requests, 1 more token; the fresh token stays in Redis for everyone.
    assert await counts(sim) == (4, 2)
    fresh = await stored_token(redis_client, settings)
    assert fresh is not None and fresh == (await tokens(a).get()).value.get_secret_value()
    pause = await stored_pause(redis_client, settings)
    assert pause is not None and pause["step"] == 1.0 and pause["status"] == 401
    assert 0 < tokens(a).pause_s() <= 1.0 and tokens(a).send_wait_s() > 0

    # The other process still sends with the token it had: its first 401 finds the pause in Redis, and it
    # neither discards a token, nor asks for one, nor re-sends.
    assert tokens(b).pause_s() == 0
    with pytest.raises(AccountError):
        await b.create_voice_notification(REQUEST)
    assert await counts(sim) == (5, 2)
    assert tokens(b).pause_s() > 0 and await stored_token(redis_client, settings) == fresh

    # While the pause lasts, nothing leaves either process.
    for c in (a, b, a, b):
        with pytest.raises(AccountError):
            await c.create_voice_notification(REQUEST)
    assert await counts(sim) == (5, 2)

    # Its own WARNING, once per process, naming the account (not the app key or secret).
    warnings = account_warnings(caplog)
    assert len(warnings) == 2, warnings
    assert all("DIALER_APP_KEY" not in w and "app key" not in w.lower() for w in warnings)


async def test_a_new_token_does_not_end_the_pause_an_accepted_request_does(
    make_client: MakeClient, sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    settings = sim_settings.model_copy(update={"token_refused_retry_max_s": 0.3})
    a, b = await make_client(settings), await make_client(settings)
    await sim.configure(account_refused=True)
    with pytest.raises(AccountError):
        await a.create_voice_notification(REQUEST)
    assert await counts(sim) == (2, 2)

    # A successful tokenByAkSk (b has no token yet) learns of the pause and does not end it.
    await tokens(b).get()
    assert await counts(sim) == (2, 2)  # the stored token is fine: no refresh at all
    assert tokens(b).pause_s() > 0
    t = await tokens(a).get()
    await tokens(a).invalidate(t)
    await tokens(a).get()  # a real refresh
    assert (await counts(sim))[1] == 3
    assert await stored_pause(redis_client, settings) is not None and tokens(a).pause_s() > 0

    await sim.configure(account_refused=False)
    await asyncio.sleep(0.35)  # the pause ends
    # One probe per process: the first job goes, the next waits for its answer.
    assert tokens(a).send_wait_s() == 0 and tokens(a).send_wait_s() > 0
    assert isinstance(await a.create_voice_notification(REQUEST), Accepted)
    assert await stored_pause(redis_client, settings) is None  # ended fleet-wide
    assert tokens(a).send_wait_s() == 0 and tokens(a).send_wait_s() == 0 and not tokens(a).account_known
    assert isinstance(await b.create_voice_notification(REQUEST), Accepted)
    assert tokens(b).send_wait_s() == 0 and not tokens(b).account_known
    assert any("accepts requests again" in r.getMessage() for r in caplog.records)


async def test_a_refused_probe_doubles_the_pause_up_to_the_limit(
    make_client: MakeClient, sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    settings = sim_settings.model_copy(update={"token_refused_retry_max_s": 2.0})
    a = await make_client(settings)
    await sim.configure(account_refused=True)
    steps = []
    for _ in range(3):
        await _wait_out(tokens(a))
        with pytest.raises(AccountError):
            await a.create_voice_notification(REQUEST)
        pause = await stored_pause(redis_client, settings)
        assert pause is not None
        steps.append(pause["step"])
    assert steps == [1.0, 2.0, 2.0]
    # Each refused probe: one request, one refresh, the re-send.
    assert await counts(sim) == (6, 4)


async def test_requests_refused_together_do_not_double_the_pause(
    make_client: MakeClient, sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    """Requests in flight when the account is refused are all answered 401 twice: one pause, not 2**n."""
    settings = sim_settings.model_copy(update={"token_refused_retry_max_s": 30.0})
    a, b = await make_client(settings), await make_client(settings)
    await a.create_voice_notification(REQUEST)
    await sim.configure(account_refused=True)
    results = await asyncio.gather(*(c.create_voice_notification(REQUEST) for c in (a, b) for _ in range(10)),
                                   return_exceptions=True)
    assert all(isinstance(r, AccountError) for r in results), results
    pause = await stored_pause(redis_client, settings)
    assert pause is not None and pause["step"] == 1.0
    # 20 first requests at most, and only those that left before any pause was known re-send.
    sent, token_calls = await counts(sim)
    assert sent - 1 <= 40 and token_calls <= 3, (sent, token_calls)


async def test_the_pause_costs_nothing_while_no_account_trouble_is_known(
    make_client: MakeClient, sim: Sim, redis_client: aioredis.Redis
) -> None:
    """The hot path: no Redis command for the account check per request (only a 401 or a refresh reads it)."""
    a = await make_client()
    await a.create_voice_notification(REQUEST)
    before = await _commands(redis_client)
    for _ in range(20):
        await a.create_voice_notification(REQUEST)
    assert await _commands(redis_client) == before
    assert not tokens(a).account_known and tokens(a).send_wait_s() == 0


async def _wait_out(manager: TokenManager) -> None:
    deadline = time.monotonic() + 5
    while manager.pause_s() > 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def _commands(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")
