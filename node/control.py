"""Control answers: a caller's signed cancel, status and fetch about one of its requests.

The node answers on ``fh.status.<site>`` (see docs/protocol.md) with the models of
:mod:`hub.answers`, except a successful fetch: the stored result as a ``result`` reply
frame, exactly as the call's own reply carried it. A refusal is raised as the typed error,
which the daemon sends as an error answer (headers, :func:`hub.answers.error_headers`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from hub.answers import CancelAnswer, RequestStatus
from hub.canonical import parse_canonical
from hub.clock import now
from hub.crypto import blake2b_256, verify
from hub.envelopes import (
    DOMAIN_CONTROL,
    ReplyHeader,
    pack_reply,
    split_control,
    validate_control_header,
)
from hub.errors import FederationError, IntegrityError, NotFoundError, UnauthorizedError
from hub.events import ResultFetched
from hub.lifecycle import UNFINISHED, RequestState

if TYPE_CHECKING:
    from node.pipeline import Pipeline

__all__ = ["Control", "ControlAnswer"]

#: What a control message is answered with (a refusal is raised).
ControlAnswer = RequestStatus | CancelAnswer | bytes

log = structlog.get_logger(__name__)


class Control:
    """Answers control messages from what a :class:`~node.pipeline.Pipeline` knows."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.p = pipeline

    async def answer(self, data: bytes) -> ControlAnswer:
        """Answer a signed cancel/status/fetch message from a caller about its own request.

        Raises the typed error (UnauthorizedError, NotFoundError ...) for a refusal.
        """
        p = self.p
        try:
            header_bytes, sig = split_control(data)
            claimed = parse_canonical(header_bytes)
            record = p.directory.caller(str(claimed["caller"]), str(claimed["kid"]))
            verify(record.sign_key_bytes(), DOMAIN_CONTROL, header_bytes, sig)
            ctl = validate_control_header(claimed)  # the frame is parsed once
        except UnauthorizedError:
            raise
        except (FederationError, KeyError, TypeError) as exc:
            raise UnauthorizedError(f"control message refused: {exc}") from exc
        if ctl.op in ("status", "fetch"):
            # the result may be being stored right now: answer once that has ended
            await p.results.settled(ctl.id)
        state = await p.request_state(ctl.id)
        if state is None or state.get("caller") != ctl.caller:
            raise NotFoundError(f"no request {ctl.id} of {ctl.caller} at this node")
        if ctl.op == "fetch":
            return await self._fetch(ctl.id, ctl.caller, state)
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
        return RequestStatus.model_validate(
            {k: state.get(k) for k in RequestStatus.model_fields if state.get(k) is not None}
        )

    async def _fetch(self, rid: str, caller: str, state: dict[str, Any]) -> bytes:
        """The kept result of ``rid`` as a result frame; logs ``result.fetched``."""
        p = self.p
        if RequestState(state["state"]) != RequestState.COMPLETED:
            raise NotFoundError(f"request {rid} has no result: it is {state['state']}")
        name = state.get("result_object")
        if not name or not p.results.loads:
            why = state.get("reason") or "it was delivered only"
            raise NotFoundError(f"no copy of the result of {rid} was kept ({why})")
        try:
            head, ciphertext = await p.results.load(str(name))
        except FederationError as exc:
            log.warning("result.fetch_failed", request_id=rid, error=str(exc))
            raise
        if blake2b_256(ciphertext).hex() != state.get("result_hash"):
            raise IntegrityError(f"the stored result of {rid} is not the one the log recorded")
        stored = await p.writer.append(ResultFetched(request_id=rid, by=caller))
        return pack_reply(
            ReplyHeader(
                kind="result",
                id=rid,
                node=p.node_id,
                time=now(),
                result_hash=state["result_hash"],
                wraps=head.wraps,
                object=str(name),
                log_seq=stored[-1].seq,
            ),
            ciphertext,
        )
