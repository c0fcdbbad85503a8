"""Replay a node's event log and verify it: a verdict with evidence.

What is checked, in one pass (docs/audit.md has the full list):

* **trust**: the genesis event names the site key and carries the node key record signed by
  it; the site key must be one the auditor pinned (unless told to trust the log's own);
* **hashes and chain**: each body hashes to its stored hash; ``seq`` counts up from 1 with
  no gap; ``prev`` is the previous event's hash; one log id throughout;
* **signatures**: each event verifies against the node key valid at that point (rotations
  and revocations are events too); checked on a thread pool so every core helps;
* **checkpoints**: each checkpoint event's signed root and size match the events before it;
  a checkpoint held by the auditor (a receipt) must be contained in and extended by the log;
* **lifecycle**: a request is accepted only after it was received, completes or fails once
  and only after acceptance; nothing but a start follows a node's stop.

The result is an :class:`AuditReport`; :attr:`AuditReport.first` is the first bad event.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import nacl.bindings
import nacl.exceptions
from pydantic import ValidationError

from hub.canonical import b64d
from hub.chain import GENESIS_PREV, MerkleAccumulator, leaf_hash
from hub.crypto import key_id
from hub.errors import FederationError
from hub.events import DOMAIN_EVENT, FINAL_REQUEST_TYPES
from hub.logfile import RawEvent
from hub.records import Checkpoint, KeyRecord, Revocation, SignedRecord, open_record

__all__ = ["AuditReport", "Finding", "audit_events"]

_SIG_CHUNK = 2048
_MAX_FINDINGS = 1000


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


class _Auditor:
    def __init__(
        self,
        trusted_sites: dict[str, bytes] | None,
        receipt: SignedRecord | None,
        verify_signatures: bool,
        threads: int,
    ) -> None:
        self.trusted = trusted_sites
        self.receipt = receipt
        self.verify_signatures = verify_signatures
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
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="audit-verify")
        self.futures: list[Future[list[tuple[int, int]]]] = []
        self.batch: list[tuple[int, int, bytes, bytes, bytes]] = []

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

    # -- signatures on the pool ------------------------------------------------------------

    def queue_signature(self, raw: RawEvent, seq: int, key: bytes, h: bytes) -> None:
        self.batch.append((raw.position, seq, key, h, raw.sig))
        if len(self.batch) >= _SIG_CHUNK:
            self.flush_signatures()

    def flush_signatures(self) -> None:
        if self.batch:
            self.futures.append(self.pool.submit(_verify_chunk, self.batch))
            self.batch = []

    def collect_signatures(self) -> None:
        self.flush_signatures()
        for fut in self.futures:
            for position, seq in fut.result():
                self.report.findings.append(
                    Finding(position, seq, "signature", "event signature does not verify")
                )
        self.pool.shutdown()

    # -- the pass --------------------------------------------------------------------------

    def run(self, events: Iterable[RawEvent]) -> AuditReport:
        if self.receipt_size == 0:
            self.receipt_root = self.acc.root()
        try:
            for raw in events:
                self.event(raw)
        except _StopAuditError:
            pass
        finally:
            self.collect_signatures()
        self.finish()
        return self.report

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
                rev = open_record(data["revocation"], Revocation, site_key)
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
        state = self.requests.get(rid)
        if kind == "request.received":
            if state is None:
                self.requests[rid] = "received"
        elif kind == "request.rejected":
            if state in (None, "received"):
                self.requests[rid] = "rejected"
        elif kind == "request.accepted":
            if state != "received":
                self.fail(
                    raw,
                    seq,
                    "lifecycle",
                    f"request {rid} accepted while {state or 'never received'}",
                )
            self.requests[rid] = "accepted"
        elif kind in ("request.started", "request.progress", "result.stored"):
            if state not in ("accepted", "running"):
                self.fail(
                    raw, seq, "lifecycle", f"{kind} for request {rid} while {state or 'unknown'}"
                )
            if kind == "request.started":
                self.requests[rid] = "running"
        elif kind in FINAL_REQUEST_TYPES:
            if state not in ("accepted", "running"):
                what = (
                    "completed twice"
                    if state in ("completed", "failed")
                    else f"ended while {state or 'unknown'}"
                )
                self.fail(raw, seq, "lifecycle", f"request {rid} {what}")
            self.requests[rid] = "completed" if kind == "request.completed" else "failed"
        elif kind in ("result.fetched", "result.shared") and state != "completed":
            self.fail(raw, seq, "lifecycle", f"{kind} for request {rid} that has no result")

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
_NEEDS_DATA = frozenset(
    {"log.created", "checkpoint", "key.registered", "key.rotated", "key.revoked"}
)
_LIFECYCLE_FREE = frozenset({"log.created", "checkpoint", "grant.added", "grant.removed"})
_RID = re.compile(rb'"request_id":(?:"([A-Za-z0-9_-]{1,64})"|null)[,}]')
_UNKNOWN = object()


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


def _verify_chunk(items: list[tuple[int, int, bytes, bytes, bytes]]) -> list[tuple[int, int]]:
    bad: list[tuple[int, int]] = []
    open_ = nacl.bindings.crypto_sign_open
    domain = DOMAIN_EVENT
    for position, seq, key, h, sig in items:
        try:
            if len(sig) != 64:
                raise nacl.exceptions.BadSignatureError
            open_(sig + domain + h, key)
        except (
            nacl.exceptions.BadSignatureError,
            nacl.exceptions.ValueError,
            nacl.exceptions.TypeError,
        ):
            bad.append((position, seq))
    return bad


def audit_events(
    events: Iterable[RawEvent],
    *,
    trusted_sites: dict[str, bytes] | None,
    receipt: SignedRecord | None = None,
    verify_signatures: bool = True,
    threads: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> AuditReport:
    """Audit a log given as raw events.

    ``trusted_sites`` maps site names to their pinned Ed25519 keys; ``None`` trusts the
    site key the log itself names (reported as such). ``receipt`` is a checkpoint obtained
    earlier that the log must contain. ``verify_signatures=False`` checks hashes, chain,
    checkpoints and lifecycle only.
    """
    auditor = _Auditor(trusted_sites, receipt, verify_signatures, threads or os.cpu_count() or 2)
    if progress is not None:
        events = _counting(events, progress)
    return auditor.run(events)


def _counting(events: Iterable[RawEvent], progress: Callable[[int], None]) -> Iterable[RawEvent]:
    for raw in events:
        if raw.position % 10_000 == 0:
            progress(raw.position)
        yield raw
