"""Calling remote functions: the async :class:`Client`, its call handles, and a sync twin.

::

    async with await Client.connect(url, "klaus@geomar") as fed:
        total = await fed.call("hereon.climate.compute_sum", da=da)

    with connect(url, "klaus@geomar") as fed:          # sync, works inside Jupyter
        handle = fed.submit("hereon.climate.slow_mean", da=da)
        handle.result(timeout=60)

A call: fetch (once) and verify the module's info (schemas + the node key record signed by
the site key the client pinned) → encode the arguments (:mod:`hub.codec`) → encrypt them
with a fresh content key wrapped for the node key → sign the header → publish to the
site's call stream (JetStream, ``Nats-Msg-Id`` = request id) → wait on the caller's own
inbox for progress and the result, each opened with keys only the node and the caller
hold. Every call has a deadline; nothing waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import ValidationError as PydanticValidationError

from hub import codec
from hub.canonical import b64d, b64e
from hub.clock import now
from hub.crypto import blake2b_256, new_content_key, open_secret, seal_secret, unwrap_key, wrap_key
from hub.envelopes import (
    REPLY_MAGIC,
    ControlHeader,
    RequestHeader,
    pack_control,
    pack_request,
    unpack_reply,
)
from hub.errors import (
    CallCancelledError,
    CallTimeoutError,
    CanonicalError,
    ConfigError,
    DecryptionError,
    FederationError,
    IntegrityError,
    NotFoundError,
    OversizeError,
    TransportError,
    remote_error_from_code,
)
from hub.keys import KeyPair, KeyStore
from hub.nats import wait_acks
from hub.nats.connection import auth_options
from hub.nats.generate import nats_inbox_prefix
from hub.records import KeyRecord, SignedRecord, open_record
from hub.subjects import (
    call_subject,
    inbox_subject,
    info_subject,
    parse_address,
    status_subject,
    validate_identity,
)

__all__ = ["CallHandle", "Client", "ModuleInfo", "SyncClient", "connect"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
ProgressCallback = Callable[[float | None, str], None]

#: Extra time the client waits past a call's own timeout for the node's answer to arrive.
_GRACE = 5.0


@dataclass(frozen=True)
class ModuleInfo:
    """A module's description as served by its node, with the node key verified."""

    site: str
    module: str
    info: dict[str, Any]
    node: str
    node_kid: str
    node_box_key: bytes

    @property
    def functions(self) -> dict[str, Any]:
        """Function name → its description (schemas, docstring, signature)."""
        funcs: dict[str, Any] = self.info.get("functions", {})
        return funcs


@dataclass
class CallHandle:
    """A submitted call: its id, live progress, and (eventually) its result."""

    request_id: str
    address: str
    _client: Client
    _content_key: bytes
    _node_box_key: bytes
    _deadline: float
    _future: asyncio.Future[Any]
    on_progress: ProgressCallback | None = None
    progress: tuple[float | None, str] = (None, "")
    _progress_events: asyncio.Queue[tuple[float | None, str]] = field(default_factory=asyncio.Queue)

    def done(self) -> bool:
        """Whether the outcome (result or error) has arrived."""
        return self._future.done()

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the result; raises the call's typed error or CallTimeoutError."""
        loop = asyncio.get_running_loop()
        remaining = self._deadline - loop.time()
        if timeout is not None:
            remaining = min(remaining, timeout)
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                return await asyncio.shield(self._future)
        except TimeoutError as exc:
            if self._future.done():
                return self._future.result()
            raise CallTimeoutError(
                f"no answer for {self.address} (request {self.request_id}) in time",
                hint=f"the call may still run; check `fedhub status {self.request_id}`",
            ) from exc

    async def status(self) -> dict[str, Any]:
        """The node's view of this request (state, progress)."""
        return await self._client.status(self.address.split(".", 1)[0], self.request_id)

    async def cancel(self) -> dict[str, Any]:
        """Ask the node to cancel the call; the result then raises CallCancelledError.

        Returns the node's answer (``cancelling``: whether it stopped a running call; a call
        not yet running is cancelled when it would start).
        """
        answer: dict[str, Any] = await self._client._control(
            "cancel", self.address.split(".", 1)[0], self.request_id
        )
        return answer

    # -- called by the client's inbox -----------------------------------------------------

    def _deliver_progress(self, fraction: float | None, message: str) -> None:
        self.progress = (fraction, message)
        self._progress_events.put_nowait((fraction, message))
        if self.on_progress is not None:
            try:
                self.on_progress(fraction, message)
            except Exception:  # a caller's callback must not break the inbox
                log.exception("client.progress_callback_failed", request_id=self.request_id)

    async def progress_events(self) -> Any:
        """Iterate over progress reports as they arrive, until the call ends."""
        while not (self._future.done() and self._progress_events.empty()):
            getter = asyncio.ensure_future(self._progress_events.get())
            done, _ = await asyncio.wait(
                {getter, self._future}, return_when=asyncio.FIRST_COMPLETED
            )
            if getter in done:
                yield getter.result()
            else:
                getter.cancel()


