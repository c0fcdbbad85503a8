"""Proofs a third party checks offline: one event is in a node's log, one checkpoint extends
another.

An :class:`EventProof` carries one event's exact body, the RFC 9162 inclusion path of its
hash in the Merkle tree of a signed checkpoint, the checkpoint, and the site-signed key
record of the node key that signed it. A :class:`ConsistencyProof` carries two signed
checkpoints of the same log, the key records of their signers and the RFC 9162 consistency
path between them. Both are JSON files (``fedhub-node log prove`` writes them, ``fedhub
audit --proof`` / ``--consistency`` checks them); the formats and the checks, in order, are
in docs/merkle.md.

Builders are pure functions of a log's data (leaf hashes, bodies, signed records); the
verifiers trust nothing in the file but what the pinned site key signed. A failed check
raises an :class:`~hub.errors.IntegrityError` (``SignatureError``, ``CheckpointError``,
``ChainError``, ``CanonicalError``) naming it in one line; a verified consistency proof
may still show a fork (:attr:`ConsistencyVerdict.fork`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub.canonical import b64d, b64e, canonical_bytes, parse_canonical
from hub.chain import (
    EMPTY_ROOT,
    consistency_path,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    verify_consistency,
    verify_inclusion,
)
from hub.crypto import key_id
from hub.errors import (
    CanonicalError,
    ChainError,
    CheckpointError,
    ConfigError,
    SignatureError,
)
from hub.records import (
    B64,
    Checkpoint,
    Hex32,
    IdentityId,
    KeyRecord,
    SignedRecord,
    one_line,
    open_record,
)
from hub.subjects import is_log_of

__all__ = [
    "ConsistencyProof",
    "ConsistencyVerdict",
    "EventProof",
    "EventVerdict",
    "Fork",
    "ProvenEvent",
    "build_consistency_proof",
    "build_event_proof",
    "parse_proof",
    "verify_consistency_proof",
    "verify_event_proof",
]


class _Proof(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class ProvenEvent(_Proof):
    """The event a proof is about: its sequence number, hash and exact body bytes."""

    seq: int = Field(ge=1)
    hash: Hex32
    body: B64 = Field(description="unpadded URL-safe base64 of the exact body bytes")


class EventProof(_Proof):
    """Event ``event.seq`` of log ``log`` is leaf ``seq - 1`` of a signed checkpoint's tree."""

    v: Literal[1] = 1
    kind: Literal["event-proof"] = "event-proof"
    log: IdentityId
    site: str
    site_key: B64 = Field(description="the site's Ed25519 public key (the verifier pins it)")
    node_key: SignedRecord = Field(description="key record of the checkpoint's signer")
    event: ProvenEvent
    checkpoint: SignedRecord = Field(description="the first checkpoint whose size >= seq")
    path: tuple[Hex32, ...] = Field(description="RFC 9162 inclusion path, leaf to root")


class ConsistencyProof(_Proof):
    """Checkpoint ``new`` of log ``log`` extends checkpoint ``old`` (RFC 9162 consistency)."""

    v: Literal[1] = 1
    kind: Literal["consistency-proof"] = "consistency-proof"
    log: IdentityId
    site: str
    site_key: B64
    node_keys: tuple[SignedRecord, ...] = Field(
        min_length=1, description="key records of the signers of old and new"
    )
    old: SignedRecord
    new: SignedRecord
    path: tuple[Hex32, ...] = Field(description="RFC 9162 consistency path from old to new")


@dataclass(frozen=True, slots=True)
class EventVerdict:
    """A verified event proof."""

    log: str
    seq: int
    type: str
    size: int
    root: str
    trust: str

    def diagnostics(self) -> str:
        """One line: what was proven, and on whose authority."""
        return (
            f"event {self.seq} ({self.type}) is in log {self.log}: checkpoint of size "
            f"{self.size}, root {self.root}; trust: {self.trust}"
        )

    def to_json(self) -> dict[str, Any]:
        """The verdict as JSON."""
        return {"ok": True, "kind": "event-proof", **_fields(self)}


