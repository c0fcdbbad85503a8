"""The NATS layer: server configs, server processes, JetStream layout, a local federation.

One module per job, their public names re-exported here:

- :mod:`hub.nats.config`: nats-server config text for the hub and the site leaves, and the
  accounts that keep sites apart (:func:`hub_config`, :func:`leaf_config`, :class:`LeafUser`);
- :mod:`hub.nats.server`: a real ``nats-server`` process (:class:`NatsServer`);
- :mod:`hub.nats.connection`: connecting and waiting for readiness (:func:`connect`,
  :func:`wait_jetstream_ready`, :func:`wait_message_route`);
- :mod:`hub.nats.streams`: a site's streams, results bucket and calls consumer
  (:func:`ensure_site_streams`, :func:`ensure_calls_consumer`, :func:`source_site_events`);
- :mod:`hub.nats.objects`: results in a JetStream Object Store in one round trip
  (:func:`put_object`, :func:`get_object`, :func:`wait_acks`), and payloads of any size in
  bounded memory (:func:`put_object_stream`, :func:`iter_object`, :func:`get_object_to_file`);
- :mod:`hub.nats.topology`, :mod:`hub.nats.generate`, :mod:`hub.nats.tlsca`: one
  ``federation.toml`` (:func:`load_topology`) and every party's configs, NKeys and TLS
  written from it (:func:`generate`, :func:`role_permissions`), as ``fedhub federation
  init`` does;
- :mod:`hub.nats.hubsetup`, :mod:`hub.nats.dirstreams`: the hub's own streams (event
  copies, the federation-wide directory) from the generated files (:func:`setup_hub`, as
  ``fedhub federation setup-hub`` does) and the directory's streams at each site;
- :mod:`hub.nats.federation`: a hub and site leaves on one machine for tests and demos
  (:class:`LocalFederation`), run from generated configs.

See docs/topology.md for the subjects, streams, accounts and how a site joins a hub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hub.nats.config import (
        DEFAULT_MAX_PAYLOAD,
        FEDERATION_ACCOUNT,
        HUB_DOMAIN,
        LEAF_LOCAL_SUBJECTS,
        LeafUser,
        events_deliver_prefix,
        hub_config,
        js_api_prefix,
        leaf_config,
        server_config,
        site_account,
    )
    from hub.nats.connection import (
        CA_ENV,
        CREDS_ENV,
        auth_options,
        connect,
        wait_jetstream_ready,
        wait_message_route,
    )
    from hub.nats.federation import DEFAULT_SITES, LocalFederation, start_local_federation
    from hub.nats.generate import generate, role_permissions
    from hub.nats.hubsetup import setup_hub
    from hub.nats.objects import (
        BULK_CHUNK_SIZE,
        CHUNK_SIZE,
        get_object,
        get_object_to_file,
        iter_object,
        put_object,
        put_object_stream,
        sweep_orphan_chunks,
        wait_acks,
    )
    from hub.nats.server import HUB_LOCAL_USER, NatsServer, find_nats_server
    from hub.nats.streams import (
        DEFAULT_MAX_MSG_SIZE,
        calls_stream_config,
        ensure_calls_consumer,
        ensure_site_streams,
        events_stream_config,
        hub_events_config,
        source_site_events,
    )
    from hub.nats.topology import Topology, load_topology

#: Public name → the module that defines it. Imported on first use: a client (which needs
#: only the connection and object helpers) must not pay for config generation and TLS.
from hub import lazy_attributes

_LAZY = {
    "BULK_CHUNK_SIZE": "hub.nats.objects",
    "CA_ENV": "hub.nats.connection",
    "CHUNK_SIZE": "hub.nats.objects",
    "CREDS_ENV": "hub.nats.connection",
    "DEFAULT_MAX_MSG_SIZE": "hub.nats.streams",
    "DEFAULT_MAX_PAYLOAD": "hub.nats.config",
    "DEFAULT_SITES": "hub.nats.federation",
    "FEDERATION_ACCOUNT": "hub.nats.config",
    "HUB_DOMAIN": "hub.nats.config",
    "HUB_LOCAL_USER": "hub.nats.server",
    "LEAF_LOCAL_SUBJECTS": "hub.nats.config",
    "LeafUser": "hub.nats.config",
    "LocalFederation": "hub.nats.federation",
    "NatsServer": "hub.nats.server",
    "Topology": "hub.nats.topology",
    "auth_options": "hub.nats.connection",
    "calls_stream_config": "hub.nats.streams",
    "connect": "hub.nats.connection",
    "ensure_calls_consumer": "hub.nats.streams",
    "ensure_site_streams": "hub.nats.streams",
    "events_deliver_prefix": "hub.nats.config",
    "events_stream_config": "hub.nats.streams",
    "find_nats_server": "hub.nats.server",
    "generate": "hub.nats.generate",
    "get_object": "hub.nats.objects",
    "get_object_to_file": "hub.nats.objects",
    "hub_config": "hub.nats.config",
    "hub_events_config": "hub.nats.streams",
    "iter_object": "hub.nats.objects",
    "js_api_prefix": "hub.nats.config",
    "leaf_config": "hub.nats.config",
    "load_topology": "hub.nats.topology",
    "put_object": "hub.nats.objects",
    "put_object_stream": "hub.nats.objects",
    "role_permissions": "hub.nats.generate",
    "server_config": "hub.nats.config",
    "setup_hub": "hub.nats.hubsetup",
    "site_account": "hub.nats.config",
    "source_site_events": "hub.nats.streams",
    "start_local_federation": "hub.nats.federation",
    "sweep_orphan_chunks": "hub.nats.objects",
    "wait_acks": "hub.nats.objects",
    "wait_jetstream_ready": "hub.nats.connection",
    "wait_message_route": "hub.nats.connection",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "BULK_CHUNK_SIZE",
    "CA_ENV",
    "CHUNK_SIZE",
    "CREDS_ENV",
    "DEFAULT_MAX_MSG_SIZE",
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_SITES",
    "FEDERATION_ACCOUNT",
    "HUB_DOMAIN",
    "HUB_LOCAL_USER",
    "LEAF_LOCAL_SUBJECTS",
    "LeafUser",
    "LocalFederation",
    "NatsServer",
    "Topology",
    "auth_options",
    "calls_stream_config",
    "connect",
    "ensure_calls_consumer",
    "ensure_site_streams",
    "events_deliver_prefix",
    "events_stream_config",
    "find_nats_server",
    "generate",
    "get_object",
    "get_object_to_file",
    "hub_config",
    "hub_events_config",
    "iter_object",
    "js_api_prefix",
    "leaf_config",
    "load_topology",
    "put_object",
    "put_object_stream",
    "role_permissions",
    "server_config",
    "setup_hub",
    "site_account",
    "source_site_events",
    "start_local_federation",
    "sweep_orphan_chunks",
    "wait_acks",
    "wait_jetstream_ready",
    "wait_message_route",
]
