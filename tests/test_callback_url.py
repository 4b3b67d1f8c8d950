"""The callBackUrl as the provider will see it (issue 15, item 1 and ★): its characters and length in both
modes, checked at enqueue and at start-up; the dialer's own route with the job id in its path."""

from __future__ import annotations

import base64
from typing import Any

import pytest
import redis.asyncio as aioredis

from worker.callback_url import (
    CALLBACK_PATH,
    URL_CHARS_RULE,
    for_job,
    job_from_segment,
    max_job_id_chars,
    sent_url,
    url_problem,
)
from worker.errors import InvalidRequest, SettingsError
from worker.ledger.producer import CallJob, Producer
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.rules import valid_job_id
from worker.settings import Settings, load_settings

SEED_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-:./_#?&")


def body(url: str | None = None) -> dict[str, Any]:
    b: dict[str, Any] = {"called": "8613800000001", "playList": [{"voiceId": "100001"}]}
    if url is not None:
        b["callBackUrl"] = url
    return b


@pytest.mark.parametrize("job_id", ["order-42", "spring:8613800000001:r2", "user@example.com", "a.b_c-d:e@f"])
def test_the_job_id_rides_in_the_path_in_seed_characters_and_comes_back(job_id: str) -> None:
    url = for_job("https://d.example.com" + CALLBACK_PATH, job_id)
    segment = url.rsplit("/", 1)[1]
    assert set(url) <= SEED_CHARS
    assert job_from_segment(segment) == job_id
    assert url_problem(url, base64=False) is None and url_problem(url, base64=True) is None


def test_a_segment_that_names_no_job_is_none() -> None:
    assert job_from_segment("") is None
    assert job_from_segment("a b") is None
    assert job_from_segment("x" * 129) is None
    assert valid_job_id("x" * 128) and job_from_segment("x" * 128) == "x" * 128


def test_only_the_dialers_own_route_gets_the_job_id() -> None:
    own = "https://d.example.com" + CALLBACK_PATH
    assert sent_url(own, "j1", "https://d.example.com") == own + "/j1"
    assert sent_url("https://producer.example.com/cb", "j1", "https://d.example.com") == "https://producer.example.com/cb"
    assert sent_url(own, "j1", None) == own  # no public URL: nothing is the dialer's own
    assert sent_url(None, "j1", "https://d.example.com") is None


@pytest.mark.parametrize("url", ["http://h/cb?a=1", "http://h/c%20b", "http://h/~me", "http://h/cb ", "http://h/é"])
def test_characters_outside_the_seed_set_are_refused_in_both_modes(url: str) -> None:
    assert url_problem(url, base64=False) == URL_CHARS_RULE
    assert url_problem(url, base64=True) == URL_CHARS_RULE


def test_base64_mode_counts_the_encoded_length() -> None:
    ok = "http://h/" + "x" * (192 - 9)  # 192 characters: 256 encoded
    over = ok + "x"
    assert len(base64.b64encode(ok.encode())) == 256 and url_problem(ok, base64=True) is None
    assert len(base64.b64encode(over.encode())) > 256
    assert url_problem(over, base64=True) is not None and "192" in (url_problem(over, base64=True) or "")
    assert url_problem(over, base64=False) is None  # plain: 193 of 256
    assert url_problem("http://h/" + "x" * 248, base64=False) is not None


def test_room_for_the_job_id() -> None:
    public = "https://d.example.com"
    base = len(public + CALLBACK_PATH) + 1
    assert max_job_id_chars(public, base64=False) == 256 - base
    assert max_job_id_chars(public, base64=True) == 192 - base


async def test_enqueue_refuses_what_the_provider_would_refuse_on_every_attempt(
    redis_client: aioredis.Redis, settings: Settings
) -> None:
    b64 = Producer(redis_client, settings.model_copy(update={"callback_url_base64": True}))
    plain = Producer(redis_client, settings)
    long_url = "https://producer.example.com/" + "c" * 170  # 199 characters: fine plain, too long encoded
    with pytest.raises(InvalidRequest) as exc:
        await b64.enqueue(body(long_url), job_id="b64-long")
    assert [e.field for e in exc.value.errors] == ["callBackUrl"] and "Base64" in exc.value.errors[0].rule
    assert (await plain.enqueue(body(long_url), job_id="plain-long")).status == "accepted"
    for i, bad in enumerate(("https://p.example.com/cb?x=1", "https://p.example.com/%7Eme")):
        with pytest.raises(InvalidRequest, match="callBackUrl: may contain only"):
            await plain.enqueue(body(bad), job_id=f"bad-{i}")
    # Nothing was stored for a refusal; a batch refuses the item alone.
    ledger = Ledger(redis_client, settings)
    assert await ledger.states(["b64-long", "bad-0", "bad-1", "plain-long"]) == [None, None, None, State.QUEUED]
    res = await b64.enqueue_many([CallJob(body(long_url), job_id="m1"), CallJob(body(), job_id="m2")])
    assert [r.status for r in res] == ["rejected", "accepted"]
    assert res[0].errors[0].field == "callBackUrl"


async def test_the_dialers_own_url_is_checked_with_the_job_id_it_will_carry(
    redis_client: aioredis.Redis, settings: Settings
) -> None:
    public = "https://dialer.example.com/" + "p" * 100
    s = settings.model_copy(update={"public_url": public, "callback_url_base64": True})
    room = max_job_id_chars(public, base64=True)
    producer = Producer(redis_client, s)
    own = public + CALLBACK_PATH
    assert (await producer.enqueue(body(own), job_id="j" * room)).status == "accepted"
    with pytest.raises(InvalidRequest) as exc:
        await producer.enqueue(body(own), job_id="j" * (room + 1))
    assert exc.value.errors[0].field == "callBackUrl" and f"at most {room} characters" in exc.value.errors[0].rule


def test_start_up_refuses_a_public_url_the_provider_would_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIALER_PUBLIC_URL", "https://dialer.example.com/" + "p" * 150)
    monkeypatch.setenv("DIALER_CALLBACK_URL_BASE64", "true")
    with pytest.raises(SettingsError, match=r"DIALER_PUBLIC_URL: .*Base64"):
        load_settings()
    monkeypatch.setenv("DIALER_CALLBACK_URL_BASE64", "false")
    assert load_settings().public_url is not None  # 200 characters fit plain
    monkeypatch.setenv("DIALER_PUBLIC_URL", "https://dialer.example.com/x=1")
    with pytest.raises(SettingsError, match=r"DIALER_PUBLIC_URL: .*may contain only"):
        load_settings()
