"""The caller's side of NATS: opening the connection, and publishing a call until its
stream confirms it.

:func:`open_connection` is what :meth:`hub.client.Client.connect` uses. A first
connection that fails says why in one sentence (refused credentials, an untrusted
certificate, nothing listening) instead of nats-py's retries and tracebacks; a connection
that was up and drops is tried again ``reconnect_attempts`` times, and each reconnect is
reported to ``on_reconnected`` so the client can ask about replies lost meanwhile.
:func:`publish_call` retries one call's publish, idempotently, until its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from hub.errors import TransportError
from hub.nats import wait_acks
from hub.nats.connection import auth_options
from hub.nats.generate import nats_inbox_prefix
from hub.subjects import validate_identity

__all__ = ["open_connection", "publish_call"]

#: Seconds one try of publishing a call waits for its stream's ack before trying again.
_CONFIRM_TRY = 3.0
#: Seconds a call's publish is tried at most: inside FH_CALLS' duplicate window (120 s).
_RETRY_SPAN = 100.0

log = structlog.get_logger(__name__)


async def open_connection(
    url: str,
    identity: str,
    *,
    creds: str | Path | None = None,
    tls: ssl.SSLContext | str | Path | None = None,
    connect_timeout: float = 5.0,
    reconnect_attempts: int = 120,
    on_reconnected: Callable[[], Awaitable[None]] | None = None,
) -> NatsClient:
    """Connect ``identity`` (a person, ``name@site``) to the NATS server at ``url``.

    ``creds``/``tls`` as in :func:`hub.nats.connection.auth_options` (defaults from
    ``$FEDHUB_CREDS`` and ``$FEDHUB_CA``). The connection's inboxes are
    ``_INBOX.caller.<name>``, the only ones a caller's credentials may subscribe to.
    Raises :class:`~hub.errors.TransportError` naming the first cause when the first
    connection fails.
    """
    options = auth_options(creds, tls)
    first: list[Exception] = []  # what went wrong while connecting the first time
    untrusted = asyncio.Event()  # nats-py hangs after a failed TLS handshake: stop it

    async def on_error(exc: Exception) -> None:
        first.append(exc)
        if isinstance(exc, ssl.SSLError):
            untrusted.set()
        log.debug("client.nats_error", error=str(exc) or type(exc).__name__)

    extra = {} if on_reconnected is None else {"reconnected_cb": on_reconnected}
    try:
        nc = await _unless_set(untrusted, nats.connect(
            url,
            **options,
            inbox_prefix=nats_inbox_prefix("caller", validate_identity(identity).name),
            connect_timeout=connect_timeout,
            # one try (nats-py makes two) for the first connection: refused
            # credentials or an untrusted certificate are told at once
            max_reconnect_attempts=1,
            reconnect_time_wait=0.5,
            allow_reconnect=True,
            name=f"fedhub-client {identity}",
            error_cb=on_error,
            **extra,
        ))  # fmt: skip
    except (OSError, nats.errors.Error, TimeoutError) as exc:
        raise TransportError(
            f"cannot connect to NATS at {url}: {_first_cause([*first, exc])}",
            hint="check FEDHUB_URL, FEDHUB_CREDS (creds=) and FEDHUB_CA (tls=)",
        ) from exc
    nc.options["max_reconnect_attempts"] = reconnect_attempts  # read on each retry
    return nc


async def _unless_set(event: asyncio.Event, connecting: Awaitable[NatsClient]) -> NatsClient:
    """Await ``connecting`` unless ``event`` is set first (then cancel it: ConnectionError)."""
    task = asyncio.ensure_future(connecting)
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise ConnectionError("the TLS handshake failed")
    return task.result()


def _first_cause(errors: list[Exception]) -> str:
    """The error that says most about a failed first connection."""
    for exc in errors:
        text = str(exc).lower()
        if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in text:
            return "the server refused the credentials (authorization violation)"
        if "certificate verify failed" in text:
            return f"the server's TLS certificate is not trusted ({exc})"
    return str(errors[-1]) or type(errors[-1]).__name__


async def publish_call(
    js: JetStreamContext, subject: str, data: bytes, rid: str, until: float
) -> None:
    """Publish a call into its site's stream until the stream confirms it or ``until``
    (loop time) passes: each try waits a few seconds for the ack, then the same message
    goes again after a backoff. The ``Nats-Msg-Id`` (the request id) makes the stream
    keep one copy however many tries arrive, so a retry never runs a call twice; tries
    stop within the stream's duplicate window (``_RETRY_SPAN``) whatever the deadline.
    Unconfirmed tries (a leaf or the hub down) are logged in one line when it ends."""
    loop = asyncio.get_running_loop()
    tries, first = 0, loop.time()
    until = min(until, first + _RETRY_SPAN)
    while True:
        tries += 1
        left = until - loop.time()
        try:
            # publish_async: the stream's ack resolves a future (no task per call)
            ack = await js.publish_async(subject, data, headers={"Nats-Msg-Id": rid})
            await wait_acks([ack], max(0.1, min(_CONFIRM_TRY, left)))
        except (
            nats.errors.TimeoutError,
            TimeoutError,
            nats.errors.NoRespondersError,
            nats.js.errors.NoStreamResponseError,
        ) as exc:
            pause = min(0.25 * 2 ** min(tries - 1, 3), until - loop.time())
            if pause <= 0:
                if tries > 1:
                    log.warning(
                        "call.unconfirmed",
                        request_id=rid,
                        tries=tries,
                        seconds=round(loop.time() - first, 1),
                    )
                raise exc
            await asyncio.sleep(pause)
            continue
        if tries > 1:
            log.warning(
                "call.confirmed_late",
                request_id=rid,
                tries=tries,
                seconds=round(loop.time() - first, 1),
            )
        return
