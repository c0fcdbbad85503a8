"""Around a running call: its progress to the caller, its keep-alive to the server, and
what its failure is called in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

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
    """Tells the server every ``every`` seconds that a call is still running (``+WPI``),
    so its message is not redelivered; a timer, not a task, so a short call costs nothing.
    """

    def __init__(self, tick: Callable[[], Awaitable[None]], every: float) -> None:
        self.tick, self.every = tick, every
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = self.loop.call_later(every, self._fire)
        self.task: asyncio.Task[None] | None = None

    def _fire(self) -> None:
        self.task = self.loop.create_task(self._send())
        self.timer = self.loop.call_later(self.every, self._fire)

    async def _send(self) -> None:
        with contextlib.suppress(Exception):
            await self.tick()

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
