"""The signed catalog message: a caller's question or change about kept results.

Sent, like cancel/status/fetch (:class:`hub.envelopes.ControlHeader`), to
``fh.status.<site>`` and answered by the site's node (docs/results.md)::

    b"FHQ1" | u32 big-endian header length | header (canonical JSON) | 64-byte signature

The caller's Ed25519 key signs ``DOMAIN_CATALOG || header``; the node verifies the
signature against the caller's registered key before it reads anything else, and refuses
a message whose ``time`` is outside its replay window or whose ``nonce`` it has seen (so
a captured ``share`` or ``unshare`` cannot be played again).

``op`` is what is asked; ``id`` names the request (absent for ``list``); ``args`` holds
the op's parameters (:class:`ListFilter` for ``list``, a principal for ``keys``,
``share`` and ``unshare``, the wraps for ``share``, :class:`TagArgs` for ``tag``,
:class:`KeepArgs` for ``keep``, :class:`SliceArgs` for ``slice`` and ``describe``).
"""

from __future__ import annotations

import struct
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub.canonical import canonical_bytes, parse_canonical
from hub.crypto import blake2b_256, sign
from hub.errors import CanonicalError
from hub.records import B64, Kid, SignedRecord, Time, one_line

__all__ = [
    "CATALOG_MAGIC",
    "CATALOG_OPS",
    "DOMAIN_CATALOG",
    "CatalogHeader",
    "KeepArgs",
    "ListFilter",
    "Principal",
    "ShareArgs",
    "SliceArgs",
    "TagArgs",
    "pack_catalog",
    "parse_catalog_bytes",
    "split_catalog",
    "validate_catalog_header",
]

CATALOG_MAGIC = b"FHQ1"
DOMAIN_CATALOG = b"fedhub/catalog/v1\n"
#: What a catalog message may ask.
CatalogOp = Literal[
    "list",
    "status",
    "wrap",
    "keys",
    "share",
    "unshare",
    "fetch",
    "delete",
    "tag",
    "keep",
    "provenance",
    "slice",
    "describe",
]
CATALOG_OPS: tuple[str, ...] = get_args(CatalogOp)
_LEN = struct.Struct(">I")
_MAX_HEADER = 256 * 1024

#: Whom a result is shared with: a person (``name@site``), a group (``group:NAME``), or
#: a node (``node:SITE/NAME``, for a call that takes the result by reference).
Principal = Annotated[
    str,
    Field(
        min_length=3,
        max_length=140,
        pattern=r"^(group:[^\s]+|node:[a-z][a-z0-9_-]*/[^\s/]+|[^\s@:]+@[^\s@:]+)$",
    ),
]
RequestIdText = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{16,64}$")]


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ListFilter(_Wire):
    """What ``list`` returns: the caller's requests (and those shared with it) that match
    every given field."""

    module: str | None = Field(None, max_length=200)
    function: str | None = Field(None, max_length=200)
    state: str | None = Field(None, max_length=40, description="a request state, or 'kept'")
    since: Time | None = Field(None, description="received at or after")
    until: Time | None = Field(None, description="received before")
    shared: bool | None = Field(None, description="only shared with me (true) or mine (false)")
    query: dict[str, Any] | None = Field(None, description="a hub.query.Query in JSON form")
    limit: int = Field(1000, ge=1, le=10_000)


TagName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class TagArgs(_Wire):
    """``tag``: tags to add to and remove from one scope of a result's tags."""

    scope: Literal["private", "shared"] = "private"
    add: tuple[TagName, ...] = Field((), max_length=100)
    remove: tuple[TagName, ...] = Field((), max_length=100)


class ShareArgs(_Wire):
    """``share``: the content key wrapped by the owner for each key of ``principal``."""

    principal: Principal
    wraps: dict[Kid, B64] = Field(min_length=1, max_length=1000)
    node_key: SignedRecord | None = Field(
        None, description="a node principal's key record, signed by its site"
    )
    for_call: RequestIdText | None = Field(
        None, description="a node principal: the one call (request id) it is shared for"
    )


class KeepArgs(_Wire):
    """``keep``: keep the result this many seconds after its call completed (less than the
    module's keep-for time; the node refuses more)."""

    keep_for: int = Field(ge=1)


#: A dimension's part in a slice: one index (the dimension is dropped, as ``isel`` does)
#: or ``[start, stop, step]`` of a Python slice (each may be null).
IndexPart = Annotated[int, Field(strict=True)] | tuple[int | None, int | None, int | None]
Name = Annotated[str, Field(min_length=1, max_length=200)]


class SliceArgs(_Wire):
    """``slice`` / ``describe``: the owner lets the node open its kept result for this one
    message. ``grant`` is the result's content key wrapped by the owner's key for the
    node's key; ``isel`` and ``variables`` say which part (``describe``: neither; the
    answer is the result's layout)."""

    grant: B64
    isel: dict[Name, IndexPart] = Field(default_factory=dict, max_length=64)
    variables: tuple[Name, ...] | None = Field(None, min_length=1, max_length=1000)

    def selection_hash(self) -> str:
        """BLAKE2b-256 (hex) of the canonical JSON ``{"isel", "variables"}``: the part
        asked for, as ``result.sliced`` logs it (instead of the names)."""
        part = self.model_dump(mode="json", include={"isel", "variables"})
        return blake2b_256(canonical_bytes(part)).hex()


class CatalogHeader(_Wire):
    """A caller's signed catalog message (see the module docstring)."""

    v: Literal[1] = 1
    op: CatalogOp
    id: RequestIdText | None = None
    caller: Annotated[str, Field(min_length=3, max_length=140)]
    kid: Kid
    time: Time
    nonce: B64
    args: dict[str, Any] = Field(default_factory=dict)


def pack_catalog(header: CatalogHeader, signing_key: Any) -> bytes:
    """Sign and frame a catalog message."""
    body = canonical_bytes(header.model_dump(mode="json", exclude_none=True))
    sig = sign(signing_key, DOMAIN_CATALOG, body)
    return b"".join((CATALOG_MAGIC, _LEN.pack(len(body)), body, sig))


def split_catalog(data: bytes) -> tuple[bytes, bytes]:
    """Header bytes and signature of a catalog frame (verify before parsing further)."""
    if len(data) < 8 + 64 or data[:4] != CATALOG_MAGIC:
        raise CanonicalError("not a fedhub catalog message")
    (n,) = _LEN.unpack_from(data, 4)
    if n > _MAX_HEADER or 8 + n + 64 != len(data):
        raise CanonicalError("catalog message length is out of range")
    return data[8 : 8 + n], data[8 + n :]


def parse_catalog_bytes(header_bytes: bytes) -> dict[str, Any]:
    """The header as a JSON object (for reading who signed it, before verifying)."""
    value = parse_canonical(header_bytes)
    if not isinstance(value, dict):
        raise CanonicalError("catalog header is not an object")
    return value


def validate_catalog_header(value: object) -> CatalogHeader:
    """The catalog header of an already parsed (and verified) header value."""
    try:
        return CatalogHeader.model_validate(value)
    except ValidationError as exc:
        raise CanonicalError(f"catalog message does not match its schema: {one_line(exc)}") from exc
