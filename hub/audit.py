"""Replay a node's event log and verify it: a verdict with evidence.

What is checked, in one pass (docs/audit.md has the full list):

* **trust**: the genesis event names the site key and carries the node key record signed by
  it; the site key must be one the auditor pinned (unless told to trust the log's own);
* **hashes and chain**: each body hashes to its stored hash; ``seq`` counts up from 1 with
  no gap; ``prev`` is the previous event's hash; one log id throughout;
* **signatures**: each event verifies against the node key valid at that point (rotations
  and revocations are events too); checked off the main thread, so every core helps:
  by worker processes for a large log, by a thread pool for a small one;
* **checkpoints**: each checkpoint event's signed root and size match the events before it;
  a checkpoint held by the auditor (a receipt) must be contained in and extended by the log;
* **lifecycle**: a request is accepted only after it was received, completes or fails once
  and only after acceptance; nothing but a start follows a node's stop.

The result is an :class:`AuditReport`; :attr:`AuditReport.first` is the first bad event.

Speed: most events of a healthy log are request events in the exact form a node writes.
For those, one fast check (:meth:`_Auditor.scan`) compares the body's header with the one
expected at that point, byte for byte, and applies the request's state change; anything
else -- another kind of event, or anything unexpected -- goes through the general path
(:meth:`_Auditor.event`), which decides exactly as if the fast check did not exist.
"""

from __future__ import annotations

import json
import marshal
import os
import re
import selectors
import struct
import subprocess
import sys
import tempfile
import time
from binascii import hexlify
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, count
from pathlib import Path
from typing import Any, BinaryIO

import nacl.bindings
import nacl.exceptions
from pydantic import ValidationError

from hub.canonical import b64d
from hub.chain import GENESIS_PREV, MerkleAccumulator, leaf_hash
from hub.crypto import key_id
from hub.errors import FederationError
from hub.events import DOMAIN_EVENT, FINAL_REQUEST_TYPES
from hub.logfile import RawEvent, SqliteEvents
from hub.records import Checkpoint, KeyRecord, Revocation, SignedRecord, open_record
from hub.workers import spawn_worker, stop_worker, write_all

__all__ = ["AuditReport", "Finding", "audit_events"]

_MAX_FINDINGS = 1000
# Signatures travel in chunks of (hash, signature) pairs; one chunk with its header fits a
# 64 KiB pipe buffer, so handing it to a worker process never waits for long.
_CHUNK = 640
# With ``processes=None``, worker processes start with the second chunk (starting one
# costs about as much as 500 verifications); a log of one chunk or less uses threads.
_PROCESS_AFTER = _CHUNK
# Chunks handed to one worker process and not yet answered: one checked, one waiting.
_IN_FLIGHT = 2
# Event hashes are added to the Merkle tree in groups of this many (or when a root is due).
_LEAF_GROUP = 4096


