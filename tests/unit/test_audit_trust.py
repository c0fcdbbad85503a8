"""Hostile logs: each trust gap an attacker might use is refused, with the first bad event.

Every log here is written by the real append path (:class:`node.eventlog.EventLog`) with
real keys; the attacker is someone holding some valid key (a node key, another site's key)
but not the one the rule requires.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.logs import NODE, SITE, Keys, audit_file, open_new_log, request_events
from pydantic import BaseModel

from hub.audit import AuditReport, audit_events
from hub.canonical import b64d, b64e
from hub.clock import now
from hub.events import (
    CheckpointData,
    KeyRegistered,
    KeyRevoked,
    KeyRotated,
    LogCreated,
    NodeStarted,
    NodeStopped,
)
from hub.keys import KeyPair
from hub.logfile import iter_log
from hub.records import Checkpoint, KeyRecord, Revocation, SignedRecord, sign_record
from node.bootstrap import key_record
from node.eventlog import EventLog

STARTED = NodeStarted(version="0.2.0", pid=1)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys.generate()


@pytest.fixture(scope="module")
def geomar() -> KeyPair:
    """Another site's key, pinned by the auditor too."""
    return KeyPair.generate("site:geomar")


def _pinned(keys: Keys, geomar: KeyPair) -> dict[str, bytes]:
    return {SITE: keys.site.sign_public, "geomar": geomar.sign_public}


def _first(report: AuditReport) -> tuple[int | None, str, str]:
    first = report.first
    assert first is not None, "the audit passed"
    return first.seq, first.check, first.message


def _vouch(site: KeyPair, pair: KeyPair, site_name: str, role: str = "node") -> SignedRecord:
    return sign_record(key_record(pair, site_name, role), site.signing_key)


def _log(path: Path, keys: Keys, *batches: list[BaseModel]) -> Path:
    with open_new_log(path, keys) as log:
        for batch in batches:
            log.append_many(batch)
    return path


# --- who the log is -----------------------------------------------------------------------


def test_a_node_of_one_site_vouched_for_by_another_pinned_site_is_refused(
    tmp_path: Path, keys: Keys, geomar: KeyPair
) -> None:
    """node:hereon/n1 names site geomar, whose pinned key vouches for it: only hereon may."""
    db = tmp_path / "events.db"
    with EventLog(db, keys.node) as log:
        log.initialize("geomar", geomar.sign_public, _vouch(geomar, keys.node, "geomar"))
        log.append(STARTED)
    seq, check, message = _first(audit_file(db, _pinned(keys, geomar)))
    assert (seq, check) == (1, "trust")
    assert "node:hereon/n1 is not a node of site geomar" in message


def test_a_genesis_naming_its_own_site_with_a_node_key_vouched_for_by_another_is_refused(
    tmp_path: Path, keys: Keys, geomar: KeyPair
) -> None:
    """Both sites pinned; the genesis names hereon and hereon's key, but the node key
    record is geomar's (for node:hereon/n1 of site hereon): only hereon's key vouches."""
    db = tmp_path / "events.db"
    with EventLog(db, keys.node) as log:
        log.initialize(SITE, keys.site.sign_public, _vouch(geomar, keys.node, SITE))
        log.append(STARTED)
    seq, check, message = _first(audit_file(db, _pinned(keys, geomar)))
    assert (seq, check) == (1, "trust")
    assert "node key record is not signed by the site" in message


def test_a_log_whose_id_is_not_the_node_of_its_genesis_is_refused(
    tmp_path: Path, keys: Keys
) -> None:
    db = tmp_path / "events.db"
    with EventLog(db, keys.node, log_id="node:hereon/n7") as log:
        log.initialize(SITE, keys.site.sign_public, keys.vouch(keys.node))
        log.append(STARTED)
    report = audit_file(db, keys.trusted)
    seq, check, message = _first(report)
    assert (seq, check) == (1, "trust")
    assert "log id is not the node identity" in message
    assert report.findings[0].found == "node:hereon/n7"


