"""Signatures, end-to-end encryption and content keys (PyNaCl / libsodium).

* **Signatures** are Ed25519 over ``domain || message``: the domain string names what is
  signed (``fedhub/event/v1``, ``fedhub/request/v1`` ...), so a signature made for one kind
  of object can never be replayed as another. See docs/crypto.md.
* **Payloads** are encrypted once with a fresh 32-byte content key (XSalsa20-Poly1305,
  ``SecretBox``); the content key is then *wrapped* for each recipient with a ``Box``
  between the sender's and the recipient's X25519 keys. Whoever holds a wrapped key can
  open the payload, and the owner can later wrap the same content key for a colleague
  without re-encrypting the data.
* One API for every sealed payload, on the client and the node: :func:`seal_payload`
  (fresh content key, wrapped for each recipient), :func:`open_payload` /
  :func:`open_content_key` (the recipient's side, optionally checking who wrapped it) and
  :func:`rewrap` (the same content key for another recipient); :func:`seal_secret` /
  :func:`open_secret` for further messages under a content key already shared.
* ``Box`` shared keys are cached per (my key, peer key) pair: X25519 costs ~10x an
  encryption with a precomputed key.
"""

from __future__ import annotations

import functools
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

import nacl.bindings
import nacl.exceptions
import nacl.public
import nacl.secret
import nacl.signing

from hub.errors import DecryptionError, SignatureError

__all__ = [
    "CONTENT_KEY_BYTES",
    "NONCE_BYTES",
    "SIGNATURE_BYTES",
    "WrappedPayload",
    "blake2b_256",
    "key_id",
    "new_content_key",
    "open_content_key",
    "open_payload",
    "open_secret",
    "rewrap",
    "seal_payload",
    "seal_secret",
    "sign",
    "unwrap_key",
    "verify",
    "wrap_key",
]

SIGNATURE_BYTES = 64
CONTENT_KEY_BYTES = nacl.secret.SecretBox.KEY_SIZE
#: Nonces of SecretBox and Box alike (XSalsa20: 24 bytes).
NONCE_BYTES = nacl.secret.SecretBox.NONCE_SIZE


def blake2b_256(data: bytes) -> bytes:
    """BLAKE2b with a 32-byte digest."""
    return hashlib.blake2b(data, digest_size=32).digest()


def key_id(public_key: bytes) -> str:
    """Short stable id of a public key: 20 hex chars of BLAKE2b-256 of the key bytes."""
    return hashlib.blake2b(public_key, digest_size=32).hexdigest()[:20]


def sign(signing_key: nacl.signing.SigningKey, domain: bytes, message: bytes) -> bytes:
    """Detached Ed25519 signature over ``domain || message``."""
    return signing_key.sign(domain + message).signature


