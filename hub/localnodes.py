"""Nodes running on this machine with an embedded nats-server, found through the key store.

A node that starts its own nats-server (no ``[nats] url``) on a random port writes one small
file into its key store home, ``<home>/run/<node>.json`` (``{"identity", "url", "pid"}``),
and removes it when it stops. The ``fedhub`` CLI and :func:`hub.sync_client.connect` look
there when no URL is given, so a caller on the same machine, with the same ``FEDHUB_HOME``,
reaches the node without copying a URL. A file whose server process is gone is ignored.

Only the URL is taken from the file: who answers on it is verified as always (node keys
vouched for by a pinned site key).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from hub.errors import ConfigError
from hub.keys import default_home

__all__ = ["LocalNode", "local_nodes", "local_url", "register", "unregister"]


@dataclass(frozen=True)
class LocalNode:
    """A node on this machine whose embedded nats-server is running."""

    identity: str
    url: str
    pid: int


def _run_dir(home: Path) -> Path:
    return home / "run"


def register(home: Path | None, identity: str, url: str, pid: int) -> Path:
    """Write where ``identity``'s embedded server listens; returns the file written.

    ``home`` is the node's key store home (None: the default, as for :class:`hub.keys.KeyStore`).
    """
    folder = _run_dir(home if home is not None else default_home())
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{quote(identity, safe='')}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"identity": identity, "url": url, "pid": pid}) + "\n")
    tmp.replace(path)
    return path


def unregister(path: Path) -> None:
    """Remove a file :func:`register` wrote (harmless when it is gone)."""
    path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, but not ours to use
        return False
    return True


def local_nodes(home: Path) -> list[LocalNode]:
    """The nodes registered in ``home`` whose server process still runs, by identity."""
    found = []
    for path in sorted(_run_dir(home).glob("*.json")):
        try:
            data = json.loads(path.read_text())
            node = LocalNode(str(data["identity"]), str(data["url"]), int(data["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(node.pid):
            found.append(node)
    return found


def local_url(home: Path) -> str | None:
    """The URL of the one local node registered in ``home``; None when there is none.

    Several running nodes are ambiguous: a :class:`~hub.errors.ConfigError` names them.
    """
    nodes = local_nodes(home)
    urls = sorted({node.url for node in nodes})
    if len(urls) > 1:
        shown = ", ".join(f"{node.identity} at {node.url}" for node in nodes)
        raise ConfigError(
            f"{len(urls)} local nodes run with their own servers ({shown}); which one?",
            hint="pass --url or set FEDHUB_URL",
        )
    return urls[0] if urls else None
