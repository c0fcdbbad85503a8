"""The sealed form of a payload of any size: a header and authenticated chunks.

A payload is cut into plaintext chunks of a fixed size, each optionally compressed with
zstd, and sealed in order with libsodium's ``crypto_secretstream_xchacha20poly1305``
under a fresh content key (:func:`hub.crypto.new_content_key`; wrap it per recipient with
:func:`hub.crypto.wrap_key`). The sealed form is::

    header (HEADER_BYTES)  ‖  frame 0 ‖ frame 1 ‖ ... ‖ frame n-1
    frame = u32 big-endian length ‖ secretstream ciphertext of (encoding byte ‖ data)

The *body* is the frames; its BLAKE2b-256 is the payload hash (what a log records) and
sits in the header. Every chunk's additional data is the header without the hash (magic,
flags, sizes, chunk count, transfer id, secretstream header) followed by the chunk's index,
so a chunk only opens at its own position of its own transfer; the last chunk, and only it,
carries the secretstream FINAL tag. A flipped, dropped, repeated, reordered, truncated or
foreign chunk raises :class:`hub.errors.ChunkError` naming the chunk, never wrong data.

Sealing writes the header last (the hash is known once the body is written), so
:func:`seal_stream` needs a seekable sink: a spool file that the transfer layer then sends
from. Opening computes the hash while reading; :meth:`Opener.finish` checks it, and a
receiver commits nothing before that. Byte layout: docs/protocol.md, "Bulk transfers".
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import nacl.bindings as sodium
import nacl.exceptions
import zstandard

from hub.crypto import CONTENT_KEY_BYTES
from hub.errors import ChunkError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FRAME_PREFIX_BYTES",
    "HEADER_BYTES",
    "MAX_CHUNK_SIZE",
    "TRANSFER_ID_BYTES",
    "BodyDigest",
    "Header",
    "Opener",
    "SealedInfo",
    "Sealer",
    "iter_frames",
    "new_transfer_id",
    "open_bytes",
    "open_stream",
    "read_frame",
    "read_frame_after",
    "seal_bytes",
    "seal_file",
    "seal_stream",
    "sealed_chunk_limit",
]

MAGIC = b"FHT1"
#: Plaintext bytes per chunk unless told otherwise.
DEFAULT_CHUNK_SIZE = 1024 * 1024
#: Largest chunk: a sealed chunk plus framing must stay well below NATS's max_payload.
MAX_CHUNK_SIZE = 4 * 1024 * 1024
TRANSFER_ID_BYTES = 16
STREAM_HEADER_BYTES: int = sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES
HASH_BYTES = 32
#: ``u32`` length before every sealed chunk in the body.
FRAME_PREFIX_BYTES = 4
_ABYTES: int = sodium.crypto_secretstream_xchacha20poly1305_ABYTES
_TAG_MESSAGE: int = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
_TAG_FINAL: int = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
# magic, flags, 3 reserved, chunk size, total size, chunk count, transfer id, stream header
_BINDING = struct.Struct(f">4sB3sIQQ{TRANSFER_ID_BYTES}s{STREAM_HEADER_BYTES}s")
HEADER_BYTES = _BINDING.size + HASH_BYTES
_FLAG_ZSTD = 0x01
_RESERVED = bytes(3)
_ENC_RAW = 0
_ENC_ZSTD = 1
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class BodyDigest:
    """The payload hash, BLAKE2b-256 of the body, fed one sealed chunk at a time."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=HASH_BYTES)

    def add(self, sealed: bytes) -> bytes:
        """Hash the frame of ``sealed``; return the frame's length prefix."""
        prefix = _U32.pack(len(sealed))
        self._hash.update(prefix)
        self._hash.update(sealed)
        return prefix

    def digest(self) -> bytes:
        """The hash of the frames added so far."""
        return self._hash.digest()