@dataclass(frozen=True, slots=True)
class Fork:
    """Evidence that two checkpoints of one log, both validly signed, disagree."""

    reason: str
    old: SignedRecord
    new: SignedRecord
    old_size: int
    new_size: int
    old_root: str
    new_root: str

    def to_json(self) -> dict[str, Any]:
        """Both signed records, sizes and roots."""
        return {
            "reason": self.reason,
            "old": {"size": self.old_size, "root": self.old_root, "signed": self.old.model_dump()},
            "new": {"size": self.new_size, "root": self.new_root, "signed": self.new.model_dump()},
        }


@dataclass(frozen=True, slots=True)
class ConsistencyVerdict:
    """A checked consistency proof: ``fork`` is None when ``new`` extends ``old``."""

    log: str
    old_size: int
    new_size: int
    old_root: str
    new_root: str
    trust: str
    fork: Fork | None

    @property
    def ok(self) -> bool:
        """Whether the new checkpoint extends the old one."""
        return self.fork is None

    def diagnostics(self) -> str:
        """One line: extends, or the fork."""
        if self.fork is None:
            return (
                f"checkpoint {self.new_size} ({self.new_root}) of log {self.log} extends "
                f"checkpoint {self.old_size} ({self.old_root}); trust: {self.trust}"
            )
        return f"FORK of log {self.log}: {self.fork.reason}; trust: {self.trust}"

    def to_json(self) -> dict[str, Any]:
        """The verdict as JSON (with the fork evidence, if any)."""
        out = {"ok": self.ok, "kind": "consistency-proof", **_fields(self)}
        out["fork"] = None if self.fork is None else self.fork.to_json()
        return out


def _fields(verdict: Any) -> dict[str, Any]:
    return {name: getattr(verdict, name) for name in verdict.__slots__ if name != "fork"}


# --- building ------------------------------------------------------------------------------


def build_event_proof(
    *,
    log: str,
    site: str,
    site_key: bytes,
    node_key: SignedRecord,
    checkpoint: SignedRecord,
    seq: int,
    body: bytes,
    leaves: Sequence[bytes],
) -> EventProof:
    """The proof that ``body`` is event ``seq`` of the log whose first ``checkpoint.size``
    leaf hashes are ``leaves``. CheckpointError when the leaves do not give the
    checkpoint's root or the body is not leaf ``seq``."""
    cp = _checkpoint(checkpoint)
    if len(leaves) != cp.size:
        raise CheckpointError(f"checkpoint of size {cp.size} needs {cp.size} leaves")
    if not 1 <= seq <= cp.size:
        raise CheckpointError(f"checkpoint of size {cp.size} does not cover event {seq}")
    if merkle_root(leaves).hex() != cp.root:
        raise CheckpointError(f"the log's events do not give checkpoint {cp.size}'s root")
    h = leaf_hash(body)
    if leaves[seq - 1] != h:
        raise ChainError(f"the body given is not event {seq} of the log")
    return EventProof(
        log=log,
        site=site,
        site_key=b64e(site_key),
        node_key=node_key,
        event=ProvenEvent(seq=seq, hash=h.hex(), body=b64e(body)),
        checkpoint=checkpoint,
        path=tuple(p.hex() for p in inclusion_proof(leaves, seq - 1)),
    )


def build_consistency_proof(
    *,
    log: str,
    site: str,
    site_key: bytes,
    node_keys: Sequence[SignedRecord],
    old: SignedRecord,
    new: SignedRecord,
    leaves: Sequence[bytes] | Callable[[int, int], bytes],
) -> ConsistencyProof:
    """The consistency proof from ``old`` to ``new``, from the first ``new.size`` leaf hashes
    of the log that signed ``new`` (``old`` may come from elsewhere: if it is not a prefix
    of this log, the proof will not verify, and shows the fork).

    ``leaves`` may instead be a function giving the Merkle root of the log's leaves
    ``lo..hi-1`` (:func:`hub.chain.consistency_path`).
    """
    old_cp, new_cp = _checkpoint(old), _checkpoint(new)
    if old_cp.size > new_cp.size:
        raise CheckpointError(
            f"the old checkpoint ({old_cp.size} events) is larger than the new one "
            f"({new_cp.size}): give them the other way round"
        )
    path: Sequence[bytes] = ()
    # the same size: nothing to prove from the events (the two roots are equal, or they
    # show a fork)
    if old_cp.size != new_cp.size:
        if callable(leaves):
            size = new_cp.size
            root = leaves(0, size) if size else EMPTY_ROOT
            path = consistency_path(size, old_cp.size, leaves)
        else:
            root = merkle_root(leaves) if len(leaves) == new_cp.size else b""
            path = consistency_proof(leaves, old_cp.size) if root else []
        if root.hex() != new_cp.root:
            raise CheckpointError(f"the log's events do not give checkpoint {new_cp.size}'s root")
    return ConsistencyProof(
        log=log,
        site=site,
        site_key=b64e(site_key),
        node_keys=tuple(node_keys),
        old=old,
        new=new,
        path=tuple(p.hex() for p in path),
    )


