"""The release-event signature of provider-api.md §3, checked against vectors built here with hashlib."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from worker.provider.signature import SignatureMode, ambiguities, sign, verify

KEY = "shared-key-123"
TS = "1645524163326"
NONCE = "-1482421808053124529"
EVENT = {
    "callSerialNo": "1197765398201387012",
    "called": "88880067",
    "releaseReason": "0",
    "talkDuration": "0",
    "recordfile": "",
}
# The fields sorted by name, joined k=v with commas, written out by hand.
JOINED = "callSerialNo=1197765398201387012,called=88880067,recordfile=,releaseReason=0,talkDuration=0"
MATERIAL = f"{KEY}_{TS}_{NONCE}_{JOINED}".encode()


def test_sha256_known_vector() -> None:
    expected = base64.b64encode(hashlib.sha256(MATERIAL).digest()).decode()
    assert sign(EVENT, KEY, TS, NONCE, "sha256") == expected


def test_hmac_sha256_known_vector() -> None:
    expected = base64.b64encode(hmac.new(KEY.encode(), MATERIAL, hashlib.sha256).digest()).decode()
    assert sign(EVENT, KEY, TS, NONCE, "hmac-sha256") == expected


def test_modes_differ() -> None:
    assert sign(EVENT, KEY, TS, NONCE, "sha256") != sign(EVENT, KEY, TS, NONCE, "hmac-sha256")


def test_timestamp_nonce_signature_fields_are_not_signed_and_order_does_not_matter() -> None:
    reordered = dict(reversed(list(EVENT.items())))
    noisy = {**reordered, "timestamp": "999", "nonce": "1", "signature": "whatever"}
    assert sign(noisy, KEY, TS, NONCE, "sha256") == sign(EVENT, KEY, TS, NONCE, "sha256")


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        sign(EVENT, KEY, TS, NONCE, "md5")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["sha256", "hmac-sha256"])
def test_verify_round_trip_and_tampering(mode: SignatureMode) -> None:
    body = {**EVENT, "timestamp": TS, "nonce": NONCE}
    body["signature"] = sign(body, KEY, TS, NONCE, mode)
    assert verify(body, KEY, mode)

    assert not verify({**body, "called": "88880068"}, KEY, mode)
    assert not verify({**body, "extra": "x"}, KEY, mode)
    assert not verify({**body, "timestamp": "1645524163327"}, KEY, mode)
    assert not verify({**body, "nonce": "1"}, KEY, mode)
    assert not verify(body, "other-key", mode)
    other: SignatureMode = "hmac-sha256" if mode == "sha256" else "sha256"
    assert not verify(body, KEY, other)


@pytest.mark.parametrize("missing", ["signature", "timestamp", "nonce"])
def test_verify_false_when_a_part_is_missing(missing: str) -> None:
    body = {**EVENT, "timestamp": TS, "nonce": NONCE}
    body["signature"] = sign(body, KEY, TS, NONCE, "sha256")
    del body[missing]
    assert not verify(body, KEY, "sha256")


def test_verify_false_on_non_string_parts() -> None:
    body: dict[str, object] = {**EVENT, "timestamp": int(TS), "nonce": NONCE, "signature": 5}
    assert not verify(body, KEY, "sha256")  # type: ignore[arg-type]
    surrogate = {**EVENT, "called": "\ud800", "timestamp": TS, "nonce": NONCE, "signature": "x"}
    assert not verify(surrogate, KEY, "sha256")


def test_a_regrouped_body_signs_the_same_string_and_is_reported_ambiguous() -> None:
    """Issue 14 item 3: the provider's scheme joins k=v with commas and releaseTime holds one, so fields can
    be regrouped under one signature; ambiguities() names what makes a body's signed string ambiguous."""
    captured = {"callSerialNo": "1", "releaseReason": "1", "releaseTime": "2022/02/22,10:04:36:318",
                "talkDuration": "6", "timestamp": "1645524163326", "nonce": "-1482421808053124529"}
    forged = {k: v for k, v in captured.items() if k != "releaseTime"}
    forged["releaseReason"] = "1,releaseTime=2022/02/22,10:04:36:318"
    for mode in ("sha256", "hmac-sha256"):
        sig = sign(captured, "k", captured["timestamp"], captured["nonce"], mode)  # type: ignore[arg-type]
        assert verify({**forged, "signature": sig}, "k", mode)  # type: ignore[arg-type]  # why the check exists
    assert ambiguities(captured) == []
    assert [f for f, _ in ambiguities(forged)] == ["releaseReason"]
    # The prefix key_timestamp_nonce_: a "_" in the nonce (or a non-digit stamp) could shift it.
    shifted = {**captured, "nonce": "1_2", "timestamp": "16455x"}
    assert sorted(f for f, _ in ambiguities(shifted)) == ["nonce", "timestamp"]
    assert [f for f, _ in ambiguities({**captured, "a,b": "x", "c=d": "y"})] == ["a,b", "c=d"]
    assert [f for f, _ in ambiguities({**captured, "extra": ["x,y=z"]})] == ["extra"]
    # What the provider sends stays acceptable: commas in times, "=" before any comma (a URL's query).
    assert ambiguities({**captured, "recordfile": "https://r.example/x?id=7&b=2", "called": "+86 138"}) == []
