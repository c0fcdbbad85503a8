"""Intake: one call message in, a verified request or a rejection out, parsed once.

:func:`open_request` splits the frame and parses the header once, then checks, in this
order: the size, the frame, the caller's key (known, not revoked), the signature, the
header's schema, that the ciphertext is the one the header signs, and that the request is
addressed to this site on the subject it arrived on. What it learns on the way (the claimed
id, caller and reply inbox) travels in the :class:`Rejection`, so nothing parses the frame
a second time. :func:`admit` then applies the checks that need the node's state: the
replay guard and the grant.

Before the signature checks out, the id and the caller are only claims: a rejection then
records them only in its reason (a forger must not be able to block or blame the real
request) and answers only an inbox of the claimed caller, so a forged request cannot make
the node send to arbitrary subjects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hub.canonical import b64d, parse_canonical
from hub.clock import parse_time
from hub.crypto import blake2b_256, verify
from hub.directory import Directory
from hub.envelopes import (
    DOMAIN_REQUEST,
    RequestHeader,
    check_payload,
    split_request,
    validate_request_header,
)
from hub.errors import (
    CanonicalError,
    FederationError,
    IntegrityError,
    NotFoundError,
    OversizeError,
    RemoteError,
    ReplayError,
    SignatureError,
    UnauthorizedError,
    UnknownFunctionError,
    caller_code,
)
from hub.events import RequestRejected
from hub.records import KeyRecord
from hub.subjects import is_inbox_of, parse_call_subject
from node.replay import ReplayGuard
from node.replies import error_frame, message_with_hint
from node.runner import Runner

__all__ = ["Rejection", "Verified", "admit", "open_request"]


@dataclass(frozen=True, slots=True)
class Verified:
    """A request whose caller, signature, header, payload hash and address checked out."""

    header: RequestHeader
    record: KeyRecord
    header_bytes: bytes
    sig: bytes
    ciphertext: bytes
    #: the header's wrapped content keys, decoded (by recipient key id)
    wraps: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message was refused, and what may be said about it (and to whom)."""

    error: FederationError
    code: str
    reply_to: str | None
    verified: bool
    """False until the signature checked out: ``request_id`` and ``caller`` are claims."""
    request_id: str | None
    caller: str | None
    envelope_hash: str

    @classmethod
    def of(cls, req: Verified, error: FederationError, code: str) -> Rejection:
        """The rejection of a verified request (replay, no grant, no such function)."""
        return cls(
            error,
            code,
            req.header.reply,
            True,
            req.header.id,
            req.header.caller,
            blake2b_256(req.header_bytes).hex(),
        )

    def event(self) -> RequestRejected:
        """The ``request.rejected`` event that records it."""
        reason = self.error.message[:400]
        rid, caller = self.request_id, self.caller
        if not self.verified and (rid or caller):
            # unproven claims stay out of the request's identity, but are kept in the
            # reason, for the record
            reason += f" (unverified claims: request {rid}, caller {(caller or '')[:60]})"
        return RequestRejected(
            request_id=rid if self.verified else None,
            caller=(caller[:140] if caller else None) if self.verified else None,
            envelope_hash=self.envelope_hash,
            code=self.code,
            reason=reason[:500],
        )

    def reply(self, node_id: str) -> tuple[str, bytes] | None:
        """(inbox, error frame) to tell the caller, or None when nobody may be told."""
        if not self.reply_to or not self.request_id:
            return None
        message = message_with_hint(self.error)
        return self.reply_to, error_frame(self.request_id, node_id, self.wire_code(), message)

    def wire_code(self) -> str:
        """The error code the caller sees (docs/protocol.md)."""
        if isinstance(self.error, RemoteError):
            return self.error.code
        return caller_code(self.code)


@dataclass(slots=True)
class _Frame:
    """What the frame says before anything is verified."""

    data: bytes
    header_bytes: bytes | None = None
    sig: bytes = b""
    ciphertext: bytes = b""
    claimed: dict[str, Any] | None = None
    problem: str | None = None

    @classmethod
    def split(cls, data: bytes) -> _Frame:
        frame = cls(data)
        try:
            frame.header_bytes, frame.sig, frame.ciphertext = split_request(data)
            claimed = parse_canonical(frame.header_bytes)
            if not isinstance(claimed, dict):
                raise CanonicalError("the request header is not an object")
            frame.claimed = claimed
        except CanonicalError as exc:
            frame.problem = exc.message
        return frame

    def claim(self, field: str) -> str | None:
        value = self.claimed.get(field) if self.claimed is not None else None
        return value if isinstance(value, str) else None

    def request_id(self) -> str | None:
        rid = self.claim("id")
        return rid if rid is not None and _looks_like_id(rid) else None

    def reply_to(self) -> str | None:
        """The inbox the request names, only if it is one of the claimed caller's."""
        caller, reply = self.claim("caller"), self.claim("reply")
        if caller is None or reply is None:
            return None
        return reply if is_inbox_of(caller, reply) else None

    def reject(
        self, error: FederationError, code: str, *, verified: bool, reply: bool = True
    ) -> Rejection:
        hashed = self.header_bytes if self.header_bytes is not None else self.data[:4096]
        return Rejection(
            error,
            code,
            self.reply_to() if reply else None,
            verified,
            self.request_id(),
            self.claim("caller"),
            blake2b_256(hashed).hex(),
        )


