"""The copies of a running node's events in its site's FH_EVENTS stream are the log's own
export lines: the same bodies, hashes and signatures, an empty signature where the log
stores none (version 2: one signature per commit)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from support.world import World

from hub.subjects import EVENTS_STREAM
from node.daemon import read_status_file
from node.eventlog import EventLog


async def _stream_lines(url: str) -> list[bytes]:
    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream()
        info = await js.stream_info(EVENTS_STREAM)
        lines: list[bytes] = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(EVENTS_STREAM, seq)
            lines += (msg.data or b"").splitlines(keepends=True)
        return lines
    finally:
        await nc.close()


async def test_published_event_copies_carry_the_log_lines_and_empty_signatures(
    tmp_path: Path,
) -> None:
    world = World(tmp_path / "world")
    world.person("klaus@geomar")
    world.person("anna@geomar")
    # the directory's first events (two keys, two grants) are appended in one commit
    cfg = world.node_config(
        "hereon",
        trust=["geomar"],
        users=["klaus@geomar", "anna@geomar"],
        grants=[("klaus@geomar", "climate", "*"), ("anna@geomar", "climate", "*")],
    )
    node = world.spawn_node(cfg)
    try:
        status = read_status_file(cfg.node.data_dir)
        assert status is not None
        lines: list[bytes] = []
        async with asyncio.timeout(30):
            while True:
                with EventLog.open_readonly(cfg.log_path) as log:
                    size = log.size
                lines = await _stream_lines(str(status["url"]))
                if len(lines) >= size:
                    break
                await asyncio.sleep(0.1)
    finally:
        node.stop()
    with EventLog.open_readonly(cfg.log_path) as log:
        log.export(tmp_path / "events.jsonl")
    exported = (tmp_path / "events.jsonl").read_bytes().splitlines(keepends=True)
    assert lines == exported[: len(lines)]
    assert any(b'"sig":"",' in line for line in lines)
    assert b'"sig":"",' not in lines[-1]
