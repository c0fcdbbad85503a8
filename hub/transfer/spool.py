"""Spool files of transfers being received, and the sweep that removes orphaned ones.

A receiver writes a payload to ``.<name>.fh-partial`` next to its destination and renames
it into place only once it is whole and verified (:mod:`hub.transfer.stream`). A receiver
that fails removes its spool file itself; one whose process died leaves it behind, and
:func:`sweep_partials` (run at start and now and then by whoever owns the folder) removes
those older than a limit and logs each removal.
"""

from __future__ import annotations

import time
from pathlib import Path

import structlog

__all__ = ["PARTIAL_SUFFIX", "partial_path", "sweep_partials"]

log = structlog.get_logger(__name__)

#: Suffix of every spool file of a transfer that is not (yet) whole.
PARTIAL_SUFFIX = ".fh-partial"


def partial_path(dest: Path) -> Path:
    """The spool file for ``dest``: ``.<name>.fh-partial`` in the same folder (same disk)."""
    return dest.with_name(f".{dest.name}{PARTIAL_SUFFIX}")


def sweep_partials(folder: Path | str, older_than: float) -> list[Path]:
    """Remove spool files in ``folder`` not written to for ``older_than`` seconds.

    Returns what was removed; logs ``transfer.swept`` for each (path and size). Choose
    ``older_than`` above the receivers' ``idle_timeout``: a live receiver writes at least
    that often, so only orphans are removed.
    """
    removed: list[Path] = []
    limit = time.time() - older_than
    for path in sorted(Path(folder).glob(f".*{PARTIAL_SUFFIX}")):
        try:
            stat = path.stat()
            if stat.st_mtime > limit:
                continue
            path.unlink()
        except FileNotFoundError:
            continue
        log.info("transfer.swept", path=str(path), bytes=stat.st_size)
        removed.append(path)
    return removed
