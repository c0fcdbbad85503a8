"""The node's NATS connection: first connect with backoff, one log line per outage.

nats-py on its own retries a first connection forever at a fixed pace, and reports every
failed try through its error callback, whose default logs a full traceback (twice a second
while a server is down). :class:`NatsLink` owns the node's connection instead:

- the **first connection** is tried with exponential backoff and jitter
  (:func:`backoff_delay`, capped at ``backoff_max`` seconds), one log line per failed
  attempt (``nats.unreachable``, or ``nats.unauthorized`` when the server refused the
  credentials), and gives up at once when a stop is requested
  (:class:`~hub.errors.StopRequestedError`);
- once connected, nats-py reconnects forever; an **outage** is logged as one
  ``nats.disconnected`` warning when it starts and one ``nats.reconnected`` line with its
  duration when it ends, never a line per retry (plus one ``nats.unauthorized`` if the
  server comes back but refuses the credentials);
- other asynchronous errors (slow consumer, permission violation) are one line each
  (``nats.error``, the same error at most once per ``ERROR_QUIET`` seconds), and
  :func:`quiet_library_logging` keeps nats-py's own logger from printing tracebacks.

Errors are described for people by :func:`describe_nats_error` (also used by
``fedhub-node check``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import structlog
from nats.aio.client import Client as NatsClient

from hub.errors import ConfigError, StopRequestedError

__all__ = [
    "ERROR_QUIET",
    "NatsLink",
    "backoff_delay",
    "describe_nats_error",
    "is_auth_error",
    "main_error",
    "nats_auth_options",
    "nats_tls_options",
    "quiet_library_logging",
    "safe_url",
]

log = structlog.get_logger(__name__)

#: Seconds during which the same asynchronous NATS error is not logged again.
ERROR_QUIET = 10.0

_AUTH_MARKERS = ("authorization violation", "authentication", "user authentication expired")

Callback = Callable[[], Awaitable[None]]


def nats_auth_options(path: Path) -> dict[str, Any]:
    """nats-py options for ``[nats] credentials``: a ``.creds`` file (JWT and NKey seed)
    or a bare NKey user seed file; ConfigError says what is wrong with it."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"nats.credentials: cannot read {path}: {exc.strerror}",
            hint="fix the path in [nats] credentials (relative to the config file)",
        ) from exc
    if not _nkeys_installed():
        raise ConfigError(
            "nats.credentials: NATS credentials need the nkeys package",
            hint="pip install nkeys (or nats-py[nkeys])",
        )
    if "BEGIN NATS USER JWT" in text:
        return {"user_credentials": str(path)}
    seed = text.strip()
    if seed.startswith("SU") and len(seed.split()) == 1:
        return {"nkeys_seed": str(path)}
    raise ConfigError(
        f"nats.credentials: {path} is neither a .creds file nor an NKey user seed (SU...)",
        hint="use the credentials file made for this node",
    )


def nats_tls_options(ca: Path) -> dict[str, Any]:
    """nats-py options for ``[nats] ca``: TLS trusting the CA certificate in ``ca`` only."""
    try:
        return {"tls": ssl.create_default_context(cafile=str(ca))}
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"nats.ca: cannot read a CA certificate from {ca}: {exc}",
            hint="use the ca.pem written by `fedhub federation init`",
        ) from exc


def _nkeys_installed() -> bool:
    """nats-py signs with NKeys through the optional ``nkeys`` package."""
    return importlib.util.find_spec("nkeys") is not None


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1, 2, ...): doubling, capped,
    with "equal jitter" (a random point in the upper half) so restarted nodes spread out."""
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def is_auth_error(exc: BaseException) -> bool:
    """True if the server refused the connection's credentials."""
    if isinstance(exc, nats.errors.AuthorizationError):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _AUTH_MARKERS)


