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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
from pydantic import PrivateAttr

from hub.events import RequestAccepted
from hub.lifecycle import RequestState, target

__all__ = ["AcceptedCall", "apply", "apply_many", "create", "drop", "request_status"]

# who asked for what, and for how long a kept result (caller, address, keep_for)
_Asked = tuple[str | None, str | None, int | None]


class AcceptedCall(RequestAccepted):
    """``request.accepted`` as the node logs a call it has verified: the same event and
    body, also holding who asked for what (read from the verified header), so that the
    projection does not decode the header a second time (~3 us a call; a rebuild from the
    log decodes it)."""

    _who: _Asked | None = PrivateAttr(default=None)

    @classmethod
    def of(cls, caller: str, address: str, keep_for: int | None, **fields: Any) -> AcceptedCall:
        """The event with ``fields``, from a header naming ``caller``, ``address`` and
        ``keep_for``."""
        event = cls(**fields)
        event._who = (caller, address, keep_for)
        return event

    @property
    def who(self) -> _Asked | None:
        """(caller, address, keep_for) as the header names them, when built by :meth:`of`."""
        # straight from pydantic's store: ``self._who`` goes through BaseModel.__getattr__
        # (~2 us, more than the header decode this saves)
        private = self.__pydantic_private__
        return private.get("_who") if private else None


_REQUESTS = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT NOT NULL UNIQUE,
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
)"""
_DDL = (
    _REQUESTS
    + """;
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
"""
)
# The requests table is keyed by SQLite's integer rowid, given in arrival order: a
# request's row is written at the right edge of the table's B-tree (a few pages per
# commit), and only the narrow UNIQUE index on the random request id takes random pages.
# Keyed by the id itself (``WITHOUT ROWID``, the shape of earlier releases: migrated by
# :func:`create`), every row landed on a random page and a commit of 128 calls dirtied
# ~100 pages of 16 KiB. No index by state: a partial index of unfinished states cost
# ~2 us per event to keep up, and the queries that count them bind the states as
# parameters, which a partial index cannot serve (they scan, as they did before).
_DROPPED_INDEXES = ("requests_unfinished", "requests_state")
_COPIED = (
    "request_id, caller, address, state, code, reason, received_seq, updated_seq,"
    " received_time, updated_time, attempts, progress_ppm, result_hash, result_object,"
    " result_size, keep_for"
)
_S = RequestState
# Types whose every legal step leads to one state (from the lifecycle table).
_STATE_BY_TYPE = {
    kind: state
    for kind in ("request.started", "request.completed", "request.failed")
    if (state := target(kind)) is not None
}


def create(conn: sqlite3.Connection) -> None:
    """Create the projection tables if missing, and bring those of earlier releases to
    today's shape (inside the caller's transaction, if any: ``executescript`` would commit
    it first; a savepoint otherwise makes the migration atomic)."""
    conn.execute("SAVEPOINT projections_create")
    try:
        _migrate_requests(conn)
        for statement in _DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
        for name in _DROPPED_INDEXES:
            conn.execute(f"DROP INDEX IF EXISTS {name}")
    except BaseException:
        conn.execute("ROLLBACK TO projections_create")
        conn.execute("RELEASE projections_create")
        raise
    conn.execute("RELEASE projections_create")


def _migrate_requests(conn: sqlite3.Connection) -> None:
    """A ``requests`` table of an earlier release: without ``result_size`` or ``keep_for``
    (added), or keyed by the request id (``WITHOUT ROWID``: copied, in arrival order,
    into a table of today's shape)."""
    row = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'requests'"
    ).fetchone()
    if row is None:
        return
    columns = {c[1] for c in conn.execute("PRAGMA table_info(requests)")}
    if "result_size" not in columns:  # a log made before results had sizes here
        conn.execute("ALTER TABLE requests ADD COLUMN result_size INTEGER")
    if "keep_for" not in columns:  # a log made before callers asked for keep-for times
        conn.execute("ALTER TABLE requests ADD COLUMN keep_for INTEGER")
    if "WITHOUT ROWID" not in row[0].upper():
        return
    conn.execute("DROP TABLE IF EXISTS requests_migrated")
    conn.execute(_REQUESTS.replace("IF NOT EXISTS requests", "requests_migrated", 1))
    conn.execute(
        f"INSERT INTO requests_migrated({_COPIED})"  # noqa: S608 (constants)
        f" SELECT {_COPIED} FROM requests"
        " ORDER BY COALESCE(received_seq, updated_seq), request_id"
    )
    conn.execute("DROP TABLE requests")  # its indexes go with it
    conn.execute("ALTER TABLE requests_migrated RENAME TO requests")


