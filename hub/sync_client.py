"""The blocking twin of :class:`hub.client.Client`, for scripts and notebooks.

::

    with connect() as fed:                     # $FEDHUB_URL, $FEDHUB_IDENTITY, as the CLI
        handle = fed.submit("hereon.climate.slow_mean", da=da)
        handle.result(timeout=60)
        with fed.executor() as ex:             # a concurrent.futures.Executor
            sums = list(ex.map("hereon.climate.compute_sum", fields))

The async client runs on an event loop of its own, in a daemon thread; each blocking
method hands a coroutine to that loop and waits for it. A :class:`SyncCallHandle` is a
:class:`concurrent.futures.Future`: ``concurrent.futures.wait`` and ``as_completed`` take
it, and asyncio code (a notebook cell) can ``await`` it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from hub.errors import CallTimeoutError, FederationError, TransportError
from hub.refs import Ref

if TYPE_CHECKING:
    from hub.answers import (
        CancelAnswer,
        DeletedAnswer,
        KeepAnswer,
        RequestStatus,
        ShareAnswer,
        TagsAnswer,
    )
    from hub.call_handle import CallHandle, ModuleInfo, ProgressCallback
    from hub.client import Client
    from hub.executor import FedExecutor
    from hub.results_client import RequestList

__all__ = ["SyncCallHandle", "SyncClient", "connect"]

T = TypeVar("T")


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
        self._handles: weakref.WeakSet[SyncCallHandle] = weakref.WeakSet()

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
        progress_bar: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Call and wait for the result.

        ``progress_bar``: show the call's progress as a tqdm bar (a notebook widget in
        Jupyter, text elsewhere); default: in Jupyter only.
        """
        from hub.progressbar import CallProgressBar, in_notebook

        show = in_notebook() if progress_bar is None else progress_bar
        bar = CallProgressBar(address) if show else None
        report = bar.chain(on_progress) if bar is not None else on_progress
        try:
            return self._run(
                self._client.call(address, arguments, timeout=timeout, on_progress=report, **kwargs)
            )
        finally:
            if bar is not None:
                bar.close()

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
        sync = SyncCallHandle(self, handle)
        self._handles.add(sync)
        return sync

    def executor(
        self, *, timeout: float | None = None, max_in_flight: int | None = None
    ) -> FedExecutor:
        """A :class:`concurrent.futures.Executor` whose ``submit``/``map`` call remote
        functions by address (see :class:`hub.executor.FedExecutor`)."""
        from hub.executor import FedExecutor

        return FedExecutor(self, timeout=timeout, max_in_flight=max_in_flight)

    def status(self, site: str, request_id: str) -> RequestStatus:
        """The node's record of one of my requests."""
        return self._run(self._client.status(site, request_id))

    def fetch(self, site: str, request_id: str, *, result_path: Path | None = None) -> Any:
        """The stored result of one of my earlier calls (see :meth:`Client.fetch`)."""
        return self._run(self._client.fetch(site, request_id, result_path=result_path))

    # -- kept results (see hub.results_client) -------------------------------------------

    def requests(self, sites: Iterable[str] | str | None = None, **filters: Any) -> RequestList:
        """My requests (and those shared with me) across sites (:meth:`Client.requests`)."""
        found: RequestList = self._run(self._client.requests(sites, **filters))
        return found

    def result(
        self, request_id: str, *, site: str, result_path: Path | None = None
    ) -> SyncCallHandle:
        """A handle on an earlier request whose ``result()`` is its kept result."""
        handle = self._run(self._client.result(request_id, site=site, result_path=result_path))
        return SyncCallHandle(self, handle)

    def result_slice(
        self,
        request_id: str,
        *,
        site: str,
        isel: Mapping[str, int | slice] | None = None,
        variables: Iterable[str] | None = None,
        result_path: Path | None = None,
    ) -> Any:
        """Part of my kept xarray result, without the rest (:meth:`Client.result_slice`)."""
        return self._run(
            self._client.result_slice(
                request_id, site=site, isel=isel, variables=variables, result_path=result_path
            )
        )

    def open_result(
        self, request_id: str, *, site: str, chunks: Mapping[str, int] | None = None
    ) -> Any:
        """My kept xarray result, lazy: blocks are fetched when computed
        (:meth:`Client.open_result`)."""
        return self._run(self._client.open_result(request_id, site=site, chunks=chunks))

    @staticmethod
    def ref(site: str, request_id: str) -> Ref:
        """My kept result ``request_id`` at ``site``, as an argument by reference."""
        return Ref(site, request_id)

    def share(self, site: str, request_id: str, principal: str) -> ShareAnswer:
        """Share a kept result with ``name@site`` or ``group:NAME``."""
        return self._run(self._client.share(site, request_id, principal))

    def unshare(self, site: str, request_id: str, principal: str) -> ShareAnswer:
        """Withdraw a share."""
        return self._run(self._client.unshare(site, request_id, principal))

    def tag(
        self,
        site: str,
        request_id: str,
        add: Iterable[str] = (),
        remove: Iterable[str] = (),
        *,
        shared: bool = False,
    ) -> TagsAnswer:
        """Tag my result (private, or ``shared``)."""
        return self._run(self._client.tag(site, request_id, add, remove, shared=shared))

    def keep_result(self, site: str, request_id: str, keep_for: float) -> KeepAnswer:
        """Keep my result only ``keep_for`` seconds after its call."""
        return self._run(self._client.keep_result(site, request_id, keep_for))

    def delete_result(self, site: str, request_id: str) -> DeletedAnswer:
        """Remove the kept result of my request now."""
        return self._run(self._client.delete_result(site, request_id))

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
            for handle in list(self._handles):  # nobody is left to settle them
                handle._fail(TransportError("the client was closed before the call ended"))

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncCallHandle(concurrent.futures.Future[Any]):
    """Blocking view of a :class:`CallHandle`, and a :class:`concurrent.futures.Future` of
    the call's result: ``wait``, ``as_completed`` and ``add_done_callback`` work as for any
    future, and asyncio code can ``await`` it."""

    def __init__(self, owner: SyncClient, handle: CallHandle) -> None:
        super().__init__()
        self._owner = owner
        self._handle = handle
        asyncio.run_coroutine_threadsafe(self._settle_from(handle), owner._loop)

    async def _settle_from(self, handle: CallHandle) -> None:
        try:
            value = await handle.result()
        except BaseException as exc:  # the call's own error (or a deadline) is its outcome
            self._fail(exc)
        else:
            if not self.done():
                self.set_result(value)

    def _fail(self, exc: BaseException) -> None:
        if not self.done():
            self.set_exception(exc)

    @property
    def request_id(self) -> str:
        """The request id (for `fedhub status`)."""
        return self._handle.request_id

    @property
    def address(self) -> str:
        """The called function's address."""
        return self._handle.address

    @property
    def progress(self) -> tuple[float | None, str]:
        """The latest progress report: (fraction or None, message)."""
        return self._handle.progress

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the result; the call's typed error, or CallTimeoutError after ``timeout``
        seconds (the call goes on: wait again, or cancel it)."""
        try:
            return super().result(timeout)
        except TimeoutError as exc:
            if isinstance(exc, FederationError):
                raise
            raise CallTimeoutError(
                f"no answer for {self.address} (request {self.request_id}) within {timeout:g} s",
                hint="the call goes on: wait again, or cancel() it",
            ) from None

    def status(self) -> RequestStatus:
        """The node's record of this request."""
        return self._owner._run(self._handle.status())

    def cancel(self) -> bool:
        """Ask the node to cancel the call; whether it is stopping it (or will not start
        it). The handle then ends with CallCancelledError. False once the call is over."""
        if self.done():
            return False
        return bool(self.cancel_call().cancelling)

    def cancel_call(self) -> CancelAnswer:
        """Ask the node to cancel; its full answer (``cancelling`` and the call's state)."""
        return self._owner._run(self._handle.cancel())

    def __await__(self) -> Generator[Any, None, Any]:
        """``await handle`` in asyncio code (a notebook cell): the result."""
        return asyncio.wrap_future(self).__await__()


