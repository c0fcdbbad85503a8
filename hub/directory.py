"""Who is who and who may call what: identities, revocations and grants as replayable state.

A node's :class:`Directory` is rebuilt at start from its event log (``key.*`` and
``grant.*`` events) on top of its config, so what it decided can be audited later. Rules:

* a key record counts only if signed by the key of the site it names, and that site is
  trusted (the node's own site, or one pinned in ``[[trust]]``);
* a revocation counts if signed by the identity's own site or by the node's own site (a
  local ban); a revoked key is refused from then on, whatever grants exist;
* a grant names a principal (``name@site``, ``group:NAME`` or a federation group
  ``group:<owner>/<name>``), a module and a function (``*`` for all). Group membership
  comes from the caller's key record, vouched by its site, or from federation groups;
  grants to named people are the safe default across institutions;
* records from the federation-wide directory (:meth:`Directory.apply_published`): a
  signed grant counts only when signed by the site that owns the module (grants of other
  sites are not this node's business), a group record only when signed by a valid key of
  its owner, whose home site vouched for it; the record with the highest ``serial`` wins.

Every refusal is an :class:`~hub.errors.UnauthorizedError` saying what is missing.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from hub.canonical import b64d
from hub.crypto import key_id
from hub.errors import FederationError, SignatureError, UnauthorizedError
from hub.events import GrantRecorded, GroupUpdated, KeyRegistered, KeyRevoked
from hub.records import (
    GrantRecord,
    GroupRecord,
    KeyRecord,
    Revocation,
    SignedRecord,
    open_record,
)

__all__ = ["RECORD_KINDS", "Directory", "Grant", "record_token"]

#: Kinds of records in the federation-wide directory (the subject's kind token).
RECORD_KINDS = ("key", "revocation", "grant", "group")


def record_token(signed: SignedRecord) -> str:
    """The subject token of a record in the federation directory: a hash of its signed
    bytes (the same record, the same token; a receiver checks the two agree)."""
    digest = hashlib.blake2b(f"{signed.record}.{signed.sig}".encode(), digest_size=16)
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Grant:
    """``principal`` may call ``module.function`` (``function`` may be ``*``)."""

    principal: str
    module: str
    function: str = "*"

    def covers(self, module: str, function: str) -> bool:
        """Whether this grant covers ``module.function`` (``Class.*`` covers its methods)."""
        if self.module not in ("*", module):
            return False
        if self.function in ("*", function):
            return True
        return self.function.endswith(".*") and function.startswith(self.function[:-1])


@dataclass
class Directory:
    """Identities, revocations and grants known to one node."""

    own_site: str
    trusted_sites: dict[str, bytes]
    keys: dict[str, KeyRecord] = field(default_factory=dict)
    revoked: dict[str, Revocation] = field(default_factory=dict)
    grants: set[Grant] = field(default_factory=set)
    groups: dict[str, GroupRecord] = field(default_factory=dict)
    grant_serials: dict[Grant, int] = field(default_factory=dict)
    #: The signed form of each key record, by kid (handed to a sharer to verify).
    signed_keys: dict[str, SignedRecord] = field(default_factory=dict)
    _member_of: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    # --- changes (each corresponds to an event) ------------------------------------------

    def register(self, signed: SignedRecord | dict[str, Any]) -> KeyRecord:
        """Verify a key record against its site's pinned key and add it."""
        if not isinstance(signed, SignedRecord):
            signed = SignedRecord.model_validate(signed)
        site = self._site_of_signer(signed.signer)
        record = open_record(signed, KeyRecord, self.trusted_sites[site])
        if record.site != site:
            raise SignatureError(
                f"key record for {record.identity} names site {record.site}, signed by {site}"
            )
        if record.role == "user" and not record.identity.endswith(f"@{site}"):
            raise SignatureError(f"site {site} cannot vouch for {record.identity}")
        self.keys[record.kid] = record
        self.signed_keys[record.kid] = signed
        if record.replaces and record.replaces not in self.revoked:
            old = self.keys.get(record.replaces)
            if old is not None and old.identity == record.identity:
                self.revoked[record.replaces] = Revocation(
                    identity=record.identity,
                    kid=record.replaces,
                    time=record.valid_from,
                    reason=f"replaced by key {record.kid}",
                )
        return record

    def revoke(self, signed: SignedRecord | dict[str, Any]) -> Revocation:
        """Verify a revocation (by the identity's site or ours) and apply it."""
        if not isinstance(signed, SignedRecord):
            signed = SignedRecord.model_validate(signed)
        site = self._site_of_signer(signed.signer)
        rev = open_record(signed, Revocation, self.trusted_sites[site])
        target = self.keys.get(rev.kid)
        owner = target.site if target is not None else _site_of_identity(rev.identity)
        if site not in (owner, self.own_site):
            raise SignatureError(f"site {site} cannot revoke a key of {rev.identity}")
        self.revoked[rev.kid] = rev
        return rev

    def add_grant(self, grant: Grant) -> bool:
        """Add a grant; False if it was there already."""
        if grant in self.grants:
            return False
        self.grants.add(grant)
        return True

    def remove_grant(self, grant: Grant) -> bool:
        """Remove a grant; False if it was not there."""
        if grant not in self.grants:
            return False
        self.grants.discard(grant)
        return True

    def apply_grant(self, signed: SignedRecord | dict[str, Any]) -> GrantRecord | None:
        """Apply a site-signed grant record; None if it changes nothing here.

        The signer must be a trusted site's key, and the record must name that site: a
        grant for a module of site S signed by another site is refused (SignatureError).
        A grant of another site is not this node's to apply (None), nor is one whose
        ``serial`` is not above the last one seen for the same grant.
        """
        if not isinstance(signed, SignedRecord):
            signed = SignedRecord.model_validate(signed)
        site = self._site_of_signer(signed.signer)
        record = open_record(signed, GrantRecord, self.trusted_sites[site])
        if record.site != site:
            raise SignatureError(
                f"grant of {record.module}.{record.function} at site {record.site} "
                f"for {record.principal} is signed by site {site}: only {record.site} decides"
            )
        if record.site != self.own_site:
            return None
        grant = Grant(record.principal, record.module, record.function)
        if self.grant_serials.get(grant, -1) >= record.serial:
            return None
        self.grant_serials[grant] = record.serial
        if record.allow:
            self.grants.add(grant)
        else:
            self.grants.discard(grant)
        return record

    def apply_group(self, signed: SignedRecord | dict[str, Any]) -> GroupRecord | None:
        """Apply a group record signed by its owner; None if not newer than the one held.

        The signer must be a registered, unrevoked key of the owner (vouched for by the
        owner's home site), and the group must be the owner's (``group:<owner>/...``).
        """
        if not isinstance(signed, SignedRecord):
            signed = SignedRecord.model_validate(signed)
        owner_key = self.keys.get(signed.signer)
        if owner_key is None or signed.signer in self.revoked:
            raise UnauthorizedError(
                f"group record signed by key {signed.signer}, which is no valid key here"
            )
        record = open_record(signed, GroupRecord, owner_key.sign_key_bytes())
        if record.owner != owner_key.identity or not record.group.startswith(
            f"group:{record.owner}/"
        ):
            raise SignatureError(
                f"group {record.group} (owner {record.owner}) is signed by {owner_key.identity}"
            )
        held = self.groups.get(record.group)
        if held is not None and held.serial >= record.serial:
            return None
        if held is not None:
            for member in held.members:
                self._member_of[member].discard(record.group)
        for member in record.members:
            self._member_of[member].add(record.group)
        self.groups[record.group] = record
        return record

    def apply_published(self, kind: str, signed: SignedRecord) -> BaseModel | None:
        """Apply a record of the federation-wide directory; the event recording it here,
        or None when it changes nothing at this node. Raises the error of the check that
        failed (a FederationError) for a record that does not count."""
        if kind == "key":
            kid = json.loads(b64d(signed.record)).get("kid")
            if kid in self.keys:
                return None
            self.register(signed)
            return KeyRegistered(record=signed)
        if kind == "revocation":
            kid = json.loads(b64d(signed.record)).get("kid")
            if kid in self.revoked:
                return None
            self.revoke(signed)
            return KeyRevoked(revocation=signed)
        if kind == "grant":
            return GrantRecorded(record=signed) if self.apply_grant(signed) else None
        if kind == "group":
            return GroupUpdated(record=signed) if self.apply_group(signed) else None
        raise SignatureError(f"unknown directory record kind {kind!r}")

    def groups_of(self, identity: str) -> set[str]:
        """The federation groups ``identity`` belongs to, directly or through nesting."""
        found: set[str] = set()
        todo = list(self._member_of.get(identity, ()))
        while todo:
            group = todo.pop()
            if group not in found:
                found.add(group)
                todo.extend(self._member_of.get(group, ()))
        return found

    def apply_event(self, data: dict[str, Any]) -> None:
        """Replay one directory event's data (``key.*``, ``grant.*``, ``group.updated``;
        others are ignored)."""
        kind = data.get("type")
        if kind in ("key.registered", "key.rotated"):
            self.register(data["record"])
            if kind == "key.rotated":
                self.revoked.setdefault(data["old_kid"], _rotation(data))
        elif kind == "key.revoked":
            self.revoke(data["revocation"])
        elif kind == "grant.added":
            self.grants.add(Grant(data["principal"], data["module"], data["function"]))
        elif kind == "grant.removed":
            self.grants.discard(Grant(data["principal"], data["module"], data["function"]))
        elif kind == "grant.recorded":
            self.apply_grant(data["record"])
        elif kind == "group.updated":
            self.apply_group(data["record"])

    # --- questions ------------------------------------------------------------------------

    def caller(self, identity: str, kid: str) -> KeyRecord:
        """The valid key record of ``identity`` with key ``kid``, or UnauthorizedError."""
        record = self.keys.get(kid)
        if record is None:
            raise UnauthorizedError(
                f"key {kid} of {identity} is not known at this site",
                hint="ask the site's operator to register your key record",
            )
        if record.identity != identity:
            raise UnauthorizedError(f"key {kid} belongs to {record.identity}, not {identity}")
        rev = self.revoked.get(kid)
        if rev is not None:
            raise UnauthorizedError(
                f"key {kid} of {identity} was revoked at {rev.time}: {rev.reason}"
            )
        return record

    def authorize(self, record: KeyRecord, module: str, function: str) -> Grant:
        """The grant allowing ``record`` to call ``module.function``, or UnauthorizedError."""
        principals = {
            record.identity,
            *(f"group:{g}" for g in record.groups),
            *self.groups_of(record.identity),
        }
        for grant in self.grants:
            if grant.principal in principals and grant.covers(module, function):
                return grant
        raise UnauthorizedError(
            f"{record.identity} may not call {module}.{function} at site {self.own_site}",
            hint="ask the site's operator for a grant",
        )

    def box_key(self, kid: str) -> bytes:
        """The X25519 key of a registered, unrevoked key id."""
        record = self.keys.get(kid)
        if record is None or kid in self.revoked:
            raise UnauthorizedError(f"key {kid} is not a valid recipient here")
        return record.box_key_bytes()

    def _site_of_signer(self, signer: str) -> str:
        for site, key in self.trusted_sites.items():
            if key_id(key) == signer:
                return site
        raise UnauthorizedError(f"record signed by key {signer}, which is no trusted site's key")


def _site_of_identity(identity: str) -> str:
    if "@" in identity:
        return identity.rsplit("@", 1)[1]
    if identity.startswith(("site:", "node:")):
        return identity.split(":", 1)[1].split("/", 1)[0]
    raise FederationError(f"cannot tell the site of {identity}")


def _rotation(data: dict[str, Any]) -> Revocation:
    record = KeyRecord.model_validate_json(_record_bytes(data["record"]))
    return Revocation(
        identity=record.identity, kid=data["old_kid"], time=record.valid_from, reason="rotated"
    )


def _record_bytes(signed: dict[str, Any]) -> bytes:
    from hub.canonical import b64d

    return b64d(signed["record"])
