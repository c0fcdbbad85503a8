"""Copies of the event log in the site's ``FH_EVENTS`` stream, and how far they got.

The log writer hands every commit to :meth:`EventCopies.publish` (``LogWriter.start``).
One message carries a run of consecutive events as export lines (JSON Lines, the format of
``fedhub-node log export``: hash and signature travel in the line, ``"sig":""`` for an
event that is not the last of its commit), up to ~256 KiB, with ``Nats-Msg-Id`` =
``<log>@<genesis hash prefix>:<first seq>-<last seq>`` (a log re-created under the same
name is a different log, and the server drops a message it has seen).

The cursor -- the last event the stream confirmed -- is kept in the log's ``meta`` table
(``published_seq``), at most once a second while running and once more at stop. After a
crash the node re-sends from the saved cursor (:meth:`EventCopies.republish_backlog`), so
a reader may see an event twice and keeps the first of each ``seq``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from nats.js import JetStreamContext

from hub.errors import TransportError
from hub.logfile import export_line
from hub.nats import wait_acks
from node.eventlog import EventLog, StoredEvent
from node.logwriter import LogWriter

__all__ = ["EventCopies"]

#: A stream message carries events up to about this many bytes.
_MESSAGE_BYTES = 256 * 1024
#: Seconds the stream has to confirm a run of events.
_ACK_WAIT = 10.0


class EventCopies:
    """Publishes one log's events to its subject of the site's event stream."""

    def __init__(
        self,
        eventlog: EventLog,
        writer: LogWriter,
        jetstream: Callable[[], JetStreamContext],
        subject: str,
    ) -> None:
        self.eventlog = eventlog
        self.writer = writer
        self.jetstream = jetstream
        self.subject = subject
        self.published_seq = 0  # the last event the stream confirmed
        self._saved_at = 0.0
        first = next(eventlog.events(after=0, limit=1), None)
        self._genesis = first.hash.hex()[:16] if first is not None else ""

    async def publish(self, events: list[StoredEvent]) -> None:
        """Send a run of consecutive events; raises TransportError when the stream does
        not confirm them (they stay in the log and go again at the next start)."""
        js = self.jetstream()
        log_id = self.eventlog.log_id
        batch: list[bytes] = []
        acks = []
        size, first = 0, events[0].seq
        for i, ev in enumerate(events):
            line = export_line(ev.hash, ev.sig, ev.body)
            batch.append(line)
            size += len(line)
            if size >= _MESSAGE_BYTES or i == len(events) - 1:
                acks.append(
                    await js.publish_async(
                        self.subject,
                        b"".join(batch),
                        headers={"Nats-Msg-Id": f"{log_id}@{self._genesis}:{first}-{ev.seq}"},
                    )
                )
                batch, size, first = [], 0, ev.seq + 1
        try:
            await wait_acks(acks, _ACK_WAIT)
        except TimeoutError:
            raise TransportError(
                f"the event stream did not confirm the events in {_ACK_WAIT:g} s"
            ) from None
        self.published_seq = events[-1].seq
        if time.monotonic() - self._saved_at >= 1.0:
            await self._save()

    def save_final(self) -> None:
        """Keep the cursor at stop (after the writer flushed, before the log closes)."""
        if self.published_seq > 0:
            _keep_cursor(self.eventlog, self.published_seq)

    async def republish_backlog(self) -> None:
        """Send what the log holds beyond the saved cursor (at start)."""
        eventlog = self.eventlog

        def backlog() -> list[StoredEvent]:
            row = eventlog.db.execute(
                "SELECT value FROM meta WHERE key = 'published_seq'"
            ).fetchone()
            after = int(row[0]) if row else 0
            return list(eventlog.events(after=after))

        pending = await self.writer.call(backlog)
        assert isinstance(pending, list)
        for i in range(0, len(pending), 1000):
            await self.publish(pending[i : i + 1000])

    async def _save(self) -> None:
        """Keep the cursor (on the log's thread), at most once a second while running."""
        eventlog, seq = self.eventlog, self.published_seq
        self._saved_at = time.monotonic()
        if seq > 0:
            await self.writer.call(lambda: _keep_cursor(eventlog, seq))


def _keep_cursor(eventlog: EventLog, seq: int) -> None:
    eventlog.db.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('published_seq', ?)", [str(seq)]
    )
