"""Kept results: the sealed result of a call, stored after the reply for a later fetch.

``request.completed`` names where the result will be kept (its ``object``; None when the
node keeps no copy). The node replies first, then stores the sealed result in the site's
result store in its stored form (:class:`hub.envelopes.StoredResult` head + ciphertext),
then acks the call's message. If storing fails, the log says so with ``result.lost``
(the reason): the caller has its result, and ``fedhub status`` and ``fedhub fetch`` say
that no copy was kept and why. If the node dies between the two, the object is simply
missing and a fetch says that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from pydantic import BaseModel

from hub.envelopes import StoredResult, pack_stored_result, unpack_stored_result
from hub.errors import FederationError, NotFoundError
from hub.events import ResultLost
from hub.lifecycle import RequestState
from node.eventlog import StoredEvent
from node.logwriter import LogWriter

if TYPE_CHECKING:
    from node.retention import Retention

__all__ = ["LoadResult", "ResultStore", "StoreResult"]

log = structlog.get_logger(__name__)

#: Store ``data`` under a name (the site's result bucket in the daemon).
StoreResult = Callable[[str, bytes], Awaitable[None]]
#: The data stored under a name (NotFoundError when there is none).
LoadResult = Callable[[str], Awaitable[bytes]]


class ResultStore:
    """Keeps sealed results through ``store`` and reads them back through ``load``."""

    def __init__(
        self, writer: LogWriter, store: StoreResult | None, load: LoadResult | None
    ) -> None:
        self.writer = writer
        self._store = store
        self._load = load
        self._storing: dict[str, asyncio.Future[None]] = {}
        #: What removes kept results (set by :meth:`node.retention.Retention.for_node`).
        self.retention: Retention | None = None
        #: Held while a result event is appended after checking the request is still
        #: completed, and while the retention removes a result: no ``result.fetched`` or
        #: ``result.tagged`` can follow a ``result.expired`` in the log.
        self.lock = asyncio.Lock()

    async def append_completed(
        self, rid: str, event: BaseModel, state_of: Callable[[str], str | None]
    ) -> list[StoredEvent]:
        """Append a result event of ``rid`` if the request is still completed (its state
        read by ``state_of``); NotFoundError when its result is gone meanwhile."""
        async with self.lock:
            state = state_of(rid)
            if state != RequestState.COMPLETED:
                raise NotFoundError(f"request {rid} is {state}: its result is gone")
            return await self.writer.append(event)

    def name_for(self, rid: str, keep_for: int | None = None) -> str | None:
        """Where the result of ``rid`` will be kept (None: the node keeps no copies, or
        the caller asked for none: ``keep_for`` 0)."""
        return rid if self._store is not None and keep_for != 0 else None

    async def keep(self, rid: str, name: str, wraps: dict[str, str], ciphertext: bytes) -> None:
        """Store a sealed result under ``name``; if that fails, log ``result.lost``."""
        store = self._store
        assert store is not None
        await self.keep_with(rid, lambda: store(name, pack_stored_result(wraps, ciphertext)))

    async def keep_with(self, rid: str, store: Callable[[], Awaitable[None]]) -> None:
        """Run ``store()`` (which keeps the result of ``rid``); log ``result.lost`` if it
        fails. Status and fetch of ``rid`` wait while it runs."""
        done = asyncio.get_running_loop().create_future()
        self._storing[rid] = done
        try:
            await store()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the call has completed; only the kept copy is missing
            reason = f"storing it failed: {str(exc) or type(exc).__name__}"[:300]
            log.warning("result.lost", request_id=rid, reason=reason)
            try:
                await self.writer.append(ResultLost(request_id=rid, reason=reason))
            except FederationError as err:
                log.error("result.lost_not_logged", request_id=rid, error=str(err))
        finally:
            self._storing.pop(rid, None)
            done.set_result(None)

    async def settled(self, rid: str, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout``) while the result of ``rid`` is being stored, so an
        answer about it says how that ended."""
        storing = self._storing.get(rid)
        if storing is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(storing), timeout)

    @property
    def loads(self) -> bool:
        """Whether kept results can be read back here."""
        return self._load is not None

    async def load(self, name: str) -> tuple[StoredResult, bytes]:
        """The stored head and ciphertext kept under ``name``."""
        assert self._load is not None
        return unpack_stored_result(await self._load(name))
