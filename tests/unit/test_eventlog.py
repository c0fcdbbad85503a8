"""The node's SQLite event log: append-only in the database itself, one signature per commit,
a chain across reopens (a version 1 log goes on in version 2), projections that can be
rebuilt, and a rotatable signing key.

Logs are checked here with :func:`helpers.logs.commit_problems` (hashes, chain, commit
signatures); that the same logs audit clean is in test_eventlog_audit.py."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers.logs import (
    Keys,
    audit_file,
    build_log,
    commit_problems,
    open_new_log,
    request_events,
    signed_header,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from hub.canonical import b64d, b64e, canonical_bytes
from hub.chain import leaf_hash
from hub.crypto import verify
from hub.errors import CanonicalError, ConfigError, LogConflictError
from hub.events import (
    DOMAIN_COMMIT,
    EVENT_TYPES,
    CheckpointConflict,
    CheckpointCosigned,
    GrantAdded,
    GrantRecorded,
    GrantRemoved,
    GroupUpdated,
    KeyRegistered,
    KeyRevoked,
    KeyRotated,
    NodeStarted,
    NodeStopped,
    RequestAccepted,
    RequestCompleted,
    RequestReceived,
    RequestRejected,
    RequestStarted,
    ResultDeleted,
    ResultExpired,
    ResultKeepShortened,
    ResultLost,
    ResultShared,
    ResultSliced,
    ResultStored,
    ResultTagged,
    ResultUnshared,
)
from hub.keys import KeyPair, PublicKeys
from hub.records import Checkpoint, Cosignature, GrantRecord, GroupRecord, KeyRecord, sign_record
from node.eventlog import EventLog, _body_frame, _dump, _event_body
from node.projections import AcceptedCall

STARTED = NodeStarted(version="0.1.0", pid=1)
INSERT = "INSERT INTO events(seq, hash, sig, body, type)"


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
        f"{INSERT} VALUES (100, x'', x'', x'', 't')",
        f"{INSERT} VALUES (3, x'', x'', x'', 't')",
    ],
)
def test_the_database_refuses_to_change_or_skip_events(db: Path, sql: str) -> None:
    conn = sqlite3.connect(db)
    try:
        with pytest.raises(sqlite3.DatabaseError, match=r"fedhub event log|UNIQUE"):
            conn.execute(sql)
    finally:
        conn.close()


def test_a_statement_that_inserts_several_events_and_skips_one_leaves_no_gap(
    db: Path,
) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        (size,) = conn.execute("SELECT MAX(seq) FROM events").fetchone()
        conn.execute("BEGIN")
        with pytest.raises(sqlite3.DatabaseError, match="seq must be the next one"):
            conn.execute(
                f"{INSERT} SELECT seq, x'', x'', x'', 't' FROM"
                " (SELECT ? AS seq UNION ALL SELECT ? UNION ALL SELECT ?) ORDER BY seq",
                [size + 1, size + 2, size + 4],
            )
        count, first, last = conn.execute(
            "SELECT COUNT(*), MIN(seq), MAX(seq) FROM events"
        ).fetchone()
        assert (first, count) == (1, last)
        assert last <= size + 2
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@pytest.mark.parametrize("column", ["hash", "sig", "body", "type"])
def test_the_database_refuses_an_event_without_a_column(db: Path, column: str) -> None:
    conn = sqlite3.connect(db)
    try:
        (size,) = conn.execute("SELECT MAX(seq) FROM events").fetchone()
        values = {"hash": b"", "sig": b"", "body": b"", "type": "t", column: None}
        with pytest.raises(sqlite3.IntegrityError, match="NOT NULL"):
            conn.execute(f"{INSERT} VALUES (?, ?, ?, ?, ?)", [size + 1, *values.values()])
        assert conn.execute("SELECT MAX(seq) FROM events").fetchone() == (size,)
    finally:
        conn.rollback()
        conn.close()


def test_the_database_accepts_only_the_next_sequence_number(db: Path) -> None:
    conn = sqlite3.connect(db)
    try:
        (size,) = conn.execute("SELECT MAX(seq) FROM events").fetchone()
        conn.execute(
            f"{INSERT} VALUES (?, x'', x'', x'', 't')",
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
    assert commit_problems(path, [keys.node]) == []


def test_a_clock_that_steps_back_never_dates_an_event_before_the_last_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node wrote while its clock ran an hour ahead; set right, it steps back, in the
    same process and after a restart: events and checkpoints keep the last time, so the
    honest log still audits clean (time never goes back)."""
    keys = Keys.generate()
    path = tmp_path / "events.db"
    ahead = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()[:26] + "Z"
    with open_new_log(path, keys) as log:
        monkeypatch.setattr("node.eventlog.now", lambda: ahead)
        log.append_many([STARTED, *request_events("req00001")])
        monkeypatch.undo()  # the clock is set right: it steps back an hour
        log.append_many([*request_events("req00002"), NodeStopped()])
        log.checkpoint()
    with EventLog(path, keys.node) as log:
        log.append_many([STARTED, *request_events("req00003"), NodeStopped()])
        log.checkpoint()
        times = [ev.parsed()["time"] for ev in log.events()]
    assert times == sorted(times) and times[-1] == ahead
    report = audit_file(path, keys.trusted)
    assert report.ok, [f.line() for f in report.findings]


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
    assert commit_problems(path, [keys.node, keys.spare]) == []


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
    assert commit_problems(path, [keys.node]) == []


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


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            signed_header("req00001", caller="anna@geomar"),
            ("anna@geomar", "hereon.climate.compute_sum"),
        ),
        ("bm90IGpzb24", (None, None)),  # base64 of "not json"
        ("a", (None, None)),  # not whole base64
        (b64e(canonical_bytes(["a", "list"])), (None, None)),
        (b64e(canonical_bytes({"caller": "anna@geomar"})), (None, None)),  # no address
    ],
)
def test_the_projection_reads_caller_and_address_from_the_accepted_header_or_leaves_them_unknown(
    tmp_path: Path, header: str, expected: tuple[str | None, str | None]
) -> None:
    with open_new_log(tmp_path / "events.db", Keys.generate()) as log:
        log.append(RequestAccepted(request_id="req00001", header=header, sig="c2ln"))
        row = log.db.execute(
            "SELECT caller, address, state FROM requests WHERE request_id = 'req00001'"
        ).fetchone()
    assert (row[0], row[1]) == expected
    assert row[2] == "accepted"