def test_the_log_of_a_second_process_of_the_node_is_trusted(tmp_path: Path, keys: Keys) -> None:
    db = tmp_path / "events.db"
    with EventLog(db, keys.node, log_id=f"{NODE}#2") as log:
        log.initialize(SITE, keys.site.sign_public, keys.vouch(keys.node))
        log.append(STARTED)
    report = audit_file(db, keys.trusted)
    assert report.ok, [f.line() for f in report.findings]


def test_a_genesis_record_for_a_user_key_is_refused(tmp_path: Path, keys: Keys) -> None:
    db = tmp_path / "events.db"
    with EventLog(db, keys.node) as log:
        log.initialize(SITE, keys.site.sign_public, keys.vouch(keys.node, role="user"))
    seq, check, message = _first(audit_file(db, keys.trusted))
    assert (seq, check) == (1, "trust")
    assert "for a user, not a node" in message


def test_a_second_genesis_is_refused(tmp_path: Path, keys: Keys) -> None:
    genesis = LogCreated(
        node=NODE, site=SITE, site_key=b64e(keys.site.sign_public), node_key=keys.vouch(keys.node)
    )
    db = _log(tmp_path / "events.db", keys, [STARTED], [genesis])
    seq, check, message = _first(audit_file(db, keys.trusted))
    assert (seq, check) == (3, "lifecycle")
    assert "only valid as the first event" in message


# --- what the log's keys sign ---------------------------------------------------------------


def _checkpoint_by(pair: KeyPair, log: EventLog) -> SignedRecord:
    """A checkpoint over the whole log so far, with the right root, signed by ``pair``."""
    from hub.chain import merkle_root

    hashes = [ev.hash for ev in log.events()]
    cp = Checkpoint(
        log=log.log_id, size=len(hashes), root=merkle_root(hashes).hex(), time=now(), kid=pair.kid
    )
    return sign_record(cp, pair.signing_key)


def test_a_receipt_signed_by_a_registered_key_that_is_no_node_key_of_the_log_is_refused(
    tmp_path: Path, keys: Keys
) -> None:
    """The other node's key is in the log (registered, vouched for by the site) and the
    receipt it signed has the right root: it is still no receipt of this log."""
    db = tmp_path / "events.db"
    with open_new_log(db, keys) as log:
        log.append_many([STARTED, KeyRegistered(record=keys.vouch(keys.other_node))])
        forged = _checkpoint_by(keys.other_node, log)
        log.append(NodeStopped())
    report = audit_events(iter_log(db), trusted_sites=keys.trusted, receipts=[forged], threads=1)
    _, check, message = _first(report)
    assert check == "receipt"
    assert "no node key of this log" in message


def test_every_receipt_given_is_checked_not_only_the_last(tmp_path: Path, keys: Keys) -> None:
    db = tmp_path / "events.db"
    with open_new_log(db, keys) as log:
        log.append(STARTED)
        forged = _checkpoint_by(keys.other_node, log)
        good = _checkpoint_by(keys.node, log)
        log.append(NodeStopped())
    both = audit_events(iter_log(db), trusted_sites=keys.trusted, receipts=[forged, good])
    assert [f.check for f in both.findings] == ["receipt"]
    assert [r["size"] for r in both.receipts] == [2]
    clean = audit_events(iter_log(db), trusted_sites=keys.trusted, receipts=[good, good])
    assert clean.ok and len(clean.receipts) == 2


def test_a_checkpoint_event_signed_by_another_node_key_is_refused(
    tmp_path: Path, keys: Keys
) -> None:
    db = tmp_path / "events.db"
    with open_new_log(db, keys) as log:
        log.append_many([STARTED, KeyRegistered(record=keys.vouch(keys.other_node))])
        forged = _checkpoint_by(keys.other_node, log)
        # the writer stores a checkpoint event's record in its checkpoints table too
        log._pending_checkpoint = (Checkpoint.model_validate_json(b64d(forged.record)), forged)
        log.append(CheckpointData(checkpoint=forged))
        log.append(NodeStopped())
    seq, check, message = _first(audit_file(db, keys.trusted))
    assert (seq, check) == (4, "checkpoint")
    assert "does not verify" in message


