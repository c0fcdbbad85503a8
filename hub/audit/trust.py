"""Trust: the site key pinned, the node keys it vouched for, the keys of the directory.

:class:`Trust` applies the rules of docs/crypto.md to ``log.created`` and the ``key.*``
events: a node ``node:S/NAME`` is trusted only through site S's pinned key; the node key
rotates only to a node key of the same node vouched for by the same site, never to a key
revoked before; a directory record never turns a node key of the log into another
identity's key; a key record or revocation is checked where its signer is this log's
site or a pinned site, and recorded as foreign otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from hub.canonical import b64d
from hub.crypto import key_id
from hub.errors import FederationError
from hub.records import KeyRecord, Revocation, SignedRecord, open_record
from hub.subjects import is_log_of

from .report import AuditReport

__all__ = ["Key", "Trust", "site_of"]

Fail = Callable[..., None]


@dataclass
class Key:
    """A key the log established or registered, and what became of it."""

    kid: str
    identity: str
    role: str
    sign_key: bytes
    since_seq: int
    until_seq: int | None = None
    revoked_at: str | None = None
    status: str = "active"
    last_time: str | None = None
    node: bool = False  # one of this log's own node keys (genesis or rotation)


def site_of(identity: str) -> str | None:
    """The site an identity belongs to: ``name@S``, ``site:S``, ``node:S/NAME``."""
    if identity.startswith("node:"):
        site, slash, name = identity[5:].partition("/")
        return site if slash and site and name else None
    if identity.startswith("site:"):
        return identity[5:] or None
    name, at, site = identity.rpartition("@")
    return site if at and name and site else None


class Trust:
    """The keys of one log, as its events establish them."""

    def __init__(self, trusted: dict[str, bytes] | None, report: AuditReport, fail: Fail) -> None:
        self.trusted = trusted
        self.report = report
        self.fail = fail
        self.site_key: bytes | None = None
        self.node_key: Key | None = None
        self.keys: dict[str, Key] = {}
        # every key a verified revocation named so far (kid -> its time), known or not:
        # the node key never rotates to one of them
        self.revoked: dict[str, str] = {}

    def genesis(self, pos: int, seq: int, log_id: str, data: dict[str, Any]) -> Key | None:
        """``log.created``: the site key pinned, the node key vouched for by it."""
        rep = self.report
        site = data["site"]
        try:
            site_key = b64d(data["site_key"])
        except FederationError as exc:
            self.fail(pos, seq, "format", f"log.created: site key {exc}")
            return None
        rep.site = site
        if self.trusted is None:
            rep.trust = f"site:{site} key {key_id(site_key)} taken from the log itself (not pinned)"
        else:
            pinned = self.trusted.get(site)
            if pinned is None:
                self.fail(pos, seq, "trust", f"no pinned key for site:{site}")
                return None
            if pinned != site_key:
                self.fail(
                    pos,
                    seq,
                    "trust",
                    "log names a site key that is not the pinned one",
                    key_id(pinned),
                    key_id(site_key),
                )
                return None
            rep.trust = f"site:{site} key {key_id(site_key)} (pinned)"
        node = data["node"]
        if site_of(node) != site:
            self.fail(
                pos,
                seq,
                "trust",
                f"node {node} is not a node of site {site}: only its own site's key vouches for it",
            )
            return None
        if not is_log_of(log_id, node):
            why = "the log id is not the node identity of its genesis record (or that + #N)"
            self.fail(pos, seq, "trust", why, node, log_id)
            return None
        self.site_key = site_key
        try:
            record = open_record(data["node_key"], KeyRecord, site_key)
            problem = _node_record_problem(record, node, site)
        except FederationError as exc:
            self.fail(pos, seq, "trust", f"node key record is not signed by the site: {exc}")
            return None
        if problem:
            self.fail(pos, seq, "trust", problem)
            return None
        key = Key(record.kid, record.identity, record.role, record.sign_key_bytes(), seq, node=True)
        self.node_key = key
        self.keys[key.kid] = key
        return key

    def key_event(self, pos: int, seq: int, kind: str, data: dict[str, Any]) -> None:
        """``key.registered``, ``key.rotated``, ``key.revoked`` (docs/crypto.md)."""
        if self.site_key is None:
            return
        try:
            if kind == "key.revoked":
                self.revocation(pos, seq, SignedRecord.model_validate(data["revocation"]))
                return
            signed = SignedRecord.model_validate(data["record"])
            node = self.node_key
            if kind == "key.rotated" and node is not None and data["old_kid"] == node.kid:
                self.rotation(pos, seq, data, signed, node)
                return
            record = self.vouched(pos, seq, signed, kind)
            if record is not None and kind == "key.rotated":
                old = self.keys.get(data["old_kid"])
                if old is not None and old.identity == record.identity:
                    old.until_seq, old.status = seq, "rotated"
        except (FederationError, ValidationError) as exc:
            self.fail(pos, seq, "trust", f"{kind} record does not verify: {exc}")

    def vouched(self, pos: int, seq: int, signed: SignedRecord, kind: str) -> KeyRecord | None:
        """A key record of the directory: checked if its signer is this log's site or a
        pinned one (its identity must be of that site); else recorded as foreign."""
        signer = self.site_signer(signed.signer)
        if signer is None:
            rec = KeyRecord.model_validate_json(b64d(signed.record))
            self.keys.setdefault(
                rec.kid, Key(rec.kid, rec.identity, rec.role, b"", seq, status="foreign")
            )
            return None
        site, site_key = signer
        rec = open_record(signed, KeyRecord, site_key)
        if rec.site != site or site_of(rec.identity) != site:
            self.fail(
                pos,
                seq,
                "trust",
                f"{kind}: site {site} vouches for {rec.identity} of site {rec.site}",
            )
            return None
        if rec.kid != key_id(rec.sign_key_bytes()):
            self.fail(pos, seq, "trust", f"{kind}: key id {rec.kid} is not the id of its key")
            return None
        known = self.keys.get(rec.kid)
        if known is not None and known.node:
            # a node key of this log stays one, whatever a directory record says of it
            # (else a record naming it under another identity would hide its revocation
            # or disown its receipts)
            return None
        self.keys[rec.kid] = Key(rec.kid, rec.identity, rec.role, rec.sign_key_bytes(), seq)
        old = self.keys.get(rec.replaces) if rec.replaces else None
        if old is not None and not old.node and old.identity == rec.identity:
            # a node takes the replaced key for revoked from then on (hub.directory)
            old.until_seq = old.until_seq or seq
            old.status = "rotated" if old.status == "active" else old.status
        return rec

    def rotation(
        self, pos: int, seq: int, data: dict[str, Any], signed: SignedRecord, old: Key
    ) -> None:
        """The node key's rotation: a node key of the same node, vouched for by its site."""
        assert self.site_key is not None
        site = self.report.site or ""
        if signed.signer != key_id(self.site_key):
            self.fail(
                pos,
                seq,
                "trust",
                "the node key's rotation is not vouched for by its site",
                key_id(self.site_key),
                signed.signer,
            )
            return
        rec = open_record(signed, KeyRecord, self.site_key)
        problem = _node_record_problem(rec, old.identity, site)
        if not problem and data["identity"] != old.identity:
            problem = f"rotation names identity {data['identity']}, not {old.identity}"
        if not problem and rec.replaces not in (None, old.kid):
            problem = f"the new key record replaces {rec.replaces}, not {old.kid}"
        if not problem and rec.kid in self.revoked:
            problem = f"the new key {rec.kid} was revoked (at {self.revoked[rec.kid]}) before it"
        if problem:
            self.fail(pos, seq, "trust", f"node key rotation: {problem}")
            return
        old.until_seq, old.status = seq, "rotated"
        new = Key(rec.kid, rec.identity, rec.role, rec.sign_key_bytes(), seq, node=True)
        self.node_key = new
        self.keys[new.kid] = new

    def revocation(self, pos: int, seq: int, signed: SignedRecord) -> None:
        """A revocation, signed by the revoked identity's site or by this log's site."""
        signer = self.site_signer(signed.signer)
        if signer is None:
            # signed by a site the auditor has not pinned: recorded, unchecked
            rev = Revocation.model_validate_json(b64d(signed.record))
            foreign = self.keys.get(rev.kid)
            if foreign is not None and foreign.status == "foreign":
                foreign.revoked_at = rev.time
            return
        site, site_key = signer
        rev = open_record(signed, Revocation, site_key)
        target = self.keys.get(rev.kid)
        identity = target.identity if target is not None else rev.identity
        if rev.identity != identity:
            self.fail(
                pos,
                seq,
                "trust",
                f"revocation of key {rev.kid} names {rev.identity}, the key is {identity}'s",
            )
            return
        if site not in (site_of(identity), self.report.site):
            self.fail(pos, seq, "trust", f"site {site} cannot revoke a key of {identity}")
            return
        self.revoked.setdefault(rev.kid, rev.time)
        if target is None:
            return
        if target.last_time is not None and target.last_time > rev.time:
            self.fail(
                pos,
                seq,
                "key",
                f"key {rev.kid} signed events after the time it was revoked",
                f"<= {rev.time}",
                target.last_time,
            )
        # nothing naming it after this event is valid (see key_check)
        target.status, target.revoked_at = "revoked", rev.time
        target.until_seq = target.until_seq or seq

    def site_signer(self, kid: object) -> tuple[str, bytes] | None:
        """(site, key) of a site key that may vouch: this log's, or a pinned one."""
        site_key = self.site_key
        if site_key is not None and kid == key_id(site_key):
            return self.report.site or "", site_key
        for site, key in (self.trusted or {}).items():
            if key_id(key) == kid:
                return site, key
        return None

    # -- checkpoints -----------------------------------------------------------------------


def _node_record_problem(record: KeyRecord, node: str, site: str) -> str:
    """Why a key record cannot be ``node``'s node key vouched for by ``site`` ("" if it can)."""
    if record.role != "node":
        return f"the key record is for a {record.role}, not a node"
    if record.identity != node:
        return f"the key record is for {record.identity}, not {node}"
    if record.site != site:
        return f"the key record names site {record.site}, not {site}"
    sign_key = record.sign_key_bytes()
    if len(sign_key) != 32:
        return "the key record's sign_key is not an Ed25519 public key (32 bytes)"
    if record.kid != key_id(sign_key):
        return f"key id {record.kid} is not the id of its key"
    return ""
