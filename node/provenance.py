"""A request's provenance at this node: its events, each with a proof of inclusion.

The events of one request (``request.accepted`` with the caller's signed header, then
``request.completed`` or ``request.failed``, and the result events after it), after the
``node.started`` of the process that handled it (naming the code it loaded), are read
from the log on the log's own thread, a checkpoint is appended when none covers the last
of them yet, and each event gets its :class:`hub.proofs.EventProof`: anyone holding the
site's key checks it offline (``fedhub audit --proof``), without the rest of the log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from hub.answers import ProvenanceAnswer
from hub.canonical import b64d
from hub.errors import NotFoundError
from hub.proofs import EventProof
from hub.records import Checkpoint, SignedRecord
from node.eventlog import StoredEvent
from node.proving import event_proof_of

if TYPE_CHECKING:
    from node.pipeline import Pipeline

__all__ = ["READER_TYPES", "provenance_of"]

log = structlog.get_logger(__name__)


#: What a reader of a shared result sees of its events: the call itself, not what the owner
#: did with the result since (private tags, other shares, who fetched it).
READER_TYPES = frozenset(
    {"request.accepted", "request.started", "request.completed", "request.failed"}
)


async def provenance_of(p: Pipeline, rid: str, *, owner: bool = True) -> ProvenanceAnswer:
    """The events of ``rid`` in this node's log with their proofs (NotFoundError if none);
    for a reader (``owner`` False) only those of :data:`READER_TYPES`."""
    eventlog = p.writer.eventlog
    found = await p.writer.call(lambda: eventlog.events_for_request(rid))
    assert isinstance(found, list)
    events: list[StoredEvent] = [e for e in found if owner or e.type in READER_TYPES]
    if not events:
        raise NotFoundError(f"no events of request {rid} in this node's log")
    first = events[0].seq
    started = await p.writer.call(lambda: eventlog.started_before(first))
    if isinstance(started, StoredEvent):  # which code ran: named once per process
        events.insert(0, started)
    head = await p.writer.call(eventlog.head)
    covered = 0 if head is None else _size(head)
    if covered < events[-1].seq:
        stored = await p.writer.checkpoint()
        log.info("provenance.checkpointed", request_id=rid, seq=stored.seq)
    proofs = await p.writer.call(
        lambda: [event_proof_of(eventlog, e.seq, hint="append a checkpoint") for e in events]
    )
    assert isinstance(proofs, list)
    steps: list[EventProof] = proofs
    return ProvenanceAnswer(request_id=rid, site=p.site, log=eventlog.log_id, steps=tuple(steps))


def _size(head: object) -> int:
    """How many events the signed checkpoint ``head`` covers."""
    assert isinstance(head, SignedRecord)
    return Checkpoint.model_validate_json(b64d(head.record)).size
