"""Connecting to a NATS server and waiting until it, its JetStream and its routes answer.

:func:`connect` makes one connection attempt and turns failures into
:class:`~hub.errors.TransportError`; :func:`wait_jetstream_ready` waits for a JetStream
domain to answer; :func:`wait_message_route` waits for core messages to travel between two
connections (leaf node links up, subscription interest propagated).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient

from hub.errors import TransportError
from hub.nats.config import js_api_prefix

__all__ = ["connect", "wait_jetstream_ready", "wait_message_route"]


async def connect(url: str, **options: Any) -> NatsClient:
    """Connect to ``url`` once (no retry loop), converting failures to TransportError."""
    options.setdefault("connect_timeout", 2)
    options.setdefault("allow_reconnect", False)
    try:
        return await nats.connect(url, **options)
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        raise TransportError(f"cannot connect to NATS at {url}: {exc}") from exc


async def wait_jetstream_ready(
    nc: NatsClient,
    domain: str | None = None,
    timeout: float = 10,
) -> None:
    """Wait until JetStream (of ``domain``, seen from ``nc``) answers ``$JS.API.INFO``.

    Raises :class:`TransportError` if it does not answer within ``timeout`` seconds.
    """
    subject = f"{js_api_prefix(domain)}.INFO"
    last: object = "no answer"
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    msg = await nc.request(subject, b"", timeout=min(1.0, timeout))
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
                    last = exc
                except nats.errors.Error as exc:
                    raise TransportError(f"cannot ask {subject}: {exc}") from exc
                else:
                    reply = json.loads(msg.data)
                    if "error" not in reply:
                        return
                    last = reply["error"]
                await asyncio.sleep(0.05)
    except TimeoutError as exc:
        where = f"domain {domain!r}" if domain else "the local server"
        raise TransportError(
            f"JetStream of {where} not ready after {timeout}s (last: {last})"
        ) from exc


async def wait_message_route(
    publisher: NatsClient,
    subscriber: NatsClient,
    *,
    subject: str | None = None,
    timeout: float = 10,
) -> None:
    """Wait until a core message published on ``publisher`` reaches ``subscriber``.

    Used to know that leaf node connections (and their subscription interest) are up.
    """
    subject = subject or f"fh.probe.{uuid.uuid4().hex}"
    sub = await subscriber.subscribe(subject)
    try:
        await subscriber.flush()
        async with asyncio.timeout(timeout):
            while True:
                await publisher.publish(subject, b"probe")
                await publisher.flush()
                try:
                    await sub.next_msg(timeout=0.1)
                except nats.errors.TimeoutError:
                    continue
                return
    except TimeoutError as exc:
        raise TransportError(
            f"messages on {subject} do not reach the subscriber within {timeout}s"
        ) from exc
    finally:
        await sub.unsubscribe()
