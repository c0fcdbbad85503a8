"""A submitted call as its caller sees it (:class:`CallHandle`), and a module's verified info.

A handle can be awaited (``await handle`` is ``await handle.result()``), so
``asyncio.gather(*handles)`` and ``asyncio.as_completed(handles)`` take handles directly.

The :class:`~hub.client.Client` creates handles and settles them: from the reply on its
inbox, or from the node's status and stored result when that reply was lost (see
:meth:`Client.recover <hub.client.Client.recover>`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import ValidationError as PydanticValidationError

from hub.answers import CancelAnswer, FunctionInfo, ModuleDescription, RequestStatus
from hub.errors import CallTimeoutError, CanonicalError, DecryptionError
from hub.records import KeyRecord, one_line, open_record
from hub.transfer import TransferProgress

if TYPE_CHECKING:
    from hub.client import Client

__all__ = ["CallHandle", "ModuleInfo", "ProgressCallback", "TransferCallback"]

log = structlog.get_logger(__name__)

_HEX32 = re.compile(r"[0-9a-f]{64}")

ProgressCallback = Callable[[float | None, str], None]
#: Progress of a call's bulk transfers: ``("upload" | "download", TransferProgress)``.
TransferCallback = Callable[[str, TransferProgress], None]


@dataclass(frozen=True)
class ModuleInfo:
    """A module's description as served by its node, with the node key verified."""

    site: str
    module: str
    info: ModuleDescription
    node: str
    node_kid: str
    node_box_key: bytes

    @property
    def functions(self) -> dict[str, FunctionInfo]:
        """Function name → its description (schemas, docstring, signature)."""
        return self.info.functions

    @classmethod
    def verified(cls, site: str, module: str, data: bytes, site_key: bytes) -> ModuleInfo:
        """An info answer checked: it parses, names this module, and carries a node key
        record signed by ``site_key`` (the pinned key of ``site``)."""
        try:
            info = ModuleDescription.model_validate_json(data)
        except PydanticValidationError as exc:
            raise CanonicalError(
                f"malformed info answer of {site}.{module}: {one_line(exc)}"
            ) from exc
        record = open_record(info.node_key, KeyRecord, site_key)
        if info.site != site or info.module != module:
            raise CanonicalError(
                f"{site}.{module} answered with the info of {info.site}.{info.module}"
            )
        if record.site != site or record.role != "node":
            raise DecryptionError(f"{site}.{module} presented a key record for {record.identity}")
        for name, fn in info.functions.items():  # each call names it in its header
            if fn.schema_hash and _HEX32.fullmatch(fn.schema_hash) is None:
                raise CanonicalError(f"{site}.{module}.{name} has a malformed schema hash")
        return cls(site, module, info, record.identity, record.kid, record.box_key_bytes())


