"""Logs written by the real append path (version 2: one signature per commit) audit clean:
a fresh log, a reopened one, one whose node key was rotated, a large batch, and a version 1
log that a node of this release went on appending to.

These need an auditor that reads version 2 (signed commits, empty signatures in the export).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers.logs import Keys, audit_file, build_log, open_new_log, request_events

from hub.audit import audit_events
from hub.canonical import b64d, b64e, canonical_bytes
from hub.crypto import sign
from hub.events import CheckpointData, NodeStarted, NodeStopped
from hub.keys import KeyPair, load_public_file
from hub.logfile import iter_log
from hub.records import DOMAIN_CHECKPOINT, Checkpoint, SignedRecord
from node.eventlog import EventLog, StoredEvent

STARTED = NodeStarted(version="0.2.0", pid=1)
V1 = Path(__file__).resolve().parents[1] / "fixtures" / "logs" / "v1"


def _reopened(path: Path, keys: Keys) -> None:
    with open_new_log(path, keys) as log:
        log.append(STARTED)
    with EventLog(path, keys.node) as log:
        log.append(NodeStopped())


def _rotated(path: Path, keys: Keys) -> None:
    with open_new_log(path, keys) as log:
        log.append_many([STARTED, *request_events("req00001")])
        log.rotate_key(keys.spare, keys.vouch(keys.spare))
        log.append_many([*request_events("req00002"), NodeStopped()])


def _large_batch(path: Path, keys: Keys) -> None:
    with open_new_log(path, keys, checkpoint_every=100) as log:
        log.append(STARTED)
        log.append_many([e for i in range(200) for e in request_events(f"req{i:05d}")])
        log.append(NodeStopped())


@pytest.mark.parametrize("write", [_reopened, _rotated, _large_batch])
@pytest.mark.parametrize("form", ["events.db", "events.jsonl"])
def test_a_version_2_log_audits_clean_in_both_forms(
    tmp_path: Path, write: object, form: str
) -> None:
    keys = Keys.generate()
    db = tmp_path / "events.db"
    write(db, keys)  # type: ignore[operator]
    with EventLog.open_readonly(db) as ro:
        ro.export(tmp_path / "events.jsonl")
    report = audit_file(tmp_path / form, keys.trusted)
    assert report.ok, [f.line() for f in report.findings]


def test_the_realistic_test_log_audits_clean_with_its_receipts(tmp_path: Path) -> None:
    built = build_log(tmp_path)
    for receipt in built.receipts:
        report = audit_file(built.db, built.keys.trusted, receipt)
        assert report.ok, [f.line() for f in report.findings]


def test_a_version_1_log_continued_in_version_2_audits_clean(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    shutil.copyfile(V1 / "events.db", path)
    node_key = KeyPair.from_file_json(json.loads((V1 / "node-key.json").read_text()))
    with EventLog(path, node_key) as log:
        log.append_many([STARTED, *request_events("req00001"), NodeStopped()])
        log.checkpoint()
    site = load_public_file(V1 / "site-hereon.pub")
    report = audit_events(iter_log(path), trusted_sites={"hereon": site.sign_key}, threads=1)
    assert report.ok, [f.line() for f in report.findings]


def test_a_checkpoint_names_the_last_node_started_before_it_and_a_false_one_is_found(
    tmp_path: Path,
) -> None:
    keys = Keys.generate()
    db = tmp_path / "events.db"
    with open_new_log(db, keys) as log:
        none_yet = log.checkpoint()
        first = log.append(STARTED)
        log.append_many([*request_events("req00001"), NodeStopped()])
        second = log.append(STARTED)
        named = log.checkpoint()
    with EventLog(db, keys.node) as log:  # a reopened log knows its last node.started
        log.append_many(request_events("req00002"))
        reopened = log.checkpoint()
        log._started = first.seq  # a node that names an older process than the last
        false = log.checkpoint()
    started = [_checkpoint_started(e) for e in (none_yet, named, reopened, false)]
    assert started == [None, second.seq, second.seq, first.seq]
    report = audit_file(db, keys.trusted)
    assert [(f.check, f.seq) for f in report.findings] == [("checkpoint", false.seq)]
    assert "another node.started" in report.findings[0].line()


def _checkpoint_started(event: StoredEvent) -> int | None:
    data = json.loads(event.body)["data"]
    record = Checkpoint.model_validate_json(b64d(data["checkpoint"]["record"]))
    return record.started


def test_a_checkpoint_claiming_no_node_started_after_one_is_found_and_one_without_the_field_passes(
    tmp_path: Path,
) -> None:
    """``started`` is null only when no ``node.started`` came before; a checkpoint of a node
    from before the field leaves it out (the signed bytes tell the two apart)."""
    keys = Keys.generate()
    db = tmp_path / "events.db"
    with open_new_log(db, keys) as log:
        log.append(STARTED)
        log._started = None  # a node hiding which process logged the events
        hidden = log.checkpoint()
    report = audit_file(db, keys.trusted)
    assert _checkpoint_started(hidden) is None
    assert b'"started":null' in b64d(json.loads(hidden.body)["data"]["checkpoint"]["record"])
    assert [(f.check, f.seq) for f in report.findings] == [("checkpoint", hidden.seq)]
    assert "another node.started" in report.findings[0].line()
    old = tmp_path / "old.db"
    with open_new_log(old, keys) as log:
        log.append(STARTED)
        cp = Checkpoint.model_validate_json(b64d(log._checkpoint_item()["checkpoint"]["record"]))
        body = canonical_bytes(cp.model_dump(mode="json", exclude={"started"}))
        signed = SignedRecord(  # the record as a node from before the field signed it
            record=b64e(body),
            sig=b64e(sign(keys.node.signing_key, DOMAIN_CHECKPOINT, body)),
            signer=keys.node.kid,
        )
        log._pending_checkpoint = (cp, signed)
        log.append(CheckpointData(checkpoint=signed))
    assert audit_file(old, keys.trusted).ok
