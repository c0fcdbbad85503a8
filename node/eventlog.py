"""The node's append-only, signed, hash-chained event log in SQLite.

* One log per node, id = the node identity (``node:hereon/n1``).
* Each event's body is canonical JSON (:mod:`hub.events`) carrying ``seq`` and ``prev`` (the
  hash of the previous body); the hash is ``leaf_hash(body)``; the node key signs
  ``DOMAIN_EVENT || hash``. Bodies are built one after another (the chain is sequential);
  signatures are made in parallel: for a large batch by worker processes (see
  :class:`_SignWorkers`; they run while this process builds, projects and inserts, with no
  lock between them), for a small one on a thread pool (libsodium releases the GIL).
* SQLite in WAL mode. ``synchronous="normal"`` (the default): a committed event survives a
  crash of the process; a power loss may lose the last transactions (never corrupts the
  log) -- the trade JetStream makes by default. ``synchronous="full"``: a committed event
  also survives a power loss (one fsync per commit). Appends are grouped into one
  transaction (group commit).
* The database itself refuses ``UPDATE`` and ``DELETE`` on events (triggers), and an insert
  whose ``seq`` is not the next one.
* Every ``checkpoint_every`` events (or on :meth:`EventLog.checkpoint`), a ``checkpoint``
  event carries a signed Merkle root over all events before it.
* Projections (request status) are updated in the same transaction and can be rebuilt.
* The node key can be rotated (:meth:`EventLog.rotate_key`): a ``key.rotated`` event, signed
  by the old key, carries the new key's record signed by the site; later events are signed
  by the new key.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from binascii import hexlify
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nacl.bindings
import nacl.exceptions
import nacl.signing
import sqlite_utils
import structlog
from pydantic import BaseModel

from hub.canonical import b64d, b64e, canonical_bytes, parse_canonical
from hub.chain import GENESIS_PREV, MerkleAccumulator, leaf_hash
from hub.clock import now
from hub.crypto import sign
from hub.errors import ConfigError, LogConflictError
from hub.events import DOMAIN_EVENT, CheckpointData, KeyRotated, LogCreated
from hub.keys import KeyPair
from hub.logfile import export_line
from hub.records import Checkpoint, KeyRecord, SignedRecord, sign_record
from hub.workers import spawn_worker, stop_worker, write_all
from node import projections

__all__ = ["EventLog", "StoredEvent"]

log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    hash BLOB NOT NULL,
    sig BLOB NOT NULL,
    body BLOB NOT NULL,
    type TEXT NOT NULL,
    time TEXT NOT NULL,
    request_id TEXT
);
CREATE INDEX IF NOT EXISTS events_request ON events(request_id) WHERE request_id IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'fedhub event log is append-only: UPDATE refused'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'fedhub event log is append-only: DELETE refused'); END;
CREATE TRIGGER IF NOT EXISTS events_next_seq BEFORE INSERT ON events
WHEN NEW.seq != (SELECT IFNULL(MAX(seq), 0) + 1 FROM events)
BEGIN SELECT RAISE(ABORT, 'fedhub event log: seq must be the next one'); END;
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY, root TEXT NOT NULL, signed TEXT NOT NULL
);
"""


def _sign_hashes(sk: nacl.signing.SigningKey, hashes: list[bytes]) -> list[bytes]:
    """Event signatures over ``DOMAIN_EVENT || hash`` (libsodium releases the GIL)."""
    return [sign(sk, DOMAIN_EVENT, h) for h in hashes]


# A batch of at least this many events is signed by worker processes (when allowed).
_PROCESS_MIN = 64
# Hashes per request to a signing worker, and requests a worker may hold unanswered: the
# requests and answers in flight always fit a 64 KiB pipe buffer, so neither side blocks
# the other for long.
_SIGN_CHUNK = 256
_SIGN_IN_FLIGHT = 3
# Answers of a signing worker whose first signature is checked: its first, then one in so
# many (a check costs as much as three signatures).
_SIGN_CHECK_EVERY = 64

# A signing worker: reads the 32-byte seed, then requests (u32 count || count x 32-byte
# hash) from stdin and answers each with count x 64-byte signatures over DOMAIN_EVENT ||
# hash, on a pipe of its own (so nothing else it might print can mix in).
_SIGN_WORKER = f"""
import os, sys
from nacl.bindings import crypto_sign, crypto_sign_seed_keypair
read, out = sys.stdin.buffer.read, os.fdopen(int(sys.argv[1]), "wb")
_, sk = crypto_sign_seed_keypair(read(32))
DOMAIN = {DOMAIN_EVENT!r}
while len(head := read(4)) == 4:
    blob = read(32 * int.from_bytes(head, "little"))
    sigs = [crypto_sign(DOMAIN + blob[i:i + 32], sk)[:64] for i in range(0, len(blob), 32)]
    out.write(b"".join(sigs))
    out.flush()
"""