def verify(verify_key: bytes, domain: bytes, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature over ``domain || message``; raise SignatureError if bad."""
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"signature is {len(signature)} bytes, expected {SIGNATURE_BYTES}")
    try:
        _verifier(verify_key).verify(domain + message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, TypeError) as exc:
        raise SignatureError("signature does not verify") from exc


@functools.lru_cache(maxsize=1024)
def _verifier(verify_key: bytes) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(verify_key)


@functools.lru_cache(maxsize=4096)
def _box(my_secret: bytes, peer_public: bytes) -> nacl.public.Box:
    return nacl.public.Box(nacl.public.PrivateKey(my_secret), nacl.public.PublicKey(peer_public))


def new_content_key() -> bytes:
    """A fresh random content key."""
    return secrets.token_bytes(CONTENT_KEY_BYTES)


def seal_secret(key: bytes, plaintext: bytes, nonce: bytes | None = None) -> bytes:
    """Encrypt with a content key (nonce prepended; ``nonce``: a fresh random one of
    :data:`NONCE_BYTES`, default drawn here)."""
    return bytes(nacl.secret.SecretBox(key).encrypt(plaintext, nonce))


def open_secret(key: bytes, ciphertext: bytes) -> bytes:
    """Decrypt with a content key; raise DecryptionError if it does not authenticate."""
    try:
        return nacl.secret.SecretBox(key).decrypt(ciphertext)
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, TypeError) as exc:
        raise DecryptionError("payload does not decrypt with this key") from exc


def wrap_key(
    my_box_secret: bytes,
    my_box_public: bytes,
    peer_box_public: bytes,
    content_key: bytes,
    nonce: bytes | None = None,
) -> bytes:
    """Encrypt a content key from me to a peer: ``my_box_public || Box ciphertext``.

    The sender's public key travels with the wrap, so wraps made by different people
    (the node for the caller, the caller later for a colleague) sit side by side.
    ``nonce``: a fresh random one of :data:`NONCE_BYTES` (default: drawn here).
    """
    box = _box(my_box_secret, peer_box_public)
    return my_box_public + bytes(box.encrypt(content_key, nonce))


def unwrap_key(my_box_secret: bytes, wrapped: bytes) -> bytes:
    """Open a content key wrapped for me; DecryptionError if it does not open."""
    if len(wrapped) < 32 + 40:
        raise DecryptionError("wrapped key is too short")
    sender, box_ct = wrapped[:32], wrapped[32:]
    try:
        key = _box(my_box_secret, sender).decrypt(box_ct)
    except (nacl.exceptions.CryptoError, nacl.exceptions.ValueError, TypeError) as exc:
        raise DecryptionError("wrapped key does not open with this key pair") from exc
    if len(key) != CONTENT_KEY_BYTES:
        raise DecryptionError("wrapped key has the wrong length")
    return key


@dataclass(frozen=True, slots=True)
class WrappedPayload:
    """Ciphertext plus its content key wrapped for each recipient key id.

    ``content_key`` is set only where the key is known (by :func:`seal_payload`): the
    sealer seals further messages of the same exchange under it (a call's progress and
    error text) with :func:`seal_secret`.
    """

    ciphertext: bytes
    wraps: dict[str, bytes]
    content_key: bytes | None = field(default=None, repr=False, compare=False)


def seal_payload(
    plaintext: bytes,
    sender_box_secret: bytes,
    sender_box_public: bytes,
    recipients: Mapping[str, bytes],
) -> WrappedPayload:
    """Encrypt ``plaintext`` once with a fresh content key and wrap that key for every
    recipient (``recipients`` maps a recipient key id to its X25519 public key)."""
    # the key and every nonce from one read of the system's randomness (a call's hot path)
    fresh = secrets.token_bytes(CONTENT_KEY_BYTES + NONCE_BYTES * (1 + len(recipients)))
    key, at = fresh[:CONTENT_KEY_BYTES], CONTENT_KEY_BYTES + NONCE_BYTES
    wraps = {}
    for kid, pub in recipients.items():
        wraps[kid] = wrap_key(
            sender_box_secret, sender_box_public, pub, key, fresh[at : at + NONCE_BYTES]
        )
        at += NONCE_BYTES
    sealed = seal_secret(key, plaintext, fresh[CONTENT_KEY_BYTES : CONTENT_KEY_BYTES + NONCE_BYTES])
    return WrappedPayload(sealed, wraps, key)


def open_content_key(
    wraps: Mapping[str, bytes],
    my_kid: str,
    my_box_secret: bytes,
    *,
    sender: bytes | None = None,
) -> bytes:
    """The content key wrapped for my key id; with ``sender``, only if that X25519 public
    key wrapped it. DecryptionError if none is for me, another key wrapped it, or it fails.
    """
    wrapped = wraps.get(my_kid)
    if wrapped is None:
        raise DecryptionError(f"no content key is wrapped for key {my_kid}")
    if sender is not None and wrapped[:32] != sender:
        raise DecryptionError("the content key was not wrapped by the expected sender's key")
    return unwrap_key(my_box_secret, wrapped)


def open_payload(
    payload: WrappedPayload, my_kid: str, my_box_secret: bytes, *, sender: bytes | None = None
) -> bytes:
    """Open a payload with the key wrapped for me (and, with ``sender``, by that key);
    DecryptionError if it does not open."""
    key = open_content_key(payload.wraps, my_kid, my_box_secret, sender=sender)
    return open_secret(key, payload.ciphertext)


def rewrap(
    payload: WrappedPayload,
    my_kid: str,
    my_box_secret: bytes,
    my_box_public: bytes,
    recipients: Mapping[str, bytes],
) -> dict[str, bytes]:
    """Wrap the content key of a payload I can open for more recipients (sharing)."""
    key = open_content_key(payload.wraps, my_kid, my_box_secret)
    return {
        kid: wrap_key(my_box_secret, my_box_public, pub, key) for kid, pub in recipients.items()
    }
