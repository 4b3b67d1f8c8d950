"""R4: bad input everywhere it can come in. Property-based (hypothesis, a bounded number of examples:
``DIALER_FAULTS=full`` draws more) and a corpus of known-nasty cases:

* the producer API (``Producer.enqueue`` / ``enqueue_many``): refused input raises ``InvalidRequest``
  (or is reported ``rejected``) naming a field and a rule, and leaves Redis exactly as it was;
* the campaign launcher (CSV/JSONL files of random bytes, other encodings, huge fields, missing or
  unknown columns, broken JSON): per-row errors or a file-level ``LaunchError``, never a crash, nothing
  stored by ``--dry-run``;
* the HTTP API (``/v1/calls``, ``/v1/calls:batch``): random bytes, random JSON, wrong types, other
  content types -> a 4xx with the documented JSON error shape, never a 5xx;
* poisoned queues: garbage, pickle (one whose unpickling would create a file), wrong-typed JSON and
  wrong-typed Redis keys written straight into arq job keys, ledger records and queues: each refused or
  dead-lettered with a reason, nothing executed, nothing dialled, and the worker keeps running and
  sends a good job afterwards.
"""

from __future__ import annotations

import json
import pickle
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from pydantic import SecretStr

from tests.faults.conftest import FULL, Procs, SimProcess, body, fault_settings, report
from tests.helpers import enqueue_all, load_records, settings_env, snapshot, wait_until
from worker.campaigns.control import CampaignError
from worker.campaigns.launch import LaunchError, LaunchOptions, launch_file
from worker.errors import InvalidRequest
from worker.http import create_app
from worker.ledger.producer import CallJob, Producer
from worker.ledger.states import State
from worker.models import CallRequest
from worker.settings import Settings
from worker.store.keys import Keys

pytestmark = [pytest.mark.faults]

EXAMPLES = 400 if FULL else 40
FUZZ = hsettings(
    max_examples=EXAMPLES, deadline=None, derandomize=not FULL, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)
API_KEY = "r4-api-key-0123456789abcdef"

# --- strategies ------------------------------------------------------------------------------------

_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
            | st.sampled_from(["", "1", "9", "0", "10", "+8613800000001", "${x}", "a" * 33, "13800000001"]))
json_values = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=25,
)


