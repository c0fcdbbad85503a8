"""Property tests: a clean exported log always passes; any single mutation is detected.

Base logs are built once per module through the real append path: a version 2 log
(requests of every fate, a rotation of the node key, a revocation, a checkpoint every 16
events), and the version 1 fixture log continued in version 2 by this release's writer.
Hypothesis picks which line, which byte, which event to move.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers.logs import Keys, audit_lines, build_log, detected, request_events, resign
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.events import NodeStarted, NodeStopped
from hub.keys import KeyPair, load_public_file
from hub.logfile import LogUnreadableError, export_line, parse_export_line
from hub.records import SignedRecord
from node.eventlog import EventLog

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
V1 = Path(__file__).resolve().parents[1] / "fixtures" / "logs" / "v1"


@dataclass
class Base:
    """A clean log's export lines, the pinned site keys, its checkpoints, its test keys."""

    lines: list[bytes]
    trusted: dict[str, bytes]
    receipts: list[SignedRecord]
    keys: Keys | None = None

    @property
    def signed(self) -> list[bool]:
        """Which lines carry a signature."""
        return [parse_export_line(line, 1).sig != b"" for line in self.lines]

    @property
    def commit_ends(self) -> list[int]:
        """The prefix lengths that end with a signed event (at a commit's end)."""
        return [n for n, signed in enumerate(self.signed, 1) if signed]


def _checkpoints_in(lines: list[bytes]) -> list[SignedRecord]:
    out = []
    for line in lines:
        body = json.loads(parse_export_line(line, 1).body)
        if body["type"] == "checkpoint":
            out.append(SignedRecord.model_validate(body["data"]["checkpoint"]))
    return out


def _v1_continued(folder: Path) -> Base:
    """The version 1 fixture log, continued in version 2 by this release's writer."""
    shutil.copytree(V1, folder / "v1")
    db = folder / "v1" / "events.db"
    node_key = KeyPair.from_file_json(json.loads((V1 / "node-key.json").read_text()))
    with EventLog(db, node_key, checkpoint_every=16) as log:
        log.append(NodeStarted(version="0.2.0", pid=7))
        for i in range(8):
            log.append_many(request_events(f"v2req{i:05d}", ("completed", "failed")[i % 2]))
        log.append(NodeStopped())
        log.export(folder / "events.jsonl")
    lines = (folder / "events.jsonl").read_bytes().splitlines(keepends=True)
    site = load_public_file(V1 / "site-hereon.pub")
    return Base(lines, {"hereon": site.sign_key}, _checkpoints_in(lines))


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Base:
    built = build_log(tmp_path_factory.mktemp("base"), requests=20)
    return Base(built.lines, built.keys.trusted, built.receipts, built.keys)


@pytest.fixture(scope="module", params=["v2", "v1 then v2"])
def base(
    request: pytest.FixtureRequest, v2: Base, tmp_path_factory: pytest.TempPathFactory
) -> Base:
    if request.param == "v2":
        return v2
    return _v1_continued(tmp_path_factory.mktemp("v1v2"))


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory: pytest.TempPathFactory, v2: Base) -> Base:
    """Another history signed with the very same keys."""
    assert v2.keys is not None
    built = build_log(tmp_path_factory.mktemp("rewritten"), requests=20, tag="x", keys=v2.keys)
    return Base(built.lines, built.keys.trusted, built.receipts, built.keys)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mutated") / "events.jsonl"


def _detected(scratch: Path, lines: list[bytes], base: Base, receipt: object = None) -> bool:
    scratch.write_bytes(b"".join(lines))
    return detected(scratch, base.trusted, receipt)  # type: ignore[arg-type]


def test_base_log_is_clean_and_has_what_the_properties_need(base: Base) -> None:
    report = audit_lines(base.lines, base.trusted)
    assert report.ok, [f.line() for f in report.findings]
    assert report.types["key.rotated"] == 1
    assert report.types["key.revoked"] >= 1
    assert report.checkpoints == len(base.receipts) >= 4
    assert not all(base.signed)  # version 2 commits: most events unsigned


