"""Knobs, progress reports and results of a bulk transfer (see :mod:`hub.transfer.stream`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hub.transfer.sealing import Header

__all__ = [
    "DEFAULT_ACK_EVERY",
    "DEFAULT_WINDOW",
    "ProgressCallback",
    "ProgressReporter",
    "Received",
    "TransferOptions",
    "TransferProgress",
    "TransferStats",
]

#: Sealed bytes a sender may have unacked per transfer.
DEFAULT_WINDOW = 4 * 1024 * 1024
#: A receiver acks after writing this many sealed bytes.
DEFAULT_ACK_EVERY = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TransferOptions:
    """Knobs of one transfer; both sides take the same (see docs/deploy.md)."""

    #: Sealed bytes in flight (unacked) at most; the smaller of both sides' values wins.
    window: int = DEFAULT_WINDOW
    #: The receiver acks after writing this many sealed bytes (and at the end).
    ack_every: int = DEFAULT_ACK_EVERY
    #: Seconds without an ack before the sender sends the unacked chunks again.
    retransmit_after: float = 2.0
    #: Rounds of sending again without any progress before the sender gives up.
    max_retries: int = 8
    #: Seconds a receiver waits for the next message before it gives up.
    idle_timeout: float = 30.0
    #: Shortest time between two progress callbacks (the last one always comes).
    progress_interval: float = 0.25
    #: Seconds a sender keeps offering the transfer before a receiver answers.
    open_timeout: float = 30.0
    #: Seconds a receiver keeps answering a sender that missed its "done".
    linger: float = 5.0

    def __post_init__(self) -> None:
        if self.window < 1 or self.ack_every < 1 or self.ack_every > self.window:
            raise ValueError("need 1 <= ack_every <= window")
        if min(self.retransmit_after, self.idle_timeout, self.progress_interval) <= 0:
            raise ValueError("times must be positive")


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """How far a transfer is: plaintext bytes acked (sender) or written (receiver)."""

    transfer: str
    done: int
    total: int
    elapsed: float

    @property
    def rate(self) -> float:
        """Bytes per second since the transfer started."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def fraction(self) -> float:
        """``done / total`` (1.0 for an empty payload)."""
        return 1.0 if self.total == 0 else self.done / self.total


ProgressCallback = Callable[[TransferProgress], None]


@dataclass(frozen=True, slots=True)
class TransferStats:
    """What a finished transfer moved."""

    transfer: str
    plain_bytes: int
    sealed_bytes: int
    chunks: int
    resent_chunks: int
    seconds: float
    #: Most sealed bytes sent and not yet acked at any time (sender only; 0 at a receiver).
    peak_in_flight: int = 0

    @property
    def rate(self) -> float:
        """Plaintext bytes per second."""
        return self.plain_bytes / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Received:
    """A payload that arrived whole and verified: where it is and what it was."""

    path: Path
    header: Header
    stats: TransferStats


class ProgressReporter:
    """Rate-limited progress callbacks for one side of a transfer."""

    def __init__(
        self, callback: ProgressCallback | None, transfer: str, total: int, interval: float
    ) -> None:
        self._callback = callback
        self._transfer = transfer
        self._total = total
        self._interval = interval
        self.started = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if self._callback is None or (not final and now - self._last < self._interval):
            return
        self._last = now
        self._callback(TransferProgress(self._transfer, done, self._total, now - self.started))
