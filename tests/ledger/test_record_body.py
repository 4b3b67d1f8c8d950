"""The body in the ledger hash, stored in pieces of at most 64 bytes (``body``, ``b1``, ``b2`` ...) so that
a queued job's hash stays listpack-encoded at Redis' default ``hash-max-listpack-value`` (64): round trips
through every reader, UTF-8 boundaries, the encoding itself, and the reserved continuation names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from itertools import pairwise
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from worker.http import create_app
from worker.ledger.producer import CallJob, Producer
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.models import CallRequest
from worker.settings import Settings
from worker.store.keys import Keys

PIECE = 64
KEY = "test-api-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


def seed_shaped(i: int = 0) -> dict[str, Any]:
    """The shape bench P5 measures (157 bytes as compact JSON)."""
    return {
        "called": f"1380{i:07d}",
        "playList": [{"templateId": "tpl-reminder", "templateParams": [f"{i % 100:02d}", "10:30"]}],
        "callerPresent": "4001234567",
        "playTimes": 1,
        "priority": "9",
    }


def ascii_300() -> dict[str, Any]:
    b = {
        "called": "8613800000001",
        "playList": [{"templateId": "tpl-long", "templateParams": [c * 32 for c in "abcd"] + ["e" * 28]}],
        "callBackUrl": "https://cb.example.com/voice",
    }
    assert len(stored(b)) == 300
    return b


def chinese(lead: int) -> dict[str, Any]:
    """Template params of 3-byte characters, shifted by ``lead`` ASCII bytes so that piece ends fall on each
    byte of a character in turn."""
    params = ["a" * lead + "尊敬的客户您好", "您的订单已发货", "请注意查收", "如有疑问请致电", "客服热线"]
    return {"called": "8613800000001", "playList": [{"templateId": "tpl-中文", "templateParams": params}]}


def emoji() -> dict[str, Any]:
    """4-byte characters (and 2-byte ones), at every offset."""
    params = ["x" * k + "😀🎉📞✅é" for k in range(4)] + ["Zoë 東京 🚀"]
    return {"called": "8613800000001", "playList": [{"templateId": "t", "templateParams": params}]}


def short() -> dict[str, Any]:
    b = {"called": "8899", "playList": [{"voiceId": "100001"}]}
    assert len(stored(b)) <= PIECE
    return b


def huge() -> dict[str, Any]:
    """The largest body the seed's limits allow, near enough: its JSON (control characters escaped as
    \\u00XX, ~9.5 KB) needs more fields than redis.conf's hash-max-listpack-entries (128)."""
    item = {"voiceFileName": "f" * 256, "templateParams": ["\x01" * 32] * 10}  # one source: the longest
    return {"called": "8613800000001", "playList": [item] * 5, "callBackUrl": "https://cb.example.com/" + "u" * 200}


def stored(body: dict[str, Any]) -> bytes:
    """What the producer stores for ``body``: compact JSON, UTF-8 (no \\u escapes for non-ASCII)."""
    return CallRequest.model_validate(body).model_dump_json(by_alias=True, exclude_none=True,
                                                            exclude_unset=True).encode()


BODIES = {
    "seed-shaped": seed_shaped(),
    "ascii-300": ascii_300(),
    **{f"chinese+{lead}": chinese(lead) for lead in range(3)},
    "emoji": emoji(),
    "short": short(),
    "huge": huge(),
}


def pieces(raw: dict[bytes, bytes]) -> list[bytes]:
    """The body's pieces in order, checking that the continuation fields are exactly b1..bN."""
    names = sorted((k for k in raw if k.startswith(b"b") and k[1:].isdigit()), key=lambda k: int(k[1:]))
    assert names == [b"b%d" % k for k in range(1, len(names) + 1)]
    return [raw[b"body"], *(raw[n] for n in names)]





@pytest.mark.parametrize("name", list(BODIES))
async def test_body_is_stored_in_pieces_and_read_back_whole(
    name: str, redis_client: aioredis.Redis, producer: Producer, ledger: Ledger, keys: Keys
) -> None:
    body = BODIES[name]
    want = stored(body)
    results = await producer.enqueue_many([CallJob(body, job_id="one")])
    assert results[0].status == "accepted"
    raw: dict[bytes, bytes] = await redis_client.hgetall(keys.job("one"))  # type: ignore[misc]
    parts = pieces(raw)
    assert b"".join(parts) == want
    assert all(0 < len(p) <= PIECE for p in parts)
    if len(want) <= PIECE:
        assert parts == [want]  # as before pieces: just `body`
    for p in parts:
        p.decode("utf-8")  # no character is cut: each piece decodes on its own
    for p, q in pairwise(parts):
        # A piece is cut short only where the next character would not fit whole.
        first = len(q.decode("utf-8")[0].encode())
        assert len(p) == PIECE or (first > 1 and len(p) + first > PIECE)
    expected = CallRequest.model_validate(body)
    record = await ledger.get("one")
    assert record is not None and record.body == expected.body() and record.request() == expected
    assert record.as_dict()["body"] == expected.body()
    assert not any(k.startswith("b") and k[1:].isdigit() for k in record.as_dict())


