"""The auditor's findings, one kind at a time, on logs written through the real append path."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from helpers.logs import (
    SITE,
    Keys,
    audit_file,
    audit_lines,
    build_log,
    open_new_log,
    request_events,
    resign,
)
from pydantic import BaseModel

from hub.audit import AuditReport, Finding, audit_events, verdict
from hub.audit.hubcopy import CopiedLog
from hub.canonical import b64e
from hub.events import (
    KeyRevoked,
    NodeStarted,
    NodeStopped,
    RequestCompleted,
    RequestFailed,
    ResultFetched,
)
from hub.fedaudit import SiteAudit
from hub.keys import KeyPair
from hub.logfile import parse_export_line
from hub.records import SignedRecord


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys.generate()


def _lines(folder: Path, keys: Keys, *batches: Sequence[BaseModel]) -> list[bytes]:
    db = folder / "events.db"
    with open_new_log(db, keys) as log:
        for batch in batches:
            log.append_many(batch)
        log.export(folder / "events.jsonl")
    return (folder / "events.jsonl").read_bytes().splitlines(keepends=True)


def _audit(tmp_path: Path, keys: Keys, *batches: Sequence[BaseModel]) -> AuditReport:
    return audit_lines(_lines(tmp_path, keys, *batches), keys.trusted)


def _checks(report: AuditReport) -> list[tuple[int | None, str]]:
    return [(f.seq, f.check) for f in sorted(report.findings, key=lambda f: f.position)]


STARTED = NodeStarted(version="0.1.0", pid=1)


def test_a_clean_log_passes_with_one_signature_checked_per_commit(
    tmp_path: Path, keys: Keys
) -> None:
    report = _audit(tmp_path, keys, [STARTED], request_events("req00001"), [NodeStopped()])
    assert report.ok, [f.line() for f in report.findings]
    assert report.events == 1 + 1 + 4 + 1
    assert report.requests == {"completed": 1}
    assert report.trust.endswith("(pinned)")
    assert report.signatures_checked == 4  # genesis and three commits


def test_a_log_audits_the_same_from_sqlite_and_from_its_export(tmp_path: Path) -> None:
    built = build_log(tmp_path, requests=6)
    from_db = audit_file(built.db, built.keys.trusted)
    from_jsonl = audit_file(tmp_path / "events.jsonl", built.keys.trusted)
    assert from_db.ok and from_jsonl.ok
    assert from_db.to_json() == from_jsonl.to_json()


def test_a_site_that_is_not_pinned_is_not_trusted(tmp_path: Path, keys: Keys) -> None:
    lines = _lines(tmp_path, keys, [STARTED])
    report = audit_lines(lines, {"geomar": keys.site.sign_public})
    assert _checks(report)[0] == (1, "trust")
    assert "no pinned key for site:hereon" in report.findings[0].message


def test_a_log_naming_another_site_key_is_not_trusted(tmp_path: Path, keys: Keys) -> None:
    lines = _lines(tmp_path, keys, [STARTED])
    report = audit_lines(lines, {SITE: KeyPair.generate("site:hereon").sign_public})
    assert _checks(report)[0] == (1, "trust")
    assert report.findings[0].expected != report.findings[0].found


def test_trusting_the_log_itself_passes_but_says_so_on_the_first_line(
    tmp_path: Path, keys: Keys
) -> None:
    report = audit_lines(_lines(tmp_path, keys, [STARTED]), None)
    assert report.ok
    assert "not pinned" in report.trust
    assert "UNSAFE" in verdict(report, tmp_path / "events.jsonl", 1.0).splitlines()[0]


def test_a_completion_of_a_request_never_accepted_is_a_lifecycle_violation(
    tmp_path: Path, keys: Keys
) -> None:
    done = RequestCompleted(
        request_id="req00002", result_hash="00" * 32, result_size=1, duration_us=1
    )
    report = _audit(tmp_path, keys, [STARTED, done])
    assert _checks(report) == [(3, "lifecycle")]
    assert "request req00002 ended while unknown" in report.findings[0].message


def test_a_request_completed_twice_is_a_lifecycle_violation(tmp_path: Path, keys: Keys) -> None:
    events = request_events("req00003", "completed")
    done = next(e for e in events if isinstance(e, RequestCompleted))
    report = _audit(tmp_path, keys, [STARTED, *events, done])
    assert _checks(report) == [(len(events) + 3, "lifecycle")]
    assert "completed twice" in report.findings[0].message


def test_a_result_fetched_after_a_failure_is_a_lifecycle_violation(
    tmp_path: Path, keys: Keys
) -> None:
    events = request_events("req00006", "failed")
    assert isinstance(events[-1], RequestFailed)
    fetched = ResultFetched(request_id="req00006", by="klaus@geomar")
    report = _audit(tmp_path, keys, [STARTED, *events, fetched])
    assert _checks(report) == [(len(events) + 3, "lifecycle")]
    assert "result.fetched for request req00006 that has no result" in report.findings[0].message


def test_a_request_accepted_twice_is_a_lifecycle_violation(tmp_path: Path, keys: Keys) -> None:
    accepted = request_events("req00004", "open")[0]
    report = _audit(tmp_path, keys, [STARTED, accepted, accepted])
    assert _checks(report) == [(4, "lifecycle")]
    assert "req00004 accepted while accepted" in report.findings[0].message


def test_an_event_after_a_stop_without_a_start_is_a_lifecycle_violation(
    tmp_path: Path, keys: Keys
) -> None:
    accepted = request_events("req00005")[0]
    report = _audit(tmp_path, keys, [STARTED, NodeStopped(), accepted])
    assert _checks(report) == [(4, "lifecycle")]
    assert "while the node is stopped" in report.findings[0].message


def test_a_restart_after_a_stop_is_fine_and_a_restart_without_one_is_counted(
    tmp_path: Path, keys: Keys
) -> None:
    report = _audit(tmp_path, keys, [STARTED, NodeStopped(), STARTED, STARTED])
    assert report.ok
    assert report.unclean_restarts == 1


def test_a_stop_without_a_start_is_a_lifecycle_violation(tmp_path: Path, keys: Keys) -> None:
    report = _audit(tmp_path, keys, [NodeStopped()])
    assert _checks(report) == [(2, "lifecycle")]


def test_events_signed_after_the_node_key_was_revoked_are_flagged(tmp_path: Path) -> None:
    keys = Keys.generate()
    db = tmp_path / "events.db"
    with open_new_log(db, keys) as log:
        log.append(STARTED)
        log.append(KeyRevoked(revocation=keys.revoke(keys.node)))
        log.append(request_events("req00006")[0])
    report = audit_file(db, keys.trusted)
    assert _checks(report) == [(4, "key")]
    assert "revoked" in report.findings[0].message
    assert report.keys[keys.node.kid]["status"] == "revoked"


def test_a_revocation_dated_before_events_the_key_signed_is_flagged(tmp_path: Path) -> None:
    keys = Keys.generate()
    early = keys.revoke(keys.node)  # dated now, before the events appended below
    report = _audit(tmp_path, keys, [STARTED], [KeyRevoked(revocation=early)])
    assert _checks(report) == [(3, "key")]
    assert "after the time it was revoked" in report.findings[0].message


def test_a_rotated_node_key_signs_from_the_rotation_on(tmp_path: Path) -> None:
    keys = Keys.generate()
    db = tmp_path / "events.db"
    with open_new_log(db, keys) as log:
        log.append(STARTED)
        rotated = log.rotate_key(keys.spare, keys.vouch(keys.spare))
        after = log.append(NodeStopped())
    assert rotated.parsed()["kid"] == keys.node.kid
    assert after.parsed()["kid"] == keys.spare.kid
    report = audit_file(db, keys.trusted)
    assert report.ok, [f.line() for f in report.findings]
    assert report.keys[keys.node.kid]["status"] == "rotated"
    assert report.keys[keys.spare.kid]["status"] == "active"


def test_a_rotation_record_not_signed_by_the_site_is_flagged(tmp_path: Path) -> None:
    keys = Keys.generate()
    rogue = Keys(KeyPair.generate("site:hereon"), keys.node, keys.spare, keys.other_node)
    db = tmp_path / "events.db"
    with open_new_log(db, keys) as log:
        log.append(STARTED)
        log.rotate_key(keys.spare, rogue.vouch(keys.spare))
        log.append(NodeStopped())
    checks = _checks(audit_file(db, keys.trusted))
    assert checks[0] == (3, "trust")


def test_a_receipt_from_another_log_is_flagged(tmp_path: Path) -> None:
    one = build_log(tmp_path / "one", requests=4)
    two = build_log(tmp_path / "two", requests=4, keys=one.keys)
    receipt: SignedRecord = two.receipts[0]
    assert audit_lines(one.lines, one.keys.trusted, receipt).ok is False


def test_worker_processes_and_threads_find_the_same_bad_signatures(tmp_path: Path) -> None:
    """A log long enough for several chunks; two events re-signed by another valid key."""
    keys = Keys.generate()
    lines = _lines_signed(tmp_path, keys, 500)
    assert len(lines) > 3 * 640
    bad = [700, len(lines) - 3]
    for i in bad:
        lines[i] = resign(lines[i], keys.other_node, claim_kid=False)
    in_threads = audit_lines_with(lines, keys.trusted, processes=False)
    in_processes = audit_lines_with(lines, keys.trusted, processes=True)
    assert in_processes.to_json() == in_threads.to_json()
    assert _checks(in_processes) == [(i + 1, "signature") for i in bad]
    assert in_processes.signatures_checked == len(lines)


def _lines_signed(folder: Path, keys: Keys, requests: int) -> list[bytes]:
    """Export lines of a log whose every event is a commit of its own (all signed)."""
    with open_new_log(folder / "events.db", keys, checkpoint_every=10_000) as log:
        log.append(STARTED)
        for i in range(requests):
            for event in request_events(f"req{i:05d}"):
                log.append(event)
        log.export(folder / "events.jsonl")
    return (folder / "events.jsonl").read_bytes().splitlines(keepends=True)


def test_the_sqlite_log_is_read_in_bulk_with_the_same_verdict(tmp_path: Path) -> None:
    built = build_log(tmp_path, requests=30)
    from hub.logfile import iter_sqlite

    bulk = audit_events(iter_sqlite(built.db), trusted_sites=built.keys.trusted, threads=2)
    one_by_one = audit_events(
        iter(list(iter_sqlite(built.db))), trusted_sites=built.keys.trusted, threads=2
    )
    assert bulk.ok
    assert bulk.to_json() == one_by_one.to_json()


def audit_lines_with(
    lines: list[bytes], trusted: dict[str, bytes], *, processes: bool
) -> AuditReport:
    from hub.logfile import parse_export_line

    raws = [parse_export_line(line, i) for i, line in enumerate(lines, 1)]
    return audit_events(raws, trusted_sites=trusted, threads=2, processes=processes)


@pytest.mark.parametrize(
    "worker",
    [
        "import sys; sys.exit(1)",
        "import os, sys\n"
        "read, out = sys.stdin.buffer.read, os.fdopen(int(sys.argv[1]), 'wb')\n"
        "while len(head := read(4)) == 4:\n"
        "    read(int.from_bytes(head, 'little'))\n"
        "    out.write((1).to_bytes(4, 'little') + (99999).to_bytes(4, 'little'))\n"
        "    out.flush()\n",
    ],
    ids=["dies", "answers nonsense"],
)
def test_signature_workers_that_fail_are_replaced_by_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker: str
) -> None:
    import hub.audit.signatures

    keys = Keys.generate()
    lines = _lines_signed(tmp_path, keys, 150)
    lines[500] = resign(lines[500], keys.other_node, claim_kid=False)
    monkeypatch.setattr(hub.audit.signatures, "WORKER", worker)
    report = audit_lines_with(lines, keys.trusted, processes=True)
    assert _checks(report) == [(501, "signature")]


def test_an_audit_stops_collecting_at_a_thousand_findings(tmp_path: Path, keys: Keys) -> None:
    """A log no pinned key vouches for: every event is a finding; the report keeps 1000."""
    many = [e for i in range(300) for e in request_events(f"req{i:05d}")]
    lines = _lines(tmp_path, keys, [STARTED, *many])
    report = audit_lines(lines, {"geomar": keys.site.sign_public})
    assert len(report.findings) == 1000
    assert report.first is not None and report.first.check == "trust"
    assert report.events < len(lines)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_a_bad_signature_ranks_before_what_the_events_type_says_at_the_same_event(
    tmp_path: Path, keys: Keys, processes: bool
) -> None:
    """docs/audit.md: among findings at one event, the order of checks decides, and the
    signature (step 7) comes before the lifecycle (step 8), although it is verified last."""
    lines = _lines(
        tmp_path,
        keys,
        [STARTED],
        [ResultFetched(request_id="nosuch001", by="klaus@geomar")],
        [*request_events("req00001"), NodeStopped()],
    )
    lines[2] = resign(lines[2], keys.other_node, claim_kid=False)
    lines[6] = resign(lines[6], keys.other_node, claim_kid=False)  # signed, no other finding
    raws = (parse_export_line(line, i) for i, line in enumerate(lines, 1))
    report = audit_events(raws, trusted_sites=keys.trusted, threads=2, processes=processes)
    assert _checks(report) == [(3, "signature"), (3, "lifecycle"), (7, "signature")]
    assert report.first is not None and report.first.check == "signature"
    assert [f["check"] for f in report.to_json()["findings"]][:2] == ["signature", "lifecycle"]


def test_the_one_line_verdict_of_a_site_from_the_hub_says_what_was_not_checked(
    tmp_path: Path, keys: Keys
) -> None:
    """``fedhub audit --all`` prints only one line per site: it must not hide that trust
    came from the log itself or that signatures were not checked."""
    lines = _lines(tmp_path, keys, [STARTED])
    copied = CopiedLog("fh.events.hereon.n1", tmp_path / "events.jsonl", len(lines))
    pinned = SiteAudit(SITE, [(copied, audit_lines(lines, keys.trusted))])
    unsafe = SiteAudit(SITE, [(copied, audit_lines(lines, None, verify_signatures=False))])
    assert pinned.summary().startswith("hereon: audit OK: 1 log(s)")
    head = unsafe.summary().split(": 1 log(s)")[0]
    assert head.startswith("hereon: audit OK  [UNSAFE: trust taken from the log itself")
    assert "signatures NOT checked (--chain-only)" in head


def test_the_tail_is_called_unproven_unless_every_receipt_given_holds(tmp_path: Path) -> None:
    one = build_log(tmp_path / "one", requests=4)
    two = build_log(tmp_path / "two", requests=4, keys=one.keys)
    tail = "tail        not proven: a truncated tail can only be ruled out with a receipt"
    held = audit_events(
        (parse_export_line(line, i) for i, line in enumerate(one.lines, 1)),
        trusted_sites=one.keys.trusted,
        receipts=[one.receipts[0]],
    )
    assert held.ok and tail not in verdict(held, tmp_path / "one.jsonl", 1.0)
    mixed = audit_events(
        (parse_export_line(line, i) for i, line in enumerate(one.lines, 1)),
        trusted_sites=one.keys.trusted,
        receipts=[one.receipts[0], two.receipts[0]],
    )
    assert len(mixed.receipts) == 1 and not mixed.ok
    assert tail in verdict(mixed, tmp_path / "one.jsonl", 1.0)


def test_a_finding_line_shows_only_the_sides_it_knows() -> None:
    found = Finding(2, 2, "format", "time is not YYYY-MM-DDTHH:MM:SS.ffffffZ", found="noon")
    assert found.line() == "event 2: format: time is not YYYY-MM-DDTHH:MM:SS.ffffffZ (found noon)"
    both = Finding(5, None, "receipt", "tail truncated", ">= 9 events", "4")
    assert both.line() == "entry 5: receipt: tail truncated (expected >= 9 events, found 4)"
    assert Finding(1, 1, "trust", "no pinned key").line() == "event 1: trust: no pinned key"


def test_pinning_two_keys_for_one_site_or_a_key_of_another_length_is_refused(
    tmp_path: Path, keys: Keys
) -> None:
    """With two pins for one site the later one used to win in silence."""
    from hub.cli_audit import pinned_site_keys
    from hub.errors import ConfigError
    from hub.keys import KeyStore

    store = KeyStore(tmp_path / "home")
    mine = f"hereon={b64e(keys.site.sign_public)}"
    other = f"site:hereon={b64e(KeyPair.generate('site:hereon').sign_public)}"
    assert pinned_site_keys([mine, mine], store) == {SITE: keys.site.sign_public}
    with pytest.raises(ConfigError, match="two different keys for site:hereon"):
        pinned_site_keys([mine, other], store)
    with pytest.raises(ConfigError, match="not an Ed25519 public key"):
        pinned_site_keys([f"hereon={b64e(b'short')}"], store)