def _rotation(keys: Keys, record: SignedRecord, old: KeyPair | None = None) -> KeyRotated:
    return KeyRotated(identity=NODE, old_kid=(old or keys.node).kid, record=record)


@pytest.mark.parametrize(
    "case",
    [
        "to a user key",
        "to another node's key",
        "vouched for by another pinned site",
        "replacing another key",
    ],
)
def test_a_rotation_to_anything_but_a_node_key_of_the_same_node_and_site_is_refused(
    tmp_path: Path, keys: Keys, geomar: KeyPair, case: str
) -> None:
    spare = keys.spare
    if case == "to a user key":
        record = keys.vouch(spare, role="user")
    elif case == "to another node's key":
        record = keys.vouch(keys.other_node)
    elif case == "vouched for by another pinned site":
        record = _vouch(geomar, spare, SITE)
    else:
        rec = key_record(spare, SITE, "node").model_copy(update={"replaces": keys.other_node.kid})
        record = sign_record(KeyRecord.model_validate(rec.model_dump()), keys.site.signing_key)
    db = _log(tmp_path / "events.db", keys, [STARTED], [_rotation(keys, record)], [NodeStopped()])
    seq, check, _ = _first(audit_file(db, _pinned(keys, geomar)))
    assert (seq, check) == (3, "trust")


def test_a_proper_rotation_passes(tmp_path: Path, keys: Keys) -> None:
    db = tmp_path / "events.db"
    with open_new_log(db, Keys(keys.site, keys.node, keys.spare, keys.other_node)) as log:
        log.append(STARTED)
        log.rotate_key(keys.spare, keys.vouch(keys.spare))
        log.append(NodeStopped())
    assert audit_file(db, keys.trusted).ok


def test_a_key_record_of_one_site_vouched_for_by_another_is_refused(
    tmp_path: Path, keys: Keys, geomar: KeyPair
) -> None:
    """geomar (pinned) vouches for a hereon user: only hereon may."""
    stranger = KeyPair.generate("mallory@hereon")
    record = _vouch(geomar, stranger, "geomar", role="user")
    db = _log(tmp_path / "events.db", keys, [STARTED, KeyRegistered(record=record)])
    seq, check, message = _first(audit_file(db, _pinned(keys, geomar)))
    assert (seq, check) == (3, "trust")
    assert "site geomar vouches for mallory@hereon" in message


def test_a_key_record_of_an_unpinned_site_is_recorded_as_foreign(
    tmp_path: Path, keys: Keys, geomar: KeyPair
) -> None:
    klaus = KeyPair.generate("klaus@geomar")
    record = _vouch(geomar, klaus, "geomar", role="user")
    db = _log(tmp_path / "events.db", keys, [STARTED, KeyRegistered(record=record)])
    report = audit_file(db, keys.trusted)
    assert report.ok
    assert report.keys[klaus.kid]["status"] == "foreign"


def test_a_node_key_revoked_by_another_site_is_refused(
    tmp_path: Path, keys: Keys, geomar: KeyPair
) -> None:
    rev = Revocation(identity=NODE, kid=keys.node.kid, time=now(), reason="hostile")
    signed = sign_record(rev, geomar.signing_key)
    db = _log(tmp_path / "events.db", keys, [STARTED], [KeyRevoked(revocation=signed)])
    seq, check, message = _first(audit_file(db, _pinned(keys, geomar)))
    assert (seq, check) == (3, "trust")
    assert "site geomar cannot revoke a key of node:hereon/n1" in message


def test_a_node_key_revoking_itself_signs_its_revocation_and_nothing_after(
    tmp_path: Path, keys: Keys
) -> None:
    """The revocation event names (and is signed by) the key it revokes; the next event
    naming that key is the first bad one."""
    db = tmp_path / "events.db"
    with open_new_log(db, keys) as log:
        log.append(STARTED)
        log.append(KeyRevoked(revocation=keys.revoke(keys.node)))
        log.append_many(request_events("req00001"))
    seq, check, message = _first(audit_file(db, keys.trusted))
    assert (seq, check) == (4, "key")
    assert "revoked" in message


