"""``/v1/campaigns`` over real HTTP against a real Redis: launches from JSON rows, CSV and JSONL uploads
(raw and multipart), status equal to the CLI's JSON, pause/resume/cancel, and every error status."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from tests.helpers import run_dialer, settings_env
from worker.campaigns.control import Campaigns
from worker.http import create_app
from worker.http.openapi import OPENAPI_DOC
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.settings import Settings

KEY = "campaigns-api-key-0123456789"
DASH = "campaigns-dash-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
PUBLIC = "https://dialer.example.com"


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_keys": [SecretStr(KEY)], "dashboard_key": SecretStr(DASH),
                                       "http_max_body_bytes": 8 * 1024, "public_url": PUBLIC})


@pytest.fixture
async def client(api_settings: Settings, redis_client: aioredis.Redis) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(api_settings, redis_client, open_provider=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


def rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"called": f"1390000{i:04d}"} for i in range(start, start + n)]


async def launch(client: TestClient[Any, Any], **body: Any) -> tuple[int, Any]:
    body.setdefault("name", "web")
    body.setdefault("templateId", "tpl-1")
    r = await client.post("/v1/campaigns", json=body, headers=AUTH)
    return r.status, await r.json()


async def test_launch_json_rows_then_relaunch_adds_nothing(
    client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis
) -> None:
    status, report = await launch(client, rows=[*rows(3), {"called": "12ab"}, {"called": "13900000000"}],
                                  priority=3, templateParams=["10:30"], rate=5, redial=2, redialAfter="20m")
    assert status == 201, report
    assert report["campaign"] == "web" and report["campaign_created"] is True and report["file"] == "request"
    assert (report["rows"], report["valid"], report["enqueued"], report["duplicates_in_file"]) == (5, 3, 3, 1)
    assert report["rejected"] == [{"line": 4, "field": "called", "rule": "must be digits with an optional leading '+'"}]
    status, again = await launch(client, rows=rows(3), priority=3, templateParams=["10:30"], rate=5, redial=2,
                                 redialAfter="20m")
    assert status == 200 and again["enqueued"] == 0 and again["already_enqueued"] == 3
    rec = await Ledger(redis_client, api_settings).get("web:13900000001")
    assert rec is not None and rec.priority == 3
    # DIALER_PUBLIC_URL fills callBackUrl (stored in the body, so `dialer job` shows it).
    assert rec.body == {"called": "13900000001", "playList": [{"templateId": "tpl-1", "templateParams": ["10:30"]}],
                        "callBackUrl": PUBLIC + "/v1/callbacks/release", "priority": "3"}
    st = await Campaigns(redis_client, api_settings).status("web")
    assert st["settings"]["redial"] == {"max": 2, "after_s": 1200.0}
    assert st["settings"]["callback_url"] == PUBLIC + "/v1/callbacks/release"


async def test_a_row_with_its_own_callback_url_keeps_it(
    client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis
) -> None:
    own = "https://crm.example.com/hook"
    status, _ = await launch(client, rows=[{"called": "13900000009", "callBackUrl": own}])
    assert status == 201
    rec = await Ledger(redis_client, api_settings).get("web:13900000009")
    assert rec is not None and rec.body["callBackUrl"] == own


async def test_csv_and_jsonl_uploads_raw_and_multipart(
    client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis
) -> None:
    csv = "called,priority,templateParams\n13900000001,1,a|b\n13900000002,,c\nbad,,\n"
    r = await client.post("/v1/campaigns?name=up&templateId=tpl-2&priority=5&templateParams=x&dryRun=false",
                          data=csv, headers={**AUTH, "Content-Type": "text/csv"})
    report = await r.json()
    assert r.status == 201, report
    assert (report["file"], report["enqueued"], report["rejected_rows"]) == ("upload", 2, 1)
    assert report["rejected"][0]["line"] == 4 and report["rejected"][0]["field"] == "called"
    ledger = Ledger(redis_client, api_settings)
    one, two = await ledger.get("up:13900000001"), await ledger.get("up:13900000002")
    assert one is not None and two is not None
    assert one.priority == 1 and one.body["playList"] == [{"templateId": "tpl-2", "templateParams": ["a", "b"]}]
    assert two.priority == 5

    form = aiohttp.FormData()
    form.add_field("file", "called\n13900000003\n", filename="more.csv", content_type="text/csv")
    r = await client.post("/v1/campaigns?name=up&templateId=tpl-2&priority=5&templateParams=x", data=form,
                          headers=AUTH)
    report = await r.json()
    assert r.status == 200 and report["file"] == "more.csv" and report["enqueued"] == 1  # same campaign, one new

    lines = json.dumps({"called": "13900000004", "playList": [{"voiceId": "v1"}], "id": "own-id"}) + "\n"
    r = await client.post("/v1/campaigns?name=lines&strict=true", data=lines,
                          headers={**AUTH, "Content-Type": "application/x-ndjson"})
    assert r.status == 201, await r.text()
    rec = await ledger.get("own-id")
    assert rec is not None and rec.campaign == "lines" and rec.body["playList"] == [{"voiceId": "v1"}]


@pytest.mark.slow
async def test_status_list_and_controls_match_the_cli(
    client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis
) -> None:
    assert (await launch(client, rows=rows(4)))[0] == 201
    ledger = Ledger(redis_client, api_settings)
    assert await ledger.mark_sending("web:13900000000")
    await ledger.mark_sent("web:13900000000", "SN-1")
    await ledger.record_outcome("web:13900000000", "answered", "1")
    r = await client.get("/v1/campaigns/web", headers=AUTH)
    assert r.status == 200
    via_http = await r.json()
    rc, out, err = await run_dialer("campaign", "status", "web", "--json", env=settings_env(api_settings))
    assert rc == 0, err
    via_cli = json.loads(out)
    for d in (via_http, via_cli):
        d.pop("as_of")
        d.pop("send_rate_per_s")
        d.pop("eta_s")
    assert via_http == via_cli
    assert via_http["states"]["sent"] == 1 and via_http["outcomes"]["answered"] == 1 and via_http["total"] == 4

    r = await client.get("/v1/campaigns", headers=AUTH)
    listed = await r.json()
    assert r.status == 200 and [c["name"] for c in listed] == ["web"]

    r = await client.post("/v1/campaigns/web:pause", headers=AUTH)
    data = await r.json()
    assert r.status == 200 and (data["action"], data["previous"]) == ("pause", "active")
    assert data["campaign"]["status"] == "paused"
    assert (await Campaigns(redis_client, api_settings).status("web"))["status"] == "paused"
    r = await client.post("/v1/campaigns/web:resume", headers=AUTH)
    data = await r.json()
    assert r.status == 200 and data["previous"] == "paused" and data["campaign"]["status"] == "active"
    assert data["moved"] == 0 and data["left"] == 0
    r = await client.post("/v1/campaigns/web:cancel", headers=AUTH)
    data = await r.json()
    assert r.status == 200 and data["cancelled"] == 3 and data["campaign"]["states"]["cancelled"] == 3
    assert (await ledger.get("web:13900000001")).state == State.CANCELLED  # type: ignore[union-attr]
    r = await client.post("/v1/campaigns/web:resume", headers=AUTH)
    body = await r.json()
    assert r.status == 409 and body["error"]["code"] == "campaign_conflict" and "cancelled" in body["error"]["message"]
    assert (await client.post("/v1/campaigns/web:cancel", headers=AUTH)).status == 200  # idempotent
    # A cancelled campaign cannot be launched into again.
    status, body = await launch(client, rows=rows(1, start=50))
    assert status == 409 and "cancelled" in body["error"]["message"]


async def test_errors(client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis) -> None:
    for path in ("/v1/campaigns/nope", "/v1/campaigns/a%20b"):
        r = await client.get(path, headers=AUTH)
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"
    for action in ("pause", "resume", "cancel"):
        assert (await client.post(f"/v1/campaigns/nope:{action}", headers=AUTH)).status == 404

    # Options: refused with the API's names, nothing stored.
    status, body = await launch(client, rows=rows(1), rate=0)
    assert status == 422 and [f["field"] for f in body["error"]["fields"]] == ["rate"]
    status, body = await launch(client, rows=rows(1), window="09:00-20:00", redialAfter="soon", redial=1)
    assert status == 422
    assert {f["field"] for f in body["error"]["fields"]} == {"timezone", "redialAfter"}
    status, body = await launch(client, rows=rows(1), priority="3")  # JSON types are strict
    assert status == 422 and body["error"]["fields"][0]["field"] == "priority"
    status, body = await launch(client, rows=rows(1), unknown=1)
    assert status == 422 and body["error"]["fields"][0] == {"field": "unknown", "rule": "unknown field"}
    status, body = await launch(client, rows=[])
    assert status == 422 and body["error"]["fields"][0]["field"] == "rows"
    status, body = await launch(client, rows=[1, 2])
    assert status == 422 and body["error"]["fields"][0]["field"].startswith("rows[0]")
    assert await Campaigns(redis_client, api_settings).names() == []

    # Strict: one bad row refuses the launch, naming each row.
    status, body = await launch(client, rows=[*rows(2), {"called": "x"}, {"called": "1", "playList": []}],
                                strict=True)
    assert status == 422 and body["error"]["code"] == "rows_rejected"
    fields = [f["field"] for f in body["error"]["fields"]]
    assert fields == ["rows[2].called", "rows[3].playList"]
    assert await Ledger(redis_client, api_settings).get("web:13900000000") is None
    r = await client.post("/v1/campaigns?name=s&templateId=t&strict=true", data="called\n1390\nx\n",
                          headers={**AUTH, "Content-Type": "text/csv"})
    assert r.status == 422 and [f["field"] for f in (await r.json())["error"]["fields"]] == ["line[3].called"]

    # Uploads: options in the query, checked the same way.
    for query, field in (("name=u&dryRun=yes", "dryRun"), ("name=u&priority=x", "priority"),
                         ("templateId=t", "name"), ("name=u&name=v", "name"), ("name=u&bogus=1", "bogus")):
        r = await client.post(f"/v1/campaigns?{query}", data="called\n1\n",
                              headers={**AUTH, "Content-Type": "text/csv"})
        assert r.status == 422, query
        assert field in [f["field"] for f in (await r.json())["error"]["fields"]], query
    r = await client.post("/v1/campaigns?name=u&templateId=t", data="number\n1\n",
                          headers={**AUTH, "Content-Type": "text/csv"})
    assert r.status == 422 and (await r.json())["error"]["fields"][0]["field"] == "file"
    r = await client.post("/v1/campaigns?name=u&templateId=t", data=b"called\n\xff\n",
                          headers={**AUTH, "Content-Type": "text/csv"})
    assert r.status == 422
    r = await client.post("/v1/campaigns?name=web", json={"name": "web", "rows": rows(1)}, headers=AUTH)
    assert r.status == 422 and (await r.json())["error"]["fields"][0]["field"] == "name"
    r = await client.post("/v1/campaigns", data="x", headers={**AUTH, "Content-Type": "text/plain"})
    assert r.status == 415
    r = await client.post("/v1/campaigns", data="{", headers={**AUTH, "Content-Type": "application/json"})
    assert r.status == 400
    big = "called\n" + "13900000000\n" * 1000
    r = await client.post("/v1/campaigns?name=big&templateId=t", data=big, headers={**AUTH, "Content-Type": "text/csv"})
    assert r.status == 413 and (await r.json())["error"]["code"] == "payload_too_large"
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("other", "1")
    form.add_field("file", "called\n13900000000\n", filename="x.csv")
    r = await client.post("/v1/campaigns?name=u&templateId=t", data=form, headers=AUTH)
    assert r.status == 422 and (await r.json())["error"]["fields"][0]["field"] == "other"
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("file", "called\n13900000000\n")  # a plain field is taken as the file's text
    form.add_field("file", "called\n13900000001\n")
    r = await client.post("/v1/campaigns?name=u&templateId=t", data=form, headers=AUTH)
    assert r.status == 422 and (await r.json())["error"]["fields"][0]["field"] == "file"

    # A campaign that exists with other settings: 409.
    assert (await launch(client, rows=rows(1), rate=2))[0] == 201
    status, body = await launch(client, rows=rows(1), rate=3)
    assert status == 409 and "rate" in body["error"]["message"]


async def test_keys(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/v1/campaigns")).status == 401
    dash = {"Authorization": f"Bearer {DASH}"}
    for method, path in (("GET", "/v1/campaigns"), ("GET", "/v1/campaigns/x"), ("POST", "/v1/campaigns/x:pause")):
        r = await client.request(method, path, headers=dash)
        assert r.status == 403, path


async def test_redial_needs_a_public_url(settings: Settings, redis_client: aioredis.Redis) -> None:
    s = settings.model_copy(update={"api_keys": [SecretStr(KEY)]})
    async with TestClient(TestServer(create_app(s, redis_client, open_provider=False), host="127.0.0.1")) as c:
        status, body = await launch(c, rows=rows(1), redial=1)
        assert status == 422 and body["error"]["fields"][0]["field"] == "redial"
        assert "DIALER_PUBLIC_URL" in body["error"]["fields"][0]["rule"]
        status, _ = await launch(c, rows=rows(1))  # without redials: fine, and no callBackUrl
        assert status == 201
    rec = await Ledger(redis_client, s).get("web:13900000000")
    assert rec is not None and "callBackUrl" not in rec.body


async def test_openapi_documents_the_routes(api_settings: Settings, redis_client: aioredis.Redis) -> None:
    doc = create_app(api_settings, redis_client, open_provider=False)[OPENAPI_DOC]
    paths = doc["paths"]
    assert set(paths["/v1/campaigns"]) == {"get", "post"}
    for action in ("pause", "resume", "cancel"):
        assert set(paths[f"/v1/campaigns/{{name}}:{action}"]["post"]["responses"]) >= {"200", "404", "409"}
    content = paths["/v1/campaigns"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "text/csv", "application/x-ndjson", "multipart/form-data"}
    params = {p["name"] for p in paths["/v1/campaigns"]["post"]["parameters"]}
    assert {"name", "rate", "templateParams", "redial", "redialAfter", "dryRun", "strict"} <= params
    callback = paths["/v1/callbacks/release"]["post"]
    assert callback["security"] == [] and {"200", "401", "404", "422"} <= set(callback["responses"])
    assert "releaseReason" in doc["components"]["schemas"]["ReleaseCallback"]["required"]


async def test_a_launch_with_no_valid_row_creates_nothing_and_the_fixed_rerun_works(
    client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis
) -> None:
    """It used to create the campaign anyway (201, nothing enqueued), so the corrected re-run with other
    options was refused (409: exists with other settings)."""
    status, err = await launch(client, rows=[{"called": "bad"}, {"called": "12ab"}])
    assert status == 422 and err["error"]["code"] == "no_valid_rows", err
    assert [f["field"] for f in err["error"]["fields"]] == ["rows[0].called", "rows[1].called"]
    stored = [k for k in await redis_client.keys("*") if b"rl:http" not in k]  # the per-key throttle's state
    assert stored == []
    r = await client.post("/v1/campaigns?name=web&templateId=tpl-1", data="called\nnope\n",
                          headers={**AUTH, "Content-Type": "text/csv"})
    assert r.status == 422 and [f["field"] for f in (await r.json())["error"]["fields"]] == ["line[2].called"]
    status, report = await launch(client, rows=rows(2), rate=3)  # other options: still free
    assert status == 201 and report["enqueued"] == 2 and report["nothing_valid"] is False, report


async def test_delete_an_empty_campaign_and_refuse_one_with_work(
    client: TestClient[Any, Any], api_settings: Settings, redis_client: aioredis.Redis
) -> None:
    assert (await launch(client, rows=rows(2)))[0] == 201
    r = await client.delete("/v1/campaigns/web", headers=AUTH)
    data = await r.json()
    assert r.status == 409 and data["error"]["code"] == "campaign_busy" and "2 queued" in data["error"]["message"]
    assert (await client.post("/v1/campaigns/web:cancel", headers=AUTH)).status == 200
    r = await client.delete("/v1/campaigns/web", headers=AUTH)
    assert r.status == 200 and await r.json() == {"deleted": "web"}
    assert (await client.get("/v1/campaigns/web", headers=AUTH)).status == 404
    assert [k async for k in redis_client.scan_iter("*campaign*")] == []
    assert (await client.delete("/v1/campaigns/web", headers=AUTH)).status == 404
    status, _ = await launch(client, rows=rows(1, 5), rate=7)  # the name is free again
    assert status == 201
