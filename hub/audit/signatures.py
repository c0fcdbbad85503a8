"""The audit's signature checks: queued in chunks, verified while the pass goes on.

A chunk is one signing key, one domain and a blob of (32-byte hash, 64-byte signature)
pairs; its answer is the indices of the pairs whose signature over ``domain || hash``
does not verify. Worker processes (a :class:`~hub.workers.WorkerPool`) run
:data:`WORKER`, which imports PyNaCl only (quick to start): a job is ``domain selector
(1 byte) || key || pairs``, an answer ``count x u32 index`` (little-endian).
:func:`verify_pairs` is the same check in this process.
"""

from __future__ import annotations

import os
import struct
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import nacl.bindings
import nacl.exceptions

from hub.events import DOMAIN_COMMIT, DOMAIN_EVENT
from hub.workers import WorkerPool

__all__ = ["CHUNK", "DOMAINS", "Verifier", "verify_pairs"]

#: Signatures travel in chunks of this many pairs; one chunk with its header fits a 64 KiB
#: pipe buffer, so handing it to a worker process never waits for long.
CHUNK: Final = 640
#: With ``processes=None``, worker processes start with the second chunk (starting one
#: costs about as much as 500 verifications); a log of one chunk or less uses threads.
PROCESS_AFTER: Final = CHUNK
#: The signature domain of each body version (the selector byte is the version).
DOMAINS: Final = {1: DOMAIN_EVENT, 2: DOMAIN_COMMIT}

_PAIR = 96
_BAD_SIGNATURE = (
    nacl.exceptions.BadSignatureError,
    nacl.exceptions.ValueError,
    nacl.exceptions.TypeError,
)

WORKER = f"""
import os, struct, sys
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError, TypeError as BadType, ValueError as BadValue
DOMAINS = {DOMAINS!r}
read, out = sys.stdin.buffer.read, os.fdopen(int(sys.argv[1]), "wb")
while len(head := read(4)) == 4:
    blob = read(int.from_bytes(head, "little"))
    domain, key = DOMAINS[blob[0]], blob[1:33]
    bad = []
    for i, at in enumerate(range(33, len(blob), {_PAIR})):
        try:
            crypto_sign_open(blob[at + 32:at + {_PAIR}] + domain + blob[at:at + 32], key)
        except (BadSignatureError, BadValue, BadType):
            bad.append(i)
    out.write(struct.pack(f"<{{len(bad) + 1}}I", 4 * len(bad), *bad))
    out.flush()
"""


def verify_pairs(key: bytes, domain: bytes, pairs: bytes) -> list[int]:
    """Indices of the (hash, signature) pairs whose signature does not verify."""
    bad: list[int] = []
    open_ = nacl.bindings.crypto_sign_open
    for i, at in enumerate(range(0, len(pairs), _PAIR)):
        try:
            open_(pairs[at + 32 : at + _PAIR] + domain + pairs[at : at + 32], key)
        except _BAD_SIGNATURE:
            bad.append(i)
    return bad


@dataclass(slots=True)
class _Chunk:
    version: int
    key: bytes
    pairs: bytes
    positions: list[int]
    seqs: dict[int, int]  # index -> seq, where the event's seq is not its position


class Verifier:
    """Event signatures, queued in chunks and checked while the pass goes on.

    A small log's chunks go to a thread pool (libsodium releases the GIL). Once enough
    have been queued to be worth it (or at once with ``processes=True``), worker processes
    take over -- one fewer than ``threads``, since this process verifies too: a chunk that
    finds every worker busy (two chunks each) is verified here, in between reading. The
    work balances itself and every core stays busy, with no lock shared and no core
    oversubscribed. A worker that dies, or answers nonsense, has its chunks checked by the
    thread pool.
    """

    def __init__(self, threads: int, processes: bool | None, worker: str = WORKER) -> None:
        self.threads = threads
        self.processes = processes
        self.worker = worker
        self.key = b""
        self.version = 1
        self.blob = bytearray()  # pairs of the chunk being filled
        self.positions: list[int] = []  # their events' positions
        self.seqs: dict[int, int] = {}
        self.queued = 0
        self.bad: list[tuple[int, int]] = []
        self.pool: ThreadPoolExecutor | None = None
        self.futures: list[tuple[_Chunk, Future[list[int]]]] = []
        self.workers: WorkerPool[_Chunk] | None = None
        self.tried_workers = False

    def use_key(self, key: bytes, version: int) -> None:
        """Start a new chunk unless it is for ``key`` and body ``version`` already."""
        if key != self.key or version != self.version:
            self.flush()
            self.key = key
            self.version = version

    def add(self, position: int, seq: int, key: bytes, version: int, h: bytes, sig: bytes) -> None:
        """Queue one event's signature check."""
        if type(sig) is not bytes or len(sig) != 64 or len(key) != 32 or len(h) != 32:
            self.bad.append((position, seq))
            return
        self.use_key(key, version)
        if seq != position:
            self.seqs[len(self.positions)] = seq
        self.positions.append(position)
        self.blob += h
        self.blob += sig
        if len(self.positions) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        """Hand the chunk being filled to a worker process, this process or the pool."""
        if not self.positions:
            return
        chunk = _Chunk(
            self.version, self.key, bytes(self.blob), self.positions.copy(), self.seqs.copy()
        )
        self.blob.clear()
        self.positions.clear()
        self.seqs.clear()
        self.queued += len(chunk.positions)
        if self.workers is None and not self.tried_workers and self._want_workers():
            self.tried_workers = True
            count = max(1, self.threads - 1)
            self.workers = WorkerPool.start(self.worker, count, self._answer, self._orphaned)
        workers = self.workers
        if workers is None or not workers.usable:
            self._orphaned(chunk)
        elif not workers.submit(chunk, bytes([chunk.version]) + chunk.key + chunk.pairs):
            self._answered(chunk, verify_pairs(chunk.key, DOMAINS[chunk.version], chunk.pairs))

    def _want_workers(self) -> bool:
        if self.processes is False or self.threads < 2 or os.name != "posix":
            return False
        return self.processes is True or self.queued >= PROCESS_AFTER

    def _orphaned(self, chunk: _Chunk) -> None:
        """Check a chunk on the thread pool."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="audit-verify")
        fut = self.pool.submit(verify_pairs, chunk.key, DOMAINS[chunk.version], chunk.pairs)
        self.futures.append((chunk, fut))

    def _answer(self, chunk: _Chunk, payload: bytes) -> bool:
        """A worker's answer, if it is one for this chunk (else False: not trusted)."""
        size = len(chunk.positions)
        if len(payload) % 4 or len(payload) // 4 > size:
            return False
        bad = list(struct.unpack(f"<{len(payload) // 4}I", payload))
        if any(i >= size for i in bad):
            return False
        self._answered(chunk, bad)
        return True

    def _answered(self, chunk: _Chunk, bad: list[int]) -> None:
        for i in bad:
            position = chunk.positions[i]
            self.bad.append((position, chunk.seqs.get(i, position)))

    def finish(self) -> list[tuple[int, int]]:
        """Wait for every check; the (position, seq) of each bad signature, in order."""
        self.flush()
        if self.workers is not None:
            self.workers.drain()
        for chunk, fut in self.futures:
            self._answered(chunk, fut.result())
        self.close()
        return sorted(self.bad)

    def close(self) -> None:
        """Stop the workers and the pool (harmless twice)."""
        if self.workers is not None:
            self.workers.close()
            self.workers = None
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