@dataclass(eq=False)  # a handle is itself: hashable, for asyncio.gather and sets
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
    #: Progress reports not yet taken by :meth:`progress_events` (made with the first).
    _progress_events: asyncio.Queue[tuple[float | None, str]] | None = None
    #: Called with the progress of the call's bulk transfers (arguments up, result down).
    on_transfer: TransferCallback | None = None
    #: The latest transfer progress: ``(direction, progress)``.
    transfer: tuple[str, TransferProgress] | None = None
    #: Where a large NetCDF result is written directly (the result is then a SavedTo).
    result_path: Path | None = None
    #: With compression: the fraction of the bulk arguments' size it saved.
    saved: float | None = None
    _transfers: set[asyncio.Task[None]] = field(default_factory=set)
    #: Loop time of the last message from the node about this call (or of the submit).
    _heard: float = 0.0
    #: The last ask about this call found no way to its node (a hub or leaf down).
    _unreachable: bool = False
    #: The next check on this call (a silent check, or the last ask before its deadline),
    #: and the interval the silent checks have grown to.
    _ask_timer: asyncio.TimerHandle | None = None
    _ask_wait: float = 0.0
    #: The client's further scheduled asks about this call (cancelled once it ends).
    _timers: list[asyncio.TimerHandle] = field(default_factory=list)

    @property
    def site(self) -> str:
        """The site the call went to."""
        return self.address.split(".", 1)[0]

    def done(self) -> bool:
        """Whether the outcome (result or error) has arrived."""
        return self._future.done()

    def __await__(self) -> Generator[Any, None, Any]:
        """``await handle``: the result, as :meth:`result` (within the call's deadline)."""
        return self.result().__await__()

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the result; raises the call's typed error or CallTimeoutError."""
        future = self._future
        if not future.done():
            loop = asyncio.get_running_loop()
            until = self._deadline
            if timeout is not None:
                until = min(until, loop.time() + timeout)
            # one waker, woken by the outcome or a timer at the deadline (cheaper than
            # asyncio.timeout around asyncio.shield, on every call); a cancelled waiter
            # leaves the outcome to whoever asks next
            waker: asyncio.Future[None] = loop.create_future()

            def wake(*_: object) -> None:
                if not waker.done():
                    waker.set_result(None)

            future.add_done_callback(wake)
            timer = loop.call_at(until, wake)
            try:
                await waker
            finally:
                timer.cancel()
                future.remove_done_callback(wake)
            if not future.done():
                raise self._timeout_error()
        return future.result()

    async def _result_alone(self) -> Any:
        """:meth:`result` for a caller that alone holds this handle (:meth:`Client.call
        <hub.client.Client.call>`): it waits on the outcome itself, one turn of the loop
        sooner than the waker of :meth:`result` (which leaves the outcome to whoever asks
        next), and the deadline settles the outcome as a timeout."""
        future = self._future
        if not future.done():
            timer = asyncio.get_running_loop().call_at(self._deadline, self._time_out)
            try:
                await future
            finally:
                timer.cancel()
        return future.result()

    def _time_out(self) -> None:
        self._settle(error=self._timeout_error())

    def _timeout_error(self) -> CallTimeoutError:
        return CallTimeoutError(
            f"no answer for {self.address} (request {self.request_id}) in time",
            hint=f"the call may still run; check `fedhub status {self.request_id}`",
        )

    async def status(self) -> RequestStatus:
        """The node's view of this request (state, progress)."""
        return await self._client.status(self.site, self.request_id)

    async def cancel(self) -> CancelAnswer:
        """Ask the node to cancel the call; the result then raises CallCancelledError.

        The answer says whether the node is stopping the call (``cancelling``; a call not
        yet running is cancelled when it would start) and the call's state.
        """
        for task in list(self._transfers):  # the peer is told to stop at once
            task.cancel()
        return await self._client.cancel(self.site, self.request_id)

    # -- called by the client -------------------------------------------------------------

    def _settle(self, value: Any = None, error: BaseException | None = None) -> bool:
        """Deliver the outcome unless one arrived already; whether this one was taken."""
        if self._future.done():
            return False
        if error is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(value)
        return True

    def _stop_timers(self, _: object = None) -> None:
        """Cancel the scheduled asks about this call (a done callback of its outcome)."""
        if self._ask_timer is not None:
            self._ask_timer.cancel()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _track(self, task: asyncio.Task[None]) -> None:
        """Keep a transfer task of this call (cancelled with the call, or when it ends)."""
        self._transfers.add(task)
        task.add_done_callback(self._transfers.discard)
        self._future.add_done_callback(lambda _: task.cancel())

    def _deliver_transfer(self, direction: str, progress: TransferProgress) -> None:
        self.transfer = (direction, progress)
        if self.on_transfer is not None:
            try:
                self.on_transfer(direction, progress)
            except Exception:  # a caller's callback must not break the transfer
                log.exception("client.transfer_callback_failed", request_id=self.request_id)

    def _deliver_progress(self, fraction: float | None, message: str) -> None:
        self.progress = (fraction, message)
        self._progress_queue().put_nowait((fraction, message))
        if self.on_progress is not None:
            try:
                self.on_progress(fraction, message)
            except Exception:  # a caller's callback must not break the inbox
                log.exception("client.progress_callback_failed", request_id=self.request_id)

    def _progress_queue(self) -> asyncio.Queue[tuple[float | None, str]]:
        if self._progress_events is None:  # most calls report no progress: no queue
            self._progress_events = asyncio.Queue()
        return self._progress_events

    async def progress_events(self) -> AsyncIterator[tuple[float | None, str]]:
        """Iterate over progress reports as they arrive, until the call ends."""
        queue = self._progress_queue()
        while not (self._future.done() and queue.empty()):
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait(
                {getter, self._future}, return_when=asyncio.FIRST_COMPLETED
            )
            if getter in done:
                yield getter.result()
            else:
                getter.cancel()
