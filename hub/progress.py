"""Progress reporting for backend functions — the one fedhub name a module author may use.

A function that wants to report progress declares a parameter annotated with
:class:`Progress` (any name; ``Progress | None = None`` keeps it callable without fedhub)::

    from hub.progress import Progress

    def slow_mean(da: xr.DataArray, progress: Progress | None = None) -> float:
        for step in range(10):
            ...
            if progress is not None:
                if progress.cancelled:
                    break
                progress.report((step + 1) / 10, f"step {step + 1}")

The runner detects the parameter by its annotation (not by its name), hides it from the
function's argument schema and passes a reporter when it calls the function. Reports are
coalesced so that at most about 20 per second reach the caller; the first report and the
last one are always delivered, in order. To run such a function locally, pass ``None`` or
``Progress(print_callback)``.
"""

from __future__ import annotations

import math
import numbers
import threading
import time
from collections.abc import Callable

__all__ = ["MAX_MESSAGE_LENGTH", "Progress", "ProgressSink"]

#: Receives ``(fraction, message)``; called from the thread that reports.
ProgressSink = Callable[[float | None, str], None]

#: Longer messages are cut to this many characters.
MAX_MESSAGE_LENGTH = 1000

_Report = tuple[float | None, str]


class Progress:
    """Reporter handed to a running function; thread-safe.

    ``sink`` receives the delivered reports (``None`` drops them). ``stop_when``, if given,
    is asked by :attr:`cancelled` (a deadline or a cancel signal that no other thread can
    set while the function holds the event loop). ``min_interval`` is the
    shortest time between two delivered reports; reports arriving faster are coalesced (the
    newest one wins) and the held report goes out with the next report after the interval or
    when the runner calls :meth:`flush` after the function returns.
    """

    def __init__(
        self,
        sink: ProgressSink | None = None,
        *,
        min_interval: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        stop_when: Callable[[], bool] | None = None,
    ) -> None:
        self._sink = sink
        self._stop_when = stop_when
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._cancelled = threading.Event()
        self._last_sent: float | None = None
        self._pending: _Report | None = None

    def report(self, fraction: float | None = None, message: str = "") -> None:
        """Report how far the work is (``0.0`` to ``1.0``, or ``None`` if unknown).

        Fractions outside ``[0, 1]`` are clamped; NaN raises :class:`ValueError`.
        """
        value = _check_fraction(fraction)
        text = str(message)[:MAX_MESSAGE_LENGTH]
        with self._lock:
            now = self._clock()
            if self._last_sent is None or now - self._last_sent >= self._min_interval:
                self._pending = None
                self._deliver((value, text), now)
            else:
                self._pending = (value, text)

    @property
    def cancelled(self) -> bool:
        """True once the call timed out or was cancelled: stop early if you can."""
        if self._cancelled.is_set():
            return True
        if self._stop_when is not None and self._stop_when():
            # asked on the function's own thread: an inline call blocks the loop, so no
            # timer could have told it; the condition is checked here instead
            self._cancelled.set()
            return True
        return False

    def cancel(self) -> None:
        """Mark the call as cancelled (called by the runner, not by functions)."""
        self._cancelled.set()

    def flush(self) -> None:
        """Deliver a report held back by rate limiting (called by the runner)."""
        with self._lock:
            if self._pending is not None:
                report, self._pending = self._pending, None
                self._deliver(report, self._clock())

    def _deliver(self, report: _Report, now: float) -> None:
        self._last_sent = now
        if self._sink is not None:
            self._sink(*report)


def _check_fraction(fraction: float | None) -> float | None:
    if fraction is None:
        return None
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise TypeError(
            f"progress fraction must be a number or None, not {type(fraction).__name__}"
        )
    value = float(fraction)
    if math.isnan(value):
        raise ValueError("progress fraction must not be NaN")
    return min(1.0, max(0.0, value))
