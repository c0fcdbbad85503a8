"""Around a running call: its progress to the caller, its keep-alive to the server, and
what its failure is called in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from nats.aio.msg import Msg

from hub.envelopes import RequestHeader
from hub.errors import (
    FederationError,
)
from hub.events import RequestProgress
from node.logwriter import LogWriter
from node.replies import Replies

__all__ = ["KeepAlive", "ProgressForwarder", "public_reason"]


class ProgressForwarder:
    """Sends progress to the caller (sealed) and logs it at most once a second."""

    def __init__(
        self, replies: Replies, writer: LogWriter, header: RequestHeader, key: bytes
    ) -> None:
        self.replies, self.writer, self.header, self.key = replies, writer, header, key
        self.tasks: list[asyncio.Task[None]] = []
        self.last_logged = 0.0

    def report(self, fraction: float | None, message: str) -> None:
        """Called by the runner for each progress report of the function."""
        self.tasks = [t for t in self.tasks if not t.done()]
        self.tasks.append(asyncio.create_task(self._send(fraction, message)))

    async def _send(self, fraction: float | None, message: str) -> None:
        ppm = None if fraction is None else max(0, min(1_000_000, round(fraction * 1_000_000)))
        h = self.header
        await self.replies.progress(h.id, h.reply, self.key, ppm, message)
        t = time.monotonic()
        if t - self.last_logged >= 1.0 or ppm == 1_000_000:
            self.last_logged = t
            with contextlib.suppress(FederationError):
                await self.writer.append(RequestProgress(request_id=h.id, fraction_ppm=ppm))

    async def close(self) -> None:
        """Wait for the reports still being sent."""
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


class KeepAlive:
    """Tells the server that held call messages are still being worked on (``+WPI``).

    A message is held from its delivery until it is acked or handed back: while it waits
    for the log, for an executor slot, runs, or its result is stored. One timer, every
    ``every`` seconds (a third of ``ack_wait``), sends ``+WPI`` for each message held
    longer than that; a call that ends sooner costs one dict entry. So ``ack_wait`` can be
    short (a killed node's calls come back within seconds) and long calls still are not
    redelivered while they run.
    """

    def __init__(self, every: float) -> None:
        self.every = every
        self.held: dict[int, tuple[float, Msg]] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.sent = 0

    def hold(self, msg: Msg) -> None:
        """``msg`` was delivered: keep it alive until :meth:`drop`."""
        loop = asyncio.get_running_loop()
        self.held[id(msg)] = (loop.time(), msg)
        if self.timer is None:
            self.timer = loop.call_later(self.every, self._fire)

    def drop(self, msg: Msg) -> None:
        """``msg`` was acked or handed back."""
        self.held.pop(id(msg), None)

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        self.timer = None
        if not self.held:
            return
        cutoff = loop.time() - self.every * 0.9
        due = [msg for since, msg in self.held.values() if since <= cutoff]
        if due and (self.task is None or self.task.done()):
            self.task = loop.create_task(self._send(due))
        self.timer = loop.call_later(self.every, self._fire)

    async def _send(self, msgs: list[Msg]) -> None:
        for msg in msgs:
            with contextlib.suppress(Exception):  # disconnected: the reconnect resumes
                await msg.in_progress()
                self.sent += 1

    def stop(self) -> None:
        """No more ticks."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def public_reason(exc: FederationError, code: str) -> str:
    """What the log may say: no argument values, only what kind of failure it was."""
    if code == "function_failed":
        return exc.message.split(":", 1)[0][:300]
    return exc.message[:300]