def _or_junk(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return strategy | json_values


_item = st.fixed_dictionaries({}, optional={
    "voiceId": _or_junk(st.sampled_from(["100001", "", "x" * 40])),
    "voiceFileName": _or_junk(st.just("hello.wav")),
    "templateId": _or_junk(st.just("tpl-1")),
    "templateParams": _or_junk(st.lists(_or_junk(st.sampled_from(["a", "10:30", "${x}", "{", "x" * 40, "é" * 20])),
                                        max_size=12)),
    "junk": json_values,
})
seed_like = st.fixed_dictionaries({}, optional={
    "called": _or_junk(st.from_regex(r"\+?[0-9]{1,40}", fullmatch=True)),
    "playList": _or_junk(st.lists(_item, max_size=7)),
    "priority": _or_junk(st.sampled_from([str(p) for p in range(0, 11)] + [1, 9])),
    "callerPresent": _or_junk(st.sampled_from(["2222201", "x" * 33])),
    "playTimes": _or_junk(st.sampled_from([1, 5, 0, 6, "2", 2.5])),
    "callBackUrl": _or_junk(st.sampled_from(["https://cb.example/x", "ftp://x", "https://" + "a" * 260])),
    "unknownField": json_values,
})
valid_like = st.fixed_dictionaries(
    {"called": st.from_regex(r"\+?[0-9]{1,20}", fullmatch=True),
     "playList": st.lists(st.fixed_dictionaries({"voiceId": st.just("100001")}), min_size=1, max_size=5)},
    optional={"priority": st.sampled_from([str(p) for p in range(1, 10)]), "playTimes": st.integers(1, 5)},
)
any_request = valid_like | seed_like | json_values


def changed(before: dict[bytes, Any], after: dict[bytes, Any]) -> list[bytes]:
    """Keys added, removed or rewritten between two snapshots."""
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def _is_valid(request: Any) -> bool:
    try:
        CallRequest.model_validate(request)
    except Exception:
        return False
    return isinstance(request, dict)


# --- the producer API ------------------------------------------------------------------------------

_times = st.none() | st.datetimes(timezones=st.none() | st.just(UTC)) | st.sampled_from([
    datetime.now(UTC) + timedelta(days=1), datetime.now(UTC) - timedelta(days=1)])


@FUZZ
@given(request=any_request, job_id=st.none() | st.text(max_size=140), campaign=st.none() | st.text(max_size=70),
       not_before=_times, deadline=_times)
async def test_r4_producer_refuses_bad_input_by_field_and_rule_and_stores_nothing(
    redis_client: aioredis.Redis, settings: Settings, request: Any, job_id: str | None, campaign: str | None,
    not_before: datetime | None, deadline: datetime | None,
) -> None:
    producer = Producer(redis_client, settings)
    before = await snapshot(redis_client)
    try:
        result = await producer.enqueue(request, job_id=job_id, campaign=campaign, not_before=not_before,
                                        deadline=deadline)
    except InvalidRequest as exc:
        assert exc.errors, "InvalidRequest without errors"
        assert all(e.field and e.rule for e in exc.errors), exc.errors
        assert await snapshot(redis_client) == before, "a refused call changed Redis"
        return
    assert _is_valid(request), f"accepted an invalid body: {request!r}"
    assert result.status in ("accepted", "duplicate") and result.job_id
    assert await redis_client.hget(Keys(settings.key_prefix).job(result.job_id), "state") is not None  # type: ignore[misc]  # redis-py's union


@FUZZ
@given(items=st.lists(any_request | st.builds(CallJob, request=any_request,
                                              job_id=st.none() | st.text(max_size=20)), max_size=8))
async def test_r4_enqueue_many_reports_each_bad_item_and_stores_only_good_ones(
    redis_client: aioredis.Redis, settings: Settings, items: list[Any]
) -> None:
    producer = Producer(redis_client, settings)
    results = await producer.enqueue_many(items)
    assert len(results) == len(items)
    keys = Keys(settings.key_prefix)
    for i, (item, res) in enumerate(zip(items, results, strict=True)):
        assert res.index == i
        request = item.request if isinstance(item, CallJob) else item
        if res.status == "rejected":
            assert res.errors and all(e.field and e.rule for e in res.errors), res
        else:
            assert _is_valid(request), f"accepted an invalid item: {item!r}"
            assert await redis_client.exists(keys.job(str(res.job_id)))
    before = await snapshot(redis_client)
    rejected = [item for item, res in zip(items, results, strict=True) if res.status == "rejected"]
    assert all(r.status == "rejected" for r in await producer.enqueue_many(rejected))
    assert await snapshot(redis_client) == before, "rejected items changed Redis"


# --- the launcher ----------------------------------------------------------------------------------

_CSV_COLUMNS = ["called", "priority", "callerPresent", "templateParams", "voiceId", "templateId",
                "voiceFileName", "playTimes", "id", "timezone", "Called", "bogus", ""]
_cell = st.text(max_size=30) | st.sampled_from(["13800000001", "+86 138-0000-0002", "${x}", "a|b|c", '"', ",",
                                                "\n", "Europe/Paris", "Mars/Base", "5", "0"])


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    header = draw(st.lists(st.sampled_from(_CSV_COLUMNS), min_size=0, max_size=6))
    rows = draw(st.lists(st.lists(_cell, min_size=0, max_size=len(header) + 2), max_size=8))
    text = ",".join(header) + "\n" + "".join(",".join(r) + draw(st.sampled_from(["\n", "\r\n", ""])) for r in rows)
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
    return text.encode(encoding, errors="replace")


@st.composite
def jsonl_files(draw: st.DrawFn) -> bytes:
    lines = draw(st.lists(
        seed_like.map(json.dumps) | json_values.map(json.dumps) | st.text(max_size=40)
        | st.sampled_from(["{", "}", "[]", "null", '{"called": NaN}', '{"id": 5}', "{'called': '1'}"]),
        max_size=8))
    return ("\n".join(lines) + "\n").encode()


any_file = csv_files() | jsonl_files() | st.binary(max_size=300)

NASTY_FILES: dict[str, bytes] = {
    "huge field.csv": b"called,templateParams\n13800000001," + b"x" * 200_000 + b"\n",
    "nul byte.csv": b"called\n1380\x000001\n",
    "utf-16.csv": "called\n13800000001\n".encode("utf-16"),
    "latin-1.csv": "called,templateParams\n13800000001,caf\xe9\n".encode("latin-1"),
    "no called column.csv": b"number\n13800000001\n",
    "unknown column.csv": b"called,colour\n13800000001,red\n",
    "empty.csv": b"",
    "header only.csv": b"called\n",
    "unclosed quote.csv": b'called\n"13800000001\n',
    "more cells than header.csv": b"called\n13800000001,x,y\n",
    "deep nesting.jsonl": b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "huge integer.jsonl": b'{"called": "13800000001", "playTimes": ' + b"9" * 5000
                          + b', "playList": [{"voiceId": "1"}]}\n',
    "NaN.jsonl": b'{"called": NaN, "playList": [{"voiceId": Infinity}]}\n',
    "lone surrogate.jsonl": b'{"called": "\\ud800", "playList": [{"voiceId": "1"}]}\n',
    "100k play items.jsonl": b'{"called": "1", "playList": [' + b'{"voiceId":"1"},' * 100_000 + b'{"voiceId":"1"}]}\n',
    "random binary.bin": bytes(range(256)) * 8,
}


async def _launch(redis: aioredis.Redis, settings: Settings, path: Path, dry_run: bool) -> dict[str, Any] | str:
    """The report's dict, or the text of the LaunchError/CampaignError that refused the whole file."""
    try:
        rep = await launch_file(redis, settings, path, LaunchOptions(name="r4-" + uuid.uuid4().hex[:8],
                                                                     voice_id="100001", dry_run=dry_run))
    except (LaunchError, CampaignError) as exc:
        assert str(exc)
        return str(exc)
    out = rep.as_dict()
    assert out["rows"] >= out["valid"] + out["duplicates_in_file"]
    for e in out["rejected"]:
        assert e["line"] >= 1 and e["field"] and e["rule"], e
    if not dry_run:
        assert out["enqueued"] + out["already_enqueued"] + out["suppressed"] == out["valid"], out
    return out


@pytest.mark.parametrize("name", sorted(NASTY_FILES))
async def test_r4_launcher_survives_nasty_files(
    name: str, redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / name
    path.write_bytes(NASTY_FILES[name])
    before = await snapshot(redis_client)
    await _launch(redis_client, settings, path, dry_run=True)
    assert await snapshot(redis_client) == before, "--dry-run stored something"
    await _launch(redis_client, settings, path, dry_run=False)


@FUZZ
@given(content=any_file, dry_run=st.booleans())
@example(content=b"called\n13800000001\n+86 (138) 0000-0002\n13800000001\n", dry_run=False)
async def test_r4_launcher_fuzz_per_row_errors_never_a_crash(
    redis_client: aioredis.Redis, settings: Settings, tmp_path: Path, content: bytes, dry_run: bool
) -> None:
    path = tmp_path / f"f-{uuid.uuid4().hex}.{'jsonl' if content[:1] == b'{' else 'csv'}"
    path.write_bytes(content)
    before = await snapshot(redis_client)
    await _launch(redis_client, settings, path, dry_run)
    if dry_run:
        assert await snapshot(redis_client) == before, "--dry-run stored something"


CLI_NASTY: dict[str, bytes] = {
    "huge integer": b'{"called": "13800000001", "playTimes": ' + b"9" * 5000 + b', "playList": [{"voiceId": "1"}]}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "not UTF-8": b'\xff\xfe{"called": "13800000001"}',
    "NaN": b'{"called": NaN, "playList": [{"voiceId": Infinity}]}',
    "broken JSONL": b'{"called": "1"\n{]\n',
    "array of junk": b'[1, "x", null, {"called": []}]',
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CLI_NASTY))
async def test_r4_cli_enqueue_json_refuses_nasty_input_without_a_traceback(
    name: str, settings: Settings, redis_client: aioredis.Redis, procs: Procs, tmp_path: Path
) -> None:
    """``dialer enqueue --json FILE``: bad items are reported (exit 1) or the file refused, never a crash."""
    path = tmp_path / "calls.json"
    path.write_bytes(CLI_NASTY[name])
    before = await snapshot(redis_client)
    cli = await procs.start("enqueue", "enqueue", "--json", str(path), env=settings_env(settings))
    rc = await cli.wait(60)
    output = cli.output()
    assert rc != 0 and "Traceback" not in output, (rc, output[-1500:])
    assert await snapshot(redis_client) == before


# --- the HTTP API ----------------------------------------------------------------------------------


@pytest.fixture
async def api(settings: Settings, redis_client: aioredis.Redis) -> AsyncIterator[str]:
    # http_rate_limit 0: the throttle's bookkeeping key would show in the "refused request changed
    # nothing" snapshots; the throttle is tested in tests/http/test_throttle.py.
    s = settings.model_copy(update={"api_keys": [SecretStr(API_KEY)], "http_max_batch": 10,
                                    "http_max_body_bytes": 64 * 1024, "http_rate_limit": 0})
    server = TestServer(create_app(s, redis_client, open_provider=False), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


_batch_like = st.fixed_dictionaries({}, optional={
    "items": _or_junk(st.lists(seed_like | st.fixed_dictionaries({"id": json_values}), max_size=12)),
    "campaign": json_values, "notBefore": json_values, "deadline": json_values, "extra": json_values,
}) | json_values
_payloads = (seed_like.map(json.dumps) | _batch_like.map(json.dumps) | json_values.map(json.dumps)
             | st.text(max_size=60)).map(str.encode) | st.binary(max_size=200) | csv_files() | jsonl_files() \
    | st.sampled_from([
        b"", b"{", b"NaN", b'{"called": NaN}', b"[" * 5000 + b"]" * 5000, b'"\\ud800"', b"\xff\xfe{}",
        b'{"items": [' + b"{}," * 2000 + b"{}]}", b"x" * 70_000, *NASTY_FILES.values()])
_ctypes = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", "", "text/csv",
                           "application/x-ndjson", "application/x-www-form-urlencoded", "application/problem+json",
                           "multipart/form-data"])
