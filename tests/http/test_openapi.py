"""The OpenAPI document: valid OpenAPI 3.1, exactly the app's routes, and a schemathesis run against the
live ``dialer serve`` (a real subprocess, real Redis, the simulator as provider) that finds no 5xx."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.helpers import Proc, free_port, settings_env, start_dialer
from worker.http import create_app
from worker.http.openapi import OPENAPI_DOC
from worker.settings import Settings

KEY = "schemathesis-key-0123456789"
MAX_EXAMPLES = 50

_ST_CONFIG = """\
# positive_data_acceptance is off: a schema cannot say "deadline in the future" or "notBefore before
# deadline", so some schema-valid bodies are rightly refused with 422.
[checks]
positive_data_acceptance.enabled = false

# A batch answers 200 with per-item results, also for items that are not valid BatchItems (by design).
[[operations]]
include-path = "/v1/calls:batch"
checks.negative_data_rejection.enabled = false
"""


def _doc_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}


async def test_document_is_valid_openapi_and_lists_every_route(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    app = create_app(settings, redis_client, open_provider=False)
    doc = app[OPENAPI_DOC]
    validate(doc)  # raises on an invalid document
    assert doc["openapi"].startswith("3.1")
    router = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"
              and r.resource is not None}
    assert router == _doc_operations(doc)
    assert {("POST", "/v1/calls"), ("POST", "/v1/calls:batch"), ("GET", "/v1/calls/{job_id}"),
            ("GET", "/openapi.json"), ("GET", "/metrics"), ("GET", "/healthz"), ("GET", "/readyz"),
            ("GET", "/")} <= router
    op_ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(op_ids) == len(set(op_ids))
    # Generated from the models, with the seed's rules and the settings' limits in it.
    schemas = doc["components"]["schemas"]
    assert schemas["CallCreate"]["properties"]["called"]["pattern"] == r"^(?:\+[0-9]{1,31}|[0-9]{1,32})$"
    assert schemas["CallCreate"]["additionalProperties"] is False
    batch = doc["paths"]["/v1/calls:batch"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert batch["properties"]["items"]["maxItems"] == settings.http_max_batch
    call_post = doc["paths"]["/v1/calls"]["post"]
    assert {"202", "200", "400", "401", "403", "409", "413", "415", "422", "500", "503"} <= set(call_post["responses"])
    assert call_post["security"] == [{"bearerAuth": []}]
    assert doc["paths"]["/healthz"]["get"]["security"] == []


async def _wait_healthy(url: str, proc: Proc, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            if proc.proc.returncode is not None:
                _, _, err = await proc.wait(5)
                raise AssertionError(f"dialer serve exited: {err[-2000:]}")
            try:
                async with s.get(url + "/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("dialer serve did not start")
            await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_schemathesis_finds_no_server_error(sim_settings: Settings, tmp_path: Path) -> None:
    port = free_port()
    served = sim_settings.model_copy(update={"http_port": port, "http_max_batch": 20,
                                             "http_max_body_bytes": 64 * 1024, "api_keys": [SecretStr(KEY)]})
    # WARNING: nobody reads the child's stderr pipe until it exits; errors (what we look for) still show.
    # The throttle off: at the default 50/s a third of the fuzzer's requests would get 429 and never reach
    # a handler (the 429 itself is tested in test_http_throttle.py).
    env = {**settings_env(served), "DIALER_API_KEYS": KEY, "DIALER_LOG_FORMAT": "json", "DIALER_LOG_LEVEL": "WARNING",
           "DIALER_HTTP_RATE_LIMIT": "0"}
    url = f"http://127.0.0.1:{port}"
    proc = await start_dialer("serve", env=env)
    try:
        await _wait_healthy(url, proc)
        config = tmp_path / "schemathesis.toml"
        config.write_text(_ST_CONFIG)
        st = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run", url + "/openapi.json",
            "-H", f"Authorization: Bearer {KEY}", "--max-examples", str(MAX_EXAMPLES), "--seed", "20251127",
            "--no-color", "--report", "junit", "--report-dir", str(tmp_path / "report"),
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(st.communicate(), 180)
        report = out.decode(errors="replace")
        assert st.returncode == 0, report[-6000:]
        assert "passed" in report

        # Nothing the fuzzer sent made the service answer 5xx (the catch-all 500 included).
        async with aiohttp.ClientSession() as s, s.get(url + "/metrics") as r:
            text = await r.text()
        served_statuses: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name == "dialer_http_requests":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        status = sample.labels["status"]
                        served_statuses[status] = served_statuses.get(status, 0) + sample.value
        assert sum(served_statuses.values()) > 500, served_statuses
        assert not [s for s in served_statuses if s.startswith("5")], served_statuses
    finally:
        if proc.proc.returncode is None:
            proc.proc.terminate()
        code, _, err = await proc.wait(20)
    assert "unhandled error" not in err
    assert KEY not in err  # the key never reaches a log line
    assert code == 0, err[-2000:]
