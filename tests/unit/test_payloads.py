"""The one sealing API of client and node (hub.crypto) and the stored form of a result."""

from __future__ import annotations

import json

import pytest

from hub.crypto import (
    NONCE_BYTES,
    WrappedPayload,
    open_content_key,
    open_payload,
    open_secret,
    rewrap,
    seal_payload,
)
from hub.envelopes import StoredResult, pack_stored_result, unpack_stored_result
from hub.errors import DecryptionError, IntegrityError
from hub.keys import KeyPair

NODE = KeyPair.generate("node:hereon/n1")
KLAUS = KeyPair.generate("klaus@geomar")
ANNA = KeyPair.generate("anna@geomar")
EVE = KeyPair.generate("eve@geomar")


def _sealed_for_klaus(plaintext: bytes = b"result") -> WrappedPayload:
    return seal_payload(plaintext, NODE.box_secret, NODE.box_public, {KLAUS.kid: KLAUS.box_public})


def test_a_payload_sealed_for_a_recipient_opens_with_its_key_and_names_its_sender() -> None:
    sealed = _sealed_for_klaus()
    assert open_payload(sealed, KLAUS.kid, KLAUS.box_secret, sender=NODE.box_public) == b"result"
    assert sealed.content_key is not None
    key = open_content_key(sealed.wraps, KLAUS.kid, KLAUS.box_secret, sender=NODE.box_public)
    assert key == sealed.content_key, "the recipient gets the sealer's content key"


def test_each_seal_uses_a_fresh_content_key() -> None:
    assert _sealed_for_klaus().content_key != _sealed_for_klaus().content_key


def test_no_nonce_is_used_twice_within_a_seal_or_across_seals() -> None:
    recipients = {k.kid: k.box_public for k in (KLAUS, ANNA, EVE)}
    nonces: list[bytes] = []
    for _ in range(20):
        sealed = seal_payload(b"result", NODE.box_secret, NODE.box_public, recipients)
        nonces.append(sealed.ciphertext[:NONCE_BYTES])
        # a wrap is the sender's public key, then the Box's nonce and ciphertext
        nonces += [w[32 : 32 + NONCE_BYTES] for w in sealed.wraps.values()]
        assert sealed.content_key is not None and sealed.content_key not in b"".join(nonces)
        for k in (KLAUS, ANNA, EVE):
            assert open_payload(sealed, k.kid, k.box_secret, sender=NODE.box_public) == b"result"
    assert len(set(nonces)) == len(nonces) == 20 * 4


def test_a_payload_wrapped_by_another_key_than_the_expected_sender_is_refused() -> None:
    forged = seal_payload(b"x", EVE.box_secret, EVE.box_public, {KLAUS.kid: KLAUS.box_public})
    assert open_payload(forged, KLAUS.kid, KLAUS.box_secret) == b"x"  # no sender: no check
    with pytest.raises(DecryptionError, match="expected sender"):
        open_payload(forged, KLAUS.kid, KLAUS.box_secret, sender=NODE.box_public)


def test_a_payload_with_no_wrap_for_me_or_a_wrong_secret_does_not_open() -> None:
    sealed = _sealed_for_klaus()
    with pytest.raises(DecryptionError, match=f"no content key is wrapped for key {ANNA.kid}"):
        open_payload(sealed, ANNA.kid, ANNA.box_secret)
    with pytest.raises(DecryptionError):
        open_payload(sealed, KLAUS.kid, EVE.box_secret)


def test_a_holder_rewraps_the_same_content_key_for_a_colleague() -> None:
    sealed = _sealed_for_klaus()
    more = rewrap(
        sealed, KLAUS.kid, KLAUS.box_secret, KLAUS.box_public, {ANNA.kid: ANNA.box_public}
    )
    shared = WrappedPayload(sealed.ciphertext, {**sealed.wraps, **more})
    assert open_payload(shared, ANNA.kid, ANNA.box_secret, sender=KLAUS.box_public) == b"result"


def test_a_message_under_the_content_key_opens_only_with_it() -> None:
    sealed = _sealed_for_klaus()
    assert sealed.content_key is not None
    with pytest.raises(DecryptionError):
        # one bit of the last byte flipped (setting it to 0 left it as it was 1 time in 256)
        open_secret(sealed.content_key, sealed.ciphertext[:-1] + bytes([sealed.ciphertext[-1] ^ 1]))


def test_a_stored_result_reads_back_and_matches_the_form_kept_by_the_previous_release() -> None:
    wraps = {KLAUS.kid: "AAAA"}
    data = pack_stored_result(wraps, b"ciphertext")
    head, ciphertext = unpack_stored_result(data)
    assert (head, ciphertext) == (StoredResult(wraps=wraps), b"ciphertext")
    old_head = json.dumps({"v": 1, "wraps": wraps}, sort_keys=True).encode()
    old = len(old_head).to_bytes(4, "big") + old_head + b"ciphertext"
    assert unpack_stored_result(old) == (head, ciphertext)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x00", b"\x00\x00\x00\x09{not json", b"\x00\x00\x00\x02{}x", b"\xff\xff\xff\xff{}"],
)
def test_bytes_that_are_not_a_stored_result_are_refused(data: bytes) -> None:
    with pytest.raises(IntegrityError, match="not in fedhub's stored form"):
        unpack_stored_result(data)
