"""The projections of kept results are a cache of the log: an old log gains the new
column and tables when opened, and a rebuild from the events gives the same rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from node import projections

_OLD_REQUESTS = """
CREATE TABLE requests (
    request_id TEXT PRIMARY KEY, caller TEXT, address TEXT, state TEXT NOT NULL,
    code TEXT, reason TEXT, received_seq INTEGER, updated_seq INTEGER NOT NULL,
    received_time TEXT, updated_time TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    progress_ppm INTEGER, result_hash TEXT, result_object TEXT
) WITHOUT ROWID
"""
T = "2026-11-30T10:00:00.000000Z"
RID = "A" * 22


def _tables(conn: sqlite3.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {
        name: sorted(conn.execute(f"SELECT * FROM {name}").fetchall())
        for name in ("requests", "result_shares", "result_tags", "result_keep")
    }


def test_a_log_made_before_kept_results_had_sizes_gains_the_columns_and_tables(
    tmp_path: Path,
) -> None:
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    conn.execute(_OLD_REQUESTS)
    conn.execute(
        "INSERT INTO requests(request_id, state, updated_seq, updated_time) VALUES (?, ?, 1, ?)",
        [RID, "completed", T],
    )
    projections.create(conn)
    projections.create(conn)  # twice is harmless
    columns = [row[1] for row in conn.execute("PRAGMA table_info(requests)")]
    assert columns[-2:] == ["result_size", "keep_for"]
    rows = conn.execute("SELECT request_id, result_size, keep_for FROM requests").fetchall()
    assert rows == [(RID, None, None)]
    assert _tables(conn)["result_shares"] == []


def test_share_tag_keep_and_removal_rows_follow_the_events_and_rebuild_the_same(
    tmp_path: Path,
) -> None:
    events = [
        {
            "type": "request.completed",
            "request_id": RID,
            "result_hash": "ab" * 32,
            "result_size": 42,
            "duration_us": 1,
            "object": RID,
        },
        {
            "type": "result.shared",
            "request_id": RID,
            "by": "k@g",
            "recipients": ["0" * 20],
            "principal": "a@g",
            "key_wraps": ["d3JhcA"],
        },
        {
            "type": "result.shared",
            "request_id": RID,
            "by": "k@g",
            "recipients": ["1" * 20],
            "principal": "group:ocean",
            "key_wraps": ["eA"],
        },
        {"type": "result.unshared", "request_id": RID, "by": "k@g", "principal": "a@g"},
        {
            "type": "result.tagged",
            "request_id": RID,
            "by": "k@g",
            "scope": "private",
            "tags": ["x", "y"],
        },
        {"type": "result.keep_shortened", "request_id": RID, "by": "k@g", "keep_for": 60},
        {"type": "result.deleted", "request_id": RID, "by": "k@g"},
    ]
    conn = sqlite3.connect(tmp_path / "new.db", isolation_level=None)
    projections.create(conn)
    conn.execute(
        "INSERT INTO requests(request_id, caller, state, updated_seq, updated_time)"
        " VALUES (?, 'k@g', 'accepted', 1, ?)",
        [RID, T],
    )
    for seq, data in enumerate(events, start=2):
        projections.apply(conn, seq, T, data)
    one_by_one = _tables(conn)
    (row,) = conn.execute("SELECT state, result_size, result_object, reason FROM requests")
    assert row == ("deleted", 42, None, "removed by k@g")
    assert [(r[0], r[1]) for r in one_by_one["result_shares"]] == [(RID, "group:ocean")]
    assert one_by_one["result_tags"] == [(RID, "private", '["x","y"]')]
    assert one_by_one["result_keep"] == [(RID, 60)]
    conn.execute("DELETE FROM result_shares")
    conn.execute("DELETE FROM result_tags")
    conn.execute("DELETE FROM result_keep")
    conn.execute("UPDATE requests SET state = 'accepted', result_size = NULL, reason = NULL")
    projections.apply_many(conn, [(seq, T, d) for seq, d in enumerate(events, start=2)])
    assert _tables(conn)["result_shares"] == one_by_one["result_shares"]
    assert _tables(conn)["result_tags"] == one_by_one["result_tags"]
    assert _tables(conn)["result_keep"] == one_by_one["result_keep"]