def test_a_call_logged_with_its_caller_known_projects_as_a_rebuild_from_its_header_does(
    tmp_path: Path,
) -> None:
    asked = {**json.loads(b64d(signed_header("req00001", caller="anna@geomar"))), "keep_for": 60}
    header = b64e(canonical_bytes(asked))
    with open_new_log(tmp_path / "events.db", Keys.generate()) as log:
        log.append_many(
            [
                AcceptedCall.of(
                    "anna@geomar",
                    "hereon.climate.compute_sum",
                    60,
                    request_id="req00001",
                    header=header,
                    sig="c2ln",
                ),
                RequestAccepted(request_id="req00002", header=header, sig="c2ln"),
            ]
        )
        query = "SELECT * FROM requests ORDER BY request_id"
        incremental = log.db.execute(query).fetchall()
        log.rebuild_projections()
        assert log.db.execute(query).fetchall() == incremental
        stored = list(log.events())
    assert incremental[0][1:3] == ("anna@geomar", "hereon.climate.compute_sum")
    assert incremental[0][-1] == incremental[1][-1] == 60  # keep_for
    # the event is a request.accepted like any other: the hint is not in its body
    first, second = (ev.parsed()["data"] for ev in stored[-2:])
    assert first == {**second, "request_id": "req00001"}


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
        "v": 2,
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
    assert commit_problems(path, [keys.node]) == []


# --- version 2: one signature per commit --------------------------------------------------