# --- verifying -----------------------------------------------------------------------------


def verify_event_proof(
    proof: EventProof, site_keys: Mapping[str, bytes] | None, trust_log_keys: bool = False
) -> EventVerdict:
    """Check an event proof against pinned site keys (``site name -> Ed25519 key``).

    In order: the site key is pinned (or, UNSAFE, ``trust_log_keys`` takes the proof's
    own); the node key record is signed by it (role ``node``, identity = the log's node,
    site = the proof's site); the checkpoint is signed by that node key and names the log;
    the body hashes to the event's hash; the body names the log and the sequence number;
    the inclusion path leads from the hash, as leaf ``seq - 1``, to the checkpoint's root.
    """
    site_key, trust = _site_key(proof.site, proof.site_key, site_keys, trust_log_keys)
    node = _node_key(proof.node_key, site_key, proof.log, proof.site)
    cp = _signed_checkpoint(proof.checkpoint, {node.kid: node}, proof.log, "checkpoint")
    ev = proof.event
    body = _b64(ev.body, "event body")
    if leaf_hash(body).hex() != ev.hash:
        raise ChainError(f"event {ev.seq}'s body does not hash to the hash given")
    try:
        fields = parse_canonical(body)
        if canonical_bytes(fields) != body:
            raise CanonicalError("bytes are valid JSON but not in canonical form")
    except CanonicalError as exc:
        raise CanonicalError(f"event {ev.seq}'s body: {exc.message}") from exc
    if not isinstance(fields, dict) or fields.get("seq") != ev.seq or fields.get("log") != cp.log:
        raise ChainError(f"the body is not event {ev.seq} of log {cp.log}")
    verify_inclusion(bytes.fromhex(ev.hash), ev.seq - 1, cp.size, _hashes(proof.path), _root(cp))
    return EventVerdict(
        log=cp.log,
        seq=ev.seq,
        type=str(fields.get("type")),
        size=cp.size,
        root=cp.root,
        trust=trust,
    )


def verify_consistency_proof(
    proof: ConsistencyProof, site_keys: Mapping[str, bytes] | None, trust_log_keys: bool = False
) -> ConsistencyVerdict:
    """Check that ``proof.new`` extends ``proof.old``, or find the fork.

    Both checkpoints must be signed by node keys of the log vouched for by the pinned site
    key, and name the proof's log; otherwise an IntegrityError is raised. Then two
    checkpoints of the same size with different roots, or a consistency path that does not
    lead from the old root to the new one, are returned as :class:`Fork` evidence.
    """
    site_key, trust = _site_key(proof.site, proof.site_key, site_keys, trust_log_keys)
    nodes = {}
    for signed in proof.node_keys:
        node = _node_key(signed, site_key, proof.log, proof.site)
        nodes[node.kid] = node
    old = _signed_checkpoint(proof.old, nodes, proof.log, "old checkpoint")
    new = _signed_checkpoint(proof.new, nodes, proof.log, "new checkpoint")
    if old.size > new.size:
        raise CheckpointError(
            f"the old checkpoint ({old.size} events) is larger than the new one ({new.size})"
        )
    fork: Fork | None = None
    reason = ""
    if old.size == new.size and old.root != new.root:
        reason = f"two signed checkpoints of size {old.size} with different roots"
    else:
        try:
            verify_consistency(old.size, new.size, _root(old), _root(new), _hashes(proof.path))
        except CheckpointError as exc:
            reason = (
                f"checkpoint {new.size} does not extend checkpoint {old.size} ({exc.message}); "
                "unless the path in the file was altered, the log was rewritten"
            )
    if reason:
        fork = Fork(reason, proof.old, proof.new, old.size, new.size, old.root, new.root)
    return ConsistencyVerdict(
        log=proof.log,
        old_size=old.size,
        new_size=new.size,
        old_root=old.root,
        new_root=new.root,
        trust=trust,
        fork=fork,
    )


