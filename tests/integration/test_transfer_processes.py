"""Bulk transfers between separate processes: memory stays bounded, a killed side leaves
nothing visible.

Each side runs ``scripts/bulk_peer.py`` (the same peer the benchmark uses) against a real
federation: caller at geomar, node at hereon, across the hub.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nats
import pytest
from support.logs import captured

from hub.crypto import new_content_key
from hub.errors import TransferTimeoutError
from hub.nats import LocalFederation
from hub.transfer import (
    Receiver,
    Route,
    Sender,
    TransferOptions,
    TransferProgress,
    download_route,
    new_transfer_id,
    partial_path,
    seal_file,
    spool,
    sweep_partials,
    upload_route,
)

PEER = Path(__file__).resolve().parents[2] / "scripts" / "bulk_peer.py"
CALLER_SITE, USER, NODE_SITE = "geomar", "klaus", "hereon"
MIB = 1024 * 1024


@pytest.fixture(scope="session")
def federation(open_federation: LocalFederation) -> LocalFederation:
    """Transfers here are watched and driven by clients allowed everything at a site's
    server: the federation whose site servers take anyone (the hub and the leaf
    connections are secured as ever; see test_leaf_permissions.py for what a site's
    server refuses)."""
    return open_federation


def payload_file(path: Path, size: int) -> Path:
    with path.open("wb") as out:
        for _ in range(size // MIB):
            out.write(os.urandom(MIB))
        out.write(os.urandom(size % MIB))
    return path


def digest(path: Path) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    with path.open("rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.digest()


def peer(role: str, url: str, route: Route, key: bytes, **options: object) -> subprocess.Popen[str]:
    """Start one side of a transfer as its own process (stdout: one JSON line at the end)."""
    args = [sys.executable, str(PEER), role, "--url", url, "--key", key.hex(),
            "--control", route.control]  # fmt: skip
    if role == "receive":
        args += ["--subject", route.to]
    else:
        args += ["--to", route.to]
    for name, value in options.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=PEER.parents[1]
    )


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> dict[str, int]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    report: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return report


@pytest.mark.slow
@pytest.mark.parametrize("upload", [True, False], ids=["caller-to-node", "node-to-caller"])
def test_200_mib_cross_the_hub_with_each_sides_memory_bounded(
    federation: LocalFederation, tmp_path: Path, upload: bool
) -> None:
    size = 200 * MIB
    source = payload_file(tmp_path / "source", size)
    tid = new_transfer_id().hex()
    key = new_content_key()
    make_route = upload_route if upload else download_route
    route = make_route(CALLER_SITE, USER, NODE_SITE, tid)
    sender_site, receiver_site = (CALLER_SITE, NODE_SITE) if upload else (NODE_SITE, CALLER_SITE)
    dest = tmp_path / "arrived"
    receiver = peer("receive", federation.site_url(receiver_site), route, key, dest=dest)
    sender = peer("send", federation.site_url(sender_site), route, key, source=source,
                  transfer=tid)  # fmt: skip
    sent, received = finish(sender), finish(receiver)
    assert sent["bytes"] == received["bytes"] == size
    assert digest(dest) == digest(source)
    for report in (sent, received):
        # peak RSS growth during the transfer: a window and a few chunks, not the payload
        growth_mib = (report["rss_peak_kib"] - report["rss_start_kib"]) / 1024
        assert growth_mib < 128, report


def test_a_sender_killed_mid_transfer_leaves_nothing_visible_at_the_receiver(
    federation: LocalFederation, tmp_path: Path
) -> None:
    source = payload_file(tmp_path / "source", 48 * MIB)
    tid = new_transfer_id().hex()
    key = new_content_key()
    route = upload_route(CALLER_SITE, USER, NODE_SITE, tid)
    dest = tmp_path / "node" / "argument"
    dest.parent.mkdir()
    sender = peer("send", federation.site_url(CALLER_SITE), route, key, source=source,
                  transfer=tid, window=MIB)  # fmt: skip

    async def receive() -> None:
        nc = await nats.connect(federation.site_url(NODE_SITE))
        progressed = asyncio.Event()

        def on_progress(progress: TransferProgress) -> None:
            if progress.done >= 2 * MIB:
                progressed.set()

        receiver = Receiver(
            nc,
            subject=route.to,
            dest=dest,
            key=key,
            expect_control=route.control,
            options=TransferOptions(window=MIB, ack_every=MIB // 4, idle_timeout=2.0),
            progress=on_progress,
        )
        task = asyncio.create_task(receiver.run())
        try:
            await asyncio.wait_for(progressed.wait(), 60)
            assert partial_path(dest).exists()
            sender.send_signal(signal.SIGKILL)
            with pytest.raises(TransferTimeoutError, match="sender gone"):
                await asyncio.wait_for(task, 30)
        finally:
            task.cancel()
            await nc.close()

    try:
        asyncio.run(receive())
    finally:
        sender.kill()
        sender.communicate(timeout=10)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


def test_a_receiver_killed_mid_transfer_stops_the_sender_and_the_sweep_removes_its_spool(
    federation: LocalFederation, tmp_path: Path
) -> None:
    source = payload_file(tmp_path / "source", 48 * MIB)
    tid = new_transfer_id()
    key = new_content_key()
    sealed = tmp_path / "sealed"
    seal_file(source, sealed, key, transfer_id=tid)
    route = download_route(CALLER_SITE, USER, NODE_SITE, tid.hex())
    dest = tmp_path / "caller" / "result"
    dest.parent.mkdir()
    receiver = peer("receive", federation.site_url(CALLER_SITE), route, key, dest=dest,
                    window=MIB)  # fmt: skip

    async def send() -> None:
        nc = await nats.connect(federation.site_url(NODE_SITE))
        killed = False

        def on_progress(progress: TransferProgress) -> None:
            nonlocal killed
            if progress.done >= 2 * MIB and not killed:
                killed = True
                receiver.send_signal(signal.SIGKILL)

        options = TransferOptions(window=MIB, ack_every=MIB // 4, retransmit_after=0.5,
                                  max_retries=3, progress_interval=0.01)  # fmt: skip
        sender = Sender(nc, sealed, to=route.to, control=route.control, options=options,
                        progress=on_progress)  # fmt: skip
        try:
            with pytest.raises(TransferTimeoutError, match="stopped answering"):
                await asyncio.wait_for(sender.run(), 60)
        finally:
            await nc.close()
        assert killed

    try:
        asyncio.run(send())
    finally:
        receiver.kill()
        receiver.communicate(timeout=10)
    assert not dest.exists()
    orphan = partial_path(dest)
    assert orphan.exists()  # the receiver died before it could clean up
    assert sweep_partials(dest.parent, older_than=3600) == []  # too young to be an orphan
    with captured(spool) as logs:
        assert sweep_partials(dest.parent, older_than=0) == [orphan]
    assert not orphan.exists()
    assert [(e["event"], e["path"]) for e in logs] == [("transfer.swept", str(orphan))]
