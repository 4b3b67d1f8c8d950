"""A Redis password full of URL delimiters (``@ : / # %``), percent-encoded as URLs require, and an ACL
user: the CLI, a worker and ``dialer serve`` all log in (redis-py decodes the URL; nothing of ours parses
it by hand). A wrong password gives one line that does not show it."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis

from tests.helpers import RedisServer, Sim, run_dialer, settings_env
from worker.settings import Settings
from worker.store.client import api_client

pytestmark = pytest.mark.slow

PASSWORD = "p@ss:w/o#rd%41?x"
ADMIN_PASSWORD = "adm#n:p@ss/%"
USER = "dialer-app"


@pytest.fixture
async def acl_redis(tmp_path: Path) -> RedisServer:
    server = RedisServer(tmp_path, password=ADMIN_PASSWORD)  # requirepass: the default user needs a password
    server.start()
    admin = aioredis.Redis(port=server.port, password=ADMIN_PASSWORD)
    await admin.acl_setuser(USER, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], channels=["*"],
                            commands=["+@all"])
    await admin.aclose()
    yield server  # type: ignore[misc]
    server.stop()


def _url(server: RedisServer, user: str, password: str) -> str:
    return f"redis://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{server.port}/0"


@pytest.mark.parametrize(("user", "password"), [(USER, PASSWORD), ("", ADMIN_PASSWORD)])
async def test_an_acl_user_and_a_password_full_of_delimiters_work_for_cli_worker_and_serve(
    acl_redis: RedisServer, sim: Sim, sim_settings: Settings, user: str, password: str
) -> None:
    url = _url(acl_redis, user, password)
    assert "%40" in url and "%3A" in url and "%2F" in url and "%23" in url and "%25" in url
    env = {**settings_env(sim_settings), "DIALER_REDIS_URL": url}
    rc, out, err = await run_dialer("enqueue", "--called", "13800000001", "--voice-id", "100001", "--param", "x",
                                    "--id", "acl-1", env=env)
    assert rc == 0, err
    assert "acl-1\tnew" in out
    rc, _out, err = await run_dialer("worker", "--burst", env=env)
    assert rc == 0, err
    rc, out, err = await run_dialer("job", "acl-1", env=env)
    assert rc == 0, err
    assert json.loads(out)["state"] == "sent"
    # dialer serve's client
    redis = api_client(sim_settings.model_copy(update={"redis_url": url}))
    try:
        assert await redis.hget(f"{sim_settings.key_prefix}job:acl-1", "state") == b"sent"
    finally:
        await redis.aclose()


@pytest.mark.parametrize("command", [("job", "x"), ("worker",), ("worker", "--check"), ("campaign", "list"),
                                     ("enqueue", "--called", "13800000001", "--voice-id", "v")])
async def test_a_wrong_password_gives_one_line_without_the_password(
    acl_redis: RedisServer, settings: Settings, command: tuple[str, ...]
) -> None:
    wrong = "wr0ng@pa:ss/w#rd%"
    env = {**settings_env(settings), "DIALER_REDIS_URL": _url(acl_redis, USER, wrong)}
    rc, out, err = await run_dialer(*command, env=env, timeout=30)
    assert rc != 0, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    where = f"redis://{USER}:***@127.0.0.1:{acl_redis.port}/0 "
    assert lines[0].startswith(f"Error: Redis refused the login at {where}"), err
    for part in ("wr0ng", "pa:ss", "pa%3Ass", "ss/w", "ss%2Fw", "w#rd", "w%23rd", "rd%"):
        assert part not in err + out, (part, err)
