"""Bulk transfers: payloads of any size, sealed in chunks and streamed across sites.

- :mod:`hub.transfer.sealing`: the sealed form (header, authenticated chunks, payload hash);
- :mod:`hub.transfer.stream`: moving a sealed payload between two NATS connections with
  credit-based flow control, retransmission, progress, cancel and deadlines
  (:class:`Sender`, :class:`Receiver`); :mod:`hub.transfer.options`: their knobs,
  progress reports and results;
- :mod:`hub.transfer.routes`: the subjects of an upload (caller to site) and a download
  (site to caller) that the hub's accounts let through;
- :mod:`hub.transfer.spool`: spool files of unfinished transfers and their sweep.

Storing a payload in a site's Object Store and reading it back in bounded memory:
:func:`hub.nats.put_object_stream`, :func:`hub.nats.iter_object`,
:func:`hub.nats.get_object_to_file`. See docs/protocol.md, "Bulk transfers".

How a call uses it (caller ``klaus@geomar``, node at ``hereon``; ``tid`` is
``new_transfer_id()``, its hex form names the subjects)::

    # caller: send an argument
    key = new_content_key()                        # wrap_key(...) it for the node as today
    info = await asyncio.to_thread(seal_file, arg_path, spool, key, transfer_id=tid)
    # the signed request names tid.hex(), info.header.payload_hash, info.header.total_size
    route = upload_route("geomar", "klaus", "hereon", tid.hex())
    await Sender(nc, spool, to=route.to, control=route.control, progress=cb,
                 timeout=deadline).run()           # returns once the node committed it

    # node: receive that argument into a spooled file
    route = upload_route(caller_site, caller_user, "hereon", transfer_hex)
    got = await Receiver(nc, subject=route.to, dest=spool_dir / transfer_hex,
                         key=unwrap_key(...), expect_hash=signed_hash,
                         expect_size=signed_size, expect_control=route.control,
                         timeout=deadline).run()   # got.path: whole and verified

    # node: send a result
    info = await asyncio.to_thread(seal_file, result_path, sealed, result_key, transfer_id=tid)
    route = download_route(caller_site, caller_user, "hereon", tid.hex())
    await Sender(nc, sealed, to=route.to, control=route.control, timeout=deadline).run()

    # caller: receive that result into a file
    route = download_route("geomar", "klaus", "hereon", transfer_hex)
    got = await Receiver(nc, subject=route.to, dest=out_path, key=result_key,
                         expect_hash=result_hash, expect_control=route.control).run()
"""

from __future__ import annotations

from hub.transfer.options import (
    DEFAULT_ACK_EVERY,
    DEFAULT_WINDOW,
    ProgressCallback,
    Received,
    TransferOptions,
    TransferProgress,
    TransferStats,
)
from hub.transfer.routes import Route, download_route, site_route, upload_route
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
from hub.transfer.spool import PARTIAL_SUFFIX, partial_path, sweep_partials
from hub.transfer.stream import Receiver, Sender

__all__ = [
    "DEFAULT_ACK_EVERY",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_WINDOW",
    "HEADER_BYTES",
    "MAX_CHUNK_SIZE",
    "PARTIAL_SUFFIX",
    "Header",
    "Opener",
    "ProgressCallback",
    "Received",
    "Receiver",
    "Route",
    "SealedInfo",
    "Sender",
    "TransferOptions",
    "TransferProgress",
    "TransferStats",
    "download_route",
    "new_transfer_id",
    "open_bytes",
    "open_stream",
    "partial_path",
    "seal_bytes",
    "seal_file",
    "seal_stream",
    "site_route",
    "sweep_partials",
    "upload_route",
]