def _site_key(
    site: str, claimed: str, site_keys: Mapping[str, bytes] | None, trust_log_keys: bool
) -> tuple[bytes, str]:
    key = _b64(claimed, "site key")
    if trust_log_keys:
        return key, f"site:{site} key {key_id(key)} taken from the proof itself (UNSAFE)"
    if site_keys is None:
        raise ConfigError("no site key is pinned, so nothing can be trusted")
    pinned = site_keys.get(site)
    if pinned is None:
        raise SignatureError(f"site {site} is not pinned: its key {key_id(key)} is not trusted")
    if pinned != key:
        raise SignatureError(
            f"the proof names key {key_id(key)} for site {site}, but the pinned key is "
            f"{key_id(pinned)}"
        )
    return pinned, f"site:{site} key {key_id(pinned)} (pinned)"


def _node_key(signed: SignedRecord, site_key: bytes, log: str, site: str) -> KeyRecord:
    """The key record, signed by the site, of a node key of ``log``."""
    record = open_record(_strict(signed, "node key record"), KeyRecord, site_key)
    identity = record.identity
    if record.role != "node" or record.site != site or not is_log_of(log, identity):
        raise SignatureError(
            f"key {record.kid} is vouched for as {record.role} {identity} of site "
            f"{record.site}, not as a node key of {log}"
        )
    if key_id(record.sign_key_bytes()) != record.kid:
        raise SignatureError(f"key record {record.kid} names a key with another id")
    return record


def _signed_checkpoint(
    signed: SignedRecord, nodes: Mapping[str, KeyRecord], log: str, what: str
) -> Checkpoint:
    node = nodes.get(signed.signer)
    if node is None:
        raise SignatureError(f"the {what} is signed by {signed.signer}, no node key of {log}")
    cp = open_record(_strict(signed, what), Checkpoint, node.sign_key_bytes())
    if cp.log != log or cp.kid != signed.signer:
        raise CheckpointError(f"the {what} is of log {cp.log}, not {log}")
    return cp


def _checkpoint(signed: SignedRecord) -> Checkpoint:
    """The checkpoint in a signed record (no signature check: the builders' input)."""
    return Checkpoint.model_validate_json(_b64(signed.record, "checkpoint"))


def _root(cp: Checkpoint) -> bytes:
    return bytes.fromhex(cp.root)


def _hashes(path: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(h) for h in path]


def _b64(text: str, what: str) -> bytes:
    """Decode base64 in its one canonical spelling (unpadded, unused bits zero): another
    spelling of the same bytes would let a changed character go unnoticed."""
    try:
        data = b64d(text)
    except CanonicalError as exc:
        raise CanonicalError(f"{what} is not base64") from exc
    if b64e(data) != text:
        raise CanonicalError(f"{what} is not in canonical base64")
    return data


def _strict(signed: SignedRecord, what: str) -> SignedRecord:
    """``signed``, once its record and signature are in canonical base64."""
    _b64(signed.record, what)
    _b64(signed.sig, f"{what}'s signature")
    return signed


def _parse_unique(raw: bytes) -> Any:
    """JSON whose objects name each key once: a second value for one key would be read as
    the first by some parsers and as the last by others (Python's, this verifier's)."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)
        if len(out) != len(pairs):
            twice = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
            raise CanonicalError(f"key {twice!r} appears twice in one object")
        return out

    try:
        return json.loads(raw, object_pairs_hook=unique)
    except CanonicalError:
        raise
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CanonicalError(f"not valid JSON: {exc}") from exc


def parse_proof(data: bytes | str) -> EventProof | ConsistencyProof:
    """A proof file's contents, by its ``kind``; CanonicalError if it is neither proof."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        value = _parse_unique(raw)
        kind = value.get("kind") if isinstance(value, dict) else None
        if kind == "event-proof":
            return EventProof.model_validate_json(raw)
        if kind == "consistency-proof":
            return ConsistencyProof.model_validate_json(raw)
    except (ValidationError, CanonicalError) as exc:
        reason = one_line(exc) if isinstance(exc, ValidationError) else exc.message
        raise CanonicalError(f"not a fedhub proof: {reason}") from exc
    raise CanonicalError('not a fedhub proof: "kind" is neither event-proof nor consistency-proof')
