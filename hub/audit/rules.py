"""The general path: every check of one event, in a fixed order (docs/audit.md).

:class:`Rules` holds what the pass knows so far (the chain, the node key, the keys it
vouched for, each request's state, the Merkle tree) and :meth:`Rules.event` applies every
rule to one event: form, chain, key, signature, then what its type says -- trust
(``log.created``), keys (``key.*``), checkpoints, and the lifecycle (:mod:`hub.lifecycle`,
the one source of the legal steps). The fast path (:mod:`hub.audit.fast`) decides a
subset of events the same way, faster.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from hub.canonical import b64d
from hub.chain import GENESIS_PREV, MerkleAccumulator, leaf_hash
from hub.errors import CanonicalError, FederationError, LifecycleError
from hub.lifecycle import REQUEST_EVENT_TYPES, RequestState, step
from hub.logfile import RawEvent
from hub.records import Checkpoint, SignedRecord, open_record

from .federation import FEDERATION_TYPES, federation_event
from .forms import TIME, check_canonical, check_data, parse_body
from .report import AuditReport, Finding
from .signatures import Verifier
from .trust import Key, Trust

__all__ = ["MAX_FINDINGS", "Rules", "StopAuditError", "open_receipt"]

MAX_FINDINGS = 1000
_OWN_COMMIT = frozenset({"log.created", "checkpoint", "key.rotated"})
_HEADER = {"data", "kid", "log", "prev", "seq", "time", "type", "v"}


class StopAuditError(Exception):
    """Internal: too many findings to go on collecting."""


class Rules:
    """The state of the pass and every rule of the general path."""

    def __init__(
        self,
        trusted_sites: dict[str, bytes] | None,
        receipts: list[SignedRecord],
        verifier: Verifier,
        verify_signatures: bool,
    ) -> None:
        self.receipts = receipts
        self.verifier = verifier
        self.verify_signatures = verify_signatures
        self.report = AuditReport(
            signatures_verified=verify_signatures, trust_pinned=trusted_sites is not None
        )
        self.acc = MerkleAccumulator()
        self.prev = GENESIS_PREV
        self.prev_hex = GENESIS_PREV.hex()
        self.trust = Trust(trusted_sites, self.report, self.fail)
        self.requests: dict[str, RequestState] = {}
        self.running = False
        self.last_started: int | None = None  # seq of the last node.started so far
        self.version = 1  # the highest body version so far (no lower one may follow)
        self.types: dict[str, int] = {}
        # unsigned version 2 events not yet covered by a signature: runs of the same kid,
        # as (position, seq, kid) of each run's first event
        self.uncovered: list[tuple[int, int, str]] = []
        self.last_position = 0
        self.stopped = False  # True once the pass gave up (too many findings)
        # position -> index in the findings of the first finding of what its type says
        # (step 8), for events that have one: a bad signature (step 7) goes before it
        self.typed_at: dict[int, int] = {}
        # Merkle roots at the sizes receipts claim (filled in as the tree grows)
        self.roots: dict[int, bytes] = dict.fromkeys(_receipt_sizes(receipts), b"")
        self.cuts = sorted(self.roots)
        if 0 in self.roots:
            self.roots[0] = self.acc.root()

    # -- findings --------------------------------------------------------------------------

    def fail(
        self,
        position: int,
        seq: int | None,
        check: str,
        message: str,
        expected: object = None,
        found: object = None,
    ) -> None:
        """Record a finding (and stop the pass once there are too many)."""
        self.report.findings.append(
            Finding(
                position,
                seq,
                check,
                message,
                None if expected is None else str(expected),
                None if found is None else str(found),
            )
        )
        if len(self.report.findings) >= MAX_FINDINGS:
            self.stopped = True
            raise StopAuditError

    def bad_signatures(self, failed: list[tuple[int, int]]) -> None:
        """Record the signatures that did not verify, each in its place in the order of
        checks: before the findings of what its event's type says, else after the rest."""
        findings = self.report.findings
        placed = sorted(
            (p for p in failed if p[0] in self.typed_at),
            key=lambda p: (self.typed_at[p[0]], p[0]),
            reverse=True,
        )
        for position, seq in placed:
            finding = Finding(position, seq, "signature", "event signature does not verify")
            findings.insert(self.typed_at[position], finding)
        for position, seq in failed:
            if position not in self.typed_at:
                findings.append(
                    Finding(position, seq, "signature", "event signature does not verify")
                )

    # -- the tree --------------------------------------------------------------------------

    def add_leaves(self, leaves: list[bytes]) -> None:
        """Add event hashes to the Merkle tree (emptying ``leaves``), keeping the root at
        every size a receipt claims."""
        if not leaves:
            return
        acc = self.acc
        start = acc.size
        end = start + len(leaves)
        done = 0
        for cut in self.cuts:
            if start < cut <= end:
                acc.extend(leaves[done : cut - start])
                done = cut - start
                self.roots[cut] = acc.root()
        acc.extend(leaves[done:])
        leaves.clear()

    def add_leaf(self, h: bytes) -> None:
        """Add one event hash to the Merkle tree."""
        acc = self.acc
        acc.append(h)
        if acc.size in self.roots:
            self.roots[acc.size] = acc.root()

    # -- one event -------------------------------------------------------------------------

    def event(self, raw: RawEvent) -> None:
        """Every check of one event, in order: hash, form, chain, key, signature, type."""
        rep = self.report
        rep.events += 1
        pos = raw.position
        self.last_position = pos
        body = raw.body
        h = leaf_hash(body)
        if h != raw.hash:
            self.fail(
                pos, None, "hash", "body does not hash to the stored hash", raw.hash.hex(), h.hex()
            )
        parsed = self.read(raw)
        if parsed is None:
            self.prev = h
            self.prev_hex = h.hex()
            self.add_leaf(h)
            return
        seq, prev, kind, kid, log_id, time, version, data = parsed
        # chain
        if seq != pos:
            self.fail(pos, seq, "sequence", "sequence number out of place", pos, seq)
        if prev != self.prev_hex:
            self.fail(
                pos, seq, "chain", "prev is not the hash of the previous event", self.prev_hex, prev
            )
        if log_id != rep.log:
            if rep.log is None:
                rep.log = log_id
            else:
                self.fail(pos, seq, "log", "event belongs to another log", rep.log, log_id)
        last = rep.last_time
        if last is None:
            rep.first_time = time
        elif time < last:
            self.fail(pos, seq, "time", "time goes backwards", f">= {last}", time)
        rep.last_time = time
        self.types[kind] = self.types.get(kind, 0) + 1
        if kind == "checkpoint" and data is not None:
            self.checkpoint_event(pos, seq, time, data)
        # the key valid now
        key = self.trust.node_key
        if key is None and kind == "log.created" and pos == 1 and data is not None:
            key = self.trust.genesis(pos, seq, log_id, data)
        signer = self.key_check(pos, seq, kind, kid, key)
        self.signature(raw, seq, version, kind, kid, h, signer)
        # what the type says (a signature that fails to verify ranks before these findings)
        typed = len(rep.findings)
        if kind == "log.created":
            if pos != 1:
                self.fail(pos, seq, "lifecycle", "log.created is only valid as the first event")
        elif kind.startswith("key."):
            if data is not None:
                self.trust.key_event(pos, seq, kind, data)
        elif kind in FEDERATION_TYPES:
            if data is not None:
                federation_event(self.trust, pos, seq, kind, data, rep.log)
        elif kind in REQUEST_EVENT_TYPES or kind.startswith("node."):
            self.lifecycle(pos, seq, kind, version, data)
        if len(rep.findings) > typed:
            self.typed_at[pos] = typed
        if signer is not None:  # after key events: a key may sign its own revocation
            signer.last_time = time
        self.add_leaf(h)
        self.prev = h
        self.prev_hex = h.hex()

    def read(
        self, raw: RawEvent
    ) -> tuple[int, str, str, str, str, str, int, dict[str, Any] | None] | None:
        """The body's header and (when a check needs it) data; None after a ``format``
        finding that leaves nothing to check. Bodies in the form a node writes have their
        header read in place; the rest are parsed in full and must be canonical."""
        body = raw.body
        pos = raw.position
        seq: Any = None
        try:
            ev = parse_body(body)
            seq = ev.get("seq")
            seq, prev, kind, kid, log_id, time, version = _header(ev)
            check_canonical(body, ev)
            # canonical: ``data`` comes first, the header starts at the last ``,"kid":"``
            data_bytes = body[8 : body.rfind(b',"kid":"')]
        except CanonicalError as exc:
            if type(seq) is not int:
                seq = None
            self.fail(pos, seq, "format", f"event body is not a fedhub event: {exc}")
            return None
        if TIME.fullmatch(time) is None:
            self.fail(pos, seq, "format", "time is not YYYY-MM-DDTHH:MM:SS.ffffffZ", found=time)
        if version < self.version:
            self.fail(pos, seq, "format", "a version 1 event after a version 2 event")
        self.version = max(self.version, version)
        data, problem = check_data(kind, version, data_bytes)
        if problem:
            self.fail(pos, seq, "format", problem)
        return seq, prev, kind, kid, log_id, time, version, data

    def key_check(self, pos: int, seq: int, kind: str, kid: str, key: Key | None) -> Key | None:
        """The node key that signs (or whose next signature covers) this event, if valid."""
        if key is None:
            if kind != "log.created":
                self.fail(
                    pos,
                    seq,
                    "trust",
                    "no node key established (log does not start with log.created)",
                )
            return None
        if kid != key.kid:
            self.fail(
                pos,
                seq,
                "key",
                "event names a key that is not the node's current key",
                key.kid,
                kid,
            )
            return None
        if key.revoked_at is not None:
            self.fail(
                pos,
                seq,
                "key",
                f"event names node key {kid}, revoked (at {key.revoked_at}) before it",
            )
            return None
        return key

    def signature(
        self,
        raw: RawEvent,
        seq: int,
        version: int,
        kind: str,
        kid: str,
        h: bytes,
        signer: Key | None,
    ) -> None:
        """Version 1: every event is signed. Version 2: a signed event is checked and
        covers the unsigned ones before it, which must name its key; the genesis, a
        checkpoint and a rotation are commits of their own (signed, after a signed one)."""
        pos = raw.position
        sig = raw.sig
        if version == 2 and kind in _OWN_COMMIT:
            if self.uncovered:
                why = f"{kind} is a commit of its own, but the events before it are unsigned"
                self.fail(pos, seq, "signature", why)
            if not sig:
                self.fail(pos, seq, "signature", f"{kind} is a commit of its own: it is signed")
        if not sig:
            if version == 1:
                self.fail(pos, seq, "signature", "version 1 event is not signed")
            elif not self.uncovered or self.uncovered[-1][2] != kid:
                self.uncovered.append((pos, seq, kid))
            return
        for first, first_seq, run_kid in self.uncovered:
            if run_kid != kid:
                self.fail(
                    first,
                    first_seq,
                    "signature",
                    f"unsigned events from here on name key {run_kid} but are covered by a "
                    f"signature of key {kid} (at event {seq})",
                )
        self.uncovered.clear()
        if signer is not None and self.verify_signatures:
            self.verifier.add(pos, seq, signer.sign_key, version, h, sig)
            self.report.signatures_checked += 1

    def checkpoint_event(self, pos: int, seq: int, time: str, data: dict[str, Any]) -> None:
        """A checkpoint: signed by the node key, over exactly the events before it."""
        key = self.trust.node_key
        if key is None:
            return
        try:
            cp = open_record(data["checkpoint"], Checkpoint, key.sign_key)
        except FederationError as exc:
            self.fail(pos, seq, "checkpoint", f"checkpoint signature does not verify: {exc}")
            return
        root = self.acc.root().hex()
        if cp.size != self.acc.size:
            self.fail(
                pos,
                seq,
                "checkpoint",
                "checkpoint size is not the number of events before it",
                self.acc.size,
                cp.size,
            )
        elif cp.root != root:
            self.fail(
                pos, seq, "checkpoint", "checkpoint root does not match the events", root, cp.root
            )
        elif cp.log != self.report.log:
            self.fail(
                pos, seq, "checkpoint", "checkpoint is for another log", self.report.log, cp.log
            )
        elif cp.kid != key.kid:
            self.fail(
                pos,
                seq,
                "checkpoint",
                "checkpoint names another key than its signer",
                key.kid,
                cp.kid,
            )
        elif cp.time > time:
            self.fail(
                pos, seq, "checkpoint", "checkpoint is dated after its event", f"<= {time}", cp.time
            )
        elif "started" in cp.model_fields_set and cp.started != self.last_started:
            # null claims no node.started before; only a record without the field (a node
            # from before it) is exempt
            self.fail(
                pos,
                seq,
                "checkpoint",
                "checkpoint names another node.started than the last one before it",
                self.last_started,
                cp.started,
            )
        else:
            self.report.checkpoints += 1

    # -- lifecycle -------------------------------------------------------------------------

    def lifecycle(
        self, pos: int, seq: int, kind: str, version: int, data: dict[str, Any] | None
    ) -> None:
        """The node's runs and each request's steps (:func:`hub.lifecycle.step`)."""
        if kind == "node.started":
            if self.running:
                self.report.unclean_restarts += 1
            self.running = True
            self.last_started = seq
            return
        if kind == "node.stopped":
            if not self.running:
                self.fail(pos, seq, "lifecycle", "node.stopped without node.started")
            self.running = False
            return
        if not self.running:
            self.fail(
                pos, seq, "lifecycle", f"{kind} while the node is stopped (no node.started since)"
            )
        if data is None:
            return
        rid = data.get("request_id")
        if rid is None:  # request.rejected of an envelope that could not be read
            return
        try:
            new = step(self.requests.get(rid), kind, version, request_id=rid)
        except LifecycleError as exc:
            self.fail(pos, seq, "lifecycle", str(exc))
            return
        if new is not None:
            self.requests[rid] = new

    # -- the end ---------------------------------------------------------------------------

    def finish(self) -> None:
        """The summary, then (unless the pass gave up) the unsigned tail and the receipts."""
        rep = self.report
        if rep.events == 0:
            self.report.findings.append(
                Finding(1, None, "format", "the log has no events: an empty log proves nothing")
            )
        if self.uncovered and not self.stopped:
            first, first_seq, _ = self.uncovered[0]
            self.report.findings.append(
                Finding(
                    first,
                    first_seq,
                    "signature",
                    f"events {first}..{self.last_position} at the end of the log are covered "
                    "by no signature",
                )
            )
        rep.types.update(self.types)
        rep.requests.update(state.value for state in self.requests.values())
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
            for k in self.trust.keys.values()
        }
        rep.node_keys = {k.kid: k.sign_key for k in self.trust.keys.values() if k.node}
        for receipt in self.receipts if not self.stopped else ():
            self.verify_receipt(receipt)

    def verify_receipt(self, receipt: SignedRecord) -> None:
        """A checkpoint held by the auditor: signed by one of this log's node keys, for this
        log, and the log's first ``size`` events have its root. Findings are placed after
        the last event, but for a rewritten history: at event ``size``."""
        rep = self.report
        cp = open_receipt(rep, receipt)
        if isinstance(cp, Finding):
            rep.findings.append(cp)
            return
        root = self.roots.get(cp.size, b"").hex() or None
        if cp.size > rep.events:
            why = "log is shorter than a checkpoint it once signed (tail truncated)"
            end = rep.events + 1
            rep.findings.append(
                Finding(end, None, "receipt", why, f">= {cp.size} events", str(rep.events))
            )
            return
        if root != cp.root:
            why = f"the first {cp.size} events differ from the checkpoint (history rewritten)"
            at = max(cp.size, 1)
            rep.findings.append(Finding(at, cp.size or None, "receipt", why, cp.root, root))
            return
        rep.receipts.append({"size": cp.size, "root": cp.root, "time": cp.time})


