"""The sealed chunk format: every honest payload opens, every tampered one fails cleanly.

Tampering is done on real sealed bytes (real libsodium secretstream); each case must raise
ChunkError (a DecryptionError, an IntegrityError) and never return other bytes.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.crypto import new_content_key
from hub.errors import ChunkError, DecryptionError, IntegrityError
from hub.transfer.sealing import (
    HEADER_BYTES,
    Header,
    Opener,
    new_transfer_id,
    open_bytes,
    read_frame,
    seal_bytes,
    seal_stream,
)

KEY = bytes(range(32))
payloads = st.binary(min_size=0, max_size=600)
chunk_sizes = st.integers(min_value=1, max_value=64)


def split(sealed: bytes) -> tuple[Header, list[bytes]]:
    """The header and the sealed chunks of a sealed form."""
    header = Header.from_bytes(sealed[:HEADER_BYTES])
    body = io.BytesIO(sealed[HEADER_BYTES:])
    chunks = []
    while (chunk := read_frame(body)) is not None:
        chunks.append(chunk)
    return header, chunks


def join(header: Header, chunks: list[bytes]) -> bytes:
    """A sealed form from a header and chunks (framed as the body is)."""
    return header.to_bytes() + b"".join(struct.pack(">I", len(c)) + c for c in chunks)


def open_chunks(header: Header, chunks: list[bytes], key: bytes = KEY) -> bytes:
    """Open chunks as a receiver does: in arrival order, each with its arrival index."""
    opener = Opener(header, key)
    out = b"".join(opener.open(i, c) for i, c in enumerate(chunks))
    opener.finish()
    return out


def many_chunks() -> st.SearchStrategy[tuple[bytes, int]]:
    """A payload and a chunk size that give it at least two chunks."""
    return st.integers(min_value=1, max_value=32).flatmap(
        lambda size: st.tuples(st.binary(min_size=size + 1, max_size=400), st.just(size))
    )


@settings(deadline=None)
@given(data=payloads, chunk_size=chunk_sizes, compress=st.booleans())
def test_every_payload_opens_to_its_own_bytes(data: bytes, chunk_size: int, compress: bool) -> None:
    sealed = seal_bytes(data, KEY, chunk_size=chunk_size, compress=compress)
    assert open_bytes(sealed, KEY) == data
    header, chunks = split(sealed)
    assert header.total_size == len(data)
    assert len(chunks) == header.chunk_count == max(1, -(-len(data) // chunk_size))


@settings(deadline=None)
@given(data=payloads, chunk_size=chunk_sizes, compress=st.booleans(), where=st.data())
def test_a_flipped_bit_anywhere_fails_and_never_returns_other_bytes(
    data: bytes, chunk_size: int, compress: bool, where: st.DataObject
) -> None:
    sealed = bytearray(seal_bytes(data, KEY, chunk_size=chunk_size, compress=compress))
    pos = where.draw(st.integers(min_value=0, max_value=len(sealed) - 1))
    sealed[pos] ^= 1 << where.draw(st.integers(min_value=0, max_value=7))
    with pytest.raises(ChunkError):
        open_bytes(bytes(sealed), KEY)


@settings(deadline=None)
@given(case=many_chunks(), where=st.data())
def test_a_dropped_chunk_fails_naming_where_the_gap_is(
    case: tuple[bytes, int], where: st.DataObject
) -> None:
    data, chunk_size = case
    header, chunks = split(seal_bytes(data, KEY, chunk_size=chunk_size))
    gone = where.draw(st.integers(min_value=0, max_value=len(chunks) - 1))
    del chunks[gone]
    with pytest.raises(ChunkError) as caught:
        open_chunks(header, chunks)
    assert caught.value.index in (gone, None)
    assert f"chunk {gone}" in str(caught.value) or "truncated" in str(caught.value)
    with pytest.raises(ChunkError):
        open_bytes(join(header, chunks), KEY)


@settings(deadline=None)
@given(case=many_chunks(), where=st.data())
def test_a_repeated_chunk_fails(case: tuple[bytes, int], where: st.DataObject) -> None:
    data, chunk_size = case
    header, chunks = split(seal_bytes(data, KEY, chunk_size=chunk_size))
    again = where.draw(st.integers(min_value=0, max_value=len(chunks) - 1))
    chunks.insert(again + 1, chunks[again])
    with pytest.raises(ChunkError, match=f"chunk {again + 1}"):
        open_chunks(header, chunks)
    with pytest.raises(ChunkError):
        open_bytes(join(header, chunks), KEY)


@settings(deadline=None)
@given(case=many_chunks(), where=st.data())
def test_two_swapped_chunks_fail_at_the_first_of_them(
    case: tuple[bytes, int], where: st.DataObject
) -> None:
    data, chunk_size = case
    header, chunks = split(seal_bytes(data, KEY, chunk_size=chunk_size))
    a = where.draw(st.integers(min_value=0, max_value=len(chunks) - 2))
    b = where.draw(st.integers(min_value=a + 1, max_value=len(chunks) - 1))
    chunks[a], chunks[b] = chunks[b], chunks[a]
    with pytest.raises(ChunkError, match=f"chunk {a} does not authenticate") as caught:
        open_chunks(header, chunks)
    assert caught.value.index == a


@settings(deadline=None)
@given(case=many_chunks(), where=st.data())
def test_a_truncated_payload_fails_even_at_a_chunk_boundary(
    case: tuple[bytes, int], where: st.DataObject
) -> None:
    data, chunk_size = case
    sealed = seal_bytes(data, KEY, chunk_size=chunk_size)
    header, chunks = split(sealed)
    keep = where.draw(st.integers(min_value=0, max_value=len(chunks) - 1))
    with pytest.raises(ChunkError, match="truncated"):
        open_chunks(header, chunks[:keep])
    cut = where.draw(st.integers(min_value=0, max_value=len(sealed) - 1))
    with pytest.raises(ChunkError):
        open_bytes(sealed[:cut], KEY)


@settings(deadline=None)
@given(data=payloads, chunk_size=chunk_sizes, extra=st.binary(min_size=1, max_size=40))
def test_bytes_after_the_final_chunk_fail(data: bytes, chunk_size: int, extra: bytes) -> None:
    sealed = seal_bytes(data, KEY, chunk_size=chunk_size)
    with pytest.raises(ChunkError):
        open_bytes(sealed + extra, KEY)


@settings(deadline=None)
@given(case=many_chunks(), other=st.binary(min_size=1, max_size=400), where=st.data())
def test_a_chunk_spliced_in_from_another_transfer_under_the_same_key_fails(
    case: tuple[bytes, int], other: bytes, where: st.DataObject
) -> None:
    data, chunk_size = case
    header, chunks = split(seal_bytes(data, KEY, chunk_size=chunk_size))
    _, foreign = split(seal_bytes(other, KEY, chunk_size=chunk_size))
    at = where.draw(st.integers(min_value=0, max_value=len(chunks) - 1))
    source = where.draw(st.integers(min_value=0, max_value=len(foreign) - 1))
    chunks[at] = foreign[source]
    with pytest.raises(ChunkError, match=f"chunk {at} does not authenticate"):
        open_chunks(header, chunks)


def test_a_chunk_of_a_transfer_with_the_same_key_and_stream_fails_under_another_transfer_id() -> (
    None
):
    # Even the same secretstream (same key and stream header) does not open under a header
    # that names another transfer: the transfer id is in every chunk's additional data.
    header, chunks = split(seal_bytes(b"x" * 100, KEY, chunk_size=10))
    renamed = Header(
        chunk_size=header.chunk_size,
        total_size=header.total_size,
        chunk_count=header.chunk_count,
        transfer_id=new_transfer_id(),
        stream_header=header.stream_header,
        payload_hash=header.payload_hash,
    )
    with pytest.raises(ChunkError, match="chunk 0 does not authenticate"):
        open_chunks(renamed, chunks)


@pytest.mark.parametrize("field", ["total_size", "compressed", "payload_hash"])
def test_a_header_changed_in_any_field_fails(field: str) -> None:
    data = b"abcdefghij" * 30
    header, chunks = split(seal_bytes(data, KEY, chunk_size=64))
    changes = {
        "total_size": {"total_size": len(data) - 1},
        "compressed": {"compressed": True},
        "payload_hash": {"payload_hash": bytes(32)},
    }[field]
    fields = {
        "chunk_size": header.chunk_size,
        "total_size": header.total_size,
        "chunk_count": header.chunk_count,
        "transfer_id": header.transfer_id,
        "stream_header": header.stream_header,
        "payload_hash": header.payload_hash,
        "compressed": header.compressed,
        **changes,
    }
    with pytest.raises(ChunkError):
        open_chunks(Header(**fields), chunks)  # type: ignore[arg-type]


def test_a_wrong_key_fails_at_the_first_chunk_as_an_integrity_error() -> None:
    sealed = seal_bytes(b"secret" * 100, KEY, chunk_size=64)
    with pytest.raises(DecryptionError, match="chunk 0 does not authenticate") as caught:
        open_bytes(sealed, new_content_key())
    assert isinstance(caught.value, IntegrityError)
    assert caught.value.index == 0


def test_an_opener_that_failed_opens_nothing_more() -> None:
    header, chunks = split(seal_bytes(b"y" * 50, KEY, chunk_size=10))
    opener = Opener(header, KEY)
    with pytest.raises(ChunkError):
        opener.open(1, chunks[1])
    with pytest.raises(ChunkError, match="already failed"):
        opener.open(0, chunks[0])


def test_compression_shrinks_repetitive_data_and_reports_the_saving() -> None:
    from hub.transfer.sealing import seal_stream

    data = b"temperature,salinity,depth\n" * 40_000
    sink = io.BytesIO()
    info = seal_stream(io.BytesIO(data), sink, KEY, chunk_size=64 * 1024, compress=True)
    assert info.header.compressed
    assert info.saving > 0.9
    assert info.sealed_size == len(sink.getvalue()) < len(data) // 10
    assert open_bytes(sink.getvalue(), KEY) == data
    plain = seal_stream(io.BytesIO(data), io.BytesIO(), KEY, chunk_size=64 * 1024)
    assert plain.saving < 0


def test_incompressible_chunks_are_sealed_as_they_are_even_with_compression_on() -> None:
    import os

    data = os.urandom(100_000)
    sealed = seal_bytes(data, KEY, chunk_size=10_000, compress=True)
    # one encoding byte, a 4-byte frame length and 17 bytes of tag per chunk; no zstd frame
    assert len(sealed) == HEADER_BYTES + len(data) + 10 * (1 + 4 + 17)
    assert open_bytes(sealed, KEY) == data


def test_a_frame_read_into_a_message_is_the_head_and_the_frame_as_read_frame_gives_it() -> None:
    from hub.transfer.sealing import read_frame_after

    sealed = seal_bytes(b"z" * 25, KEY, chunk_size=10)
    header, chunks = split(sealed)
    body = io.BytesIO(sealed[HEADER_BYTES:])
    messages: list[bytes] = []
    while (message := read_frame_after(body, b"D" + bytes([len(messages)]))) is not None:
        messages.append(bytes(message))
    assert messages == [b"D" + bytes([i]) + c for i, c in enumerate(chunks)]
    assert open_chunks(header, [m[2:] for m in messages]) == b"z" * 25


def test_a_frame_cut_short_fails_when_read_into_a_message() -> None:
    from hub.transfer.sealing import read_frame_after

    sealed = seal_bytes(b"z" * 25, KEY, chunk_size=10)
    body = io.BytesIO(sealed[HEADER_BYTES:-3])
    assert read_frame_after(body, b"D") is not None
    assert read_frame_after(body, b"D") is not None
    with pytest.raises(ChunkError, match="ends inside a frame"):
        read_frame_after(body, b"D")


@settings(deadline=None)
@given(data=payloads, chunk_size=chunk_sizes, cuts=st.lists(st.integers(0, 600), max_size=8))
def test_a_payload_written_to_a_sealer_in_any_pieces_opens_to_its_own_bytes(
    data: bytes, chunk_size: int, cuts: list[int]
) -> None:
    from hub.transfer.sealing import Sealer

    sink = io.BytesIO()
    sealer = Sealer(sink, KEY, total_size=len(data), chunk_size=chunk_size)
    edges = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for start, end in itertools.pairwise(edges):
        sealer.write(memoryview(data)[start:end])
    info = sealer.close()
    assert open_bytes(sink.getvalue(), KEY) == data
    assert info.sealed_size == len(sink.getvalue())


def test_a_sealer_refuses_more_bytes_than_announced_and_a_close_before_all_came() -> None:
    from hub.transfer.sealing import Sealer

    sealer = Sealer(io.BytesIO(), KEY, total_size=10, chunk_size=4)
    sealer.write(b"123456789")
    with pytest.raises(ChunkError, match="source ended in chunk 2: 9 of 10 bytes"):
        sealer.close()
    sealer = Sealer(io.BytesIO(), KEY, total_size=10, chunk_size=4)
    with pytest.raises(ChunkError, match="more than the 10 bytes"):
        sealer.write(b"12345678901")


class _FullDisk(io.BytesIO):
    """A sink that takes ``room`` bytes and then fails like a full disk; counts writes after."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room
        self.failed = False
        self.writes_after_failure = 0

    def write(self, data: bytes | bytearray | memoryview, /) -> int:  # type: ignore[override]
        if self.failed:
            self.writes_after_failure += 1
        if self.tell() + len(data) > self.room:
            self.failed = True
            raise OSError(28, "No space left on device")
        return super().write(data)