def drop(conn: sqlite3.Connection) -> None:
    """Drop the projection tables."""
    conn.execute("DROP TABLE IF EXISTS requests")
    conn.execute("DROP TABLE IF EXISTS result_shares")
    conn.execute("DROP TABLE IF EXISTS result_tags")
    conn.execute("DROP TABLE IF EXISTS result_keep")


def apply(conn: sqlite3.Connection, seq: int, time: str, data: dict[str, Any]) -> None:
    """Fold one event (its ``data``) into the projections."""
    apply_many(conn, [(seq, time, data)])


def apply_many(
    conn: sqlite3.Connection,
    events: list[tuple[int, str, dict[str, Any]]],
    who: Mapping[str, _Asked] | None = None,
) -> None:
    """Fold events in order, with one executemany per statement and wave. ``who``: the
    caller, address and keep time of accepted requests, by id, as the appender read them from the
    verified header (:class:`AcceptedCall`); the others' are read from the event.

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
    known = who or {}
    for seq, time, data in events:
        build = statement(data["type"])
        if build is None:
            continue
        stmt = build(seq, time, data, known)
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
# ``_Asked`` by request id, as the appender already knows it (see AcceptedCall)
_Who = Mapping[str, _Asked]


def _received(seq: int, time: str, data: dict[str, Any], who: _Who) -> _Statement:
    caller, address, _ = _asked(data)
    state = _S.RECEIVED
    return _FIRST, [data["request_id"], caller, address, state, seq, seq, time, time, 0, None]


def _accepted(seq: int, time: str, data: dict[str, Any], who: _Who) -> _Statement:
    if "header" not in data:  # version 1: after request.received
        return _ACCEPTED_V1, [_S.ACCEPTED, seq, time, data["request_id"]]
    rid = data["request_id"]
    caller, address, keep = who.get(rid) or _asked(data)
    return _FIRST, [rid, caller, address, _S.ACCEPTED, seq, seq, time, time, 1, keep]


def _rejected(seq: int, time: str, data: dict[str, Any], who: _Who) -> _Statement:
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


def _started(seq: int, time: str, data: dict[str, Any], who: _Who) -> _Statement:
    state = _STATE_BY_TYPE["request.started"]
    return _STARTED, [state, seq, time, data.get("attempt", 1), data["request_id"]]


def _completed(seq: int, time: str, data: dict[str, Any], who: _Who) -> _Statement:
    state = _STATE_BY_TYPE["request.completed"]
    result = [data["result_hash"], data["result_size"]]
    kept = data.get("object")
    if kept is None:
        return _COMPLETED, [state, seq, time, *result, data["request_id"]]
    return _COMPLETED_KEPT, [state, seq, time, *result, kept, data["request_id"]]


def _failed(seq: int, time: str, data: dict[str, Any], who: _Who) -> _Statement:
    state = _STATE_BY_TYPE["request.failed"]
    return _FAILED, [state, seq, time, data["code"], data["reason"], data["request_id"]]


def _progress(seq: int, time: str, data: dict[str, Any], who: _Who) -> _Statement:
    return _PROGRESS, [data.get("fraction_ppm"), seq, time, data["request_id"]]


def _stored(seq: int, time: str, data: dict[str, Any], who: _Who) -> _Statement:  # version 1
    return _STORED_V1, [data["object"], data["request_id"]]


def _lost(seq: int, time: str, data: dict[str, Any], who: _Who) -> _Statement:
    return _LOST, [f"result not kept: {data['reason']}", data["request_id"]]


def _shared(seq: int, time: str, data: dict[str, Any], who: _Who) -> _Statement:
    if not (data.get("principal") and data.get("key_wraps")):
        return None
    wraps = orjson.dumps(dict(zip(data["recipients"], data["key_wraps"], strict=True)))
    return _SHARED, [data["request_id"], data["principal"], data["by"], wraps.decode(), seq]


def _tagged(seq: int, time: str, data: dict[str, Any], who: _Who) -> _Statement:
    tags = orjson.dumps(list(data["tags"])).decode()
    return _TAGGED, [data["request_id"], data["scope"], tags]


def _keep_shortened(seq: int, time: str, data: dict[str, Any], who: _Who) -> _Statement:
    return _KEEP, [data["request_id"], data["keep_for"]]


def _unshared(seq: int, time: str, data: dict[str, Any], who: _Who) -> _Statement:
    return _UNSHARED, [data["request_id"], data["principal"]]


def _removed(seq: int, time: str, data: dict[str, Any], who: _Who) -> _Statement:
    why = data.get("reason") or f"removed by {data.get('by')}"
    return _REMOVED, [target(data["type"]), why, seq, time, data["request_id"]]


# What each event type does to its request's row (types not here leave it as it is).
_STATEMENTS: dict[str, Callable[[int, str, dict[str, Any], _Who], _Statement]] = {
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


def _asked(data: dict[str, Any]) -> _Asked:
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