class Client:
    """An identity's connection to the federation. Use as an async context manager."""

    def __init__(
        self,
        nc: NatsClient,
        keys: KeyPair,
        trusted_sites: dict[str, bytes],
        *,
        default_timeout: float = 300.0,
        owns_connection: bool = True,
    ) -> None:
        ident = validate_identity(keys.identity)
        if ident.kind != "user":
            raise ConfigError(f"calls are made by people (name@site), not {keys.identity}")
        self.nc = nc
        self.keys = keys
        self.identity = keys.identity
        self.user, self.site = ident.name, ident.site
        self.trusted_sites = dict(trusted_sites)
        self.default_timeout = default_timeout
        self._owns = owns_connection
        self.js = nc.jetstream()
        self._inbox = inbox_subject(self.site, self.user, secrets.token_urlsafe(12))
        self._sub: Any = None
        self._pending: dict[str, CallHandle] = {}
        self._modules: dict[tuple[str, str], ModuleInfo] = {}
        self._closed = False
        self._box_public = keys.box_public

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str,
        identity: str,
        *,
        home: Path | None = None,
        passphrase: str | None = None,
        credentials: str | None = None,
        default_timeout: float = 300.0,
        connect_timeout: float = 5.0,
        creds: str | Path | None = None,
        tls: ssl.SSLContext | str | Path | None = None,
    ) -> Client:
        """Load ``identity``'s keys and the pinned site keys from the key store, connect.

        ``creds``: the NATS credentials of this person at their site's leaf server (an NKey
        seed file from ``fedhub federation init``, or a ``.creds`` file; default
        ``$FEDHUB_CREDS``); ``tls``: a TLS context or the federation's CA file (default
        ``$FEDHUB_CA``). The connection's NATS inboxes are ``_INBOX.caller.<user>``, the
        only ones a caller's credentials may subscribe to.
        """
        store = KeyStore(home)
        keys = store.load(identity, passphrase)
        trusted = {
            k.identity.removeprefix("site:"): k.sign_key
            for k in store.list()
            if k.identity.startswith("site:")
        }
        options = auth_options(creds or credentials, tls)
        try:
            nc = await nats.connect(
                url,
                **options,
                inbox_prefix=nats_inbox_prefix("caller", validate_identity(identity).name),
                connect_timeout=connect_timeout,
                max_reconnect_attempts=3,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
                name=f"fedhub-client {identity}",
                error_cb=_log_nats_error,
            )
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            raise TransportError(f"cannot connect to NATS at {url}: {exc}") from exc
        client = cls(nc, keys, trusted, default_timeout=default_timeout)
        await client.start()
        return client

    async def start(self) -> None:
        """Subscribe to this client's inbox (done by :meth:`connect`)."""
        if self._sub is None:
            self._sub = await self.nc.subscribe(self._inbox, cb=self._on_reply)

    async def aclose(self) -> None:
        """Fail pending calls, drain the connection; harmless twice."""
        if self._closed:
            return
        self._closed = True
        for handle in self._pending.values():
            fut = handle._future
            if not fut.done():
                fut.set_exception(TransportError("client closed before the answer arrived"))
            if not fut.cancelled():
                # nobody will ask any more (e.g. the node's "cancelled" answer to a call
                # the CLI gave up on): mark the outcome seen, so asyncio does not complain
                fut.exception()
        self._pending.clear()
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
        if self._owns and not self.nc.is_closed:
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await self.nc.drain()

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- discovery -------------------------------------------------------------------------

    async def module_info(self, site: str, module: str, *, refresh: bool = False) -> ModuleInfo:
        """A module's schemas and its node key, verified against the pinned site key."""
        cached = self._modules.get((site, module))
        if cached is not None and not refresh:
            return cached
        try:
            msg = await self.nc.request(info_subject(site, module), b"", timeout=5.0)
        except nats.errors.NoRespondersError as exc:
            raise NotFoundError(
                f"no node serves {site}.{module}",
                hint="check the site and module names (`fedhub ls`) and that the node runs",
            ) from exc
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            raise CallTimeoutError(f"{site}.{module} did not answer its info request") from exc
        try:
            info = json.loads(msg.data)
            site_key = self.trusted_sites.get(site)
            if site_key is None:
                raise ConfigError(
                    f"site {site} is not pinned in this key store",
                    hint=f"import its public key: fedhub keys import site-{site}.pub",
                )
            record = open_record(SignedRecord.model_validate(info["node_key"]), KeyRecord, site_key)
        except (ValueError, KeyError, TypeError) as exc:
            raise CanonicalError(f"malformed info reply from {site}.{module}: {exc}") from exc
        if record.site != site or record.role != "node":
            raise DecryptionError(f"{site}.{module} presented a key record for {record.identity}")
        mi = ModuleInfo(site, module, info, record.identity, record.kid, record.box_key_bytes())
        self._modules[(site, module)] = mi
        return mi

    # -- calls -----------------------------------------------------------------------------

    async def submit(
        self,
        address: str,
        arguments: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> CallHandle:
        """Send a call and return its handle without waiting for the result.

        Arguments go as keywords, or as a mapping (for parameters named like this method's
        own options, e.g. a remote ``timeout``): ``submit(addr, {"timeout": 5})``.
        """
        if arguments:
            kwargs = {**arguments, **kwargs}
        if self._closed:
            raise TransportError("client is closed")
        target = parse_address(address)
        info = await self.module_info(target.site, target.module)
        fn = info.functions.get(target.function)
        if fn is None:
            known = ", ".join(sorted(info.functions)) or "none"
            raise NotFoundError(
                f"{target.site}.{target.module} has no function {target.function!r}",
                hint=f"it serves: {known}",
            )
        timeout = timeout if timeout is not None else self.default_timeout
        plaintext = codec.encode_many(kwargs)
        key = new_content_key()
        ciphertext = seal_secret(key, plaintext)
        rid = _new_request_id()
        header = RequestHeader(
            id=rid,
            caller=self.identity,
            kid=self.keys.kid,
            site=target.site,
            module=target.module,
            function=target.function,
            time=now(),
            nonce=b64e(secrets.token_bytes(16)),
            timeout_ms=max(1, int(timeout * 1000)),
            reply=self._inbox,
            schema_hash=fn.get("schema_hash"),
            payload_hash=blake2b_256(ciphertext).hex(),
            payload_size=len(ciphertext),
            wraps={
                info.node_kid: b64e(
                    wrap_key(self.keys.box_secret, self._box_public, info.node_box_key, key)
                )
            },
        )
        data = pack_request(header, ciphertext, self.keys.signing_key)
        node_limit = int(info.info.get("max_payload") or 0)
        limits = [x for x in (self.nc.max_payload, node_limit) if x]
        limit = min(limits) if limits else 0
        if limit and len(data) > limit:
            raise OversizeError(
                f"arguments of {address} encrypt to {len(data):,} bytes; the limit on the "
                f"way to {target.site} is {limit:,}",
                hint="pass less data per call, or ask the operator to raise max_payload",
            )
        loop = asyncio.get_running_loop()
        handle = CallHandle(
            rid,
            target.address,
            self,
            key,
            info.node_box_key,
            loop.time() + timeout + _GRACE,
            loop.create_future(),
            on_progress,
        )
        self._pending[rid] = handle
        subject = call_subject(target.site, target.module, target.function)
        try:
            # publish_async: the stream's ack resolves a future (no task per call)
            ack = await self.js.publish_async(subject, data, headers={"Nats-Msg-Id": rid})
            await wait_acks([ack], min(10.0, timeout + _GRACE))
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError) as exc:
            self._pending.pop(rid, None)
            raise NotFoundError(
                f"site {target.site} takes no calls right now (no call stream is reachable)",
                hint="is the site's node running and its leaf connected?",
            ) from exc
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            self._pending.pop(rid, None)
            raise CallTimeoutError(f"site {target.site} did not confirm the call {rid}") from exc
        except nats.js.errors.APIError as exc:
            self._pending.pop(rid, None)
            raise TransportError(f"the call stream refused {rid}: {exc.description}") from exc
        return handle

    async def call(
        self,
        address: str,
        arguments: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> Any:
        """Call ``site.module.function`` with keyword arguments and return its result."""
        handle = await self.submit(
            address, arguments, timeout=timeout, on_progress=on_progress, **kwargs
        )
        try:
            return await handle.result()
        finally:
            self._pending.pop(handle.request_id, None)

    async def status(self, site: str, request_id: str) -> dict[str, Any]:
        """The node's record of one of my requests."""
        reply = await self._control("status", site, request_id)
        value: dict[str, Any] = reply
        return value

    async def fetch(self, site: str, request_id: str) -> Any:
        """The result of one of my earlier calls, as stored by the node, opened again.

        For a caller that lost the original reply (a closed notebook, a dropped link):
        the node sends the sealed result it kept and logs ``result.fetched``. Raises
        NotFoundError when the request has no result, or none was kept.
        """
        state = await self.status(site, request_id)
        target = parse_address(str(state.get("address") or ""))
        info = await self.module_info(target.site, target.module)
        reply = unpack_reply(await self._control("fetch", site, request_id, frame=True))
        h = reply.header
        if h.kind != "result" or h.id != request_id:
            raise CanonicalError(f"site {site} answered the fetch of {request_id} wrongly")
        if blake2b_256(reply.body).hex() != h.result_hash or h.result_hash != state.get(
            "result_hash"
        ):
            raise IntegrityError(f"the stored result of {request_id} does not match its hash")
        return self._open_result(h.wraps, reply.body, info.node_box_key)

    def _open_result(self, wraps: Mapping[str, str], body: bytes, node_box_key: bytes) -> Any:
        """Open a result sealed for my key by the node key I checked (DecryptionError if
        it is not sealed for me, or not by that node)."""
        wrapped_text = wraps.get(self.keys.kid)
        if wrapped_text is None:
            raise DecryptionError("the result is not sealed for my key")
        wrapped = b64d(wrapped_text)
        if wrapped[:32] != node_box_key:
            raise DecryptionError("the result was not sealed by the node key I checked")
        key = unwrap_key(self.keys.box_secret, wrapped)
        return codec.decode(open_secret(key, body))

    async def _control(self, op: str, site: str, request_id: str, *, frame: bool = False) -> Any:
        try:
            header = ControlHeader(
                op=op,
                id=request_id,
                caller=self.identity,
                kid=self.keys.kid,
                time=now(),
                nonce=b64e(secrets.token_bytes(12)),
            )
        except PydanticValidationError as exc:
            raise ConfigError(f"{request_id!r} is not a request id") from exc
        try:
            msg = await self.nc.request(
                status_subject(site), pack_control(header, self.keys.signing_key), timeout=5.0
            )
        except nats.errors.NoRespondersError as exc:
            raise NotFoundError(f"site {site} is not reachable") from exc
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            raise CallTimeoutError(f"site {site} did not answer the {op} request") from exc
        if frame and msg.data[:4] == REPLY_MAGIC:
            return msg.data
        try:
            answer = json.loads(msg.data)
        except ValueError as exc:
            raise CanonicalError(f"malformed {op} answer from {site}") from exc
        if "error" in answer:
            err = answer["error"]
            raise remote_error_from_code(err.get("code", "remote_error"), err.get("message", ""))
        if frame:
            raise CanonicalError(f"site {site} answered the {op} request without a result")
        return answer

    # -- the inbox -------------------------------------------------------------------------

    async def _on_reply(self, msg: Msg) -> None:
        try:
            reply = unpack_reply(msg.data)
        except CanonicalError as exc:
            log.warning("client.reply_malformed", reason=str(exc))
            return
        h = reply.header
        handle = self._pending.get(h.id)
        if handle is None or handle._future.done():
            return
        try:
            if h.kind == "progress":
                text = open_secret(handle._content_key, reply.body).decode() if reply.body else ""
                fraction = None if h.fraction_ppm is None else h.fraction_ppm / 1_000_000
                handle._deliver_progress(fraction, text)
            elif h.kind == "result":
                handle._future.set_result(
                    self._open_result(h.wraps, reply.body, handle._node_box_key)
                )
            else:
                message = h.message or ""
                if reply.body:
                    message = open_secret(handle._content_key, reply.body).decode()
                handle._future.set_exception(_error(h.code or "remote_error", message, handle))
        except (FederationError, KeyError, UnicodeDecodeError) as exc:
            log.warning("client.reply_rejected", request_id=h.id, reason=str(exc))
            if not handle._future.done() and h.kind != "progress":
                handle._future.set_exception(
                    DecryptionError(f"answer to {h.id} could not be opened: {exc}")
                )


async def _log_nats_error(exc: Exception) -> None:
    """nats-py's error callback: one log line instead of a traceback per attempt."""
    log.debug("client.nats_error", error=str(exc) or type(exc).__name__)


def _new_request_id() -> str:
    """128 random bits, URL-safe, never starting with ``-`` (so it is no CLI option)."""
    while True:
        rid = secrets.token_urlsafe(16)
        if not rid.startswith("-"):
            return rid


def _error(code: str, message: str, handle: CallHandle) -> FederationError:
    if code == "timeout":
        return CallTimeoutError(message or f"{handle.address} ran out of time at the node")
    if code in ("cancelled", "interrupted"):
        return CallCancelledError(message or f"{handle.address} was cancelled", code=code)
    return remote_error_from_code(code, message or f"{handle.address} failed ({code})")


# --- the sync twin ----------------------------------------------------------------------


class SyncClient:
    """Blocking twin of :class:`Client`, safe inside Jupyter (its loop runs in a thread)."""

    def __init__(self, factory: Callable[[], Awaitable[Client]]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fedhub-client", daemon=True
        )
        self._thread.start()
        try:
            self._client: Client = self._run(factory())
        except BaseException:
            self._stop_loop()
            raise
        self._closed = False

    def _run(self, coro: Coroutine[Any, Any, T] | Awaitable[T], timeout: float | None = None) -> T:
        async def wrap() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self._loop).result(timeout)

    def call(
        self,
        address: str,
        arguments: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> Any:
        """Call and wait for the result."""
        return self._run(
            self._client.call(
                address, arguments, timeout=timeout, on_progress=on_progress, **kwargs
            )
        )

    def submit(
        self,
        address: str,
        arguments: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        **kwargs: Any,
    ) -> SyncCallHandle:
        """Send a call; returns a blocking handle."""
        handle = self._run(
            self._client.submit(
                address, arguments, timeout=timeout, on_progress=on_progress, **kwargs
            )
        )
        return SyncCallHandle(self, handle)

    def status(self, site: str, request_id: str) -> dict[str, Any]:
        """The node's record of one of my requests."""
        return self._run(self._client.status(site, request_id))

    def fetch(self, site: str, request_id: str) -> Any:
        """The stored result of one of my earlier calls (see :meth:`Client.fetch`)."""
        return self._run(self._client.fetch(site, request_id))

    def module_info(self, site: str, module: str) -> ModuleInfo:
        """A module's verified info."""
        return self._run(self._client.module_info(site, module))

    @property
    def client(self) -> Client:
        """The async client underneath (use only from its own loop)."""
        return self._client

    def close(self) -> None:
        """Close the client and stop its loop; harmless twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._client.aclose(), timeout=10)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SyncCallHandle:
    """Blocking view of a :class:`CallHandle`."""

    _owner: SyncClient
    _handle: CallHandle

    @property
    def request_id(self) -> str:
        """The request id (for `fedhub status`)."""
        return self._handle.request_id

    @property
    def progress(self) -> tuple[float | None, str]:
        """The latest progress report: (fraction or None, message)."""
        return self._handle.progress

    def done(self) -> bool:
        """Whether the outcome has arrived."""
        return self._handle.done()

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the result."""
        return self._owner._run(self._handle.result(timeout))

    def status(self) -> dict[str, Any]:
        """The node's record of this request."""
        return self._owner._run(self._handle.status())

    def cancel(self) -> dict[str, Any]:
        """Ask the node to cancel; returns its answer."""
        return self._owner._run(self._handle.cancel())


def connect(
    url: str,
    identity: str,
    *,
    home: Path | None = None,
    passphrase: str | None = None,
    credentials: str | None = None,
    default_timeout: float = 300.0,
    creds: str | Path | None = None,
    tls: ssl.SSLContext | str | Path | None = None,
) -> SyncClient:
    """A blocking client for scripts and notebooks: ``with connect(url, me) as fed: ...``.

    ``creds`` and ``tls`` as for :meth:`Client.connect`.
    """
    return SyncClient(
        lambda: Client.connect(
            url,
            identity,
            home=home,
            passphrase=passphrase,
            credentials=credentials,
            default_timeout=default_timeout,
            creds=creds,
            tls=tls,
        )
    )
