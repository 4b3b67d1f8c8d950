"""`dialer demo` end to end: its own redis-server, the simulator with signed callbacks, `dialer serve`, two
workers, a campaign launched from a generated CSV that redials unanswered calls, live progress from the
campaign's status, and the final status reconciled with the simulator's request and callback logs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import redis

from tests.helpers import RedisServer, run_dialer

pytestmark = pytest.mark.slow  # every test here starts a child process


async def test_demo_runs_a_small_campaign_to_completion() -> None:
    # DIALER_REDIS_URL empty: the demo starts (and removes) a redis-server of its own, as on a fresh machine.
    rc, out, err = await run_dialer("demo", "--calls", "200", "--rate", "400", env={"DIALER_REDIS_URL": ""},
                                    timeout=60)
    assert rc == 0, out + err
    assert "reconciled: every job sent exactly once, every call's outcome recorded" in out
    assert re.search(r"launched campaign 'demo-\d+': 200 calls enqueued", out)
    assert re.search(r"dashboard: http://127\.0\.0\.1:\d+/\?key=[0-9a-f]{32} ", out)
    final = json.loads(out[out.index("{"): out.rindex("}") + 1])
    redials = final["redials"]
    assert 0 < redials < 200  # a quarter of the calls go unanswered and are redialled once
    assert final["total"] == 200 + redials and final["states"]["sent"] == final["total"] and final["remaining"] == 0
    # Every call's result callback arrived, was verified and counted.
    outcomes = final["outcomes"]
    assert sum(outcomes.values()) == final["total"] and outcomes["answered"] > outcomes["unanswered"] > 0
    assert final["settings"]["redial"] == {"max": 1, "after_s": 2.0}
    assert final["settings"]["callback_url"].endswith("/v1/callbacks/release")
    assert re.search(rf"result callbacks: {final['total']} signed callbacks accepted", out)
    # Its webhooks (the campaign's statusCallbackUrl, a `dialer webhooks` child, a receiver checking each
    # signature): every event of the stream, a `sent` per call created and an `outcome` per callback.
    hooks = re.search(r"webhooks: (\d+) events received, signatures verified \(([^;]*);[^\n]*: (\S*reconciled)", out)
    assert hooks is not None and hooks[3] == "reconciled", out
    kinds = dict(kv.split("=") for kv in hooks[2].split())
    assert int(kinds["sent"]) == int(kinds["outcome"]) == final["total"] and int(kinds["redial"]) == redials
    assert int(kinds["queued"]) == final["total"] and int(hooks[1]) == sum(map(int, kinds.values()))


async def test_demo_never_uses_an_exported_redis_or_provider(tmp_path: Path) -> None:
    # A real fleet's Redis and provider exported in the shell: the demo must dial none of its numbers
    # through them (it used DIALER_REDIS_URL, so a fleet on that Redis would have called 2,000 people).
    fleet = RedisServer(tmp_path)
    fleet.start()
    try:
        env = {"DIALER_REDIS_URL": fleet.url, "DIALER_API_BASE_URL": "http://127.0.0.1:9",
               "DIALER_APP_KEY": "real-ak", "DIALER_APP_SECRET": "real-sk-0123456789", "DIALER_KEY_PREFIX": "x:"}
        rc, out, err = await run_dialer("demo", "--calls", "30", "--rate", "400", env=env, timeout=60)
        assert rc == 0, out + err
        assert "reconciled: every job sent exactly once" in out
        client = redis.Redis(port=fleet.port)
        try:
            # Nothing written, and nobody but this test (and its start-up ping) ever connected.
            assert client.dbsize() == 0 and client.info("stats")["total_connections_received"] <= 2
        finally:
            client.close()
    finally:
        fleet.stop()
