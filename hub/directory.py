"""Who is who and who may call what: identities, revocations and grants as replayable state.

A node's :class:`Directory` is rebuilt at start from its event log (``key.*`` and
``grant.*`` events) on top of its config, so what it decided can be audited later. Rules:

* a key record counts only if signed by the key of the site it names, and that site is
  trusted (the node's own site, or one pinned in ``[[trust]]``);
* a revocation counts if signed by the identity's own site or by the node's own site (a
  local ban); a revoked key is refused from then on, whatever grants exist;
* a grant names a principal (``name@site`` or ``group:NAME``), a module and a function
  (``*`` for all). Group membership comes from the caller's key record, vouched by its
  site; grants to named people are the safe default across institutions.

Every refusal is an :class:`~hub.errors.UnauthorizedError` saying what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub.crypto import key_id
from hub.errors import FederationError, SignatureError, UnauthorizedError
from hub.records import KeyRecord, Revocation, SignedRecord, open_record

__all__ = ["Directory", "Grant"]


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

    def apply_event(self, data: dict[str, Any]) -> None:
        """Replay one ``key.*`` or ``grant.*`` event's data (others are ignored)."""
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
        principals = {record.identity, *(f"group:{g}" for g in record.groups)}
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
