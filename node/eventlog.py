"""The node's append-only, hash-chained event log in SQLite, signed once per commit.

* One log per node, id = the node identity (``node:hereon/n1``).
* Each event's body is canonical JSON (:mod:`hub.events`, version 2) carrying ``seq`` and
  ``prev`` (the hash of the previous body); the hash is ``leaf_hash(body)``.
* Appends are grouped into one transaction (a commit). The LAST event of every commit is
  signed by the node key over ``DOMAIN_COMMIT || hash``; the others are stored with an
  empty signature: the chain makes the signed event cover every event before it. A
  checkpoint and a rotation of the node key are commits of their own (so always signed).
* A version 1 log (every event signed over ``DOMAIN_EVENT``, written by an earlier release)
  opened here goes on with version 2 events in the same chain; stored bytes are never
  rewritten.
* SQLite in WAL mode. ``synchronous="normal"`` (the default): a committed event survives a
  crash of the process; a power loss may lose the last transactions (never corrupts the
  log) -- the trade JetStream makes by default. ``synchronous="full"``: a committed event
  also survives a power loss (one fsync per commit).
* The database itself refuses ``UPDATE`` and ``DELETE`` on events (triggers), and an insert
  whose ``seq`` is not the next one.
* Every ``checkpoint_every`` events (or on :meth:`EventLog.checkpoint`), a ``checkpoint``
  event carries a signed Merkle root over all events before it.
* Projections (request status) are updated in the same transaction and can be rebuilt.
* The node key can be rotated (:meth:`EventLog.rotate_key`): a ``key.rotated`` event, signed
  by the old key, carries the new key's record signed by the site; later events name and
  are signed by the new key.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from binascii import hexlify
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlite_utils
import structlog
from pydantic import BaseModel

from hub.canonical import b64d, b64e, canonical_bytes, canonical_flat, parse_canonical
from hub.chain import GENESIS_PREV, MerkleAccumulator, leaf_hash
from hub.clock import now
from hub.crypto import sign
from hub.errors import ConfigError, LogConflictError
from hub.events import DOMAIN_COMMIT, EVENT_VERSION, CheckpointData, KeyRotated, LogCreated
from hub.keys import KeyPair
from hub.logfile import export_line
from hub.records import Checkpoint, KeyRecord, SignedRecord, sign_record
from node import projections
from node.projections import AcceptedCall

__all__ = ["EventLog", "StoredEvent"]

log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Every refusal on an insert into events is FAIL, not ABORT: the refused row is never
-- written either way (each check runs before it is), but a statement that may ABORT makes
-- SQLite copy every page it touches into a statement journal first, a 16 KiB copy per
-- inserted event (~0.4 us); rows inserted before the refused one by the same statement
-- stay, and each of them was the next one. (Logs of earlier releases keep ABORT.)
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY ON CONFLICT FAIL,
    hash BLOB NOT NULL ON CONFLICT FAIL,
    sig BLOB NOT NULL ON CONFLICT FAIL,
    body BLOB NOT NULL ON CONFLICT FAIL,
    type TEXT NOT NULL ON CONFLICT FAIL
);
-- Logs of earlier releases also copy each body's time and request id into columns of
-- their own (and had an index on the request id); both are in the body, so new logs leave
-- them out (~100 bytes a call) and such files keep them, filled as before.
DROP INDEX IF EXISTS events_request;
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'fedhub event log is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'fedhub event log is append-only: DELETE refused'); END;
CREATE TRIGGER IF NOT EXISTS events_next_seq BEFORE INSERT ON events
WHEN NEW.seq != (SELECT IFNULL(MAX(seq), 0) + 1 FROM events)
BEGIN SELECT RAISE(FAIL, 'fedhub event log: seq must be the next one'); END;
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY, root TEXT NOT NULL, signed TEXT NOT NULL
);
"""


