"""A node database written by the release before the integer-keyed request projection
(committed, never regenerated) still audits clean, and a node of this release brings its
projection to today's shape without touching an event."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from hub.audit import audit_events
from hub.events import RequestCompleted
from hub.keys import KeyPair, load_public_file
from hub.logfile import iter_log
from node.eventlog import EventLog

V2 = Path(__file__).resolve().parents[1] / "fixtures" / "logs" / "v2"
_ROWS = "SELECT * FROM requests ORDER BY request_id"


@pytest.fixture
def v2_copy(tmp_path: Path) -> Path:
    """The fixture folder copied (a node rewrites the projection of a database it opens)."""
    folder = tmp_path / "v2"
    shutil.copytree(V2, folder)
    return folder


def _pinned(folder: Path) -> dict[str, bytes]:
    site = load_public_file(folder / "site-hereon.pub")
    return {site.identity.removeprefix("site:"): site.sign_key}


def _node_key(folder: Path) -> KeyPair:
    return KeyPair.from_file_json(json.loads((folder / "node-key.json").read_text()))


def _schema(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT name, sql FROM sqlite_master"))
    finally:
        conn.close()


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("name", ["events.db", "events.jsonl"])
def test_the_v2_fixture_audits_clean(v2_copy: Path, name: str) -> None:
    report = audit_events(iter_log(v2_copy / name), trusted_sites=_pinned(v2_copy), threads=1)
    assert report.ok, report.first.line() if report.first else ""
    assert report.events == len((V2 / "events.jsonl").read_bytes().splitlines())


def test_the_fixture_has_the_projection_of_its_release() -> None:
    schema = _schema(V2 / "events.db")
    assert "WITHOUT ROWID" in schema["requests"]
    assert "requests_unfinished" in schema


def test_a_node_opening_the_old_database_migrates_the_projection_and_keeps_every_row(
    v2_copy: Path,
) -> None:
    db = v2_copy / "events.db"
    before = _rows(db, _ROWS)
    events_before = _rows(db, "SELECT seq, hash, sig, body FROM events ORDER BY seq")
    key = _node_key(v2_copy)
    with EventLog(db, key) as log:
        pass
    schema = _schema(db)
    assert "WITHOUT ROWID" not in schema["requests"]
    assert "requests_unfinished" not in schema
    assert "requests_by_caller" in schema
    # every row as it was, with the keep time its release did not record yet
    migrated = [(*row, None) for row in before]
    assert _rows(db, _ROWS) == migrated
    assert {state for (state,) in _rows(db, "SELECT state FROM requests")} >= {
        "accepted",
        "completed",
        "failed",
        "rejected",
    }
    assert _rows(db, "SELECT seq, hash, sig, body FROM events ORDER BY seq") == events_before
    # rows are numbered in the order the requests arrived
    order = _rows(db, "SELECT COALESCE(received_seq, updated_seq) FROM requests ORDER BY rowid")
    assert order == sorted(order)
    with EventLog(db, key) as log:  # a second opening leaves it as it is
        assert log.rebuild_projections() == log.size
    assert _rows(db, _ROWS) == migrated


def test_the_migrated_database_goes_on_appending_and_audits_clean(v2_copy: Path) -> None:
    db = v2_copy / "events.db"
    key = _node_key(v2_copy)
    (open_rid,) = _rows(db, "SELECT request_id FROM requests WHERE state = 'accepted' LIMIT 1")
    with EventLog(db, key) as log:
        log.append(
            RequestCompleted(
                request_id=str(open_rid[0]), result_hash="ab" * 32, result_size=3, duration_us=1
            )
        )
        incremental = _rows(db, _ROWS)
        assert log.rebuild_projections() == log.size
    assert _rows(db, _ROWS) == incremental
    (state,) = _rows(db, f"SELECT state FROM requests WHERE request_id = '{open_rid[0]}'")
    assert state == ("completed",)
    report = audit_events(iter_log(db), trusted_sites=_pinned(v2_copy), threads=1)
    assert report.ok, report.first.line() if report.first else ""
