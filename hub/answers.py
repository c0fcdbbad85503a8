"""What a node's services answer: module info, control answers, admin answers, and errors.

Each answer is a pydantic model (exported to ``schemas/answers/``) that the node builds and
the client parses, as JSON. A successful ``fetch`` is answered with the stored result as a
``result`` reply frame (:class:`hub.envelopes.ReplyHeader`), exactly as the call's own reply
carried it.

**Errors** are answered the NATS micro way, with an empty body and headers::

    Nats-Service-Error       the description (one line)
    Nats-Service-Error-Code  a numeric status, as in HTTP (400, 401, 404, 409, 413, 500, 503)
    Fedhub-Error-Code        fedhub's code (``not_found``, ``unauthorized`` ...)
    Fedhub-Error-Hint        what the caller can do about it (when known)

fedhub's code is the same one a call's error reply carries in ``ReplyHeader.code``, and
:func:`hub.errors.error_from_code` turns either into the same typed error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import nats.errors
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticValidationError

from hub.errors import (
    CallTimeoutError,
    CanonicalError,
    FederationError,
    UnreachableError,
    error_code,
    error_from_code,
    service_status,
)
from hub.lifecycle import RequestState
from hub.proofs import EventProof
from hub.records import B64, Hex32, Kid, SignedRecord, one_line

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient

M = TypeVar("M", bound=BaseModel)

__all__ = [
    "CODE_HEADER",
    "ERROR_CODE_HEADER",
    "ERROR_HEADER",
    "HINT_HEADER",
    "AdminAnswer",
    "CancelAnswer",
    "DeletedAnswer",
    "FunctionInfo",
    "KeepAnswer",
    "ModuleDescription",
    "ProvenanceAnswer",
    "RecipientKeys",
    "RequestRecord",
    "RequestStatus",
    "RequestsAnswer",
    "ResultWrap",
    "ShareAnswer",
    "TagsAnswer",
    "ask_service",
    "error_from_headers",
    "error_headers",
    "parse_answer",
]

#: fedhub's own error code of a service answer (see :func:`hub.errors.error_code`).
CODE_HEADER = "Fedhub-Error-Code"
#: The error's hint, when it has one.
HINT_HEADER = "Fedhub-Error-Hint"
_MAX_HEADER_TEXT = 1000


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FunctionInfo(_Answer):
    """One function as its node describes it (``fedhub ls``, stubs, the client's checks)."""

    name: str
    qualified_name: str
    kind: Literal["function", "method"]
    is_async: bool
    signature: str
    summary: str
    description: str
    raises: dict[str, str]
    progress: bool = Field(description="whether the function reports progress")
    arguments: dict[str, Any] = Field(description="JSON Schema of the keyword arguments")
    returns: dict[str, Any] = Field(description="JSON Schema of the result")
    schema_hash: str = Field(description="BLAKE2b-256 of both schemas, named in each call")


class ModuleDescription(_Answer):
    """A module's info answer (``fh.info.<site>.<module>``), with the node's key record."""

    site: str
    module: str
    node: str = Field(description="the node's log id")
    node_key: SignedRecord = Field(description="the node's key record, signed by its site")
    max_payload: int = Field(ge=0, description="the largest call message the node takes")
    doc: str
    functions: dict[str, FunctionInfo]
    skipped: dict[str, str] = Field(description="names not served, with the reason")


class RequestStatus(_Answer):
    """The node's record of one request (answer to ``status``)."""

    request_id: str
    caller: str | None = None
    address: str | None = None
    state: RequestState
    code: str | None = None
    reason: str | None = None
    received_time: str | None = None
    updated_time: str | None = None
    attempts: int = 0
    progress_ppm: int | None = Field(None, ge=0, le=1_000_000)
    result_hash: Hex32 | None = None
    result_object: str | None = Field(None, description="where the result is kept, if it is")
    result_size: int | None = Field(None, ge=0, description="bytes, as request.completed says")
    expires_time: str | None = Field(
        None, description="when the kept result goes, at the latest (the effective keep-for)"
    )


class CancelAnswer(_Answer):
    """Answer to ``cancel``: whether the node is stopping the call, and its state."""

    id: str
    cancelling: bool
    state: RequestState


class RequestRecord(_Answer):
    """One request in the requests catalog (``fedhub requests``, ``fed.requests()``).

    ``caller`` is the owner; ``shared_with_me`` marks a request someone shared with the
    asker; ``shares`` (the owner's view only) names whom the owner shared it with.
    """

    request_id: str
    site: str
    caller: str | None = None
    address: str | None = None
    state: RequestState
    code: str | None = None
    reason: str | None = None
    received_time: str | None = None
    updated_time: str | None = None
    result_hash: Hex32 | None = None
    result_size: int | None = Field(None, ge=0)
    kept: bool = Field(False, description="whether the node keeps a copy of the result")
    expires_time: str | None = Field(None, description="when a kept result will be removed")
    shared_with_me: bool = False
    shares: tuple[str, ...] = Field((), description="principals the owner shared it with")
    tags: tuple[str, ...] = Field((), description="the owner's private tags (owner only)")
    shared_tags: tuple[str, ...] = Field((), description="tags shared with the readers")
    sharer_key: SignedRecord | None = Field(
        None, description="for a shared reader: the key record of whoever wrapped its key"
    )

    @property
    def module(self) -> str | None:
        """The module part of the address (``site.module.function``)."""
        parts = (self.address or "").split(".")
        return parts[1] if len(parts) >= 3 else None

    @property
    def function(self) -> str | None:
        """The function part of the address (``Class.method`` for a method)."""
        parts = (self.address or "").split(".", 2)
        return parts[2] if len(parts) == 3 else None


class RequestsAnswer(_Answer):
    """A node's answer to ``list``: the asker's requests there (newest first)."""

    site: str
    node: str
    requests: tuple[RequestRecord, ...]
    truncated: bool = Field(False, description="more matched than the limit")


class ResultWrap(_Answer):
    """Answer to ``wrap``: the owner's wrapped content key of a kept result (to share it)."""

    request_id: str
    address: str
    result_hash: Hex32
    wrap: B64 = Field(description="the content key wrapped by the node for the asking key")


class RecipientKeys(_Answer):
    """Answer to ``keys``: the valid key records of a person, or of a group's members."""

    principal: str
    records: tuple[SignedRecord, ...]


class ShareAnswer(_Answer):
    """Answer to ``share`` and ``unshare``: what changed and the log event that says so."""

    request_id: str
    op: Literal["share", "unshare"]
    principal: str
    recipients: tuple[Kid, ...] = ()
    seq: int = Field(ge=1)


class TagsAnswer(_Answer):
    """Answer to ``tag``: a result's tags of one scope as they are now."""

    request_id: str
    scope: Literal["private", "shared"]
    tags: tuple[str, ...]
    seq: int = Field(ge=1)


class KeepAnswer(_Answer):
    """Answer to ``keep``: how long the result is kept now, and until when."""

    request_id: str
    keep_for: int = Field(ge=1)
    expires_time: str
    seq: int = Field(ge=1)


class ProvenanceAnswer(_Answer):
    """Answer to ``provenance``: every event of one request in the node's log, each with
    its proof of inclusion in a signed checkpoint (:class:`hub.proofs.EventProof`)."""

    request_id: str
    site: str
    log: str = Field(description="the node log that holds the events")
    steps: tuple[EventProof, ...]


class DeletedAnswer(_Answer):
    """Answer to ``delete``: the owner's kept result is gone (``result.deleted``)."""

    request_id: str
    state: RequestState
    seq: int = Field(ge=1)


class AdminAnswer(_Answer):
    """Answer to an admin message: the directory change applied and its log event."""

    ok: Literal[True] = True
    op: Literal["register", "revoke", "grant", "group"]
    kid: Kid = Field(description="the key registered or revoked; the signer of a grant or group")
    seq: int = Field(ge=1)


def error_headers(exc: FederationError) -> dict[str, str]:
    """The headers of a service answer that reports ``exc``."""
    code = error_code(exc)
    headers = {
        ERROR_HEADER: _header_text(exc.message),
        ERROR_CODE_HEADER: str(service_status(code)),
        CODE_HEADER: code,
    }
    if exc.hint:
        headers[HINT_HEADER] = _header_text(exc.hint)
    return headers


def error_from_headers(headers: Mapping[str, str] | None) -> FederationError | None:
    """The typed error a service answer reports, or None when it reports none."""
    if not headers or (ERROR_HEADER not in headers and ERROR_CODE_HEADER not in headers):
        return None
    code = headers.get(CODE_HEADER) or "remote_error"
    message = headers.get(ERROR_HEADER) or f"the service answered {headers.get(ERROR_CODE_HEADER)}"
    return error_from_code(code, message, headers.get(HINT_HEADER))


async def ask_service(
    nc: NatsClient,
    subject: str,
    data: bytes,
    *,
    timeout: float,
    unreachable: str,
    silent: str,
) -> bytes:
    """Request ``subject`` and return the answer's body; UnreachableError(``unreachable``)
    when nobody serves it, CallTimeoutError(``silent``) when no answer comes in time, the
    typed error the answer reports otherwise."""
    try:
        msg = await nc.request(subject, data, timeout=timeout)
    except nats.errors.NoRespondersError as exc:
        raise UnreachableError(unreachable) from exc
    except (nats.errors.TimeoutError, TimeoutError) as exc:
        raise CallTimeoutError(silent) from exc
    error = error_from_headers(msg.headers)
    if error is not None:
        raise error
    return bytes(msg.data)


def parse_answer(model: type[M], data: bytes, what: str) -> M:
    """Parse a service answer into its model; CanonicalError when it does not fit."""
    try:
        return model.model_validate_json(data)
    except PydanticValidationError as exc:
        raise CanonicalError(f"malformed {what}: {one_line(exc)}") from exc


def _header_text(text: str) -> str:
    """A header value: one line, bounded."""
    return " ".join(text.split())[:_MAX_HEADER_TEXT]
