"""Wire messages of a call: the signed request envelope and the node's replies.

**Request** (published to ``fh.call.<site>.<module>.<function>``, ``Nats-Msg-Id`` = id)::

    b"FHR1" | u32 big-endian header length | header | 64-byte signature | ciphertext

``header`` is canonical JSON (:class:`RequestHeader`); the caller's Ed25519 key signs
``DOMAIN_REQUEST || header``. The header carries the BLAKE2b-256 hash and size of the
ciphertext, so the signature covers the encrypted arguments too. The ciphertext is the
codec-encoded arguments sealed with a fresh content key, wrapped for the node key(s) of
the target site (``wraps``). The node verifies the signature before parsing anything else.

**Reply** (published by the node to the caller's ``reply`` inbox)::

    b"FHP1" | u32 big-endian header length | header (canonical JSON) | body

``kind`` is ``progress`` (body: progress message sealed with the request's content key),
``result`` (body: result ciphertext, content key wrapped for the caller in the header),
``error`` (body: the error's description sealed with the request's content key when the
node could open the request; empty otherwise, and then the header's ``code`` is all).
Replies are authenticated by the crypto: only the node holding the key the arguments were
wrapped for knows the request's content key, and result wraps are X25519 boxes from the
node's key. The node's log records the result's hash in its signed event.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub.canonical import b64d, b64e, canonical_bytes, parse_canonical
from hub.chain import hash_hex
from hub.crypto import blake2b_256, sign, verify
from hub.errors import CanonicalError, IntegrityError, OversizeError, SignatureError
from hub.records import B64, Hex32, Kid, Time, one_line

__all__ = [
    "CONTROL_MAGIC",
    "DOMAIN_CONTROL",
    "DOMAIN_REQUEST",
    "MAX_KEEP_FOR",
    "MAX_TIMEOUT_MS",
    "REPLY_MAGIC",
    "REQUEST_MAGIC",
    "Bulk",
    "ControlHeader",
    "Reply",
    "ReplyHeader",
    "Request",
    "RequestHeader",
    "ResultRef",
    "StoredResult",
    "call_fields",
    "check_payload",
    "pack_control",
    "pack_reply",
    "pack_request",
    "pack_stored_result",
    "parse_control",
    "parse_request_header",
    "request_fields",
    "split_control",
    "split_request",
    "stored_result_head",
    "unpack_reply",
    "unpack_request",
    "unpack_stored_result",
    "validate_control_header",
    "validate_request_header",
    "wraps_to_bytes",
    "wraps_to_text",
]

REQUEST_MAGIC = b"FHR1"
REPLY_MAGIC = b"FHP1"
DOMAIN_REQUEST = b"fedhub/request/v1\n"
_LEN = struct.Struct(">I")
_MAX_HEADER = 64 * 1024


class _Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Bulk(_Wire):
    """A payload that travels as a bulk transfer instead of inside the message.

    Named in a signed request (an argument) or in a result reply; docs/protocol.md,
    "Calls with bulk payloads". ``hash`` is the sealed form's payload hash (it covers the
    whole payload), ``size`` its plaintext bytes.
    """

    transfer: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    size: int = Field(ge=0)
    hash: Hex32
    chunk_size: int = Field(ge=1, le=4 * 1024 * 1024)
    compressed: bool = False
    #: ``codec``: the payload is codec-encoded (all arguments, or the result);
    #: ``netcdf``: it is a NetCDF file (the argument ``arg``, or the result).
    format: Literal["codec", "netcdf"] = "codec"
    #: For a NetCDF argument, its name; the other arguments travel in the message.
    arg: Annotated[str, Field(max_length=200)] | None = None
    #: For a NetCDF result, what to open it as.
    xarray: Literal["DataArray", "Dataset"] | None = None
    #: The subject token of this transfer when it is not ``transfer`` (a kept result
    #: sent again by a fetch gets a fresh one).
    route: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")] | None = None

    @property
    def token(self) -> str:
        """The token that names this transfer's subjects."""
        return self.route or self.transfer


class ResultRef(_Wire):
    """An argument passed by reference: the kept result of request ``id`` at ``site``,
    whose hash the storing site logged as ``hash`` (docs/results.md, "References")."""

    site: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{16,64}$")]
    hash: Hex32


