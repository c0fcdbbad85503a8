"""Signed records: key records, revocations, checkpoints, grants and groups.

A record is a small pydantic model encoded to canonical bytes and signed with a domain
string (see :mod:`hub.crypto`). On the wire and in events a signed record travels as
``{"record": <b64 canonical bytes>, "sig": <b64>, "signer": <kid>}``: the exact signed bytes
travel, so a verifier checks the signature before parsing anything.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import nacl.signing
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub.canonical import b64d, b64e, canonical_bytes
from hub.crypto import key_id, sign, verify
from hub.errors import CanonicalError, SignatureError

__all__ = [
    "DOMAIN_CHECKPOINT",
    "DOMAIN_COSIGNATURE",
    "DOMAIN_GRANT",
    "DOMAIN_GROUP",
    "DOMAIN_KEY_RECORD",
    "DOMAIN_REVOCATION",
    "Checkpoint",
    "Cosignature",
    "GrantRecord",
    "GroupRecord",
    "KeyRecord",
    "Revocation",
    "SignedRecord",
    "one_line",
    "open_record",
    "sign_record",
]

DOMAIN_KEY_RECORD = b"fedhub/key-record/v1\n"
DOMAIN_REVOCATION = b"fedhub/revocation/v1\n"
DOMAIN_CHECKPOINT = b"fedhub/checkpoint/v1\n"
DOMAIN_GRANT = b"fedhub/grant/v1\n"
DOMAIN_GROUP = b"fedhub/group/v1\n"
DOMAIN_COSIGNATURE = b"fedhub/cosignature/v1\n"

Time = Annotated[str, Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")]
"""UTC time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (fixed width, so it also sorts as text)."""
B64 = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]*$")]
Hex32 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Kid = Annotated[str, Field(pattern=r"^[0-9a-f]{20}$")]
IdentityId = Annotated[str, Field(min_length=3, max_length=140)]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class KeyRecord(_Record):
    """A site vouches that these public keys belong to ``identity`` from ``valid_from`` on."""

    v: Literal[1] = 1
    kind: Literal["key"] = "key"
    identity: IdentityId
    role: Literal["user", "site", "node"]
    site: str
    kid: Kid
    sign_key: B64
    box_key: B64
    valid_from: Time
    groups: tuple[str, ...] = ()
    replaces: Kid | None = None

    def sign_key_bytes(self) -> bytes:
        """The Ed25519 public key."""
        return b64d(self.sign_key)

    def box_key_bytes(self) -> bytes:
        """The X25519 public key."""
        return b64d(self.box_key)


class Revocation(_Record):
    """A site declares key ``kid`` invalid from ``time`` on."""

    v: Literal[1] = 1
    kind: Literal["revocation"] = "revocation"
    identity: IdentityId
    kid: Kid
    time: Time
    reason: str = Field(max_length=500)


class Checkpoint(_Record):
    """A node's signed statement: its log ``log`` has ``size`` events with Merkle ``root``,
    and (``started``) the last ``node.started`` among them is event ``started``."""

    v: Literal[1] = 1
    kind: Literal["checkpoint"] = "checkpoint"
    log: IdentityId
    size: int = Field(ge=0)
    root: Hex32
    time: Time
    kid: Kid
    #: The seq of the last ``node.started`` among the ``size`` events (None: none, or a
    #: checkpoint of a node from before this field); the audit checks it.
    started: int | None = Field(None, ge=1)


GroupId = Annotated[
    str,
    Field(
        pattern=r"^group:[a-z0-9][a-z0-9_.-]{0,63}@[a-z][a-z0-9_-]{0,31}/[a-z0-9][a-z0-9_.-]{0,63}$"
    ),
]
"""A federation group: ``group:<owner>/<name>``, e.g. ``group:anna@desy/proposal-7``."""


class GrantRecord(_Record):
    """Site ``site`` lets ``principal`` call ``module.function`` (``allow``) or withdraws it.

    ``principal`` is ``name@site``, a group of a key record (``group:NAME``) or a federation
    group (``group:<owner>/<name>``). Only ``site``'s own key may sign it: the site that owns
    a module decides who calls it. ``serial`` orders the records of one grant (the highest
    counts).
    """

    v: Literal[1] = 1
    kind: Literal["grant"] = "grant"
    site: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    principal: str = Field(min_length=3, max_length=200)
    module: str = Field(min_length=1, max_length=100)
    function: str = Field("*", min_length=1, max_length=200)
    allow: bool = True
    serial: int = Field(ge=0)
    time: Time


class GroupRecord(_Record):
    """The members of a federation group, signed by its owner (a person of some site).

    ``group`` is ``group:<owner>/<name>``; ``members`` are people (``name@site``) and
    other groups (a beamtime belongs to a proposal: the proposal lists the beamtime's
    group, whose members are then members of the proposal too). The record with the
    highest ``serial`` counts.
    """

    v: Literal[1] = 1
    kind: Literal["group"] = "group"
    group: GroupId
    owner: IdentityId
    members: tuple[str, ...] = Field((), max_length=10_000)
    serial: int = Field(ge=0)
    time: Time


class Cosignature(_Record):
    """A witness node saw log ``log``'s signed checkpoint (``size``, ``root``) and found it
    consistent with every checkpoint of that log it had seen before."""

    v: Literal[1] = 1
    kind: Literal["cosignature"] = "cosignature"
    log: IdentityId
    size: int = Field(ge=0)
    root: Hex32
    checkpoint_time: Time
    witness: IdentityId
    time: Time
    kid: Kid


class SignedRecord(BaseModel):
    """Exact signed bytes of a record, its signature and the signer's key id."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    record: B64
    sig: B64
    signer: Kid


R = TypeVar("R", bound=_Record)

_DOMAINS: dict[type[_Record], bytes] = {
    KeyRecord: DOMAIN_KEY_RECORD,
    Revocation: DOMAIN_REVOCATION,
    Checkpoint: DOMAIN_CHECKPOINT,
    GrantRecord: DOMAIN_GRANT,
    GroupRecord: DOMAIN_GROUP,
    Cosignature: DOMAIN_COSIGNATURE,
}


def sign_record(record: _Record, signing_key: nacl.signing.SigningKey) -> SignedRecord:
    """Canonically encode ``record`` and sign it with its domain."""
    body = canonical_bytes(record.model_dump(mode="json"))
    sig = sign(signing_key, _DOMAINS[type(record)], body)
    return SignedRecord(
        record=b64e(body), sig=b64e(sig), signer=key_id(bytes(signing_key.verify_key))
    )


def open_record(signed: SignedRecord | dict[str, Any], cls: type[R], verify_key: bytes) -> R:
    """Verify the signature with ``verify_key`` first, then parse the record as ``cls``."""
    if not isinstance(signed, SignedRecord):
        try:
            signed = SignedRecord.model_validate(signed)
        except ValidationError as exc:
            raise CanonicalError(f"malformed signed record: {one_line(exc)}") from exc
    if signed.signer != key_id(verify_key):
        raise SignatureError(f"record signed by key {signed.signer}, expected {key_id(verify_key)}")
    body = b64d(signed.record)
    verify(verify_key, _DOMAINS[cls], body, b64d(signed.sig))
    try:
        return cls.model_validate_json(body)
    except ValidationError as exc:
        raise CanonicalError(
            f"signed {cls.__name__} does not match its schema: {one_line(exc)}"
        ) from exc


def one_line(exc: ValidationError) -> str:
    """A pydantic validation error as one readable line: ``field: reason; ...``."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "value"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
