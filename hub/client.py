"""Calling remote functions: the async :class:`Client` and its call handles.

::

    async with await Client.connect(url, "klaus@geomar") as fed:
        total = await fed.call("hereon.climate.compute_sum", da=da)

    with connect(url, "klaus@geomar") as fed:          # sync: hub.sync_client
        handle = fed.submit("hereon.climate.slow_mean", da=da)
        handle.result(timeout=60)

A call: fetch (once) and verify the module's info (schemas + the node key record signed by
the site key the client pinned) → encode the arguments (:mod:`hub.codec`) → encrypt them
with a fresh content key wrapped for the node key → sign the header → publish to the
site's call stream (JetStream, ``Nats-Msg-Id`` = request id) → wait on the caller's own
inbox for progress and the result, each opened with keys only the node and the caller
hold. Every call has a deadline; nothing waits forever.

A reply lost on the way (a server or link down while the node finished) does not leave
the caller waiting: after every reconnect, when a call has heard nothing from its node for
a while (10 s, then at growing intervals), and once more shortly before a call's deadline,
the client asks the node about each call still waiting (:meth:`Client.recover`) and
settles it from the answer: the stored result, or the call's typed error.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import ssl
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from pydantic import ValidationError as PydanticValidationError

from hub import call_bulk, codec
from hub.answers import CancelAnswer, RequestStatus, ask_service, error_from_headers, parse_answer
from hub.bulk import chunk_size_for
from hub.call_handle import CallHandle, ModuleInfo, ProgressCallback, TransferCallback
from hub.call_recovery import CONTROL_TIMEOUT, RECOVER_TRIES, Recovery, call_error
from hub.canonical import b64d, b64e
from hub.client_transport import CallAcks, open_connection, publish_call
from hub.clock import now
from hub.crypto import (
    WrappedPayload,
    blake2b_256,
    open_content_key,
    open_payload,
    open_secret,
    seal_payload,
)
from hub.envelopes import (
    MAX_KEEP_FOR,
    MAX_TIMEOUT_MS,
    REPLY_MAGIC,
    ControlHeader,
    Reply,
    call_fields,
    pack_control,
    pack_request,
    unpack_reply,
)
from hub.errors import (
    ArgumentError,
    CallTimeoutError,
    CanonicalError,
    ConfigError,
    DecryptionError,
    FederationError,
    IntegrityError,
    NotFoundError,
    OversizeError,
    TransportError,
)
from hub.keys import KeyPair, KeyStore
from hub.refs import stage_refs
from hub.results_api import ResultsMixin
from hub.subjects import (
    inbox_subject,
    info_subject,
    parse_address,
    status_subject,
    validate_identity,
)
from hub.sync_client import SyncCallHandle, SyncClient, connect

__all__ = [
    "CallHandle",
    "Client",
    "ModuleInfo",
    "ProgressCallback",
    "SyncCallHandle",
    "SyncClient",
    "connect",
]

log = structlog.get_logger(__name__)


#: Extra time the client waits past a call's own timeout for the node's answer to arrive.
_GRACE = 5.0


class Client(ResultsMixin):
    """An identity's connection to the federation. Use as an async context manager.

    Made by :meth:`connect`; when you build one on a NATS connection of your own, pass its
    ``reconnected_cb`` on to :meth:`on_reconnected`, so replies lost meanwhile are asked for.
    """

    def __init__(
        self,
        nc: NatsClient,
        keys: KeyPair,
        trusted_sites: dict[str, bytes],
        *,
        default_timeout: float = 300.0,
        owns_connection: bool = True,
        bulk_threshold: int | None = None,
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
        #: Encoded arguments above this many bytes go as a bulk transfer (None: half of
        #: the smaller of the server's and the node's max_payload).
        self.bulk_threshold = bulk_threshold
        self._owns = owns_connection
        self.js = nc.jetstream()
        self._acks = CallAcks(nc)
        self._inbox = inbox_subject(self.site, self.user, secrets.token_urlsafe(12))
        self._sub: Any = None
        self._pending: dict[str, CallHandle] = {}
        #: (site, module) → its verified info, and the answer and pinned site key it was
        #: verified from (the same answer again needs no new check).
        self._modules: dict[tuple[str, str], tuple[ModuleInfo, bytes, bytes]] = {}
        self._closed = False
        self._box_public = keys.box_public
        self._recovery = Recovery(self)

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
        reconnect_attempts: int = 120,
        creds: str | Path | None = None,
        tls: ssl.SSLContext | str | Path | None = None,
    ) -> Client:
        """Load ``identity``'s keys and the pinned site keys from the key store, connect.

        A lost connection is tried again ``reconnect_attempts`` times, half a second apart;
        after each reconnect the calls still waiting are asked about (:meth:`recover`).
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
        made: list[Client] = []

        async def reconnected() -> None:
            for client in made:
                client.on_reconnected()

        nc = await open_connection(
            url,
            identity,
            creds=creds or credentials,
            tls=tls,
            connect_timeout=connect_timeout,
            reconnect_attempts=reconnect_attempts,
            on_reconnected=reconnected,
        )
        client = cls(nc, keys, trusted, default_timeout=default_timeout)
        made.append(client)
        await client.start()
        return client

    async def start(self) -> None:
        """Subscribe to this client's inbox (done by :meth:`connect`)."""
        if self._sub is None:
            self._sub = await self.nc.subscribe(self._inbox, cb=self._on_reply)
        await self._acks.start()

    async def aclose(self) -> None:
        """Fail pending calls, drain the connection; harmless twice."""
        if self._closed:
            return
        self._closed = True
        self._recovery.cancel_all()
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
        await self._acks.stop()
        if self._owns and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except (TimeoutError, nats.errors.Error):
                # e.g. still reconnecting: stop trying, or the attempts would go on
                try:
                    await self.nc.close()
                except nats.errors.Error:
                    pass
                except asyncio.CancelledError:
                    # nats-py's close may raise the cancel of its own reading task
                    # while a reconnect is under way; only a cancel of ours goes on
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise

    async def __aenter__(self) -> Client:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- discovery -------------------------------------------------------------------------

    async def module_info(self, site: str, module: str, *, refresh: bool = False) -> ModuleInfo:
        """A module's schemas and its node key, verified against the pinned site key."""
        cached = self.cached_info(site, module)
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
        self._site_key(site)  # an unpinned site is a ConfigError, whatever it answered
        if (error := error_from_headers(msg.headers)) is not None:
            raise error
        return self.remember_info(site, module, msg.data)

    def cached_info(self, site: str, module: str) -> ModuleInfo | None:
        """The module's info this client verified last, without asking (None: none yet)."""
        known = self._modules.get((site, module))
        return known[0] if known is not None else None

    def _site_key(self, site: str) -> bytes:
        site_key = self.trusted_sites.get(site)
        if site_key is None:
            raise ConfigError(
                f"site {site} is not pinned in this key store",
                hint=f"import its public key: fedhub keys import site-{site}.pub",
            )
        return site_key

    def remember_info(self, site: str, module: str, data: bytes) -> ModuleInfo:
        """Verify a module info answer (fresh, or kept: ``fedhub call --queue``); use it."""
        site_key = self._site_key(site)
        key = (site, module)
        known = self._modules.get(key)
        if known is not None and known[1:] == (data, site_key):
            return known[0]  # the same bytes, checked against the same key: no new check
        mi = ModuleInfo.verified(site, module, data, site_key)
        self._modules[key] = (mi, data, site_key)
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
        on_transfer: TransferCallback | None = None,
        result_path: Path | None = None,
        compress: bool = False,
        keep: float | timedelta | None = None,
        gate: Callable[[], Awaitable[object]] | None = None,
        **kwargs: Any,
    ) -> CallHandle:
        """Send a call and return its handle without waiting for the result.

        Arguments go as keywords, or as a mapping (for parameters named like this method's
        own options, e.g. a remote ``timeout``): ``submit(addr, {"timeout": 5})``.
        Arguments or results too large for one message travel as bulk transfers
        (docs/calling.md, "Large data"): ``on_transfer`` gets their progress,
        ``result_path`` receives a large NetCDF result straight into a file (the result
        is then a :class:`hub.bulk.SavedTo`), ``compress`` zstd-compresses the chunks.
        ``keep`` (seconds or a timedelta) asks the node to keep the result only that long
        after the call completed, 0 to keep no copy (docs/results.md, "Retention"); the
        node keeps it no longer than the module's keep-for time. ``gate()`` is awaited once
        the call is ready, just before it is sent; when it raises, nothing is sent (the CLI
        checks that the module's node answers while the call is sealed).
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
        timeout_ms = max(1, int(timeout * 1000))
        if timeout_ms > MAX_TIMEOUT_MS:
            raise ArgumentError(
                f"timeout={timeout!r} is longer than a call may wait",
                hint=f"give at most {MAX_TIMEOUT_MS // 1000:,} seconds (7 days)",
            )
        keep_for = keep_seconds(keep)
        node_limit = info.info.max_payload
        limits = [x for x in (self.nc.max_payload, node_limit) if x]
        limit = min(limits) if limits else 0
        threshold = self.bulk_threshold or (limit // 2 if limit else 4 * 1024 * 1024)
        own = int(self.nc.max_payload or 0)
        # a reply above what my server carries would break my link: tell the node
        reply_max = own if 0 < own < node_limit else None
        rid, nonce = _new_request_id()
        kwargs, refs = await stage_refs(self, kwargs, info, rid)
        plan = call_bulk.plan_arguments(kwargs, threshold)
        sealed = seal_payload(
            plan.inline_bytes(),
            self.keys.box_secret,
            self._box_public,
            {info.node_kid: info.node_box_key},
        )
        key = sealed.content_key
        assert key is not None  # the sealer always keeps it
        ciphertext = sealed.ciphertext
        spool, bulk, saving = None, None, None
        if plan.in_bulk:
            chunk = chunk_size_for(int(self.nc.max_payload))
            spool, bulk, saving = await call_bulk.seal_arguments(
                plan, key, compress=compress, chunk_size=chunk
            )
        # the header's values are well formed by construction (ids and keys of our own,
        # the parsed address, the node's verified info, the checked options)
        header = call_fields(
            id=rid,
            caller=self.identity,
            kid=self.keys.kid,
            site=target.site,
            module=target.module,
            function=target.function,
            time=now(),
            nonce=nonce,
            timeout_ms=timeout_ms,
            reply=self._inbox,
            schema_hash=fn.schema_hash or None,
            payload_hash=blake2b_256(ciphertext).hex(),
            payload_size=len(ciphertext),
            wraps={kid: b64e(w) for kid, w in sealed.wraps.items()},
            bulk=bulk,
            refs=refs,
            keep_for=keep_for,
            reply_max=reply_max,
        )
        data = pack_request(header, ciphertext, self.keys.signing_key)
        if limit and len(data) > limit:
            raise OversizeError(
                f"arguments of {address} encrypt to {len(data):,} bytes; the limit on the "
                f"way to {target.site} is {limit:,}",
                hint="pass less data per call, or ask the operator to raise max_payload",
            )
        if gate is not None:
            try:
                await gate()
            except BaseException:
                if spool is not None:
                    spool.unlink(missing_ok=True)
                raise
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
            on_transfer=on_transfer,
            result_path=result_path,
            saved=saving if compress else None,
        )
        self._pending[rid] = handle
        subject = target.subject  # validated when the address was parsed
        try:
            await publish_call(self._acks, subject, data, rid, loop.time() + timeout)
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError) as exc:
            self._pending.pop(rid, None)
            raise NotFoundError(
                f"site {target.site} takes no calls right now (no call stream is reachable)",
                hint="is the site's node running and its leaf connected?",
            ) from exc
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            self._pending.pop(rid, None)
            raise CallTimeoutError(
                f"site {target.site} did not confirm the call {rid} within its deadline"
            ) from exc
        except nats.js.errors.APIError as exc:
            self._pending.pop(rid, None)
            raise TransportError(f"the call stream refused {rid}: {exc.description}") from exc
        finally:
            if spool is not None and rid not in self._pending:
                spool.unlink(missing_ok=True)
        if spool is not None and bulk is not None:
            upload = call_bulk.upload(self.nc, handle, (self.site, self.user), spool, bulk, timeout)
            handle._track(loop.create_task(upload))
        if not handle.done():
            self._recovery.watch(handle)
        return handle

    async def call(
        self,
        address: str,
        arguments: Mapping[str, Any] | None = None,
        /,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        on_transfer: TransferCallback | None = None,
        compress: bool = False,
        keep: float | timedelta | None = None,
        **kwargs: Any,
    ) -> Any:
        """Call ``site.module.function`` with keyword arguments and return its result
        (the options as for :meth:`submit`)."""
        handle = await self.submit(
            address,
            arguments,
            timeout=timeout,
            on_progress=on_progress,
            on_transfer=on_transfer,
            compress=compress,
            keep=keep,
            **kwargs,
        )
        try:
            return await handle._result_alone()
        finally:
            self._forget(handle.request_id)

    def _forget(self, request_id: str) -> None:
        """Stop waiting for ``request_id``: a late reply or recovery is dropped."""
        self._pending.pop(request_id, None)
        self._recovery.forget(request_id)

    async def status(
        self, site: str, request_id: str, *, timeout: float = CONTROL_TIMEOUT
    ) -> RequestStatus:
        """The node's record of one of my requests."""
        data = await self._control("status", site, request_id, timeout=timeout)
        return parse_answer(RequestStatus, data, f"status answer from {site}")

    async def cancel(self, site: str, request_id: str) -> CancelAnswer:
        """Ask the node to cancel one of my calls (see :meth:`CallHandle.cancel`)."""
        data = await self._control("cancel", site, request_id)
        return parse_answer(CancelAnswer, data, f"cancel answer from {site}")

    async def fetch(self, site: str, request_id: str, *, result_path: Path | None = None) -> Any:
        """The result of one of my earlier calls, as stored by the node, opened again.

        For a caller that lost the original reply (a closed notebook, a dropped link):
        the node sends the sealed result it kept and logs ``result.fetched``. Raises
        NotFoundError when the request has no result, or none was kept. A large result
        comes as a bulk transfer; a NetCDF one goes straight to ``result_path`` if given.
        """
        state = await self.status(site, request_id)
        return await self._fetch(site, state, result_path=result_path)

    async def _fetch(
        self,
        site: str,
        state: RequestStatus,
        *,
        timeout: float = CONTROL_TIMEOUT,
        result_path: Path | None = None,
    ) -> Any:
        """Fetch and open the stored result of a request whose status is ``state``."""
        target = parse_address(state.address or "")
        info = await self.module_info(target.site, target.module)
        data = await self._control("fetch", site, state.request_id, timeout=timeout)
        if data[:4] != REPLY_MAGIC:
            raise CanonicalError(f"site {site} answered the fetch request without a result")
        reply = unpack_reply(data)
        h = reply.header
        if h.kind != "result" or h.id != state.request_id:
            raise CanonicalError(f"site {site} answered the fetch of {state.request_id} wrongly")
        if h.result_hash != state.result_hash:
            raise IntegrityError(f"the stored result of {state.request_id} is another one")
        return await self.open_sealed_reply(
            site,
            reply,
            info.node_box_key,
            what=f"the stored result of {state.request_id}",
            result_path=result_path,
        )

    async def open_sealed_reply(
        self,
        site: str,
        reply: Reply,
        sender: bytes,
        *,
        what: str,
        result_path: Path | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Open a result answer sealed for my key by the node key ``sender`` I checked: a
        small one from its body, a large one received as the bulk transfer it announces,
        each checked against the header's ``result_hash`` (which the caller compares with
        the hash it expects). ``what`` names the result in errors."""
        h = reply.header
        key = self._result_key(h.wraps, sender)
        if h.bulk is not None:  # a large result follows as a bulk transfer
            if h.bulk.hash != h.result_hash:
                raise IntegrityError(f"{what} announced another payload")
            return await call_bulk.receive_result(
                self.nc,
                (self.site, self.user),
                site,
                h,
                key,
                result_path=result_path,
                progress=None,
                timeout=timeout if timeout is not None else max(self.default_timeout, 60.0),
            )
        if blake2b_256(reply.body).hex() != h.result_hash:
            raise IntegrityError(f"{what} does not match its hash")
        return codec.decode(open_secret(key, reply.body))

    def _open_result(self, wraps: Mapping[str, str], body: bytes, node_box_key: bytes) -> Any:
        """Open a result sealed for my key by the node key I checked (DecryptionError if
        it is not sealed for me, or not by that node)."""
        mine = wraps.get(self.keys.kid)
        payload = WrappedPayload(body, {self.keys.kid: b64d(mine)} if mine else {})
        plaintext = open_payload(payload, self.keys.kid, self.keys.box_secret, sender=node_box_key)
        return codec.decode(plaintext)

    def _result_key(self, wraps: Mapping[str, str], node_box_key: bytes) -> bytes:
        """The content key of a result, wrapped for me by the node key I checked."""
        return open_content_key(
            {kid: b64d(w) for kid, w in wraps.items()},
            self.keys.kid,
            self.keys.box_secret,
            sender=node_box_key,
        )

    async def _control(
        self, op: str, site: str, request_id: str, *, timeout: float = CONTROL_TIMEOUT
    ) -> bytes:
        """Send a signed control message; the answer's body, or the error it reports."""
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
        return await ask_service(
            self.nc,
            status_subject(site),
            pack_control(header, self.keys.signing_key),
            timeout=timeout,
            unreachable=f"site {site} is not reachable",
            silent=f"site {site} did not answer the {op} request",
        )

    # -- lost replies ----------------------------------------------------------------------

    def on_reconnected(self) -> None:
        """Ask the node about every call still waiting (a reply may have been lost while
        the connection was down). :meth:`connect` wires this to nats-py's reconnect."""
        self._recovery.all_waiting()

    async def recover(
        self, handle: CallHandle, *, last: bool = False, tries: int = RECOVER_TRIES
    ) -> None:
        """Settle a waiting call from the node's record, if the call ended there.

        Asks for the status (up to ``tries`` times, while the node cannot be reached yet);
        a completed call is delivered from its stored result, a failed or rejected one
        raises its typed error; a call still running is left to its reply. ``last``
        (shortly before the deadline): a call that completed without a kept result (or
        whose kept copy is gone) fails at once, as the reply that carried it is lost for
        good. The client does this by itself (:mod:`hub.call_recovery` says when).
        """
        await self._recovery.recover(handle, last, tries)

    # -- the inbox -------------------------------------------------------------------------

    async def _on_reply(self, msg: Msg) -> None:
        try:
            reply = unpack_reply(msg.data)
        except CanonicalError as exc:
            log.warning("client.reply_malformed", reason=str(exc))
            return
        h = reply.header
        handle = self._pending.get(h.id)
        if handle is None or handle.done():
            return
        handle._heard = asyncio.get_running_loop().time()
        try:
            if h.kind == "progress":
                text = open_secret(handle._content_key, reply.body).decode() if reply.body else ""
                fraction = None if h.fraction_ppm is None else h.fraction_ppm / 1_000_000
                handle._deliver_progress(fraction, text)
            elif h.kind == "result" and h.bulk is not None:  # the result follows in bulk
                self._result_key(h.wraps, handle._node_box_key)  # not for me: refuse now
                job = call_bulk.download(self.nc, handle, (self.site, self.user), h)
                handle._track(asyncio.get_running_loop().create_task(job))
            elif h.kind == "result":
                handle._settle(self._open_result(h.wraps, reply.body, handle._node_box_key))
            elif h.code == "duplicate":
                # a redelivered copy of this call, answered by the node as ended: its
                # outcome was sent before. Being received now, or lost: then ask for it
                if not handle._transfers:
                    self._recovery.soon(handle, False)
            else:
                message = h.message or ""
                if reply.body:
                    message = open_secret(handle._content_key, reply.body).decode()
                handle._settle(error=call_error(h.code or "remote_error", message, handle.address))
        except (FederationError, KeyError, UnicodeDecodeError) as exc:
            log.warning("client.reply_rejected", request_id=h.id, reason=str(exc))
            if h.kind != "progress":
                handle._settle(
                    error=DecryptionError(f"answer to {h.id} could not be opened: {exc}")
                )


def keep_seconds(keep: float | timedelta | None) -> int | None:
    """A call's ``keep`` option as whole seconds for its header (None: not asked);
    ArgumentError when it is negative or longer than a header may say."""
    if keep is None:
        return None
    seconds = keep.total_seconds() if isinstance(keep, timedelta) else float(keep)
    if not 0 <= seconds <= MAX_KEEP_FOR:
        raise ArgumentError(
            f"keep={keep!r} is no keep-for time",
            hint="give seconds or a timedelta, 0 (keep no copy) up to 100 years",
        )
    return math.ceil(seconds)


def _new_request_id() -> tuple[str, str]:
    """A request id (128 random bits, URL-safe, never starting with ``-``, so it is no CLI
    option) and the header's nonce (128 more), from one read of the system's randomness."""
    while True:
        raw = secrets.token_bytes(32)
        rid, nonce = b64e(raw[:16]), b64e(raw[16:])
        if not rid.startswith("-"):
            return rid, nonce
