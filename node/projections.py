"""Projections: state derived from the event log, updated with it, rebuildable from it.

``requests`` holds one row per request id with its current state; ``result_shares`` one
row per share of a kept result (``result.shared`` until ``result.unshared``, with the
wrapped keys); ``result_tags`` the owner's tags of a result, per scope; ``result_keep``
how long an owner asked a result to be kept afterwards (``requests.keep_for``: when
calling). They are a cache
of the log, never the truth: ``fedhub-node log rebuild`` drops and replays them.
"""

from __future__ import annotations

import binascii
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from hub.lifecycle import UNFINISHED, RequestState, target

__all__ = ["apply", "apply_many", "create", "drop", "request_status"]

_DDL = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    caller TEXT,
    address TEXT,
    state TEXT NOT NULL,
    code TEXT,
    reason TEXT,
    received_seq INTEGER,
    updated_seq INTEGER NOT NULL,
    received_time TEXT,
    updated_time TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    progress_ppm INTEGER,
    result_hash TEXT,
    result_object TEXT,
    result_size INTEGER,
    keep_for INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS requests_by_caller ON requests(caller, received_time);
CREATE TABLE IF NOT EXISTS result_shares (
    request_id TEXT NOT NULL,
    principal TEXT NOT NULL,
    by TEXT NOT NULL,
    wraps TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (request_id, principal)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS result_tags (
    request_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    tags TEXT NOT NULL,
    PRIMARY KEY (request_id, scope)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS result_keep (
    request_id TEXT PRIMARY KEY,
    keep_for INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS requests_unfinished ON requests(state)
    WHERE state IN (%s);
"""

# Only requests still owed an outcome are indexed by state (a node counts them at start);
# an index of every request's state cost ~50 bytes a call for nothing.
_DDL %= ", ".join(f"'{state.value}'" for state in sorted(UNFINISHED))
_S = RequestState
# Types whose every legal step leads to one state (from the lifecycle table).
_STATE_BY_TYPE = {
    kind: state
    for kind in ("request.started", "request.completed", "request.failed")
    if (state := target(kind)) is not None
}


def create(conn: sqlite3.Connection) -> None:
    """Create the projection tables if missing (inside the caller's transaction, if any:
    ``executescript`` would commit it first)."""
    for statement in _DDL.split(";"):
        if statement.strip():
            conn.execute(statement)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    if "result_size" not in columns:  # a log made before results had sizes here
        conn.execute("ALTER TABLE requests ADD COLUMN result_size INTEGER")
    if "keep_for" not in columns:  # a log made before callers asked for keep-for times
        conn.execute("ALTER TABLE requests ADD COLUMN keep_for INTEGER")


def drop(conn: sqlite3.Connection) -> None:
    """Drop the projection tables."""
    conn.execute("DROP TABLE IF EXISTS requests")
    conn.execute("DROP TABLE IF EXISTS result_shares")
    conn.execute("DROP TABLE IF EXISTS result_tags")
    conn.execute("DROP TABLE IF EXISTS result_keep")


def apply(conn: sqlite3.Connection, seq: int, time: str, data: dict[str, Any]) -> None:
    """Fold one event (its ``data``) into the projections."""
    apply_many(conn, [(seq, time, data)])


def apply_many(conn: sqlite3.Connection, events: list[tuple[int, str, dict[str, Any]]]) -> None:
    """Fold events in order, with one executemany per statement and wave.

    Every statement touches only its own request's row, so only the order of events of the
    same request matters. An event's wave is the number of events of its request before it
    in ``events``: waves run in order; within a wave, each request appears at most once, so
    its statements are grouped by SQL text (a batch of calls, each ``request.accepted`` then
    ``request.completed``, is two executemany calls, not one per event).
    """
    first: dict[str, list[Any]] = {}  # wave 0, the common case: no dict per event
    later: list[dict[str, list[Any]]] = []
    seen: dict[str, int] = {}
    statement = _STATEMENTS.get
    for seq, time, data in events:
        build = statement(data["type"])
        if build is None:
            continue
        stmt = build(seq, time, data)
        if stmt is None:
            continue
        sql, params = stmt
        rid = data["request_id"]
        wave = seen.get(rid, 0)
        seen[rid] = wave + 1
        if wave == 0:
            runs = first.get(sql)
            if runs is None:
                first[sql] = [params]
            else:
                runs.append(params)
            continue
        if wave > len(later):
            later.append({})
        later[wave - 1].setdefault(sql, []).append(params)
    for wave_statements in (first, *later):
        for sql, runs in wave_statements.items():
            conn.executemany(sql, runs)


# The request's first event: version 1 ``request.received``, version 2 ``request.accepted``
# with the signed header (after a version 1 ``received`` of the same request, only the
# state moves on).
_FIRST = (
    "INSERT INTO requests(request_id, caller, address, state, received_seq,"
    " updated_seq, received_time, updated_time, attempts, keep_for)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(request_id) DO UPDATE SET state = excluded.state,"
    " updated_seq = excluded.updated_seq, updated_time = excluded.updated_time,"
    " attempts = MAX(attempts, excluded.attempts)"
)
_ACCEPTED_V1 = (
    "UPDATE requests SET state = ?, updated_seq = ?, updated_time = ? WHERE request_id = ?"
)
# a new request refused, or a version 1 request received and then refused; a refused copy
# of a known request leaves it as it is
_REJECTED = (
    "INSERT INTO requests(request_id, caller, state, code, reason, updated_seq,"
    " updated_time) VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(request_id) DO UPDATE SET"
    " state = CASE WHEN state = ? THEN excluded.state ELSE state END,"
    " code = CASE WHEN state = ? THEN excluded.code ELSE code END,"
    " reason = CASE WHEN state = ? THEN excluded.reason ELSE reason END,"
    " updated_seq = excluded.updated_seq, updated_time = excluded.updated_time"
)
# version 1 logs the first start too; version 2 only a retry (attempt >= 2)
_STARTED = (
    "UPDATE requests SET state = ?, updated_seq = ?, updated_time = ?, attempts = ?"
    " WHERE request_id = ?"
)
_COMPLETED = (
    "UPDATE requests SET state = ?, updated_seq = ?, updated_time = ?, result_hash = ?,"
    " result_size = ?, progress_ppm = 1000000 WHERE request_id = ?"
)
_COMPLETED_KEPT = (
    "UPDATE requests SET state = ?, updated_seq = ?, updated_time = ?, result_hash = ?,"
    " result_size = ?, progress_ppm = 1000000, result_object = ? WHERE request_id = ?"
)
_FAILED = (
    "UPDATE requests SET state = ?, updated_seq = ?, updated_time = ?, code = ?, reason = ?"
    " WHERE request_id = ?"
)
_PROGRESS = (
    "UPDATE requests SET progress_ppm = ?, updated_seq = ?, updated_time = ? WHERE request_id = ?"
)
_STORED_V1 = "UPDATE requests SET result_object = ? WHERE request_id = ?"
_LOST = "UPDATE requests SET result_object = NULL, reason = ? WHERE request_id = ?"
_SHARED = (
    "INSERT INTO result_shares(request_id, principal, by, wraps, seq)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT(request_id, principal) DO UPDATE SET"
    " by = excluded.by, wraps = excluded.wraps, seq = excluded.seq"
)
_TAGGED = (
    "INSERT INTO result_tags(request_id, scope, tags) VALUES (?, ?, ?)"
    " ON CONFLICT(request_id, scope) DO UPDATE SET tags = excluded.tags"
)
_KEEP = (
    "INSERT INTO result_keep(request_id, keep_for) VALUES (?, ?)"
    " ON CONFLICT(request_id) DO UPDATE SET keep_for = excluded.keep_for"
)
_UNSHARED = "DELETE FROM result_shares WHERE request_id = ? AND principal = ?"
# the result is gone (expired or deleted): the request's state says so
_REMOVED = (
    "UPDATE requests SET state = ?, result_object = NULL, reason = ?, updated_seq = ?,"
    " updated_time = ? WHERE request_id = ?"
)

_Statement = tuple[str, list[Any]] | None


def _received(seq: int, time: str, data: dict[str, Any]) -> _Statement:
    caller, address, _ = _asked(data)
    state = _S.RECEIVED
    return _FIRST, [data["request_id"], caller, address, state, seq, seq, time, time, 0, None]


def _accepted(seq: int, time: str, data: dict[str, Any]) -> _Statement:
    if "header" not in data:  # version 1: after request.received
        return _ACCEPTED_V1, [_S.ACCEPTED, seq, time, data["request_id"]]
    caller, address, keep = _asked(data)
    row = [data["request_id"], caller, address, _S.ACCEPTED, seq, seq, time, time, 1, keep]
    return _FIRST, row


def _rejected(seq: int, time: str, data: dict[str, Any]) -> _Statement:
    if not data.get("request_id"):
        return None
    received = _S.RECEIVED
    return _REJECTED, [
        data["request_id"],
        data.get("caller"),
        _S.REJECTED,
        data["code"],
        data["reason"],
        seq,
        time,
        received,
        received,
        received,
    ]


def _started(seq: int, time: str, data: dict[str, Any]) -> _Statement:
    state = _STATE_BY_TYPE["request.started"]
    return _STARTED, [state, seq, time, data.get("attempt", 1), data["request_id"]]


def _completed(seq: int, time: str, data: dict[str, Any]) -> _Statement:
    state = _STATE_BY_TYPE["request.completed"]
    result = [data["result_hash"], data["result_size"]]
    kept = data.get("object")
    if kept is None:
        return _COMPLETED, [state, seq, time, *result, data["request_id"]]
    return _COMPLETED_KEPT, [state, seq, time, *result, kept, data["request_id"]]


def _failed(seq: int, time: str, data: dict[str, Any]) -> _Statement:
    state = _STATE_BY_TYPE["request.failed"]
    return _FAILED, [state, seq, time, data["code"], data["reason"], data["request_id"]]


def _progress(seq: int, time: str, data: dict[str, Any]) -> _Statement:
    return _PROGRESS, [data.get("fraction_ppm"), seq, time, data["request_id"]]


def _stored(seq: int, time: str, data: dict[str, Any]) -> _Statement:  # version 1
    return _STORED_V1, [data["object"], data["request_id"]]


def _lost(seq: int, time: str, data: dict[str, Any]) -> _Statement:
    return _LOST, [f"result not kept: {data['reason']}", data["request_id"]]


def _shared(seq: int, time: str, data: dict[str, Any]) -> _Statement:
    if not (data.get("principal") and data.get("key_wraps")):
        return None
    wraps = orjson.dumps(dict(zip(data["recipients"], data["key_wraps"], strict=True)))
    return _SHARED, [data["request_id"], data["principal"], data["by"], wraps.decode(), seq]


def _tagged(seq: int, time: str, data: dict[str, Any]) -> _Statement:
    tags = orjson.dumps(list(data["tags"])).decode()
    return _TAGGED, [data["request_id"], data["scope"], tags]


def _keep_shortened(seq: int, time: str, data: dict[str, Any]) -> _Statement:
    return _KEEP, [data["request_id"], data["keep_for"]]


def _unshared(seq: int, time: str, data: dict[str, Any]) -> _Statement:
    return _UNSHARED, [data["request_id"], data["principal"]]


def _removed(seq: int, time: str, data: dict[str, Any]) -> _Statement:
    why = data.get("reason") or f"removed by {data.get('by')}"
    return _REMOVED, [target(data["type"]), why, seq, time, data["request_id"]]


# What each event type does to its request's row (types not here leave it as it is).
_STATEMENTS: dict[str, Callable[[int, str, dict[str, Any]], _Statement]] = {
    "request.received": _received,
    "request.accepted": _accepted,
    "request.rejected": _rejected,
    "request.started": _started,
    "request.completed": _completed,
    "request.failed": _failed,
    "request.progress": _progress,
    "result.stored": _stored,
    "result.shared": _shared,
    "result.tagged": _tagged,
    "result.keep_shortened": _keep_shortened,
    "result.unshared": _unshared,
    "result.expired": _removed,
    "result.deleted": _removed,
    "result.lost": _lost,
}


def _asked(data: dict[str, Any]) -> tuple[str | None, str | None, int | None]:
    """Who asked for what, and for how long a keep: version 1 ``request.received`` says
    who and what, version 2 ``request.accepted`` carries all three in the caller's signed
    header (which the node verified before logging it; a header that does not read leaves
    them unknown, and the audit names the event)."""
    if "caller" in data:
        return data["caller"], data["address"], None
    try:
        # a cache of what the log holds: the header was verified (as URL-safe base64 and
        # as JSON) before it was logged, so it is decoded here without a second check
        text = data["header"].encode("ascii")
        raw = binascii.a2b_base64(text.translate(_URLSAFE) + b"=" * (-len(text) % 4))
        header = orjson.loads(raw)
        address = f"{header['site']}.{header['module']}.{header['function']}"
        return header["caller"], address, header.get("keep_for")
    except (binascii.Error, ValueError, AttributeError, KeyError, TypeError):
        return None, None, None


_URLSAFE = bytes.maketrans(b"-_", b"+/")


def request_status(conn: sqlite3.Connection, request_id: str) -> dict[str, Any] | None:
    """The projected row of one request, or None."""
    cur = conn.execute("SELECT * FROM requests WHERE request_id = ?", [request_id])
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([c[0] for c in cur.description], row, strict=True))


def request_statuses(
    conn: sqlite3.Connection, request_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The projected rows of the requests among ``request_ids`` that the log has, by id
    (one query per 500 ids instead of one per request)."""
    found: dict[str, dict[str, Any]] = {}
    unique = list(dict.fromkeys(request_ids))
    for at in range(0, len(unique), 500):
        part = unique[at : at + 500]
        marks = ",".join("?" * len(part))  # placeholders only: the ids are bound
        cur = conn.execute(f"SELECT * FROM requests WHERE request_id IN ({marks})", part)  # noqa: S608
        names = [c[0] for c in cur.description]
        for row in cur:
            item = dict(zip(names, row, strict=True))
            found[item["request_id"]] = item
    return found