#: The longest keep-for time a call header may ask for (100 years, in seconds).
MAX_KEEP_FOR = 100 * 365 * 86400
#: The longest timeout a call header may give (7 days, in milliseconds).
MAX_TIMEOUT_MS = 7 * 24 * 3600 * 1000


class RequestHeader(_Wire):
    """The signed header of a call (``bulk`` only when a payload travels apart; ``refs``
    only when arguments are passed by reference; ``keep_for`` only when the caller asks
    for a keep-for time)."""

    v: Literal[1] = 1
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{16,64}$")]
    caller: Annotated[str, Field(min_length=3, max_length=140)]
    kid: Kid
    site: str
    module: str
    function: str
    time: Time
    nonce: B64
    timeout_ms: int = Field(ge=1, le=MAX_TIMEOUT_MS)
    reply: Annotated[str, Field(min_length=1, max_length=255)]
    schema_hash: Hex32 | None = None
    payload_hash: Hex32
    payload_size: int = Field(ge=0)
    wraps: dict[Kid, B64]
    bulk: Bulk | None = None
    refs: dict[Annotated[str, Field(max_length=200)], ResultRef] | None = Field(
        None, max_length=100
    )
    #: Seconds the caller asks the node to keep the result after the call completed (0:
    #: keep no copy); the node keeps it the shorter of this and its module's keep-for
    #: time. Absent: the module's time.
    keep_for: int | None = Field(None, ge=0, le=MAX_KEEP_FOR)
    #: The largest message the caller's own server carries, when it is less than the
    #: node's ``max_payload``: a reply any larger would be refused on the way (and break
    #: the link that carried it), so the node sends a result that large as a bulk
    #: transfer in chunks that fit. Absent: the caller carries what the node takes.
    reply_max: int | None = Field(None, ge=1024)

    @property
    def address(self) -> str:
        """``site.module.function``."""
        return f"{self.site}.{self.module}.{self.function}"


@dataclass(frozen=True, slots=True)
class Request:
    """A request as received: exact header bytes, parsed header, signature, ciphertext."""

    header_bytes: bytes
    header: RequestHeader
    sig: bytes
    ciphertext: bytes

    @property
    def envelope_hash(self) -> str:
        """Hash of the signed header (identifies this exact request)."""
        return hash_hex(blake2b_256(self.header_bytes))


#: The request header's fields that appear only when set (a call without them is signed
#: as before they existed).
_OPTIONAL_REQUEST_FIELDS = ("bulk", "refs", "keep_for", "reply_max")


def request_fields(header: RequestHeader) -> dict[str, Any]:
    """The JSON fields of ``header`` as :func:`pack_request` signs them."""
    unset = {k for k in _OPTIONAL_REQUEST_FIELDS if getattr(header, k) is None}
    return header.model_dump(mode="json", exclude=unset or None)


def call_fields(
    *,
    id: str,
    caller: str,
    kid: str,
    site: str,
    module: str,
    function: str,
    time: str,
    nonce: str,
    timeout_ms: int,
    reply: str,
    schema_hash: str | None,
    payload_hash: str,
    payload_size: int,
    wraps: dict[str, str],
    bulk: Bulk | None = None,
    refs: dict[str, ResultRef] | None = None,
    keep_for: int | None = None,
    reply_max: int | None = None,
) -> dict[str, Any]:
    """:func:`request_fields` of the :class:`RequestHeader` with these fields, built
    without pydantic: a caller's hot path (about 5 µs less per call). For values well
    formed by construction (the client's own ids, keys, parsed address and checked
    options); the node validates every header it receives against the model, and a
    test checks that both build the same bytes."""
    fields: dict[str, Any] = {
        "v": 1,
        "id": id,
        "caller": caller,
        "kid": kid,
        "site": site,
        "module": module,
        "function": function,
        "time": time,
        "nonce": nonce,
        "timeout_ms": timeout_ms,
        "reply": reply,
        "schema_hash": schema_hash,
        "payload_hash": payload_hash,
        "payload_size": payload_size,
        "wraps": wraps,
    }
    if bulk is not None:
        fields["bulk"] = bulk.model_dump(mode="json")
    if refs is not None:
        fields["refs"] = {name: ref.model_dump(mode="json") for name, ref in refs.items()}
    if keep_for is not None:
        fields["keep_for"] = keep_for
    if reply_max is not None:
        fields["reply_max"] = reply_max
    return fields


