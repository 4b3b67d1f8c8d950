"""ProviderClient against the simulator (and a tiny misbehaving server) over real HTTP."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from tests.helpers import free_port as closed_port
from worker.errors import (
    AmbiguousError,
    AuthError,
    PermanentError,
    ProviderError,
    RetryableError,
)
from worker.models import CallRequest, PlayItem
from worker.provider.client import Accepted, ProviderClient
from worker.provider.retry import backoff_ceiling, backoff_delay
from worker.settings import CREATE_PATH, TOKEN_PATH, Settings

if TYPE_CHECKING:
    from conftest import Sim

REQUEST = CallRequest.model_validate(
    {
        "called": "8899",
        "playList": [{"voiceId": "100001", "templateParams": ["100", "200"]}],
        "playTimes": 1,
        "callerPresent": "2222201",
        "priority": "3",
    }
)


async def revoke(sim: Sim) -> None:
    async with aiohttp.ClientSession() as s, s.post(sim.url + "/_sim/revoke") as r:
        r.raise_for_status()


@pytest.fixture
async def client(sim_settings: Settings, redis_client: aioredis.Redis) -> AsyncIterator[ProviderClient]:
    async with ProviderClient.open(sim_settings, redis_client) as c:
        yield c


class Counter:
    """A request gate that counts the requests it lets out and can run an action before the n-th one."""

    def __init__(self, actions: dict[int, Any] | None = None) -> None:
        self.calls = 0
        self.resends: list[bool] = []
        self.refusals = 0
        self.actions = actions or {}

    async def open(self, *, resend: bool) -> None:
        self.calls += 1
        self.resends.append(resend)
        action = self.actions.get(self.calls)
        if action is not None:
            await action()

    def refused(self) -> None:
        self.refusals += 1


# --- success and body -------------------------------------------------------------------------------


async def test_success_sends_exact_body_and_headers(client: ProviderClient, sim: Sim) -> None:
    hook = Counter()
    accepted = await client.create_voice_notification(REQUEST, gate=hook)

    log = await sim.log()
    [entry] = log["requests"]
    assert isinstance(accepted, Accepted)
    assert accepted.call_serial_no == entry["callSerialNo"]
    assert accepted.attempts == 1 and accepted.latency_s > 0
    assert accepted.ret_msg == "Created successfully."
    assert entry["body"] == REQUEST.body()
    assert entry["headers"] == {"X-APP-Key": "test-ak", "Authorization-ok": True}
    assert entry["priority"] == "3"
    assert hook.calls == 1
    assert log["token_requests"] == 1


async def test_session_and_token_are_reused(client: ProviderClient, sim: Sim) -> None:
    for _ in range(5):
        await client.create_voice_notification(REQUEST)
    log = await sim.log()
    assert len(log["requests"]) == 5 and log["token_requests"] == 1
    assert client.tokens is not None and client.tokens.refreshes == 1


async def test_callback_url_base64_mode(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    url = "http://127.0.0.1:8800/callback/job_1?x&y"
    request = REQUEST.model_copy(update={"call_back_url": url})
    await sim.configure(callback_url_base64=True)

    # Plain URL where the provider expects Base64: refused with retCode 9.
    async with ProviderClient.open(sim_settings, redis_client) as plain:
        with pytest.raises(PermanentError) as info:
            await plain.create_voice_notification(request)
    assert info.value.ret_code == "9"

    b64_settings = sim_settings.model_copy(update={"callback_url_base64": True})
    async with ProviderClient.open(b64_settings, redis_client) as b64:
        await b64.create_voice_notification(request)
    sent = (await sim.requests())[-1]["body"]["callBackUrl"]
    assert sent == base64.b64encode(url.encode()).decode()


async def test_callback_url_plain_by_default(client: ProviderClient, sim: Sim) -> None:
    url = "http://127.0.0.1:8800/callbackTest"
    await client.create_voice_notification(REQUEST.model_copy(update={"call_back_url": url}))
    assert (await sim.requests())[-1]["body"]["callBackUrl"] == url


# --- retryable ----------------------------------------------------------------------------------------


async def test_500_is_retryable_and_the_next_attempt_succeeds(client: ProviderClient, sim: Sim) -> None:
    # The dispatcher retries a RetryableError; the client itself sends each attempt once.
    await sim.configure(fail_500_rate=1.0)
    hook = Counter()
    with pytest.raises(RetryableError) as info:
        await client.create_voice_notification(REQUEST, gate=hook)
    assert not isinstance(info.value, AmbiguousError)
    assert info.value.status == 500 and info.value.ret_code == "500"
    assert "http=500" in info.value.describe()

    await sim.configure(fail_500_rate=0.0)
    accepted = await client.create_voice_notification(REQUEST, gate=hook)

    statuses = [r["status"] for r in await sim.requests()]
    assert statuses == [500, 200]
    assert accepted.attempts == 1 and hook.calls == 2


async def test_retcode_1_is_retryable(client: ProviderClient, sim: Sim) -> None:
    await sim.configure(retcode1_rate=1.0)
    with pytest.raises(RetryableError) as info:
        await client.create_voice_notification(REQUEST)
    assert not isinstance(info.value, AmbiguousError)
    assert info.value.status == 200 and info.value.ret_code == "1" and info.value.ret_msg
    assert len(await sim.requests()) == 1


async def test_connection_refused_is_retryable(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    settings = sim_settings.model_copy(
        update={"api_base_url": f"http://127.0.0.1:{closed_port()}", "token_url": sim.url + TOKEN_PATH}
    )
    hook = Counter()
    async with ProviderClient.open(settings, redis_client) as client:
        with pytest.raises(RetryableError) as info:
            await client.create_voice_notification(REQUEST, gate=hook)
        assert not isinstance(info.value, AmbiguousError)
        assert info.value.status is None
        assert hook.calls == 1
    assert (await sim.log())["token_requests"] == 1


async def test_pool_wait_timeout_is_retryable_not_ambiguous(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    # Fill every pooled connection with hanging requests, so ours times out before it is written.
    await sim.configure(hang_rate=1.0, hang_s=3.0)
    settings = sim_settings.model_copy(update={"max_in_flight": 1, "request_timeout_s": 0.5})
    async with ProviderClient.open(settings, redis_client) as client:
        assert client.tokens is not None
        token = await client.tokens.get()
        headers = {"Authorization": "Bearer " + token.value.get_secret_value(), "X-APP-Key": "test-ak"}
        session = client._session
        assert session.connector is not None
        limit = session.connector.limit

        async def hold() -> None:
            async with session.post(
                settings.create_url,
                json=REQUEST.body(),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=5),
            ) as resp:
                await resp.read()

        holders = [asyncio.create_task(hold()) for _ in range(limit)]
        while len(await sim.requests()) < limit:
            await asyncio.sleep(0.01)
        with pytest.raises(RetryableError) as info:
            await client.create_voice_notification(REQUEST)
        assert not isinstance(info.value, AmbiguousError)
        assert "not sent" in str(info.value)
        assert len(await sim.requests()) == limit
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)


# --- ambiguous ----------------------------------------------------------------------------------------


async def test_timeout_after_sending_is_ambiguous(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    await sim.configure(hang_rate=1.0, hang_s=3.0)
    settings = sim_settings.model_copy(update={"request_timeout_s": 0.5})
    async with ProviderClient.open(settings, redis_client) as client:
        with pytest.raises(AmbiguousError) as info:
            await client.create_voice_notification(REQUEST)
    assert not isinstance(info.value, RetryableError)
    assert info.value.status is None
    requests = await sim.requests()
    assert len(requests) == 1 and requests[0]["outcome"] == "hang"


# --- permanent ----------------------------------------------------------------------------------------


async def test_non_zero_retcode_is_permanent(client: ProviderClient, sim: Sim) -> None:
    # model_construct skips our validation so the provider's own check (retCode 12) is reached.
    bad = CallRequest.model_construct(called="8899", play_list=[PlayItem.model_construct()])
    with pytest.raises(PermanentError) as info:
        await client.create_voice_notification(bad)
    assert info.value.status == 200 and info.value.ret_code == "12"
    assert info.value.ret_msg and "voiceId" in info.value.ret_msg
    assert "retCode=12" in info.value.describe()
    assert len(await sim.requests()) == 1


async def test_http_400_is_permanent(client: ProviderClient, sim: Sim) -> None:
    bad = CallRequest.model_construct(called="8899", play_list=[PlayItem(voice_id="1")], priority="0")
    with pytest.raises(PermanentError) as info:
        await client.create_voice_notification(bad)
    assert info.value.status == 400
    assert len(await sim.requests()) == 1


# --- 401 / 403 ----------------------------------------------------------------------------------------


async def test_401_refreshes_token_once_and_succeeds(client: ProviderClient, sim: Sim) -> None:
    await client.create_voice_notification(REQUEST)
    await revoke(sim)
    hook = Counter()
    accepted = await client.create_voice_notification(REQUEST, gate=hook)

    log = await sim.log()
    assert [r["status"] for r in log["requests"]] == [200, 401, 200]
    assert log["requests"][-1]["callSerialNo"] == accepted.call_serial_no
    assert log["token_requests"] == 2
    assert hook.calls == 2 and hook.resends == [False, True]  # the gate knows the second is the re-send
    assert hook.refusals == 1  # told of the 401 before the wait for a fresh token
    assert accepted.attempts == 1


async def test_a_gate_that_refuses_sends_nothing_and_its_refusal_is_returned(
    client: ProviderClient, sim: Sim
) -> None:
    class Closed:
        async def open(self, *, resend: bool) -> str:
            return "window closed"

        def refused(self) -> None:
            raise AssertionError("no request was answered")

    assert await client.create_voice_notification(REQUEST, gate=Closed()) == "window closed"
    assert await sim.requests() == []


async def test_401_with_fresh_token_is_auth_error(client: ProviderClient, sim: Sim) -> None:
    async def revoke_now() -> None:
        await revoke(sim)

    hook = Counter({1: revoke_now, 2: revoke_now})
    with pytest.raises(AuthError) as info:
        await client.create_voice_notification(REQUEST, gate=hook)
    assert info.value.status == 401
    log = await sim.log()
    assert [r["status"] for r in log["requests"]] == [401, 401]
    assert log["token_requests"] == 2


async def test_token_refused_is_auth_error(
    sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    settings = sim_settings.model_copy(update={"app_secret": SecretStr("wrong")})
    async with ProviderClient.open(settings, redis_client) as client:
        with pytest.raises(AuthError) as info:
            await client.create_voice_notification(REQUEST)
    assert info.value.status == 401
    assert await sim.requests() == []


# --- classification of answers the simulator does not give ------------------------------------------


@pytest.fixture
async def odd_server() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """A provider that answers createVoiceNotification with whatever ``reply`` holds."""
    reply: dict[str, Any] = {"status": 200, "body": b"{}"}

    async def token(_: web.Request) -> web.Response:
        return web.json_response({"AccessToken": "odd-token", "Expires": "600"})

    async def create(_: web.Request) -> web.Response:
        return web.Response(status=reply["status"], body=reply["body"], content_type="application/json")

    app = web.Application()
    app.router.add_post(TOKEN_PATH, token)
    app.router.add_post(CREATE_PATH, create)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), reply
    await server.close()


@pytest.mark.parametrize(
    ("status", "body", "expected", "ret_code"),
    [
        (200, b"<html>oops", AmbiguousError, None),
        (200, b"[1, 2]", AmbiguousError, None),
        # Issue 15 item 3: "success" without its serial, or no retCode at all, may be a call: ambiguous.
        (200, b'{"retCode": "0", "retMsg": "ok"}', AmbiguousError, "0"),
        (200, b'{"retCode": "0", "result": {}}', AmbiguousError, "0"),
        (200, b'{"retCode": "0", "result": {"callSerialNo": ""}}', AmbiguousError, "0"),
        (200, b'{"retMsg": "Created successfully."}', AmbiguousError, None),
        (200, b'{"retCode": null, "result": {"callSerialNo": "77"}}', AmbiguousError, None),
        (200, b'{"retCode": "", "result": {"callSerialNo": "78"}}', AmbiguousError, None),
        (200, b'{}', AmbiguousError, None),
        (200, b'{"retCode": "5", "retMsg": "called invalid"}', PermanentError, "5"),
        (200, b'{"retCode": "3", "retMsg": "no serial"}', RetryableError, "3"),
        (200, b'{"retCode": 0, "result": {"callSerialNo": 42}}', None, None),
        (404, b"not found", PermanentError, None),
        (503, b"", RetryableError, None),
        (429, b"", RetryableError, None),
        (502, b"", AmbiguousError, None),
        (504, b"", AmbiguousError, None),
    ],
)
async def test_classification(
    odd_server: tuple[str, dict[str, Any]],
    settings: Settings,
    redis_client: aioredis.Redis,
    status: int,
    body: bytes,
    expected: type[ProviderError] | None,
    ret_code: str | None,
) -> None:
    url, reply = odd_server
    reply.update(status=status, body=body)
    async with ProviderClient.open(settings.model_copy(update={"api_base_url": url}), redis_client) as client:
        if expected is None:  # success, with the serial number sent as a JSON number
            accepted = await client.create_voice_notification(REQUEST)
            assert accepted.call_serial_no == "42"
            return
        with pytest.raises(expected) as info:
            await client.create_voice_notification(REQUEST)
    error = info.value
    assert type(error) is expected and isinstance(error, ProviderError)
    assert error.status == status
    assert error.ret_code == ret_code


async def test_token_lifetime_comes_from_expires(
    odd_server: tuple[str, dict[str, Any]], settings: Settings, redis_client: aioredis.Redis
) -> None:
    url, _ = odd_server
    async with ProviderClient.open(settings.model_copy(update={"api_base_url": url}), redis_client) as client:
        token = await client.fetch_token()
    assert token.value.get_secret_value() == "odd-token"
    assert token.expires_at - token.obtained_at == 600


# --- backoff ------------------------------------------------------------------------------------------


def test_backoff_full_jitter_bounds(settings: Settings) -> None:
    s = settings.model_copy(update={"retry_base_s": 0.5, "retry_max_backoff_s": 8.0})
    assert [backoff_ceiling(a, s) for a in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    for attempt in (1, 3, 6, 10_000):
        draws = [backoff_delay(attempt, s) for _ in range(2000)]
        ceiling = backoff_ceiling(attempt, s)
        assert all(0 <= d <= ceiling for d in draws)
        # Full jitter: draws spread over the whole range, not bunched at the top.
        assert min(draws) < ceiling * 0.05 and max(draws) > ceiling * 0.95
