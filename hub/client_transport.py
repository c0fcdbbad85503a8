"""The caller's side of NATS: opening the connection, and publishing a call until its
stream confirms it.

:func:`open_connection` is what :meth:`hub.client.Client.connect` uses. A first
connection that fails says why in one sentence (refused credentials, an untrusted
certificate, nothing listening) instead of nats-py's retries and tracebacks; a connection
that was up and drops is tried again ``reconnect_attempts`` times, and each reconnect is
reported to ``on_reconnected`` so the client can ask about replies lost meanwhile.
:func:`publish_call` retries one call's publish, idempotently, until its deadline, each
try confirmed by its stream's ack on the client's :class:`CallAcks` subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import Header

from hub.errors import TransportError
from hub.nats.connection import auth_options
from hub.nats.generate import nats_inbox_prefix
from hub.subjects import validate_identity

__all__ = ["CallAcks", "open_connection", "publish_call"]

#: Seconds one try of publishing a call waits for its stream's ack before trying again.
_CONFIRM_TRY = 3.0
#: Seconds a call's publish is tried at most: inside FH_CALLS' duplicate window (120 s).
_RETRY_SPAN = 100.0
#: The status of a message the server sends when nothing listens on its subject.
_NO_RESPONDERS = "503"

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


class CallAcks:
    """The stream acks of a client's calls, on one subscription of the client's own.

    A call's publish names ``<prefix>.<request id>`` as its reply subject, and the stream's
    ack (or error) to any try of it resolves the one future of that call. nats-py's
    ``publish_async`` does the same with a semaphore, a random token, a future and two
    callbacks per message; this is a dict entry.
    """

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self._prefix = ""
        self._sub: Any = None
        self._waiting: dict[str, asyncio.Future[None]] = {}

    async def start(self) -> None:
        """Subscribe to the acks (in the connection's own inbox space)."""
        if self._sub is None:
            self._prefix = self.nc.new_inbox()
            self._sub = await self.nc.subscribe(self._prefix + ".*", cb=self._on_ack)

    async def stop(self) -> None:
        """Unsubscribe; harmless twice."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _on_ack(self, msg: Msg) -> None:
        future = self._waiting.get(msg.subject[len(self._prefix) + 1 :])
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get(Header.STATUS) == _NO_RESPONDERS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        try:
            answer = json.loads(msg.data)
            if not isinstance(answer, dict):
                raise TypeError("not a JSON object")
            if "error" in answer:
                nats.js.errors.APIError.from_error(answer["error"])  # raises it
            if not isinstance(answer.get("stream"), str) or not isinstance(answer.get("seq"), int):
                raise KeyError("stream and seq")  # a stream's ack names where it stored the call
        except (ValueError, TypeError, KeyError) as exc:
            future.set_exception(nats.js.errors.APIError(description=f"bad ack: {exc}"))
        except nats.js.errors.APIError as exc:
            future.set_exception(exc)
        else:
            future.set_result(None)

    async def publish_once(self, subject: str, data: bytes, rid: str, timeout: float) -> None:
        """Publish a call and wait ``timeout`` s for its stream's ack (TimeoutError)."""
        if self._sub is None:  # a client used before its start()
            await self.start()
        loop = asyncio.get_running_loop()
        future = self._waiting[rid] = loop.create_future()  # one try of a call at a time
        timer = loop.call_later(timeout, _expire, future)
        try:
            await self.nc.publish(
                subject, data, reply=f"{self._prefix}.{rid}", headers={"Nats-Msg-Id": rid}
            )
            await future
        finally:
            timer.cancel()
            self._waiting.pop(rid, None)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("no ack in time"))


async def publish_call(acks: CallAcks, subject: str, data: bytes, rid: str, until: float) -> None:
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
            await acks.publish_once(subject, data, rid, max(0.1, min(_CONFIRM_TRY, left)))
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
