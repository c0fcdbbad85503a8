"""JetStream layout of a site: its streams, its results bucket and its calls consumer.

Creates, idempotently, a site's ``FH_CALLS`` and ``FH_EVENTS`` streams and ``fh-results``
bucket (:func:`ensure_site_streams`), the durable pull consumer its node workers share
(:func:`ensure_calls_consumer`), and the hub's copy of a site's event log
(:func:`source_site_events`). See docs/topology.md for what each holds.
"""

from __future__ import annotations

from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext, api

from hub.errors import ConfigError, TransportError
from hub.nats.config import DEFAULT_MAX_PAYLOAD, events_deliver_prefix, js_api_prefix
from hub.subjects import (
    CALLS_CONSUMER,
    CALLS_STREAM,
    EVENTS_STREAM,
    RESULTS_BUCKET,
    calls_filter,
    events_filter,
    hub_events_stream,
    validate_site,
)

__all__ = [
    "DEFAULT_MAX_MSG_SIZE",
    "calls_stream_config",
    "ensure_calls_consumer",
    "ensure_site_streams",
    "events_stream_config",
    "hub_events_config",
    "source_site_events",
]

log = structlog.get_logger(__name__)

#: Largest message FH_CALLS and FH_EVENTS store; bigger payloads go to the Object Store.
DEFAULT_MAX_MSG_SIZE = DEFAULT_MAX_PAYLOAD


async def _ensure_stream(js: JetStreamContext, config: api.StreamConfig) -> api.StreamInfo:
    """Create ``config``'s stream, or update it if it exists with a different config."""
    try:
        return await js.add_stream(config)
    except nats.js.errors.BadRequestError as exc:
        # 10058: stream name already in use with a different configuration.
        if exc.err_code != 10058:
            raise ConfigError(f"cannot create stream {config.name}: {exc.description}") from exc
    except nats.js.errors.Error as exc:
        raise TransportError(f"cannot create stream {config.name}: {exc}") from exc
    except nats.errors.Error as exc:
        raise TransportError(f"cannot create stream {config.name}: {exc}") from exc
    try:
        existing = await js.stream_info(str(config.name))
    except nats.errors.Error as exc:
        raise TransportError(f"cannot read stream {config.name}: {exc}") from exc
    if sorted(existing.config.subjects or []) != sorted(config.subjects or []):
        raise ConfigError(
            f"stream {config.name} on this server holds subjects "
            f"{existing.config.subjects}, not {config.subjects}",
            hint="each site needs its own JetStream domain (server or leaf node)",
        )
    try:
        info = await js.update_stream(config)
    except nats.js.errors.APIError as exc:
        raise ConfigError(
            f"stream {config.name} exists with a config that cannot be updated: {exc.description}",
            hint="remove or migrate the stream by hand",
        ) from exc
    log.info("stream.updated", stream=config.name)
    return info


def calls_stream_config(
    site: str,
    *,
    replicas: int = 1,
    max_msg_size: int = DEFAULT_MAX_MSG_SIZE,
    duplicate_window: float = 120.0,
) -> api.StreamConfig:
    """Config of ``FH_CALLS``: the site's calls, a file-backed work queue with dedup."""
    return api.StreamConfig(
        name=CALLS_STREAM,
        description=f"fedhub calls to site {site}",
        subjects=[calls_filter(site)],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        max_msg_size=max_msg_size,
        duplicate_window=duplicate_window,
        discard=api.DiscardPolicy.NEW,
    )


def events_stream_config(
    site: str,
    *,
    replicas: int = 1,
    max_msg_size: int = DEFAULT_MAX_MSG_SIZE,
    duplicate_window: float = 120.0,
) -> api.StreamConfig:
    """Config of ``FH_EVENTS``: the site's event logs, kept forever, never deleted."""
    return api.StreamConfig(
        name=EVENTS_STREAM,
        description=f"fedhub event logs of site {site}",
        subjects=[events_filter(site)],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        max_msg_size=max_msg_size,
        duplicate_window=duplicate_window,
        # Refuse new events when a limit is hit rather than dropping old ones.
        discard=api.DiscardPolicy.NEW,
        deny_delete=True,
        deny_purge=True,
    )


