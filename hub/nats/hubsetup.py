"""The hub's own streams: written as files by the generator, created in one set-up step.

The hub keeps two kinds of streams of its own, both sourcing the sites' streams:

* ``FH_EVENTS_<SITE>``: its copy of each site's event stream (the audit reads it);
* ``FH_DIRECTORY``: the federation-wide directory, sourcing every site's ``FH_DIR``.

:func:`write_hub_streams` (run by ``fedhub federation init`` and ``add-site``) writes each
stream's config to ``hub/streams/<NAME>.json``, the JSON ``nats stream add --config``
takes. :func:`setup_hub` creates or updates every stream from those files: what
``fedhub federation setup-hub`` runs once the hub servers are up (again after a site
joins), and what :class:`~hub.nats.federation.LocalFederation` runs when it starts.
A source whose site stream does not exist yet fills once it does (nats-server retries).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection
from pathlib import Path

import structlog
from nats.js import JetStreamContext, api
from nats.js.errors import APIError

from hub.errors import ConfigError, TransportError
from hub.nats.dirstreams import hub_directory_config
from hub.nats.streams import ensure_stream, hub_events_config
from hub.nats.topology import Topology

__all__ = ["hub_stream_configs", "read_hub_streams", "setup_hub", "write_hub_streams"]

log = structlog.get_logger(__name__)

#: JetStream's "no suitable peers for placement" (a cluster still gathering its servers).
_NO_PEERS = 10005


def hub_stream_configs(topology: Topology) -> list[api.StreamConfig]:
    """Every stream the hub keeps for ``topology``: an event copy per site, the directory.

    Replicated like the hub's first cluster (three replicas on a hub of three servers).
    """
    replicas = topology.hubs[0].replicas
    configs = [hub_events_config(site, replicas=replicas) for site in topology.names]
    return [*configs, hub_directory_config(topology.names, replicas=replicas)]


def write_hub_streams(folder: Path, topology: Topology) -> list[Path]:
    """Write each of :func:`hub_stream_configs` to ``folder/<NAME>.json``; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for config in hub_stream_configs(topology):
        path = folder / f"{config.name}.json"
        path.write_text(json.dumps(config.as_dict(), indent=2) + "\n")
        paths.append(path)
    return paths


def read_hub_streams(folder: Path) -> list[api.StreamConfig]:
    """The stream configs in ``folder`` (``*.json``, by name); ConfigError if none or one
    is not a stream config."""
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise ConfigError(
            f"no stream configs in {folder}",
            hint="give the folder `fedhub federation init` wrote (or its hub/ folder)",
        )
    configs = []
    for path in paths:
        try:
            data = json.loads(path.read_text())
            config = api.StreamConfig.from_response(data)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{path} is not a stream config: {exc}") from exc
        if not config.name:
            raise ConfigError(f"{path} is not a stream config: it names no stream")
        configs.append(config)
    return configs


async def setup_hub(
    hub_js: JetStreamContext,
    folder: Path,
    *,
    names: Collection[str] | None = None,
    patience: float = 30.0,
) -> list[api.StreamInfo]:
    """Create or update every stream whose config is in ``folder`` (``hub/streams``), or
    only those in ``names``.

    ``hub_js`` talks to the hub's JetStream (domain ``hub``) as the hub's admin. Running
    it again changes nothing, or adds the sources of sites that joined since. A hub
    cluster that has just started may not know all its servers yet ("no suitable peers
    for placement" of three replicas) or be electing a leader: that is tried again for
    up to ``patience`` seconds.
    """
    configs = [c for c in read_hub_streams(folder) if names is None or c.name in names]
    return [await _ensure_patiently(hub_js, config, patience) for config in configs]


async def _ensure_patiently(
    hub_js: JetStreamContext, config: api.StreamConfig, patience: float
) -> api.StreamInfo:
    until = time.monotonic() + patience
    while True:
        try:
            return await ensure_stream(hub_js, config)
        except (ConfigError, TransportError) as exc:
            cause = exc.__cause__
            placing = isinstance(cause, APIError) and cause.err_code == _NO_PEERS
            if not (placing or isinstance(exc, TransportError)) or time.monotonic() > until:
                raise
            log.debug("hub.stream_retried", stream=config.name, reason=exc.message)
        await asyncio.sleep(0.5)
