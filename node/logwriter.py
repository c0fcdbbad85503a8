"""Async front of the event log: group commit from many coroutines, then publication.

Coroutines call ``await writer.append(event, ...)``; a single writer task takes everything
queued (after one more turn of the loop, so that appends caused by the same burst of
I/O join), appends it in one transaction (so concurrent requests share one commit and one
signature), resolves each caller with its stored events, and hands
the new events to the publisher, which sends them to the site's JetStream event stream
(:mod:`node.eventcopies`: a ``Nats-Msg-Id`` per run of events, so a re-send is dropped by
the server, and a cursor: after a restart it first sends whatever the log has beyond it).

Where the append runs: a small batch (up to ``inline_max`` events: a few calls' worth,
~50 µs of signing each, and a commit that does not wait for the disk under
``synchronous=normal``) runs right on the event loop's thread; handing it to a thread
costs more than it saves, in wake-ups and in contention for the GIL. Larger batches, and
every batch while a read or a checkpoint is running on the log's thread, go to that
thread, so the log is only ever used by one thread at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import structlog
from pydantic import BaseModel

from hub.errors import LogConflictError
from node.eventlog import EventLog, StoredEvent

__all__ = ["LogWriter"]

log = structlog.get_logger(__name__)

Publish = Callable[[list[StoredEvent]], Awaitable[None]]

#: Seconds the publisher waits to gather more commits into one stream message.
PUBLISH_DELAY = 0.02


class LogWriter:
    """Group-committing async writer over an :class:`EventLog`."""

    def __init__(self, eventlog: EventLog, *, max_batch: int = 512, inline_max: int = 32) -> None:
        self.eventlog = eventlog
        self.max_batch = max_batch
        self.inline_max = inline_max
        self._thread_jobs = 0
        self._busy = False  # the writer task is appending a batch
        self._queue: asyncio.Queue[
            tuple[Sequence[BaseModel], asyncio.Future[list[StoredEvent]]]
        ] = asyncio.Queue()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="eventlog")
        self._task: asyncio.Task[None] | None = None
        self._publish: Publish | None = None
        self._published: asyncio.Queue[list[StoredEvent]] = asyncio.Queue()
        self._pub_task: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self, publish: Publish | None = None) -> None:
        """Start the writer (and the publisher, when ``publish`` is given)."""
        self._task = asyncio.create_task(self._run(), name="eventlog-writer")
        if publish is not None:
            self._publish = publish
            self._pub_task = asyncio.create_task(self._run_publisher(), name="eventlog-publisher")

    async def append(self, *events: BaseModel, alone: bool = False) -> list[StoredEvent]:
        """Append events (in order, in one transaction with others queued now).

        ``alone``: the caller expects no other appends right now (a node with one call in
        flight); when the writer is idle the events are appended at once, without the hop
        to the writer task. Under load, leave it False so appends share commits.
        """
        if self._closed or self._task is None:
            raise LogConflictError("the event log writer is not running")
        if (
            alone
            and not self._busy
            and not self._thread_jobs
            and self._queue.empty()
            and len(events) <= self.inline_max
        ):
            stored = self.eventlog.append_many(events)
            if self._publish is not None and stored:
                self._published.put_nowait(stored)
            return stored
        fut: asyncio.Future[list[StoredEvent]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((events, fut))
        return await fut

    def connection_if_idle(self) -> sqlite3.Connection | None:
        """The log's own connection, for a read on the loop thread right now, when no
        append or job uses it (on this thread or the log's); else None. Its page cache
        is warm with what was just written, where another connection's is emptied by
        every commit of this one (WAL)."""
        if self._busy or self._thread_jobs or self._closed:
            return None
        return self.eventlog.db.conn

    async def call(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the log's thread (reads that must not race the writer)."""
        return await self._on_thread(fn)

    async def _on_thread(self, fn: Callable[..., object], *args: object) -> object:
        self._thread_jobs += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)
        finally:
            self._thread_jobs -= 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            if self._queue.empty():
                # one more turn of the loop first: the appends of calls whose messages
                # or thread results arrived with this one join its commit
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    if not first[1].done():
                        first[1].set_exception(LogConflictError("the log writer stopped"))
                    raise
            batch = [first]
            count = len(first[0])
            while not self._queue.empty() and count < self.max_batch:
                item = self._queue.get_nowait()
                batch.append(item)
                count += len(item[0])
            flat = [ev for evs, _ in batch for ev in evs]
            self._busy = True
            try:
                if len(flat) <= self.inline_max and not self._thread_jobs:
                    stored = self.eventlog.append_many(flat)
                else:
                    stored = await loop.run_in_executor(
                        self._thread, self.eventlog.append_many, flat
                    )
            except Exception as exc:  # the log refused: every waiter learns why
                log.error("eventlog.append_failed", error=str(exc), events=len(flat))
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                self._busy = False
            at = 0
            for evs, fut in batch:
                if not fut.done():
                    fut.set_result(stored[at : at + len(evs)])
                at += len(evs)
            if self._publish is not None and stored:
                self._published.put_nowait(stored)

    async def _run_publisher(self) -> None:
        assert self._publish is not None
        while True:
            events = await self._published.get()
            # let a busy node's commits pile up for a moment: one message per ~20 ms
            # instead of one per commit (copies to the stream are not on any call's path)
            await asyncio.sleep(PUBLISH_DELAY)
            while not self._published.empty():
                events = events + self._published.get_nowait()
            try:
                await self._publish(events)
            except Exception as exc:  # events stay in the log; sent again at next start
                log.warning("eventlog.publish_failed", error=str(exc), first=events[0].seq)

    async def checkpoint(self) -> StoredEvent:
        """Append a signed checkpoint now (on the log's thread) and publish it."""
        await self.flush()
        stored = await self._on_thread(self.eventlog.checkpoint)
        assert isinstance(stored, StoredEvent)
        if self._publish is not None:
            self._published.put_nowait([stored])
        return stored

    async def flush(self) -> None:
        """Wait until everything queued so far is committed and handed to the publisher."""
        if self._task is None:
            return
        fut: asyncio.Future[list[StoredEvent]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(((), fut))
        await fut
        for _ in range(100):
            if self._published.empty():
                break
            await asyncio.sleep(0.01)

    async def aclose(self) -> None:
        """Flush, stop the tasks and the thread; harmless twice. Does not close the log."""
        if self._closed:
            return
        with contextlib.suppress(Exception):
            await self.flush()
        self._closed = True
        for task in (self._task, self._pub_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._thread.shutdown(wait=True)
