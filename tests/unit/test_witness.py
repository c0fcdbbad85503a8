"""A witness judges the checkpoints another site's log publishes: cosign, fork, rollback;
the auditor counts a witness notice only for what verifies."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from helpers.logs import NODE, SITE, Keys, open_new_log, request_events

from hub.audit import AuditReport, audit_events
from hub.audit.witnessed import Witnessed
from hub.canonical import b64d
from hub.errors import FederationError
from hub.events import NodeStarted
from hub.keys import KeyPair
from hub.logfile import iter_sqlite
from hub.proofs import ConsistencyProof
from hub.records import Checkpoint, Cosignature, Revocation, SignedRecord, sign_record
from hub.witness import ConflictNotice, CosignatureNotice, Witness, WitnessView, cosign
from node.bootstrap import key_record
from node.eventlog import EventLog
from node.proving import consistency_proof_of


def grow(log: EventLog, n: int) -> SignedRecord:
    """Append ``n`` requests and a checkpoint; the signed checkpoint."""
    for i in range(n):
        log.append_many(request_events(f"req{log.size:05d}{i:03d}"))
    log.checkpoint()
    head = log.head()
    assert head is not None
    return head


def size(cp: SignedRecord) -> int:
    return Checkpoint.model_validate_json(b64d(cp.record)).size


def root(cp: SignedRecord) -> str:
    return Checkpoint.model_validate_json(b64d(cp.record)).root


def first(log: EventLog, cp: SignedRecord) -> ConsistencyProof:
    return consistency_proof_of(log, cp, cp)


def test_checkpoints_that_extend_each_other_are_cosigned_once(tmp_path: Path) -> None:
    keys = Keys.generate()
    log = open_new_log(tmp_path / "a.db", keys)
    cp1 = grow(log, 2)
    cp2 = grow(log, 3)
    witness = Witness(keys.trusted)
    assert witness.judge(first(log, cp1)).action == "cosign"
    assert witness.judge(consistency_proof_of(log, cp1, cp2)).action == "cosign"
    # the same notices again (a restart replays the directory): nothing new
    assert witness.judge(consistency_proof_of(log, cp1, cp2)).action == "seen"
    assert witness.judge(first(log, cp1)).action == "seen"


def test_a_log_that_starts_over_after_a_witnessed_checkpoint_is_a_fork(tmp_path: Path) -> None:
    keys = Keys.generate()
    old = open_new_log(tmp_path / "old.db", keys)
    witness = Witness(keys.trusted)
    assert witness.judge(first(old, grow(old, 2))).action == "cosign"
    new = open_new_log(tmp_path / "new.db", keys)  # same node, same key, other history
    notice = first(new, grow(new, 4))
    judgement = witness.judge(notice)
    assert (judgement.action, judgement.reason) == ("conflict", "fork")
    assert witness.judge(notice).action == "seen", "disputed once, not again"


def test_two_checkpoints_of_one_size_with_different_roots_are_a_fork(tmp_path: Path) -> None:
    keys = Keys.generate()
    a = open_new_log(tmp_path / "a.db", keys)
    b = open_new_log(tmp_path / "b.db", keys)
    a1, b1 = grow(a, 2), grow(b, 2)
    witness = Witness(keys.trusted)
    witness.judge(first(a, a1))
    a2, b2 = grow(a, 1), grow(b, 1)
    assert witness.judge(consistency_proof_of(a, a1, a2)).action == "cosign"
    judgement = witness.judge(consistency_proof_of(b, b1, b2))
    assert (judgement.action, judgement.reason) == ("conflict", "fork")
    assert judgement.earlier == a2


def test_a_checkpoint_smaller_than_one_seen_is_a_rollback(tmp_path: Path) -> None:
    keys = Keys.generate()
    log = open_new_log(tmp_path / "a.db", keys)
    cp1 = grow(log, 1)
    witness = Witness(keys.trusted)
    witness.judge(first(log, cp1))
    cp2 = grow(log, 4)
    witness.judge(consistency_proof_of(log, cp1, cp2))
    assert witness.judge(first(log, cp1)).action == "seen", "the old one itself was seen"
    # a witness that saw only cp2 is shown cp1 again, as a log restored from a backup
    # taken at cp1 would show it: the log went back
    rolled = Witness(keys.trusted)
    rolled.remember(cp2)
    judgement = rolled.judge(consistency_proof_of(log, cp1, cp1))
    assert (judgement.action, judgement.reason) == ("conflict", "rollback")


def test_a_notice_whose_node_key_is_not_vouched_by_the_pinned_site_key_counts_for_nothing(
    tmp_path: Path,
) -> None:
    keys, other = Keys.generate(), Keys.generate()
    log = open_new_log(tmp_path / "a.db", keys)
    cp = grow(log, 1)
    with pytest.raises(FederationError):
        Witness({SITE: other.site.sign_public}).judge(first(log, cp))


def test_two_genuine_checkpoints_with_a_wrong_path_are_no_evidence_of_a_fork(
    tmp_path: Path,
) -> None:
    """Anyone in the federation may publish a notice: two checkpoints the node really
    signed, with a path altered, must neither be disputed (a false accusation) nor stop
    the witness from cosigning the log's next checkpoints."""
    keys = Keys.generate()
    log = open_new_log(tmp_path / "a.db", keys)
    cp1 = grow(log, 1)
    cp2 = grow(log, 3)
    witness = Witness(keys.trusted)
    assert witness.judge(first(log, cp1)).action == "cosign"
    honest = consistency_proof_of(log, cp1, cp2)
    assert honest.path
    forged = honest.model_copy(update={"path": ("00" * 32, *honest.path[1:])})
    with pytest.raises(FederationError, match="path does not verify"):
        witness.judge(forged)
    assert witness.judge(honest).action == "cosign"
    cp3 = grow(log, 1)
    assert witness.judge(consistency_proof_of(log, cp2, cp3)).action == "cosign"