_header_text = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=140)
_PATHS = ["/v1/calls", "/v1/calls:batch", "/v1/campaigns", "/v1/campaigns?name=r4-fuzz&voiceId=100001",
          "/v1/campaigns?name=r4-fuzz&voiceId=100001&dryRun=true"]


@FUZZ
@given(path=st.sampled_from(_PATHS), payload=_payloads, ctype=_ctypes, key=st.none() | _header_text)
@example(path=_PATHS[3], payload=NASTY_FILES["huge integer.jsonl"], ctype="application/x-ndjson", key=None)
async def test_r4_http_api_answers_4xx_json_never_5xx(
    api: str, redis_client: aioredis.Redis, path: str, payload: bytes, ctype: str, key: str | None
) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    if ctype:
        headers["Content-Type"] = ctype
    if key is not None:
        headers["Idempotency-Key"] = key
    before = await snapshot(redis_client)
    async with aiohttp.ClientSession() as s, s.post(api + path, data=payload, headers=headers) as r:
        status, raw = r.status, await r.read()
    assert status < 500, (status, raw[:300])
    data = json.loads(raw)
    if status >= 400:
        assert set(data) == {"error"} and {"code", "message", "fields"} <= set(data["error"]), data
        assert data["error"]["code"] and isinstance(data["error"]["fields"], list)
        for f in data["error"]["fields"]:
            assert f["field"] and f["rule"], f
        after = await snapshot(redis_client)
        assert after == before, f"a refused request changed Redis: {changed(before, after)}"
    elif path == "/v1/calls":
        assert status in (200, 202) and data["status"] in ("accepted", "duplicate"), data
    elif path == "/v1/calls:batch":
        assert status == 200 and len(data["results"]) == sum(data[k] for k in
                                                             ("accepted", "duplicate", "conflict", "rejected"))
    else:  # a campaign launch: per-row errors in the report, never a crash
        assert status in (200, 201) and data["rows"] >= data["valid"], data
        if "dryRun" in path:
            after = await snapshot(redis_client)
            assert after == before, f"a dry run stored something: {changed(before, after)}"


