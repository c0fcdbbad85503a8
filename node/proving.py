"""Proofs from a node's own log: one event in a signed checkpoint, one checkpoint extending
another (the formats and their checks are in :mod:`hub.proofs`)."""

from __future__ import annotations

import json
from pathlib import Path

from hub.canonical import b64d, parse_canonical
from hub.errors import CheckpointError, ConfigError
from hub.proofs import (
    ConsistencyProof,
    EventProof,
    build_consistency_proof,
    build_event_proof,
)
from hub.records import Checkpoint, KeyRecord, SignedRecord
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
    """The proof that ``new`` (default: the log's latest checkpoint) extends ``old``."""
    if new is None:
        new = log.head()
        if new is None:
            raise ConfigError("the log has no checkpoint yet")
    size = _size(new)
    if size > log.size:
        raise CheckpointError(f"the new checkpoint covers {size} events; the log has {log.size}")
    signers = dict.fromkeys((old.signer, new.signer))
    site, site_key = _genesis(log)
    return build_consistency_proof(
        log=log.log_id,
        site=site,
        site_key=site_key,
        node_keys=[_node_key_record(log, kid) for kid in signers],
        old=old,
        new=new,
        leaves=_leaves(log, size),
    )


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
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read a signed checkpoint from {path}: {exc}") from exc
    return signed


def _size(signed: SignedRecord) -> int:
    return Checkpoint.model_validate_json(b64d(signed.record)).size


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
    rows = log.db.execute(
        "SELECT body FROM events WHERE type IN ('log.created', 'key.rotated') ORDER BY seq"
    )
    for (body,) in rows.fetchall():
        data = parse_canonical(bytes(body))["data"]
        signed = SignedRecord.model_validate(data.get("node_key") or data.get("record"))
        if KeyRecord.model_validate_json(b64d(signed.record)).kid == kid:
            return signed
    raise CheckpointError(f"key {kid} is no node key of this log")
