"""Reading a node's event log from its two portable forms: the SQLite file and JSON Lines.

Both forms hold, per event, the exact signed body bytes, the claimed hash and the signature.

**SQLite**: table ``events(seq INTEGER PRIMARY KEY, hash BLOB, sig BLOB, body BLOB, ...)``,
read with ``SELECT hash, sig, body FROM events ORDER BY seq`` (opened read-only).

**JSON Lines export**: one event per line, in this exact layout (so the signed body bytes
are sliced out of the line, never re-serialized)::

    {"hash":"<64 hex>","sig":"<86 chars unpadded URL-safe base64, or empty>","event":<body>}\n

The line is valid JSON (``jq`` reads it); a verifier takes the bytes after ``"event":``
(from byte 178, or 92 when the signature is empty) to the last ``}`` as the body. The
signature is empty for a version 2 event that a later signed one covers. Every line ends
in LF; CRLF, blank lines and a missing final LF are unreadable input. Hash and
signature must be in their one canonical spelling (lower-case hex,
unpadded URL-safe base64 with zero unused bits). A reformatted file is unreadable input,
not a different log. See docs/log-format.md.
"""

from __future__ import annotations

import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from hub.canonical import b64d, b64e
from hub.errors import CanonicalError, FederationError

__all__ = [
    "LogUnreadableError",
    "RawEvent",
    "SqliteEvents",
    "export_line",
    "iter_jsonl",
    "iter_log",
    "iter_sqlite",
    "parse_export_line",
    "read_small",
]

_P1 = b'{"hash":"'
_P2 = b'","sig":"'
_P3 = b'","event":'
_HASH_AT = len(_P1)
_SIG_AT = _HASH_AT + 64 + len(_P2)
#: The longest export line read (an event body is far smaller).
MAX_LINE = 1 << 24


class LogUnreadableError(FederationError):
    """The input is not a fedhub log in either form (missing, not SQLite, malformed line)."""


@dataclass(slots=True)
class RawEvent:
    """One stored event as found: position, claimed hash, signature and exact body bytes.

    Treat it as immutable; it is not frozen only because a frozen dataclass costs three
    times as much to build, and an audit builds one per event.
    """

    position: int
    hash: bytes
    sig: bytes
    body: bytes


def export_line(hash_: bytes, sig: bytes, body: bytes) -> bytes:
    """The JSON Lines form of one event, newline included; an unsigned (version 2) event,
    stored with ``sig == b""``, is written with ``"sig":""``."""
    sig_text = b64e(sig).encode() if sig else b""
    return b"".join((_P1, hash_.hex().encode(), _P2, sig_text, _P3, body, b"}\n"))


