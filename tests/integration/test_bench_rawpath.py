"""The payload benchmark's same-path baseline: a raw client at the caller's site reaches one
bucket of the node's site across the hub, in the benchmark's federation only.

``scripts/bench_rawpath.py`` opens that path in the configs of the federation the benchmark
starts; a federation as the generator writes it keeps every site out of another's Object
Store, and the opened one reaches nothing but the benchmark's bucket.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest

from hub.nats import LocalFederation

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from bench_rawpath import RAW_BUCKET, raw_put_get, start_bench_federation

NODE, CALLER = "hereon", "geomar"
MIB = 1024 * 1024
SIZE = 3 * MIB + 17


@pytest.fixture
async def bench_federation(tmp_path: Path) -> AsyncIterator[LocalFederation]:
    fed = await start_bench_federation(tmp_path / "fed", NODE, CALLER)
    try:
        yield fed
    finally:
        await fed.stop()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "payload"
    path.write_bytes(os.urandom(SIZE))
    return path


async def test_the_raw_client_at_the_caller_puts_and_gets_in_the_nodes_domain(
    bench_federation: LocalFederation, source: Path
) -> None:
    for streamed in (True, False):
        put, got = await raw_put_get(
            bench_federation.site_url(CALLER), source, "x", SIZE, domain=NODE, streamed=streamed
        )
        assert put > 0 and got > 0
    # the bucket is the node site's: its own leaf serves it without a domain
    nc = await nats.connect(bench_federation.site_url(NODE))
    try:
        info = await nc.jetstream().stream_info(f"OBJ_{RAW_BUCKET}")
        assert info.config.subjects == [f"$O.{RAW_BUCKET}.C.>", f"$O.{RAW_BUCKET}.M.>"]
    finally:
        await nc.close()


async def test_the_opened_path_reaches_no_other_bucket_of_the_node(
    bench_federation: LocalFederation,
) -> None:
    local = await nats.connect(bench_federation.site_url(NODE))
    remote = await nats.connect(bench_federation.site_url(CALLER))
    try:
        await local.jetstream().create_object_store("other")
        js = remote.jetstream(domain=NODE, timeout=2)
        with pytest.raises(nats.js.errors.ServiceUnavailableError):
            await js.stream_info("OBJ_other")
        with pytest.raises(nats.js.errors.ServiceUnavailableError):
            await js.create_object_store("another")
        with pytest.raises(nats.errors.NoRespondersError):
            await remote.request("$O.other.C.chunk", b"data", timeout=2)
        assert (await local.jetstream().stream_info("OBJ_other")).state.messages == 0
    finally:
        await remote.close()
        await local.close()


async def test_a_federation_as_generated_keeps_the_caller_out_of_the_nodes_object_store(
    open_federation: LocalFederation, source: Path
) -> None:
    with pytest.raises((nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError)):
        await raw_put_get(open_federation.site_url(CALLER), source, "x", SIZE, domain=NODE)