# --- directory records never change the log's node keys ---------------------------------------


def _alias(site: KeyPair, site_name: str, pair: KeyPair, identity: str) -> SignedRecord:
    """``site``'s record binding ``pair``'s (public) key to ``identity``, one of its users."""
    rec = key_record(pair, site_name, "user").model_copy(update={"identity": identity})
    return sign_record(KeyRecord.model_validate(rec.model_dump()), site.signing_key)


def test_another_pinned_site_claiming_the_node_key_for_its_user_does_not_disown_a_receipt(
    tmp_path: Path, keys: Keys, geomar: KeyPair
) -> None:
    """The node key is public: geomar may vouch that it is mallory@geomar's. The log's node
    key stays the node's, and the receipt it signed still holds."""
    db = tmp_path / "events.db"
    with open_new_log(db, keys) as log:
        log.append(STARTED)
        receipt = _checkpoint_by(keys.node, log)
        alias = _alias(geomar, "geomar", keys.node, "mallory@geomar")
        log.append(KeyRegistered(record=alias))
        log.append(NodeStopped())
    report = audit_events(iter_log(db), trusted_sites=_pinned(keys, geomar), receipts=[receipt])
    assert report.ok, [f.line() for f in report.findings]
    assert report.keys[keys.node.kid]["identity"] == NODE
    assert [r["size"] for r in report.receipts] == [2]


def test_a_node_key_revoked_under_another_identity_is_not_silently_kept_valid(
    tmp_path: Path, keys: Keys
) -> None:
    """The site registers the node key as a user's too, then revokes that user's key: the
    node key goes on signing. The revocation names another identity than the node key's
    and is refused where it stands, instead of revoking a copy no event names."""
    db = tmp_path / "events.db"
    with open_new_log(db, keys) as log:
        log.append(STARTED)
        log.append(KeyRegistered(record=_alias(keys.site, SITE, keys.node, "mallory@hereon")))
        rev = Revocation(identity="mallory@hereon", kid=keys.node.kid, time=now(), reason="lost")
        log.append(KeyRevoked(revocation=sign_record(rev, keys.site.signing_key)))
        log.append_many(request_events("req00001"))
    seq, check, message = _first(audit_file(db, keys.trusted))
    assert (seq, check) == (4, "trust")
    assert "names mallory@hereon, the key is node:hereon/n1's" in message


def test_a_rotation_back_to_a_revoked_node_key_is_refused(tmp_path: Path, keys: Keys) -> None:
    """n1's first key is rotated away and revoked; a later rotation back to it (with the
    site's old record for it) would make it sign again after its revocation."""
    db = tmp_path / "events.db"
    with open_new_log(db, keys) as log:
        log.append(STARTED)
        log.rotate_key(keys.spare, keys.vouch(keys.spare))
        log.append(KeyRevoked(revocation=keys.revoke(keys.node)))
        log.rotate_key(keys.node, keys.vouch(keys.node))
        log.append_many(request_events("req00002"))
    seq, check, message = _first(audit_file(db, keys.trusted))
    assert (seq, check) == (5, "trust")
    assert f"the new key {keys.node.kid} was revoked" in message


def test_a_rotation_to_a_key_revoked_before_the_log_ever_saw_it_is_refused(
    tmp_path: Path, keys: Keys
) -> None:
    db = tmp_path / "events.db"
    with open_new_log(db, keys) as log:
        log.append(STARTED)
        log.append(KeyRevoked(revocation=keys.revoke(keys.spare, reason="stolen")))
        log.rotate_key(keys.spare, keys.vouch(keys.spare))
        log.append(NodeStopped())
    seq, check, message = _first(audit_file(db, keys.trusted))
    assert (seq, check) == (4, "trust")
    assert f"the new key {keys.spare.kid} was revoked" in message
