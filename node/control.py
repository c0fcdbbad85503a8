"""Control answers: a caller's signed cancel, status and fetch about one of its requests
(and, through :mod:`node.catalog`, its catalog messages).

The node answers on ``fh.status.<site>`` (see docs/protocol.md) with the models of
:mod:`hub.answers`, except a successful fetch: the stored result as a ``result`` reply
frame, exactly as the call's own reply carried it. A refusal is raised as the typed error,
which the daemon sends as an error answer (headers, :func:`hub.answers.error_headers`).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel

from hub.answers import CancelAnswer, RequestStatus
from hub.canonical import parse_canonical
from hub.clock import parse_time
from hub.crypto import blake2b_256, verify
from hub.directory import Directory
from hub.envelopes import (
    DOMAIN_CONTROL,
    ControlHeader,
    StoredResult,
    split_control,
    validate_control_header,
)
from hub.errors import (
    CanonicalError,
    FederationError,
    IntegrityError,
    NotFoundError,
    ReplayError,
    SignatureError,
    UnauthorizedError,
    ValidationError,
)
from hub.events import ResultFetched
from hub.lifecycle import UNFINISHED, RequestState
from hub.results_wire import CATALOG_MAGIC
from node import projections
from node.catalog import Catalog
from node.eventlog import StoredEvent
from node.replay import ReplayGuard

if TYPE_CHECKING:
    from node.pipeline import Pipeline

__all__ = ["Control", "ControlAnswer", "open_control"]

#: What a control message is answered with (a refusal is raised).
ControlAnswer = BaseModel | bytes

log = structlog.get_logger(__name__)


class Control:
    """Answers control messages from what a :class:`~node.pipeline.Pipeline` knows."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline
        self.catalog = Catalog(pipeline, self)
        #: The nonces of the control messages answered within the replay window.
        self.replay = ReplayGuard(pipeline.calls.replay_window)

    async def answer(self, data: bytes) -> ControlAnswer:
        """Answer a signed cancel/status/fetch message from a caller about its own request,
        or a catalog message (:mod:`node.catalog`).

        Raises the typed error (UnauthorizedError, NotFoundError ...) for a refusal.
        """
        if data[:4] == CATALOG_MAGIC:
            return await self.catalog.answer(data)
        p = self.p
        ctl = open_control(data, p.directory, self.replay)
        if ctl.op in ("status", "fetch"):
            # the result may be being stored right now: answer once that has ended
            await p.results.settled(ctl.id)
        state = await p.request_state(ctl.id)
        if state is None or state.get("caller") != ctl.caller:
            raise NotFoundError(f"no request {ctl.id} of {ctl.caller} at this node")
        if ctl.op == "fetch":
            return await self.fetch(ctl.id, ctl.caller, state)
        if ctl.op == "cancel":
            current = RequestState(state["state"])
            event = p.running.get(ctl.id)
            if event is not None:
                event.set()
                return CancelAnswer(id=ctl.id, cancelling=True, state=current)
            if current in UNFINISHED:
                # not running in this process yet (queued, or between log and start):
                # remembered, and the call is cancelled when it would start
                p.cancel_early[ctl.id] = time.monotonic()
                return CancelAnswer(id=ctl.id, cancelling=True, state=current)
            return CancelAnswer(id=ctl.id, cancelling=False, state=current)
        fields = {k: state.get(k) for k in RequestStatus.model_fields if state.get(k) is not None}
        retention = p.results.retention
        if retention is not None:  # the effective keep-for: the module's, or less if asked
            fields["expires_time"] = retention.expiry(state)
        return RequestStatus.model_validate(fields)

    async def append_completed(self, rid: str, event: BaseModel) -> list[StoredEvent]:
        """Log a result event of ``rid`` while it is still completed (see
        :meth:`node.results.ResultStore.append_completed`)."""
        reader = self.p._read()

        def state_of(request_id: str) -> str | None:
            row = projections.request_status(reader, request_id)
            return None if row is None else str(row["state"])

        return await self.p.results.append_completed(rid, event, state_of)

    async def load_head(self, name: str) -> StoredResult:
        """The head (wraps) of the result kept under ``name``."""
        if self.p.bulk is not None:
            return await self.p.bulk.load_head(name)
        head, _ = await self.p.results.load(name)
        return head

    async def _fetch_bulk(
        self,
        rid: str,
        caller: str,
        state: dict[str, Any],
        head: StoredResult,
        sealed: Path,
        wraps: dict[str, str],
    ) -> bytes:
        """A kept bulk result: announced in the answer, then sent as a bulk transfer."""
        p = self.p
        assert p.bulk is not None
        if head.bulk is None or head.bulk.hash != state.get("result_hash"):
            await asyncio.to_thread(sealed.unlink, missing_ok=True)
            raise IntegrityError(f"the stored result of {rid} is not the one the log recorded")
        try:
            stored = await self.append_completed(rid, ResultFetched(request_id=rid, by=caller))
        except NotFoundError:
            await asyncio.to_thread(sealed.unlink, missing_ok=True)
            raise
        bulk = head.bulk.model_copy(update={"route": secrets.token_hex(16)})
        p.bulk.serve(caller, bulk, sealed, timeout=max(60.0, p.calls.ack_wait))
        return p.replies.result_frame(
            rid,
            result_hash=head.bulk.hash,
            wraps=wraps,
            ciphertext=b"",
            kept_as=str(state.get("result_object")),
            log_seq=stored[-1].seq,
            bulk=bulk,
        )

    async def fetch(
        self, rid: str, caller: str, state: dict[str, Any], wraps: dict[str, str] | None = None
    ) -> bytes:
        """The kept result of ``rid`` as a result frame for ``caller``; logs
        ``result.fetched``. ``wraps``: the content key wrapped for ``caller`` when it is
        not the owner (a share); by default the stored head's wraps."""
        p = self.p
        if RequestState(state["state"]) != RequestState.COMPLETED:
            raise NotFoundError(f"request {rid} has no result: it is {state['state']}")
        name = state.get("result_object")
        if not name or not p.results.loads:
            why = state.get("reason") or "it was delivered only"
            raise NotFoundError(f"no copy of the result of {rid} was kept ({why})")
        body: bytes | Path
        try:
            if p.bulk is not None:  # read in bounded memory: the result may be large
                head, body = await p.bulk.load_stored(str(name), rid)
            else:
                head, body = await p.results.load(str(name))
        except FederationError as exc:
            log.warning("result.fetch_failed", request_id=rid, error=str(exc))
            raise
        if wraps is None:
            wraps = dict(head.wraps)
        if isinstance(body, Path):
            return await self._fetch_bulk(rid, caller, state, head, body, wraps)
        ciphertext = body
        if blake2b_256(ciphertext).hex() != state.get("result_hash"):
            error = IntegrityError(f"the stored result of {rid} is not the one the log recorded")
            log.warning("result.fetch_failed", request_id=rid, error=error.message)
            raise error
        stored = await self.append_completed(rid, ResultFetched(request_id=rid, by=caller))
        return p.replies.result_frame(
            rid,
            result_hash=state["result_hash"],
            wraps=wraps,
            ciphertext=ciphertext,
            kept_as=str(name),
            log_seq=stored[-1].seq,
        )