async def test_pieces_are_cut_short_to_keep_characters_whole(
    redis_client: aioredis.Redis, producer: Producer, keys: Keys
) -> None:
    """The test data does put characters across 64-byte cuts (else the checks above prove little)."""
    names = [n for n in BODIES if not stored(BODIES[n]).isascii()]
    results = await producer.enqueue_many([CallJob(BODIES[n], job_id=f"j{i}") for i, n in enumerate(names)])
    assert {r.status for r in results} == {"accepted"}
    short = set()
    for i, n in enumerate(names):
        parts = pieces(await redis_client.hgetall(keys.job(f"j{i}")))  # type: ignore[misc]
        if any(len(p) < PIECE for p in parts[:-1]):
            short.add(n)
    assert {"emoji", "chinese+0", "chinese+1"} <= short, short


async def test_body_pieces_through_the_scripts_replies(producer: Producer, ledger: Ledger) -> None:
    """claim and record_outcome return HGETALL from Lua (a flat list): the record is joined there too."""
    body = chinese(1)
    expected = CallRequest.model_validate(body).body()
    await producer.enqueue(body, job_id="j")
    claim = await ledger.claim_run("j")
    assert claim.verdict == "run" and claim.record is not None and claim.record.body == expected
    assert await ledger.mark_sending("j")
    await ledger.mark_sent("j", "SN-1")
    updated = await ledger.record_outcome("j", "answered", "normal", {"tk": "12"})
    assert updated is not None and updated.state == State.SENT and updated.body == expected
    assert updated.talk_duration_s == 12
    assert [r.job_id for r in await ledger.list_dead()] == []
    await producer.enqueue(ascii_300(), job_id="d")
    assert await ledger.dead_letter("d", "boom")
    [dead] = await ledger.list_dead()
    assert dead.job_id == "d" and dead.body == CallRequest.model_validate(ascii_300()).body()


async def test_continuation_names_are_reserved(producer: Producer, ledger: Ledger) -> None:
    await producer.enqueue(ascii_300(), job_id="r")
    for name in ("b1", "b2", "b17", "body"):
        with pytest.raises(ValueError, match="reserved"):
            await ledger.record_outcome("r", "answered", "normal", {name: "x"})
    rec = await ledger.record_outcome("r", "answered", "normal", {"bx": "kept"})
    assert rec is not None and rec.body == CallRequest.model_validate(ascii_300()).body()


async def test_queued_seed_shaped_job_is_a_listpack_at_default_config(
    redis_client: aioredis.Redis, producer: Producer, keys: Keys
) -> None:
    # The test server runs Redis' defaults (tests/conftest.py passes no listpack option).
    assert await redis_client.config_get("hash-max-listpack-value") == {"hash-max-listpack-value": "64"}
    results = await producer.enqueue_many([seed_shaped(i) for i in range(20)], campaign="c")
    assert {r.status for r in results} == {"accepted"}
    for r in results:
        assert r.job_id is not None
        key = keys.job(r.job_id)
        assert await redis_client.object("encoding", key) == b"listpack"
        raw: dict[bytes, bytes] = await redis_client.hgetall(key)  # type: ignore[misc]
        assert all(len(k) <= PIECE and len(v) <= PIECE for k, v in raw.items())
        assert len(pieces(raw)) == 3  # 157 bytes


async def test_body_of_more_pieces_than_a_listpack_holds(
    redis_client: aioredis.Redis, producer: Producer, ledger: Ledger, keys: Keys
) -> None:
    """Past hash-max-listpack-entries the record is a hash table: bigger, still read back whole. (The
    compiled-in default is 512 entries, redis.conf's 128: the server is set to the smaller one here.)"""
    before = await redis_client.config_get("hash-max-listpack-entries")
    await redis_client.config_set("hash-max-listpack-entries", 128)
    try:
        await producer.enqueue(huge(), job_id="huge")
    finally:
        await redis_client.config_set("hash-max-listpack-entries", before["hash-max-listpack-entries"])
    assert await redis_client.hlen(keys.job("huge")) > 128  # type: ignore[misc]
    assert await redis_client.object("encoding", keys.job("huge")) == b"hashtable"
    record = await ledger.get("huge")
    assert record is not None and record.request() == CallRequest.model_validate(huge())


@pytest.fixture
async def api(settings: Settings, redis_client: aioredis.Redis) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(settings.model_copy(update={"api_keys": [SecretStr(KEY)], "http_rate_limit": 0}),
                     redis_client, open_provider=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


@pytest.mark.parametrize("name", ["ascii-300", "chinese+2", "emoji"])
async def test_http_job_read_returns_the_whole_body(name: str, api: TestClient[Any, Any]) -> None:
    body = BODIES[name]
    r = await api.post("/v1/calls", json=body, headers={**AUTH, "Idempotency-Key": "h1"})
    assert r.status == 202, await r.text()
    expected = CallRequest.model_validate(body).body()
    assert (await r.json())["job"]["body"] == expected
    got = await api.get("/v1/calls/h1", headers=AUTH)
    assert got.status == 200
    assert (await got.json())["body"] == expected
    # A repeat is told from a conflict by comparing the stored body (read whole) with the new one.
    again = await api.post("/v1/calls", json=body, headers={**AUTH, "Idempotency-Key": "h1"})
    assert again.status == 200 and (await again.json())["job"]["body"] == expected
    other = {**body, "playTimes": 2}
    batch = await api.post("/v1/calls:batch", json={"items": [{**body, "id": "h1"}, {**other, "id": "h1"}]},
                           headers=AUTH)
    assert batch.status == 200, await batch.text()
    assert [r["status"] for r in (await batch.json())["results"]] == ["duplicate", "conflict"]