def open_receipt(report: AuditReport, receipt: SignedRecord) -> Checkpoint | Finding:
    """The checkpoint in ``receipt`` if one of the log's node keys signed it, for this log,
    under its own key id and not after that key was revoked; else the ``receipt`` finding
    saying why it is no statement of this log (placed after the last event).

    ``report`` is the finished report of the log's audit (its node keys are known then);
    the federation audit asks this of every checkpoint a witness notice carries before it
    holds one against the log."""
    end = report.events + 1
    key = report.node_keys.get(receipt.signer)
    if key is None:
        why = f"checkpoint was signed by key {receipt.signer}, no node key of this log"
        return Finding(end, None, "receipt", why)
    try:
        cp = open_record(receipt, Checkpoint, key)
    except FederationError as exc:
        return Finding(end, None, "receipt", f"checkpoint signature does not verify: {exc}")
    revoked_at = report.keys.get(receipt.signer, {}).get("revoked_at")
    problem: tuple[str, object, object] | None = None
    if cp.log != report.log:
        problem = ("checkpoint is for another log", report.log, cp.log)
    elif cp.kid != receipt.signer:
        problem = ("checkpoint names another key than its signer", receipt.signer, cp.kid)
    elif revoked_at is not None and cp.time > revoked_at:
        problem = ("checkpoint signed after its key was revoked", revoked_at, cp.time)
    if problem is not None:
        why, expected, found = problem
        return Finding(end, None, "receipt", why, str(expected), str(found))
    return cp


