"""Results written by fedhub's one-round-trip put read back with NATS's own object store."""

from __future__ import annotations

import os

import nats
import pytest

from hub.objects import put_object
from hub.topology import NatsServer


@pytest.mark.parametrize("size", [0, 1, 128 * 1024, 128 * 1024 + 1, 700_000])
async def test_object_put_reads_back_with_the_stock_client(
    nats_server: NatsServer, size: int
) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        bucket = "fh-objects-test"
        try:
            store = await js.object_store(bucket)
        except nats.js.errors.BucketNotFoundError:
            store = await js.create_object_store(bucket)
        data = os.urandom(size)
        info = await put_object(js, bucket, f"obj-{size}", data)
        assert info.chunks == -(-size // (128 * 1024))
        got = await store.get(f"obj-{size}")
        assert got.data == data
        assert got.info.digest == info.digest
    finally:
        await nc.close()
