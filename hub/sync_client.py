"""The blocking twin of :class:`hub.client.Client`, for scripts and notebooks.

::

    with connect(url, "klaus@geomar") as fed:          # works inside Jupyter
        handle = fed.submit("hereon.climate.slow_mean", da=da)
        handle.result(timeout=60)

The async client runs on an event loop of its own, in a daemon thread; each blocking
method hands a coroutine to that loop and waits for it.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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

    def status(self) -> RequestStatus:
        """The node's record of this request."""
        return self._owner._run(self._handle.status())

    def cancel(self) -> CancelAnswer:
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

    ``creds`` and ``tls`` as for :meth:`hub.client.Client.connect`.
    """
    from hub.client import Client

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
