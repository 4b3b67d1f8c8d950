"""``dialer simulator``'s flags for the new behaviours: --ret-code CODE=RATE and --callback-signature-spaces."""

from __future__ import annotations

import aiohttp
import pytest

from tests.helpers import free_port, run_dialer, settings_env, start_dialer, wait_until
from worker.settings import Settings


async def test_flags_reach_the_simulators_config(settings: Settings) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**settings_env(settings), "DIALER_CALLBACK_SIGNATURE_SPACES": "keep"}
    proc = await start_dialer("simulator", "--port", str(port), "--ret-code", "16=0.25", "--ret-code", "3=0.5",
                              "--callback-signature-spaces", "strip", env=env)
    try:
        async def up() -> bool:
            try:
                async with aiohttp.ClientSession() as s, s.get(url + "/_sim/health") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                assert proc.proc.returncode is None, "the simulator exited"
                return False

        await wait_until(up, 30, 0.05, "simulator up")
        async with aiohttp.ClientSession() as s, s.post(url + "/_sim/config", json={}) as r:
            assert r.status == 200
            config = (await r.json())["config"]
    finally:
        proc.kill()
        await proc.wait(30)
    assert config["ret_code_rates"] == {"16": 0.25, "3": 0.5}
    assert config["callback_signature_spaces"] == "strip"  # the flag wins over the environment


async def test_spaces_default_to_the_setting(settings: Settings) -> None:
    port = free_port()
    env = {**settings_env(settings), "DIALER_CALLBACK_SIGNATURE_SPACES": "strip"}
    proc = await start_dialer("simulator", "--port", str(port), env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        async def config() -> bool:
            try:
                async with aiohttp.ClientSession() as s, s.post(url + "/_sim/config", json={}) as r:
                    return bool((await r.json())["config"]["callback_signature_spaces"] == "strip")
            except aiohttp.ClientError:
                assert proc.proc.returncode is None, "the simulator exited"
                return False

        await wait_until(config, 30, 0.05, "simulator up, signing with spaces stripped")
    finally:
        proc.kill()
        await proc.wait(30)


@pytest.mark.parametrize(("flags", "message"), [
    (["--ret-code", "16"], "CODE=RATE"),
    (["--ret-code", "16=x"], "CODE=RATE"),
    (["--ret-code", "16=1.5"], "CODE=RATE"),
    (["--ret-code", "16=0.1", "--ret-code", "16=0.2"], "given twice"),
    (["--ret-code", "2=0.1"], "ret_code_rates"),
    (["--ret-code", "3=0.6", "--ret-code", "16=0.6"], "add up to at most 1"),
    (["--callback-signature-spaces", "trim"], "keep"),
])
async def test_bad_flags_are_refused_in_one_message(settings: Settings, flags: list[str], message: str) -> None:
    code, out, err = await run_dialer("simulator", "--port", str(free_port()), *flags, env=settings_env(settings),
                                      timeout=60)
    assert code == 2, (out, err)
    assert message in err and "Traceback" not in err, err