class _SignWorkers:
    """Worker processes that sign event hashes with the node key, off this process's GIL.

    The key's seed goes to each worker over its stdin pipe (never a file or an argument);
    a worker exits when its stdin closes, so it does not outlive the log (nor a killed
    node). Requests are answered in order; a ticket names one request.
    """

    def __init__(self, sk: nacl.signing.SigningKey, count: int) -> None:
        self.sk = sk
        self.procs: list[subprocess.Popen[bytes]] = []
        self.queues: list[deque[tuple[int, int]]] = []
        self.alive: list[bool] = []
        self.inbox: list[bytearray] = []
        self.results: dict[int, list[bytes]] = {}
        self.hashes: dict[int, list[bytes]] = {}
        self.next_ticket = 0
        self.answers: list[int] = []
        self.answered: list[int] = []
        self.check_key = bytes(sk.verify_key)
        seed = bytes(sk)
        try:
            for _ in range(count):
                proc, read_end = spawn_worker(_SIGN_WORKER)
                self.procs.append(proc)
                self.answers.append(read_end)
                self.queues.append(deque())
                self.alive.append(True)
                self.inbox.append(bytearray())
                self.answered.append(0)
                if proc.stdin is None:
                    raise OSError("no pipe to the signing worker")
                write_all(proc.stdin.fileno(), seed)
        except OSError:
            self.close()
            raise

    @property
    def usable(self) -> bool:
        """Whether any worker is still alive."""
        return any(self.alive)

    def submit(self, hashes: list[bytes]) -> int:
        """Hand hashes to the least busy worker; the ticket for :meth:`result`."""
        ticket = self.next_ticket
        self.next_ticket += 1
        self.hashes[ticket] = hashes
        message = len(hashes).to_bytes(4, "little") + b"".join(hashes)
        while True:
            live = [i for i, up in enumerate(self.alive) if up]
            if not live:
                self.results[ticket] = _sign_hashes(self.sk, self.hashes.pop(ticket))
                return ticket
            i = min(live, key=lambda i: len(self.queues[i]))
            if len(self.queues[i]) >= _SIGN_IN_FLIGHT:
                self._take(i)
                continue
            stdin = self.procs[i].stdin
            assert stdin is not None
            try:
                write_all(stdin.fileno(), message)
            except OSError:
                self._lost(i)
                continue
            self.queues[i].append((ticket, len(hashes)))
            return ticket

    def result(self, ticket: int) -> list[bytes]:
        """The signatures of one request, waiting for them if need be."""
        while ticket not in self.results:
            holder = next(
                (i for i, q in enumerate(self.queues) if any(t == ticket for t, _ in q)), None
            )
            if holder is None:
                raise LogConflictError(f"signing request {ticket} was lost")
            self._take(holder)
        return self.results.pop(ticket)

    def _take(self, i: int) -> None:
        """Read worker ``i``'s oldest answer (blocking). The first signature of a worker's
        first answer, and of every ``_SIGN_CHECK_EVERY``-th after, is checked here: a
        worker that answers with anything but the node key's signatures is dropped."""
        ticket, n = self.queues[i][0]
        inbox = self.inbox[i]
        while len(inbox) < 64 * n:
            try:
                data = os.read(self.answers[i], 1 << 16)
            except OSError:
                data = b""
            if not data:
                self._lost(i)
                return
            inbox += data
        sigs = bytes(inbox[: 64 * n])
        del inbox[: 64 * n]
        if self.answered[i] % _SIGN_CHECK_EVERY == 0:
            try:
                nacl.bindings.crypto_sign_open(
                    sigs[:64] + DOMAIN_EVENT + self.hashes[ticket][0], self.check_key
                )
            except nacl.exceptions.CryptoError:
                self._lost(i)
                return
        self.answered[i] += 1
        self.queues[i].popleft()
        self.hashes.pop(ticket)
        self.results[ticket] = [sigs[k : k + 64] for k in range(0, len(sigs), 64)]

    def _lost(self, i: int) -> None:
        """Worker ``i`` died or misbehaved: sign what it held here, and stop using it."""
        self.alive[i] = False
        log.warning("eventlog.sign_worker_lost", pid=self.procs[i].pid)
        while self.queues[i]:
            ticket, _ = self.queues[i].popleft()
            self.results[ticket] = _sign_hashes(self.sk, self.hashes.pop(ticket))
        stop_worker(self.procs[i], self.answers[i], kill=True)

    def close(self) -> None:
        """Stop the workers (they exit at the end of their input); harmless twice."""
        for i, proc in enumerate(self.procs):
            if self.alive[i]:
                stop_worker(proc, self.answers[i], kill=bool(self.queues[i]))
        self.procs, self.answers, self.queues, self.alive, self.inbox = [], [], [], [], []


