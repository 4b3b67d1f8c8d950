"""The fleet-shared access token: one refresh across processes, in-process cache, margin, invalidation.

Each "process" is a ProviderClient + TokenManager with its own Redis connection and its own HTTP
session, all talking to the simulator over real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from worker.errors import RetryableError
from worker.provider.client import ProviderClient
from worker.provider.token import Token, TokenManager
from worker.sandbox.simulator import SIM_STATE
from worker.settings import TOKEN_PATH, Settings
from worker.store.keys import Keys

if TYPE_CHECKING:
    from conftest import Sim

MakeManager = Callable[..., Awaitable[TokenManager]]


@pytest.fixture
async def make_manager(sim_settings: Settings, redis_url: str) -> AsyncIterator[MakeManager]:
    """Build TokenManagers that share nothing but Redis and the simulator (like separate processes)."""
    async with AsyncExitStack() as stack:

        async def make(settings: Settings | None = None) -> TokenManager:
            redis = aioredis.Redis.from_url(redis_url)
            stack.push_async_callback(redis.aclose)
            client = await stack.enter_async_context(ProviderClient.open(settings or sim_settings, redis))
            assert client.tokens is not None
            return client.tokens

        yield make


def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix)


async def stored(redis: aioredis.Redis, settings: Settings) -> dict[str, object] | None:
    raw = await redis.get(keys(settings).token)
    return None if raw is None else json.loads(raw)


async def server_time(redis: aioredis.Redis) -> float:
    sec, usec = await redis.time()
    return float(sec) + float(usec) / 1e6


async def command_calls(redis: aioredis.Redis) -> int:
    """Commands Redis has run so far, not counting INFO itself."""
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


async def token_requests(sim: Sim) -> int:
    return int((await sim.log())["token_requests"])


# --- one refresh for the fleet ------------------------------------------------------------------------


async def gather_across(managers: list[TokenManager], per_manager: int) -> list[Token]:
    return list(await asyncio.gather(*(m.get() for m in managers for _ in range(per_manager))))


async def test_cold_start_20_callers_4_processes_one_fetch(
    make_manager: MakeManager, sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    managers = [await make_manager() for _ in range(4)]
    tokens = await gather_across(managers, 5)

    assert len({t.value.get_secret_value() for t in tokens}) == 1
    assert await token_requests(sim) == 1
    assert sum(m.refreshes for m in managers) == 1
    data = await stored(redis_client, sim_settings)
    assert data is not None and data["v"] == tokens[0].value.get_secret_value()
    assert await redis_client.exists(keys(sim_settings).token_lock) == 0


async def test_expired_token_in_redis_one_fetch(
    make_manager: MakeManager, sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    # An expired token left without a TTL (e.g. written by an older version) must not be used.
    now = await server_time(redis_client)
    await redis_client.set(
        keys(sim_settings).token, json.dumps({"v": "stale-token", "exp": now - 5, "at": now - 605})
    )
    managers = [await make_manager() for _ in range(4)]
    tokens = await gather_across(managers, 5)

    values = {t.value.get_secret_value() for t in tokens}
    assert len(values) == 1 and "stale-token" not in values
    assert await token_requests(sim) == 1


async def test_100_coroutines_one_process_one_redis_burst(
    make_manager: MakeManager, sim: Sim, redis_client: aioredis.Redis
) -> None:
    manager = await make_manager()
    before = await redis_client.info("commandstats")
    tokens = await asyncio.gather(*(manager.get() for _ in range(100)))
    after = await redis_client.info("commandstats")

    def calls(stats: dict[str, dict[str, int]], name: str) -> int:
        return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))

    assert len({t.value.get_secret_value() for t in tokens}) == 1
    assert manager.refreshes == 1 and await token_requests(sim) == 1
    # One get-or-lock script and one lock release (EVALSHA, plus a NOSCRIPT miss on first use);
    # SET counts the lock taken inside the script and the token stored.
    assert calls(after, "evalsha") - calls(before, "evalsha") <= 2 + 1
    assert calls(after, "set") - calls(before, "set") == 2


async def test_dead_lock_holder_is_taken_over(
    make_manager: MakeManager, sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    # A process took the lock and died: its lock expires and someone else refreshes.
    await redis_client.set(keys(sim_settings).token_lock, "dead-process", px=300)
    managers = [await make_manager() for _ in range(2)]
    tokens = await gather_across(managers, 3)
    assert len({t.value.get_secret_value() for t in tokens}) == 1
    assert await token_requests(sim) == 1


# --- in-process cache -----------------------------------------------------------------------------------


async def test_cached_token_needs_no_redis(
    make_manager: MakeManager, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    manager = await make_manager()
    first = await manager.get()

    before = await command_calls(redis_client)
    for _ in range(200):
        assert await manager.get() == first
    assert await command_calls(redis_client) == before

    # Even with the key gone, the process keeps its token until the margin.
    await redis_client.delete(keys(sim_settings).token)
    assert await manager.get() == first
    assert manager.refreshes == 1


async def wait_for_new_token(manager: TokenManager, old: Token, timeout: float = 3.0) -> Token:
    async with asyncio.timeout(timeout):
        while (token := await manager.get()) == old:
            await asyncio.sleep(0.01)
    return token


# --- lifetime and margin --------------------------------------------------------------------------------


async def test_margin_refreshes_early(
    make_manager: MakeManager, sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    # Lifetime 2 s, so the margin is capped at 1 s: after 1.1 s the token is still valid but is replaced.
    settings = sim_settings.model_copy(update={"token_lifetime_s": 2})
    manager = await make_manager(settings)
    first = await manager.get()
    assert first.lifetime_s == 2
    await asyncio.sleep(1.1)
    assert first.expires_at > await server_time(redis_client)

    # The still-valid token is served at once while one refresh runs in the background.
    assert await manager.get() == first
    second = await wait_for_new_token(manager, first)
    assert second.expires_at > first.expires_at
    assert manager.refreshes == 2 and await token_requests(sim) == 2


async def test_expires_is_honoured(
    make_manager: MakeManager, sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    # We ask for 600 s (X-Token-Expire); the provider grants 5 s and says so in Expires.
    sim.server.app[SIM_STATE].config.token_lifetime_s = 5
    manager = await make_manager()
    token = await manager.get()

    assert token.lifetime_s == 5
    ttl_ms = await redis_client.pttl(keys(sim_settings).token)
    assert 3000 < ttl_ms <= 5000
    data = await stored(redis_client, sim_settings)
    assert data is not None and data["exp"] == token.expires_at
    assert token.expires_at - await server_time(redis_client) <= 5


async def test_requested_lifetime_is_sent(make_manager: MakeManager, sim_settings: Settings) -> None:
    manager = await make_manager(sim_settings.model_copy(update={"token_lifetime_s": 7}))
    assert (await manager.get()).lifetime_s == 7


async def test_failed_refresh_keeps_valid_token_until_it_expires(
    make_manager: MakeManager, sim_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = sim_settings.model_copy(update={"token_lifetime_s": 2})
    good = await make_manager(settings)
    token = await good.get()
    await asyncio.sleep(1.85)  # inside the 0.2 s margin (a tenth of the 2 s life)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    down = settings.model_copy(update={"token_url": f"http://127.0.0.1:{dead_port}{TOKEN_PATH}"})
    broken = await make_manager(down)
    with caplog.at_level(logging.WARNING, logger="worker.provider.token"):
        assert await broken.get() == token
    assert broken.refreshes == 1
    assert any("refresh failed" in r.getMessage() for r in caplog.records)

    await asyncio.sleep(max(0.0, token.expires_at - token.obtained_at - 1.85) + 0.1)
    with pytest.raises(RetryableError):
        await broken.get()


# --- invalidation ---------------------------------------------------------------------------------------


async def test_stale_401_does_not_evict_fresh_token(
    make_manager: MakeManager, sim: Sim, sim_settings: Settings, redis_client: aioredis.Redis
) -> None:
    a, b, c = [await make_manager() for _ in range(3)]
    old = await a.get()

    await b.invalidate(old)  # b got a 401 for it
    assert await stored(redis_client, sim_settings) is None
    fresh = await b.get()
    assert fresh != old

    await a.invalidate(old)  # a's 401 for the same old token arrives late
    data = await stored(redis_client, sim_settings)
    assert data is not None and data["v"] == fresh.value.get_secret_value()
    assert await b.get() == fresh
    assert await a.get() == fresh  # a dropped its cached old token and read the fresh one
    assert await c.get() == fresh
    assert await token_requests(sim) == 2


async def test_invalidate_of_other_token_keeps_cache(make_manager: MakeManager) -> None:
    manager = await make_manager()
    current = await manager.get()
    await manager.invalidate(Token(value=SecretStr("something-else"), expires_at=0, obtained_at=0))
    assert await manager.get() == current
    assert manager.refreshes == 1
