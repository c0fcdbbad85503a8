"""The node's SQLite event log: append-only in the database itself, a chain across reopens,
projections that can be rebuilt, and a rotatable signing key."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers.logs import SITE, Keys, audit_file, build_log, open_new_log, request_events
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.canonical import canonical_bytes
from hub.chain import leaf_hash
from hub.errors import ConfigError, LogConflictError
from hub.events import NodeStarted, NodeStopped
from node.eventlog import EventLog, _body_frame, _event_body

STARTED = NodeStarted(version="0.1.0", pid=1)
INSERT = "INSERT INTO events(seq, hash, sig, body, type, time)"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "events.db"
    with open_new_log(path, Keys.generate()) as log:
        log.append_many([STARTED, *request_events("req00001")])
    return path


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE events SET body = x'00' WHERE seq = 2",
        "UPDATE events SET type = 'node.stopped'",
        "DELETE FROM events WHERE seq = 3",
        "DELETE FROM events",
        f"{INSERT} VALUES (100, x'', x'', x'', 't', 't')",
        f"{INSERT} VALUES (3, x'', x'', x'', 't', 't')",
    ],
)
def test_the_database_refuses_to_change_or_skip_events(db: Path, sql: str) -> None:
    conn = sqlite3.connect(db)
    try:
        with pytest.raises(sqlite3.DatabaseError, match=r"fedhub event log|UNIQUE"):
            conn.execute(sql)
    finally:
        conn.close()


def test_the_database_accepts_only_the_next_sequence_number(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        (size,) = conn.execute("SELECT MAX(seq) FROM events").fetchone()
        conn.execute(
            f"{INSERT} VALUES (?, x'', x'', x'', 't', 't')",
            [size + 1],
        )
    finally:
        conn.rollback()
        conn.close()


def test_a_reopened_log_continues_the_chain(tmp_path: Path) -> None:
    keys = Keys.generate()
    path = tmp_path / "events.db"
    with open_new_log(path, keys) as log:
        first = log.append(STARTED)
    with EventLog(path, keys.node) as log:
        assert log.size == 2
        second = log.append(NodeStopped())
    assert second.seq == first.seq + 1
    assert second.parsed()["prev"] == leaf_hash(first.body).hex()
    assert audit_file(path, keys.trusted).ok


def test_a_log_is_written_only_with_its_own_current_key(tmp_path: Path) -> None:
    keys = Keys.generate()
    path = tmp_path / "events.db"
    with open_new_log(path, keys) as log:
        log.rotate_key(keys.spare, keys.vouch(keys.spare))
    with pytest.raises(ConfigError, match="signed by key"):
        EventLog(path, keys.node)
    with EventLog(path, keys.spare) as log:
        log.append(STARTED)
    with pytest.raises(ConfigError, match="belongs to"):
        EventLog(path, keys.other_node)
    assert audit_file(path, keys.trusted).ok


def test_a_rotation_needs_a_record_for_the_new_key(tmp_path: Path) -> None:
    keys = Keys.generate()
    with open_new_log(tmp_path / "events.db", keys) as log:
        with pytest.raises(ConfigError, match="does not vouch"):
            log.rotate_key(keys.spare, keys.vouch(keys.node))
        with pytest.raises(ConfigError, match="cannot rotate"):
            log.rotate_key(keys.other_node, keys.vouch(keys.other_node))


def test_a_genesis_is_written_once(tmp_path: Path) -> None:
    keys = Keys.generate()
    with (
        open_new_log(tmp_path / "events.db", keys) as log,
        pytest.raises(LogConflictError, match="already initialized"),
    ):
        log.initialize("hereon", keys.site.sign_public, keys.vouch(keys.node))


def test_checkpoints_are_appended_every_n_events_and_cover_the_events_before(
    tmp_path: Path,
) -> None:
    built = build_log(tmp_path, requests=8)
    with EventLog.open_readonly(built.db) as log:
        events = list(log.events())
        head = log.head()
    checkpoints = [e for e in events if e.type == "checkpoint"]
    assert len(checkpoints) == len(built.receipts) >= 2
    assert head == built.receipts[-1]
    for ev in checkpoints:
        assert ev.parsed()["seq"] > 1


@pytest.mark.parametrize("synchronous", ["normal", "full"])
def test_both_durability_levels_write_the_same_kind_of_log(
    tmp_path: Path, synchronous: str
) -> None:
    keys = Keys.generate()
    path = tmp_path / "events.db"
    with EventLog(path, keys.node, synchronous=synchronous) as log:  # type: ignore[arg-type]
        log.initialize("hereon", keys.site.sign_public, keys.vouch(keys.node))
        log.append(STARTED)
        (mode,) = log.db.execute("PRAGMA synchronous").fetchone()
        (journal,) = log.db.execute("PRAGMA journal_mode").fetchone()
    assert mode == {"normal": 1, "full": 2}[synchronous]
    assert journal == "wal"
    assert audit_file(path, keys.trusted).ok


def test_rebuilt_projections_equal_the_incremental_ones(tmp_path: Path) -> None:
    keys = Keys.generate()
    path = tmp_path / "events.db"
    fates = ["completed", "failed", "rejected", "open", "completed"]
    with open_new_log(path, keys) as log:
        log.append(STARTED)
        for i, fate in enumerate(fates):
            log.append_many(request_events(f"req{i:05d}", fate))
        query = "SELECT * FROM requests ORDER BY request_id"
        incremental = log.db.execute(query).fetchall()
        assert log.rebuild_projections() == log.size
        rebuilt = log.db.execute(query).fetchall()
    assert len(incremental) == len(fates)
    assert rebuilt == incremental
    states = {row[0]: row[3] for row in rebuilt}
    assert states == {
        "req00000": "completed",
        "req00001": "failed",
        "req00002": "rejected",
        "req00003": "running",
        "req00004": "completed",
    }


def test_a_closed_log_refuses_appends_and_closing_twice_is_harmless(tmp_path: Path) -> None:
    log = open_new_log(tmp_path / "events.db", Keys.generate())
    log.close()
    log.close()
    with pytest.raises(LogConflictError, match="closed"):
        log.append(STARTED)


def test_a_read_only_log_cannot_append(db: Path) -> None:
    with EventLog.open_readonly(db) as log, pytest.raises(LogConflictError, match="read-only"):
        log.append(STARTED)


def test_a_database_with_text_where_blobs_belong_is_unreadable(tmp_path: Path) -> None:
    from hub.logfile import LogUnreadableError, iter_sqlite

    path = tmp_path / "forged.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, hash, sig, body)")
    conn.execute("INSERT INTO events VALUES (1, '00', 'sig', '{}')")
    conn.commit()
    conn.close()
    with pytest.raises(LogUnreadableError, match="BLOBs"):
        list(iter_sqlite(path))


_texts = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
_flat = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | _texts


@settings(max_examples=200, deadline=None)
@given(
    data=st.dictionaries(_texts, _flat | st.lists(_flat, max_size=3), max_size=6),
    kind=_texts,
    kid=_texts,
    log_id=_texts,
    time=_texts,
    seq=st.integers(1, 2**63 - 1),
    prev=st.binary(min_size=32, max_size=32),
)
def test_event_bodies_are_assembled_as_the_canonical_bytes_of_the_whole_event(
    data: dict[str, Any], kind: str, kid: str, log_id: str, time: str, seq: int, prev: bytes
) -> None:
    data = {**data, "type": kind}
    whole = {
        "v": 1,
        "log": log_id,
        "seq": seq,
        "prev": prev.hex(),
        "time": time,
        "type": kind,
        "kid": kid,
        "data": data,
    }
    head, time_type = _body_frame(kid, log_id, time)
    body = _event_body(
        canonical_bytes(data), head, prev.hex().encode(), seq, time_type, canonical_bytes(kind)
    )
    assert body == canonical_bytes(whole)


def _log_signed_by_processes(path: Path, keys: Keys) -> EventLog:
    log = EventLog(path, keys.node, checkpoint_every=16, sign_processes=True)
    log.initialize(SITE, keys.site.sign_public, keys.vouch(keys.node))
    return log


def test_large_batches_signed_by_worker_processes_audit_clean(tmp_path: Path) -> None:
    keys = Keys.generate()
    path = tmp_path / "events.db"
    with _log_signed_by_processes(path, keys) as log:
        log.append(STARTED)
        events = [e for i in range(60) for e in request_events(f"req{i:05d}")]
        stored = log.append_many(events)
        assert len(stored) >= len(events)
        workers = log._workers
        assert workers is not None and workers.usable
    assert audit_file(path, keys.trusted).ok


def test_a_signing_worker_that_dies_is_replaced_by_local_signing(tmp_path: Path) -> None:
    keys = Keys.generate()
    path = tmp_path / "events.db"
    with _log_signed_by_processes(path, keys) as log:
        log.append(STARTED)
        workers = log._workers
        assert workers is not None
        for proc in workers.procs:
            proc.kill()
            proc.wait()
        log.append_many([e for i in range(40) for e in request_events(f"req{i:05d}")])
        assert not workers.usable
    report = audit_file(path, keys.trusted)
    assert report.ok, [f.line() for f in report.findings]


_FORGETFUL_WORKER = """
import os, sys
read, out = sys.stdin.buffer.read, os.fdopen(int(sys.argv[1]), "wb")
read(32)
while len(head := read(4)) == 4:
    n = int.from_bytes(head, "little")
    read(32 * n)
    out.write(bytes(64 * n))
    out.flush()
"""


def test_a_signing_worker_that_answers_nonsense_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import node.eventlog

    monkeypatch.setattr(node.eventlog, "_SIGN_WORKER", _FORGETFUL_WORKER)
    keys = Keys.generate()
    path = tmp_path / "events.db"
    with _log_signed_by_processes(path, keys) as log:
        log.append(STARTED)
        log.append_many([e for i in range(20) for e in request_events(f"req{i:05d}")])
    report = audit_file(path, keys.trusted)
    assert report.ok, [f.line() for f in report.findings]


def test_the_wal_is_checkpointed_off_the_appending_thread_and_stops_with_the_log(
    tmp_path: Path,
) -> None:
    keys = Keys.generate()
    path = tmp_path / "events.db"
    log = open_new_log(path, keys, checkpoint_every=100_000)
    log.append(STARTED)
    log.append_many([e for i in range(700) for e in request_events(f"req{i:05d}")])
    checkpointer = log._wal
    assert checkpointer is not None and checkpointer.thread.is_alive()
    log.close()
    assert not checkpointer.thread.is_alive()
    with EventLog(path, keys.node) as reopened:
        assert reopened.size == log.size
    assert audit_file(path, keys.trusted).ok