def parse_export_line(line: bytes, position: int) -> RawEvent:
    """Slice one export line (with or without its final LF) into its parts;
    LogUnreadableError if the layout is off. The signature is empty for an event a later
    one covers (log version 2)."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if line.endswith(b"\r"):
        raise LogUnreadableError(f"line {position}: ends in CRLF; the export's lines end in LF")
    if not line.strip():
        raise LogUnreadableError(f"line {position}: blank; the export has no blank lines")
    sig_len = 0 if line.startswith(_P3, _SIG_AT) else 86
    body_at = _SIG_AT + sig_len + len(_P3)
    if (
        len(line) < body_at + 3
        or not line.startswith(_P1)
        or line[_HASH_AT + 64 : _SIG_AT] != _P2
        or line[_SIG_AT + sig_len : body_at] != _P3
        or not line.endswith(b"}")
    ):
        raise LogUnreadableError(f"line {position}: not in fedhub's export layout")
    hash_text = line[_HASH_AT : _HASH_AT + 64]
    sig_text = line[_SIG_AT : _SIG_AT + sig_len]
    try:
        hash_ = bytes.fromhex(hash_text.decode("ascii"))
        sig = b64d(sig_text.decode("ascii"))
    except (ValueError, CanonicalError) as exc:
        raise LogUnreadableError(f"line {position}: malformed hash or signature") from exc
    # Only the one canonical spelling is accepted: upper-case hex, or base64 whose unused
    # trailing bits are set, would decode to the same bytes and hide a changed byte.
    if hash_.hex().encode() != hash_text or b64e(sig).encode() != sig_text:
        raise LogUnreadableError(f"line {position}: hash or signature not in canonical form")
    return RawEvent(position, hash_, sig, line[body_at:-1])


def iter_jsonl(path: Path, *, max_seconds: float | None = None) -> Iterator[RawEvent]:
    """Events of an exported JSON Lines file, in file order.

    Every line ends in LF (a missing final LF, a CRLF or a blank line is unreadable
    input). Input that is not a regular file (a pipe, a FIFO, a device) is opened and read
    on a thread, so that input which never ends fails after ``max_seconds`` (None: no
    limit) instead of waiting forever; a regular file still being read then fails too.
    """
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    if _is_regular(path):
        try:
            fh = path.open("rb")
        except OSError as exc:
            raise LogUnreadableError(f"cannot read {path}: {exc.strerror}") from exc
        with fh:
            yield from _events(_lines(iter(partial(fh.read, 1 << 20), b""), path, deadline), path)
    else:
        yield from _events(_lines(_chunks_on_a_thread(path, deadline), path, deadline), path)


def read_small(path: Path, *, limit: int, max_seconds: float | None = None) -> bytes:
    """The whole of a small input (a receipt): LogUnreadableError if it holds more than
    ``limit`` bytes, or, when it is not a regular file, has not ended ``max_seconds``
    after the start (a pipe left open, ``/dev/zero``, would otherwise never end)."""
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    if _is_regular(path):
        try:
            with path.open("rb") as fh:
                chunks = [fh.read(limit + 1)]
        except OSError as exc:
            raise LogUnreadableError(f"cannot read {path}: {exc.strerror}") from exc
    else:
        chunks = []
        size = 0
        for chunk in _chunks_on_a_thread(path, deadline):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                break
    data = b"".join(chunks)
    if len(data) > limit:
        raise LogUnreadableError(f"{path}: more than {limit} bytes, too long for what it is")
    return data


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError as exc:
        raise LogUnreadableError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _events(lines: Iterator[bytes], path: Path) -> Iterator[RawEvent]:
    for position, line in enumerate(lines, 1):
        if position == 1 and line.startswith(b"SQLite format 3\x00"):
            raise LogUnreadableError(f"{path}: a SQLite log must be given as a file, not a pipe")
        if not line.endswith(b"\n"):
            raise LogUnreadableError(f"{path}: line {position} does not end in LF (truncated?)")
        yield parse_export_line(line, position)


def _lines(chunks: Iterator[bytes], path: Path, deadline: float | None) -> Iterator[bytes]:
    """The lines of a stream of chunks (each with its LF, but maybe the last)."""
    rest = b""
    for chunk in chunks:
        if deadline is not None and time.monotonic() > deadline:
            raise _too_slow(path)
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE:
            raise LogUnreadableError(f"{path}: a line longer than {MAX_LINE} bytes")
        for line in lines:
            yield line + b"\n"
    if rest:
        yield rest


def _chunks_on_a_thread(path: Path, deadline: float | None) -> Iterator[bytes]:
    """Chunks of input opened and read on a thread, given up at the deadline."""
    box: queue.Queue[bytes | OSError | None] = queue.Queue(maxsize=16)

    def read() -> None:
        try:
            with path.open("rb") as fh:
                while chunk := fh.read1(1 << 20):
                    box.put(chunk)
        except OSError as exc:
            box.put(exc)
        box.put(None)

    threading.Thread(target=read, name="log-reader", daemon=True).start()
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            item = box.get(timeout=wait)
        except queue.Empty:
            raise _too_slow(path) from None
        if item is None:
            return
        if isinstance(item, OSError):
            raise LogUnreadableError(f"cannot read {path}: {item.strerror or item}") from item
        yield item


def _too_slow(path: Path) -> LogUnreadableError:
    return LogUnreadableError(
        f"{path}: the input did not end in time (a pipe left open?)",
        hint="raise --max-seconds for a log that takes longer, 0 for no limit",
    )


class SqliteEvents:
    """The events of a node's SQLite log, by sequence number (opened read-only on iteration).

    Iterating gives :class:`RawEvent` objects; :meth:`rows` gives the same events in bulk
    (what the auditor reads). Nothing is opened until then, and every iteration reads the
    file afresh.
    """

    def __init__(self, path: Path, batch: int = 10_000) -> None:
        self.path = path
        self.batch = batch

    def __iter__(self) -> Iterator[RawEvent]:
        for start, rows in self.rows():
            for position, (hash_, sig, body) in enumerate(rows, start):
                if type(hash_) is not bytes or type(sig) is not bytes or type(body) is not bytes:
                    raise self.not_blobs(position)
                yield RawEvent(position, hash_, sig, body)

    def rows(
        self, *, after_seq: int | None = None, until_seq: int | None = None, skip: int = 0
    ) -> Iterator[tuple[int, list[tuple[Any, Any, Any]]]]:
        """Batches of ``(position of the first, [(hash, sig, body), ...])``, in order.

        Values are as SQLite returns them: BLOBs are ``bytes``, but a forged file may hold
        other types; a reader must check (and report :meth:`not_blobs`). With bounds, only
        the events with ``after_seq < seq <= until_seq`` (less the first ``skip``) are read,
        and positions count from the first of them as 1 (the caller knows the offset).
        """
        path = self.path
        if not path.is_file():
            raise LogUnreadableError(f"no log file at {path}")
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise LogUnreadableError(f"cannot open {path}: {exc}") from exc
        bounds = [("seq > ?", after_seq), ("seq <= ?", until_seq)]
        where = [(test, value) for test, value in bounds if value is not None]
        sql = "SELECT hash, sig, body FROM events"
        if where:
            sql += " WHERE " + " AND ".join(test for test, _ in where)
        sql += " ORDER BY seq"
        params = [value for _, value in where]
        if skip:
            sql += " LIMIT -1 OFFSET ?"
            params.append(skip)
        try:
            try:
                cur = conn.execute(sql, params)
            except sqlite3.DatabaseError as exc:
                raise LogUnreadableError(f"{path} is not a fedhub log database: {exc}") from exc
            position = 1
            while rows := cur.fetchmany(self.batch):
                yield position, rows
                position += len(rows)
        finally:
            conn.close()

    def stored_hash(self, until_seq: int) -> object:
        """The stored hash of the last event with ``seq <= until_seq`` (None if none)."""
        return self._one_value(
            "SELECT hash FROM events WHERE seq <= ? ORDER BY seq DESC LIMIT 1", [until_seq]
        )

    def body_at(self, seq: int) -> object:
        """The stored body of event ``seq`` (None if none or unreadable)."""
        return self._one_value("SELECT body FROM events WHERE seq = ?", [seq])

    def last_seq(self) -> int:
        """The highest sequence number (0 if none or unreadable: a reader finds out why)."""
        value = self._one_value("SELECT MAX(seq) FROM events", [])
        return value if type(value) is int else 0

    def _connect(self) -> sqlite3.Connection:
        """A read-only connection, if ``events`` is a stored table (LogUnreadableError if
        it is a view -- a recursive one never ends --, a virtual table, or has computed
        columns: none of these is a log)."""
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            problem = _not_stored(conn)
        except BaseException:
            conn.close()
            raise
        if problem:
            conn.close()
            raise LogUnreadableError(f"{self.path}: events is {problem}, not a fedhub log's table")
        return conn

    def _one_value(self, sql: str, params: list[Any]) -> object:
        """The first column of the first row of ``sql``; None if none or unreadable."""
        try:
            conn = self._connect()
        except (sqlite3.Error, LogUnreadableError):
            return None  # the reading that follows says why
        try:
            row = conn.execute(sql, params).fetchone()
        except sqlite3.Error:
            return None
        finally:
            conn.close()
        return None if row is None else row[0]

    def not_blobs(self, position: int) -> LogUnreadableError:
        """The error for an event whose hash, signature or body is not a BLOB."""
        return LogUnreadableError(f"{self.path}: event {position} is not stored as BLOBs")


def _not_stored(conn: sqlite3.Connection) -> str:
    """Why the table ``events`` is not a stored table ("" if it is, or if there is none:
    the query then says what is missing)."""
    row = conn.execute(
        "SELECT type, sql FROM sqlite_master WHERE name = 'events' COLLATE NOCASE"
    ).fetchone()
    if row is None:
        return ""
    kind, sql = row
    if kind != "table":
        return f"a {kind}"
    if str(sql).lstrip().upper().startswith("CREATE VIRTUAL"):
        return "a virtual table"
    if any(col[-1] != 0 for col in conn.execute("PRAGMA table_xinfo(events)")):
        return "a table with computed columns"
    return ""


def iter_sqlite(path: Path, batch: int = 10_000) -> SqliteEvents:
    """Events of a node's SQLite log, by sequence number (opened read-only)."""
    return SqliteEvents(path, batch)


def iter_log(path: Path, *, max_seconds: float | None = None) -> Iterable[RawEvent]:
    """Events from either form, told apart by the file's first bytes. Input that is not
    a regular file (a pipe, a FIFO) is read as JSON Lines (SQLite needs a file), and
    given up after ``max_seconds`` (None: no limit)."""
    if not _is_regular(path):
        return iter_jsonl(path, max_seconds=max_seconds)
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise LogUnreadableError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if head.startswith(b"SQLite format 3"):
        return iter_sqlite(path)
    if head.startswith(b"{") or not head:
        return iter_jsonl(path, max_seconds=max_seconds)
    raise LogUnreadableError(f"{path} is neither a fedhub SQLite log nor a JSON Lines export")
