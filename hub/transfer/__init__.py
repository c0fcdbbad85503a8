"""Bulk transfers: payloads of any size, sealed in chunks and streamed across sites.

- :mod:`hub.transfer.sealing`: the sealed form (header, authenticated chunks, payload hash).

See docs/protocol.md, "Bulk transfers".
"""

from __future__ import annotations

from hub.transfer.sealing import (
    DEFAULT_CHUNK_SIZE,
    HEADER_BYTES,
    MAX_CHUNK_SIZE,
    Header,
    Opener,
    SealedInfo,
    new_transfer_id,
    open_bytes,
    open_stream,
    seal_bytes,
    seal_file,
    seal_stream,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "HEADER_BYTES",
    "MAX_CHUNK_SIZE",
    "Header",
    "Opener",
    "SealedInfo",
    "new_transfer_id",
    "open_bytes",
    "open_stream",
    "seal_bytes",
    "seal_file",
    "seal_stream",
]