# --- the auditor's side: a notice counts only for what verifies --------------------------

GEOMAR_SITE = KeyPair.generate("site:geomar")
GEOMAR_NODE = KeyPair.generate("node:geomar/n1")
GEOMAR_KEY = sign_record(key_record(GEOMAR_NODE, "geomar", "node"), GEOMAR_SITE.signing_key)


def started_log(path: Path, keys: Keys) -> EventLog:
    """A new log whose node started (an audit refuses requests of a stopped node)."""
    log = open_new_log(path, keys)
    log.append_many([NodeStarted(version="0", pid=1)])
    return log


def pinned(keys: Keys) -> dict[str, bytes]:
    return {**keys.trusted, "geomar": GEOMAR_SITE.sign_public}


def audited(log: EventLog, keys: Keys, receipts: Sequence[SignedRecord] = ()) -> AuditReport:
    return audit_events(iter_sqlite(log.path), trusted_sites=pinned(keys), receipts=receipts)


def checked(log: EventLog, keys: Keys, view: WitnessView) -> tuple[Witnessed, AuditReport]:
    """As the federation audit does it: audit, check the notices, audit with the receipts."""
    view.verify(pinned(keys))
    witnessed = Witnessed.check(view, audited(log, keys))
    report = audited(log, keys, witnessed.receipts)
    witnessed.settle(report)
    return witnessed, report


def geomar_cosigns(checkpoint: SignedRecord) -> CosignatureNotice:
    signed = cosign(checkpoint, "node:geomar/n1", GEOMAR_NODE.signing_key, GEOMAR_NODE.kid)
    return CosignatureNotice(checkpoint=checkpoint, cosignature=signed, witness_key=GEOMAR_KEY)


def conflict(reason: str, earlier: SignedRecord, later: SignedRecord) -> ConflictNotice:
    return ConflictNotice.model_validate(
        {"log": NODE, "reason": reason, "earlier": earlier, "later": later, "witness": "x:awi"}
    )


def test_a_fork_proven_by_two_checkpoints_of_one_size_counts_whoever_publishes_it(
    tmp_path: Path,
) -> None:
    keys = Keys.generate()
    a, b = started_log(tmp_path / "a.db", keys), started_log(tmp_path / "b.db", keys)
    cp_a, cp_b = grow(a, 2), grow(b, 2)  # one node, one key, two histories
    assert size(cp_a) == size(cp_b)
    witnessed, report = checked(b, keys, WitnessView(conflicts=[conflict("fork", cp_a, cp_b)]))
    [line] = witnessed.evidence
    assert "fork" in line and "both signed by the log's node keys" in line
    assert not report.ok and report.first is not None and "history rewritten" in report.first.line()


def test_a_rollback_notice_is_evidence_only_when_the_log_does_not_hold_both_checkpoints(
    tmp_path: Path,
) -> None:
    keys = Keys.generate()
    a = started_log(tmp_path / "a.db", keys)
    small, large = grow(a, 1), grow(a, 3)
    view = WitnessView(conflicts=[conflict("rollback", large, small)])
    witnessed, report = checked(a, keys, view)
    assert witnessed.evidence == [] and report.ok
    assert any("the log holds both checkpoints" in line for line in witnessed.ignored)
    # another history of the same node, restored from a backup before ``large``
    b = started_log(tmp_path / "b.db", keys)
    other = grow(b, 1)
    witnessed, report = checked(
        b, keys, WitnessView(conflicts=[conflict("rollback", large, other)])
    )
    assert len(witnessed.evidence) == 1 and not report.ok


