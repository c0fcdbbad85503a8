"""A helper process for audits of large SQLite logs (chain-only, or of version 2 events).

While this process audits the first part of the log, a helper process reads the rest and
does, for each run of plain request events, every check of the fast path that needs no
state (:func:`speculate`). Each run is then applied here if what it took for granted holds
(:func:`apply_run`), and every other event goes through the general path; from the first
run that does not fit, or if the helper fails, this process reads and audits the rest
itself: the report is the same as without the helper, in every case.

The helper imports this module without the ``hub`` and ``hub.audit`` packages' own
``__init__`` (which load more), writes its records with marshal to a file in a private
temporary folder, and exits; this process reads them once its own part is done.
"""

from __future__ import annotations

import marshal
import subprocess
import sys
import tempfile
import time
from binascii import hexlify
from collections import Counter
from collections.abc import Iterable, Iterator
from itertools import chain, count
from pathlib import Path
from typing import Any, BinaryIO, Final

from hub.chain import leaf_hash
from hub.lifecycle import RequestState
from hub.logfile import RawEvent, SqliteEvents

from .fast import Row, fast_key, scan
from .forms import FAST_INDEX, FAST_KINDS, FAST_LIST, FAST_NAMES, FAST_STEPS, FAST_TAIL, SLOW, TAIL
from .rules import Rules

__all__ = ["SPLIT_MIN", "SPLIT_SHARE", "Helper", "positioned", "speculate", "split_pass"]

SPLIT_MIN: Final = 100_000  # events (by the last seq) from which an audit splits
SPLIT_SHARE: Final = 0.5  # of the events audited by this process; the helper reads the rest
_RUN_MAX = 4096  # events per run record
SLOW_EVENT, FAST_RUN, HELPER_FAILED = 0, 1, 2

HELPER: str = """
import sys, types
for name, path in (("hub", sys.argv[1]), ("hub.audit", sys.argv[1] + "/audit")):
    pkg = types.ModuleType(name)
    pkg.__path__ = [path]
    sys.modules[name] = pkg
from hub.audit.helper import speculate_to
speculate_to(sys.argv[2], int(sys.argv[3]), sys.argv[4])
"""


def positioned(
    batches: Iterable[tuple[int, list[tuple[Any, Any, Any]]]], first: int
) -> Iterable[Row]:
    """Rows of batches whose positions count from 1, renumbered from ``first``."""
    return chain.from_iterable(zip(count(first - 1 + start), batch) for start, batch in batches)


def split_pass(
    rules: Rules, source: SqliteEvents, after_seq: int, helper: Helper | None = None
) -> None:
    """Audit a SQLite log in two parts at once: this process the events up to
    ``after_seq``, a helper process (started here unless given) the rest."""
    if helper is None:
        helper = Helper.start(source.path, after_seq)
    try:
        scan(rules, positioned(source.rows(until_seq=after_seq), 1), source.not_blobs)
        done = rules.report.events
        if helper is None or done != after_seq:
            scan(rules, positioned(source.rows(after_seq=after_seq), done + 1), source.not_blobs)
            return
        for record in helper.records():
            if record[0] == SLOW_EVENT:
                _, pos, hash_, sig, body = record
                if not (type(hash_) is bytes and type(sig) is bytes and type(body) is bytes):
                    raise source.not_blobs(pos)
                rules.event(RawEvent(pos, hash_, sig, body))
            elif record[0] != FAST_RUN or not apply_run(rules, record):
                pos = rules.report.events + 1  # positions are contiguous so far
                rest = positioned(source.rows(after_seq=after_seq, skip=pos - after_seq - 1), pos)
                scan(rules, rest, source.not_blobs)
                return
    finally:
        if helper is not None:
            helper.close()


