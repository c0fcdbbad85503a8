"""Proofs from a node's own log: one event in a signed checkpoint, one checkpoint extending
another (the formats and their checks are in :mod:`hub.proofs`).

A node proves each new checkpoint consistent with the one before (the witness publishes
them). Built from every leaf, each proof would cost O(size) -- a running node's cost per
call would grow with its log. Instead the roots of perfect subtrees of
:data:`_REMEMBERED` leaves or more are kept per open log (the log is append-only: such a
root never changes), so a proof reads and hashes only the leaves since the last one, and
the site-signed records of the node keys are found by reading only events not read before.
"""

from __future__ import annotations

import json
import threading
import weakref
from pathlib import Path

from pydantic import ValidationError

from hub.canonical import b64d, parse_canonical
from hub.chain import merkle_root, node_hash
from hub.errors import CanonicalError, CheckpointError, ConfigError
from hub.proofs import (
    ConsistencyProof,
    EventProof,
    build_consistency_proof,
    build_event_proof,
)
from hub.records import Checkpoint, KeyRecord, SignedRecord, one_line
from node.eventlog import EventLog

__all__ = ["consistency_proof_of", "event_proof_of", "read_checkpoint"]


def event_proof_of(log: EventLog, seq: int, *, hint: str) -> EventProof:
    """The proof of event ``seq`` under the first checkpoint that covers it.

    ConfigError (with ``hint``: how to add a checkpoint) when none covers it yet.
    """
    if not 1 <= seq <= log.size:
        raise ConfigError(f"the log has events 1..{log.size}, not {seq}")
    row = log.db.execute(
        "SELECT signed FROM checkpoints WHERE size >= ? ORDER BY size LIMIT 1", [seq]
    ).fetchone()
    if row is None:
        head = log.head()
        last = _size(head) if head is not None else 0
        raise ConfigError(
            f"no checkpoint covers event {seq} yet (the last one covers {last} events)",
            hint=hint,
        )
    checkpoint = SignedRecord.model_validate_json(row[0])
    size = _size(checkpoint)
    site, site_key = _genesis(log)
    (body,) = log.db.execute("SELECT body FROM events WHERE seq = ?", [seq]).fetchone()
    return build_event_proof(
        log=log.log_id,
        site=site,
        site_key=site_key,
        node_key=_node_key_record(log, checkpoint.signer),
        checkpoint=checkpoint,
        seq=seq,
        body=bytes(body),
        leaves=_leaves(log, size),
    )


def consistency_proof_of(
    log: EventLog, old: SignedRecord, new: SignedRecord | None = None
) -> ConsistencyProof:
    """The proof that the larger of ``old`` and ``new`` (default: the log's latest
    checkpoint) extends the smaller, whichever order they come in.

    Two checkpoints of one size need no event: the proof shows them equal, or the fork.
    CheckpointError when a checkpoint is of another log, or when the larger one is not of
    this log's history (compare it with the log's latest instead: that shows the fork).
    """
    if new is None:
        new = log.head()
        if new is None:
            raise ConfigError("the log has no checkpoint yet")
    old_cp, new_cp = _checkpoint_of(old), _checkpoint_of(new)
    for named in (old_cp, new_cp):
        if named.log != log.log_id:
            raise CheckpointError(
                f"checkpoint {named.size} is of log {named.log}, not {log.log_id}"
            )
    if old_cp.size > new_cp.size:
        old, new, old_cp, new_cp = new, old, new_cp, old_cp
    size = new_cp.size
    if old_cp.size != size and size > log.size:
        raise CheckpointError(
            f"checkpoint {size} covers {size} events; the log has {log.size}: it was "
            "truncated, or the checkpoint is of another history"
        )
    signers = dict.fromkeys((old.signer, new.signer))
    node_keys = [_node_key_record(log, kid) for kid in signers]
    site, site_key = _genesis(log)
    try:
        return build_consistency_proof(
            log=log.log_id,
            site=site,
            site_key=site_key,
            node_keys=node_keys,
            old=old,
            new=new,
            leaves=_memory(log).root,
        )
    except CheckpointError as exc:  # the larger one's root is not the log's at its size
        raise CheckpointError(
            f"checkpoint {size} is not of this log's history ({exc.message}): to show the "
            "fork, compare it alone with the log's latest checkpoint",
            hint="fedhub-node log prove --consistency CHECKPOINT.json --config <its config>",
        ) from exc