def sealed_chunk_limit(chunk_size: int) -> int:
    """Largest sealed chunk for ``chunk_size``: encoding byte and tag added to the chunk."""
    return chunk_size + 1 + _ABYTES


def new_transfer_id() -> bytes:
    """A fresh random transfer id (128 bits)."""
    return secrets.token_bytes(TRANSFER_ID_BYTES)


@dataclass(frozen=True, slots=True)
class Header:
    """What a receiver needs to open a sealed payload, besides the content key."""

    chunk_size: int
    total_size: int
    chunk_count: int
    transfer_id: bytes
    stream_header: bytes
    payload_hash: bytes
    compressed: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.chunk_size <= MAX_CHUNK_SIZE:
            raise ChunkError(f"chunk size {self.chunk_size} outside 1..{MAX_CHUNK_SIZE}")
        if self.total_size < 0 or self.chunk_count != _chunk_count(
            self.total_size, self.chunk_size
        ):
            raise ChunkError(
                f"{self.chunk_count} chunks cannot hold {self.total_size} bytes "
                f"in chunks of {self.chunk_size}"
            )
        if len(self.transfer_id) != TRANSFER_ID_BYTES:
            raise ChunkError(f"transfer id is {len(self.transfer_id)} bytes")
        if len(self.stream_header) != STREAM_HEADER_BYTES or len(self.payload_hash) != HASH_BYTES:
            raise ChunkError("header has a stream header or payload hash of the wrong length")

    @property
    def transfer(self) -> str:
        """The transfer id as 32 hex characters (also a subject token)."""
        return self.transfer_id.hex()

    def binding(self) -> bytes:
        """The header without the payload hash: the start of every chunk's additional data."""
        return _BINDING.pack(
            MAGIC,
            _FLAG_ZSTD if self.compressed else 0,
            _RESERVED,
            self.chunk_size,
            self.total_size,
            self.chunk_count,
            self.transfer_id,
            self.stream_header,
        )

    def to_bytes(self) -> bytes:
        """The header as it is stored and sent (:data:`HEADER_BYTES` bytes)."""
        return self.binding() + self.payload_hash

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        """Parse a header; :class:`ChunkError` if it is not one."""
        if len(data) != HEADER_BYTES:
            raise ChunkError(f"sealed payload header is {len(data)} bytes, not {HEADER_BYTES}")
        magic, flags, reserved, chunk_size, total, count, tid, stream_header = _BINDING.unpack(
            data[: _BINDING.size]
        )
        if magic != MAGIC or flags & ~_FLAG_ZSTD or reserved != _RESERVED:
            raise ChunkError("not a sealed payload header (magic, flags or reserved bytes)")
        return cls(
            chunk_size=chunk_size,
            total_size=total,
            chunk_count=count,
            transfer_id=tid,
            stream_header=stream_header,
            payload_hash=data[_BINDING.size :],
            compressed=bool(flags & _FLAG_ZSTD),
        )

    def chunk_ad(self, index: int) -> bytes:
        """Additional data of chunk ``index``: :meth:`binding` ‖ u64 index."""
        return self.binding() + _U64.pack(index)

    def plain_size(self, index: int) -> int:
        """Plaintext bytes in chunk ``index`` (all full but the last)."""
        if index < self.chunk_count - 1:
            return self.chunk_size
        return self.total_size - (self.chunk_count - 1) * self.chunk_size