@SETTINGS
@given(data=st.data())
def test_every_prefix_ending_a_commit_passes_with_every_receipt_it_contains(
    base: Base, data: st.DataObject
) -> None:
    receipt = data.draw(st.sampled_from(base.receipts))
    ends = [n for n in base.commit_ends if n >= _size(receipt)]
    size = data.draw(st.sampled_from(ends))
    report = audit_lines(base.lines[:size], base.trusted, receipt)
    assert report.ok, [f.line() for f in report.findings]


@SETTINGS
@given(data=st.data())
def test_a_prefix_ending_inside_a_commit_is_detected_without_a_receipt(
    base: Base, data: st.DataObject
) -> None:
    inside = [n for n, signed in enumerate(base.signed, 1) if not signed]
    size = data.draw(st.sampled_from(inside))
    report = audit_lines(base.lines[:size], base.trusted)
    assert report.first is not None and report.first.check == "signature"
    assert "covered by no signature" in report.first.message


@SETTINGS
@given(data=st.data())
def test_a_stripped_signature_is_detected_where_the_format_needs_one(
    base: Base, scratch: Path, data: st.DataObject
) -> None:
    """The last event, a genesis, checkpoint or rotation, and the event before one of
    these end a commit that must be signed; anywhere else the stripped event is covered
    by the next signature of the same key (the chain holds every byte), and the audit
    says so by passing."""
    i = data.draw(st.sampled_from([n - 1 for n in base.commit_ends]), label="line")
    raw = parse_export_line(base.lines[i], i + 1)
    lines = list(base.lines)
    lines[i] = export_line(raw.hash, b"", raw.body)
    own = (b'"type":"log.created"', b'"type":"checkpoint"', b'"type":"key.rotated"')
    needed = i == len(lines) - 1 or any(t in line for t in own for line in base.lines[i : i + 2])
    assert json.loads(raw.body)["v"] == 1 or _detected(scratch, lines, base) == needed


@SETTINGS
@given(data=st.data())
def test_a_flipped_byte_anywhere_is_detected(
    base: Base, scratch: Path, data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(base.lines) - 1), label="line")
    line = base.lines[i]
    at = data.draw(st.integers(0, len(line) - 1), label="offset")
    new = data.draw(st.integers(0, 255).filter(lambda b: b != line[at]), label="byte")
    lines = list(base.lines)
    lines[i] = line[:at] + bytes([new]) + line[at + 1 :]
    assert _detected(scratch, lines, base)


@SETTINGS
@given(data=st.data())
def test_a_flipped_byte_in_the_signature_or_hash_is_detected(
    base: Base, scratch: Path, data: st.DataObject
) -> None:
    """The hash and signature fields get their own draws (offsets 9..73 and 82..167)."""
    i = data.draw(st.integers(0, len(base.lines) - 1), label="line")
    at = data.draw(st.integers(9, 72) | st.integers(82, 167), label="offset")
    line = base.lines[i]
    alphabet = b"0123456789abcdefABCDEFGHIJKLMNOPQRSTUVWXYZghijklmnopqrstuvwxyz-_+/="
    new = data.draw(st.sampled_from(alphabet).filter(lambda b: b != line[at]), label="byte")
    lines = list(base.lines)
    lines[i] = line[:at] + bytes([new]) + line[at + 1 :]
    assert _detected(scratch, lines, base)


@SETTINGS
@given(data=st.data())
def test_a_deleted_event_is_detected(base: Base, scratch: Path, data: st.DataObject) -> None:
    """Any event but the last (deleting the last one is a truncation: see the receipts)."""
    i = data.draw(st.integers(0, len(base.lines) - 2))
    assert _detected(scratch, base.lines[:i] + base.lines[i + 1 :], base)


@SETTINGS
@given(data=st.data())
def test_a_duplicated_event_is_detected(base: Base, scratch: Path, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(base.lines) - 1))
    assert _detected(scratch, base.lines[: i + 1] + base.lines[i:], base)