@dataclass(frozen=True, slots=True)
class Finding:
    """One failed check, located at an event."""

    position: int
    seq: int | None
    check: str
    message: str
    expected: str | None = None
    found: str | None = None

    def line(self) -> str:
        """One readable line."""
        where = f"event {self.seq}" if self.seq is not None else f"entry {self.position}"
        text = f"{where}: {self.check}: {self.message}"
        if self.expected is not None or self.found is not None:
            text += f" (expected {self.expected}, found {self.found})"
        return text

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``--json``."""
        return {
            "position": self.position,
            "seq": self.seq,
            "check": self.check,
            "message": self.message,
            "expected": self.expected,
            "found": self.found,
        }


@dataclass
class AuditReport:
    """What an audit found: findings (empty when clean) and a summary of the log."""

    log: str | None = None
    site: str | None = None
    events: int = 0
    first_time: str | None = None
    last_time: str | None = None
    types: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoints: int = 0
    receipt: dict[str, Any] | None = None
    signatures_checked: int = 0
    trust: str = ""
    unclean_restarts: int = 0
    root: str | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.findings

    @property
    def first(self) -> Finding | None:
        """The first bad event (lowest position)."""
        return min(self.findings, key=lambda f: f.position) if self.findings else None

    def to_json(self) -> dict[str, Any]:
        """The full report."""
        return {
            "ok": self.ok,
            "log": self.log,
            "site": self.site,
            "events": self.events,
            "time_range": [self.first_time, self.last_time],
            "types": dict(sorted(self.types.items())),
            "requests": dict(sorted(self.requests.items())),
            "keys": self.keys,
            "checkpoints_verified": self.checkpoints,
            "receipt": self.receipt,
            "signatures_checked": self.signatures_checked,
            "trust": self.trust,
            "unclean_restarts": self.unclean_restarts,
            "root": self.root,
            "first_finding": self.first.to_json() if self.first else None,
            "findings": [f.to_json() for f in sorted(self.findings, key=lambda f: f.position)],
        }


class _StopAuditError(Exception):
    """Internal: too many findings, or the log cannot be read further meaningfully."""


@dataclass
class _Key:
    kid: str
    identity: str
    role: str
    sign_key: bytes
    since_seq: int
    until_seq: int | None = None
    revoked_at: str | None = None
    status: str = "active"
    last_time: str | None = None


# Rows as the auditor reads them: (position, (claimed hash, signature, body)).
_Row = tuple[int, tuple[Any, Any, Any]]


class _Auditor:
    def __init__(
        self,
        trusted_sites: dict[str, bytes] | None,
        receipt: SignedRecord | None,
        verify_signatures: bool,
        threads: int,
        processes: bool | None = None,
        *,
        fast: bool = True,
    ) -> None:
        self.trusted = trusted_sites
        self.receipt = receipt
        self.verify_signatures = verify_signatures
        self.fast = fast
        self.report = AuditReport()
        self.acc = MerkleAccumulator()
        self.prev = GENESIS_PREV
        self.node_key: _Key | None = None
        self.keys: dict[str, _Key] = {}
        self.site_key: bytes | None = None
        self.requests: dict[str, str] = {}
        self.running = False
        self.receipt_root: bytes | None = None
        self.receipt_size = _receipt_size(receipt)
        self.prev_hex = GENESIS_PREV.hex()
        self.types: dict[str, int] = {}
        self.verifier = _Verifier(max(1, threads), processes)

    # -- findings --------------------------------------------------------------------------

    def fail(
        self,
        raw: RawEvent,
        seq: int | None,
        check: str,
        message: str,
        expected: object = None,
        found: object = None,
    ) -> None:
        self.report.findings.append(
            Finding(
                raw.position,
                seq,
                check,
                message,
                None if expected is None else str(expected),
                None if found is None else str(found),
            )
        )
        if len(self.report.findings) >= _MAX_FINDINGS:
            raise _StopAuditError

    # -- signatures ------------------------------------------------------------------------

    def queue_signature(self, raw: RawEvent, seq: int, key: bytes, h: bytes) -> None:
        self.verifier.add(raw.position, seq, key, h, raw.sig)

    def collect_signatures(self) -> None:
        for position, seq in self.verifier.finish():
            self.report.findings.append(
                Finding(position, seq, "signature", "event signature does not verify")
            )

    # -- the pass --------------------------------------------------------------------------

    def run(self, rows: Iterable[_Row], unreadable: Callable[[int], Exception] | None) -> None:
        """Audit every row. ``unreadable(position)`` is the error for a row whose values are
        not all bytes (when the source promises bytes), else such a row is audited as is."""
        self._run(lambda: self.scan(rows, unreadable))

    def run_split(
        self, source: SqliteEvents, after_seq: int, helper: _Helper | None = None
    ) -> None:
        """Audit a SQLite log with a helper process reading ahead (see :meth:`split_pass`)."""
        self._run(lambda: self.split_pass(source, after_seq, helper))

    def _run(self, work: Callable[[], None]) -> None:
        if self.receipt_size == 0:
            self.receipt_root = self.acc.root()
        try:
            work()
        except _StopAuditError:
            pass
        except BaseException:
            self.verifier.close()
            raise
        self.collect_signatures()
        self.finish()

    def split_pass(
        self, source: SqliteEvents, after_seq: int, helper: _Helper | None = None
    ) -> None:
        """The pass in two halves at once: this process audits the events up to
        ``after_seq`` while a helper process reads the rest and does, for each run of
        plain request events, every check that needs no state (see :func:`_speculate`).
        Then each run is applied here if what it took for granted holds (the key, log id,
        previous hash and time it started from; every request's state allows its events),
        and every other event goes through :meth:`event`. From the first run that does
        not fit, or if the helper fails, this process reads and audits the rest itself:
        the report is the same as without the helper, in every case."""
        if helper is None:
            helper = _Helper.start(source.path, after_seq)
        try:
            self.scan(_positioned(source.rows(until_seq=after_seq), 1), source.not_blobs)
            done = self.report.events
            if helper is None or done != after_seq:
                self.scan(_positioned(source.rows(after_seq=after_seq), done + 1), source.not_blobs)
                return
            for record in helper.records():
                if record[0] == _SLOW_EVENT:
                    _, pos, hash_, sig, body = record
                    if not (type(hash_) is bytes and type(sig) is bytes and type(body) is bytes):
                        raise source.not_blobs(pos)
                    self.event(RawEvent(pos, hash_, sig, body))
                elif record[0] != _FAST_RUN or not self.apply_run(record):
                    pos = self.report.events + 1  # positions are contiguous so far
                    rest = _positioned(
                        source.rows(after_seq=after_seq, skip=pos - after_seq - 1), pos
                    )
                    self.scan(rest, source.not_blobs)
                    return
        finally:
            if helper is not None:
                helper.close()

    def apply_run(self, record: tuple[Any, ...]) -> bool:
        """Apply a helper's run of request events, if it fits the state here (else False,
        with nothing changed)."""
        _, _, kid, log_id, prev, first_time, last_time, kinds, rids, hashes = record
        rep = self.report
        key = self._fast_key()
        if key is None or rep.log is None or rep.last_time is None or self.prev != prev:
            return False
        try:
            if key.kid.encode() != kid or rep.log.encode() != log_id:
                return False
        except UnicodeEncodeError:
            return False
        if first_time.decode() < rep.last_time:
            return False
        requests = self.requests
        changed: dict[str, str] = {}
        for k, rid in zip(kinds, rids, strict=True):
            state = changed[rid] if rid in changed else requests.get(rid)
            new = _FAST_STEPS[k].get(state, _SLOW)
            if new is _SLOW:
                return False
            if new is not None:
                changed[rid] = new
        requests.update(changed)
        types = self.types
        for k, n in Counter(kinds).items():
            kind = _FAST_NAMES[k]
            types[kind] = types.get(kind, 0) + n
        leaves = [hashes[i : i + 32] for i in range(0, len(hashes), 32)]
        rep.events += len(leaves)
        text = last_time.decode()
        rep.last_time = key.last_time = text
        self.prev = leaves[-1]
        self.prev_hex = self.prev.hex()
        self.add_leaves(leaves)
        return True

    def _fast_key(self) -> _Key | None:
        """The node key events are checked against, if the fast paths may run now: the
        node is running under a current, unrevoked key (else the general path decides)."""
        key = self.node_key
        if not self.fast or key is None or key.revoked_at is not None or not self.running:
            return None
        return key

    def scan(self, rows: Iterable[_Row], unreadable: Callable[[int], Exception] | None) -> None:
        """The pass over the log: the fast check where it applies, :meth:`event` elsewhere.

        The fast check accepts an event only if :meth:`event` would find nothing wrong with
        it, and then changes the state exactly as :meth:`event` would: the header must be
        byte for byte the one expected here (node key id, log id, ``prev`` = the previous
        hash, ``seq`` = the position), followed by a well-formed time no earlier than the
        last and a request or result event type whose ``data`` is flat and ends with its
        ``type``; the request's state must allow the event. Its state lives in local
        variables, written back (:func:`sync`) before :meth:`event` runs and read again
        (:func:`load`) after.
        """
        rep = self.report
        requests = self.requests
        types = self.types
        verify = self.verify_signatures
        verifier = self.verifier
        positions = verifier.positions
        add_blob = verifier.blob.extend
        pending: list[bytes] = []  # event hashes not yet in the Merkle tree
        leaf = leaf_hash
        tail = _FAST_TAIL.fullmatch
        rid_at = _RID.match
        fast_kinds = _FAST_KINDS
        slow = _SLOW
        chunk = _CHUNK
        group = _LEAF_GROUP
        # Fast-path state: ``head`` is the expected header up to ``prev``'s value (empty:
        # the fast path is off); ``done`` counts events accepted since the last sync.
        head = b""
        signer: _Key | None = None
        prev = self.prev
        prevhex = b""
        last = b""
        done = 0

        def fast(pos: int, hash_: Any, sig: Any, body: Any) -> bool:
            nonlocal prev, prevhex, last, done
            if type(body) is not bytes or type(sig) is not bytes:
                return False
            h = leaf(body)
            if h != hash_:
                return False
            at = body.rfind(b',"kid":"')
            expected = head + prevhex + b'","seq":' + str(pos).encode() + b',"time":"'
            if not body.startswith(expected, at) or not body.startswith(b'{"data":{'):
                return False
            m = tail(body, at + len(expected))
            if m is None:
                return False
            time, kind_bytes = m.groups()
            spec = fast_kinds.get(kind_bytes)
            if spec is None or time < last:
                return False
            kind, type_last, steps = spec
            if not body.endswith(type_last, 9, at) or body.find(b"{", 9, at) >= 0:
                return False
            # exactly one "request_id": key (the first found, and none after it)
            i = body.find(b'"request_id":', 9, at)
            if i < 0 or body.find(b'"request_id":', i + 13, at) >= 0:
                return False
            r = rid_at(body, i, at)
            if r is None or (rid_bytes := r.group(1)) is None:
                return False
            rid = rid_bytes.decode()
            new = steps.get(requests.get(rid), slow)
            if new is slow:
                return False
            if verify:
                if len(sig) != 64:
                    return False
                positions.append(pos)
                add_blob(h)
                add_blob(sig)
                if len(positions) >= chunk:
                    verifier.flush()
            if new is not None:
                requests[rid] = new
            types[kind] = types.get(kind, 0) + 1
            pending.append(h)
            if len(pending) >= group:
                self.add_leaves(pending)
            prev = h
            prevhex = hexlify(h)
            last = time
            done += 1
            return True

        def sync() -> None:
            nonlocal done
            if done:
                rep.events += done
                if verify:
                    rep.signatures_checked += done
                text = last.decode()
                rep.last_time = text
                if signer is not None:
                    signer.last_time = text
                self.prev = prev
                self.prev_hex = prevhex.decode()
                done = 0
            self.add_leaves(pending)

        def load() -> None:
            nonlocal head, signer, prev, prevhex, last
            head = b""
            key = self._fast_key()
            log, last_time = rep.log, rep.last_time
            if key is None or log is None or last_time is None:
                return
            try:
                kid_bytes, log_bytes, last = key.kid.encode(), log.encode(), last_time.encode()
            except UnicodeEncodeError:
                return
            if _FAST_KID.fullmatch(kid_bytes) is None or _FAST_LOG.fullmatch(log_bytes) is None:
                return
            if verify:
                verifier.use_key(key.sign_key)
            signer = key
            prev = self.prev
            prevhex = self.prev_hex.encode()
            head = b',"kid":"' + kid_bytes + b'","log":"' + log_bytes + b'","prev":"'

        load()
        for pos, (hash_, sig, body) in rows:
            if head and fast(pos, hash_, sig, body):
                continue
            sync()
            if unreadable is not None and not (
                type(hash_) is bytes and type(sig) is bytes and type(body) is bytes
            ):
                raise unreadable(pos)
            self.event(RawEvent(pos, hash_, sig, body))
            load()
        sync()

    def add_leaves(self, leaves: list[bytes]) -> None:
        """Add event hashes to the Merkle tree (emptying ``leaves``), keeping the root at
        the size of a held receipt."""
        if not leaves:
            return
        acc = self.acc
        cut = self.receipt_size - acc.size
        if 0 < cut <= len(leaves):
            acc.extend(leaves[:cut])
            self.receipt_root = acc.root()
            acc.extend(leaves[cut:])
        else:
            acc.extend(leaves)
        leaves.clear()

    def event(self, raw: RawEvent) -> None:
        rep = self.report
        rep.events += 1
        body = raw.body
        h = leaf_hash(body)
        if h != raw.hash:
            self.fail(
                raw, None, "hash", "body does not hash to the stored hash", raw.hash.hex(), h.hex()
            )
        data: dict[str, Any] | None = None
        rid: str | None = None
        head = _parse_head(body)
        if head is not None:
            seq, prev, kind, kid, log_id, time, data_raw = head
            if kind in _NEEDS_DATA:
                data = self.parse_data(raw, seq, kind, data_raw)
            elif not data_raw.endswith(b',"type":"' + kind.encode() + b'"}'):
                data = self.parse_data(raw, seq, kind, data_raw)  # "type" not last: node.started
            elif kind.startswith(("request.", "result.")):
                found = _request_id(data_raw)
                if found is _UNKNOWN:
                    data = self.parse_data(raw, seq, kind, data_raw)
                else:
                    rid = found  # type: ignore[assignment]
            if data is not None:
                rid = data.get("request_id")
        else:
            try:
                ev = json.loads(body)
                seq, prev, kind = ev["seq"], ev["prev"], ev["type"]
                kid, log_id, time, data = ev["kid"], ev["log"], ev["time"], ev["data"]
                if not all(isinstance(x, str) for x in (prev, kind, kid, log_id, time)):
                    raise TypeError("header fields must be strings")
                if type(seq) is not int:
                    raise TypeError("seq must be an integer")
                if not isinstance(data, dict) or data.get("type") != kind or ev.get("v") != 1:
                    raise ValueError("data type does not match the event type")
            except (ValueError, KeyError, TypeError) as exc:
                self.fail(raw, None, "format", f"event body is not a fedhub event: {exc}")
                self.prev = h
                self.prev_hex = h.hex()
                self.append_leaf(h)
                return
            rid = data.get("request_id")
        # chain
        if seq != raw.position:
            self.fail(raw, seq, "sequence", "sequence number out of place", raw.position, seq)
        if prev != self.prev_hex:
            self.fail(
                raw, seq, "chain", "prev is not the hash of the previous event", self.prev_hex, prev
            )
        if log_id != rep.log:
            if rep.log is None:
                rep.log = log_id
            else:
                self.fail(raw, seq, "log", "event belongs to another log", rep.log, log_id)
        last = rep.last_time
        if last is None:
            rep.first_time = time
        elif time < last:
            self.fail(raw, seq, "time", "time goes backwards", f">= {last}", time)
        rep.last_time = time
        types = self.types
        types[kind] = types.get(kind, 0) + 1
        # checkpoints cover the events before them
        if kind == "checkpoint" and data is not None:
            self.checkpoint_event(raw, seq, data)
        # signature with the key valid now
        key = self.node_key
        signer: _Key | None = None
        if key is None and kind == "log.created" and data is not None:
            key = self.genesis(raw, seq, data)
        if key is None:
            if kind != "log.created":
                self.fail(
                    raw,
                    seq,
                    "trust",
                    "no node key established (log does not start with log.created)",
                )
        elif kid != key.kid:
            self.fail(
                raw,
                seq,
                "key",
                "event signed by a key that is not the node's current key",
                key.kid,
                kid,
            )
        elif key.revoked_at is not None:
            self.fail(
                raw,
                seq,
                "key",
                f"event signed by node key {kid}, revoked (at {key.revoked_at}) before it",
            )
        else:
            signer = key
            if self.verify_signatures:
                self.queue_signature(raw, seq, key.sign_key, h)
                rep.signatures_checked += 1
        if kind in _LIFECYCLE_FREE:
            pass
        elif kind.startswith("key."):
            if data is not None:
                self.key_event(raw, seq, kind, data)
        else:
            self.lifecycle(raw, seq, kind, rid)
        if signer is not None:  # after key events: a key may sign its own revocation
            signer.last_time = time
        self.append_leaf(h)
        self.prev = h
        self.prev_hex = h.hex()

    def append_leaf(self, h: bytes) -> None:
        """Add the event to the Merkle tree; keep the root at the size of a held receipt."""
        acc = self.acc
        acc.append(h)
        if acc.size == self.receipt_size:
            self.receipt_root = acc.root()

    def parse_data(
        self, raw: RawEvent, seq: int, kind: str, data_raw: bytes
    ) -> dict[str, Any] | None:
        """Fully parse an event's ``data`` (its type must be the event's)."""
        try:
            data = json.loads(data_raw)
        except ValueError as exc:
            self.fail(raw, seq, "format", f"event data is not JSON: {exc}")
            return None
        if not isinstance(data, dict) or data.get("type") != kind:
            self.fail(raw, seq, "format", "data type does not match the event type")
            return None
        return data

    # -- trust -----------------------------------------------------------------------------

    def genesis(self, raw: RawEvent, seq: int, data: dict[str, Any]) -> _Key | None:
        rep = self.report
        if seq != 1:
            self.fail(raw, seq, "lifecycle", "log.created is only valid as the first event")
        try:
            site = str(data["site"])
            site_key = b64d(data["site_key"])
        except (KeyError, FederationError) as exc:
            self.fail(raw, seq, "format", f"malformed log.created: {exc}")
            return None
        rep.site = site
        if self.trusted is None:
            rep.trust = f"site:{site} key {key_id(site_key)} taken from the log itself (not pinned)"
        else:
            pinned = self.trusted.get(site)
            if pinned is None:
                self.fail(raw, seq, "trust", f"no pinned key for site:{site}")
                return None
            if pinned != site_key:
                self.fail(
                    raw,
                    seq,
                    "trust",
                    "log names a site key that is not the pinned one",
                    key_id(pinned),
                    key_id(site_key),
                )
                return None
            rep.trust = f"site:{site} key {key_id(site_key)} (pinned)"
        self.site_key = site_key
        try:
            record = open_record(data["node_key"], KeyRecord, site_key)
        except (FederationError, KeyError, ValidationError) as exc:
            self.fail(raw, seq, "trust", f"node key record is not signed by the site: {exc}")
            return None
        if record.identity != data.get("node") or record.role != "node":
            self.fail(
                raw,
                seq,
                "trust",
                "node key record is for another identity",
                data.get("node"),
                record.identity,
            )
            return None
        key = _Key(record.kid, record.identity, record.role, record.sign_key_bytes(), seq)
        self.node_key = key
        self.keys[key.kid] = key
        return key

    def key_event(self, raw: RawEvent, seq: int, kind: str, data: dict[str, Any]) -> None:
        site_key = self.site_key
        if site_key is None:
            return
        try:
            if kind in ("key.registered", "key.rotated"):
                signer = data["record"].get("signer")
                node = self.node_key
                if (
                    kind == "key.rotated"
                    and signer != key_id(site_key)
                    and node is not None
                    and data["old_kid"] == node.kid
                ):
                    self.fail(
                        raw,
                        seq,
                        "trust",
                        "the node key's rotation is not vouched for by its site",
                        key_id(site_key),
                        signer,
                    )
                    return
                if signer != key_id(site_key):
                    # vouched for by another site; recorded, checked where that site is pinned
                    rec = KeyRecord.model_validate_json(b64d(data["record"]["record"]))
                    self.keys.setdefault(
                        rec.kid, _Key(rec.kid, rec.identity, rec.role, b"", seq, status="foreign")
                    )
                    return
                rec = open_record(data["record"], KeyRecord, site_key)
                new = _Key(rec.kid, rec.identity, rec.role, rec.sign_key_bytes(), seq)
                if kind == "key.rotated":
                    old = self.keys.get(data["old_kid"])
                    if old is not None:
                        old.until_seq, old.status = seq, "rotated"
                    if self.node_key is not None and data["old_kid"] == self.node_key.kid:
                        if rec.identity != self.node_key.identity:
                            self.fail(
                                raw, seq, "trust", "node key rotated to another identity's key"
                            )
                            return
                        self.node_key = new
                self.keys[new.kid] = new
            elif kind == "key.revoked":
                signer_key = self._revocation_signer(data["revocation"].get("signer"), site_key)
                if signer_key is None:
                    # signed by another site the auditor has not pinned: recorded, unchecked
                    rev = Revocation.model_validate_json(b64d(data["revocation"]["record"]))
                    foreign = self.keys.get(rev.kid)
                    if foreign is not None and foreign.status == "foreign":
                        foreign.revoked_at = rev.time
                    return
                rev = open_record(data["revocation"], Revocation, signer_key)
                target = self.keys.get(rev.kid)
                if target is not None:
                    if target.last_time is not None and target.last_time > rev.time:
                        self.fail(
                            raw,
                            seq,
                            "key",
                            f"key {rev.kid} signed events after the time it was revoked",
                            f"<= {rev.time}",
                            target.last_time,
                        )
                    # nothing signed by it after this event is valid (see event())
                    target.status, target.revoked_at = "revoked", rev.time
                    target.until_seq = target.until_seq or seq
        except (FederationError, KeyError, TypeError, AttributeError, ValidationError) as exc:
            self.fail(raw, seq, "trust", f"{kind} record does not verify: {exc}")

    def _revocation_signer(self, signer: object, site_key: bytes) -> bytes | None:
        """The key that may have signed a revocation: this log's site key, or a pinned key
        of another site (a person's home site revokes its own people); None if unpinned."""
        if signer == key_id(site_key):
            return site_key
        for key in (self.trusted or {}).values():
            if key_id(key) == signer:
                return key
        return None

    # -- checkpoints -----------------------------------------------------------------------

    def checkpoint_event(self, raw: RawEvent, seq: int, data: dict[str, Any]) -> None:
        key = self.node_key
        if key is None:
            return
        try:
            cp = open_record(data["checkpoint"], Checkpoint, key.sign_key)
        except (FederationError, KeyError, ValidationError) as exc:
            self.fail(raw, seq, "checkpoint", f"checkpoint signature does not verify: {exc}")
            return
        root = self.acc.root().hex()
        if cp.size != self.acc.size:
            self.fail(
                raw,
                seq,
                "checkpoint",
                "checkpoint size is not the number of events before it",
                self.acc.size,
                cp.size,
            )
        elif cp.root != root:
            self.fail(
                raw, seq, "checkpoint", "checkpoint root does not match the events", root, cp.root
            )
        elif cp.log != self.report.log:
            self.fail(
                raw, seq, "checkpoint", "checkpoint is for another log", self.report.log, cp.log
            )
        else:
            self.report.checkpoints += 1

    # -- lifecycle -------------------------------------------------------------------------

    def lifecycle(self, raw: RawEvent, seq: int, kind: str, rid: str | None) -> None:
        if kind == "node.started":
            if self.running:
                self.report.unclean_restarts += 1
            self.running = True
            return
        if kind == "node.stopped":
            if not self.running:
                self.fail(raw, seq, "lifecycle", "node.stopped without node.started")
            self.running = False
            return
        if not self.running:
            self.fail(
                raw, seq, "lifecycle", f"{kind} while the node is stopped (no node.started since)"
            )
        if not isinstance(rid, str):
            if kind != "request.rejected":
                self.fail(raw, seq, "format", f"{kind} without a request id")
            return
        new, problem = _request_step(kind, rid, self.requests.get(rid))
        if problem is not None:
            self.fail(raw, seq, "lifecycle", problem)
        if new is not None:
            self.requests[rid] = new

    # -- the end ---------------------------------------------------------------------------

    def finish(self) -> None:
        rep = self.report
        rep.types = Counter(self.types)
        rep.requests = Counter(self.requests.values())
        rep.root = self.acc.root().hex()
        rep.keys = {
            k.kid: {
                "identity": k.identity,
                "role": k.role,
                "status": k.status,
                "from_seq": k.since_seq,
                "until_seq": k.until_seq,
                "revoked_at": k.revoked_at,
            }
            for k in self.keys.values()
        }
        if self.receipt is not None:
            self.verify_receipt()

    def verify_receipt(self) -> None:
        rep = self.report
        pos = rep.events + 1
        dummy = RawEvent(pos, b"", b"", b"")
        receipt = self.receipt
        assert receipt is not None
        key = self.keys.get(receipt.signer)
        if key is None or not key.sign_key:
            self.report.findings.append(
                Finding(
                    pos,
                    None,
                    "receipt",
                    f"checkpoint was signed by key {receipt.signer}, which this log never used",
                )
            )
            return
        try:
            cp = open_record(receipt, Checkpoint, key.sign_key)
        except (FederationError, ValidationError) as exc:
            self.report.findings.append(
                Finding(pos, None, "receipt", f"checkpoint signature does not verify: {exc}")
            )
            return
        rep.receipt = {"size": cp.size, "root": cp.root, "time": cp.time}
        if cp.log != rep.log:
            self.fail(dummy, None, "receipt", "checkpoint is for another log", rep.log, cp.log)
        elif cp.size > rep.events:
            self.fail(
                dummy,
                None,
                "receipt",
                "log is shorter than a checkpoint it once signed (tail truncated)",
                f">= {cp.size} events",
                rep.events,
            )
        elif self.receipt_root is None or self.receipt_root.hex() != cp.root:
            found = self.receipt_root.hex() if self.receipt_root else None
            at = RawEvent(cp.size, b"", b"", b"")
            self.report.findings.append(
                Finding(
                    at.position,
                    cp.size,
                    "receipt",
                    f"the first {cp.size} events differ from the checkpoint (history rewritten)",
                    cp.root,
                    found,
                )
            )


# An event body is canonical JSON with sorted keys, so ``data`` comes first and the header
# fields follow it in a fixed order. Strings in canonical JSON escape every ``"``, so the
# bytes ``,"kid":"`` can occur inside ``data`` only as a key of a nested object -- always
# before the top-level one: the LAST occurrence starts the header. A body whose header does
# not match this exact form (never one a node writes) is parsed in full instead.
_TAIL = re.compile(
    rb',"kid":"([0-9a-f]{20})","log":"([^"\\\x00-\x1f]{1,140})","prev":"([0-9a-f]{64})",'
    rb'"seq":([1-9][0-9]{0,18}),"time":"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}'
    rb'\.[0-9]{6}Z)","type":"([a-z][a-z._]{0,63})","v":1}'
)
# The fast check's pieces of the same form: the header up to ``"time":"`` is compared
# whole with the expected one (whose key id and log id must match these), then this tail.
_FAST_KID = re.compile(rb"[0-9a-f]{20}")
_FAST_LOG = re.compile(rb'[^"\\\x00-\x1f]{1,140}')
_FAST_TAIL = re.compile(
    rb"([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z)"
    rb'","type":"([a-z][a-z._]{0,63})","v":1}'
)
_NEEDS_DATA = frozenset(
    {"log.created", "checkpoint", "key.registered", "key.rotated", "key.revoked"}
)
_LIFECYCLE_FREE = frozenset({"log.created", "checkpoint", "grant.added", "grant.removed"})
_RID = re.compile(rb'"request_id":(?:"([A-Za-z0-9_-]{1,64})"|null)[,}]')
_UNKNOWN = object()

_ACTIVE = ("accepted", "running")


def _request_step(kind: str, rid: str, state: str | None) -> tuple[str | None, str | None]:
    """(new state or None for no change, problem or None) of a request event in ``state``."""
    if kind == "request.received":
        return ("received" if state is None else None), None
    if kind == "request.rejected":
        return ("rejected" if state in (None, "received") else None), None
    if kind == "request.accepted":
        ok = state == "received"
        return (
            "accepted",
            None if ok else f"request {rid} accepted while {state or 'never received'}",
        )
    if kind in ("request.started", "request.progress"):
        problem = (
            None if state in _ACTIVE else f"{kind} for request {rid} while {state or 'unknown'}"
        )
        return ("running" if kind == "request.started" else None), problem
    if kind == "result.stored":
        # stored while running (log version 1 nodes) or right after completing (the node
        # replies first, then stores the sealed result)
        ok = state in _ACTIVE or state == "completed"
        return None, None if ok else f"result.stored for request {rid} while {state or 'unknown'}"
    if kind in FINAL_REQUEST_TYPES:
        new = "completed" if kind == "request.completed" else "failed"
        if state in _ACTIVE:
            return new, None
        what = (
            "completed twice"
            if state in ("completed", "failed")
            else f"ended while {state or 'unknown'}"
        )
        return new, f"request {rid} {what}"
    if kind in ("result.fetched", "result.shared") and state != "completed":
        return None, f"{kind} for request {rid} that has no result"
    return None, None


_SLOW = "\x00slow"  # not a state: the fast check leaves the event to the general path
_STATES = (None, "received", "rejected", "accepted", "running", "completed", "failed")


def _fast_kinds() -> dict[bytes, tuple[str, bytes, dict[str | None, str | None]]]:
    """Per request event type: its name, how ``data`` ends, and the request states in which
    it is fine (mapped to the new state, None for no change) -- from :func:`_request_step`."""
    kinds = (
        "request.received",
        "request.rejected",
        "request.accepted",
        "request.started",
        "request.progress",
        "request.completed",
        "request.failed",
        "result.stored",
        "result.fetched",
        "result.shared",
    )
    table = {}
    for kind in kinds:
        steps: dict[str | None, str | None] = {}
        for state in _STATES:
            new, problem = _request_step(kind, "-", state)
            if problem is None:
                steps[state] = new
        table[kind.encode()] = (kind, b',"type":"' + kind.encode() + b'"}', steps)
    return table


_FAST_KINDS = _fast_kinds()
# The same by index (a helper's runs name kinds by index).
_FAST_LIST = list(_FAST_KINDS.values())
_FAST_NAMES = [kind for kind, _, _ in _FAST_LIST]
_FAST_STEPS = [steps for _, _, steps in _FAST_LIST]
_FAST_INDEX = {kind_bytes: i for i, kind_bytes in enumerate(_FAST_KINDS)}


def _parse_head(body: bytes) -> tuple[int, str, str, str, str, str, bytes] | None:
    """(seq, prev, type, kid, log, time, data bytes) of a canonical body, else None."""
    if not body.startswith(b'{"data":{'):
        return None
    at = body.rfind(b',"kid":"')
    m = _TAIL.fullmatch(body, at) if at > 0 else None
    if m is None:
        return None
    kid, log_id, prev, seq, time, kind = m.groups()
    try:
        log_text = log_id.decode()
    except UnicodeDecodeError:
        return None
    return (
        int(seq),
        prev.decode(),
        kind.decode(),
        kid.decode(),
        log_text,
        time.decode(),
        body[8:at],
    )


def _request_id(data: bytes) -> object:
    """The request id in a flat canonical ``data`` object (None if null), else _UNKNOWN.

    Only a flat object (no nested ``{``; strings may not hold one either, to keep this
    simple) with exactly one ``"request_id":`` key is read this way; anything else is
    parsed in full.
    """
    if data.find(b"{", 1) >= 0 or data.count(b'"request_id":') != 1:
        return _UNKNOWN
    m = _RID.search(data)
    if m is None:
        return _UNKNOWN
    rid = m.group(1)
    return None if rid is None else rid.decode()


def _receipt_size(receipt: SignedRecord | None) -> int:
    """The size a receipt claims (checked with its signature at the end), or -1."""
    if receipt is None:
        return -1
    try:
        return Checkpoint.model_validate_json(b64d(receipt.record)).size
    except (FederationError, ValidationError):
        return -1


# --- signatures ---------------------------------------------------------------------------
#
# A chunk is one signing key and a blob of (32-byte hash, 64-byte signature) pairs; the
# answer is the indices of the pairs whose signature over DOMAIN_EVENT || hash does not
# verify. Worker processes run _WORKER (PyNaCl only: no fedhub import, quick to start);
# requests go to their stdin, answers come back on a pipe of their own (so nothing else a
# worker might print can mix in): request = u32 length || key || pairs, answer = u32 count
# || count x u32 index (little-endian). _verify_pairs is the same check in this process.

_PAIR = 96
_BAD_SIGNATURE = (
    nacl.exceptions.BadSignatureError,
    nacl.exceptions.ValueError,
    nacl.exceptions.TypeError,
)

_WORKER = f"""
import os, struct, sys
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError, TypeError as BadType, ValueError as BadValue
DOMAIN = {DOMAIN_EVENT!r}
read, out = sys.stdin.buffer.read, os.fdopen(int(sys.argv[1]), "wb")
while len(head := read(4)) == 4:
    blob = read(int.from_bytes(head, "little"))
    key = blob[:32]
    bad = []
    for i, at in enumerate(range(32, len(blob), {_PAIR})):
        try:
            crypto_sign_open(blob[at + 32:at + {_PAIR}] + DOMAIN + blob[at:at + 32], key)
        except (BadSignatureError, BadValue, BadType):
            bad.append(i)
    out.write(struct.pack(f"<{{len(bad) + 1}}I", len(bad), *bad))
    out.flush()
"""


def _verify_pairs(key: bytes, pairs: bytes) -> list[int]:
    """Indices of the (hash, signature) pairs whose signature does not verify."""
    bad: list[int] = []
    open_ = nacl.bindings.crypto_sign_open
    domain = DOMAIN_EVENT
    for i, at in enumerate(range(0, len(pairs), _PAIR)):
        try:
            open_(pairs[at + 32 : at + _PAIR] + domain + pairs[at : at + 32], key)
        except _BAD_SIGNATURE:
            bad.append(i)
    return bad


@dataclass(slots=True)
class _Chunk:
    key: bytes
    pairs: bytes
    positions: list[int]
    seqs: dict[int, int]  # index -> seq, where the event's seq is not its position


class _Verifier:
    """Event signatures, queued in chunks and checked while the pass goes on.

    A small log's chunks go to a thread pool (libsodium releases the GIL). Once enough
    have been queued to be worth it (or at once with ``processes=True``), worker processes
    take over -- one fewer than ``threads``, since this process verifies too: a chunk that
    finds every worker busy (two chunks each) is verified here, in between reading. The
    work balances itself and every core stays busy, with no lock shared and no core
    oversubscribed. A worker that dies has its chunks checked by the thread pool.
    """

    def __init__(self, threads: int, processes: bool | None) -> None:
        self.threads = threads
        self.processes = processes
        self.key = b""
        self.blob = bytearray()  # pairs of the chunk being filled
        self.positions: list[int] = []  # their events' positions
        self.seqs: dict[int, int] = {}
        self.queued = 0
        self.bad: list[tuple[int, int]] = []
        self.pool: ThreadPoolExecutor | None = None
        self.futures: list[tuple[_Chunk, Future[list[int]]]] = []
        self.workers: _Workers | None = None
        self.tried_workers = False

    def use_key(self, key: bytes) -> None:
        """Start a new chunk if ``key`` is not the current chunk's key."""
        if key != self.key:
            self.flush()
            self.key = key

    def add(self, position: int, seq: int, key: bytes, h: bytes, sig: bytes) -> None:
        """Queue one event's signature check."""
        if type(sig) is not bytes or len(sig) != 64 or len(key) != 32 or len(h) != 32:
            self.bad.append((position, seq))
            return
        self.use_key(key)
        if seq != position:
            self.seqs[len(self.positions)] = seq
        self.positions.append(position)
        self.blob += h
        self.blob += sig
        if len(self.positions) >= _CHUNK:
            self.flush()

    def flush(self) -> None:
        """Hand the chunk being filled to a worker process, this process or the pool."""
        if not self.positions:
            return
        chunk = _Chunk(self.key, bytes(self.blob), self.positions.copy(), self.seqs.copy())
        self.blob.clear()
        self.positions.clear()
        self.seqs.clear()
        self.queued += len(chunk.positions)
        if self.workers is None and not self.tried_workers and self.want_workers():
            self.tried_workers = True
            count = max(1, self.threads - 1)
            self.workers = _Workers.start(count, self.answered, self.orphaned)
        workers = self.workers
        if workers is None or not workers.usable:
            self.orphaned(chunk)
        elif not workers.submit(chunk):
            self.answered(chunk, _verify_pairs(chunk.key, chunk.pairs))

    def want_workers(self) -> bool:
        if self.processes is False or self.threads < 2 or os.name != "posix":
            return False
        return self.processes is True or self.queued >= _PROCESS_AFTER

    def orphaned(self, chunk: _Chunk) -> None:
        """Check a chunk on the thread pool."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="audit-verify")
        self.futures.append((chunk, self.pool.submit(_verify_pairs, chunk.key, chunk.pairs)))

    def answered(self, chunk: _Chunk, bad: list[int]) -> None:
        for i in bad:
            position = chunk.positions[i]
            self.bad.append((position, chunk.seqs.get(i, position)))

    def finish(self) -> list[tuple[int, int]]:
        """Wait for every check; the (position, seq) of each bad signature, in order."""
        self.flush()
        if self.workers is not None:
            self.workers.drain()
        for chunk, fut in self.futures:
            self.answered(chunk, fut.result())
        self.close()
        return sorted(self.bad)

    def close(self) -> None:
        """Stop the workers and the pool (harmless twice)."""
        if self.workers is not None:
            self.workers.close()
            self.workers = None
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


class _Workers:
    """Worker processes checking chunks (see _WORKER), fed without blocking for long."""

    def __init__(
        self,
        procs: list[tuple[subprocess.Popen[bytes], int]],
        answered: Callable[[_Chunk, list[int]], None],
        orphaned: Callable[[_Chunk], None],
    ) -> None:
        self.procs = [proc for proc, _ in procs]
        self.answers = [fd for _, fd in procs]
        self.answered = answered
        self.orphaned = orphaned
        self.pending: list[deque[_Chunk]] = [deque() for _ in procs]
        self.inbox = [bytearray() for _ in procs]
        self.alive = [True] * len(procs)
        self.selector = selectors.DefaultSelector()
        for i, fd in enumerate(self.answers):
            self.selector.register(fd, selectors.EVENT_READ, i)

    @classmethod
    def start(
        cls,
        count: int,
        answered: Callable[[_Chunk, list[int]], None],
        orphaned: Callable[[_Chunk], None],
    ) -> _Workers | None:
        """Start ``count`` workers; None if this Python cannot (the thread pool is used)."""
        if not sys.executable:
            return None
        procs: list[tuple[subprocess.Popen[bytes], int]] = []
        try:
            for _ in range(count):
                procs.append(spawn_worker(_WORKER))
        except OSError:
            for proc, fd in procs:
                stop_worker(proc, fd, kill=True)
            return None
        return cls(procs, answered, orphaned)

    @property
    def usable(self) -> bool:
        """Whether any worker is still alive."""
        return any(self.alive)

    def submit(self, chunk: _Chunk) -> bool:
        """Hand a chunk to a live worker with room for it; False if none has room."""
        self.collect(timeout=0)
        payload = chunk.key + chunk.pairs
        message = len(payload).to_bytes(4, "little") + payload
        while True:
            room = [
                i for i, up in enumerate(self.alive) if up and len(self.pending[i]) < _IN_FLIGHT
            ]
            if not room:
                return False
            i = min(room, key=lambda i: len(self.pending[i]))
            stdin = self.procs[i].stdin
            assert stdin is not None
            try:
                write_all(stdin.fileno(), message)
            except OSError:
                self.lost(i)
                continue
            self.pending[i].append(chunk)
            return True

    def collect(self, timeout: float | None) -> None:
        """Take in the answers available (waiting up to ``timeout`` for one; None: until
        some worker answers or dies)."""
        if not any(q and self.alive[i] for i, q in enumerate(self.pending)):
            return
        for key, _ in self.selector.select(timeout):
            i = key.data
            try:
                data = os.read(key.fd, 1 << 16)
            except OSError:
                data = b""
            if not data:
                self.lost(i)
                continue
            inbox = self.inbox[i]
            inbox += data
            while len(inbox) >= 4 and self.pending[i]:
                size = len(self.pending[i][0].positions)
                n = int.from_bytes(inbox[:4], "little")
                end = 4 + 4 * n
                if n > size:  # not an answer to this chunk: not to be trusted
                    self.lost(i)
                    break
                if len(inbox) < end:
                    break
                bad = list(struct.unpack(f"<{n}I", inbox[4:end]))
                del inbox[:end]
                if any(k >= size for k in bad):
                    self.lost(i)
                    break
                self.answered(self.pending[i].popleft(), bad)

    def drain(self) -> None:
        """Wait for every chunk handed out."""
        while any(q and self.alive[i] for i, q in enumerate(self.pending)):
            self.collect(timeout=None)

    def lost(self, i: int) -> None:
        """Worker ``i`` died or hung up: its chunks go to the thread pool."""
        self.alive[i] = False
        self.selector.unregister(self.answers[i])
        pending = self.pending[i]
        while pending:
            self.orphaned(pending.popleft())
        stop_worker(self.procs[i], self.answers[i], kill=True)

    def close(self) -> None:
        """Let the workers finish (end of input), or kill them if they do not."""
        self.selector.close()
        for i, proc in enumerate(self.procs):
            if self.alive[i]:
                stop_worker(proc, self.answers[i], kill=bool(self.pending[i]))
            self.alive[i] = False


# --- a helper process for chain-only audits of large SQLite logs -------------------------
#
# The helper imports this module without the ``hub`` package's __init__ (which loads the
# client and its dependencies), writes its records with marshal to a file in a private
# temporary folder, and exits; this process reads them once its own half is done.

_SPLIT_MIN = 100_000  # events (by the last seq) from which a chain-only audit splits
_SPLIT_SHARE = 0.5  # of the events audited by this process; the helper reads the rest
_RUN_MAX = 4096  # events per run record
_SLOW_EVENT, _FAST_RUN, _HELPER_FAILED = 0, 1, 2

_HELPER = """
import sys, types
pkg = types.ModuleType("hub")
pkg.__path__ = [sys.argv[1]]
sys.modules["hub"] = pkg
from hub.audit import _speculate_to
_speculate_to(sys.argv[2], int(sys.argv[3]), sys.argv[4])
"""


class _Helper:
    """A helper process speculating over the events after ``after_seq``."""

    def __init__(self, proc: subprocess.Popen[bytes], folder: tempfile.TemporaryDirectory[str]):
        self.proc = proc
        self.folder = folder
        self.file: BinaryIO | None = None

    @classmethod
    def start(cls, db: Path, after_seq: int) -> _Helper | None:
        """Start the helper; None if this Python cannot."""
        here = Path(__file__).resolve().parent
        if not sys.executable or not (here / "audit.py").is_file():
            return None
        folder = tempfile.TemporaryDirectory(prefix="fedhub-audit-")
        out = Path(folder.name) / "runs"
        argv = [sys.executable, "-c", _HELPER, str(here), str(db.resolve()), str(after_seq)]
        try:
            proc = subprocess.Popen(
                [*argv, str(out)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            folder.cleanup()
            return None
        return cls(proc, folder)

    def records(self) -> Iterator[tuple[Any, ...]]:
        """The helper's records in order, as it writes them (each framed by its length);
        ends with ``(_HELPER_FAILED,)`` if the helper does not finish cleanly."""
        try:
            self.file = (Path(self.folder.name) / "runs").open("rb")
        except OSError:
            self.proc.wait()
            try:
                self.file = (Path(self.folder.name) / "runs").open("rb")
            except OSError:
                yield (_HELPER_FAILED,)
                return
        while True:
            head = self._read(4)
            if head is None:
                return
            body = self._read(int.from_bytes(head, "little")) if len(head) == 4 else b""
            if len(head) < 4 or body is None:
                yield (_HELPER_FAILED,)
                return
            # our own helper's output, in a folder only this user can read
            yield marshal.loads(body)  # noqa: S302

    def _read(self, n: int) -> bytes | None:
        """``n`` bytes from the file, waiting while the helper runs; None at a clean end,
        fewer than ``n`` bytes at an unclean one."""
        fh = self.file
        assert fh is not None
        got = b""
        while len(got) < n:
            data = fh.read(n - len(got))
            if data:
                got += data
                continue
            code = self.proc.poll()
            if code is None:
                time.sleep(0.002)
                continue
            data = fh.read(n - len(got))  # written just before it exited
            got += data
            if not data:
                return None if code == 0 and not got else got
        return got

    def close(self) -> None:
        """Stop the helper if it still runs; remove its file (harmless twice)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.file is not None:
            self.file.close()
        self.folder.cleanup()


def _speculate_to(db: str, after_seq: int, out: str) -> None:
    """The helper's work: speculate over the events after ``after_seq``, records to ``out``."""
    source = SqliteEvents(Path(db))
    prev = source.stored_hash(after_seq)
    rows = _positioned(source.rows(after_seq=after_seq), after_seq + 1)
    with Path(out).open("wb") as fh:
        for record in _speculate(rows, prev if type(prev) is bytes else b""):
            data = marshal.dumps(record)
            fh.write(len(data).to_bytes(4, "little") + data)
            fh.flush()


def _speculate(rows: Iterable[_Row], prev: bytes) -> Iterator[tuple[Any, ...]]:
    """Records for a stretch of the log, taking for granted the state it starts from.

    A run record gathers consecutive request events that pass every check of the fast
    check (:meth:`_Auditor.scan`) that does not need the auditor's state, with the key id
    and log id of the run's first event, ``prev`` chained from the event before, ``seq``
    counted from the first position and time never going back within the run:
    ``(_FAST_RUN, first position, kid, log id, prev taken for granted, first time,
    last time, kind indices, request ids, hashes)``. Every other event is a slow record
    ``(_SLOW_EVENT, position, hash, sig, body)``, and a new run starts after it.
    """
    leaf = leaf_hash
    tail = _FAST_TAIL.fullmatch
    rid_at = _RID.match
    fast_kinds = _FAST_KINDS
    kind_index = _FAST_INDEX
    head = b""  # the run's header up to prev's value; empty: no run open
    run: list[Any] = []
    kinds = bytearray()
    rids: list[str] = []
    hashes = bytearray()
    last = b""
    prevhex = hexlify(prev)
    for pos, (hash_, sig, body) in rows:
        h = None
        ok = False
        if type(body) is bytes and type(sig) is bytes:
            h = leaf(body)
            at = body.rfind(b',"kid":"')
            if h == hash_ and at > 8 and body.startswith(b'{"data":{'):
                if not head:
                    m = _TAIL.fullmatch(body, at)
                    if m is not None:
                        try:
                            m.group(2).decode()
                        except UnicodeDecodeError:
                            m = None
                    if m is not None:
                        kid, log_id = m.group(1), m.group(2)
                        head = b',"kid":"' + kid + b'","log":"' + log_id + b'","prev":"'
                        run = [_FAST_RUN, pos, kid, log_id, prev, b"", b""]
                        last = b""
                expected = head + prevhex + b'","seq":' + str(pos).encode() + b',"time":"'
                m = (
                    tail(body, at + len(expected))
                    if head and body.startswith(expected, at)
                    else None
                )
                if m is not None:
                    time, kind_bytes = m.groups()
                    spec = fast_kinds.get(kind_bytes)
                    if spec is not None and time >= last:
                        i = -1
                        if body.endswith(spec[1], 9, at) and body.find(b"{", 9, at) < 0:
                            i = body.find(b'"request_id":', 9, at)
                        if i >= 0 and body.find(b'"request_id":', i + 13, at) < 0:
                            r = rid_at(body, i, at)
                            if r is not None and (rid := r.group(1)) is not None:
                                if not kinds:
                                    run[5] = time
                                kinds.append(kind_index[kind_bytes])
                                rids.append(rid.decode())
                                hashes += h
                                last = time
                                ok = True
        if ok:
            if len(kinds) >= _RUN_MAX:
                yield (*run[:6], last, bytes(kinds), rids, bytes(hashes))
                run = [_FAST_RUN, pos + 1, run[2], run[3], h, b"", b""]
                kinds.clear()
                rids = []
                hashes.clear()
        else:
            if kinds:
                yield (*run[:6], last, bytes(kinds), rids, bytes(hashes))
                kinds.clear()
                rids = []
                hashes.clear()
            head = b""
            yield (_SLOW_EVENT, pos, hash_, sig, body)
        if h is not None:
            prev = h
            prevhex = hexlify(h)
    if kinds:
        yield (*run[:6], last, bytes(kinds), rids, bytes(hashes))


def _positioned(
    batches: Iterable[tuple[int, list[tuple[Any, Any, Any]]]], first: int
) -> Iterable[_Row]:
    """Rows of batches whose positions count from 1, renumbered from ``first``."""
    return chain.from_iterable(zip(count(first - 1 + start), batch) for start, batch in batches)


# --- sources ------------------------------------------------------------------------------


def _rows(
    events: Iterable[RawEvent], progress: Callable[[int], None] | None
) -> tuple[Iterable[_Row], Callable[[int], Exception] | None]:
    """The rows to audit, and the error for a row that is not all bytes (if the source
    guarantees bytes). A SQLite log is read in bulk, without an object per event."""
    if isinstance(events, SqliteEvents):
        batches = events.rows()
        if progress is not None:
            batches = _counting_batches(batches, progress)
        return _positioned(batches, 1), events.not_blobs
    if progress is not None:
        events = _counting(events, progress)
    return ((raw.position, (raw.hash, raw.sig, raw.body)) for raw in events), None


def audit_events(
    events: Iterable[RawEvent],
    *,
    trusted_sites: dict[str, bytes] | None,
    receipt: SignedRecord | None = None,
    verify_signatures: bool = True,
    threads: int | None = None,
    processes: bool | None = None,
    progress: Callable[[int], None] | None = None,
) -> AuditReport:
    """Audit a log given as raw events.

    ``trusted_sites`` maps site names to their pinned Ed25519 keys; ``None`` trusts the
    site key the log itself names (reported as such). ``receipt`` is a checkpoint obtained
    earlier that the log must contain. ``verify_signatures=False`` checks hashes, chain,
    checkpoints and lifecycle only. Signatures are checked by ``threads`` workers (default:
    one per core): worker processes once the log is large enough to be worth them (or
    always with ``processes=True``, never with ``processes=False``), threads otherwise.
    """
    auditor = _Auditor(
        trusted_sites,
        receipt,
        verify_signatures,
        threads or os.cpu_count() or 2,
        processes,
    )
    if not verify_signatures and progress is None and isinstance(events, SqliteEvents):
        last = events.last_seq()
        if last >= _SPLIT_MIN:
            auditor.run_split(events, int(last * _SPLIT_SHARE))
            return auditor.report
    rows, unreadable = _rows(events, progress)
    auditor.run(rows, unreadable)
    return auditor.report


def _counting(events: Iterable[RawEvent], progress: Callable[[int], None]) -> Iterable[RawEvent]:
    for raw in events:
        if raw.position % 10_000 == 0:
            progress(raw.position)
        yield raw


def _counting_batches(
    batches: Iterator[tuple[int, list[tuple[Any, Any, Any]]]], progress: Callable[[int], None]
) -> Iterator[tuple[int, list[tuple[Any, Any, Any]]]]:
    for start, batch in batches:
        for position in range(-(-start // 10_000) * 10_000, start + len(batch), 10_000):
            progress(position)
        yield start, batch
