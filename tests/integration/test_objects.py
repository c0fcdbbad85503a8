"""Results written by fedhub's one-round-trip put read back with NATS's own object store,
and read back by fedhub's own reader."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from hub.errors import IntegrityError, NotFoundError
from hub.nats import (
    NatsServer,
    get_object,
    get_object_to_file,
    iter_object,
    put_object,
    put_object_stream,
)


def hidden_files(folder: Path) -> list[Path]:
    """Dot files (spool files) in ``folder``."""
    return [path for path in folder.iterdir() if path.name.startswith(".")]


async def _bucket(js: JetStreamContext, name: str) -> ObjectStore:
    """The object store ``name`` on the shared server, created on first use."""
    try:
        return await js.object_store(name)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_object_store(name)


@pytest.mark.parametrize("size", [0, 1, 128 * 1024, 128 * 1024 + 1, 700_000])
async def test_object_put_reads_back_with_the_stock_client(
    nats_server: NatsServer, size: int
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        bucket = "fh-objects-test"
        store = await _bucket(js, bucket)
        data = os.urandom(size)
        info = await put_object(js, bucket, f"obj-{size}", data)
        assert info.chunks == -(-size // (128 * 1024))
        got = await store.get(f"obj-{size}")
        assert got.data == data
        assert got.info.digest == info.digest
        assert await get_object(js, bucket, f"obj-{size}") == data
    finally:
        await nc.close()


async def test_reading_an_object_that_is_not_there_or_does_not_match_fails_clearly(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        bucket = "fh-objects-test-2"
        await _bucket(js, bucket)
        with pytest.raises(NotFoundError, match="no object 'absent'"):
            await get_object(js, bucket, "absent")
        info = await put_object(js, bucket, "swapped", b"the real bytes")
        # the meta made to point at another object's chunks: the digest tells
        other = await put_object(js, bucket, "other", b"other bytes!!")
        info.nuid = other.nuid
        meta = base64.urlsafe_b64encode(b"swapped").decode()
        await js.publish(
            f"$O.{bucket}.M.{meta}",
            json.dumps(info.as_dict()).encode(),
            headers={"Nats-Rollup": "sub"},
        )
        with pytest.raises(IntegrityError, match="does not match its digest"):
            await get_object(js, bucket, "swapped")
    finally:
        await nc.close()


async def test_a_large_payload_goes_in_and_out_of_the_object_store_in_chunks(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        bucket = "fh-objects-bulk"
        store = await _bucket(js, bucket)
        data = os.urandom(5 * 1024 * 1024 + 77)
        source = tmp_path / "payload"
        source.write_bytes(data)
        with source.open("rb") as f:
            info = await put_object_stream(js, bucket, "big", f, chunk_size=1 << 20, window=2 << 20)
        assert info.size == len(data) and info.chunks == 6
        chunks = [chunk async for chunk in iter_object(js, bucket, "big")]
        assert [len(c) for c in chunks] == [1 << 20] * 5 + [77]
        assert b"".join(chunks) == data
        dest = tmp_path / "back"
        assert await get_object_to_file(js, bucket, "big", dest) == len(data)
        assert dest.read_bytes() == data
        assert (await store.get("big")).data == data  # the stock client reads it too
    finally:
        await nc.close()


async def test_an_object_that_does_not_match_its_digest_never_reaches_the_destination_file(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        bucket = "fh-objects-bulk-2"
        await _bucket(js, bucket)
        with (tmp_path / "a").open("wb") as f:
            f.write(b"a" * 3000)
        with (tmp_path / "a").open("rb") as f:
            info = await put_object_stream(js, bucket, "a", f, chunk_size=1000)
        other = await put_object(js, bucket, "b", b"b" * 3000, chunk_size=1000)
        info.nuid = other.nuid  # the meta of "a" pointed at the chunks of "b"
        meta = base64.urlsafe_b64encode(b"a").decode()
        await js.publish(
            f"$O.{bucket}.M.{meta}",
            json.dumps(info.as_dict()).encode(),
            headers={"Nats-Rollup": "sub"},
        )
        dest = tmp_path / "out"
        with pytest.raises(IntegrityError, match="does not match its digest"):
            await get_object_to_file(js, bucket, "a", dest)
        assert not dest.exists()
        assert not hidden_files(tmp_path)
    finally:
        await nc.close()