#: Chunks this large are hashed and written on a worker thread (smaller ones in line).
BIG_CHUNK = 64 * 1024


def test_a_sink_failing_behind_the_sealing_fails_it_with_its_own_error() -> None:
    sink = _FullDisk(room=HEADER_BYTES + 3 * BIG_CHUNK)
    with pytest.raises(OSError, match="No space left"):
        seal_stream(io.BytesIO(bytes(20 * BIG_CHUNK)), sink, KEY, chunk_size=BIG_CHUNK)
    assert sink.writes_after_failure == 0  # nothing was written behind the error


def test_large_chunks_sealed_behind_each_other_hash_and_open_as_the_body_they_wrote() -> None:
    data = bytes(range(256)) * (40 * BIG_CHUNK // 256) + b"tail"
    sink = io.BytesIO()
    info = seal_stream(io.BytesIO(data), sink, KEY, chunk_size=BIG_CHUNK)
    body = sink.getvalue()[HEADER_BYTES:]
    assert hashlib.blake2b(body, digest_size=32).digest() == info.header.payload_hash
    assert len(body) == info.body_size
    assert open_bytes(sink.getvalue(), KEY) == data


@settings(deadline=None, max_examples=20)
@given(chunk=st.integers(0, 4), offset=st.integers(0, BIG_CHUNK + 20))
def test_a_flipped_byte_in_a_large_chunk_fails_at_that_chunk(chunk: int, offset: int) -> None:
    sealed = bytearray(seal_bytes(bytes(5 * BIG_CHUNK), KEY, chunk_size=BIG_CHUNK))
    frame = 4 + BIG_CHUNK + 18  # length prefix, encoding byte and tag around each chunk
    sealed[HEADER_BYTES + chunk * frame + 4 + offset % (frame - 4)] ^= 0x40
    with pytest.raises(ChunkError) as caught:
        open_bytes(bytes(sealed), KEY)
    assert caught.value.index == chunk