@SETTINGS
@given(data=st.data())
def test_two_swapped_events_are_detected(base: Base, scratch: Path, data: st.DataObject) -> None:
    n = len(base.lines)
    i = data.draw(st.integers(0, n - 2))
    j = data.draw(st.integers(i + 1, n - 1) | st.just(i + 1))
    lines = list(base.lines)
    lines[i], lines[j] = lines[j], lines[i]
    assert _detected(scratch, lines, base)


@SETTINGS
@given(data=st.data())
def test_an_event_copied_to_another_place_is_detected(
    base: Base, scratch: Path, data: st.DataObject
) -> None:
    n = len(base.lines)
    i = data.draw(st.integers(0, n - 1), label="copied")
    at = data.draw(st.integers(0, n), label="inserted before")
    lines = list(base.lines)
    lines.insert(at, base.lines[i])
    assert _detected(scratch, lines, base)


@SETTINGS
@given(data=st.data())
def test_an_event_resigned_with_another_valid_key_is_detected(
    v2: Base, scratch: Path, data: st.DataObject
) -> None:
    """Keys the site vouches for: its own, a second node's, and the node's other key (the
    one before or after the rotation); the body is kept, or names the new key, or is
    edited too (its hash recomputed). Signed and unsigned events alike."""
    base, keys = v2, v2.keys
    assert keys is not None
    i = data.draw(st.integers(0, len(base.lines) - 1), label="line")
    signer = data.draw(st.sampled_from(["site", "other_node", "other_epoch"]), label="key")
    mode = data.draw(st.sampled_from(["same body", "claims key", "edited"]), label="body")
    rotated_at = next(n for n, line in enumerate(base.lines) if b'"type":"key.rotated"' in line)
    epoch_key = keys.spare if i <= rotated_at else keys.node
    pair = {"site": keys.site, "other_node": keys.other_node, "other_epoch": epoch_key}[signer]
    lines = list(base.lines)
    lines[i] = resign(lines[i], pair, claim_kid=mode != "same body", edit_time=mode == "edited")
    assert _detected(scratch, lines, base)


@SETTINGS
@given(data=st.data())
def test_a_tail_truncated_below_a_receipt_is_detected(
    base: Base, scratch: Path, data: st.DataObject
) -> None:
    receipt = data.draw(st.sampled_from(base.receipts))
    size = data.draw(st.integers(0, _size(receipt) - 1))
    assert _detected(scratch, base.lines[:size], base, receipt)


@SETTINGS
@given(data=st.data())
def test_a_rewritten_history_is_detected_against_a_receipt(
    v2: Base, rewritten: Base, scratch: Path, data: st.DataObject
) -> None:
    receipt = data.draw(st.sampled_from(v2.receipts))
    size = data.draw(st.sampled_from([n for n in rewritten.commit_ends if n >= _size(receipt)]))
    assert audit_lines(rewritten.lines[:size], rewritten.trusted).ok
    assert _detected(scratch, rewritten.lines[:size], v2, receipt)


def test_a_reformatted_line_is_unreadable_input(base: Base) -> None:
    lines = list(base.lines)
    lines[3] = lines[3].replace(b'"sig":', b'"sig": ', 1)
    with pytest.raises(LogUnreadableError):
        audit_lines(lines, base.trusted)


def _size(receipt: object) -> int:
    from hub.canonical import b64d
    from hub.records import Checkpoint, SignedRecord

    assert isinstance(receipt, SignedRecord)
    return Checkpoint.model_validate_json(b64d(receipt.record)).size