def apply_run(rules: Rules, record: tuple[Any, ...]) -> bool:
    """Apply a helper's run of request events, if it fits the state here (else False,
    with nothing changed)."""
    _, first, kid, log_id, prev, first_time, last_time, kinds, rids, hashes, flags, sigs = record
    rep = rules.report
    key = fast_key(rules)
    if key is None or rep.log is None or rep.last_time is None or rules.prev != prev:
        return False
    try:
        if key.kid.encode() != kid or rep.log.encode() != log_id:
            return False
    except UnicodeEncodeError:
        return False
    if first_time.decode() < rep.last_time or FAST_LIST[kinds[0]].version != rules.version:
        return False
    requests = rules.requests
    changed: dict[str, RequestState] = {}
    for k, rid in zip(kinds, rids, strict=True):
        state = changed[rid] if rid in changed else requests.get(rid)
        new = FAST_STEPS[k].get(state, SLOW)
        if new is SLOW:
            return False
        if new is not None:
            changed[rid] = new
    requests.update(changed)
    types = rules.types
    for k, n in Counter(kinds).items():
        kind = FAST_NAMES[k]
        types[kind] = types.get(kind, 0) + n
    leaves = [hashes[i : i + 32] for i in range(0, len(hashes), 32)]
    n = len(leaves)
    if rules.verify_signatures:
        verifier, version = rules.verifier, rules.version
        at = 0
        for i, signed in enumerate(flags):
            if signed:
                verifier.add(
                    first + i, first + i, key.sign_key, version, leaves[i], sigs[at : at + 64]
                )
                at += 64
        rep.signatures_checked += at // 64
    signed_at = flags.rfind(b"\x01")
    if signed_at >= 0:
        rules.uncovered.clear()
    if signed_at < n - 1 and not (rules.uncovered and signed_at < 0):
        pos = first + signed_at + 1
        rules.uncovered.append((pos, pos, key.kid))
    rep.events += n
    text = last_time.decode()
    rep.last_time = key.last_time = text
    rules.prev = leaves[-1]
    rules.prev_hex = rules.prev.hex()
    rules.last_position = first + n - 1
    rules.add_leaves(leaves)
    return True