# --- poisoned queues --------------------------------------------------------------------------------


class _CreatesFile:
    """Unpickling this opens (creates) a file: proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


async def _state_and_error(redis: aioredis.Redis, keys: Keys, job_id: str) -> tuple[str | None, str | None]:
    state, error = await redis.hmget(keys.job(job_id), ["state", "err"])  # type: ignore[misc]  # redis-py's union
    return (None if state is None else state.decode()), (None if error is None else error.decode())


def _job(**fields: Any) -> bytes:
    return json.dumps({"t": 1, "f": "dial", "a": [], "k": {}, "et": int(time.time() * 1000), **fields}).encode()


@pytest.mark.slow
async def test_r4_poisoned_job_keys_and_queues_are_refused_and_the_worker_keeps_going(
    settings: Settings, redis_client: aioredis.Redis, procs: Procs, tmp_path: Path
) -> None:
    s = fault_settings(settings, rate_limit=0)
    sim = SimProcess(procs, settings_env(s))
    await sim.start()
    s = s.model_copy(update={"api_base_url": sim.url})
    keys = Keys(s.key_prefix)
    marker = tmp_path / "pickle-was-executed"
    evil = _CreatesFile(marker)
    now = int(time.time() * 1000)
    # Payloads with no ledger record behind them: (arq job payload, expected words of the reason).
    bare: dict[str, tuple[bytes, str]] = {
        "garbage": (b"\x80\x04not json, not pickle", "not a JSON object"),
        "pickle-object": (pickle.dumps(evil), "not a JSON object"),
        "pickle-job": (pickle.dumps({"t": 1, "f": "dial", "a": [evil], "k": {}, "et": now}), "not a JSON object"),
        "json-list": (b"[1, 2, 3]", "not a JSON object"),
        "json-string": (b'"dial"', "not a JSON object"),
        "other-function": (_job(f="os.system", a=["touch " + str(marker)]), "unknown function"),
        "no-function": (json.dumps({"a": [], "k": {}}).encode(), "unknown function"),
        "args-not-a-list": (_job(a="x"), "arguments"),
        "try-not-a-number": (_job(t="x"), ""),
        "time-not-a-number": (_job(et="yesterday"), ""),
        "kwargs-named-ctx": (_job(k={"ctx": 1}), ""),
        "huge-garbage": (b"{" + b"x" * 2_000_000, "not a JSON object"),
        "id with spaces;$(touch x)": (b"garbage", "not a JSON object"),
    }
    for job_id, (payload, _reason) in bare.items():
        await redis_client.set(keys.arq_job(job_id), payload)
        await redis_client.zadd(keys.queue(5), {job_id: now})
    # Jobs the producer stored properly, then tampered with: their calls must not be made.
    tampering = ["pickle payload", "kwargs named ctx", "et not a number", "prio not a number", "unknown state",
                 "invalid stored body", "no body", "ledger key is a string", "arq job key is a hash"]
    ids = await enqueue_all(redis_client, s, [body(f"4000000{i:02d}", priority=5) for i in range(len(tampering))])
    tampered = dict(zip(tampering, ids, strict=True))
    await redis_client.set(keys.arq_job(tampered["pickle payload"]),
                           pickle.dumps({"t": 1, "f": "dial", "a": [evil], "k": {}}))
    await redis_client.set(keys.arq_job(tampered["kwargs named ctx"]), _job(k={"ctx": 1}))
    await redis_client.set(keys.arq_job(tampered["et not a number"]), _job(et="yesterday"))
    await redis_client.hset(keys.job(tampered["prio not a number"]), mapping={"prio": "x", "attempts": "many"})  # type: ignore[misc]  # redis-py's union
    await redis_client.hset(keys.job(tampered["unknown state"]), "state", "weird")  # type: ignore[misc]  # redis-py's union
    await redis_client.hset(keys.job(tampered["invalid stored body"]), "body",  # type: ignore[misc]  # redis-py's union
                            json.dumps({"called": "1;reboot", "playList": []}))
    # The whole body replaced: its continuation pieces (a body over 64 bytes, see enqueue.lua) go too.
    await redis_client.hdel(keys.job(tampered["invalid stored body"]), "b1", "b2", "b3")  # type: ignore[misc]  # redis-py's union
    await redis_client.hdel(keys.job(tampered["no body"]), "body", "called")  # type: ignore[misc]  # redis-py's union
    await redis_client.delete(keys.job(tampered["ledger key is a string"]))
    await redis_client.set(keys.job(tampered["ledger key is a string"]), "a string where a hash belongs")
    await redis_client.delete(keys.arq_job(tampered["arq job key is a hash"]))
    await redis_client.hset(keys.arq_job(tampered["arq job key is a hash"]), "a hash", "where a string belongs")  # type: ignore[misc]  # redis-py's union
    # Queue entries arq itself must cope with: an id that is not UTF-8, a score of -inf.
    poison_members: dict[bytes, float] = {b"\xff\xfe not utf-8": now, b"minus-infinity": float("-inf")}
    await redis_client.zadd(keys.queue(5), poison_members)
    await redis_client.set(keys.arq_job("minus-infinity"), b"garbage")

    worker = await procs.start("worker", "worker", "--queues", "5", env=settings_env(s))
    outcome: dict[str, str] = {}

    async def settled() -> bool:
        left = {m.decode(errors="replace") for m in await redis_client.zrange(keys.queue(5), 0, -1)}
        return not left or not worker.alive

    try:
        await wait_until(settled, 30, 0.2, "poisoned queue emptied")
    except AssertionError:
        pass
    alive_after_poison = worker.alive
    left = [m for m in await redis_client.zrange(keys.queue(5), 0, -1)]
    good = await enqueue_all(redis_client, s, [body("49999999", priority=5)])

    async def good_sent() -> bool:
        rec = (await load_records(redis_client, s, good))[good[0]]
        return (rec is not None and rec.state == State.SENT) or not worker.alive

    if worker.alive:
        await wait_until(good_sent, 30, 0.2, "good job sent after the poison")
    good_rec = (await load_records(redis_client, s, good))[good[0]]
    # Raw fields: a tampered record may not decode (that is the point).
    records = {j: await _state_and_error(redis_client, keys, j) for j in [*bare, *tampered.values()]
               if j != tampered["ledger key is a string"]}
    log = worker.output()
    await sim.sync()
    dialled = sorted({str(e["called"]) for e in sim.requests})
    for label, job_id in [*((j, j) for j in bare), *tampered.items()]:
        rec = records.get(job_id)
        outcome[label] = f"{rec[0]}: {rec[1]}" if rec is not None else "refused, reason in the log"
    report("R4 poisoned queues", {
        "payloads": len(bare) + len(tampered) + 2,
        "worker log lines naming an error": sum(1 for line in log.splitlines() if "ERROR" in line),
        "worker alive after the poison": alive_after_poison,
        "queue entries left": len(left),
        "pickle executed (file created)": marker.exists(),
        "numbers dialled": dialled,
        "good job after the poison": good_rec.state if good_rec else None,
        **{f"  {k[:30]}": v[:100] for k, v in outcome.items()},
    })

    assert not marker.exists(), "a pickle payload was executed"
    assert alive_after_poison and worker.alive, f"the worker died on poison: {log[-3000:]}"
    assert not left, f"poisoned entries never left the queue: {left}"
    assert good_rec is not None and good_rec.state == State.SENT
    assert dialled == ["49999999"], f"a poisoned or tampered job was dialled: {dialled}"
    for job_id, (_payload, reason) in bare.items():
        state, error = records[job_id]
        assert state == State.DEAD and error and reason in error, (job_id, state, error)
        assert await redis_client.zscore(keys.dead, job_id) is not None, job_id
    for label, job_id in tampered.items():
        if label == "ledger key is a string":
            # No record can be written where a string sits: refused, with the reason in the log.
            assert any(job_id in line and "WRONGTYPE" in line for line in log.splitlines()), label
            continue
        state, error = records[job_id]
        assert state == State.DEAD and error, (label, state, error)
        assert await redis_client.zscore(keys.dead, job_id) is not None, label


# --- numbers from outside: result callbacks and session cookies ---------------------------------------


async def test_r4_callbacks_and_cookies_with_nasty_numbers_and_a_rearranged_signed_body(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    """Issue 14 items 2 and 3: talkDuration "²" (str.isdigit() took it, int() refused it) made the job
    unreadable; a cookie ``dialer_session=².x`` was a 500; a captured signed event regrouped around the comma
    of releaseTime still verified."""
    from tests.helpers import event, post, serving
    from worker.http.auth import COOKIE
    from worker.ledger.transitions import Ledger
    from worker.provider.signature import sign

    shared = "r4-callback-shared-key-0123"
    keyed = settings.model_copy(update={"callback_shared_key": SecretStr(shared), "http_rate_limit": 0})

    def signed(e: dict[str, str]) -> dict[str, str]:
        return {**e, "signature": sign(e, shared, e["timestamp"], e["nonce"], "sha256")}

    durations = ["²", "\u0663", "\uff17", "1_0", " 7", "+7", "-1", "7.5", "9" * 30, ""]
    statuses: dict[str, int] = {}
    reads: dict[str, int] = {}
    async with serving(keyed, redis_client) as (url, served), aiohttp.ClientSession() as s:
        ledger, producer, keys = Ledger(redis_client, served), Producer(redis_client, served), Keys(served.key_prefix)
        auth = {"Authorization": "Bearer callbacks-test-api-key-0123"}
        jobs = [f"r4-tk-{i}" for i in range(len(durations) + 2)]
        for i, job in enumerate(jobs):
            await producer.enqueue(body(f"59000001{i:02d}"), job_id=job)
            assert await ledger.mark_sending(job)
            await ledger.mark_sent(job, f"R4-SN-{i}")
        for i, talk in enumerate(durations):
            statuses[repr(talk)], _ = await post(url, signed(event(f"R4-SN-{i}", "1", talkDuration=talk)))
        await redis_client.hset(keys.job(jobs[-2]), "tk", "²")  # type: ignore[misc]  # as an old version stored it
        for job in jobs[:-1]:
            async with s.get(f"{url}/v1/calls/{job}", headers=auth) as r:
                reads[job] = r.status
                if r.status == 200:
                    assert (await r.json())["talk_duration_s"] in (None, 0, 10 ** 30 - 1, 7), job
        # A captured signed answered event, its releaseTime's comma used to regroup the fields.
        captured = signed(event(f"R4-SN-{len(jobs) - 1}", "1", releaseTime="2025/01/01,10:00:07:000"))
        forged = {k: v for k, v in captured.items() if k != "releaseTime"}
        forged["releaseReason"] = "1,releaseTime=2025/01/01,10:00:07:000"
        same_signature = sign(forged, shared, forged["timestamp"], forged["nonce"], "sha256") == captured["signature"]
        rearranged, data = await post(url, forged)
        record = await ledger.get(jobs[-1])
        cookie_statuses = {}
        for stamp in ("²", "\u0661" * 10, "1_700_000_000"):
            headers = {"Cookie": f"{COOKIE}={stamp}.x"}
            async with s.get(f"{url}/dashboard/data", headers=headers) as r:
                cookie_statuses[repr(stamp)] = r.status
    report("R4 numbers from outside and signed-body ambiguity", {
        "callbacks with a nasty talkDuration (status)": statuses,
        "job reads afterwards (status)": f"{sum(1 for v in reads.values() if v == 200)} of {len(reads)} 200",
        "rearranged signed body: same signature / status": f"{same_signature} / {rearranged} "
                                                            f"{data['error']['code'] if rearranged >= 400 else ''}",
        "session cookies with non-ASCII numbers (status)": cookie_statuses,
    })
    assert set(statuses.values()) == {200}, statuses
    assert set(reads.values()) == {200}, reads
    assert same_signature and rearranged == 400 and data["error"]["code"] == "ambiguous_callback", data
    assert record is not None and record.outcome is None
    assert set(cookie_statuses.values()) == {401}, cookie_statuses


# --- input rules of issue 14 (items 4-6): whole matches, reserved ids, nothing valid ------------------


async def test_r4_line_breaks_reserved_ids_and_all_rejected_launches_store_nothing(
    api: str, redis_client: aioredis.Redis, settings: Settings, tmp_path: Path
) -> None:
    """``called`` "13800000077\\n" passed (``$`` matches before a final newline); an Idempotency-Key or
    id with ':' could take a campaign row's or a redial's id in advance; a launch in which every row was
    rejected still created its campaign. Each must be refused (4xx naming the field), storing nothing."""
    producer = Producer(redis_client, settings)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    http: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
        "called with a trailing LF": ("/v1/calls", body("13800000077\n"), {}),
        "called with CRLF, campaign": ("/v1/calls", {**body("13800000077\r\n"), "campaign": "r4"}, {}),
        "called with 33 characters": ("/v1/calls", body("+" + "1" * 32), {}),
        "callBackUrl with a LF": ("/v1/calls", body("13800000001", callBackUrl="http://h/x\nX: 1"), {}),
        "Idempotency-Key <campaign>:<number>": ("/v1/calls", body("13800000001"),
                                                {"Idempotency-Key": "r4:13800000001"}),
        "Idempotency-Key <id>:r1": ("/v1/calls", body("13800000001"), {"Idempotency-Key": "order-1:r1"}),
        "launch: no valid row": ("/v1/campaigns", {"name": "r4-empty", "voiceId": "1",
                                                   "rows": [{"called": "bad"}, {"called": "12ab"}]}, {}),
    }
    outcome: dict[str, str] = {}
    before = await snapshot(redis_client)
    async with aiohttp.ClientSession() as s:
        for label, (path, payload, extra) in http.items():
            async with s.post(api + path, json=payload, headers={**headers, **extra}) as r:
                data = await r.json()
                fields = [f["field"] for f in data.get("error", {}).get("fields", [])]
                outcome[f"HTTP {label}"] = f"{r.status} {data.get('error', {}).get('code')} {fields[:2]}"
                assert r.status == 422 and fields, (label, r.status, data)
        async with s.post(api + "/v1/calls:batch", json={"items": [{**body("13800000001"), "id": "r4:1"}]},
                          headers=headers) as r:
            [item] = (await r.json())["results"]
            outcome["HTTP batch item id with ':'"] = f"{r.status} {item['status']} {item['errors'][0]['field']}"
            assert item["status"] == "rejected"
    for label, kwargs in {"job_id <campaign>:<number>": {"job_id": "r4:13800000001"},
                          "job_id <id>:r1": {"job_id": "x:r1"}}.items():
        try:
            await producer.enqueue(body("13800000001"), **kwargs)
        except InvalidRequest as exc:
            outcome[f"API {label}"] = f"refused {exc.errors[0].field}"
        else:
            raise AssertionError(f"accepted {label}")
    bad = tmp_path / "all-bad.csv"
    bad.write_text("called,id\nbad,\n13800000001,r4:13800000001\n")
    rep = await launch_file(redis_client, settings, bad, LaunchOptions(name="r4-bad", voice_id="1"))
    outcome["launch file, every row rejected"] = (f"{rep.rejected_rows} rejected, nothing_valid="
                                                  f"{rep.nothing_valid}, created={rep.campaign_created}")
    assert rep.nothing_valid and not rep.campaign_created
    after = await snapshot(redis_client)
    outcome["keys changed"] = str(len(changed(before, after)))
    report("R4 issue 14 input rules",
           {"cases": len(outcome) - 1, **{f"  {k[:34]}": v[:90] for k, v in outcome.items()}})
    assert after == before, changed(before, after)
