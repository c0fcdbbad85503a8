"""A witness judges the checkpoints another site's log publishes: cosign, fork, rollback."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.logs import SITE, Keys, open_new_log, request_events

from hub.errors import FederationError
from hub.proofs import ConsistencyProof
from hub.records import SignedRecord
from hub.witness import Witness
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