def connect(
    url: str | None = None,
    identity: str | None = None,
    *,
    home: Path | None = None,
    passphrase: str | None = None,
    credentials: str | None = None,
    default_timeout: float = 300.0,
    creds: str | Path | None = None,
    tls: ssl.SSLContext | str | Path | None = None,
) -> SyncClient:
    """A blocking client for scripts and notebooks: ``with connect() as fed: ...``.

    The same defaults as the ``fedhub`` CLI (:mod:`hub.defaults`): ``url`` from
    ``$FEDHUB_URL``, else a node running here with the same key store, else
    ``nats://127.0.0.1:4222``; ``identity`` from ``$FEDHUB_IDENTITY``, else the only person
    key in the key store (``home``, default ``$FEDHUB_HOME``); ``passphrase`` from
    ``$FEDHUB_PASSPHRASE``. ``creds`` and ``tls`` as for :meth:`hub.client.Client.connect`
    (defaults ``$FEDHUB_CREDS``, ``$FEDHUB_CA``).
    """
    from hub.client import Client
    from hub.cliutil import read_passphrase
    from hub.defaults import default_identity, default_url
    from hub.keys import KeyStore

    store = KeyStore(Path(home) if home is not None else None)
    chosen_url = default_url(url, store)
    chosen = default_identity(identity, store)
    secret = passphrase if passphrase is not None else read_passphrase(None)
    return SyncClient(
        lambda: Client.connect(
            chosen_url,
            chosen,
            home=store.home,
            passphrase=secret,
            credentials=credentials,
            default_timeout=default_timeout,
            creds=creds,
            tls=tls,
        )
    )
