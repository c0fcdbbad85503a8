"""The caller's header fields built without pydantic (hub.envelopes.call_fields) sign the
same bytes as the RequestHeader model, with and without the fields that appear only when
set, and the node's side reads them back as that model."""

from __future__ import annotations

from typing import Any

import pytest

from hub.canonical import b64e
from hub.crypto import blake2b_256
from hub.envelopes import (
    Bulk,
    RequestHeader,
    ResultRef,
    call_fields,
    pack_request,
    request_fields,
    unpack_request,
)
from hub.keys import KeyPair

KLAUS = KeyPair.generate("klaus@geomar")
NODE = KeyPair.generate("node:hereon/n1")

CIPHERTEXT = b"c" * 120
BASE: dict[str, Any] = {
    "id": "AbCdEfGhIjKlMnOpQrStUv",
    "caller": "klaus@geomar",
    "kid": KLAUS.kid,
    "site": "hereon",
    "module": "climate",
    "function": "mean",
    "time": "2026-11-30T18:00:00.123456Z",
    "nonce": b64e(b"n" * 16),
    "timeout_ms": 30_000,
    "reply": "fh.inbox.geomar.klaus.tok",
    "schema_hash": "ab" * 32,
    "payload_hash": blake2b_256(CIPHERTEXT).hex(),
    "payload_size": len(CIPHERTEXT),
    "wraps": {NODE.kid: b64e(b"w" * 72)},
}
BULK = Bulk(transfer="0" * 32, size=10, hash="ef" * 32, chunk_size=1024, arg="da")
REF = ResultRef(site="awi", id="ZyXwVuTsRqPoNmLkJiHg", hash="12" * 32)
OPTIONS: list[dict[str, Any]] = [
    {},
    {"schema_hash": None},
    {"bulk": BULK},
    {"refs": {"field": REF}},
    {"keep_for": 0},
    {"keep_for": 3600, "bulk": BULK, "refs": {"a": REF, "b": REF}},
    {"reply_max": 1024 * 1024},
]


@pytest.mark.parametrize("options", OPTIONS)
def test_the_fast_fields_are_the_models_fields(options: dict[str, Any]) -> None:
    values = {**BASE, **options}
    assert call_fields(**values) == request_fields(RequestHeader(**values))


@pytest.mark.parametrize("options", OPTIONS)
def test_a_request_packed_from_the_fast_fields_is_the_same_bytes_and_reads_back(
    options: dict[str, Any],
) -> None:
    values = {**BASE, **options}
    fast = pack_request(call_fields(**values), CIPHERTEXT, KLAUS.signing_key)
    model = pack_request(RequestHeader(**values), CIPHERTEXT, KLAUS.signing_key)
    assert fast == model  # Ed25519 signatures are deterministic
    read = unpack_request(fast, KLAUS.sign_public)
    assert read.header == RequestHeader(**values)