def open_request(
    data: bytes, subject: str, *, site: str, directory: Directory, max_payload: int
) -> Verified | Rejection:
    """Verify one call message; never raises for anything the message contains.

    Safe to run off the event loop (signature checks release the GIL): it reads the
    directory and changes nothing.
    """
    frame = _Frame.split(data)
    if len(data) > max_payload:
        error: FederationError = OversizeError(
            f"request is {len(data):,} bytes; this site takes {max_payload:,}",
            hint="pass less data per call",
        )
        return frame.reject(error, "oversize", verified=False)
    caller, kid = frame.claim("caller"), frame.claim("kid")
    if frame.claimed is None or frame.header_bytes is None or caller is None or kid is None:
        why = frame.problem or "the header names no caller or key"
        error = CanonicalError(f"malformed request: {why}")
        return frame.reject(error, "malformed", verified=False, reply=False)
    header_bytes = frame.header_bytes
    try:
        record = directory.caller(caller, kid)
    except UnauthorizedError as exc:
        # a revoked (but once registered) key can still prove it signed this request,
        # which makes the refusal attributable; an unknown key proves nothing
        known = directory.keys.get(kid)
        signed = (
            known is not None
            and known.identity == caller
            and _signed_by(known, header_bytes, frame.sig)
        )
        return frame.reject(exc, "unauthorized", verified=signed)
    if not _signed_by(record, header_bytes, frame.sig):
        error = SignatureError(f"request signature of {caller} does not verify")
        return frame.reject(error, "bad_signature", verified=False)
    try:
        header = validate_request_header(frame.claimed)
        check_payload(header, frame.ciphertext)
        wraps = _decoded_wraps(header)
        if not is_inbox_of(header.caller, header.reply):
            # replies go only where the caller listens, never to a subject of the site
            # (a stream's, the JetStream API's, another service's)
            raise CanonicalError(
                f"malformed request: its reply subject {header.reply[:80]!r} is not an inbox "
                f"of {header.caller}"
            )
    except IntegrityError as exc:
        return frame.reject(exc, "malformed", verified=True)
    try:
        addressed = parse_call_subject(subject)
    except FederationError as exc:
        return frame.reject(exc, "misrouted", verified=True)
    target = (header.site, header.module, header.function)
    if (addressed.site, addressed.module, addressed.function) != target or header.site != site:
        error = NotFoundError(f"request for {header.address} arrived on {subject} at site {site}")
        return frame.reject(error, "misrouted", verified=True)
    return Verified(header, record, header_bytes, frame.sig, frame.ciphertext, wraps)


def admit(
    req: Verified, *, replay: ReplayGuard, runner: Runner, directory: Directory, site: str
) -> Rejection | None:
    """The checks of a new request that need the node's state: not a replay (its nonce is
    remembered from now on), a function this node serves, granted to the caller."""
    header = req.header
    try:
        replay.check_and_remember(header.nonce, parse_time(header.time).timestamp())
    except ReplayError as exc:
        return Rejection.of(req, exc, "replay")
    try:
        runner.function(header.module, header.function)
    except UnknownFunctionError:
        error = NotFoundError(f"site {site} serves no function {header.module}.{header.function}")
        return Rejection.of(req, error, "not_found")
    try:
        directory.authorize(req.record, header.module, header.function)
    except UnauthorizedError as exc:
        return Rejection.of(req, exc, "unauthorized")
    return None


def _decoded_wraps(header: RequestHeader) -> dict[str, bytes]:
    """The header's wrapped content keys, decoded; each must be base64 (else the call
    would be accepted and then fail as if its result were bad)."""
    wraps = {}
    for kid, wrap in header.wraps.items():
        try:
            wraps[kid] = b64d(wrap)
        except CanonicalError as exc:
            raise CanonicalError(
                f"malformed request: the content key wrapped for {kid} is not URL-safe base64"
            ) from exc
    return wraps


def _signed_by(record: KeyRecord, header_bytes: bytes, sig: bytes) -> bool:
    """Whether a request header is signed by ``record``'s key."""
    try:
        verify(record.sign_key_bytes(), DOMAIN_REQUEST, header_bytes, sig)
    except SignatureError:
        return False
    return True


def _looks_like_id(rid: str) -> bool:
    return 8 <= len(rid) <= 64 and all(c.isalnum() or c in "_-" for c in rid)