def test_only_the_last_event_of_a_commit_is_signed_over_the_commit_domain(
    tmp_path: Path,
) -> None:
    keys = Keys.generate()
    with open_new_log(tmp_path / "events.db", keys, checkpoint_every=1000) as log:
        stored = log.append_many([STARTED, *request_events("req00001")])
    assert [ev.signed for ev in stored] == [False] * (len(stored) - 1) + [True]
    assert all(ev.sig == b"" for ev in stored[:-1])
    assert all(ev.parsed()["v"] == 2 for ev in stored)
    verify(keys.node.sign_public, DOMAIN_COMMIT, stored[-1].hash, stored[-1].sig)
    assert commit_problems(tmp_path / "events.db", [keys.node]) == []


def test_a_large_batch_is_one_commit_with_one_signature(tmp_path: Path) -> None:
    keys = Keys.generate()
    path = tmp_path / "events.db"
    events = [e for i in range(300) for e in request_events(f"req{i:05d}")]
    with open_new_log(path, keys, checkpoint_every=100_000) as log:
        stored = log.append_many(events)
    assert len(stored) == len(events)
    assert sum(ev.signed for ev in stored) == 1
    assert stored[-1].signed
    assert commit_problems(path, [keys.node]) == []


def test_a_due_checkpoint_is_a_signed_commit_of_its_own_after_the_signed_batch(
    tmp_path: Path,
) -> None:
    keys = Keys.generate()
    with open_new_log(tmp_path / "events.db", keys, checkpoint_every=4) as log:
        stored = log.append_many([STARTED, *request_events("req00001")])
    assert stored[-1].type == "checkpoint"
    assert stored[-1].signed and stored[-2].signed
    assert not any(ev.signed for ev in stored[:-2])
    assert stored[-1].parsed()["data"]["checkpoint"]["record"]
    assert commit_problems(tmp_path / "events.db", [keys.node]) == []


def test_a_rotation_is_signed_by_the_old_key_and_what_follows_by_the_new(
    tmp_path: Path,
) -> None:
    keys = Keys.generate()
    path = tmp_path / "events.db"
    with open_new_log(path, keys) as log:
        rotated = log.rotate_key(keys.spare, keys.vouch(keys.spare))
        after = log.append_many([STARTED, NodeStopped()])
    assert rotated.signed and rotated.parsed()["kid"] == keys.node.kid
    verify(keys.node.sign_public, DOMAIN_COMMIT, rotated.hash, rotated.sig)
    assert [ev.parsed()["kid"] for ev in after] == [keys.spare.kid] * 2
    verify(keys.spare.sign_public, DOMAIN_COMMIT, after[-1].hash, after[-1].sig)
    assert commit_problems(path, [keys.node, keys.spare]) == []


def test_a_version_1_log_goes_on_with_version_2_events_in_the_same_chain(
    tmp_path: Path,
) -> None:
    v1 = Path(__file__).resolve().parents[1] / "fixtures" / "logs" / "v1"
    path = tmp_path / "events.db"
    shutil.copyfile(v1 / "events.db", path)
    node_key = KeyPair.from_file_json(json.loads((v1 / "node-key.json").read_text()))
    with EventLog.open_readonly(path) as before:
        old = list(before.events())
    with EventLog(path, node_key) as log:
        new = log.append_many([STARTED, *request_events("req00001"), NodeStopped()])
        log.checkpoint()
        indexes = {row[0] for row in log.db.execute("SELECT name FROM sqlite_master")}
    with EventLog.open_readonly(path) as after:
        events = list(after.events())
    assert events[: len(old)] == old  # nothing stored is rewritten
    assert {ev.parsed()["v"] for ev in old} == {1}
    assert {ev.parsed()["v"] for ev in events[len(old) :]} == {2}
    assert new[0].parsed()["prev"] == old[-1].hash.hex()
    assert "events_request" not in indexes
    genesis = KeyRecord.model_validate_json(b64d(old[0].parsed()["data"]["node_key"]["record"]))
    first_key = PublicKeys(genesis.identity, b64d(genesis.sign_key), b64d(genesis.box_key))
    assert commit_problems(path, [first_key, node_key]) == []


