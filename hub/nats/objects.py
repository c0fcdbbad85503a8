"""Writing results into a JetStream Object Store bucket in one round trip.

The stored layout is exactly NATS's object store (ADR-20), so any NATS client reads the
objects back: chunks on ``$O.<bucket>.C.<nuid>``, then the object's meta (JSON ``ObjectInfo``
with the SHA-256 digest) on ``$O.<bucket>.M.<base64url(name)>`` with a subject rollup.
Unlike nats-py's ``ObjectStore.put`` it does not look the name up first (a node stores each
request id once) and publishes every chunk and the meta concurrently, so a small result
costs one round trip to the server instead of three. If a name is ever stored again (a
retried call), the meta rollup replaces the old object; its chunks stay until purged.

Also :func:`wait_acks`: waiting for ``publish_async`` acks with a deadline, which every
JetStream publisher of fedhub (results, event copies, calls) needs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import nats.js.errors
from nats.js import JetStreamContext, api

from hub.errors import IntegrityError, NotFoundError

__all__ = ["CHUNK_SIZE", "get_object", "put_object", "wait_acks"]

CHUNK_SIZE = 128 * 1024


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
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    info = api.ObjectInfo(
        name=name,
        bucket=bucket,
        nuid=nuid,
        size=len(data),
        chunks=len(chunks),
        mtime=datetime.now(UTC).isoformat(),
        digest=f"SHA-256={digest}",
        options=api.ObjectMetaOptions(max_chunk_size=chunk_size),
    )
    meta_subject = f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
    # publish_async: each ack resolves a future (no task and no timer per message)
    acks = [await js.publish_async(chunk_subject, chunk) for chunk in chunks]
    acks.append(
        await js.publish_async(
            meta_subject,
            json.dumps(info.as_dict()).encode(),
            headers={api.Header.ROLLUP: "sub"},
        )
    )
    await wait_acks(acks, timeout)
    return info


async def wait_acks(acks: Sequence[asyncio.Future[api.PubAck]], timeout: float) -> list[api.PubAck]:
    """The acks of ``publish_async`` calls, within ``timeout`` seconds (else TimeoutError).

    Whatever happens, no ack is left waiting: the unanswered ones are cancelled, so
    nats-py forgets them (and frees their slots of its pending-publish limit).
    """
    try:
        async with asyncio.timeout(timeout):
            return list(await asyncio.gather(*acks))
    finally:
        for ack in acks:
            ack.cancel()


async def get_object(js: JetStreamContext, bucket: str, name: str) -> bytes:
    """Read object ``name`` of ``bucket`` back: its meta, then its chunks one by one.

    nats-py's ``ObjectStore.get`` grows the result with ``bytes +=`` per chunk (quadratic);
    results are small, so stepping through the chunk subject with ``next_by_subj`` is
    enough. Raises NotFoundError when there is no such object, IntegrityError when the
    bytes do not match the size and SHA-256 digest its meta records.
    """
    stream = f"OBJ_{bucket}"
    meta_subject = f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"
    try:
        meta = await js.get_last_msg(stream, meta_subject)
    except nats.js.errors.NotFoundError as exc:
        raise NotFoundError(f"no object {name!r} in bucket {bucket}") from exc
    info = json.loads(meta.data or b"{}")
    if info.get("deleted"):
        raise NotFoundError(f"object {name!r} in bucket {bucket} was deleted")
    chunk_subject = f"$O.{bucket}.C.{info['nuid']}"
    parts: list[bytes] = []
    seq = 1
    for _ in range(int(info.get("chunks") or 0)):
        msg = await js.get_msg(stream, seq=seq, subject=chunk_subject, next=True)
        parts.append(msg.data or b"")
        seq = int(msg.seq or 0) + 1
    data = b"".join(parts)
    digest = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    if len(data) != int(info.get("size") or 0) or digest != info.get("digest"):
        raise IntegrityError(f"object {name!r} in bucket {bucket} does not match its digest")
    return data
