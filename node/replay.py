"""Replay protection: each request nonce is accepted once, at O(1) cost per request.

A request is accepted only if its time ``sent`` is within ``window`` seconds of the node's
clock, so a nonce received at ``received`` can no longer be accepted once the clock passes
``sent + window <= received + 2 * window``. The guard remembers each nonce until then and
forgets it from the front of a queue kept in arrival order: memory is bounded by the
requests of the last ``2 * window`` seconds, and each request costs O(1) amortized.

The wall clock may step. Arrival stamps never go back (a stamp is the latest time the guard
has seen), so a clock that steps back forgets nothing early; it only keeps nonces longer
(after a step back of ``D`` seconds, the requests of the last ``2 * window + D`` seconds).
A clock that steps forward forgets early, so the guard keeps a floor: the latest send time a
forgotten nonce could carry. A request sent at or before it is refused (it might be the
replay of a forgotten nonce). On a steady clock that refuses nothing the window would not.

After a restart, :func:`recent_nonces` reads the nonces of the last ``2 * window`` seconds
from the event log, and :meth:`ReplayGuard.load` remembers them again; the floor starts
where the nonces left out could end (``read_at - window``), as if the guard had run all
along.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime

from hub.canonical import b64d, parse_canonical
from hub.clock import format_time, parse_time
from hub.errors import CanonicalError, ReplayError

__all__ = ["ReplayGuard", "recent_nonces"]

#: Events that may carry a request's nonce: ``data.nonce`` (log v1 ``request.received``) or
#: the caller's signed header in ``data.header`` (log v2 ``request.accepted``, and a v2
#: ``request.rejected`` should it carry the header); events with neither are skipped.
_NONCE_TYPES = frozenset({"request.received", "request.accepted", "request.rejected"})
# A body's time, read from its fixed tail (canonical JSON, keys sorted: see
# docs/log-format.md) without parsing the body.
_TAIL_TIME = re.compile(rb'"time":"([0-9T:.Z-]{27})","type":"[a-z._]+","v":[12]}\Z')


def _text(epoch: float) -> str:
    try:
        return format_time(datetime.fromtimestamp(epoch, UTC))
    except (OverflowError, OSError, ValueError):
        return f"{epoch!r} (epoch seconds)"


class ReplayGuard:
    """Refuses a request whose time is outside ``±window`` or whose nonce was seen before.

    Not thread-safe: call it from one thread (the node's event loop).
    """

    def __init__(self, window: float) -> None:
        if not window > 0:
            raise ValueError(f"the replay window must be positive, not {window!r}")
        self.window = float(window)
        self._held: set[str] = set()
        # (forget after, nonce) in arrival order; "forget after" never decreases
        self._queue: deque[tuple[float, str]] = deque()
        self._latest = float("-inf")  # the latest time seen: arrival stamps never go back
        self._floor = float("-inf")  # the latest send time a forgotten nonce could carry

    def __len__(self) -> int:
        """How many nonces are remembered."""
        return len(self._held)

    def __contains__(self, nonce: object) -> bool:
        return nonce in self._held

    def check_and_remember(self, nonce: str, sent: float, now: float | None = None) -> None:
        """Accept a request (remember its nonce) or raise :class:`ReplayError`.

        ``sent`` is the request's time and ``now`` the node's (epoch seconds; default:
        the wall clock now).
        """
        if now is None:
            now = time.time()
        self._forget(now)
        if not abs(now - sent) <= self.window:  # written so that NaN is outside too
            raise ReplayError(
                f"request time {_text(sent)} is outside the {self.window:.0f} s window",
                hint="check the caller's clock",
            )
        if nonce in self._held:
            raise ReplayError(
                f"nonce {nonce} was used before within the {self.window:.0f} s window"
            )
        if sent <= self._floor:
            raise ReplayError(
                f"request time {_text(sent)} is older than requests this node has forgotten",
                hint="the node's clock stepped back: check it",
            )
        self._remember(nonce, now)

    def load(self, items: Iterable[tuple[str, float]], *, read_at: float | None = None) -> int:
        """Remember ``(nonce, received)`` pairs read back after a restart; returns how many
        were new (see :func:`recent_nonces`).

        ``read_at`` is the ``now`` they were read for: the nonces received before
        ``read_at - 2 * window`` were left out, and such a request was sent at or before
        ``read_at - window``, so a request sent then or earlier is refused from now on, as
        if the guard had forgotten them itself (a clock read too far ahead at the restart
        and set right afterwards must not reopen them).
        """
        if read_at is not None:
            self._floor = max(self._floor, read_at - self.window)
        added = 0
        for nonce, received in sorted(items, key=lambda item: item[1]):
            if nonce not in self._held:
                self._remember(nonce, received)
                added += 1
        return added

    def _remember(self, nonce: str, received: float) -> None:
        self._latest = max(self._latest, received)
        self._held.add(nonce)
        self._queue.append((self._latest + 2 * self.window, nonce))

    def _forget(self, now: float) -> None:
        queue = self._queue
        while queue and queue[0][0] < now:
            until, nonce = queue.popleft()
            self._held.discard(nonce)
            # arrived at or before until - 2 * window, so sent at or before until - window
            self._floor = until - self.window


def recent_nonces(conn: sqlite3.Connection, window: float, now: float) -> list[tuple[str, float]]:
    """``(nonce, received epoch)`` of the requests an event log received in the last
    ``2 * window`` seconds before ``now``, oldest first.

    Reads both log versions: ``request.received`` events carry ``data.nonce`` (v1); events
    whose data carry the caller's signed header (v2 ``request.accepted``) hold the nonce in
    that header. A header that cannot be read raises :class:`CanonicalError` (the log is
    damaged; starting without its nonces would reopen the window to replays).
    """
    horizon = _text(now - 2 * window).encode()
    # Times in a log never go backwards: read from the newest event back to the horizon.
    rows = conn.execute("SELECT seq, type, body FROM events ORDER BY seq DESC")
    out: list[tuple[str, float]] = []
    for seq, kind, body in rows:
        body = bytes(body)
        tail = _TAIL_TIME.search(body)
        if tail is None:
            raise CanonicalError(f"event {seq}: cannot read the time of the event")
        if tail[1] < horizon:
            break
        if kind not in _NONCE_TYPES:
            continue
        try:
            data = parse_canonical(body)["data"]
            if "nonce" in data:
                nonce = data["nonce"]
            elif "header" in data:
                nonce = parse_canonical(b64d(data["header"]))["nonce"]
            else:
                continue
            if not isinstance(nonce, str):
                raise TypeError("the nonce is not a string")
            out.append((nonce, parse_time(tail[1].decode()).timestamp()))
        except (CanonicalError, KeyError, TypeError, ValueError) as exc:
            raise CanonicalError(f"event {seq}: cannot read the request's nonce: {exc}") from exc
    out.reverse()
    return out
