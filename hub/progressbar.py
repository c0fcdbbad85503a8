"""A call's progress as a tqdm bar: a notebook widget in Jupyter, a text bar elsewhere.

Used by :meth:`hub.sync_client.SyncClient.call` (``progress_bar=``; on by default in
Jupyter). tqdm is imported only when a bar is shown.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hub.call_handle import ProgressCallback

__all__ = ["CallProgressBar", "in_notebook"]

#: Steps of the bar: progress fractions are shown in thousandths.
_STEPS = 1000


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's ZMQ shell)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class CallProgressBar:
    """A tqdm bar for one call, fed by the call's progress reports."""

    def __init__(self, address: str, **options: Any) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=_STEPS, desc=address, unit="‰", leave=True, **options)
        self._shown = 0

    def update(self, fraction: float | None, message: str) -> None:
        """Take a progress report (``fraction`` None: running, amount unknown)."""
        if fraction is not None:
            step = max(0, min(_STEPS, round(fraction * _STEPS)))
            if step > self._shown:
                self._bar.update(step - self._shown)
                self._shown = step
        if message:
            self._bar.set_postfix_str(message, refresh=True)

    def chain(self, other: ProgressCallback | None) -> ProgressCallback:
        """A progress callback that updates this bar, then calls ``other``."""

        def report(fraction: float | None, message: str) -> None:
            self.update(fraction, message)
            if other is not None:
                other(fraction, message)

        return report

    def close(self) -> None:
        """Finish the bar (harmless twice)."""
        self._bar.close()