def pack_request(
    header: RequestHeader | dict[str, Any], ciphertext: bytes, signing_key: Any
) -> bytes:
    """Sign ``header`` (a model, or its :func:`call_fields`) and frame it with its
    ciphertext."""
    dump = header if isinstance(header, dict) else request_fields(header)
    body = canonical_bytes(dump)
    sig = sign(signing_key, DOMAIN_REQUEST, body)
    return b"".join((REQUEST_MAGIC, _LEN.pack(len(body)), body, sig, ciphertext))


def split_request(data: bytes) -> tuple[bytes, bytes, bytes]:
    """Split a request frame into header bytes, signature and ciphertext (no checks yet)."""
    if len(data) < 8 + 64 or data[:4] != REQUEST_MAGIC:
        raise CanonicalError("not a fedhub request (bad magic or too short)")
    (n,) = _LEN.unpack_from(data, 4)
    if n > _MAX_HEADER or 8 + n + 64 > len(data):
        raise CanonicalError("request header length is out of range")
    return data[8 : 8 + n], data[8 + n : 8 + n + 64], data[8 + n + 64 :]


def parse_request_header(header_bytes: bytes) -> RequestHeader:
    """Parse header bytes (call after the signature was verified)."""
    return validate_request_header(parse_canonical(header_bytes))


def validate_request_header(value: object) -> RequestHeader:
    """The request header of an already parsed (and verified) header value."""
    try:
        return RequestHeader.model_validate(value)
    except ValidationError as exc:
        raise CanonicalError(f"request header does not match its schema: {one_line(exc)}") from exc


def unpack_request(data: bytes, caller_sign_key: bytes, *, max_size: int | None = None) -> Request:
    """Verify and parse a request whose caller key is already known (tests, tools)."""
    if max_size is not None and len(data) > max_size:
        raise OversizeError(f"request is {len(data)} bytes, the limit is {max_size}")
    header_bytes, sig, ciphertext = split_request(data)
    verify(caller_sign_key, DOMAIN_REQUEST, header_bytes, sig)
    header = parse_request_header(header_bytes)
    check_payload(header, ciphertext)
    return Request(header_bytes, header, sig, ciphertext)


def check_payload(header: RequestHeader, ciphertext: bytes) -> None:
    """The ciphertext must be the one the signed header names."""
    if (
        len(ciphertext) != header.payload_size
        or hash_hex(blake2b_256(ciphertext)) != header.payload_hash
    ):
        raise SignatureError("ciphertext does not match the signed header (altered in transit)")


class ReplyHeader(_Wire):
    """Header of a node's reply to a caller."""

    v: Literal[1] = 1
    kind: Literal["progress", "result", "error"]
    id: str
    node: str
    time: Time
    fraction_ppm: int | None = Field(None, ge=0, le=1_000_000)
    code: str | None = None
    message: str | None = Field(None, max_length=2000, description="public error text")
    result_hash: Hex32 | None = None
    wraps: dict[Kid, B64] = Field(default_factory=dict)
    object: str | None = None
    log_seq: int | None = None
    #: A result that follows as a bulk transfer (the body is then empty).
    bulk: Bulk | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A parsed reply."""

    header: ReplyHeader
    body: bytes


def pack_reply(header: ReplyHeader, body: bytes = b"") -> bytes:
    """Frame a reply."""
    raw = canonical_bytes(header.model_dump(mode="json", exclude_none=True))
    return b"".join((REPLY_MAGIC, _LEN.pack(len(raw)), raw, body))


def unpack_reply(data: bytes) -> Reply:
    """Parse a reply frame; CanonicalError when malformed."""
    if len(data) < 8 or data[:4] != REPLY_MAGIC:
        raise CanonicalError("not a fedhub reply (bad magic or too short)")
    (n,) = _LEN.unpack_from(data, 4)
    if n > _MAX_HEADER or 8 + n > len(data):
        raise CanonicalError("reply header length is out of range")
    try:
        header = ReplyHeader.model_validate(parse_canonical(data[8 : 8 + n]))
    except ValidationError as exc:
        raise CanonicalError(f"reply header does not match its schema: {one_line(exc)}") from exc
    return Reply(header, data[8 + n :])


def wraps_to_bytes(wraps: dict[str, str]) -> dict[str, bytes]:
    """Decode a header's base64 wraps."""
    return {kid: b64d(w) for kid, w in wraps.items()}


