"""JetStream layout of the federation-wide directory: three streams, two sourcing hops.

* ``FH_DIR`` in each site's domain: the signed directory records the site publishes
  (subjects ``fh.dir.<site>.>``), kept forever, never deleted or purged;
* ``FH_DIRECTORY`` in the hub's domain: sources every site's ``FH_DIR`` (replicated like
  the hub's other streams: ``replicas=3`` on a hub of three servers);
* ``FH_DIRECTORY`` in each site's domain: sources the hub's, so a node reads the whole
  federation's directory from its own server, also while the hub is away.

Records carry their own signatures: a stream only moves them, a node decides what counts
(:mod:`hub.directory`). See docs/topology.md ("The federation-wide directory").
"""

from __future__ import annotations

from collections.abc import Sequence

from nats.js import JetStreamContext, api

from hub.nats.config import (
    DIRECTORY_API,
    directory_copy_prefix,
    directory_feed_prefix,
    js_api_prefix,
)
from hub.nats.streams import ensure_stream
from hub.subjects import DIRECTORY_OUT_STREAM, DIRECTORY_STREAM, directory_filter, validate_site

__all__ = [
    "ensure_hub_directory",
    "ensure_site_directory",
    "hub_directory_config",
    "site_directory_configs",
]

#: Largest directory record message (a signed record is well under 4 KiB).
MAX_RECORD = 64 * 1024


def _kept(name: str, description: str, replicas: int) -> api.StreamConfig:
    return api.StreamConfig(
        name=name,
        description=description,
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        max_msg_size=MAX_RECORD,
        discard=api.DiscardPolicy.NEW,
        deny_delete=True,
        deny_purge=True,
        # a subject names one record (fh.dir.<site>.<kind>.<token>): publishing it again
        # replaces it with the same bytes, so re-publishing at every start costs nothing
        max_msgs_per_subject=1,
    )


def site_directory_configs(
    site: str, *, replicas: int = 1
) -> tuple[api.StreamConfig, api.StreamConfig]:
    """Configs of ``site``'s ``FH_DIR`` (its own records) and of its copy of the hub's
    ``FH_DIRECTORY`` (sourced through ``fh.dirapi``, the hub's API as its account exports
    it, with deliveries on ``fh.dirfeed.<site>``)."""
    site = validate_site(site)
    out = _kept(DIRECTORY_OUT_STREAM, f"fedhub directory records of site {site}", replicas)
    out.subjects = [directory_filter(site)]
    out.duplicate_window = 120.0
    copy = _kept(DIRECTORY_STREAM, f"site {site}'s copy of the federation directory", replicas)
    copy.sources = [
        api.StreamSource(
            name=DIRECTORY_STREAM,
            external=api.ExternalStream(api=DIRECTORY_API, deliver=directory_feed_prefix(site)),
        )
    ]
    return out, copy


async def ensure_site_directory(js: JetStreamContext, site: str, *, replicas: int = 1) -> None:
    """Create (or update) ``site``'s ``FH_DIR`` and its copy of the hub's ``FH_DIRECTORY``.

    ``js`` talks to the site's own JetStream. The copy fills once the hub's stream exists:
    nats-server tries a source whose stream is missing again about every 10 s, so records
    flow at once only when the hub's stream exists first (and the hub's source of
    ``FH_DIR`` the same way: see :class:`~hub.nats.federation.LocalFederation`).
    """
    for config in site_directory_configs(site, replicas=replicas):
        await ensure_stream(js, config)


def hub_directory_config(sites: Sequence[str], *, replicas: int = 1) -> api.StreamConfig:
    """Config of the hub's ``FH_DIRECTORY``: sources every site's ``FH_DIR`` (what
    ``fedhub federation init`` writes to ``hub/streams/FH_DIRECTORY.json``)."""
    config = _kept(DIRECTORY_STREAM, "fedhub federation-wide directory", replicas)
    config.sources = [
        api.StreamSource(
            name=DIRECTORY_OUT_STREAM,
            external=api.ExternalStream(
                api=js_api_prefix(site), deliver=directory_copy_prefix(site)
            ),
        )
        for site in (validate_site(s) for s in sites)
    ]
    return config


async def ensure_hub_directory(
    hub_js: JetStreamContext, sites: Sequence[str], *, replicas: int = 1
) -> api.StreamInfo:
    """Create (or update, when sites join) the hub's ``FH_DIRECTORY`` sourcing every
    site's ``FH_DIR``. ``hub_js`` talks to the hub's JetStream (domain ``hub``);
    ``replicas=3`` on a hub cluster of three."""
    return await ensure_stream(hub_js, hub_directory_config(sites, replicas=replicas))