# WAL checkpoints: one after about this many appended events (~700 pages) by the
# checkpointer thread; the appending connection itself only past this many pages.
_WAL_EVERY_EVENTS = 4000
# The events table's columns; a log of an earlier release has all seven, a new one five.
_COLUMNS = ("seq", "hash", "sig", "body", "type", "time", "request_id")
# Page size of a new log's database (SQLite's default is 4096).
_PAGE_SIZE = 16384
_WAL_SAFETY_PAGES = 2000
# Page cache of the appending connection, KiB (allocated as used): the request projection
# of ~250,000 calls.
_CACHE_KIB = 64 * 1024


class _WalCheckpointer:
    """Copies the WAL back into the database on a thread of its own.

    SQLite's automatic checkpoint runs inside a commit, so every few thousand events one
    append would wait for a few thousand pages to be copied and synced. Here a thread with
    its own connection runs ``PRAGMA wal_checkpoint(PASSIVE)`` (which never blocks the
    writer or readers) after every ``_WAL_EVERY_EVENTS`` appended events; SQLite releases
    the GIL meanwhile, so appends go on. Nothing here decides durability: a commit is
    durable once it is in the WAL.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending = 0
        self.wake = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="eventlog-wal", daemon=True)
        self.thread.start()

    def appended(self, n: int) -> None:
        """Count appended events; wake the thread when a checkpoint is due."""
        self.pending += n
        if self.pending >= _WAL_EVERY_EVENTS:
            self.pending = 0
            self.wake.set()

    def close(self) -> None:
        """Stop the thread (harmless twice)."""
        self.stopping = True
        self.wake.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            log.warning("eventlog.wal_checkpointer_failed", error=str(exc))
            return
        try:
            while True:
                self.wake.wait()
                self.wake.clear()
                if self.stopping:
                    return
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    log.warning("eventlog.wal_checkpoint_failed", error=str(exc))
        finally:
            conn.close()


def _body_frame(kid: str, log_id: str, time: str) -> tuple[bytes, bytes]:
    """The constant parts of a batch's event bodies, around ``prev``'s value and ``seq``.

    A body is canonical JSON of ``{"v", "log", "seq", "prev", "time", "type", "kid",
    "data"}``; with its keys in order it reads ``{"data":D,"kid":K,"log":L,"prev":"P",
    "seq":S,"time":T,"type":Y,"v":2}``, so it is assembled from canonical pieces
    (:func:`_event_body`; the same bytes as :func:`canonical_bytes` of the whole).
    """
    head = b',"kid":' + canonical_bytes(kid) + b',"log":' + canonical_bytes(log_id) + b',"prev":"'
    return head, b',"time":' + canonical_bytes(time) + b',"type":'


_TAIL = b',"v":%d}' % EVENT_VERSION


def _event_body(
    data: bytes, head: bytes, prevhex: bytes, seq: int, time_type: bytes, kind: bytes
) -> bytes:
    """One event body from its canonical pieces (see :func:`_body_frame`)."""
    return b"".join(
        (b'{"data":', data, head, prevhex, b'","seq":', b"%d" % seq, time_type, kind, _TAIL)
    )


_SCALARS = frozenset({str, int, bool, type(None)})
# Per model class: None when model_dump is needed, else whether None values are left out.
_PLAIN: dict[type[BaseModel], bool | None] = {}


def _plain(cls: type[BaseModel]) -> bool | None:
    """Whether instances of ``cls`` dump to their field values as they are: no field or
    model serializer (but :mod:`hub.events`' ``_omit_none``), no alias, no computed or
    excluded field. The answer (True: None values are left out) is cached per class."""
    decorators = cls.__pydantic_decorators__
    serializers = set(decorators.model_serializers)
    plain = (
        not decorators.field_serializers
        and serializers <= {"_omit_none"}
        and not cls.model_computed_fields
        and all(
            f.alias is None and f.serialization_alias is None and not f.exclude
            for f in cls.model_fields.values()
        )
    )
    _PLAIN[cls] = omit_none = ("_omit_none" in serializers) if plain else None
    return omit_none


def _dump(model: BaseModel | dict[str, Any]) -> tuple[dict[str, Any], bytes]:
    """``model.model_dump(mode="json")`` and its canonical bytes (a dict, already dumped,
    is only encoded); without the serializer when every field of a plain class holds a
    JSON scalar (str, int, bool, None): the same dict at a third of the cost (tests
    compare the two for every event type), encoded by :func:`canonical_flat`."""
    if isinstance(model, dict):
        return model, canonical_bytes(model)
    cls = type(model)
    try:
        omit_none = _PLAIN[cls]
    except KeyError:
        omit_none = _plain(cls)
    if omit_none is not None:
        values = model.__dict__
        if _SCALARS.issuperset(map(type, values.values())):
            if omit_none:
                flat = {k: v for k, v in values.items() if v is not None}
            else:
                flat = values.copy()
            return flat, canonical_flat(flat)
    data = model.model_dump(mode="json")
    return data, canonical_bytes(data)


@dataclass(slots=True)
class StoredEvent:
    """An event as stored: its body bytes, hash and signature (``b""`` when the event is
    not the last of its commit: a later signed event covers it through the chain).

    Read-only by convention, not frozen: a frozen dataclass cost ~0.6 us an event to build
    (a quarter of the log's Python time per event).
    """

    seq: int
    hash: bytes
    sig: bytes
    body: bytes
    type: str

    @property
    def signed(self) -> bool:
        """Whether this event carries a signature of its own."""
        return bool(self.sig)

    def parsed(self) -> dict[str, Any]:
        """The body as a dict."""
        value: dict[str, Any] = parse_canonical(self.body)
        return value


class EventLog:
    """A node's event log. Thread-safe: appends are serialized by a lock.

    Open with the constructor (a key to append, or :meth:`open_readonly`); close with
    :meth:`close` (twice is harmless) or use as a context manager.
    """

    def __init__(
        self,
        path: Path,
        key: KeyPair | None,
        *,
        checkpoint_every: int = 1000,
        synchronous: Literal["normal", "full"] = "normal",
        log_id: str | None = None,
    ) -> None:
        self.path = path
        self._key = key
        self.readonly = key is None
        # One log per node process: the node identity, or ``<identity>#<n>`` for the n-th
        # process of the same node (horizontal scale on one durable consumer).
        self.log_id = log_id or (key.identity if key is not None else "")
        self.checkpoint_every = checkpoint_every
        self._lock = threading.RLock()
        self._closed = False
        try:
            if self.readonly:
                conn = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=ro",
                    uri=True,
                    check_same_thread=False,
                    isolation_level=None,
                )
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self.db = sqlite_utils.Database(conn)
            if not self.readonly:
                # Large pages for a new log: events are ~0.3-1.3 KB, and with 4 KiB pages
                # a third of each page went unused (no effect on an existing file).
                self.db.execute(f"PRAGMA page_size={_PAGE_SIZE}")
                self.db.execute("PRAGMA journal_mode=WAL")
                if synchronous not in ("normal", "full"):
                    raise ConfigError(f"synchronous must be normal or full, not {synchronous!r}")
                self.db.execute(f"PRAGMA synchronous={synchronous.upper()}")
                # WAL checkpoints run on a thread of their own (see _WalCheckpointer); the
                # appending connection checkpoints only if that one falls far behind.
                self.db.execute(f"PRAGMA wal_autocheckpoint={_WAL_SAFETY_PAGES}")
                # The request projection's index of random request ids: each call's entry
                # lands on a page of its own, and past SQLite's default cache (2 MB) most
                # of them would be read back from the file for every write.
                self.db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
                conn.executescript(_SCHEMA)
                projections.create(conn)
                columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
                if columns != list(_COLUMNS[: len(columns)]) or len(columns) < 5:
                    raise ConfigError(f"event log {path} has an events table of another shape")
                self._columns = len(columns)
                names = ", ".join(columns)
                marks = ", ".join("?" * len(columns))
                self._insert = f"INSERT INTO events({names}) VALUES ({marks})"  # noqa: S608
            else:
                row = conn.execute("SELECT value FROM meta WHERE key = 'log'").fetchone()
                self.log_id = row[0] if row else ""
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"cannot open event log {path}: {exc}") from exc
        self._kinds: dict[str, bytes] = {}
        self._wal: _WalCheckpointer | None = None  # started by the first append
        self._acc = MerkleAccumulator()
        self._seq = 0
        self._prev = GENESIS_PREV
        self._since_checkpoint = 0
        self._started: int | None = None  # seq of the last node.started
        self._time = ""  # the time of the last event: a new one is never dated before it
        self._load_state()

    @classmethod
    def open_readonly(cls, path: Path) -> EventLog:
        """Open an existing log for reading only (export, head, status); no key needed."""
        return cls(path, None)

    @property
    def key(self) -> KeyPair:
        """The node key that signs appends."""
        if self._key is None:
            raise LogConflictError(f"event log {self.path} is open read-only")
        return self._key

    # --- opening -------------------------------------------------------------------------

    def _load_state(self) -> None:
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if meta and not self.readonly and meta.get("log") != self.log_id:
            raise ConfigError(
                f"event log {self.path} belongs to {meta.get('log')}, not {self.log_id}"
            )
        if self._key is not None and meta.get("kid") not in (None, self._key.kid):
            raise ConfigError(
                f"event log {self.path} is signed by key {meta['kid']}, not {self._key.kid}",
                hint="the node key was rotated: load the current key",
            )
        last_cp = 0
        for (hash_,) in self.db.execute("SELECT hash FROM events ORDER BY seq"):
            self._acc.append(bytes(hash_))
        self._seq = self._acc.size
        if self._seq:
            row = self.db.execute(
                "SELECT hash, body FROM events WHERE seq = ?", [self._seq]
            ).fetchone()
            self._prev = bytes(row[0])
            self._time = str(parse_canonical(bytes(row[1]))["time"])
            cp = self.db.execute("SELECT MAX(size) FROM checkpoints").fetchone()[0]
            last_cp = int(cp or 0)
            started = self.started_before(self._seq + 1)
            self._started = None if started is None else started.seq
        self._since_checkpoint = self._seq - last_cp

    def initialize(self, site: str, site_key: bytes, node_record: SignedRecord) -> StoredEvent:
        """Write the genesis event of a new log (no-op error if it already has events)."""
        with self._lock:
            if self._seq:
                raise LogConflictError(f"event log {self.path} is already initialized")
            self.db.execute(
                "INSERT INTO meta(key, value) VALUES ('log', ?), ('site', ?), ('kid', ?)",
                [self.log_id, site, self.key.kid],
            )
            return self.append(
                LogCreated(
                    node=self.key.identity,
                    site=site,
                    site_key=b64e(site_key),
                    node_key=node_record,
                )
            )

    @property
    def initialized(self) -> bool:
        """Whether the genesis event exists."""
        return self._seq > 0

    @property
    def size(self) -> int:
        """Number of events (= the last sequence number)."""
        return self._seq

    # --- appending ----------------------------------------------------------------------

    def append(self, data: BaseModel) -> StoredEvent:
        """Append one event."""
        return self.append_many([data])[0]

    def append_many(self, datas: Sequence[BaseModel]) -> list[StoredEvent]:
        """Append events in one transaction (group commit), adding due checkpoints."""
        if not datas:
            return []
        with self._lock:
            if self._closed:
                raise LogConflictError("event log is closed")
            stored = self._build_and_store(datas)
            if self._since_checkpoint >= self.checkpoint_every:
                stored.extend(self._build_and_store([self._checkpoint_item()]))
            return stored

    def rotate_key(self, new_key: KeyPair, record: SignedRecord) -> StoredEvent:
        """Replace the node key: log ``key.rotated`` (signed by the old key), then sign with
        ``new_key``. ``record`` is the new key's record, signed by the site."""
        with self._lock:
            if self._closed:
                raise LogConflictError("event log is closed")
            old = self.key
            if new_key.identity != old.identity:
                raise ConfigError(f"cannot rotate {old.identity}'s key to {new_key.identity}'s")
            rec = KeyRecord.model_validate_json(b64d(record.record))
            if rec.kid != new_key.kid or rec.identity != old.identity or rec.role != "node":
                raise ConfigError("the key record does not vouch for the new node key")
            ev = self._build_and_store(
                [KeyRotated(identity=old.identity, old_kid=old.kid, record=record)],
                meta_kid=new_key.kid,
            )[0]
            self._key = new_key
            return ev

    def checkpoint(self) -> StoredEvent:
        """Append a checkpoint event now (over every event so far)."""
        with self._lock:
            return self._build_and_store([self._checkpoint_item()])[0]

    def _checkpoint_item(self) -> dict[str, Any]:
        cp = Checkpoint(
            log=self.log_id,
            size=self._seq,
            root=self._acc.root().hex(),
            time=self._now(),
            kid=self.key.kid,
            started=self._started,
        )
        signed = sign_record(cp, self.key.signing_key)
        self._pending_checkpoint = (cp, signed)
        return CheckpointData(checkpoint=signed).model_dump(mode="json")

    def _now(self) -> str:
        """The time to date a new event with: the wall clock, or the last event's time if
        the clock stepped back (times in a log never go back; fixed-width text sorts as
        time does)."""
        return max(now(), self._time)

    def _build_and_store(
        self, datas: Sequence[BaseModel | dict[str, Any]], *, meta_kid: str | None = None
    ) -> list[StoredEvent]:
        """Build, sign and store events (models, or dicts already dumped) in one commit.

        Bodies are assembled from canonical pieces, one after another (the chain is
        sequential); only the last event's hash is signed (``DOMAIN_COMMIT``); request
        events update the projections in the same transaction.
        """
        seq, prev = self._seq, self._prev
        time = self._now()
        head, time_type = _body_frame(self.key.kid, self.log_id, time)
        kinds = self._kinds
        rows: list[tuple[Any, ...]] = []
        projected: list[tuple[int, str, dict[str, Any]]] = []
        who: dict[str, tuple[str | None, str | None, int | None]] = {}
        checkpoint = False
        columns = self._columns
        wide = columns > 5  # a log of an earlier release: time and request id too
        started = self._started
        for d in datas:
            data, data_json = _dump(d)
            seq += 1
            kind = data["type"]
            kind_json = kinds.get(kind)
            if kind_json is None:
                kind_json = kinds[kind] = canonical_bytes(kind)
            body = _event_body(data_json, head, hexlify(prev), seq, time_type, kind_json)
            prev = leaf_hash(body)
            rid = data.get("request_id")
            if wide:
                rows.append((seq, prev, b"", body, kind, time, rid)[:columns])
            else:
                rows.append((seq, prev, b"", body, kind))
            if rid is not None:
                projected.append((seq, time, data))
                if type(d) is AcceptedCall and (known := d.who) is not None:
                    who[rid] = known
            elif kind == "checkpoint":
                checkpoint = True
            elif kind == "node.started":
                started = seq
        if not rows:
            return []
        sig = sign(self.key.signing_key, DOMAIN_COMMIT, prev)
        last = rows[-1]
        rows[-1] = (last[0], last[1], sig, *last[3:])
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(self._insert, rows)
            if projected:
                projections.apply_many(conn, projected, who)
            if checkpoint:
                cp, signed = self._pending_checkpoint
                conn.execute(
                    "INSERT INTO checkpoints(size, root, signed) VALUES (?, ?, ?)",
                    [cp.size, cp.root, signed.model_dump_json()],
                )
            if meta_kid is not None:
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('kid', ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [meta_kid],
                )
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            conn.execute("ROLLBACK")
            raise LogConflictError(f"event log refused the append: {exc}") from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        n = len(rows)
        self._acc.extend([row[1] for row in rows])
        self._seq, self._prev, self._started, self._time = seq, prev, started, time
        self._since_checkpoint = 0 if rows[-1][4] == "checkpoint" else self._since_checkpoint + n
        if self._wal is None:
            self._wal = _WalCheckpointer(self.path.resolve())
        self._wal.appended(n)
        if wide:
            return [StoredEvent(*row[:5]) for row in rows]
        return [StoredEvent(*row) for row in rows]

    # --- reading ------------------------------------------------------------------------

    def events(self, after: int = 0, limit: int | None = None) -> Iterator[StoredEvent]:
        """Stored events with ``seq > after``, in order."""
        sql = "SELECT seq, hash, sig, body, type FROM events WHERE seq > ? ORDER BY seq"
        params: list[Any] = [after]
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        for seq, h, s, b, t in self.db.execute(sql, params).fetchall():
            yield StoredEvent(seq, bytes(h), bytes(s), bytes(b), t)

    def events_for_request(self, request_id: str) -> list[StoredEvent]:
        """Every event of one request, in order (a scan from the request's first event,
        found in the projection; events carry no index by request)."""
        row = self.db.execute(
            "SELECT COALESCE(received_seq, updated_seq) FROM requests WHERE request_id = ?",
            [request_id],
        ).fetchone()
        if row is None:
            return []
        # the id as it stands in a body: canonical JSON, ids are [A-Za-z0-9_-] only
        needle = b'"request_id":' + canonical_bytes(request_id) + b","
        rows = self.db.execute(
            "SELECT seq, hash, sig, body, type FROM events WHERE seq >= ? AND instr(body, ?) > 0"
            " ORDER BY seq",
            [row[0], needle],
        ).fetchall()
        return [
            StoredEvent(seq, bytes(h), bytes(s), bytes(b), t)
            for seq, h, s, b, t in rows
            if parse_canonical(bytes(b))["data"].get("request_id") == request_id
        ]

    def started_before(self, seq: int) -> StoredEvent | None:
        """The last ``node.started`` before event ``seq``: the process (and the code it
        loaded) that handled what ``seq`` records."""
        row = self.db.execute(
            "SELECT seq, hash, sig, body, type FROM events WHERE type = 'node.started'"
            " AND seq < ? ORDER BY seq DESC LIMIT 1",
            [seq],
        ).fetchone()
        if row is None:
            return None
        seq_, h, s, b, t = row
        return StoredEvent(seq_, bytes(h), bytes(s), bytes(b), t)

    def head(self) -> SignedRecord | None:
        """The latest signed checkpoint, if any."""
        row = self.db.execute(
            "SELECT signed FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        return SignedRecord.model_validate_json(row[0]) if row else None

    def export(self, out: Path) -> int:
        """Write every event as JSON Lines to ``out`` (atomically); return the count."""
        count = 0
        tmp = out.with_name(out.name + ".tmp")
        with tmp.open("wb") as fh:
            for h, s, b in self.db.execute("SELECT hash, sig, body FROM events ORDER BY seq"):
                fh.write(export_line(bytes(h), bytes(s), bytes(b)))
                count += 1
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(out)
        return count

    def rebuild_projections(self) -> int:
        """Drop and rebuild every projection from the events; return events replayed."""
        with self._lock:
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                projections.drop(conn)
                projections.create(conn)
                count = 0
                cur = conn.execute("SELECT seq, body FROM events ORDER BY seq")
                while rows := cur.fetchmany(10_000):
                    projections.apply_many(
                        conn,
                        [
                            (seq, event["time"], event["data"])
                            for seq, body in rows
                            for event in (parse_canonical(body),)
                        ],
                    )
                    count += len(rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return count

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the database (and stop the WAL checkpointer); harmless twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._wal is not None:
                self._wal.close()
            self.db.conn.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
