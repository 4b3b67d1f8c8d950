"""R5: secrets and access. A whole system (simulator with 500s, 401s and signed result callbacks, two
workers, ``dialer serve``, the CLI) runs a small campaign and some API calls with distinctive secrets:
the app secret (SK), two API keys, the read-only dashboard key, the callback shared key, and every access
token the provider issued (read from the fleet's token in Redis as it changes).

Everything the system says is captured: stdout and stderr of every process (JSON and text logs, DEBUG),
every HTTP answer including errors, ``/metrics`` of the service and of each worker, the dashboard's
data, CLI output, Redis (outside the token's own key), and the ``repr``/``str`` of settings and clients.
None of the secrets may appear anywhere. The API refuses a missing or wrong key (401) and the read-only
key on write routes (403); the callback route refuses events whose signature does not verify.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from tests.faults.conftest import FULL, Procs, SimProcess, body, fault_settings, report
from tests.helpers import free_port, settings_env, snapshot, wait_until
from worker.ledger.states import FINAL_STATES
from worker.provider.client import ProviderClient
from worker.provider.signature import sign
from worker.sandbox.simulator import SimulatorConfig
from worker.settings import Settings, load_settings
from worker.store.keys import Keys

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(300 if FULL else 150)]

CALLS = 150 if FULL else 60


def _secret(kind: str) -> str:
    return f"R5-{kind}-{secrets.token_hex(12)}"


async def _collect(
    method: str, url: str, texts: list[str], *, expect: int | None = None, **kw: Any
) -> tuple[int, Any]:
    """One request; its status line, headers and body go into ``texts``."""
    async with aiohttp.ClientSession() as s, s.request(method, url, allow_redirects=False, **kw) as r:
        raw = await r.read()
        texts.append(f"{r.status} {dict(r.headers)} {raw.decode(errors='replace')}")
        if expect is not None:
            assert r.status == expect, (method, url, r.status, raw[:300])
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw.decode(errors="replace")


async def test_r5_no_secret_anywhere_and_the_api_enforces_keys_and_signatures(
    settings: Settings, redis_client: aioredis.Redis, procs: Procs, tmp_path: Path
) -> None:
    app_secret, api_key, api_key2, dash_key, cb_key = (
        _secret("app-secret"), _secret("api-key"), _secret("api-key-2"), _secret("dashboard-key"),
        _secret("callback-key"))
    serve_port = free_port()
    base = f"http://127.0.0.1:{serve_port}"
    s = fault_settings(
        settings, app_secret=SecretStr(app_secret), api_keys=[SecretStr(api_key), SecretStr(api_key2)],
        dashboard_key=SecretStr(dash_key), callback_shared_key=SecretStr(cb_key), http_port=serve_port,
        public_url=base, rate_limit=20.0, retry_base_s=0.1, retry_max_backoff_s=0.5, log_level="DEBUG",
    )
    sim = SimProcess(procs, settings_env(s))
    await sim.start({"fail_500_rate": 0.3, "latency_ms": 20.0, "jitter_ms": 60.0, "callbacks": True,
                     "callback_shared_key": cb_key, "ring_time_s": 0.3, "answer_rate": 0.5, "seed": 5})
    s = s.model_copy(update={"api_base_url": sim.url})
    env = settings_env(s)
    keys = Keys(s.key_prefix)
    tokens: set[str] = set()
    stop_watch = asyncio.Event()

    async def watch_tokens() -> None:
        while not stop_watch.is_set():
            raw = await redis_client.get(keys.token)
            if raw is not None:
                tokens.add(json.loads(raw)["v"])
            await asyncio.sleep(0.02)

    watcher = asyncio.ensure_future(watch_tokens())
    serve = await procs.start("serve", "serve", env={**env, "DIALER_LOG_FORMAT": "json"})
    workers = [
        await procs.start("worker-json", "worker", env={**env, "DIALER_LOG_FORMAT": "json",
                                                        "DIALER_METRICS_PORT": str(m1 := free_port())}),
        await procs.start("worker-text", "worker", env={**env, "DIALER_LOG_FORMAT": "text",
                                                        "DIALER_METRICS_PORT": str(m2 := free_port())}),
    ]
    texts: list[str] = []  # everything the system answered or printed, checked at the end

    async def serving() -> bool:
        try:
            return (await _collect("GET", base + "/healthz", texts))[0] == 200
        except aiohttp.ClientError:
            assert serve.alive, serve.output()
            return False

    await wait_until(serving, 30, 0.1, "dialer serve up")
    csv = tmp_path / "r5.csv"
    csv.write_text("called\n" + "".join(f"5{i:09d}\n" for i in range(CALLS)))
    launch = await procs.start("launch", "campaign", "launch", str(csv), "--name", "r5", "--voice-id", "100001",
                               "--json", "--no-progress", env=env)
    assert await launch.wait(60) == 0, launch.output()
    bearer = {"Authorization": f"Bearer {api_key}"}
    _, one = await _collect("POST", base + "/v1/calls", texts, expect=202,
                            headers={**bearer, "Idempotency-Key": "r5-one"},
                            json=body("5900000001", callBackUrl=base + "/v1/callbacks/release"))
    await _collect("POST", base + "/v1/calls:batch", texts, expect=200,
                   headers={"Authorization": f"Bearer {api_key2}"},
                   json={"items": [body("5900000002"), body("5900000003"), {"called": "x"}]})
    revocations = 0
    for _ in range(4):  # tokens revoked while calls go out: 401s, refreshes, new tokens to keep secret
        await asyncio.sleep(0.6)
        await sim.revoke()
        revocations += 1

    job_ids = [f"r5:5{i:09d}" for i in range(CALLS)] + ["r5-one"]

    async def all_final() -> bool:
        async with redis_client.pipeline(transaction=False) as pipe:
            for j in job_ids:
                pipe.hget(keys.job(j), "state")
            states = await pipe.execute()
        return all(st is not None and st.decode() in {str(x) for x in FINAL_STATES} for st in states)

    await wait_until(all_final, 120, 0.3, "every call final")

    async def outcomes_recorded() -> bool:
        status = await _collect("GET", base + "/v1/campaigns/r5", texts, headers=bearer)
        return bool(sum(status[1]["outcomes"].values()) >= 3)

    await wait_until(outcomes_recorded, 30, 0.5, "signed callbacks recorded")

    # --- access: keys -------------------------------------------------------------------------------
    dash = {"Authorization": f"Bearer {dash_key}"}
    checks: dict[str, int] = {}
    for name, method, path, headers, payload in [
        ("no key", "POST", "/v1/calls", {}, body("5900000009")),
        ("wrong key", "POST", "/v1/calls", {"Authorization": "Bearer " + _secret("not-a-key")}, body("5900000009")),
        ("wrong scheme", "POST", "/v1/calls", {"Authorization": f"Basic {api_key}"}, body("5900000009")),
        ("key as cookie without header", "POST", "/v1/calls", {"Cookie": f"dialer_session={api_key}"}, body("59")),
        ("no key, read", "GET", "/v1/calls/r5-one", {}, None),
        ("no key, dashboard data", "GET", "/dashboard/data", {}, None),
        ("no key, campaigns", "GET", "/v1/campaigns", {}, None),
    ]:
        checks[name], _ = await _collect(method, base + path, texts, headers=headers, json=payload)
        assert checks[name] == 401, (name, checks[name])
    for name, method, path, payload in [
        ("dashboard key: enqueue", "POST", "/v1/calls", body("5900000009")),
        ("dashboard key: batch", "POST", "/v1/calls:batch", {"items": [body("5900000009")]}),
        ("dashboard key: read a job", "GET", "/v1/calls/r5-one", None),
        ("dashboard key: launch", "POST", "/v1/campaigns", {"name": "r5-x", "rows": [{"called": "1"}]}),
        ("dashboard key: pause", "POST", "/v1/campaigns/r5:pause", None),
        ("dashboard key: cancel", "POST", "/v1/campaigns/r5:cancel", None),
    ]:
        checks[name], _ = await _collect(method, base + path, texts, headers=dash, json=payload)
        assert checks[name] == 403, (name, checks[name])
    checks["dashboard key: dashboard data"], dashboard = await _collect(
        "GET", base + "/dashboard/data", texts, expect=200, headers=dash)
    checks["second API key: read a job"], _ = await _collect("GET", base + "/v1/calls/r5-one", texts, expect=200,
                                                             headers={"Authorization": f"Bearer {api_key2}"})
    for path, ctype, data in [("/v1/calls", "application/json", b"{"), ("/v1/calls", "text/plain", b"{}"),
                              ("/v1/calls", "application/json", json.dumps({"called": "1"}).encode())]:
        await _collect("POST", base + path, texts, headers={**bearer, "Content-Type": ctype}, data=data)
    await _collect("GET", base + "/v1/calls/no-such-job", texts, expect=404, headers=bearer)
    await _collect("DELETE", base + "/v1/calls", texts, expect=405, headers=bearer)
    login_status, _ = await _collect("POST", base + "/login", texts, data={"key": dash_key})
    await _collect("POST", base + "/login", texts, data={"key": _secret("wrong-login")})

    # --- access: callback signatures ----------------------------------------------------------------
    serial = one["job"]["call_serial_no"] or (await redis_client.hget(keys.job("r5-one"), "serial") or b"").decode()  # type: ignore[misc]  # redis-py's union
    assert serial, "the API call was not sent"
    before = await redis_client.hget(keys.job("r5-one"), "outcome")  # type: ignore[misc]  # redis-py's union
    stamp, nonce = str(int(time.time() * 1000)), "12345"
    event = {"callSerialNo": serial, "called": "5900000001", "talkDuration": "0", "timestamp": stamp,
             "nonce": nonce}
    # A forged event would change the recorded outcome: answered <-> unanswered.
    forged = {**event, "releaseReason": "4" if before == b"answered" else "1"}
    other = {**event, "releaseReason": "6"}
    cb = base + "/v1/callbacks/release"
    for name, payload in [
        ("callback unsigned", forged),
        ("callback bad signature", {**forged, "signature": "AAAA" + "=" * 40}),
        ("callback signed with another key", {**forged, "signature": sign(forged, _secret("other"), stamp, nonce,
                                                                          "sha256")}),
        ("callback signature of another body", {**forged, "signature": sign(other, cb_key, stamp, nonce,
                                                                            "sha256")}),
        ("callback signed an hour ahead", {**forged, "timestamp": (ahead := str(int(stamp) + 3_600_000)),
                                           "signature": sign(forged, cb_key, ahead, nonce, "sha256")}),
    ]:
        checks[name], _ = await _collect("POST", cb, texts, json=payload)
        assert checks[name] == 401, (name, checks[name])
    assert await redis_client.hget(keys.job("r5-one"), "outcome") == before, "a refused callback was recorded"  # type: ignore[misc]  # redis-py's union
    checks["callback correctly signed"], _ = await _collect(
        "POST", cb, texts, expect=200, json={**forged, "signature": sign(forged, cb_key, stamp, nonce, "sha256")})
    after = await redis_client.hget(keys.job("r5-one"), "outcome")  # type: ignore[misc]  # redis-py's union
    if before is None:
        assert after is not None, "the signed callback was not recorded"
    else:  # accepted (200), but the call's first outcome stands: a signed, different one changes nothing
        assert after == before, "a later callback replaced the call's first outcome"

    # --- everything else that could show a secret ---------------------------------------------------
    for port in (m1, m2):
        texts.append((await _collect("GET", f"http://127.0.0.1:{port}/metrics", texts, expect=200))[1])
    metrics_text = (await _collect("GET", base + "/metrics", texts, expect=200))[1]
    await _collect("GET", base + "/readyz", texts)
    # Headers over aiohttp's 8 KB limit: refused with 400; the bytes it choked on (a key) must not be logged.
    # (The 400 body quotes them back to the client that sent them; not searched, it is not a log.)
    host, port = base.removeprefix("http://").split(":")
    for name, line in [("Authorization over 8 KB", f"Authorization: Bearer {api_key}"),
                       ("Cookie over 8 KB", f"Cookie: dialer_session={dash_key}")]:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET /v1/calls/r5-one HTTP/1.1\r\nHost: x\r\n{line}{'k' * 9000}\r\n\r\n".encode())
        await writer.drain()
        checks[name] = int((await reader.read(12)).split()[1])
        writer.close()
        assert checks[name] == 400, (name, checks[name])
    await _collect("GET", base + "/openapi.json", texts, expect=200)
    await _collect("GET", base + "/v1/campaigns/r5", texts, expect=200, headers=bearer)
    await _collect("GET", sim.url + "/_sim/log", texts, expect=200)
    for args in (["job", "r5-one"], ["dead-letter", "list", "--json"], ["campaign", "status", "r5", "--json"],
                 ["campaign", "list"], ["dead-letter", "list"]):
        cli = await procs.start("cli", *args, env=env)
        await cli.wait(60)
    in_process = load_settings(**{k.removeprefix("DIALER_").lower(): v for k, v in env.items()})
    async with ProviderClient.open(in_process, redis_client) as client:
        token = await client.tokens.get() if client.tokens else None
        if token is not None:
            tokens.add(token.value.get_secret_value())
        objects: list[Any] = [in_process, client, client.tokens, token, in_process.model_dump(),
                              in_process.model_dump_json(), SimulatorConfig(app_secret=app_secret,
                                                                           callback_shared_key=cb_key)]
    texts += [repr(o) for o in objects] + [str(o) for o in objects]
    stop_watch.set()
    await watcher
    sim_token_requests = (await sim.sync(), sim.token_requests)[1]
    for child in [serve, *workers]:
        await child.stop()
    await sim.stop()
    output = procs.output()
    texts.append(output)
    # Redis holds the token, in its key only (values read as such: DUMP would compress long strings).
    stored = repr([v for k, v in (await snapshot(redis_client)).items() if k != keys.token.encode()]).encode()
    needles = {"app secret": app_secret, "API key": api_key, "API key 2": api_key2, "dashboard key": dash_key,
               "callback key": cb_key, **{f"token {i}": t for i, t in enumerate(sorted(tokens))}}
    leaks = {name: sum(text.count(value) for text in texts) for name, value in needles.items()}
    stored_leaks = {name: stored.count(value.encode()) for name, value in needles.items()}
    json_lines = [line for line in output.splitlines() if line.startswith("{")]
    report("R5 secrets and access", {
        "secrets checked": f"app secret, 2 API keys, dashboard key, callback key, {len(tokens)} access tokens",
        "texts searched": len(texts),
        "characters of output searched": len(output),
        "JSON log lines / text lines": f"{len(json_lines)} / {len(output.splitlines()) - len(json_lines)}",
        "occurrences of any secret": sum(leaks.values()),
        "in Redis outside the token key": sum(stored_leaks.values()),
        "token revocations / tokenByAkSk calls": f"{revocations} / {sim_token_requests}",
        "tokens issued / seen in Redis": f"{sim.tokens_issued} / {len(tokens)}",
        "simulator callbacks delivered": sum(1 for c in sim.callbacks if c["status"] == 200),
        "access checks": checks,
        "dashboard login with the dashboard key": login_status,
    })

    assert len(tokens) >= 3, "the run must have refreshed the token after revocations"
    assert len(tokens) >= sim.tokens_issued, "a token was issued that the check did not see"
    assert "Bearer " + api_key not in output
    assert json_lines, "the JSON log format was not exercised"
    assert any("refreshed" in line for line in output.splitlines())
    assert not {k: v for k, v in leaks.items() if v}, f"secrets leaked: {leaks}"
    assert not {k: v for k, v in stored_leaks.items() if v}, f"secrets stored in Redis: {stored_leaks}"
    assert "Authorization" not in metrics_text and isinstance(dashboard, dict)


async def test_r5_dialer_serve_refuses_unsigned_callbacks_by_default(
    settings: Settings, redis_client: aioredis.Redis, procs: Procs
) -> None:
    """Issue 14 item 1: with no DIALER_CALLBACK_SHARED_KEY (the default) an unsigned release event used to
    be recorded (and an answered call turned unanswered and redialled). Now 401 unless the operator sets
    DIALER_CALLBACK_INSECURE_UNSIGNED=true, and `dialer serve` says why at start-up."""
    from worker.ledger.producer import Producer
    from worker.ledger.transitions import Ledger

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    s = fault_settings(settings, api_keys=[SecretStr(_secret("api-key"))], http_port=port)
    assert s.callback_shared_key is None and not s.callback_insecure_unsigned
    await Producer(redis_client, s).enqueue(body("5900000009"), job_id="r5-default")
    ledger = Ledger(redis_client, s)
    assert await ledger.mark_sending("r5-default")
    await ledger.mark_sent("r5-default", "R5-SN-DEFAULT")
    await ledger.record_outcome("r5-default", "answered", "1")
    texts: list[str] = []
    figures: dict[str, Any] = {}
    for name, extra in (("default", {}), ("insecure opt-out", {"DIALER_CALLBACK_INSECURE_UNSIGNED": "true"})):
        serve = await procs.start(f"serve-{name}", "serve", env={**settings_env(s), **extra})

        async def up() -> bool:
            try:
                return (await _collect("GET", base + "/healthz", texts))[0] == 200
            except aiohttp.ClientError:
                assert serve.alive, serve.output()  # noqa: B023  # awaited within this iteration
                return False

        await wait_until(up, 30, 0.1, "dialer serve up")
        event = {"callSerialNo": "R5-SN-DEFAULT", "called": "5900000009", "releaseReason": "4",
                 "talkDuration": "0", "timestamp": str(int(time.time() * 1000)), "nonce": "1"}
        status, data = await _collect("POST", base + "/v1/callbacks/release", texts, json=event)
        await serve.stop()
        start_up = [line for line in serve.output().splitlines() if "result callbacks" in line or "INSECURE" in line]
        figures[f"unsigned callback, {name}"] = f"{status} {data['error']['code'] if status >= 400 else 'recorded'}"
        figures[f"start-up line, {name}"] = start_up[0].split(" ", 3)[-1][:140] if start_up else "none"
        if name == "default":
            assert status == 401 and data["error"]["code"] == "unsigned_callback", data
            assert start_up and "DIALER_CALLBACK_SHARED_KEY is not set" in start_up[0], serve.output()
        else:
            assert status == 200, data  # accepted, but the first outcome stands
            assert start_up and "WARNING" in start_up[0] and "INSECURE" in start_up[0], serve.output()
    rec = await ledger.get("r5-default")
    assert rec is not None and rec.outcome == "answered" and rec.redials == ()
    figures["outcome after both (answered first)"] = rec.outcome
    report("R5 unsigned callbacks by default", figures)


async def test_r5_weak_keys_are_refused_and_logout_ends_the_session(
    settings: Settings, redis_client: aioredis.Redis, procs: Procs
) -> None:
    """``dialer serve`` refuses a guessable key (naming the variable, never the key), and a dashboard cookie
    copied before logout is refused after it, by a second replica too."""
    refused: dict[str, int] = {}
    for variable, weak in [("DIALER_API_KEYS", "0000000000000000"), ("DIALER_DASHBOARD_KEY", "passwordpassword"),
                           ("DIALER_CALLBACK_SHARED_KEY", "0123456789abcdef")]:
        env = {**settings_env(settings), "DIALER_API_KEYS": _secret("api"), variable: weak}
        child = await procs.start("serve-weak", "serve", "--port", "0", env=env)
        refused[variable] = await child.wait(30)
        out = child.output()
        assert refused[variable] != 0 and variable in out and weak not in out, out[-500:]
    api_key = _secret("api")
    env = {**settings_env(settings), "DIALER_API_KEYS": api_key}
    bases = []
    for _ in range(2):
        port = free_port()
        await procs.start("serve", "serve", "--host", "127.0.0.1", "--port", str(port), env=env)
        bases.append(f"http://127.0.0.1:{port}")

    async def up() -> bool:
        try:
            return all([(await _collect("GET", b + "/healthz", []))[0] == 200 for b in bases])
        except aiohttp.ClientError:
            return False

    await wait_until(up, 30, 0.1, "two replicas of dialer serve up")
    async with aiohttp.ClientSession() as s:
        async with s.post(bases[0] + "/login", data={"key": api_key}, allow_redirects=False) as r:
            cookie = {"Cookie": f"dialer_session={r.cookies['dialer_session'].value}"}
    before = [(await _collect("GET", b + "/dashboard/data", [], headers=cookie))[0] for b in bases]
    await _collect("POST", bases[0] + "/logout", [], headers=cookie)
    after = [(await _collect("GET", b + "/dashboard/data", [], headers=cookie))[0] for b in bases]
    report("R5 weak keys and logout", {"serve exit codes with a weak key": refused,
                                       "copied cookie before / after logout (2 replicas)": f"{before} / {after}"})
    assert before == [200, 200] and after == [401, 401]