# WAL checkpoints: one after about this many appended events (~700 pages) by the
# checkpointer thread; the appending connection itself only past this many pages.
_WAL_EVERY_EVENTS = 4000
_WAL_SAFETY_PAGES = 8000


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
    "seq":S,"time":T,"type":Y,"v":1}``, so it is assembled from canonical pieces
    (:func:`_event_body`; the same bytes as :func:`canonical_bytes` of the whole).
    """
    head = b',"kid":' + canonical_bytes(kid) + b',"log":' + canonical_bytes(log_id) + b',"prev":"'
    return head, b',"time":' + canonical_bytes(time) + b',"type":'


def _event_body(
    data: bytes, head: bytes, prevhex: bytes, seq: int, time_type: bytes, kind: bytes
) -> bytes:
    """One event body from its canonical pieces (see :func:`_body_frame`)."""
    return b"".join(
        (b'{"data":', data, head, prevhex, b'","seq":', b"%d" % seq, time_type, kind, b',"v":1}')
    )


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored: its body bytes, hash and signature."""

    seq: int
    hash: bytes
    sig: bytes
    body: bytes
    type: str

    def parsed(self) -> dict[str, Any]:
        """The body as a dict."""
        value: dict[str, Any] = parse_canonical(self.body)
        return value


class EventLog:
    """A node's event log. Thread-safe: appends are serialized by a lock.

    Open with :meth:`open`; close with :meth:`close` (twice is harmless) or use as a
    context manager. Signatures are made by ``sign_threads`` threads, or -- for a batch of
    at least 64 events, or always with ``sign_processes=True``; never with ``False`` --
    by as many worker processes, started on first need and stopped by :meth:`close`.
    """

    def __init__(
        self,
        path: Path,
        key: KeyPair | None,
        *,
        checkpoint_every: int = 1000,
        sign_threads: int = 2,
        sign_processes: bool | None = None,
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
                self.db.execute("PRAGMA journal_mode=WAL")
                if synchronous not in ("normal", "full"):
                    raise ConfigError(f"synchronous must be normal or full, not {synchronous!r}")
                self.db.execute(f"PRAGMA synchronous={synchronous.upper()}")
                # WAL checkpoints run on a thread of their own (see _WalCheckpointer); the
                # appending connection checkpoints only if that one falls far behind.
                self.db.execute(f"PRAGMA wal_autocheckpoint={_WAL_SAFETY_PAGES}")
                conn.executescript(_SCHEMA)
                projections.create(conn)
            else:
                row = conn.execute("SELECT value FROM meta WHERE key = 'log'").fetchone()
                self.log_id = row[0] if row else ""
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"cannot open event log {path}: {exc}") from exc
        self._sign_threads = max(1, sign_threads)
        self._pool = ThreadPoolExecutor(self._sign_threads, thread_name_prefix="eventlog-sign")
        # Worker processes sign large batches (None: from _PROCESS_MIN events on).
        self._sign_processes = sign_processes
        self._workers: _SignWorkers | None = None
        self._workers_failed = False
        self._kinds: dict[str, bytes] = {}
        self._wal: _WalCheckpointer | None = None  # started by the first append
        self._acc = MerkleAccumulator()
        self._seq = 0
        self._prev = GENESIS_PREV
        self._since_checkpoint = 0
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
            row = self.db.execute("SELECT hash FROM events WHERE seq = ?", [self._seq]).fetchone()
            self._prev = bytes(row[0])
            cp = self.db.execute("SELECT MAX(size) FROM checkpoints").fetchone()[0]
            last_cp = int(cp or 0)
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
            time=now(),
            kid=self.key.kid,
        )
        signed = sign_record(cp, self.key.signing_key)
        self._pending_checkpoint = (cp, signed)
        return CheckpointData(checkpoint=signed).model_dump(mode="json")

    def _build_and_store(
        self, datas: Sequence[BaseModel | dict[str, Any]], *, meta_kid: str | None = None
    ) -> list[StoredEvent]:
        """Build, sign and store events (models, or dicts already dumped) in one commit.

        The work overlaps: each chunk of hashes goes to the signing workers (or pool) as
        soon as its bodies are built (the chain itself is sequential); the projections,
        which need no signature, are updated while they sign; each chunk's rows are
        inserted as its signatures arrive; then one commit.
        """
        seq, prev = self._seq, self._prev
        time = now()
        head, time_type = _body_frame(self.key.kid, self.log_id, time)
        kinds = self._kinds
        sk = self.key.signing_key
        n = len(datas)
        workers = self._sign_workers(n)
        pooled = workers is None and n >= 64 and self._sign_threads > 1
        step = min(_SIGN_CHUNK, max(32, -(-n // (4 * self._sign_threads)))) if n >= 64 else n
        # One entry per chunk of events: the ticket or future of its signatures.
        tickets: list[int] = []
        futures: list[Future[list[bytes]]] = []
        items: list[dict[str, Any]] = []
        hashes: list[bytes] = []
        bodies: list[bytes] = []
        mark = 0

        def sign_from_mark() -> None:
            # hand the hashes built since the last chunk to the workers or the pool
            if workers is not None:
                tickets.append(workers.submit(hashes[mark:]))
            elif pooled:
                futures.append(self._pool.submit(_sign_hashes, sk, hashes[mark:]))

        for d in datas:
            data = d if isinstance(d, dict) else d.model_dump(mode="json")
            items.append(data)
            seq += 1
            kind = data["type"]
            kind_json = kinds.get(kind)
            if kind_json is None:
                kind_json = kinds[kind] = canonical_bytes(kind)
            body = _event_body(
                canonical_bytes(data), head, hexlify(prev), seq, time_type, kind_json
            )
            prev = leaf_hash(body)
            bodies.append(body)
            hashes.append(prev)
            if len(hashes) - mark >= step:
                sign_from_mark()
                mark = len(hashes)
        if mark < len(hashes):
            sign_from_mark()
        first = self._seq + 1
        sigs: list[bytes] = []
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Projections first: they need no signature, so this overlaps the signing.
            projections.apply_many(conn, [(first + i, time, d) for i, d in enumerate(items)])
            chunks: Iterator[list[bytes]]
            if workers is not None:
                chunks = (workers.result(t) for t in tickets)
            elif pooled:
                chunks = (fut.result() for fut in futures)
            else:
                chunks = iter([_sign_hashes(sk, hashes)])
            for chunk in chunks:
                at = len(sigs)
                sigs += chunk
                conn.executemany(
                    "INSERT INTO events(seq, hash, sig, body, type, time, request_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            first + i,
                            hashes[i],
                            sigs[i],
                            bodies[i],
                            d["type"],
                            time,
                            d.get("request_id"),
                        )
                        for i, d in enumerate(items[at : len(sigs)], at)
                    ],
                )
            if len(sigs) != n:
                raise LogConflictError(f"signed {len(sigs)} of {n} events")
            for data in items:
                if data["type"] == "checkpoint":
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
        self._acc.extend(hashes)
        self._seq, self._prev = seq, prev
        self._since_checkpoint += n
        if self._wal is None:
            self._wal = _WalCheckpointer(self.path.resolve())
        self._wal.appended(n)
        if items[-1]["type"] == "checkpoint":
            self._since_checkpoint = 0
        return [
            StoredEvent(first + i, h, sig, body, d["type"])
            for i, (h, sig, body, d) in enumerate(zip(hashes, sigs, bodies, items, strict=True))
        ]

    def _sign_workers(self, n: int) -> _SignWorkers | None:
        """The signing workers for a batch of ``n`` events, started if need be; None when
        this batch is signed by threads."""
        want = self._sign_processes
        if want is False or self._workers_failed:
            return None
        if want is None and (n < _PROCESS_MIN or self._sign_threads < 2):
            return None
        sk = self.key.signing_key
        workers = self._workers
        if workers is not None and (workers.sk is not sk or not workers.usable):
            workers.close()
            workers = self._workers = None
        if workers is None:
            if not sys.executable or os.name != "posix":
                self._workers_failed = True
                return None
            try:
                workers = self._workers = _SignWorkers(sk, self._sign_threads)
            except OSError as exc:
                log.warning("eventlog.sign_workers_failed", error=str(exc))
                self._workers_failed = True
                return None
        return workers

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
        """Every event of one request, in order."""
        rows = self.db.execute(
            "SELECT seq, hash, sig, body, type FROM events WHERE request_id = ? ORDER BY seq",
            [request_id],
        ).fetchall()
        return [StoredEvent(seq, bytes(h), bytes(s), bytes(b), t) for seq, h, s, b, t in rows]

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
                cur = conn.execute("SELECT seq, time, body FROM events ORDER BY seq")
                while rows := cur.fetchmany(10_000):
                    projections.apply_many(
                        conn,
                        [(seq, time, parse_canonical(body)["data"]) for seq, time, body in rows],
                    )
                    count += len(rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return count

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the database and the signing pool; harmless twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._pool.shutdown(wait=True)
            if self._workers is not None:
                self._workers.close()
                self._workers = None
            if self._wal is not None:
                self._wal.close()
            self.db.conn.close()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
