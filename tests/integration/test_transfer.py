"""Bulk transfers across a real federation: a hub and site leaves, each site its own account.

Uploads go from a caller at geomar to hereon (``fh.bulk.hereon.<transfer>``), downloads
from hereon to the caller's inbox at geomar; awi is the bystander. Faults (a lost chunk, a
lost ack, a flipped byte, a slow disk) are injected by overriding one method of the real
sender or receiver; NATS, the servers and the crypto are real.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import nats
import nats.errors
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from hub.crypto import new_content_key
from hub.errors import (
    ChunkError,
    TransferCancelledError,
    TransferError,
    TransferTimeoutError,
)
from hub.nats import LocalFederation, get_object_to_file, put_object_stream
from hub.transfer import (
    PARTIAL_SUFFIX,
    Opener,
    Receiver,
    Route,
    Sender,
    TransferOptions,
    TransferProgress,
    download_route,
    new_transfer_id,
    open_stream,
    partial_path,
    seal_file,
    upload_route,
)

CALLER_SITE, USER, NODE_SITE = "geomar", "klaus", "hereon"
CHUNK = 64 * 1024
FAST = TransferOptions(
    window=256 * 1024, ack_every=64 * 1024, retransmit_after=0.3, idle_timeout=5.0
)


@dataclass
class Sites:
    """One connection per site (a caller at geomar, a node at hereon), errors collected."""

    caller: NatsClient
    node: NatsClient
    errors: list[Exception] = field(default_factory=list)


@pytest.fixture(scope="session")
def federation(open_federation: LocalFederation) -> LocalFederation:
    """Transfers here are watched and driven by clients allowed everything at a site's
    server: the federation whose site servers take anyone (the hub and the leaf
    connections are secured as ever; see test_leaf_permissions.py for what a site's
    server refuses)."""
    return open_federation


@pytest.fixture
async def sites(federation: LocalFederation) -> AsyncIterator[Sites]:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    caller = await nats.connect(federation.site_url(CALLER_SITE), error_cb=on_error)
    node = await nats.connect(federation.site_url(NODE_SITE), error_cb=on_error)
    try:
        yield Sites(caller, node, errors)
    finally:
        await caller.close()
        await node.close()


def payload_file(path: Path, size: int, *, block: bytes | None = None) -> Path:
    """A file of ``size`` bytes (random, or ``block`` repeated), written 1 MiB at a time."""
    with path.open("wb") as out:
        left = size
        while left:
            piece = (block * (1 + (1 << 20) // len(block))) if block else os.urandom(1 << 20)
            out.write(piece[: min(left, 1 << 20)])
            left -= min(left, 1 << 20)
    return path


def spool_files(folder: Path) -> list[Path]:
    """Spool files of unfinished transfers in ``folder``."""
    return [path for path in folder.iterdir() if path.name.endswith(PARTIAL_SUFFIX)]


def digest(path: Path) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.digest()


@dataclass
class Leg:
    """One transfer ready to run: the sealed file, its key, and the route."""

    source: Path
    sealed: Path
    key: bytes
    route: Route
    transfer: str
    payload_hash: bytes


def prepare(tmp: Path, size: int, *, upload: bool = True, compress: bool = False) -> Leg:
    tid = new_transfer_id()
    source = payload_file(tmp / f"source-{tid.hex()}", size)
    key = new_content_key()
    sealed = tmp / f"sealed-{tid.hex()}"
    info = seal_file(source, sealed, key, transfer_id=tid, chunk_size=CHUNK, compress=compress)
    make_route = upload_route if upload else download_route
    route = make_route(CALLER_SITE, USER, NODE_SITE, tid.hex())
    return Leg(source, sealed, key, route, tid.hex(), info.header.payload_hash)


def ends(sites: Sites, upload: bool) -> tuple[NatsClient, NatsClient]:
    """(sender's connection, receiver's connection) for a direction."""
    return (sites.caller, sites.node) if upload else (sites.node, sites.caller)


@pytest.mark.parametrize("upload", [True, False], ids=["caller-to-node", "node-to-caller"])
async def test_a_payload_crosses_the_hub_whole_with_progress_on_both_ends(
    sites: Sites, tmp_path: Path, upload: bool
) -> None:
    leg = prepare(tmp_path, 3 * 1024 * 1024 + 12_345, upload=upload)
    send_nc, recv_nc = ends(sites, upload)
    sent: list[TransferProgress] = []
    got: list[TransferProgress] = []
    dest = tmp_path / "arrived"
    receiver = Receiver(
        recv_nc,
        subject=leg.route.to,
        dest=dest,
        key=leg.key,
        expect_hash=leg.payload_hash,
        expect_control=leg.route.control,
        options=FAST,
        progress=got.append,
    )
    sender = Sender(
        send_nc, leg.sealed, to=leg.route.to, control=leg.route.control, options=FAST,
        progress=sent.append,
    )  # fmt: skip
    received, stats = await asyncio.gather(receiver.run(), sender.run())
    assert received.path == dest
    assert digest(dest) == digest(leg.source)
    assert stats.plain_bytes == received.stats.plain_bytes == leg.source.stat().st_size
    assert not spool_files(tmp_path)
    for reports in (sent, got):
        assert reports[-1].done == reports[-1].total == leg.source.stat().st_size
        assert reports[-1].rate > 0
        assert [r.done for r in reports] == sorted(r.done for r in reports)
    assert stats.peak_in_flight <= FAST.window + CHUNK + 64
    assert not sites.errors


class LossySender(Sender):
    """Drops chunk ``drop`` the first time it is sent (core NATS may lose a message)."""

    drop = 5

    async def _publish(self, subject: str, data: bytes) -> None:
        if data[:1] == b"D" and int.from_bytes(data[1:9], "big") == self.drop:
            self.drop = -1
            return
        await super()._publish(subject, data)


class AckLosingReceiver(Receiver):
    """Loses the acks of the first window (the sender stalls: acks are cumulative)."""

    lose = FAST.window // FAST.ack_every

    async def _ack(self, kind: bytes, next_index: int) -> None:
        if next_index > 0 and self.lose:
            self.lose -= 1
            return
        await super()._ack(kind, next_index)


@pytest.mark.parametrize("fault", ["lost chunk", "lost acks"])
async def test_what_is_lost_in_transit_is_sent_again_and_the_payload_arrives_whole(
    sites: Sites, tmp_path: Path, fault: str
) -> None:
    leg = prepare(tmp_path, 1024 * 1024)
    receiver_cls = AckLosingReceiver if fault == "lost acks" else Receiver
    sender_cls = LossySender if fault == "lost chunk" else Sender
    receiver = receiver_cls(
        sites.node, subject=leg.route.to, dest=tmp_path / "out", key=leg.key, options=FAST
    )
    sender = sender_cls(sites.caller, leg.sealed, to=leg.route.to, control=leg.route.control,
                        options=FAST)  # fmt: skip
    received, stats = await asyncio.gather(receiver.run(), sender.run())
    assert digest(received.path) == digest(leg.source)
    assert stats.resent_chunks > 0


class SlowReceiver(Receiver):
    """A receiver whose disk takes 20 ms per chunk."""

    async def _write(self, opener: Opener, index: int, sealed: bytes, spool: BinaryIO) -> None:
        await asyncio.sleep(0.02)
        await super()._write(opener, index, sealed, spool)


async def test_a_slow_receiver_holds_the_sender_to_its_window(sites: Sites, tmp_path: Path) -> None:
    leg = prepare(tmp_path, 2 * 1024 * 1024)
    receiver = SlowReceiver(
        sites.node, subject=leg.route.to, dest=tmp_path / "out", key=leg.key, options=FAST
    )
    sender = Sender(sites.caller, leg.sealed, to=leg.route.to, control=leg.route.control,
                    options=FAST)  # fmt: skip
    received, stats = await asyncio.gather(receiver.run(), sender.run())
    assert digest(received.path) == digest(leg.source)
    # never more than a window (rounded up to a whole chunk) unacked, however slow the disk
    assert FAST.window <= stats.peak_in_flight <= FAST.window + CHUNK + 64
    assert stats.resent_chunks == 0


async def test_ten_concurrent_transfers_each_way_arrive_without_a_slow_consumer(
    sites: Sites, tmp_path: Path
) -> None:
    options = TransferOptions(retransmit_after=2.0)  # the defaults: 4 MiB windows
    legs = [prepare(tmp_path, 20 * 1024 * 1024, upload=i % 2 == 0) for i in range(10)]
    runs = []
    for i, leg in enumerate(legs):
        send_nc, recv_nc = ends(sites, i % 2 == 0)
        runs.append(
            Receiver(recv_nc, subject=leg.route.to, dest=tmp_path / f"out{i}", key=leg.key,
                     options=options).run()
        )  # fmt: skip
        runs.append(
            Sender(send_nc, leg.sealed, to=leg.route.to, control=leg.route.control,
                   options=options).run()
        )  # fmt: skip
    await asyncio.gather(*runs)
    for i, leg in enumerate(legs):
        assert digest(tmp_path / f"out{i}") == digest(leg.source)
    assert not [e for e in sites.errors if isinstance(e, nats.errors.SlowConsumerError)]
    assert not sites.errors


@pytest.mark.parametrize("who", ["sender", "receiver"])
async def test_a_cancel_stops_both_sides_at_once_and_leaves_no_file(
    sites: Sites, tmp_path: Path, who: str
) -> None:
    leg = prepare(tmp_path, 4 * 1024 * 1024)
    dest = tmp_path / "out"
    slow = TransferOptions(window=128 * 1024, ack_every=64 * 1024, idle_timeout=30.0)

    def cancel_midway(progress: TransferProgress) -> None:
        if progress.done >= 512 * 1024:
            (sender if who == "sender" else receiver).cancel("the user pressed stop")

    receiver = SlowReceiver(sites.node, subject=leg.route.to, dest=dest, key=leg.key,
                            expect_control=leg.route.control, options=slow,
                            progress=cancel_midway)  # fmt: skip
    sender = Sender(sites.caller, leg.sealed, to=leg.route.to, control=leg.route.control,
                    options=slow)  # fmt: skip
    results = await asyncio.wait_for(
        asyncio.gather(receiver.run(), sender.run(), return_exceptions=True), timeout=20
    )
    assert all(isinstance(r, TransferCancelledError) for r in results), results
    here, there = (results[1], results[0]) if who == "sender" else results
    assert "cancelled here: the user pressed stop" in str(here)
    assert "stopped the transfer: the user pressed stop" in str(there)
    assert not dest.exists()
    assert not partial_path(dest).exists()


async def test_a_deadline_stops_both_sides_and_leaves_no_file(sites: Sites, tmp_path: Path) -> None:
    leg = prepare(tmp_path, 4 * 1024 * 1024)
    dest = tmp_path / "out"
    slow = TransferOptions(window=128 * 1024, ack_every=64 * 1024)
    receiver = SlowReceiver(sites.node, subject=leg.route.to, dest=dest, key=leg.key,
                            expect_control=leg.route.control, options=slow,
                            timeout=0.5)  # fmt: skip
    sender = Sender(sites.caller, leg.sealed, to=leg.route.to, control=leg.route.control,
                    options=slow)  # fmt: skip
    results = await asyncio.wait_for(
        asyncio.gather(receiver.run(), sender.run(), return_exceptions=True), timeout=20
    )
    assert all(isinstance(r, TransferTimeoutError) for r in results), results
    assert isinstance(results[0], TimeoutError)
    assert not dest.exists() and not partial_path(dest).exists()


class FlippingSender(Sender):
    """Flips one byte of chunk 3 on the wire."""

    async def _publish(self, subject: str, data: bytes) -> None:
        if data[:1] == b"D" and int.from_bytes(data[1:9], "big") == 3:
            data = data[:40] + bytes([data[40] ^ 0x10]) + data[41:]
        await super()._publish(subject, data)


async def test_a_chunk_altered_in_transit_stops_both_sides_with_an_integrity_error(
    sites: Sites, tmp_path: Path
) -> None:
    leg = prepare(tmp_path, 1024 * 1024)
    dest = tmp_path / "out"
    receiver = Receiver(sites.node, subject=leg.route.to, dest=dest, key=leg.key, options=FAST)
    sender = FlippingSender(sites.caller, leg.sealed, to=leg.route.to,
                            control=leg.route.control, options=FAST)  # fmt: skip
    results = await asyncio.gather(receiver.run(), sender.run(), return_exceptions=True)
    assert isinstance(results[0], ChunkError) and results[0].index == 3
    assert isinstance(results[1], TransferError) and results[1].code == "integrity"
    assert "chunk 3" in str(results[1])
    assert not dest.exists() and not partial_path(dest).exists()


async def test_a_receiver_refuses_a_payload_other_than_the_one_it_expects(
    sites: Sites, tmp_path: Path
) -> None:
    leg = prepare(tmp_path, 100_000)
    dest = tmp_path / "out"
    receiver = Receiver(sites.node, subject=leg.route.to, dest=dest, key=leg.key,
                        expect_hash=bytes(32), options=FAST)  # fmt: skip
    sender = Sender(sites.caller, leg.sealed, to=leg.route.to, control=leg.route.control,
                    options=FAST)  # fmt: skip
    results = await asyncio.gather(receiver.run(), sender.run(), return_exceptions=True)
    assert all(isinstance(r, TransferError) and r.code == "refused" for r in results), results
    assert not dest.exists() and not partial_path(dest).exists()


async def test_a_sender_with_nobody_receiving_gives_up_after_its_open_timeout(
    sites: Sites, tmp_path: Path
) -> None:
    leg = prepare(tmp_path, 1000)
    options = TransferOptions(retransmit_after=0.2, open_timeout=1.0)
    sender = Sender(sites.caller, leg.sealed, to=leg.route.to, control=leg.route.control,
                    options=options)  # fmt: skip
    with pytest.raises(TransferTimeoutError, match="no receiver answered"):
        await sender.run()


async def test_a_spy_on_every_account_sees_no_plaintext_and_a_bystander_sees_nothing(
    federation: LocalFederation, sites: Sites, tmp_path: Path
) -> None:
    marker = b"SALINITY-PROFILE-CONFIDENTIAL-"
    spies: dict[str, NatsClient] = {}
    seen: dict[str, list[Msg]] = {}
    for where, url in [
        *((site, federation.site_url(site)) for site in federation.sites),
        ("hub", federation.hub_url),
    ]:
        spies[where] = await nats.connect(
            url, **(federation.hub_options() if where == "hub" else {})
        )
        seen[where] = []
        await spies[where].subscribe(">", cb=_collect(seen[where]))
        await spies[where].flush()
    try:
        for upload in (True, False):
            tid = new_transfer_id()
            source = payload_file(tmp_path / f"plain-{upload}", 2 * 1024 * 1024, block=marker)
            key = new_content_key()
            sealed = tmp_path / f"sealed-{upload}"
            seal_file(source, sealed, key, transfer_id=tid, chunk_size=CHUNK)
            route = (upload_route if upload else download_route)(
                CALLER_SITE, USER, NODE_SITE, tid.hex()
            )
            send_nc, recv_nc = ends(sites, upload)
            dest = tmp_path / f"out-{upload}"
            await asyncio.gather(
                Receiver(recv_nc, subject=route.to, dest=dest, key=key, options=FAST).run(),
                Sender(send_nc, sealed, to=route.to, control=route.control, options=FAST).run(),
            )
            assert marker in dest.read_bytes()[:4096]
        for spy in spies.values():
            await spy.flush()
    finally:
        for spy in spies.values():
            await spy.close()
    bulk = {where: [m for m in msgs if ".bulk." in m.subject or m.subject.count(".") == 4]
            for where, msgs in seen.items()}  # fmt: skip
    # the two sites of the transfer carried it (ciphertext), the bystander and the hub
    # account nothing of it; nobody saw a byte of the plaintext
    assert sum(len(m.data) for m in bulk[CALLER_SITE]) > 4 * 1024 * 1024
    assert sum(len(m.data) for m in bulk[NODE_SITE]) > 4 * 1024 * 1024
    assert not [m.subject for m in seen["awi"] if "bulk" in m.subject or "klaus" in m.subject]
    assert not [m.subject for m in seen["hub"] if "bulk" in m.subject or "klaus" in m.subject]
    for where, msgs in seen.items():
        assert not [m.subject for m in msgs if marker[:16] in m.data], where


def _collect(into: list[Msg]) -> Callable[[Msg], object]:
    async def cb(msg: Msg) -> None:
        into.append(msg)

    return cb


async def test_a_transfer_cancelled_before_it_runs_stops_the_peer_too(
    sites: Sites, tmp_path: Path
) -> None:
    leg = prepare(tmp_path, 100_000)
    dest = tmp_path / "out"
    receiver = Receiver(sites.node, subject=leg.route.to, dest=dest, key=leg.key,
                        expect_control=leg.route.control, options=FAST)  # fmt: skip
    sender = Sender(sites.caller, leg.sealed, to=leg.route.to, control=leg.route.control,
                    options=FAST)  # fmt: skip
    receiver.cancel("not needed after all")
    results = await asyncio.wait_for(
        asyncio.gather(receiver.run(), sender.run(), return_exceptions=True), timeout=20
    )
    assert all(isinstance(r, TransferCancelledError) for r in results), results
    assert "not needed after all" in str(results[1])
    assert not dest.exists() and not partial_path(dest).exists()


async def test_compressed_chunks_move_fewer_bytes_and_arrive_whole(
    sites: Sites, tmp_path: Path
) -> None:
    source = payload_file(tmp_path / "table.csv", 3 * 1024 * 1024, block=b"2026-11-30,54.2,9.1\n")
    key = new_content_key()
    tid = new_transfer_id()
    sealed = tmp_path / "sealed"
    info = seal_file(source, sealed, key, transfer_id=tid, chunk_size=CHUNK, compress=True)
    assert info.saving > 0.9
    route = upload_route(CALLER_SITE, USER, NODE_SITE, tid.hex())
    received, stats = await asyncio.gather(
        Receiver(sites.node, subject=route.to, dest=tmp_path / "out", key=key,
                 options=FAST).run(),
        Sender(sites.caller, sealed, to=route.to, control=route.control, options=FAST).run(),
    )  # fmt: skip
    assert digest(received.path) == digest(source)
    assert stats.sealed_bytes < source.stat().st_size // 10


async def test_a_receiver_without_the_key_keeps_the_sealed_form_for_the_object_store(
    sites: Sites, tmp_path: Path
) -> None:
    # The node stores a result sealed; later it streams the stored copy to the caller.
    leg = prepare(tmp_path, 2 * 1024 * 1024 + 5, upload=True)
    stored = tmp_path / "sealed-at-node"
    received, _ = await asyncio.gather(
        Receiver(sites.node, subject=leg.route.to, dest=stored, key=None,
                 expect_hash=leg.payload_hash, options=FAST).run(),
        Sender(sites.caller, leg.sealed, to=leg.route.to, control=leg.route.control,
               options=FAST).run(),
    )  # fmt: skip
    assert received.header.payload_hash == leg.payload_hash
    assert digest(stored) == digest(leg.sealed)
    js = sites.node.jetstream()
    try:
        await js.object_store("fh-transfer-test")
    except nats.js.errors.BucketNotFoundError:
        await js.create_object_store("fh-transfer-test")
    with stored.open("rb") as f:
        await put_object_stream(js, "fh-transfer-test", leg.transfer, f, chunk_size=256 * 1024)
    back = tmp_path / "from-store"
    await get_object_to_file(js, "fh-transfer-test", leg.transfer, back)
    with back.open("rb") as sealed, (tmp_path / "opened").open("wb") as plain:
        open_stream(sealed, plain, leg.key)
    assert digest(tmp_path / "opened") == digest(leg.source)


async def test_chunks_too_big_for_the_servers_max_payload_are_refused_before_sending(
    tmp_path: Path,
) -> None:
    from hub.nats import NatsServer

    async with NatsServer(tmp_path / "nats", max_payload=1024 * 1024) as server:
        nc = await nats.connect(server.url)
        try:
            key = new_content_key()
            source = payload_file(tmp_path / "p", 3 * 1024 * 1024)
            seal_file(source, tmp_path / "s", key, chunk_size=1024 * 1024)
            sender = Sender(nc, tmp_path / "s", to="fh.bulk.x.t", control="fh.inbox.x.u.t")
            with pytest.raises(TransferError, match="above the server's max_payload") as caught:
                await sender.run()
            assert caught.value.code == "refused"
        finally:
            await nc.close()


async def test_a_receiver_slow_to_commit_keeps_the_sender_waiting_without_resending(
    sites: Sites, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk that takes longer to flush the file than the sender's whole retry budget
    # (max_retries x retransmit_after = 2.4 s here).
    import time

    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        time.sleep(3.0)
        real_fsync(fd)

    monkeypatch.setattr("hub.transfer.stream.os.fsync", slow_fsync)
    leg = prepare(tmp_path, 1024 * 1024)
    received, stats = await asyncio.gather(
        Receiver(sites.node, subject=leg.route.to, dest=tmp_path / "out", key=leg.key,
                 options=FAST).run(),
        Sender(sites.caller, leg.sealed, to=leg.route.to, control=leg.route.control,
               options=FAST).run(),
    )  # fmt: skip
    assert digest(received.path) == digest(leg.source)
    assert stats.resent_chunks == 0