def test_checkpoints_not_signed_by_a_node_key_of_the_log_are_ignored_with_the_reason(
    tmp_path: Path,
) -> None:
    """A forged signature claiming the node's key id, the site's other node signing for
    this log, the node's own key signing for another log: none is this log's statement."""
    keys = Keys.generate()
    log = started_log(tmp_path / "a.db", keys)
    real = grow(log, 2)
    cp = Checkpoint.model_validate_json(b64d(real.record))
    other_root = cp.model_copy(update={"root": "cd" * 32})
    forged = sign_record(other_root, keys.spare.signing_key).model_copy(
        update={"signer": keys.node.kid}
    )
    by_n2 = sign_record(
        other_root.model_copy(update={"kid": keys.other_node.kid}), keys.other_node.signing_key
    )
    elsewhere = sign_record(cp.model_copy(update={"log": f"{NODE}#2"}), keys.node.signing_key)
    view = WitnessView(
        cosignatures=[geomar_cosigns(forged), geomar_cosigns(by_n2)],
        conflicts=[conflict("fork", real, forged), conflict("fork", real, elsewhere)],
    )
    witnessed, report = checked(log, keys, view)
    assert report.ok, report.first
    assert witnessed.evidence == [] and witnessed.receipts == [real]
    assert witnessed.vouched == {}, "geomar's real cosignature of a forged checkpoint"
    ignored = "\n".join(witnessed.ignored)
    assert f"claiming key {keys.node.kid}: checkpoint signature does not verify" in ignored
    assert f"claiming key {keys.other_node.kid}: checkpoint was signed by key" in ignored
    assert "checkpoint is for another log" in ignored


def test_a_cosignature_counts_as_a_voucher_only_when_it_verifies_up_to_its_pinned_site(
    tmp_path: Path,
) -> None:
    keys = Keys.generate()
    log = started_log(tmp_path / "a.db", keys)
    real = grow(log, 2)
    honest = geomar_cosigns(real)
    mallory = KeyPair.generate("node:geomar/n1")
    claims = honest.model_copy(
        update={
            "cosignature": sign_record(
                Cosignature.model_validate_json(b64d(honest.cosignature.record)),
                mallory.signing_key,
            ).model_copy(update={"signer": GEOMAR_NODE.kid})
        }
    )
    witnessed, report = checked(log, keys, WitnessView(cosignatures=[claims]))
    assert report.ok and witnessed.vouched == {} and witnessed.receipts == [real]
    [line] = witnessed.ignored
    assert line.startswith(f"ignored: cosignature claiming key {GEOMAR_NODE.kid} does not verify")
    witnessed, _ = checked(log, keys, WitnessView(cosignatures=[claims, honest]))
    assert witnessed.vouchers() == 1
    assert witnessed.checkpoints() == [
        {"size": size(real), "root": root(real), "sites": ["geomar"]}
    ]


def test_without_pinned_site_keys_no_cosignature_counts_and_the_verdict_says_so(
    tmp_path: Path,
) -> None:
    keys = Keys.generate()
    log = started_log(tmp_path / "a.db", keys)
    real = grow(log, 2)
    view = WitnessView(cosignatures=[geomar_cosigns(real)])  # verify() needs pinned keys
    witnessed = Witnessed.check(view, audited(log, keys))
    assert witnessed.vouched == {} and witnessed.receipts == [real]
    assert "  cosignatures not checked: no site key is pinned" in witnessed.lines()


def test_a_cosignature_by_a_witness_key_its_site_revoked_before_counts_for_nothing(
    tmp_path: Path,
) -> None:
    """The revocation counts only when the key's own site signed it for that node: another
    site naming geomar's key under an identity of its own revokes nothing."""
    keys = Keys.generate()
    log = started_log(tmp_path / "a.db", keys)
    real = grow(log, 2)
    past = "2020-01-01T00:00:00.000000Z"

    def revocation(identity: str, site: KeyPair) -> SignedRecord:
        rev = Revocation(identity=identity, kid=GEOMAR_NODE.kid, time=past, reason="lost")
        return sign_record(rev, site.signing_key)

    by_hereon = revocation("node:hereon/n1", keys.site)
    view = WitnessView(cosignatures=[geomar_cosigns(real)], revocations=[by_hereon])
    assert checked(log, keys, view)[0].vouchers() == 1
    by_geomar = revocation(GEOMAR_NODE.identity, GEOMAR_SITE)
    view = WitnessView(cosignatures=[geomar_cosigns(real)], revocations=[by_geomar])
    witnessed, report = checked(log, keys, view)
    assert report.ok and witnessed.vouched == {}
    [line] = witnessed.ignored
    assert f"key {GEOMAR_NODE.kid} was revoked at {past}" in line