async def ensure_site_streams(
    js: JetStreamContext,
    site: str,
    *,
    replicas: int = 1,
    max_msg_size: int = DEFAULT_MAX_MSG_SIZE,
    duplicate_window: float = 120.0,
) -> None:
    """Create (or update) ``FH_CALLS``, ``FH_EVENTS`` and the ``fh-results`` bucket of ``site``.

    ``js`` must talk to the site's own JetStream (its domain). Idempotent: an existing
    stream with the same config is left alone; one with a different but updatable config is
    updated; a stream holding another site's subjects, or a non-updatable difference (e.g.
    retention), raises :class:`ConfigError`.
    ``duplicate_window`` (seconds) is how long a ``Nats-Msg-Id`` is remembered for dedup.
    """
    site = validate_site(site)
    opts: dict[str, Any] = {
        "replicas": replicas,
        "max_msg_size": max_msg_size,
        "duplicate_window": duplicate_window,
    }
    await _ensure_stream(js, calls_stream_config(site, **opts))
    await _ensure_stream(js, events_stream_config(site, **opts))
    try:
        await js.object_store(RESULTS_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        try:
            await js.create_object_store(
                RESULTS_BUCKET,
                description=f"fedhub encrypted results of site {site}",
                storage=api.StorageType.FILE,
                replicas=replicas,
            )
        except nats.js.errors.Error as exc:
            raise TransportError(f"cannot create bucket {RESULTS_BUCKET}: {exc}") from exc
    except nats.errors.Error as exc:
        raise TransportError(f"cannot look up bucket {RESULTS_BUCKET}: {exc}") from exc
    log.debug("site_streams.ensured", site=site)


async def ensure_calls_consumer(
    js: JetStreamContext,
    site: str,
    *,
    ack_wait: float = 5.0,
    max_deliver: int = 5,
    max_ack_pending: int = 1000,
) -> api.ConsumerInfo:
    """Create (or update) the durable pull consumer ``fh-node`` on ``FH_CALLS``.

    All node workers of a site pull from this one consumer, so each call goes to one worker.
    ``ack_wait``: seconds a worker has to ack (or ``in_progress()``) before redelivery.
    ``max_deliver``: deliveries per call before the server gives up on it; the message then
    stays in the stream unacked and the server publishes a
    ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES`` advisory (use -1 for unlimited).
    ``max_ack_pending``: calls handed out but not yet acked, across all workers.
    """
    validate_site(site)
    config = api.ConsumerConfig(
        name=CALLS_CONSUMER,
        durable_name=CALLS_CONSUMER,
        description=f"fedhub node workers of site {site}",
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
        max_ack_pending=max_ack_pending,
    )
    try:
        return await js.add_consumer(CALLS_STREAM, config)
    except nats.js.errors.APIError as exc:
        raise ConfigError(
            f"cannot create consumer {CALLS_CONSUMER} on {CALLS_STREAM}: {exc.description}"
        ) from exc
    except nats.errors.Error as exc:
        raise TransportError(f"cannot create consumer {CALLS_CONSUMER}: {exc}") from exc


async def source_site_events(
    hub_js: JetStreamContext, site: str, *, replicas: int = 1
) -> api.StreamInfo:
    """Create on the hub stream ``FH_EVENTS_<SITE>`` sourcing the site's ``FH_EVENTS``.

    ``hub_js`` must talk to the hub's JetStream (domain ``hub``, the hub's own account).
    The source reaches the site's stream through its domain's API prefix ``$JS.<site>.API``
    and takes deliveries on ``fh.hubcopy.<site>.>``; on a hub with site accounts those
    subjects (and the source's flow control) are what the site's account exports to the
    hub's. So the hub keeps a federation-wide copy of every site's event logs.
    """
    return await _ensure_stream(hub_js, hub_events_config(site, replicas=replicas))


def hub_events_config(site: str, *, replicas: int = 1) -> api.StreamConfig:
    """Config of the hub's ``FH_EVENTS_<SITE>``: an external source of the site's log."""
    site = validate_site(site)
    return api.StreamConfig(
        name=hub_events_stream(site),
        description=f"hub copy of site {site}'s fedhub event logs",
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        max_msg_size=-1,
        discard=api.DiscardPolicy.NEW,
        deny_delete=True,
        deny_purge=True,
        sources=[
            api.StreamSource(
                name=EVENTS_STREAM,
                external=api.ExternalStream(
                    api=js_api_prefix(site), deliver=events_deliver_prefix(site)
                ),
            )
        ],
    )


#: Create or update one stream (as for the site's streams; used by :mod:`hub.nats.dirstreams`).
ensure_stream = _ensure_stream