def open_control(data: bytes, directory: Directory, replay: ReplayGuard) -> ControlHeader:
    """Verify a control message, parsed once, as a call's :func:`node.intake.open_request`
    does: the frame and its header (ValidationError: not a control message a node can
    read), the caller's key (UnauthorizedError: unknown or revoked), the signature
    (UnauthorizedError), the header's schema (ValidationError), then its time and nonce
    (ReplayError: a captured message sent again is not answered again)."""
    try:
        header_bytes, sig = split_control(data)
        claimed = parse_canonical(header_bytes)
    except CanonicalError as exc:
        raise ValidationError(f"malformed control message: {exc.message}") from exc
    caller = claimed.get("caller") if isinstance(claimed, dict) else None
    kid = claimed.get("kid") if isinstance(claimed, dict) else None
    if not isinstance(caller, str) or not isinstance(kid, str):
        raise ValidationError("malformed control message: its header names no caller or key")
    record = directory.caller(caller, kid)
    try:
        verify(record.sign_key_bytes(), DOMAIN_CONTROL, header_bytes, sig)
    except SignatureError as exc:
        raise UnauthorizedError(
            f"the control message's signature does not verify with {caller}'s key {kid}"
        ) from exc
    try:
        ctl = validate_control_header(claimed)
    except CanonicalError as exc:
        raise ValidationError(f"malformed control message: {exc.message}") from exc
    try:
        sent = parse_time(ctl.time).timestamp()
    except (ValueError, FederationError) as exc:
        raise ValidationError(f"malformed control message: time {ctl.time!r}") from exc
    try:
        replay.check_and_remember(ctl.nonce, sent)
    except ReplayError as exc:
        raise ReplayError(
            f"control message {ctl.op} of {ctl.id} refused: {exc.message}", hint=exc.hint
        ) from exc
    return ctl