def _header(ev: dict[str, Any]) -> tuple[int, str, str, str, str, str, int]:
    """(seq, prev, type, kid, log, time, version) of a parsed body; CanonicalError if the
    body does not have the fields of an event, of the right kinds."""
    if set(ev) != _HEADER:
        raise CanonicalError(f"body fields are {sorted(ev)}, not {sorted(_HEADER)}")
    seq, version = ev["seq"], ev["v"]
    if type(seq) is not int:
        raise CanonicalError("seq is not an integer")
    text = [ev[name] for name in ("prev", "type", "kid", "log", "time")]
    if not all(type(x) is str for x in text):
        raise CanonicalError("prev, type, kid, log and time must be strings")
    if version not in (1, 2) or type(version) is not int:
        raise CanonicalError(f"unknown body version {version!r}")
    if type(ev["data"]) is not dict:
        raise CanonicalError("data is not an object")
    prev, kind, kid, log_id, time = text
    return seq, prev, kind, kid, log_id, time, version


def _receipt_sizes(receipts: list[SignedRecord]) -> list[int]:
    """The sizes receipts claim (checked with their signatures at the end)."""
    sizes = []
    for receipt in receipts:
        try:
            sizes.append(Checkpoint.model_validate_json(b64d(receipt.record)).size)
        except (FederationError, ValidationError):
            continue
    return sizes
