"""Witnessed logs: nodes countersign each other's checkpoints; forks and rollbacks show.

Every node publishes each checkpoint of its log to the federation directory as a
:class:`~hub.proofs.ConsistencyProof` from its previous checkpoint (the first one from
itself), kind ``checkpoint``. A node of another site, the **witness**
(:class:`Witness`), checks it up to the log's pinned site key and against the last
checkpoint of that log it saw: when the new one extends it, the witness signs a
:class:`~hub.records.Cosignature` and publishes it (kind ``cosignature``); when it does not
-- two checkpoints of one size with different roots, a checkpoint that extends one of the
size of the last seen but with another root, a checkpoint older than one already seen (a
rollback) -- it publishes the two signed checkpoints as evidence (kind ``conflict``). Both
are logged in the witness's own log. A notice whose path does not lead from its old root to
its new one counts for nothing: the path is not signed, so it is no evidence against the
node (anyone may publish two genuine checkpoints with a wrong path).

The auditor reads the notices (:class:`WitnessView`, from the hub's ``FH_DIRECTORY``) and
takes none at its word: any site may publish one. A cosignature counts once it verifies up
to its witness's pinned site key; the checkpoints the notices carry are checked against the
audit of the log they name (:mod:`hub.audit.witnessed`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

import nacl.signing
import nats.errors
from nats.js import JetStreamContext, api
from pydantic import BaseModel, ConfigDict
from pydantic import ValidationError as PydanticValidationError

from hub.canonical import b64d
from hub.clock import now
from hub.crypto import key_id
from hub.errors import CheckpointError, FederationError, SignatureError, TransportError
from hub.proofs import ConsistencyProof, verify_consistency_proof
from hub.records import (
    Checkpoint,
    Cosignature,
    KeyRecord,
    Revocation,
    SignedRecord,
    open_record,
    sign_record,
)
from hub.subjects import DIRECTORY_STREAM, SUBJECT_ROOT, is_log_of

__all__ = [
    "WITNESS_KINDS",
    "ConflictNotice",
    "CosignatureNotice",
    "Judgement",
    "Witness",
    "WitnessView",
    "claimed_log",
    "read_witness_view",
]

#: Directory record kinds of witnesses (published next to keys, grants and groups).
WITNESS_KINDS = ("checkpoint", "cosignature", "conflict")


class CosignatureNotice(BaseModel):
    """A witness vouches for ``checkpoint``: its cosignature and its own node key record."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    checkpoint: SignedRecord
    cosignature: SignedRecord
    witness_key: SignedRecord


