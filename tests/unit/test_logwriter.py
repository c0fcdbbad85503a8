"""The log writer: group commit from many coroutines, and the log's connection lent for
reads only while nothing else uses it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from helpers.logs import Keys, open_new_log, request_events

from node.logwriter import LogWriter


async def test_appends_made_in_one_turn_of_the_loop_share_one_signed_commit(
    tmp_path: Path,
) -> None:
    log = open_new_log(tmp_path / "events.db", Keys.generate(), checkpoint_every=10_000)
    writer = LogWriter(log)
    await writer.start()
    try:
        stored = await asyncio.gather(
            *(writer.append(*request_events(f"req{i:05d}")) for i in range(10))
        )
    finally:
        await writer.aclose()
        log.close()
    events = [ev for part in stored for ev in part]
    assert len(events) == 10 * len(request_events("req00000"))
    assert [ev.signed for ev in events] == [False] * (len(events) - 1) + [True]


async def test_the_logs_connection_is_lent_for_a_read_only_while_nothing_else_uses_it(
    tmp_path: Path,
) -> None:
    log = open_new_log(tmp_path / "events.db", Keys.generate())
    writer = LogWriter(log)
    await writer.start()
    release = threading.Event()
    try:
        assert writer.connection_if_idle() is log.db.conn
        busy = asyncio.ensure_future(writer.call(lambda: release.wait(30)))
        await asyncio.sleep(0)  # the job is on the log's thread now
        assert writer.connection_if_idle() is None
        release.set()
        await busy
        assert writer.connection_if_idle() is log.db.conn
    finally:
        release.set()
        await writer.aclose()
        log.close()
    assert writer.connection_if_idle() is None  # closed
