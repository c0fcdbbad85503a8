"""A stored bulk result is read as its head followed by its sealed file (hub.bulk.Chained)."""

from __future__ import annotations

import io
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from hub.bulk import Chained


@settings(deadline=None, max_examples=60)
@given(
    head=st.binary(max_size=40),
    tail=st.binary(max_size=3000),
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=12),
)
def test_a_chained_reader_gives_the_head_then_the_tail_whatever_the_read_sizes(
    head: bytes, tail: bytes, sizes: list[int]
) -> None:
    chained = Chained(head, io.BufferedReader(io.BytesIO(tail)))
    got = bytearray()
    for size in sizes * 20:
        piece = bytearray(size)
        n = chained.readinto(piece)
        got += piece[:n]
    got += io.BufferedReader(chained).read()
    assert bytes(got) == head + tail


def test_a_chained_reader_streams_a_sealed_file_as_the_store_reads_it(tmp_path: Path) -> None:
    sealed = tmp_path / "result.sealed"
    sealed.write_bytes(bytes(range(256)) * 5000)
    with sealed.open("rb") as tail:
        reader = io.BufferedReader(Chained(b"HEAD", tail))
        pieces = list(iter(lambda: reader.read(64 * 1024), b""))
    assert b"".join(pieces) == b"HEAD" + sealed.read_bytes()
    assert max(len(p) for p in pieces) == 64 * 1024