def _report_json(
    lines: list[bytes], trusted: dict[str, bytes], receipt: object, *, fast: bool
) -> object:
    """The full report of the general path alone (``fast=False``) or with the fast check."""
    from hub.audit import new_rules, run
    from hub.audit.fast import scan
    from hub.logfile import parse_export_line

    try:
        raws = [parse_export_line(line, i) for i, line in enumerate(lines, 1)]
    except LogUnreadableError:
        return "unreadable"
    rules = new_rules(trusted, _receipts(receipt), True, 2, False)
    rows = ((r.position, (r.hash, r.sig, r.body)) for r in raws)
    run(rules, lambda: scan(rules, rows, None, fast=fast))
    return rules.report.to_json()


def _receipts(receipt: object) -> list[Any]:
    return [] if receipt is None else [receipt]


def _mutated(base: list[bytes], data: st.DataObject, kinds: list[str]) -> list[bytes]:
    """The export lines with one drawn mutation of a drawn kind (or none: ``clean``)."""
    lines = list(base)
    n = len(lines)
    kind = data.draw(st.sampled_from(kinds))
    if kind == "byte":
        i = data.draw(st.integers(0, n - 1))
        at = data.draw(st.integers(0, len(lines[i]) - 2))
        new = data.draw(st.integers(0, 255).filter(lambda b: b != lines[i][at]))
        lines[i] = lines[i][:at] + bytes([new]) + lines[i][at + 1 :]
    elif kind == "delete":
        del lines[data.draw(st.integers(0, n - 1))]
    elif kind == "duplicate":
        i = data.draw(st.integers(0, n - 1))
        lines.insert(i, lines[i])
    elif kind == "swap":
        i = data.draw(st.integers(0, n - 2))
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    elif kind == "copy":
        lines.insert(data.draw(st.integers(0, n)), lines[data.draw(st.integers(0, n - 1))])
    elif kind == "truncate":
        lines = lines[: data.draw(st.integers(0, n))]
    elif kind == "signature":  # a signed event takes another signed event's signature
        signed = [i for i, line in enumerate(lines) if b'"sig":"","event"' not in line]
        i, j = data.draw(st.lists(st.sampled_from(signed), min_size=2, max_size=2, unique=True))
        lines[i] = lines[i][:82] + lines[j][82:168] + lines[i][168:]
    return lines


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_the_fast_check_decides_exactly_as_the_general_path(
    base: Base, data: st.DataObject
) -> None:
    """Same report, finding for finding, on the clean log and on every kind of mutation."""
    kinds = ["clean", "byte", "delete", "duplicate", "swap", "copy", "truncate", "signature"]
    lines = _mutated(base.lines, data, kinds)
    receipt = data.draw(st.none() | st.sampled_from(base.receipts))
    fast = _report_json(lines, base.trusted, receipt, fast=True)
    assert fast == _report_json(lines, base.trusted, receipt, fast=False)


class _InlineHelper:
    """The helper's records computed in this process (what the helper process writes)."""

    def __init__(self, db: Path, after_seq: int) -> None:
        from hub.audit.helper import positioned, speculate
        from hub.logfile import iter_sqlite

        source = iter_sqlite(db)
        prev = source.stored_hash(after_seq)
        rows = positioned(source.rows(after_seq=after_seq), after_seq + 1)
        self._records = list(speculate(rows, prev if type(prev) is bytes else b""))

    def records(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._records)

    def close(self) -> None:
        pass


def _write_db(path: Path, lines: list[bytes]) -> bool:
    """The events of export lines as a SQLite log (False if a line is unreadable)."""
    from hub.logfile import parse_export_line

    try:
        raws = [parse_export_line(line, i) for i, line in enumerate(lines, 1)]
    except LogUnreadableError:
        return False
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, hash BLOB, sig BLOB, body BLOB)")
    conn.executemany(
        "INSERT INTO events VALUES (?, ?, ?, ?)",
        [(r.position, r.hash, r.sig, r.body) for r in raws],
    )
    conn.commit()
    conn.close()
    return True


