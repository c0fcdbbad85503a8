"""Connecting to a NATS server and waiting until it, its JetStream and its routes answer.

:func:`connect` makes one connection attempt and turns failures into
:class:`~hub.errors.TransportError`; :func:`wait_jetstream_ready` waits for a JetStream
domain to answer; :func:`wait_message_route` waits for core messages to travel between two
connections (leaf node links up, subscription interest propagated).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import uuid
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient

from hub.errors import ConfigError, TransportError
from hub.nats.config import js_api_prefix

__all__ = [
    "CA_ENV",
    "CREDS_ENV",
    "auth_options",
    "connect",
    "wait_jetstream_ready",
    "wait_message_route",
]

#: Environment variable naming the credentials file clients use by default.
CREDS_ENV = "FEDHUB_CREDS"
#: Environment variable naming the CA certificate clients trust by default.
CA_ENV = "FEDHUB_CA"


def auth_options(
    creds: str | Path | None = None, tls: ssl.SSLContext | str | Path | None = None
) -> dict[str, Any]:
    """nats-py options that log in with ``creds`` and trust ``tls``.

    ``creds`` is an NKey user seed file (what ``fedhub federation init`` writes per user)
    or a ``.creds`` file (JWT and seed); ``tls`` a TLS context or a CA certificate file.
    Each defaults to ``$FEDHUB_CREDS`` / ``$FEDHUB_CA`` when not given; neither set means
    no options (an open test server).
    """
    options: dict[str, Any] = {}
    creds = creds or os.environ.get(CREDS_ENV) or None
    if creds:
        path = Path(creds).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read NATS credentials {path}: {exc.strerror}") from exc
        if "BEGIN NATS USER JWT" in text:
            options["user_credentials"] = str(path)
        elif text.strip().startswith("SU") and len(text.split()) == 1:
            options["nkeys_seed"] = str(path)
        else:
            raise ConfigError(f"{path} is neither a .creds file nor an NKey user seed (SU...)")
    tls = tls or os.environ.get(CA_ENV) or None
    if isinstance(tls, ssl.SSLContext):
        options["tls"] = tls
    elif tls:
        try:
            options["tls"] = ssl.create_default_context(cafile=str(Path(tls).expanduser()))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot read a CA certificate from {tls}: {exc}") from exc
    return options


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
