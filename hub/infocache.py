"""Module infos kept in the key store home, so ``fedhub call --queue`` can send a call while
the module's node is down (the site's call stream keeps it until a node takes it).

Every successful info request of the CLI (``fedhub call``, ``fedhub ls SITE.MODULE``)
writes the answer to ``<home>/cache/info/<site>.<module>.json``. A kept answer is trusted
no more than a fresh one: :meth:`hub.client.Client.remember_info` verifies the node's key
record in it against the pinned site key again.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

__all__ = ["keep_info", "kept_info"]


def _path(home: Path, site: str, module: str) -> Path:
    return home / "cache" / "info" / f"{site}.{module}.json"


#: What this process last found or wrote in each kept file: the resident agent keeps the
#: same answer before every call, and comparing in memory spares reading the file.
_kept: dict[Path, bytes] = {}


def keep_info(home: Path, site: str, module: str, data: bytes) -> None:
    """Keep a module's info answer (replacing an older one). An answer equal to the kept
    one only has its time renewed: that is cheaper than a write and a rename, which every
    ``fedhub call`` would pay."""
    path = _path(home, site, module)
    try:
        if (_kept.get(path) or path.read_bytes()) == data:
            os.utime(path)
            _kept[path] = data
            return
    except OSError:
        pass  # none kept yet (or unreadable): write it
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    _kept[path] = data


def kept_info(home: Path, site: str, module: str) -> tuple[bytes, dt.datetime] | None:
    """The kept info answer of a module and when it was kept; None when there is none."""
    path = _path(home, site, module)
    try:
        data = path.read_bytes()
        mtime = path.stat().st_mtime
    except OSError:
        return None
    return data, dt.datetime.fromtimestamp(mtime, dt.UTC)
