"""The node as a witness: publish its own checkpoints, countersign other sites' ones.

* :meth:`NodeWitness.publish_checkpoints` (a task of the daemon) publishes each new
  checkpoint of this node's log to the federation directory, with the consistency path
  from the previous one (:func:`node.proving.consistency_proof_of`); how far it got is
  kept in the log's ``meta`` table (``witness_published``), so nothing is sent twice.
* :meth:`NodeWitness.on_notice` takes the checkpoints of other sites' logs from the
  directory (:class:`hub.witness.Witness` judges them): a consistent one is cosigned,
  logged as ``checkpoint.cosigned`` and published; evidence of a fork or a rollback is
  logged as ``checkpoint.conflict`` and published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import structlog
from pydantic import ValidationError

from hub.canonical import b64d
from hub.directory import record_token
from hub.errors import FederationError
from hub.events import CheckpointConflict, CheckpointCosigned
from hub.proofs import ConsistencyProof
from hub.records import SignedRecord
from hub.witness import (
    ConflictNotice,
    CosignatureNotice,
    Judgement,
    Witness,
    cosign,
    site_of,
)
from node.eventlog import EventLog
from node.proving import consistency_proof_of

__all__ = ["NodeWitness"]

log = structlog.get_logger(__name__)

Publish = Callable[[str, bytes, str], Awaitable[None]]
Append = Callable[..., Awaitable[object]]
Call = Callable[[Callable[[], Any]], Awaitable[Any]]


class NodeWitness:
    """Publishes this node's checkpoints; witnesses every other site's."""

    def __init__(
        self,
        eventlog: EventLog,
        site: str,
        trusted_sites: dict[str, bytes],
        node_key: SignedRecord,
        *,
        call: Call,
        append: Append,
        publish: Publish,
    ) -> None:
        self.eventlog = eventlog
        self.site = site
        self.node_key = node_key
        self.witness = Witness(trusted_sites)
        self.call = call
        self.append = append
        self.publish = publish
        #: What this witness did, for operators and tests: (action, log, size).
        self.judged: list[tuple[str, str, int]] = []

    def load(self) -> None:
        """Remember the checkpoints this node cosigned or disputed before (its own log)."""
        rows = self.eventlog.db.execute(
            "SELECT body FROM events WHERE type IN ('checkpoint.cosigned', 'checkpoint.conflict') "
            "ORDER BY seq"
        ).fetchall()
        for (body,) in rows:
            data = json.loads(bytes(body))["data"]
            if data["type"] == "checkpoint.cosigned":
                self.witness.remember(SignedRecord.model_validate(data["checkpoint"]))
            else:
                self.witness.remember_dispute(SignedRecord.model_validate(data["later"]))

    # --- this node's checkpoints ---------------------------------------------------------

    async def publish_checkpoints(self, every: float = 0.5) -> None:
        """Publish every new checkpoint of this log (forever; cancel to stop)."""
        while True:
            with contextlib.suppress(FederationError):
                for proof in await self.call(self._new_proofs):
                    token = record_token(proof.new)
                    await self.publish("checkpoint", proof.model_dump_json().encode(), token)
                    await self.call(partial(self._mark, _size(proof.new)))
            await asyncio.sleep(every)

    def _new_proofs(self) -> list[ConsistencyProof]:
        db = self.eventlog.db
        row = db.execute("SELECT value FROM meta WHERE key = 'witness_published'").fetchone()
        done = int(row[0]) if row else -1
        rows = db.execute(
            "SELECT size, signed FROM checkpoints WHERE size >= ? ORDER BY size", [max(done, 0)]
        ).fetchall()
        signed = [(int(size), SignedRecord.model_validate_json(text)) for size, text in rows]
        proofs = []
        for (size, new), before in zip(signed, [None, *signed], strict=False):
            if size <= done:
                continue
            old = before[1] if before is not None else new
            proofs.append(consistency_proof_of(self.eventlog, old, new))
        return proofs

    def _mark(self, size: int) -> None:
        self.eventlog.db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('witness_published', ?)", [str(size)]
        )

    # --- other sites' checkpoints ----------------------------------------------------------

    async def on_notice(self, kind: str, data: bytes) -> None:
        """A witness record from the directory (only checkpoints need this node's work)."""
        if kind != "checkpoint":
            return
        try:
            proof = ConsistencyProof.model_validate_json(data)
        except ValidationError:
            log.warning("witness.notice_ignored", reason="not a consistency proof")
            return
        if site_of(proof.log) == self.site:
            return  # a site does not witness its own logs
        try:
            judgement = self.witness.judge(proof)
        except FederationError as exc:
            log.warning("witness.notice_ignored", log=proof.log, reason=exc.message)
            return
        if judgement.action == "cosign":
            await self._cosign(judgement.checkpoint)
        elif judgement.action == "conflict":
            assert judgement.earlier is not None and judgement.reason is not None
            await self._dispute(judgement, judgement.earlier)
            log.warning(
                "witness.conflict_found",
                log=judgement.log,
                reason=judgement.reason,
                detail=judgement.detail,
            )
        # after it was logged and published
        self.judged.append((judgement.action, judgement.log, _size(judgement.checkpoint)))

    async def _cosign(self, checkpoint: SignedRecord) -> None:
        key = self.eventlog.key
        signed = cosign(checkpoint, self.eventlog.log_id, key.signing_key, key.kid)
        await self.append(CheckpointCosigned(checkpoint=checkpoint, cosignature=signed))
        notice = CosignatureNotice(
            checkpoint=checkpoint, cosignature=signed, witness_key=self.node_key
        )
        await self.publish("cosignature", notice.model_dump_json().encode(), _token(signed))
        log.info("witness.cosigned", log=json.loads(_b64(checkpoint.record))["log"])

    async def _dispute(self, judgement: Judgement, earlier: SignedRecord) -> None:
        assert judgement.reason is not None
        later, log_id, reason = judgement.checkpoint, judgement.log, judgement.reason
        await self.append(
            CheckpointConflict(log=log_id, reason=reason, earlier=earlier, later=later)
        )
        notice = ConflictNotice(
            log=log_id, reason=reason, earlier=earlier, later=later, witness=self.eventlog.log_id
        )
        await self.publish("conflict", notice.model_dump_json().encode(), _token(later))


def _b64(text: str) -> bytes:
    return b64d(text)


def _size(signed: SignedRecord) -> int:
    return int(json.loads(_b64(signed.record))["size"])


def _token(signed: SignedRecord) -> str:
    return record_token(signed)