def test_the_export_writes_an_empty_signature_for_unsigned_events(tmp_path: Path) -> None:
    keys = Keys.generate()
    path = tmp_path / "events.db"
    with open_new_log(path, keys) as log:
        stored = log.append_many([STARTED, NodeStopped()])
    with EventLog.open_readonly(path) as ro:
        ro.export(tmp_path / "events.jsonl")
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    assert lines[-2] == b'{"hash":"%s","sig":"","event":%s}' % (
        stored[0].hash.hex().encode(),
        stored[0].body,
    )
    assert lines[-1].startswith(b'{"hash":"%s","sig":"' % stored[1].hash.hex().encode())
    assert len(json.loads(lines[-1])["sig"]) == 86


def test_events_of_one_request_are_found_without_an_index(tmp_path: Path) -> None:
    keys = Keys.generate()
    with open_new_log(tmp_path / "events.db", keys) as log:
        log.append_many(request_events("req00001")[:2])
        log.append_many(request_events("req00002"))
        log.append_many(request_events("req00001")[2:])
        found = log.events_for_request("req00001")
        assert log.events_for_request("unknown0") == []
    assert [ev.parsed()["data"]["request_id"] for ev in found] == ["req00001"] * len(found)
    assert [ev.type for ev in found] == [e.type for e in request_events("req00001")]


@settings(max_examples=30, deadline=None)
@given(st.permutations(range(12)), st.integers(1, 12))
def test_projections_of_interleaved_requests_do_not_depend_on_commit_sizes(
    tmp_path_factory: pytest.TempPathFactory, order: list[int], size: int
) -> None:
    """Several requests' events, interleaved (each request's own order kept), give the same
    projection whether appended one by one or in commits of ``size``."""
    fates = ["completed", "failed", "rejected", "open"]
    queues = [request_events(f"req{i:05d}", fates[i % 4]) for i in range(3)]
    stream = []
    for pick in order:
        queue = queues[pick % 3]
        if queue:
            stream.append(queue.pop(0))
    stream += [e for queue in queues for e in queue]
    rows = []
    for step in (1, size):
        folder = tmp_path_factory.mktemp("p")
        with open_new_log(folder / "events.db", Keys.generate(), checkpoint_every=1000) as log:
            for i in range(0, len(stream), step):
                log.append_many(stream[i : i + step])
            rows.append(
                log.db.execute(
                    "SELECT request_id, state, code, attempts, progress_ppm, result_hash,"
                    " result_object FROM requests ORDER BY request_id"
                ).fetchall()
            )
    assert rows[0] == rows[1]
    assert len(rows[0]) == 3


def _federation_events(keys: Keys) -> list[BaseModel]:
    """The version 2 types of the federation directory and of witnesses."""
    time = "2026-01-01T00:00:00.000000Z"
    grant = GrantRecord(
        site="hereon", principal="klaus@geomar", module="climate", serial=1, time=time
    )
    group = GroupRecord(
        group="group:anna@geomar/beamtime-1",
        owner="anna@geomar",
        members=("klaus@geomar",),
        serial=1,
        time=time,
    )
    cps = [
        sign_record(
            Checkpoint(
                log="node:geomar/n1",
                size=n,
                root=f"{n:02d}" * 32,
                time=time,
                kid=keys.other_node.kid,
            ),
            keys.other_node.signing_key,
        )
        for n in (3, 4)
    ]
    cosig = Cosignature(
        log="node:geomar/n1",
        size=3,
        root="03" * 32,
        checkpoint_time=time,
        witness="node:hereon/n1",
        time=time,
        kid=keys.node.kid,
    )
    return [
        GrantRecorded(record=sign_record(grant, keys.site.signing_key)),
        GroupUpdated(record=sign_record(group, keys.other_node.signing_key)),
        CheckpointCosigned(
            checkpoint=cps[0], cosignature=sign_record(cosig, keys.node.signing_key)
        ),
        CheckpointConflict(log="node:geomar/n1", reason="fork", earlier=cps[0], later=cps[1]),
    ]


