"""The one-line progress bar of ``fedhub call`` on a terminal (a call's own progress and
its transfers' bytes and rate), redrawn in place; the Python API's bar for notebooks and
scripts is :mod:`hub.progressbar`."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import time
from typing import TextIO

from hub.transfer import TransferProgress

__all__ = ["ProgressBar", "tick"]


class ProgressBar:
    """A one-line progress bar redrawn in place (``\\r``) on a terminal stream."""

    _SPIN = "|/-\\"

    def __init__(self, stream: TextIO, label: str, *, width: int | None = None) -> None:
        self.stream = stream
        self.label = label
        self.width = width
        self.fraction: float | None = None
        self.message = "waiting"
        self.started = time.monotonic()
        self._spin = itertools.cycle(self._SPIN)
        self._drawn = False

    def update(self, fraction: float | None, message: str) -> None:
        """Take a progress report (the client's ``on_progress``) and redraw."""
        self.fraction = fraction
        self.message = message or ("running" if fraction is None else "")
        self.draw()

    def transfer(self, direction: str, progress: TransferProgress) -> None:
        """Take a transfer's progress (the client's ``on_transfer``) and redraw."""
        self.fraction = progress.fraction
        mb = 1e6
        self.message = (
            f"{direction} {progress.done / mb:,.0f}/{progress.total / mb:,.0f} MB "
            f"{progress.rate / mb:,.1f} MB/s"
        )
        self.draw()

    def line(self) -> str:
        """The text of the bar as it would be drawn now."""
        columns = self.width or shutil.get_terminal_size((80, 24)).columns
        elapsed = f"{time.monotonic() - self.started:5.1f}s"
        if self.fraction is None:
            gauge = f"[{next(self._spin)}]"
        else:
            cells = 20
            filled = round(self.fraction * cells)
            gauge = f"[{'#' * filled}{'.' * (cells - filled)}] {self.fraction:4.0%}"
        text = " ".join(part for part in (self.label, gauge, elapsed, self.message) if part)
        text = " ".join(text.split())  # a message must not break the line
        return text[: max(10, columns - 1)]

    def draw(self) -> None:
        """Redraw the bar in place."""
        self.stream.write("\r\x1b[K" + self.line())
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the bar (harmless twice)."""
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._drawn = False


async def tick(bar: ProgressBar, every: float = 0.2) -> None:
    """Redraw ``bar`` every ``every`` seconds (its spinner and elapsed time) until cancelled."""
    while True:
        bar.draw()
        await asyncio.sleep(every)
