"""Writing results into a JetStream Object Store bucket in one round trip.

The stored layout is exactly NATS's object store (ADR-20), so any NATS client reads the
objects back: chunks on ``$O.<bucket>.C.<nuid>``, then the object's meta (JSON ``ObjectInfo``
with the SHA-256 digest) on ``$O.<bucket>.M.<base64url(name)>`` with a subject rollup.
Unlike nats-py's ``ObjectStore.put`` it does not look the name up first (a node stores each
request id once) and publishes every chunk and the meta concurrently, so a small result
costs one round trip to the server instead of three. If a name is ever stored again (a
retried call), the meta rollup replaces the old object; its chunks stay until purged.

Payloads of any size go in and out in bounded memory: :func:`put_object_stream` reads a
file chunk by chunk with at most ``window`` bytes unacked, :func:`iter_object` yields the
chunks back one by one and checks size and digest at the end, and
:func:`get_object_to_file` writes them to a spool file that becomes visible only once whole.

Also :func:`wait_acks`: waiting for ``publish_async`` acks with a deadline, which every
JetStream publisher of fedhub (results, event copies, calls) needs.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import nats.js.errors
from nats.js import JetStreamContext, api

from hub.errors import IntegrityError, NotFoundError
from hub.transfer.spool import partial_path

__all__ = [
    "BULK_CHUNK_SIZE",
    "CHUNK_SIZE",
    "get_object",
    "get_object_to_file",
    "iter_object",
    "put_object",
    "put_object_stream",
    "sweep_orphan_chunks",
    "wait_acks",
]

CHUNK_SIZE = 128 * 1024
#: Chunk size of objects stored from a stream (fewer, larger messages for large payloads).
BULK_CHUNK_SIZE = 1024 * 1024
#: Bytes :func:`put_object_stream` keeps unacked at most.
PUT_WINDOW = 8 * 1024 * 1024


def _meta_subject(bucket: str, name: str) -> str:
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


def _object_info(
    bucket: str, name: str, nuid: str, size: int, chunks: int, sha256: bytes, chunk_size: int
) -> api.ObjectInfo:
    digest = base64.urlsafe_b64encode(sha256).decode()
    return api.ObjectInfo(
        name=name,
        bucket=bucket,
        nuid=nuid,
        size=size,
        chunks=chunks,
        mtime=datetime.now(UTC).isoformat(),
        digest=f"SHA-256={digest}",
        options=api.ObjectMetaOptions(max_chunk_size=chunk_size),
    )


def _meta_bytes(info: api.ObjectInfo) -> bytes:
    """The JSON ``info.as_dict()`` gives for an info made by :func:`_object_info`, built
    directly (as_dict copies each dataclass recursively: ~5 µs, on every call's path)."""
    options = info.options
    meta = {
        "name": info.name,
        "bucket": info.bucket,
        "nuid": info.nuid,
        "size": info.size,
        "mtime": info.mtime,
        "chunks": info.chunks,
        "digest": info.digest,
        "deleted": bool(info.deleted),
        "options": {"max_chunk_size": options.max_chunk_size if options else None},
    }
    return json.dumps(meta).encode()


async def _publish_meta(js: JetStreamContext, info: api.ObjectInfo) -> asyncio.Future[api.PubAck]:
    """Publish an object's meta; the subject rollup replaces an older object of the name."""
    return await js.publish_async(
        _meta_subject(info.bucket, info.name),
        _meta_bytes(info),
        headers={api.Header.ROLLUP: "sub"},
    )


async def put_object(
    js: JetStreamContext,
    bucket: str,
    name: str,
    data: bytes,
    *,
    chunk_size: int = CHUNK_SIZE,
    timeout: float = 10.0,
) -> api.ObjectInfo:
    """Store ``data`` as object ``name`` of ``bucket``; return its info once all are acked.

    Use one long-lived ``js`` context: its reply subscription for acks is made once.
    Raises TimeoutError when the server has not acked everything within ``timeout``.
    """
    nuid = js._nc._nuid.next().decode()
    chunk_subject = f"$O.{bucket}.C.{nuid}"
    view = memoryview(data)
    chunks = [bytes(view[i : i + chunk_size]) for i in range(0, len(data), chunk_size)]
    info = _object_info(
        bucket, name, nuid, len(data), len(chunks), hashlib.sha256(data).digest(), chunk_size
    )
    # publish_async: each ack resolves a future (no task and no timer per message)
    acks = [await js.publish_async(chunk_subject, chunk) for chunk in chunks]
    acks.append(await _publish_meta(js, info))
    await wait_acks(acks, timeout)
    return info


async def put_object_stream(
    js: JetStreamContext,
    bucket: str,
    name: str,
    source: BinaryIO,
    *,
    chunk_size: int = BULK_CHUNK_SIZE,
    window: int = PUT_WINDOW,
    timeout: float = 30.0,
) -> api.ObjectInfo:
    """Store everything ``source`` holds as object ``name`` of ``bucket``, in bounded memory.

    Reads ``chunk_size`` bytes at a time and keeps at most ``window`` bytes unacked; the
    meta, which makes the object visible, is published only after every chunk is acked.
    ``timeout`` bounds the wait for each ack (TimeoutError). On any failure the chunks
    stored so far are purged (best effort), so no partial object remains.
    """
    nuid = js._nc._nuid.next().decode()
    chunk_subject = f"$O.{bucket}.C.{nuid}"
    sha = hashlib.sha256()
    pending: collections.deque[tuple[asyncio.Future[api.PubAck], int]] = collections.deque()
    in_flight = size = chunks = 0
    try:
        while chunk := await asyncio.to_thread(source.read, chunk_size):
            sha.update(chunk)
            pending.append((await js.publish_async(chunk_subject, chunk), len(chunk)))
            in_flight += len(chunk)
            size += len(chunk)
            chunks += 1
            while in_flight > window:
                ack, length = pending.popleft()
                await wait_acks([ack], timeout)
                in_flight -= length
        await wait_acks([ack for ack, _ in pending], timeout)
        info = _object_info(bucket, name, nuid, size, chunks, sha.digest(), chunk_size)
        await wait_acks([await _publish_meta(js, info)], timeout)
    except BaseException:
        for ack, _ in pending:
            ack.cancel()
        with contextlib.suppress(Exception):
            await js.purge_stream(f"OBJ_{bucket}", subject=chunk_subject)
        raise
    return info


async def wait_acks(acks: Sequence[asyncio.Future[api.PubAck]], timeout: float) -> list[api.PubAck]:
    """The acks of ``publish_async`` calls, within ``timeout`` seconds (else TimeoutError).

    Whatever happens, no ack is left waiting: the unanswered ones are cancelled, so
    nats-py forgets them (and frees their slots of its pending-publish limit). One timer
    and no helper future (this is on every call's path, on client and node).
    """
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        for ack in acks:
            ack.cancel()

    timer = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return [await ack for ack in acks]
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if expired and (task is None or not task.cancelling()):
            raise TimeoutError(f"no ack within {timeout:g} s") from None
        raise
    finally:
        timer.cancel()
        for ack in acks:
            ack.cancel()


async def sweep_orphan_chunks(
    js: JetStreamContext, bucket: str, *, older_than: float
) -> dict[str, int]:
    """Purge the chunks of objects whose meta was never written (a writer killed mid-put).

    Chunks whose newest message is younger than ``older_than`` seconds are left alone:
    another writer may be storing them right now. Returns ``{chunk subject: messages}``
    purged. Reads the stream's subject list (the server lists up to 100,000 subjects).
    """
    stream = f"OBJ_{bucket}"
    info = await js.stream_info(stream, subjects_filter=f"$O.{bucket}.>")
    subjects = info.state.subjects or {}
    live: set[str] = set()
    for subject in subjects:
        if subject.startswith(f"$O.{bucket}.M."):
            meta = json.loads((await js.get_last_msg(stream, subject)).data or b"{}")
            if not meta.get("deleted") and meta.get("nuid"):
                live.add(f"$O.{bucket}.C.{meta['nuid']}")
    limit = datetime.now(UTC).timestamp() - older_than
    purged: dict[str, int] = {}
    for subject, count in subjects.items():
        if not subject.startswith(f"$O.{bucket}.C.") or subject in live:
            continue
        last = await js.get_last_msg(stream, subject)
        if last.time is not None and last.time.timestamp() > limit:
            continue
        await js.purge_stream(stream, subject=subject)
        purged[subject] = count
    return purged


async def iter_object(js: JetStreamContext, bucket: str, name: str) -> AsyncIterator[bytes]:
    """Yield the chunks of object ``name`` of ``bucket`` one by one (bounded memory).

    Raises NotFoundError when there is no such object (before yielding anything), and
    IntegrityError after the last chunk when the bytes do not match the size and SHA-256
    digest its meta records: use what was yielded only once the iteration has ended.
    """
    stream = f"OBJ_{bucket}"
    try:
        meta = await js.get_last_msg(stream, _meta_subject(bucket, name))
    except nats.js.errors.NotFoundError as exc:
        raise NotFoundError(f"no object {name!r} in bucket {bucket}") from exc
    info = json.loads(meta.data or b"{}")
    if info.get("deleted"):
        raise NotFoundError(f"object {name!r} in bucket {bucket} was deleted")
    chunk_subject = f"$O.{bucket}.C.{info['nuid']}"
    sha = hashlib.sha256()
    size = 0
    seq = 1
    for _ in range(int(info.get("chunks") or 0)):
        # one message at a time by subject: nats-py's ObjectStore.get grows its result
        # with ``bytes +=`` per chunk (quadratic)
        msg = await js.get_msg(stream, seq=seq, subject=chunk_subject, next=True)
        data = msg.data or b""
        sha.update(data)
        size += len(data)
        seq = int(msg.seq or 0) + 1
        yield data
    digest = "SHA-256=" + base64.urlsafe_b64encode(sha.digest()).decode()
    if size != int(info.get("size") or 0) or digest != info.get("digest"):
        raise IntegrityError(f"object {name!r} in bucket {bucket} does not match its digest")


async def get_object(js: JetStreamContext, bucket: str, name: str) -> bytes:
    """Read object ``name`` of ``bucket`` back into memory (see :func:`iter_object`)."""
    return b"".join([chunk async for chunk in iter_object(js, bucket, name)])


async def get_object_to_file(js: JetStreamContext, bucket: str, name: str, dest: Path) -> int:
    """Write object ``name`` of ``bucket`` to ``dest`` in bounded memory; return its size.

    The bytes go to a spool file next to ``dest`` that is renamed to ``dest`` only once
    the digest is checked; on any failure it is removed and ``dest`` is untouched.
    """
    partial = partial_path(dest)
    size = 0
    try:
        with partial.open("wb") as spool:
            async for chunk in iter_object(js, bucket, name):
                await asyncio.to_thread(spool.write, chunk)
                size += len(chunk)
            await asyncio.to_thread(os.fsync, spool.fileno())
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)
    return size
