"""Building real event logs for tests: keys, a site that vouches for them, and appends.

Everything goes through the real append path (:class:`node.eventlog.EventLog`), so the
exported lines are exactly what a node writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from hub.audit import AuditReport, audit_events
from hub.canonical import b64e, canonical_bytes, parse_canonical
from hub.chain import leaf_hash
from hub.clock import now
from hub.crypto import sign, verify
from hub.errors import SignatureError
from hub.events import (
    DOMAIN_COMMIT,
    DOMAIN_EVENT,
    GrantAdded,
    KeyRegistered,
    KeyRevoked,
    NodeStarted,
    NodeStopped,
    RequestAccepted,
    RequestCompleted,
    RequestFailed,
    RequestProgress,
    RequestRejected,
    RequestStarted,
    ResultFetched,
)
from hub.keys import KeyPair, PublicKeys
from hub.logfile import LogUnreadableError, export_line, iter_log, parse_export_line
from hub.records import Revocation, SignedRecord, sign_record
from node.bootstrap import key_record
from node.eventlog import EventLog

SITE = "hereon"
NODE = "node:hereon/n1"


@dataclass
class Keys:
    """The site key, the node key, a spare node key (for rotation), a second node's key."""

    site: KeyPair
    node: KeyPair
    spare: KeyPair
    other_node: KeyPair

    @classmethod
    def generate(cls) -> Keys:
        """Fresh keys for site ``hereon``."""
        return cls(
            KeyPair.generate(f"site:{SITE}"),
            KeyPair.generate(NODE),
            KeyPair.generate(NODE),
            KeyPair.generate("node:hereon/n2"),
        )

    def vouch(self, pair: KeyPair, role: str = "node") -> SignedRecord:
        """The site's signed key record for ``pair``."""
        return sign_record(key_record(pair, SITE, role), self.site.signing_key)

    def revoke(self, pair: KeyPair, reason: str = "retired") -> SignedRecord:
        """The site's signed revocation of ``pair`` (from now on)."""
        rev = Revocation(identity=pair.identity, kid=pair.kid, time=now(), reason=reason)
        return sign_record(rev, self.site.signing_key)

    @property
    def trusted(self) -> dict[str, bytes]:
        """The pinned site keys for an audit."""
        return {SITE: self.site.sign_public}


def open_new_log(path: Path, keys: Keys, *, checkpoint_every: int = 16) -> EventLog:
    """A fresh log at ``path`` with its genesis written."""
    log = EventLog(path, keys.node, checkpoint_every=checkpoint_every)
    log.initialize(SITE, keys.site.sign_public, keys.vouch(keys.node))
    return log


def signed_header(rid: str, caller: str = "klaus@geomar") -> str:
    """A caller's request header as a v2 ``request.accepted`` carries it (base64 of its
    canonical JSON; the signature beside it is not checked by the log)."""
    return b64e(
        canonical_bytes(
            {
                "caller": caller,
                "function": "compute_sum",
                "id": rid,
                "module": "climate",
                "nonce": "bm9uY2U",
                "payload_hash": "ab" * 32,
                "payload_size": 123,
                "site": SITE,
            }
        )
    )


def request_events(rid: str, fate: str = "completed") -> list[BaseModel]:
    """One request's life as a node writes it today (log version 2): ``completed``,
    ``failed``, ``rejected`` or ``open`` (running again after a restart)."""
    if fate == "rejected":
        return [
            RequestRejected(
                request_id=rid,
                caller="klaus@geomar",
                envelope_hash="cd" * 32,
                code="denied",
                reason="not granted",
            ),
        ]
    out: list[BaseModel] = [
        RequestAccepted(request_id=rid, header=signed_header(rid), sig="c2ln"),
        RequestProgress(request_id=rid, fraction_ppm=500_000),
    ]
    if fate == "completed":
        out += [
            RequestCompleted(
                request_id=rid,
                result_hash="ef" * 32,
                result_size=9,
                duration_us=7,
                object=f"results/{rid}",
            ),
            ResultFetched(request_id=rid, by="klaus@geomar"),
        ]
    elif fate == "failed":
        out.append(RequestFailed(request_id=rid, code="function_failed", reason="boom"))
    elif fate == "open":
        out.append(RequestStarted(request_id=rid, attempt=2))
    return out


@dataclass
class BuiltLog:
    """A log built on disk: its keys, database, export lines and checkpoints seen."""

    keys: Keys
    db: Path
    lines: list[bytes]
    receipts: list[SignedRecord] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        """The export file's bytes."""
        return b"".join(self.lines)


