"""``fed.executor()``: a :class:`concurrent.futures.Executor` that calls remote functions.

::

    with connect() as fed, fed.executor() as ex:
        futures = [ex.submit("hereon.climate.compute_sum", da=field) for field in fields]
        for done in concurrent.futures.as_completed(futures):
            print(done.result())
        sums = list(ex.map("hereon.climate.compute_sum", fields))   # positional: by signature

What is submitted is a remote function, by its address (``site.module.function``). Each
call is a :class:`hub.sync_client.SyncCallHandle`, itself a
:class:`concurrent.futures.Future`.
Positional arguments are matched to the function's parameters in the order of its
signature (from the module's verified info). Shutting down waits for the calls in flight;
it does not close the client.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hub.errors import ArgumentError

if TYPE_CHECKING:
    from hub.sync_client import SyncCallHandle, SyncClient

__all__ = ["FedExecutor", "address_of"]


def address_of(fn: object) -> str:
    """The address of a remote function, given as ``"site.module.function"``."""
    if isinstance(fn, str) and fn.count(".") >= 2:
        return fn
    raise ArgumentError(
        f"{fn!r} is not a remote function",
        hint="submit its address: 'site.module.function'",
    )


class FedExecutor(concurrent.futures.Executor):
    """Runs remote calls through a :class:`SyncClient`; ``max_in_flight`` bounds how many
    are outstanding at once (``submit`` waits for a free slot), ``timeout`` is each call's
    deadline (default: the client's)."""

    def __init__(
        self, client: SyncClient, *, timeout: float | None = None, max_in_flight: int | None = None
    ) -> None:
        if max_in_flight is not None and max_in_flight < 1:
            raise ArgumentError("max_in_flight must be at least 1")
        self._client = client
        self._timeout = timeout
        self._slots = threading.BoundedSemaphore(max_in_flight) if max_in_flight else None
        self._pending: set[SyncCallHandle] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: str | Callable[..., Any], /, *args: Any, **kwargs: Any) -> SyncCallHandle:
        """Call ``fn`` (an address or a stub function) with these arguments; its future."""
        address = address_of(fn)
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit calls after shutdown")
        arguments = {**self._by_position(address, args), **kwargs} if args else kwargs
        if self._slots is not None:
            self._slots.acquire()
        try:
            handle = self._client.submit(address, arguments, timeout=self._timeout)
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise
        with self._lock:
            self._pending.add(handle)
        handle.add_done_callback(self._finished)
        return handle

    def _finished(self, handle: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(handle)
        if self._slots is not None:
            self._slots.release()

    def _by_position(self, address: str, args: tuple[Any, ...]) -> dict[str, Any]:
        site, module, function = address.split(".", 2)
        info = self._client.module_info(site, module).functions.get(function)
        if info is None:
            return {}  # the call itself reports the unknown function
        names = [n for n in info.arguments.get("properties", {}) if n != "progress"]
        if len(args) > len(names):
            raise ArgumentError(
                f"{address} takes {len(names)} arguments ({', '.join(names)}), "
                f"{len(args)} given by position"
            )
        return dict(zip(names, args, strict=False))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submits; with ``cancel_futures`` ask the nodes to cancel the calls in
        flight; with ``wait`` wait until every call has ended."""
        with self._lock:
            self._shutdown = True
            pending = list(self._pending)
        if cancel_futures:
            for handle in pending:
                handle.cancel()
        if wait:
            concurrent.futures.wait(pending)