class ConflictNotice(BaseModel):
    """Two checkpoints of one log that no append-only log signs both of."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    log: str
    reason: Literal["fork", "rollback"]
    earlier: SignedRecord
    later: SignedRecord
    witness: str


@dataclass(frozen=True, slots=True)
class Judgement:
    """What a witness makes of a checkpoint notice: cosign it, dispute it, or nothing new."""

    action: Literal["cosign", "conflict", "seen"]
    log: str
    checkpoint: SignedRecord
    reason: Literal["fork", "rollback"] | None = None
    earlier: SignedRecord | None = None
    detail: str = ""


def _cp(signed: SignedRecord) -> Checkpoint:
    return Checkpoint.model_validate_json(b64d(signed.record))


@dataclass
class Witness:
    """The checkpoints of other logs one witness has seen (the last one of each log)."""

    trusted_sites: dict[str, bytes]
    last: dict[str, SignedRecord] = field(default_factory=dict)
    seen: dict[str, set[tuple[int, str]]] = field(default_factory=lambda: defaultdict(set))
    disputed: dict[str, set[tuple[int, str]]] = field(default_factory=lambda: defaultdict(set))

    def remember(self, checkpoint: SignedRecord) -> None:
        """Take a checkpoint this witness vouched for before (from its own log)."""
        cp = _cp(checkpoint)
        self.seen[cp.log].add((cp.size, cp.root))
        held = self.last.get(cp.log)
        if held is None or _cp(held).size < cp.size:
            self.last[cp.log] = checkpoint

    def remember_dispute(self, checkpoint: SignedRecord) -> None:
        """Take a checkpoint this witness disputed before (it is not judged again)."""
        cp = _cp(checkpoint)
        self.disputed[cp.log].add((cp.size, cp.root))

    def judge(self, proof: ConsistencyProof) -> Judgement:
        """Check a published checkpoint (see :meth:`_judge`). A history disputed once (the
        checkpoint, or the one it extends, was disputed) is not disputed again: a restart
        replays the directory, and one piece of evidence is enough."""
        held = self.disputed[proof.log]
        if any((cp.size, cp.root) in held for cp in (_cp(proof.new), _cp(proof.old))):
            return Judgement("seen", proof.log, proof.new)  # a history already disputed
        judgement = self._judge(proof)
        if judgement.action == "conflict":
            self.remember_dispute(proof.new)
            self.remember_dispute(judgement.checkpoint)
        return judgement

    def _judge(self, proof: ConsistencyProof) -> Judgement:
        """Check a published checkpoint (and its path from the log's previous one).

        Raises the error of the check that failed when the notice does not count (its keys
        are not vouched for by the log's pinned site key, its signatures do not verify).
        """
        verdict = verify_consistency_proof(proof, self.trusted_sites)
        log, new = proof.log, proof.new
        new_cp = _cp(new)
        if verdict.fork is not None:
            if verdict.old_size != verdict.new_size:
                # the path is not signed: anyone can publish two genuine checkpoints with a
                # wrong one. Only what the node signed is evidence (checked below).
                raise CheckpointError(f"the notice's path does not verify: {verdict.fork.reason}")
            return Judgement("conflict", log, new, "fork", proof.old, verdict.fork.reason)
        held = self.last.get(log)
        if (new_cp.size, new_cp.root) in self.seen[log]:
            return Judgement("seen", log, new)
        if held is None:
            return self._accept(log, new)
        last = _cp(held)
        if new_cp.size == last.size:
            return Judgement("conflict", log, new, "fork", held, "same size, another root")
        if new_cp.size < last.size:
            return Judgement("conflict", log, new, "rollback", held, "smaller than one seen")
        old = _cp(proof.old)
        if proof.old == proof.new:  # the log's first checkpoint, though one was seen before
            return Judgement("conflict", log, new, "fork", held, "the log started over")
        if old.size < last.size:
            return Judgement(
                "conflict", log, proof.old, "rollback", held, "extends one older than seen"
            )
        if old.size == last.size and old.root != last.root:
            return Judgement("conflict", log, proof.old, "fork", held, "same size, another root")
        if old.size > last.size:
            return Judgement("seen", log, new, detail="a gap: earlier checkpoints not seen")
        return self._accept(log, new)

    def _accept(self, log: str, new: SignedRecord) -> Judgement:
        self.remember(new)
        return Judgement("cosign", log, new)


def cosign(
    checkpoint: SignedRecord, witness: str, signing_key: nacl.signing.SigningKey, kid: str
) -> SignedRecord:
    """The witness's signed :class:`~hub.records.Cosignature` of ``checkpoint``."""
    cp = _cp(checkpoint)
    record = Cosignature(
        log=cp.log,
        size=cp.size,
        root=cp.root,
        checkpoint_time=cp.time,
        witness=witness,
        time=now(),
        kid=kid,
    )
    return sign_record(record, signing_key)


def site_of(identity: str) -> str:
    """``S`` of ``node:S/name`` (``name@S``, ``site:S``)."""
    if "@" in identity:
        return identity.rsplit("@", 1)[1]
    return identity.split(":", 1)[-1].split("/", 1)[0].split("#", 1)[0]


@dataclass
class WitnessView:
    """What the witnesses published, as the hub keeps it: cosignatures and conflict notices.

    Nothing here is taken at its word (any site may publish to the directory):
    :meth:`verify` checks each cosignature up to its witness's pinned site key, and
    :mod:`hub.audit.witnessed` checks the checkpoints the notices carry against the audit
    of the log they name."""

    cosignatures: list[CosignatureNotice] = field(default_factory=list)
    conflicts: list[ConflictNotice] = field(default_factory=list)
    #: the key revocations of the directory (a revoked witness key cosigns nothing after)
    revocations: list[SignedRecord] = field(default_factory=list)
    #: the cosignatures that verified (after :meth:`verify`): notice, witness site, record
    verified: list[tuple[CosignatureNotice, str, Cosignature]] = field(default_factory=list)
    #: log the notice names -> why each of its cosignatures that did not verify was ignored
    rejected: dict[str, list[str]] = field(default_factory=dict)
    #: whether :meth:`verify` ran (it needs pinned site keys)
    checked: bool = False
    #: directory records that are no witness record at all, or name no log
    problems: list[str] = field(default_factory=list)

    def verify(self, trusted: dict[str, bytes]) -> None:
        """Keep the cosignatures that check up to a pinned site key; say why of the others."""
        self.checked = True
        revoked = _revoked(self.revocations, trusted)
        for notice in self.cosignatures:
            try:
                site, cosig = self._check(notice, trusted, revoked)
            except (FederationError, PydanticValidationError) as exc:
                why = str(exc).splitlines()[0]
                line = (
                    f"ignored: cosignature claiming key {notice.cosignature.signer} "
                    f"does not verify: {why}"
                )
                log = claimed_log(notice.checkpoint)
                if log == "?":  # about no log: said once, for the whole view
                    self.problems.append(line)
                else:
                    self.rejected.setdefault(log, []).append(line)
                continue
            if site == site_of(cosig.log):
                line = f"ignored: cosignature by {cosig.witness}: a site does not witness itself"
                self.rejected.setdefault(cosig.log, []).append(line)
                continue
            self.verified.append((notice, site, cosig))

    @staticmethod
    def _check(
        notice: CosignatureNotice, trusted: dict[str, bytes], revoked: dict[tuple[str, str], str]
    ) -> tuple[str, Cosignature]:
        witness = KeyRecord.model_validate_json(b64d(notice.witness_key.record))
        site_key = trusted.get(witness.site)
        if site_key is None:
            raise SignatureError(f"witness site {witness.site} is not pinned")
        record = open_record(notice.witness_key, KeyRecord, site_key)
        if record.role != "node" or site_of(record.identity) != record.site:
            raise SignatureError(f"{record.identity} is no node of site {record.site}")
        if key_id(record.sign_key_bytes()) != record.kid:
            raise SignatureError(f"key record {record.kid} names a key with another id")
        cosig = open_record(notice.cosignature, Cosignature, record.sign_key_bytes())
        if cosig.kid != record.kid:
            raise SignatureError(f"the cosignature names key {cosig.kid}, signed by {record.kid}")
        revoked_at = revoked.get((record.identity, record.kid))
        if revoked_at is not None and cosig.time > revoked_at:
            raise SignatureError(
                f"key {record.kid} was revoked at {revoked_at}, before the cosignature's "
                f"time {cosig.time}"
            )
        cp = _cp(notice.checkpoint)
        if (cp.log, cp.size, cp.root) != (cosig.log, cosig.size, cosig.root):
            raise SignatureError("the cosignature is of another checkpoint")
        if not is_log_of(cosig.witness, record.identity):
            raise SignatureError(f"cosignature of {cosig.witness} signed by {record.identity}")
        return record.site, cosig

    def vouchers(self, log: str | None) -> int:
        """The most independent sites whose verified cosignatures name one checkpoint of
        ``log`` (whether the log's node signed that checkpoint is the audit's to check)."""
        sites: dict[tuple[int, str], set[str]] = defaultdict(set)
        for _, site, cosig in self.verified:
            if cosig.log == log:
                sites[(cosig.size, cosig.root)].add(site)
        return max((len(s) for s in sites.values()), default=0)


def _revoked(
    revocations: list[SignedRecord], trusted: dict[str, bytes]
) -> dict[tuple[str, str], str]:
    """(identity, kid) -> the earliest time a revocation verified with the pinned key of
    that identity's own site declares the key invalid (others revoke nothing here)."""
    out: dict[tuple[str, str], str] = {}
    for signed in revocations:
        try:
            claimed = Revocation.model_validate_json(b64d(signed.record))
            site_key = trusted.get(site_of(claimed.identity))
            if site_key is None:
                continue
            rev = open_record(signed, Revocation, site_key)
        except (FederationError, PydanticValidationError):
            continue
        held = out.get((rev.identity, rev.kid))
        if held is None or rev.time < held:
            out[(rev.identity, rev.kid)] = rev.time
    return out


def claimed_log(signed: SignedRecord) -> str:
    """The log a signed checkpoint names, unverified ("?" when it cannot be read)."""
    try:
        return _cp(signed).log
    except (FederationError, PydanticValidationError):
        return "?"


async def read_witness_view(js: JetStreamContext, *, timeout: float = 10.0) -> WitnessView:
    """Read the witnesses' records from a ``FH_DIRECTORY`` (the hub's, or a site's copy)."""
    view = WitnessView()
    try:
        last = (await js.stream_info(DIRECTORY_STREAM)).state.last_seq
    except nats.errors.Error:
        return view  # no directory: nothing was witnessed
    if last == 0:
        return view
    sub = await js.subscribe(
        f"{SUBJECT_ROOT}.dir.>",
        stream=DIRECTORY_STREAM,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.ALL,
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except nats.errors.TimeoutError:
                raise TransportError(
                    f"{DIRECTORY_STREAM} stopped delivering before its end"
                ) from None
            kind = msg.subject.split(".")[3] if msg.subject.count(".") >= 4 else ""
            try:
                if kind == "cosignature":
                    view.cosignatures.append(CosignatureNotice.model_validate_json(msg.data))
                elif kind == "conflict":
                    view.conflicts.append(ConflictNotice.model_validate_json(msg.data))
                elif kind == "revocation":
                    view.revocations.append(SignedRecord.model_validate_json(msg.data))
            except PydanticValidationError:
                view.problems.append(f"{msg.subject}: not a witness record")
            if msg.metadata.sequence.stream >= last:
                break
    finally:
        await sub.unsubscribe()
    return view