def _every_event_type(keys: Keys) -> list[BaseModel]:
    events: list[BaseModel] = [
        STARTED,
        NodeStarted(version="0.2.0", pid=2, modules=("climate",), config_hash="ab" * 32),
        NodeStopped(reason="done"),
        *request_events("req00001"),
        *request_events("req00002", "failed"),
        *request_events("req00003", "rejected"),
        # version 1 types (request_events writes version 2 lifecycles): still encoded alike
        RequestReceived(
            request_id="req00005",
            caller="klaus@geomar",
            address="hereon.climate.compute_sum",
            header="aGVhZGVy",
            sig="c2ln",
            nonce="bm9uY2U",
            payload_hash="ab" * 32,
            payload_size=12,
        ),
        ResultStored(
            request_id="req00005",
            object="results/req00005",
            size=9,
            ciphertext_hash="01" * 32,
            recipients=("0123456789abcdef0123",),
        ),
        RequestRejected(envelope_hash="cd" * 32, code="bad_signature", reason="forged"),
        RequestAccepted(
            request_id="req00004", header=signed_header("req00004"), sig="c2ln", delivery=2
        ),
        RequestStarted(request_id="req00004", attempt=2),
        RequestCompleted(
            request_id="req00004",
            result_hash="ef" * 32,
            result_size=9,
            duration_us=7,
            object="results/req00004",
        ),
        ResultLost(request_id="req00004", reason="store full"),
        ResultShared(
            request_id="req00004", by="klaus@geomar", recipients=("0123456789abcdef0123",)
        ),
        ResultShared(
            request_id="req00004",
            by="klaus@geomar",
            recipients=("0123456789abcdef0123",),
            principal="anna@geomar",
            key_wraps=("d3JhcA",),
        ),
        ResultUnshared(request_id="req00004", by="klaus@geomar", principal="anna@geomar"),
        ResultTagged(request_id="req00004", by="klaus@geomar", scope="private", tags=("a", "b")),
        ResultKeepShortened(request_id="req00004", by="klaus@geomar", keep_for=86400),
        ResultSliced(
            request_id="req00004",
            by="klaus@geomar",
            part="layout",
            selection_hash="cd" * 32,
            size=512,
            sent_hash="ef" * 32,
        ),
        ResultDeleted(request_id="req00004", by="klaus@geomar"),
        ResultExpired(request_id="req00005", reason="kept for 30d"),
        GrantAdded(principal="klaus@geomar", module="climate", by="admin@hereon"),
        GrantRemoved(principal="klaus@geomar", module="climate", by="admin@hereon"),
        KeyRegistered(record=keys.vouch(keys.other_node)),
        KeyRotated(
            identity=keys.node.identity, old_kid=keys.node.kid, record=keys.vouch(keys.spare)
        ),
        KeyRevoked(revocation=keys.revoke(keys.node)),
        *_federation_events(keys),
    ]
    assert {e.type for e in events} | {"log.created", "checkpoint"} == EVENT_TYPES  # type: ignore[attr-defined]
    return events


def test_event_data_is_dumped_and_encoded_exactly_as_pydantic_and_canonical_bytes_do() -> None:
    for event in _every_event_type(Keys.generate()):
        data, encoded = _dump(event)
        assert data == event.model_dump(mode="json"), event
        assert encoded == canonical_bytes(event.model_dump(mode="json")), event


@pytest.mark.parametrize("size", [2**63, -(2**63) - 1])
def test_event_data_with_an_integer_beyond_64_bits_is_refused(tmp_path: Path, size: int) -> None:
    with open_new_log(tmp_path / "events.db", Keys.generate()) as log:
        with pytest.raises(CanonicalError, match="64-bit"):
            log.append(NodeStarted(version="0.2.0", pid=size))
        assert log.size == 1


def test_event_data_with_a_lone_surrogate_is_refused(tmp_path: Path) -> None:
    with open_new_log(tmp_path / "events.db", Keys.generate()) as log:
        with pytest.raises(CanonicalError, match="surrogate"):
            log.append(NodeStopped(reason="bad \ud800"))
        assert log.size == 1