def describe_nats_error(exc: BaseException) -> str:
    """One line a person can act on, for an error met while connecting to NATS."""
    if is_auth_error(exc):
        return "the server refused the credentials (authorization violation)"
    if isinstance(exc, nats.errors.NoServersError | ConnectionRefusedError):
        return "connection refused (no server listening)"
    if isinstance(exc, TimeoutError | nats.errors.TimeoutError):
        return "no answer in time (server down, firewall, or wrong host)"
    if isinstance(exc, nats.errors.UnexpectedEOF | ConnectionResetError):
        return "the server closed the connection"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc).removeprefix("nats: ").strip("'") or type(exc).__name__


class _LibraryLogHandler(logging.Handler):
    """nats-py's stdlib log records as one structlog line each, without the traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        log.warning(
            "nats.library_error",
            message=record.getMessage(),
            error=f"{type(exc).__name__}: {exc}" if exc is not None else None,
        )


def quiet_library_logging() -> None:
    """Route nats-py's own log records to one structlog line each (no tracebacks)."""
    lib = logging.getLogger("nats")
    if not any(isinstance(h, _LibraryLogHandler) for h in lib.handlers):
        lib.addHandler(_LibraryLogHandler())
    lib.propagate = False


class NatsLink:
    """The node's connection to its NATS server, with the callbacks that keep the log calm.

    ``await link.connect(stop)`` returns the connected client (or raises
    :class:`~hub.errors.StopRequestedError` once ``stop`` is set); ``await link.close()``
    drains it (harmless twice). :attr:`connected` is what the health endpoint reports.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        credentials: Path | None = None,
        ca: Path | None = None,
        connect_timeout: float = 5.0,
        reconnect_wait: float = 0.5,
        backoff_max: float = 30.0,
        on_reconnected: Callback | None = None,
        on_closed: Callback | None = None,
    ) -> None:
        self.url = url
        self.name = name
        self.credentials = credentials
        self.ca = ca
        self.connect_timeout = connect_timeout
        self.reconnect_wait = reconnect_wait
        self.backoff_max = backoff_max
        self.on_reconnected = on_reconnected
        self.on_closed = on_closed
        self.nc: NatsClient | None = None
        #: Outages since connecting (each logged once).
        self.outages = 0
        self._down_since: float | None = None
        self._last_error: BaseException | None = None
        self._attempt_errors: list[BaseException] = []  # of the current first-connect try
        self._retries = 0
        self._logged: dict[str, float] = {}
        self._closing = False
        self._auth_told = False
        self._auth: dict[str, Any] = {}

    @property
    def connected(self) -> bool:
        """True while the client is connected (not connecting, reconnecting or closed)."""
        return self.nc is not None and self.nc.is_connected

    # --- first connection -----------------------------------------------------------------

    async def connect(self, stop: asyncio.Event | None = None) -> NatsClient:
        """Connect, retrying with backoff until it works or ``stop`` is set."""
        self._auth = nats_auth_options(self.credentials) if self.credentials else {}
        if self.ca is not None:
            self._auth.update(nats_tls_options(self.ca))
        stop = stop or asyncio.Event()
        attempt = 0
        while True:
            attempt += 1
            self._attempt_errors = []
            try:
                nc = await _unless_stopped(self._connect_once(), stop)
            except (OSError, nats.errors.Error, TimeoutError) as exc:
                reason = main_error([*self._attempt_errors, exc])
            else:
                self.nc = nc
                if attempt > 1:
                    log.info("nats.connected", url=safe_url(self.url), attempts=attempt)
                return nc
            delay = backoff_delay(attempt, cap=self.backoff_max)
            if is_auth_error(reason):
                log.error(
                    "nats.unauthorized",
                    url=safe_url(self.url),
                    reason=describe_nats_error(reason),
                    hint="check [nats] credentials and the server's users",
                    attempt=attempt,
                    retry_in=round(delay, 1),
                )
            else:
                log.warning(
                    "nats.unreachable",
                    url=safe_url(self.url),
                    reason=describe_nats_error(reason),
                    attempt=attempt,
                    retry_in=round(delay, 1),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_wait_stop(stop), delay)

    async def _connect_once(self) -> NatsClient:
        options: dict[str, Any] = {
            "name": self.name,
            "connect_timeout": self.connect_timeout,
            "reconnect_time_wait": self.reconnect_wait,
            # one attempt here (nats-py tries twice before giving up); the backoff between
            # attempts is ours, see connect()
            "max_reconnect_attempts": 1,
            "drain_timeout": 5,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
        }
        nc = await nats.connect(self.url, **options, **self._auth)
        # connected: from now on reconnect forever (the options are read on each retry)
        nc.options["max_reconnect_attempts"] = -1
        return nc

    # --- callbacks ------------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = exc
        if self.nc is None:
            self._attempt_errors.append(exc)
        if self._down_since is not None and is_auth_error(exc) and not self._auth_told:
            # the server is back but refuses us now: say so once per outage
            self._auth_told = True
            log.error(
                "nats.unauthorized",
                url=safe_url(self.url),
                reason=describe_nats_error(exc),
                hint="check [nats] credentials and the server's users; still retrying",
            )
        if self.nc is None or self._down_since is not None or _is_link_error(exc):
            # a try of the first connection, or of a reconnect, or the link breaking: told
            # once by connect() or the disconnected/reconnected lines
            self._retries += 1
            return
        key = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - self._logged.get(key, -ERROR_QUIET) >= ERROR_QUIET:
            self._logged[key] = now
            log.warning("nats.error", error=describe_nats_error(exc), url=safe_url(self.url))

    async def _on_disconnected(self) -> None:
        if self.nc is None or self._closing or self._down_since is not None:
            return
        self._down_since = time.monotonic()
        self._retries = 0
        self._auth_told = False
        self.outages += 1
        reason = describe_nats_error(self._last_error) if self._last_error else "link lost"
        log.warning("nats.disconnected", url=safe_url(self.url), reason=reason)

    async def _on_reconnected(self) -> None:
        since, self._down_since = self._down_since, None
        seconds = time.monotonic() - since if since is not None else 0.0
        log.warning(
            "nats.reconnected",
            url=safe_url(self.url),
            seconds=round(seconds, 2),
            tries=self._retries,
        )
        if self.on_reconnected is not None:
            await self.on_reconnected()

    async def _on_closed(self) -> None:
        if self.nc is None or self._closing:
            return
        reason = describe_nats_error(self._last_error) if self._last_error else "closed"
        log.error("nats.closed", url=safe_url(self.url), reason=reason)
        if self.on_closed is not None:
            await self.on_closed()

    # --- closing --------------------------------------------------------------------------

    async def close(self) -> None:
        """Drain and close the connection (no outage lines); harmless twice."""
        self._closing = True
        nc = self.nc
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.drain()
            with contextlib.suppress(Exception):
                await nc.close()


def main_error(errors: list[BaseException]) -> BaseException:
    """The error that says most: a refusal of the credentials (the server then closes the
    link, so a reset often comes after it), else the first."""
    return next((e for e in errors if is_auth_error(e)), errors[0])


def _is_link_error(exc: BaseException) -> bool:
    """Errors that mean the TCP link broke (an outage starts; logged as such)."""
    return isinstance(
        exc,
        OSError
        | TimeoutError
        | nats.errors.UnexpectedEOF
        | nats.errors.StaleConnectionError
        | nats.errors.NoServersError
        | nats.errors.ConnectionClosedError,
    ) or (is_auth_error(exc))


async def _wait_stop(stop: asyncio.Event) -> None:
    await stop.wait()
    raise StopRequestedError("asked to stop while waiting for NATS")


async def _unless_stopped(coro: Awaitable[NatsClient], stop: asyncio.Event) -> NatsClient:
    """Await ``coro`` unless ``stop`` is set first (then cancel it, raise StopRequestedError)."""
    work = asyncio.ensure_future(coro)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
    if work.cancelled():  # cancelled above: the stop came first
        raise StopRequestedError("asked to stop while connecting to NATS")
    if stop.is_set():
        if work.exception() is None:  # connected just as the stop came: do not leak it
            with contextlib.suppress(Exception):
                await work.result().close()
        raise StopRequestedError("asked to stop while connecting to NATS")
    return work.result()


def safe_url(url: str) -> str:
    """``url`` without a password (``nats://user:***@host``)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user = creds.partition(":")[0]
    return f"{scheme}://{user}:***@{host}"