def _chunk_count(total: int, chunk_size: int) -> int:
    """Chunks for ``total`` bytes; an empty payload is one empty FINAL chunk."""
    return max(1, -(-total // chunk_size))


@dataclass(frozen=True, slots=True)
class SealedInfo:
    """The result of sealing: the header, and how big the body came out."""

    header: Header
    body_size: int

    @property
    def sealed_size(self) -> int:
        """Header plus body bytes."""
        return HEADER_BYTES + self.body_size

    @property
    def saving(self) -> float:
        """Fraction of the plaintext size saved (negative: the sealed form is bigger)."""
        total = self.header.total_size
        return 0.0 if total == 0 else 1.0 - self.body_size / total


#: Threads that hash and write sealed chunks while the sealing thread encrypts the next:
#: shared by the process, each Sealer keeps at most one chunk there. (A receiver does not
#: do this: it runs while sender and servers keep both cores busy, where a hand-off per
#: chunk only adds CPU; a sealing pass runs alone.)
_WORKERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="fedhub-chunks")
#: Chunks smaller than this are hashed in line (a thread hand-off would cost more).
_PARALLEL_MIN = 64 * 1024


def _in_parallel(work: Callable[[bytes], object], sealed: bytes) -> Future[object] | None:
    """``work(sealed)`` on a worker thread for a large chunk (its future); in line, and
    None, for a small one."""
    if len(sealed) < _PARALLEL_MIN:
        work(sealed)
        return None
    return _WORKERS.submit(work, sealed)


def _check_key(key: bytes) -> None:
    if len(key) != CONTENT_KEY_BYTES:
        raise ChunkError(f"content key is {len(key)} bytes, not {CONTENT_KEY_BYTES}")


def _size_of(source: BinaryIO) -> int:
    """Bytes left in a seekable ``source``."""
    here = source.tell()
    end = source.seek(0, os.SEEK_END)
    source.seek(here)
    return end - here


def _read_exactly(source: BinaryIO | io.BufferedIOBase, size: int) -> bytes:
    data = source.read(size)
    while len(data) < size:
        more = source.read(size - len(data))
        if not more:
            break
        data += more
    return data


class Sealer:
    """Seals a payload of a size known up front, written to it piece by piece, into
    ``sink`` (seekable: the header, which holds the body's hash, is written last into
    the room left for it). Memory: two chunks.

    Each chunk is encrypted on the caller's thread while the one before is hashed and
    written on a worker thread: libsodium, hashlib and file writes all release the GIL,
    so on two cores sealing takes about the time of its slower half.

    Write exactly ``total_size`` bytes, then :meth:`close`; writing more, or closing
    early, raises :class:`ChunkError`.
    """

    def __init__(
        self,
        sink: BinaryIO,
        key: bytes,
        *,
        total_size: int,
        transfer_id: bytes | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compress: bool = False,
    ) -> None:
        _check_key(key)
        self._sink = sink
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        stream_header = sodium.crypto_secretstream_xchacha20poly1305_init_push(self._state, key)
        self.header = Header(
            chunk_size=chunk_size,
            total_size=total_size,
            chunk_count=_chunk_count(total_size, chunk_size),
            transfer_id=transfer_id or new_transfer_id(),
            stream_header=stream_header,
            payload_hash=bytes(HASH_BYTES),
            compressed=compress,
        )
        self._start = sink.tell()
        sink.write(bytes(HEADER_BYTES))
        self._digest = BodyDigest()
        self._compressor = zstandard.ZstdCompressor(level=3) if compress else None
        self._buffer = bytearray()
        self._index = 0
        self._body = 0
        #: Hashing and writing the chunk sealed last (chunks are output strictly in order).
        self._output: Future[object] | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Take the next ``len(data)`` bytes of the payload; seal every chunk completed.

        Chunks are sealed from ``data`` where it holds them whole; only the bytes of a
        chunk that is not complete yet are kept.
        """
        header = self.header
        if (
            not self._buffer
            and isinstance(data, bytes)
            and self._index < header.chunk_count
            and len(data) == header.plain_size(self._index) > 0
        ):
            self._seal(data)  # exactly the next chunk (seal_stream): no copy
            return len(data)
        view = memoryview(data).cast("B")
        try:
            size, pos = len(view), 0
            while pos < size and self._index < header.chunk_count:
                need = header.plain_size(self._index) - len(self._buffer)
                if size - pos < need:
                    break
                if self._buffer:
                    self._buffer += view[pos : pos + need]
                    plain = bytes(self._buffer)
                    self._buffer.clear()
                else:
                    plain = bytes(view[pos : pos + need])
                self._seal(plain)
                pos += need
            if pos < size and self._index == header.chunk_count:
                self.abort()
                raise ChunkError(f"more than the {header.total_size} bytes announced")
            self._buffer += view[pos:]
        finally:
            view.release()
        return size

    def _seal(self, plain: bytes) -> None:
        header = self.header
        index = self._index
        message = _encode_chunk(plain, self._compressor)
        tag = _TAG_FINAL if index == header.chunk_count - 1 else _TAG_MESSAGE
        sealed = sodium.crypto_secretstream_xchacha20poly1305_push(
            self._state, message, header.chunk_ad(index), tag
        )
        self._drain()
        self._output = _in_parallel(self._emit, sealed)
        self._body += FRAME_PREFIX_BYTES + len(sealed)
        self._index += 1

    def _emit(self, sealed: bytes) -> None:
        """Hash one sealed chunk's frame into the body digest and write it (worker thread)."""
        self._sink.write(self._digest.add(sealed))
        self._sink.write(sealed)

    def _drain(self) -> None:
        """Wait until the chunk sealed last is hashed and written; raise what that raised."""
        output, self._output = self._output, None
        if output is not None:
            output.result()

    def abort(self) -> None:
        """Give up: wait until nothing is written to the sink any more (never raises)."""
        output, self._output = self._output, None
        if output is not None:
            output.exception()

    def close(self) -> SealedInfo:
        """Seal what is left, write the header; the result. ChunkError if bytes are
        missing."""
        h = self.header
        if self._index == h.chunk_count - 1 and h.plain_size(self._index) == 0:
            self._seal(b"")  # an empty payload: one empty final chunk
        self._drain()
        if self._index != h.chunk_count:
            got = min(self._index * h.chunk_size, h.total_size) + len(self._buffer)
            raise ChunkError(
                f"source ended in chunk {self._index}: {got} of {h.total_size} bytes",
                index=self._index,
            )
        self.header = Header(
            chunk_size=h.chunk_size,
            total_size=h.total_size,
            chunk_count=h.chunk_count,
            transfer_id=h.transfer_id,
            stream_header=h.stream_header,
            payload_hash=self._digest.digest(),
            compressed=h.compressed,
        )
        end = self._sink.tell()
        self._sink.seek(self._start)
        self._sink.write(self.header.to_bytes())
        self._sink.seek(end)
        return SealedInfo(header=self.header, body_size=self._body)


def seal_stream(
    source: BinaryIO,
    sink: BinaryIO,
    key: bytes,
    *,
    transfer_id: bytes | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compress: bool = False,
    total_size: int | None = None,
) -> SealedInfo:
    """Seal everything ``source`` holds from its position into ``sink`` (header first).

    ``sink`` must be seekable (see :class:`Sealer`). ``total_size`` defaults to what is
    left in a seekable ``source``. Memory: a few chunks, whatever the payload's size. With
    ``compress``, each chunk is zstd-compressed before sealing when that makes it smaller.
    """
    _check_key(key)
    total = _size_of(source) if total_size is None else total_size
    sealer = Sealer(
        sink,
        key,
        total_size=total,
        transfer_id=transfer_id,
        chunk_size=chunk_size,
        compress=compress,
    )
    header = sealer.header
    try:
        for index in range(header.chunk_count):
            plain = _read_exactly(source, header.plain_size(index))
            if len(plain) != header.plain_size(index):
                raise ChunkError(
                    f"source ended in chunk {index}: {len(plain)} of "
                    f"{header.plain_size(index)} bytes",
                    index=index,
                )
            sealer.write(plain)
        return sealer.close()
    except BaseException:
        sealer.abort()
        raise


def _encode_chunk(plain: bytes, compressor: zstandard.ZstdCompressor | None) -> bytes:
    """``encoding byte ‖ data``: zstd when asked for and smaller, else the bytes as they are."""
    if compressor is not None and plain:
        packed = compressor.compress(plain)
        if len(packed) < len(plain):
            return bytes([_ENC_ZSTD]) + packed
    return bytes([_ENC_RAW]) + plain


def seal_file(
    source: Path | str,
    sealed: Path | str,
    key: bytes,
    *,
    transfer_id: bytes | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compress: bool = False,
) -> SealedInfo:
    """Seal the file ``source`` into the file ``sealed`` (see :func:`seal_stream`)."""
    with Path(source).open("rb") as src, Path(sealed).open("wb") as dst:
        return seal_stream(
            src, dst, key, transfer_id=transfer_id, chunk_size=chunk_size, compress=compress
        )


def seal_bytes(
    data: bytes,
    key: bytes,
    *,
    transfer_id: bytes | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compress: bool = False,
) -> bytes:
    """The sealed form of ``data`` in memory (for small payloads and tests)."""
    sink = io.BytesIO()
    seal_stream(
        io.BytesIO(data),
        sink,
        key,
        transfer_id=transfer_id,
        chunk_size=chunk_size,
        compress=compress,
    )
    return sink.getvalue()


class Opener:
    """Opens the chunks of one sealed payload in order, and checks the whole at the end.

    Call :meth:`open` with each chunk's index and sealed bytes, then :meth:`finish` before
    using the plaintext as the payload: only then are all chunks there and the body's hash
    the header's. Every failure is a :class:`ChunkError`; after one, the opener is spent.
    """

    def __init__(self, header: Header, key: bytes) -> None:
        _check_key(key)
        self.header = header
        #: Index of the next chunk :meth:`open` accepts.
        self.next_index = 0
        #: Plaintext bytes opened so far.
        self.plain_bytes = 0
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        sodium.crypto_secretstream_xchacha20poly1305_init_pull(
            self._state, header.stream_header, key
        )
        self._digest = BodyDigest()
        self._decompressor = zstandard.ZstdDecompressor()
        self._failed = False

    @property
    def complete(self) -> bool:
        """True once the final chunk was opened."""
        return self.next_index == self.header.chunk_count

    def _fail(self, message: str, index: int | None) -> ChunkError:
        self._failed = True
        return ChunkError(f"transfer {self.header.transfer}: {message}", index=index)

    def open(self, index: int, sealed: bytes) -> bytes | memoryview:
        """Open chunk ``index``; return its plaintext (a view where that saves a copy).
        Chunks must come in order."""
        if self._failed:
            raise ChunkError(f"transfer {self.header.transfer}: already failed", index=index)
        if self.complete:
            raise self._fail(f"chunk {index} arrived after the final chunk", index)
        if index != self.next_index:
            raise self._fail(
                f"chunk {index} arrived where chunk {self.next_index} belongs "
                "(dropped, repeated or reordered)",
                index,
            )
        try:
            message, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(
                self._state, sealed, self.header.chunk_ad(index)
            )
        except (nacl.exceptions.CryptoError, TypeError) as exc:
            raise self._fail(
                f"chunk {index} does not authenticate (altered, or from another "
                "transfer, position or key)",
                index,
            ) from exc
        last = index == self.header.chunk_count - 1
        if (tag == _TAG_FINAL) != last or tag not in (_TAG_FINAL, _TAG_MESSAGE):
            raise self._fail(
                f"chunk {index} is tagged {'final' if tag == _TAG_FINAL else tag} but the "
                f"payload has {self.header.chunk_count} chunks (truncated or extended)",
                index,
            )
        plain = self._decode(index, message)
        self._digest.add(sealed)
        self.next_index += 1
        self.plain_bytes += len(plain)
        return plain

    def _decode(self, index: int, message: bytes) -> bytes | memoryview:
        expected = self.header.plain_size(index)
        if not message or message[0] not in (_ENC_RAW, _ENC_ZSTD):
            raise self._fail(f"chunk {index} has no valid encoding byte", index)
        data: bytes | memoryview = memoryview(message)[1:]
        if message[0] == _ENC_ZSTD:
            try:
                data = self._decompressor.decompress(data, max_output_size=expected)
            except zstandard.ZstdError as exc:
                raise self._fail(f"chunk {index} does not decompress", index) from exc
        if len(data) != expected:
            raise self._fail(f"chunk {index} holds {len(data)} bytes, not {expected}", index)
        return data

    def finish(self) -> None:
        """Check that every chunk came and the body's hash is the header's; else raise."""
        if self._failed:
            raise ChunkError(f"transfer {self.header.transfer}: already failed")
        if not self.complete:
            raise self._fail(
                f"payload ends after {self.next_index} of {self.header.chunk_count} chunks "
                "(truncated)",
                None,
            )
        if self._digest.digest() != self.header.payload_hash:
            raise self._fail("the payload hash does not match the header", None)


def _frame_size(source: BinaryIO | io.BufferedIOBase) -> int | None:
    """Read one frame's length prefix; ``None`` at a clean end of input."""
    prefix = _read_exactly(source, FRAME_PREFIX_BYTES)
    if not prefix:
        return None
    if len(prefix) != FRAME_PREFIX_BYTES:
        raise ChunkError("sealed payload ends inside a frame length")
    size: int = _U32.unpack(prefix)[0]
    if size > sealed_chunk_limit(MAX_CHUNK_SIZE):
        raise ChunkError(f"frame of {size} bytes is larger than any chunk")
    return size


def read_frame(source: BinaryIO) -> bytes | None:
    """Read one frame's sealed chunk from ``source``; ``None`` at a clean end of input."""
    size = _frame_size(source)
    if size is None:
        return None
    sealed = _read_exactly(source, size)
    if len(sealed) != size:
        raise ChunkError("sealed payload ends inside a frame")
    return sealed


def read_frame_after(source: io.BufferedIOBase, head: bytes) -> bytearray | None:
    """``head`` ‖ the next frame's sealed chunk, read straight into one buffer (a message
    to send, without copying the chunk again); ``None`` at a clean end of input."""
    size = _frame_size(source)
    if size is None:
        return None
    message = bytearray(len(head) + size)
    message[: len(head)] = head
    view = memoryview(message)[len(head) :]
    got = 0
    while got < size:
        n = source.readinto(view[got:])
        if not n:
            raise ChunkError("sealed payload ends inside a frame")
        got += n
    return message


def iter_frames(source: BinaryIO, header: Header) -> Iterator[tuple[int, bytes]]:
    """Yield ``(index, sealed chunk)`` of the body that follows the header in ``source``."""
    for index in range(header.chunk_count):
        sealed = read_frame(source)
        if sealed is None:
            raise ChunkError(
                f"transfer {header.transfer}: payload ends after {index} of "
                f"{header.chunk_count} chunks (truncated)",
                index=index,
            )
        yield index, sealed


def open_stream(source: BinaryIO, sink: BinaryIO, key: bytes) -> Header:
    """Open the sealed form in ``source`` into ``sink``; return its header.

    Writes each chunk's plaintext as it is opened: on a :class:`ChunkError` the sink holds
    a prefix, so open into a spool file and use it only when this returns.
    """
    header = Header.from_bytes(_read_exactly(source, HEADER_BYTES))
    opener = Opener(header, key)
    for index, sealed in iter_frames(source, header):
        sink.write(opener.open(index, sealed))
    if read_frame(source) is not None:
        raise ChunkError(
            f"transfer {header.transfer}: data after the final chunk",
            index=header.chunk_count,
        )
    opener.finish()
    return header


def open_bytes(sealed: bytes, key: bytes) -> bytes:
    """The plaintext of a sealed form held in memory (see :func:`open_stream`)."""
    sink = io.BytesIO()
    open_stream(io.BytesIO(sealed), sink, key)
    return sink.getvalue()