class Helper:
    """A helper process speculating over the events after ``after_seq``."""

    def __init__(self, proc: subprocess.Popen[bytes], folder: tempfile.TemporaryDirectory[str]):
        self.proc = proc
        self.folder = folder
        self.file: BinaryIO | None = None

    @classmethod
    def start(cls, db: Path, after_seq: int) -> Helper | None:
        """Start the helper; None if this Python cannot."""
        here = Path(__file__).resolve().parent.parent
        if not sys.executable or not (here / "audit" / "helper.py").is_file():
            return None
        folder = tempfile.TemporaryDirectory(prefix="fedhub-audit-")
        out = Path(folder.name) / "runs"
        argv = [sys.executable, "-c", HELPER, str(here), str(db.resolve()), str(after_seq)]
        try:
            proc = subprocess.Popen(
                [*argv, str(out)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            folder.cleanup()
            return None
        return cls(proc, folder)

    def records(self) -> Iterator[tuple[Any, ...]]:
        """The helper's records in order, as it writes them (each framed by its length);
        ends with ``(HELPER_FAILED,)`` if the helper does not finish cleanly."""
        try:
            self.file = (Path(self.folder.name) / "runs").open("rb")
        except OSError:
            self.proc.wait()
            try:
                self.file = (Path(self.folder.name) / "runs").open("rb")
            except OSError:
                yield (HELPER_FAILED,)
                return
        while True:
            head = self._read(4)
            if head is None:
                return
            body = self._read(int.from_bytes(head, "little")) if len(head) == 4 else b""
            if len(head) < 4 or body is None:
                yield (HELPER_FAILED,)
                return
            # our own helper's output, in a folder only this user can read
            yield marshal.loads(body)  # noqa: S302

    def _read(self, n: int) -> bytes | None:
        """``n`` bytes from the file, waiting while the helper runs; None at a clean end,
        fewer than ``n`` bytes at an unclean one."""
        fh = self.file
        assert fh is not None
        got = b""
        while len(got) < n:
            data = fh.read(n - len(got))
            if data:
                got += data
                continue
            code = self.proc.poll()
            if code is None:
                time.sleep(0.002)
                continue
            data = fh.read(n - len(got))  # written just before it exited
            got += data
            if not data:
                return None if code == 0 and not got else got
        return got

    def close(self) -> None:
        """Stop the helper if it still runs; remove its file (harmless twice)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.file is not None:
            self.file.close()
        self.folder.cleanup()


def speculate_to(db: str, after_seq: int, out: str) -> None:
    """The helper's work: speculate over the events after ``after_seq``, records to ``out``."""
    source = SqliteEvents(Path(db))
    prev = source.stored_hash(after_seq)
    rows = positioned(source.rows(after_seq=after_seq), after_seq + 1)
    with Path(out).open("wb") as fh:
        for record in speculate(rows, prev if type(prev) is bytes else b""):
            data = marshal.dumps(record)
            fh.write(len(data).to_bytes(4, "little") + data)
            fh.flush()


def speculate(rows: Iterable[Row], prev: bytes) -> Iterator[tuple[Any, ...]]:
    """Records for a stretch of the log, taking for granted the state it starts from.

    A run record gathers consecutive request events of one body version that pass every
    check of the fast path that does not need the auditor's state, with the key id and log
    id of the run's first event, ``prev`` chained from the event before, ``seq`` counted
    from the first position and time never going back within the run: ``(FAST_RUN, first
    position, kid, log id, prev taken for granted, first time, last time, kind indices,
    request ids, hashes, signed flags, signatures of the signed ones)``. Every other event
    is a slow record ``(SLOW_EVENT, position, hash, sig, body)``, and a new run starts
    after it.
    """
    leaf = leaf_hash
    tail = FAST_TAIL.fullmatch
    fast_kinds = FAST_KINDS
    kind_index = FAST_INDEX
    head = b""  # the run's header up to prev's value; empty: no run open
    run: list[Any] = []
    version = 0
    kinds = bytearray()
    rids: list[str] = []
    hashes = bytearray()
    flags = bytearray()
    sigs = bytearray()
    last = b""
    prevhex = hexlify(prev)

    def flush() -> tuple[Any, ...]:
        nonlocal rids
        record = (*run[:6], last, bytes(kinds), rids, bytes(hashes), bytes(flags), bytes(sigs))
        kinds.clear()
        rids = []
        hashes.clear()
        flags.clear()
        sigs.clear()
        return record

    for pos, (hash_, sig, body) in rows:
        h = None
        ok = False
        if type(body) is bytes and type(sig) is bytes:
            h = leaf(body)
            at = body.rfind(b',"kid":"')
            if h == hash_ and at > 8 and body.startswith(b'{"data":{'):
                if not head:
                    m = TAIL.fullmatch(body, at)
                    if m is not None:
                        kid, log_id, version = m.group(1), m.group(2), int(m.group(7))
                        head = b',"kid":"' + kid + b'","log":"' + log_id + b'","prev":"'
                        run = [FAST_RUN, pos, kid, log_id, prev, b"", b""]
                        last = b""
                expected = head + prevhex + b'","seq":' + str(pos).encode() + b',"time":"'
                m = (
                    tail(body, at + len(expected))
                    if head and body.startswith(expected, at)
                    else None
                )
                if m is not None:
                    time_, kind_key = m.groups()
                    spec = fast_kinds.get(kind_key)
                    if spec is not None and spec.version == version and time_ >= last:
                        d = spec.data(body, 8, at)
                        good_sig = len(sig) == 64 or (not sig and version == 2)
                        if d is not None and good_sig:
                            if not kinds:
                                run[5] = time_
                            kinds.append(kind_index[kind_key])
                            rids.append(d.group(1).decode())
                            hashes += h
                            flags.append(1 if sig else 0)
                            sigs += sig
                            last = time_
                            ok = True
        if ok:
            if len(kinds) >= _RUN_MAX:
                yield flush()
                run = [FAST_RUN, pos + 1, run[2], run[3], h, b"", b""]
        else:
            if kinds:
                yield flush()
            head = b""
            yield (SLOW_EVENT, pos, hash_, sig, body)
        if h is not None:
            prev = h
            prevhex = hexlify(h)
    if kinds:
        yield flush()