def wraps_to_text(wraps: dict[str, bytes]) -> dict[str, str]:
    """Encode wraps for a header."""
    return {kid: b64e(w) for kid, w in wraps.items()}


CONTROL_MAGIC = b"FHK1"
DOMAIN_CONTROL = b"fedhub/control/v1\n"


class ControlHeader(_Wire):
    """A caller's signed control message about one of its requests (cancel, status, fetch)."""

    v: Literal[1] = 1
    op: Literal["cancel", "status", "fetch"]
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{16,64}$")]
    caller: Annotated[str, Field(min_length=3, max_length=140)]
    kid: Kid
    time: Time
    nonce: B64


def pack_control(header: ControlHeader, signing_key: Any) -> bytes:
    """Sign and frame a control message."""
    body = canonical_bytes(header.model_dump(mode="json"))
    sig = sign(signing_key, DOMAIN_CONTROL, body)
    return b"".join((CONTROL_MAGIC, _LEN.pack(len(body)), body, sig))


def split_control(data: bytes) -> tuple[bytes, bytes]:
    """Header bytes and signature of a control frame (verify before parsing)."""
    if len(data) < 8 + 64 or data[:4] != CONTROL_MAGIC:
        raise CanonicalError("not a fedhub control message")
    (n,) = _LEN.unpack_from(data, 4)
    if n > _MAX_HEADER or 8 + n + 64 != len(data):
        raise CanonicalError("control message length is out of range")
    return data[8 : 8 + n], data[8 + n :]


def parse_control(header_bytes: bytes) -> ControlHeader:
    """Parse a verified control header."""
    return validate_control_header(parse_canonical(header_bytes))


def validate_control_header(value: object) -> ControlHeader:
    """The control header of an already parsed (and verified) header value."""
    try:
        return ControlHeader.model_validate(value)
    except ValidationError as exc:
        raise CanonicalError(f"control message does not match its schema: {one_line(exc)}") from exc


class StoredResult(_Wire):
    """The head of a kept result (``fedhub fetch`` serves it again).

    Stored as ``u32 big-endian head length | head (JSON) | result ciphertext``: the
    ciphertext is the one the call's reply carried, ``wraps`` its content key wrapped for
    each recipient (the caller, and whoever it was shared with).
    """

    v: Literal[1] = 1
    wraps: dict[Kid, B64]
    #: A bulk result: what follows the head is its sealed form (hub.transfer), not a
    #: ciphertext of the one-message path.
    bulk: Bulk | None = None


def pack_stored_result(wraps: dict[str, str], ciphertext: bytes) -> bytes:
    """The stored form of a sealed result."""
    return stored_result_head(StoredResult(wraps=wraps)) + ciphertext


def stored_result_head(head: StoredResult) -> bytes:
    """The length-prefixed head of a stored result (its sealed bytes follow)."""
    raw = head.model_dump_json(exclude_none=True).encode()
    return _LEN.pack(len(raw)) + raw


def unpack_stored_result(data: bytes) -> tuple[StoredResult, bytes]:
    """The head and ciphertext of a stored result; IntegrityError if it is not one."""
    try:
        (n,) = _LEN.unpack_from(data, 0)
        if n > _MAX_HEADER or 4 + n > len(data):
            raise ValueError("head length is out of range")
        head = StoredResult.model_validate_json(data[4 : 4 + n])
    except (ValueError, struct.error) as exc:  # pydantic's ValidationError is a ValueError
        why = one_line(exc) if isinstance(exc, ValidationError) else str(exc)
        raise IntegrityError(f"the stored result is not in fedhub's stored form: {why}") from exc
    return head, data[4 + n :]
