"""Both release-event signers held against the same fixed data: tests/provider/vectors/release_events.json.

The receiver (``worker.provider.signature.verify``) and the simulator's independent signer
(``worker.sandbox.signing.release_signature``) must each accept every vector marked valid and refuse
every other one; a drift in either fails here. The synthetic vectors were signed with hashlib/hmac from
the ``signed_string`` written by hand in each (checked again below), never with the code under test.
A real signed callback dropped into the file (see vectors/README.md) is checked the same way.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from worker.provider.signature import SIGNATURE_MODES, SIGNATURE_SPACES, verify
from worker.sandbox.signing import release_signature

VECTORS_FILE = Path(__file__).parent / "vectors" / "release_events.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
KEYS = {"name", "shared_key", "mode", "spaces", "body", "valid", "source"}
OPTIONAL = {"signed_string"}


def _id(vector: dict[str, Any]) -> str:
    return str(vector.get("name"))


def test_the_file_is_well_formed() -> None:
    assert VECTORS, "no vectors"
    names = [_id(v) for v in VECTORS]
    assert len(set(names)) == len(names), "vector names must be unique"
    for v in VECTORS:
        assert KEYS <= set(v) <= KEYS | OPTIONAL, (v.get("name"), sorted(set(v) ^ KEYS))
        assert v["mode"] in SIGNATURE_MODES and v["spaces"] in SIGNATURE_SPACES, v["name"]
        assert isinstance(v["valid"], bool) and isinstance(v["shared_key"], str), v["name"]
        body = v["body"]
        assert {"timestamp", "nonce", "signature"} <= set(body), v["name"]
        assert all(isinstance(x, str) for x in body.values()), f"{v['name']}: the provider sends strings only"


def test_every_mode_and_space_handling_has_a_valid_vector_with_spaces_and_commas() -> None:
    covered = {
        (v["mode"], v["spaces"]) for v in VECTORS
        if v["valid"] and any(" " in x for x in v["body"].values()) and any("," in x for x in v["body"].values())
    }
    assert covered == {(m, s) for m in SIGNATURE_MODES for s in SIGNATURE_SPACES}


def test_each_space_handling_refuses_what_the_other_signed() -> None:
    refused = {v["spaces"] for v in VECTORS if not v["valid"] and "checked" in v["name"]}
    assert refused == set(SIGNATURE_SPACES)


@pytest.mark.parametrize("vector", [v for v in VECTORS if "signed_string" in v], ids=_id)
def test_signed_string_is_the_documented_text_and_hashes_to_the_signature(vector: dict[str, Any]) -> None:
    # A third, trivial signer: hashlib over the string written in the file.
    body, key, text = vector["body"], vector["shared_key"], vector["signed_string"]
    assert text.startswith(f"{key}_{body['timestamp']}_{body['nonce']}_")
    fields = text[len(f"{key}_{body['timestamp']}_{body['nonce']}_"):]
    if vector["spaces"] == "strip":
        assert " " not in fields
    data = text.encode()
    raw = (hashlib.sha256(data).digest() if vector["mode"] == "sha256"
           else hmac.new(key.encode(), data, hashlib.sha256).digest())
    assert base64.b64encode(raw).decode() == body["signature"]


@pytest.mark.parametrize("vector", VECTORS, ids=_id)
def test_receiver_verify(vector: dict[str, Any]) -> None:
    assert verify(vector["body"], vector["shared_key"], vector["mode"], spaces=vector["spaces"]) is vector["valid"]


@pytest.mark.parametrize("vector", VECTORS, ids=_id)
def test_simulator_signer(vector: dict[str, Any]) -> None:
    body = vector["body"]
    signature = release_signature(body, vector["shared_key"], body["timestamp"], body["nonce"], vector["mode"],
                                  vector["spaces"])
    assert (signature == body["signature"]) is vector["valid"]