def read_checkpoint(path: Path) -> SignedRecord:
    """A signed checkpoint from a file: as ``fedhub-node log head`` prints it, or the
    checkpoint of an event proof, or the newer checkpoint of a consistency proof."""
    try:
        value = json.loads(path.read_text())
        if isinstance(value, dict) and value.get("kind") == "event-proof":
            value = value["checkpoint"]
        elif isinstance(value, dict) and value.get("kind") == "consistency-proof":
            value = value["new"]
        elif isinstance(value, dict) and "signed" in value:
            value = value["signed"]
        signed = SignedRecord.model_validate(value)
        _size(signed)
    except ValidationError as exc:
        raise ConfigError(f"cannot read a signed checkpoint from {path}: {one_line(exc)}") from exc
    except (OSError, ValueError, KeyError, TypeError, CanonicalError) as exc:
        reason = exc.message if isinstance(exc, CanonicalError) else str(exc)
        raise ConfigError(f"cannot read a signed checkpoint from {path}: {reason}") from exc
    return signed


def _size(signed: SignedRecord) -> int:
    return _checkpoint_of(signed).size


def _checkpoint_of(signed: SignedRecord) -> Checkpoint:
    return Checkpoint.model_validate_json(b64d(signed.record))


def _leaves(log: EventLog, size: int) -> list[bytes]:
    rows = log.db.execute("SELECT hash FROM events WHERE seq <= ? ORDER BY seq", [size])
    return [bytes(h) for (h,) in rows.fetchall()]


def _genesis(log: EventLog) -> tuple[str, bytes]:
    """The site and site key that the log's genesis names."""
    row = log.db.execute("SELECT body FROM events WHERE seq = 1").fetchone()
    if row is None:
        raise ConfigError("the log is empty")
    data = parse_canonical(bytes(row[0]))["data"]
    return str(data["site"]), b64d(data["site_key"])


def _node_key_record(log: EventLog, kid: str) -> SignedRecord:
    """The site-signed record of node key ``kid``, from the genesis or a rotation."""
    memory = _memory(log)
    with memory.lock:
        upto = log.size
        rows = log.db.execute(
            "SELECT body FROM events WHERE seq > ? AND seq <= ?"
            " AND type IN ('log.created', 'key.rotated') ORDER BY seq",
            [memory.keys_read, upto],
        ).fetchall()
        for (body,) in rows:
            data = parse_canonical(bytes(body))["data"]
            signed = SignedRecord.model_validate(data.get("node_key") or data.get("record"))
            memory.keys[KeyRecord.model_validate_json(b64d(signed.record)).kid] = signed
        memory.keys_read = max(memory.keys_read, upto)
        found = memory.keys.get(kid)
    if found is None:
        raise CheckpointError(f"key {kid} is no node key of this log")
    return found


#: Perfect subtrees of at least this many leaves have their roots kept.
_REMEMBERED = 256


class _Memory:
    """What proofs from one open log keep: perfect subtree roots, node key records."""

    def __init__(self, log: EventLog) -> None:
        self.db = log.db
        self.lock = threading.Lock()
        self.perfect: dict[tuple[int, int], bytes] = {}  # (first leaf, size) -> root
        self.keys: dict[str, SignedRecord] = {}
        self.keys_read = 0  # events up to this seq were searched for node keys

    def root(self, lo: int, hi: int) -> bytes:
        """The Merkle root of leaves ``lo..hi-1`` (RFC 6962 ``MTH``; ``hi > lo``)."""
        n = hi - lo
        # only aligned perfect subtrees arise: the tree splits at powers of two from 0
        kept = n >= _REMEMBERED and n & (n - 1) == 0
        if kept and (known := self.perfect.get((lo, n))) is not None:
            return known
        if n <= _REMEMBERED:
            rows = self.db.execute(
                "SELECT hash FROM events WHERE seq > ? AND seq <= ? ORDER BY seq", [lo, hi]
            ).fetchall()
            if len(rows) != n:
                raise CheckpointError(f"the log has no events {lo + 1}..{hi}")
            root = merkle_root([bytes(h) for (h,) in rows])
        else:
            k = 1 << ((n - 1).bit_length() - 1)  # RFC 6962: the largest power of two below n
            root = node_hash(self.root(lo, lo + k), self.root(lo + k, hi))
        if kept:
            self.perfect[(lo, n)] = root
        return root


_MEMORIES: weakref.WeakKeyDictionary[EventLog, _Memory] = weakref.WeakKeyDictionary()
_MEMORIES_LOCK = threading.Lock()


def _memory(log: EventLog) -> _Memory:
    with _MEMORIES_LOCK:
        memory = _MEMORIES.get(log)
        if memory is None:
            memory = _MEMORIES[log] = _Memory(log)
        return memory