def build_log(
    folder: Path,
    *,
    requests: int = 12,
    rotate: bool = True,
    tag: str = "r",
    keys: Keys | None = None,
) -> BuiltLog:
    """A realistic log: starts and stops, requests of every fate, grants, a registered key,
    a rotation of the node key followed by the revocation of the old one, and a checkpoint
    every 16 events (each one kept as a receipt)."""
    keys = keys or Keys.generate()
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "events.db"
    receipts: list[SignedRecord] = []
    fates = ("completed", "failed", "rejected", "completed", "open")
    with open_new_log(db, keys) as log:

        def add(events: Sequence[BaseModel]) -> None:
            for ev in log.append_many(events):
                if ev.type == "checkpoint":
                    receipts.append(SignedRecord.model_validate(ev.parsed()["data"]["checkpoint"]))

        add([NodeStarted(version="0.1.0", pid=4242)])
        add([GrantAdded(principal="klaus@geomar", module="climate", by="admin@hereon")])
        add([KeyRegistered(record=keys.vouch(keys.other_node))])
        for i in range(requests):
            add(request_events(f"{tag}{i:07d}", fates[i % len(fates)]))
            if rotate and i == requests // 2:
                add([NodeStopped(reason="upgrade"), NodeStarted(version="0.1.1", pid=4243)])
                old = log.key
                log.rotate_key(keys.spare, keys.vouch(keys.spare))
                add([KeyRevoked(revocation=keys.revoke(old))])
        add([NodeStopped(reason="done")])
    out = folder / "events.jsonl"
    with EventLog.open_readonly(db) as ro:
        ro.export(out)
    return BuiltLog(keys, db, out.read_bytes().splitlines(keepends=True), receipts)


def commit_problems(db: Path, node_keys: Iterable[KeyPair | PublicKeys]) -> list[str]:
    """What is wrong with a log's hashes, chain and commit signatures (empty: nothing), read
    independently of the auditor: each body hashes to its stored hash and names the one
    before it; a version 1 event is signed over ``DOMAIN_EVENT``, a signed version 2 event
    over ``DOMAIN_COMMIT`` by the key its ``kid`` names; an unsigned event names the kid
    of the signed event that covers it, and the last event is signed; no version 1 event
    follows a version 2 one."""
    public = {k.kid: (k.public if isinstance(k, KeyPair) else k).sign_key for k in node_keys}
    problems: list[str] = []
    prev, version, waiting = "00" * 32, 1, []
    with EventLog.open_readonly(db) as log:
        events = list(log.events())
    for ev in events:
        body = parse_canonical(ev.body)
        where = f"event {ev.seq} ({ev.type})"
        if leaf_hash(ev.body) != ev.hash or body["seq"] != ev.seq or body["prev"] != prev:
            problems.append(f"{where}: hash, seq or chain broken")
        prev = ev.hash.hex()
        if body["v"] < version:
            problems.append(f"{where}: version 1 after version 2")
        version = body["v"]
        if not ev.signed:
            if version == 1:
                problems.append(f"{where}: unsigned version 1 event")
            waiting.append((where, body["kid"]))
            continue
        domain = DOMAIN_EVENT if version == 1 else DOMAIN_COMMIT
        try:
            verify(public[body["kid"]], domain, ev.hash, ev.sig)
        except (KeyError, SignatureError):
            problems.append(f"{where}: signature does not verify with key {body['kid']}")
        problems += [
            f"{w}: names {k}, covered by {body['kid']}" for w, k in waiting if k != body["kid"]
        ]
        waiting = []
    problems += [f"{w}: covered by no signature" for w, _ in waiting]
    return problems


def audit_lines(
    lines: Iterable[bytes],
    trusted: dict[str, bytes] | None,
    receipt: SignedRecord | None = None,
    *,
    verify_signatures: bool = True,
) -> AuditReport:
    """Audit export lines held in memory (the reader's layout checks included)."""
    raws = (parse_export_line(line, i) for i, line in enumerate(lines, 1))
    return audit_events(
        raws,
        trusted_sites=trusted,
        receipts=[receipt] if receipt is not None else [],
        verify_signatures=verify_signatures,
        threads=2,
    )


def audit_file(
    path: Path, trusted: dict[str, bytes] | None, receipt: SignedRecord | None = None
) -> AuditReport:
    """Audit a log file with the real reader."""
    receipts = [receipt] if receipt is not None else []
    return audit_events(iter_log(path), trusted_sites=trusted, receipts=receipts, threads=2)


def detected(path: Path, trusted: dict[str, bytes], receipt: SignedRecord | None = None) -> bool:
    """Whether auditing the file finds something wrong (an unreadable file counts)."""
    try:
        return not audit_file(path, trusted, receipt).ok
    except LogUnreadableError:
        return True


def resign(line: bytes, key: KeyPair, *, claim_kid: bool, edit_time: bool = False) -> bytes:
    """The same event signed by ``key`` (over its version's domain); with ``claim_kid`` its
    body names that key (and the hash is recomputed), with ``edit_time`` its time is
    changed too."""
    raw = parse_export_line(line, 1)
    body = raw.body
    ev = parse_canonical(body)
    if claim_kid or edit_time:
        if claim_kid:
            ev["kid"] = key.kid
        if edit_time:
            ev["time"] = "2000-01-01T00:00:00.000000Z"
        body = canonical_bytes(ev)
    h = leaf_hash(body)
    domain = DOMAIN_EVENT if ev["v"] == 1 else DOMAIN_COMMIT
    return export_line(h, sign(key.signing_key, domain, h), body)
