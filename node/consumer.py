"""A continuous pull consumer: calls are delivered the moment they are stored.

nats-py's ``fetch()`` asks for a batch, waits until the batch is full or the request
expires, and then asks again: a call that arrives between two fetches waits for the next
one, and an idle node sends a request every second. This consumer instead keeps standing
pull requests open on one private inbox, sized to the node's free call slots (credit),
like ``Consume()`` in the NATS Go and Java clients:

* ``credit`` = free slots - messages requested but not yet delivered. When it reaches
  ``refill`` (default a quarter of the window; any credit when nothing is outstanding) the
  consumer sends one pull request for that many messages, lasting ``expires`` seconds,
  with idle heartbeats. Messages arrive as soon as the stream has them.
* a status message ends a pull request (``408`` expired, ``409`` limits or leadership
  change): its ``Nats-Pending-Messages`` header says how much of that request's credit is
  gone; the consumer re-requests.
* no message and no heartbeat for two heartbeat intervals (a server restart, a lost leaf
  link) resets the outstanding count and re-requests; so does a reconnect. Should the old
  requests have survived after all, the window still holds: a call beyond it is handed
  back (``-NAK``, 0.2 s) instead of being taken.
* stopping: :meth:`close` first stops requesting; any call still delivered to the inbox
  is handed back at once (``-NAK``) so another node gets it without waiting for
  ``ack_wait``; then the inbox is unsubscribed (the server drops pull requests whose inbox
  lost interest). Pull requests are short (``expires`` 5 s, re-sent when they end): where
  the inbox still seems to have interest, e.g. a ``>`` subscriber on the hub, a request
  left by a stopped node can catch calls only until it expires; those come back after
  ``ack_wait``.

The handler must not block: it is called on the subscription's task and should start
the call's own task. Each message delivered to it holds one slot until :meth:`release`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["CallConsumer"]

log = structlog.get_logger(__name__)

Handler = Callable[[Msg], None]


class CallConsumer:
    """Keeps ``window`` calls requested from a durable pull consumer, never more."""

    def __init__(
        self,
        nc: NatsClient,
        stream: str,
        durable: str,
        handler: Handler,
        *,
        window: int,
        refill: int | None = None,
        expires: float = 5.0,
        heartbeat: float = 1.0,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.nc = nc
        self.handler = handler
        self.window = window
        self.expires = expires
        self.heartbeat = heartbeat
        self.refill = max(1, min(window, refill if refill is not None else window // 4))
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = ""
        self._sub: Subscription | None = None
        self._busy = 0  # delivered, not yet released
        self._outstanding = 0  # requested, not yet delivered
        self._last_seen = time.monotonic()
        self._stopping = False
        self._watchdog: asyncio.Task[None] | None = None
        self.delivered = 0
        self.pulls = 0
        self.refused = 0  # delivered beyond the window, handed back

    @property
    def busy(self) -> int:
        """Calls delivered and not yet released."""
        return self._busy

    async def start(self) -> None:
        """Subscribe the inbox and send the first pull request."""
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg)
        self._watchdog = asyncio.create_task(self._watch(), name="pull-watchdog")
        await self._top_up(force=True)

    def release(self) -> None:
        """A call ended: its slot is free again (and may be offered to the server)."""
        self._busy -= 1
        if not self._stopping and self._credit() >= self.refill:
            self._spawn_top_up()

    async def close(self) -> None:
        """Stop requesting; hand back whatever still arrives; unsubscribe."""
        if self._stopping:
            return
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._sub is not None:
            # calls the server sent before it learns we are gone are handed back (-NAK)
            # by _on_msg; a flush round trip lets those already on the wire arrive first
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=1)
            await asyncio.sleep(0.02)
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    def reset(self) -> None:
        """Forget outstanding requests (after a reconnect) and ask again."""
        self._outstanding = 0
        if not self._stopping:
            self._spawn_top_up()

    # --- internals ------------------------------------------------------------------------

    def _credit(self) -> int:
        return self.window - self._busy - self._outstanding

    def _spawn_top_up(self) -> None:
        task = asyncio.get_running_loop().create_task(self._top_up())
        task.add_done_callback(_log_failure)

    async def _top_up(self, *, force: bool = False) -> None:
        credit = self._credit()
        if self._stopping or credit <= 0:
            return
        if not force and credit < self.refill and self._outstanding > 0:
            return
        self._outstanding += credit
        self.pulls += 1
        request = {
            "batch": credit,
            "expires": int(self.expires * 1e9),
            "idle_heartbeat": int(self.heartbeat * 1e9),
        }
        try:
            await self.nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)
        except Exception:
            self._outstanding -= credit
            raise

    async def _on_msg(self, msg: Msg) -> None:
        self._last_seen = time.monotonic()
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status is None and msg.reply:
            if self._stopping:
                with contextlib.suppress(Exception):
                    await msg.nak()
                return
            self._outstanding = max(0, self._outstanding - 1)
            if self._busy >= self.window:
                # more than asked for (a request thought lost after a silence was not):
                # the window is a hard limit, so hand it back for a moment later
                self.refused += 1
                with contextlib.suppress(Exception):
                    await msg.nak(delay=0.2)
                return
            self._busy += 1
            self.delivered += 1
            self.handler(msg)
            return
        if status == "100":  # idle heartbeat, or flow control (which wants an answer)
            if msg.reply:
                await self.nc.publish(msg.reply, b"")
            return
        if headers is None:  # nothing the server sends: not ours to act on
            return
        # 404/408/409: a pull request ended; the credit it still held is gone
        pending = headers.get("Nats-Pending-Messages")
        if pending is not None and pending.isdigit():
            self._outstanding = max(0, self._outstanding - int(pending))
        else:
            self._outstanding = 0
        if status != "408":
            log.info("pull.status", status=status, description=headers.get("Description", ""))
        if status == "409" and "Leadership" not in headers.get("Description", ""):
            await asyncio.sleep(0.2)  # a limit was hit: do not spin
        if not self._stopping:
            await self._top_up(force=True)

    async def _watch(self) -> None:
        """Re-request when the server has gone quiet for two heartbeats."""
        while True:
            await asyncio.sleep(self.heartbeat)
            if not self.nc.is_connected:  # an outage: the reconnect re-requests (reset)
                self._last_seen = time.monotonic()
                continue
            if time.monotonic() - self._last_seen > 2 * self.heartbeat:
                log.info("pull.silent", seconds=round(time.monotonic() - self._last_seen, 1))
                self._last_seen = time.monotonic()
                self.reset()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("pull.request_failed", error=str(task.exception()))
