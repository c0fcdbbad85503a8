"""Moving a sealed payload between two NATS connections: windowed, acked, cancellable.

A :class:`Sender` pushes the chunks of a sealed file (:mod:`hub.transfer.sealing`) to the
receiver's subject; a :class:`Receiver` opens them in order into a spool file next to its
destination and renames it into place only after the final chunk and the payload hash
verified. Each side has one subject it listens on; across sites these are
``fh.bulk.<site>.<transfer>`` for whatever goes to the called site and an inbox
``fh.inbox.<site>.<user>.<token>`` for whatever goes to the caller (the accounts export
exactly these, see docs/topology.md). Messages (first byte is the kind)::

    to the receiver   O ‖ u16 n ‖ control subject (n bytes) ‖ header   open (repeated until acked)
                      D ‖ u64 index ‖ sealed chunk                   data
                      X ‖ code ‖ LF ‖ reason                          stop (cancel, timeout, error)
    to the sender     A ‖ u64 next ‖ u64 window                      ack: chunks < next are written
                      N ‖ u64 next ‖ u64 window                      gap: send again from next
                      K                                               done: verified and committed
                      X ‖ code ‖ LF ‖ reason                          stop

Flow control is by credit: the sender keeps at most ``window`` sealed bytes unacked (and
always at least one chunk), the receiver acks every ``ack_every`` bytes it has written.
Core NATS across a leaf link is at-most-once, so a chunk or ack that is lost is sent again:
on a gap the receiver asks at once (N), and when no ack arrives for ``retransmit_after``
seconds the sender goes back to the first unacked chunk (go-back-N: the receiver keeps no
out-of-order chunks, so its memory is one chunk). The sender reads every chunk from its
file when it sends it, so its memory is one chunk too. Either side stops both with X:
:meth:`Sender.cancel`/:meth:`Receiver.cancel`, a cancelled task, a deadline, an integrity
failure; a receiver that hears nothing for ``idle_timeout`` gives up and removes its spool
file. See docs/protocol.md, "Bulk transfers".
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, TypeVar, cast

import nats.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from hub.errors import (
    ChunkError,
    TransferCancelledError,
    TransferError,
    TransferTimeoutError,
)
from hub.transfer.options import (
    ProgressCallback,
    ProgressReporter,
    Received,
    TransferOptions,
    TransferStats,
)
from hub.transfer.sealing import (
    HEADER_BYTES,
    MAX_CHUNK_SIZE,
    BodyDigest,
    Header,
    Opener,
    read_frame_after,
    sealed_chunk_limit,
)
from hub.transfer.spool import partial_path

__all__ = ["Receiver", "Sender"]

log = structlog.get_logger(__name__)

_U64 = struct.Struct(">Q")
_ACK = struct.Struct(">cQQ")
_U16 = struct.Struct(">H")
#: Kind byte and index before a sealed chunk in a data message.
_DATA_OVERHEAD = 1 + _U64.size
_T = TypeVar("_T")
#: Lingering receivers (a task needs a strong reference while it runs).
_LINGERING: set[asyncio.Task[None]] = set()


def _stop_message(code: str, reason: str) -> bytes:
    return b"X" + code.encode() + b"\n" + reason.encode()[:1000]


def _stop_error(data: bytes, who: str) -> TransferError:
    code, _, reason = data[1:].partition(b"\n")
    text = f"{who} stopped the transfer: {reason.decode(errors='replace')}"
    if code == b"cancelled":
        return TransferCancelledError(text)
    if code == b"timeout":
        return TransferTimeoutError(text)
    return TransferError(text, code=code.decode(errors="replace") or "failed")


class _Side:
    """What sender and receiver share: a deadline, cancellation, stopping the peer."""

    def __init__(self, nc: NatsClient, timeout: float | None) -> None:
        self._nc = nc
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._task: asyncio.Task[object] | None = None
        self._cancel_reason: str | None = None
        self._peer: str | None = None
        #: The stop the peer sent us (not echoed back to it).
        self._peer_stop: TransferError | None = None
        #: What this side said last ("done" or a stop), repeated to a peer that missed it.
        self._last_word: bytes | None = None

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop this transfer on both sides; :meth:`run` raises TransferCancelledError."""
        if self._cancel_reason is None:
            self._cancel_reason = reason
            if self._task is not None:
                self._task.cancel()

    def _left(self) -> float | None:
        if self._deadline is None:
            return None
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TransferTimeoutError("the transfer's deadline passed")
        return left

    async def _stop_peer(self, code: str, reason: str) -> None:
        """Tell the peer to stop (twice: it may be lost); never raises."""
        self._last_word = _stop_message(code, reason)
        if self._peer is None:
            return
        with contextlib.suppress(Exception):
            for _ in range(2):
                await self._publish(self._peer, self._last_word)
            await self._nc.flush(timeout=1)

    async def _publish(self, subject: str, data: bytes | bytearray) -> None:
        """Publish one message of this transfer (core NATS: at most once)."""
        # nats-py only takes len() of the payload and appends it to the command: a
        # bytearray goes out as it is (typed bytes there)
        await self._nc.publish(subject, cast(bytes, data))

    def _stopped_by_peer(self, data: bytes, who: str) -> TransferError:
        self._peer_stop = _stop_error(data, who)
        return self._peer_stop

    async def _guarded(self, work: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``work()`` with cancel, deadline and failures also stopping the peer."""
        self._task = asyncio.current_task()
        try:
            if self._cancel_reason is not None:  # cancelled before it ran
                raise asyncio.CancelledError
            return await work()
        except asyncio.CancelledError:
            if self._cancel_reason is None:
                await self._stop_peer("cancelled", "its task was cancelled")
                raise
            assert self._task is not None
            if self._task.cancelling():
                self._task.uncancel()
            await self._stop_peer("cancelled", self._cancel_reason)
            raise TransferCancelledError(f"cancelled here: {self._cancel_reason}") from None
        except TransferError as exc:
            if exc is not self._peer_stop:
                await self._stop_peer(exc.code, exc.message)
            raise
        except ChunkError as exc:
            await self._stop_peer("integrity", exc.message)
            raise


class Sender(_Side):
    """Sends one sealed file to a receiver's subject; :meth:`run` returns when it is done.

    ``to`` is the receiver's subject, ``control`` the subject this sender listens on for
    acks (unique to this transfer). ``timeout`` bounds the whole transfer (seconds).
    """

    def __init__(
        self,
        nc: NatsClient,
        sealed: Path | str,
        *,
        to: str,
        control: str,
        options: TransferOptions | None = None,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(nc, timeout)
        self.path = Path(sealed)
        self.to = to
        self.control = control
        self.options = options or TransferOptions()
        self._progress_cb = progress
        self._peer = to
        self._wakeup = asyncio.Event()
        self._acked = 0
        self._window = self.options.window
        self._gap: int | None = None
        self._opened = False
        self._done = False
        self._stop: TransferError | None = None

    async def run(self) -> TransferStats:
        """Send everything; return once the receiver has verified and committed it."""
        return await self._guarded(self._run)

    def _on_control(self, data: bytes) -> None:
        kind = data[:1]
        if kind in (b"A", b"N") and len(data) == _ACK.size:
            _, nxt, window = _ACK.unpack(data)
            self._opened = True
            self._window = max(1, min(self.options.window, window))
            if nxt > self._acked:
                self._acked = nxt
            if kind == b"N":
                self._gap = nxt
        elif kind == b"K":
            self._done = True
        elif kind == b"X":
            self._stop = self._stopped_by_peer(data, "the receiver")
        self._wakeup.set()

    async def _run(self) -> TransferStats:
        async def on_msg(msg: Msg) -> None:
            self._on_control(msg.data)

        sub = await self._nc.subscribe(self.control, cb=on_msg)
        try:
            with self.path.open("rb") as source:
                return await self._send(source)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _wait(self, seconds: float) -> bool:
        """Wait for a control message up to ``seconds`` (and the deadline); True if one came.

        Raises what the receiver said when it stopped the transfer.
        """
        left = self._left()
        wait = seconds if left is None else min(seconds, left)
        try:
            await asyncio.wait_for(self._wakeup.wait(), wait)
        except TimeoutError:
            self._left()
            return False
        finally:
            self._wakeup.clear()
        if self._stop is not None:
            raise self._stop
        return True

    async def _send(self, source: io.BufferedIOBase) -> TransferStats:
        header = Header.from_bytes(source.read(HEADER_BYTES))
        largest = _DATA_OVERHEAD + sealed_chunk_limit(header.chunk_size)
        if largest > self._nc.max_payload:
            raise TransferError(
                f"chunks of {header.chunk_size} bytes make messages of up to {largest} bytes, "
                f"above the server's max_payload of {self._nc.max_payload}",
                code="refused",
                hint="seal with a smaller chunk_size, or raise the server's max_payload",
            )
        count = header.chunk_count
        opts = self.options
        progress = ProgressReporter(
            self._progress_cb, header.transfer, header.total_size, opts.progress_interval
        )
        await self._offer(header)
        # Offset and sealed size of every chunk sent and not acked: exactly [acked, high).
        sent: dict[int, tuple[int, int]] = {}
        next_index, high, high_offset = 0, 0, HEADER_BYTES
        resent, sealed_bytes, retries, peak = 0, 0, 0, 0
        last_progress = time.monotonic()
        while not self._done:
            for index in [i for i in sent if i < self._acked]:
                del sent[index]
            next_index = max(next_index, self._acked)
            if self._gap is not None:
                next_index, self._gap = min(next_index, self._gap), None
            in_flight = sum(size for i, (_, size) in sent.items() if i < next_index)
            while next_index < count and in_flight < self._window:
                offset = sent[next_index][0] if next_index < high else high_offset
                resent += next_index < high
                source.seek(offset)
                message = read_frame_after(source, b"D" + _U64.pack(next_index))
                if message is None:
                    raise ChunkError(
                        f"sealed file ends before chunk {next_index}", index=next_index
                    )
                size = len(message) - _DATA_OVERHEAD
                sent[next_index] = (offset, size)
                await self._publish(self.to, message)
                if next_index == high:
                    high, high_offset = high + 1, source.tell()
                sealed_bytes += size
                in_flight += size
                peak = max(peak, in_flight)
                next_index += 1
            before = self._acked
            waited = time.monotonic() - last_progress
            heard = await self._wait(max(0.0, opts.retransmit_after - waited))
            # all chunks acked: the receiver repeats that ack while it commits the file
            if self._acked > before or self._done or (heard and self._acked == count):
                retries, last_progress = 0, time.monotonic()
                progress(min(self._acked * header.chunk_size, header.total_size))
            elif time.monotonic() - last_progress >= opts.retransmit_after:
                retries += 1
                if retries > opts.max_retries:
                    raise TransferTimeoutError(
                        f"transfer {header.transfer}: the receiver stopped answering"
                    )
                log.info("transfer.resending", transfer=header.transfer, start=self._acked)
                next_index, last_progress = self._acked, time.monotonic()
        seconds = time.monotonic() - progress.started
        progress(header.total_size, final=True)
        return TransferStats(
            header.transfer, header.total_size, sealed_bytes, count, resent, seconds, peak
        )

    async def _offer(self, header: Header) -> None:
        """Send the open message until the receiver answers (or ``open_timeout`` passes)."""
        control = self.control.encode()
        message = b"O" + _U16.pack(len(control)) + control + header.to_bytes()
        give_up = time.monotonic() + self.options.open_timeout
        pause = 0.02  # doubling up to half a second: a receiver that is ready answers at once
        while not self._opened:
            if time.monotonic() >= give_up:
                raise TransferTimeoutError(
                    f"transfer {header.transfer}: no receiver answered on {self.to} "
                    f"within {self.options.open_timeout:.0f} s"
                )
            await self._publish(self.to, message)
            await self._wait(min(self.options.retransmit_after, pause))
            pause = min(2 * pause, 0.5)


class Receiver(_Side):
    """Receives one transfer on ``subject`` into ``dest``; :meth:`run` returns when whole.

    The payload is written to a spool file next to ``dest`` (``.<name>.fh-partial``) and
    renamed to ``dest`` only after the final chunk and the payload hash verified; on any
    failure the spool file is removed. With ``key`` the chunks are opened and ``dest``
    holds the plaintext; with ``key=None`` it holds the sealed form (header and body),
    checked against the header's payload hash. ``expect_hash``/``expect_size`` (from a
    signed request) and ``expect_control`` (the sender's subject) refuse any other sender;
    give ``expect_control`` whenever it is known: then a cancel or deadline also stops a
    sender whose open has not arrived yet. ``sync=False`` skips flushing ``dest`` to disk
    before it is renamed into place: for a spool file that a crash makes worthless anyway
    (a node's argument: the call is delivered again and sends it again).
    """

    def __init__(
        self,
        nc: NatsClient,
        *,
        subject: str,
        dest: Path | str,
        key: bytes | None,
        expect_hash: bytes | None = None,
        expect_size: int | None = None,
        expect_control: str | None = None,
        options: TransferOptions | None = None,
        progress: ProgressCallback | None = None,
        timeout: float | None = None,
        sync: bool = True,
    ) -> None:
        super().__init__(nc, timeout)
        self.subject = subject
        self.dest = Path(dest)
        self.sync = sync
        self.key = key
        self.expect_hash = expect_hash
        self.expect_size = expect_size
        self.expect_control = expect_control
        self.options = options or TransferOptions()
        self._progress_cb = progress
        # Knowing the sender's subject, a stop reaches it even before its open arrives.
        self._peer = expect_control

    async def run(self) -> Received:
        """Receive the whole payload; return where it is (``dest``) once verified.

        Afterwards the receiver keeps answering the sender for ``linger`` seconds with its
        last word ("done", or the stop it sent), in case the sender missed it.
        """
        limit = 4 * self.options.window + 4 * MAX_CHUNK_SIZE
        sub = await self._nc.subscribe(self.subject, pending_bytes_limit=limit)
        try:
            return await self._guarded(lambda: self._run(sub))
        finally:
            task = asyncio.get_running_loop().create_task(self._linger(sub))
            _LINGERING.add(task)
            task.add_done_callback(_LINGERING.discard)

    async def _next(self, sub: Subscription) -> bytes:
        left = self._left()
        wait = self.options.idle_timeout if left is None else min(self.options.idle_timeout, left)
        try:
            msg = await sub.next_msg(timeout=wait)
        except nats.errors.TimeoutError:
            self._left()
            raise TransferTimeoutError(
                f"nothing arrived on {self.subject} for {wait:.1f} s (sender gone?)"
            ) from None
        return bytes(msg.data)

    async def _ack(self, kind: bytes, next_index: int) -> None:
        assert self._peer is not None
        await self._publish(self._peer, _ACK.pack(kind, next_index, self.options.window))

    async def _write(self, opener: Opener, index: int, sealed: bytes, spool: BinaryIO) -> None:
        """Open chunk ``index`` and append its plaintext to the spool file."""
        # libsodium and the file write release the GIL: open off the event loop
        await asyncio.to_thread(_absorb, opener, index, sealed, spool)

    async def _run(self, sub: Subscription) -> Received:
        partial = partial_path(self.dest)
        try:
            header = await self._open(sub)
            with partial.open("wb") as spool:
                stats = await self._receive(sub, header, spool)
                await self._sync(spool, header.chunk_count)
            partial.replace(self.dest)
            assert self._peer is not None
            self._last_word = b"K"
            await self._publish(self._peer, b"K")
            log.info("transfer.received", transfer=header.transfer, bytes=header.total_size)
            return Received(self.dest, header, stats)
        finally:
            partial.unlink(missing_ok=True)

    async def _sync(self, spool: BinaryIO, count: int) -> None:
        """Flush the verified spool file to disk, telling the sender all chunks are in.

        Writing a large file out can take longer than the sender waits between acks, so
        the ack of every chunk is repeated until the file is on disk.
        """
        spool.flush()
        if not self.sync:
            return
        syncing = asyncio.ensure_future(asyncio.to_thread(os.fsync, spool.fileno()))
        while True:
            await self._ack(b"A", count)
            done, _ = await asyncio.wait({syncing}, timeout=self.options.retransmit_after / 2)
            if done:
                syncing.result()
                return

    async def _linger(self, sub: Subscription) -> None:
        """Answer the sender with the last word for a while (it may have missed it)."""
        try:
            if self._last_word is not None:
                async with asyncio.timeout(self.options.linger):
                    while True:
                        msg = await sub.next_msg(timeout=None)
                        peer = self._peer
                        if msg.data[:1] == b"O" and peer is None:
                            peer = _open_control(msg.data)
                        if msg.data[:1] in (b"D", b"O") and peer is not None:
                            await self._publish(peer, self._last_word)
        except (TimeoutError, nats.errors.Error, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _open(self, sub: Subscription) -> Header:
        """Wait for the sender's open message and check it against what is expected."""
        while True:
            data = await self._next(sub)
            kind = data[:1]
            if kind == b"X":
                raise self._stopped_by_peer(data, "the sender")
            if kind != b"O" or len(data) < 3:
                continue  # data of an open that was lost: it is sent again
            (size,) = _U16.unpack(data[1:3])
            control = _open_control(data)
            if self.expect_control is not None and control != self.expect_control:
                log.warning("transfer.foreign_open", subject=self.subject)
                continue
            self._peer = control
            header = Header.from_bytes(data[3 + size :])
            if self.expect_hash is not None and header.payload_hash != self.expect_hash:
                raise TransferError("the payload's hash is not the expected one", code="refused")
            if self.expect_size is not None and header.total_size != self.expect_size:
                raise TransferError("the payload's size is not the expected one", code="refused")
            await self._ack(b"A", 0)
            return header

    async def _receive(self, sub: Subscription, header: Header, spool: BinaryIO) -> TransferStats:
        opts = self.options
        opener = Opener(header, self.key) if self.key is not None else None
        checker = None if opener is not None else _SealedSpool(header, spool)
        progress = ProgressReporter(
            self._progress_cb, header.transfer, header.total_size, opts.progress_interval
        )
        expected, since_ack, nacked, sealed_bytes, duplicates = 0, 0, -1, 0, 0
        while expected < header.chunk_count:
            data = await self._next(sub)
            kind = data[:1]
            if kind == b"X":
                raise self._stopped_by_peer(data, "the sender")
            if kind == b"O":
                await self._ack(b"A", expected)  # our first ack was lost
                continue
            if kind != b"D" or len(data) < 9:
                continue
            (index,) = _U64.unpack(data[1:9])
            if index < expected:
                duplicates += 1
                await self._ack(b"A", expected)
                continue
            if index > expected:
                if nacked != expected:
                    nacked = expected
                    await self._ack(b"N", expected)
                continue
            sealed = data[9:]
            if opener is not None:
                await self._write(opener, index, sealed, spool)
            else:
                assert checker is not None
                checker.add(sealed)
            expected += 1
            sealed_bytes += len(sealed)
            since_ack += len(sealed)
            progress(min(expected * header.chunk_size, header.total_size))
            if since_ack >= opts.ack_every and expected < header.chunk_count:
                since_ack = 0
                await self._ack(b"A", expected)
        if opener is not None:
            opener.finish()
        else:
            assert checker is not None
            checker.finish()
        progress(header.total_size, final=True)
        seconds = time.monotonic() - progress.started
        return TransferStats(
            header.transfer,
            header.total_size,
            sealed_bytes,
            header.chunk_count,
            duplicates,
            seconds,
        )


def _open_control(data: bytes) -> str:
    """The sender's subject in an open message."""
    (size,) = _U16.unpack(data[1:3])
    return data[3 : 3 + size].decode(errors="replace")


def _absorb(opener: Opener, index: int, sealed: bytes, spool: BinaryIO) -> None:
    spool.write(opener.open(index, sealed))


class _SealedSpool:
    """Writes the sealed form as it arrives (no key) and checks its hash at the end."""

    def __init__(self, header: Header, spool: BinaryIO) -> None:
        self.header = header
        self.spool = spool
        self.digest = BodyDigest()
        spool.write(header.to_bytes())

    def add(self, sealed: bytes) -> None:
        self.spool.write(self.digest.add(sealed))
        self.spool.write(sealed)

    def finish(self) -> None:
        if self.digest.digest() != self.header.payload_hash:
            raise ChunkError(
                f"transfer {self.header.transfer}: the payload hash does not match the header"
            )
