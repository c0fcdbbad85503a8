"""The blob layout: ``FHC1``, header length, JSON header padded to 8, length-prefixed buffers.

:func:`join_frame` writes a blob from the header's JSON bytes and the buffers;
:func:`split_frame` checks a blob's frame (magic, lengths, alignment, zero padding, nothing
trailing) and returns the header text and where each buffer lies. What the header means is
the job of :mod:`hub.codec.encoder` and :mod:`hub.codec.decoder`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from hub.errors import CanonicalError

__all__ = ["ALIGN", "MAGIC", "MAX_DEPTH", "join_frame", "split_frame"]

#: The first four bytes of every blob; the digit is the format version.
MAGIC = b"FHC1"
#: Values may nest this deep (a list in a list in ... counts one level each).
MAX_DEPTH = 100
#: Header and buffers start on multiples of this many bytes.
ALIGN = 8

_U64 = struct.Struct("<Q")
_PREFIX = len(MAGIC) + _U64.size


def join_frame(header: bytes, buffers: Sequence[bytes | bytearray | memoryview]) -> bytes:
    """The blob holding ``header`` (ASCII JSON, padded here) and then every buffer."""
    header += b" " * (-(_PREFIX + len(header)) % ALIGN)
    parts: list[bytes | bytearray | memoryview] = [MAGIC, _U64.pack(len(header)), header]
    for buffer in buffers:
        size = memoryview(buffer).nbytes
        parts.append(_U64.pack(size))
        parts.append(buffer)
        if size % ALIGN:
            parts.append(bytes(-size % ALIGN))
    return b"".join(parts)


def split_frame(view: memoryview) -> tuple[str, list[tuple[int, int]]]:
    """The header text of a blob and ``(start, length)`` of each buffer in it.

    Raises :class:`~hub.errors.CanonicalError` for a bad magic, bad or truncated lengths,
    a misaligned header, non-zero padding or a non-ASCII header.
    """
    size = view.nbytes
    if size < _PREFIX or bytes(view[: len(MAGIC)]) != MAGIC:
        raise CanonicalError("codec data does not start with the FHC1 magic")
    (header_length,) = _U64.unpack_from(view, len(MAGIC))
    if header_length > size - _PREFIX:
        raise CanonicalError("codec header is longer than the data (truncated?)")
    position = _PREFIX + header_length
    if position % ALIGN:
        raise CanonicalError("codec header is not padded to a multiple of 8 bytes")
    try:
        text = bytes(view[_PREFIX:position]).decode("ascii")
    except UnicodeDecodeError as exc:
        raise CanonicalError("codec header is not ASCII JSON") from exc
    buffers: list[tuple[int, int]] = []
    while position < size:
        if size - position < _U64.size:
            raise CanonicalError("codec buffer length is truncated")
        (length,) = _U64.unpack_from(view, position)
        position += _U64.size
        padded = length + (-length % ALIGN)
        if padded > size - position:
            raise CanonicalError("codec buffer is longer than the data (truncated?)")
        if any(view[position + length : position + padded]):
            raise CanonicalError("codec buffer padding is not zero")
        buffers.append((position, length))
        position += padded
    return text, buffers
