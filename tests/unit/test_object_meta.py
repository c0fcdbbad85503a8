"""The object meta fedhub writes is the one nats-py's ObjectInfo.as_dict() gives."""

from __future__ import annotations

import hashlib
import json

import pytest

from hub.nats.objects import _meta_bytes, _object_info


@pytest.mark.parametrize(("size", "chunks"), [(0, 0), (100, 1), (300_000, 3)])
def test_meta_written_directly_equals_the_nats_py_form(size: int, chunks: int) -> None:
    info = _object_info(
        "results", "req-1", "NUIDNUIDNUID", size, chunks, hashlib.sha256(b"x").digest(), 131072
    )
    assert _meta_bytes(info) == json.dumps(info.as_dict()).encode()