def _split_and_plain(
    db: Path,
    trusted: dict[str, bytes],
    receipt: object,
    after_seq: int,
    helper: object = None,
    *,
    verify: bool = False,
) -> tuple[object, object]:
    from hub.audit import new_rules, run
    from hub.audit.fast import scan
    from hub.audit.helper import positioned, split_pass
    from hub.logfile import iter_sqlite

    split = new_rules(trusted, _receipts(receipt), verify, 2)
    run(split, lambda: split_pass(split, iter_sqlite(db), after_seq, helper))  # type: ignore[arg-type]
    plain = new_rules(trusted, _receipts(receipt), verify, 2)
    source = iter_sqlite(db)
    rows = positioned(source.rows(), 1)
    run(plain, lambda: scan(plain, rows, source.not_blobs, fast=False))
    return split.report.to_json(), plain.report.to_json()


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_an_audit_split_with_a_helper_decides_exactly_as_the_general_path(
    base: Base, scratch: Path, data: st.DataObject
) -> None:
    """Audits of large SQLite logs (chain-only, or version 2 with every signature checked)
    read the second part in a helper: same report, finding for finding, wherever the split
    falls and whatever was changed."""
    kinds = ["clean", "byte", "delete", "duplicate", "swap", "signature"]
    lines = _mutated(base.lines, data, kinds)
    db = scratch.with_name("split.db")
    if not _write_db(db, lines):
        return
    after_seq = data.draw(st.integers(1, len(lines)), label="split after")
    receipt = data.draw(st.none() | st.sampled_from(base.receipts))
    verify = data.draw(st.booleans(), label="verify signatures")
    helper = _InlineHelper(db, after_seq)
    split, plain = _split_and_plain(db, base.trusted, receipt, after_seq, helper, verify=verify)
    assert split == plain


@pytest.mark.parametrize("verify", [False, True], ids=["chain only", "every signature"])
@pytest.mark.parametrize("after_seq", [1, 40, 150])
def test_a_helper_process_reads_the_second_part_with_the_same_verdict(
    base: Base, scratch: Path, after_seq: int, verify: bool
) -> None:
    db = scratch.with_name("helper.db")
    lines = list(base.lines)
    lines[60], lines[61] = lines[61], lines[60]  # a finding in the helper's part
    assert _write_db(db, lines)
    receipt = base.receipts[-1]
    split, plain = _split_and_plain(db, base.trusted, receipt, after_seq, verify=verify)
    assert split == plain
    assert isinstance(split, dict) and split["findings"]


def test_a_helper_that_fails_leaves_the_work_to_the_auditor(
    base: Base, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hub.audit.helper

    monkeypatch.setattr(hub.audit.helper, "HELPER", "import sys; sys.exit(3)")
    db = scratch.with_name("failing.db")
    assert _write_db(db, list(base.lines))
    split, plain = _split_and_plain(db, base.trusted, None, 50)
    assert split == plain
    assert isinstance(split, dict) and split["ok"]


def test_runs_that_do_not_fit_the_state_are_left_to_the_auditor(tmp_path: Path) -> None:
    """Requests that straddle the split, one completed twice and an event while the node
    is stopped after it: whichever side of the split they fall on, the same findings."""
    from helpers.logs import open_new_log, request_events

    from hub.events import NodeStarted, NodeStopped, RequestCompleted

    keys = Keys.generate()
    db = tmp_path / "events.db"
    with open_new_log(db, keys) as log:
        log.append(NodeStarted(version="0.1.0", pid=1))
        events = [e for i in range(30) for e in request_events(f"req{i:05d}")]
        log.append_many(events[:77])
        log.append_many(events[77:])
        log.append_many([next(e for e in events if isinstance(e, RequestCompleted))])
        log.append_many(request_events("late00001"))
        log.append(NodeStopped())
        log.append(request_events("stopped01")[0])
        size = log.size
    for after_seq in (5, 40, 90, 160, 200, size - 2, size):
        split, plain = _split_and_plain(
            db, keys.trusted, None, after_seq, _InlineHelper(db, after_seq)
        )
        assert split == plain
        assert isinstance(split, dict)
        assert [f["check"] for f in split["findings"]] == ["lifecycle", "lifecycle"]
