"""Lost replies: a client asks the node about calls still waiting and settles them.

A reply travels once, over core NATS: if a server or link on the way is down when the node
sends it, it is gone, while the outcome sits in the node's log (and the result in its
``fh-results`` bucket). So the :class:`~hub.client.Client` asks the node about a waiting
call (``status``, then ``fetch``) after every reconnect of its connection, when the call
has heard nothing from its node for :data:`FIRST_ASK` s and then at doubling intervals
(a hub fault drops replies without dropping the caller's own connection; every
:data:`UNREACHABLE_ASK` s while the last ask found no way to the node), and once more
:data:`LAST_ASK` s before its deadline. Asks are bounded: at most
:data:`ASKS_PER_SECOND` asks about silent calls leave one client, and at most
:data:`RECOVER_AT_ONCE` wait for an answer at a time.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from hub.answers import RequestStatus
from hub.call_handle import CallHandle
from hub.errors import (
    CallTimeoutError,
    FederationError,
    NotFoundError,
    UnreachableError,
    caller_code,
    error_from_code,
)
from hub.lifecycle import RequestState

if TYPE_CHECKING:
    from hub.client import Client

__all__ = ["ASKS_PER_SECOND", "FIRST_ASK", "LAST_ASK", "Recovery", "call_error"]

log = structlog.get_logger("hub.client")

#: How long before its deadline a waiting call is asked about once more.
LAST_ASK = 3.0
#: A call that has heard nothing from its node this long is asked about, again after
#: twice as long each time: 10 s, 30 s, 70 s, 150 s ... after the submit, until the last ask.
FIRST_ASK = 10.0
ASK_GROWTH = 2.0
#: While the last ask found no way to the node (the hub or a leaf down), asks come this
#: often instead: the reply is most likely lost exactly then, and the way may come back
#: any moment (the caller's own connection never dropped, so no reconnect tells it).
UNREACHABLE_ASK = 5.0
#: At most this many of those asks per second leave one client (a node is never flooded
#: by a client with many long calls); later ones wait for their turn.
ASKS_PER_SECOND = 20.0
#: How often, and how far apart, a recovery asks while the node cannot be reached yet.
RECOVER_TRIES = 8
RECOVER_PAUSE = 1.0
#: How many calls are asked about at once (after a reconnect with many calls waiting).
RECOVER_AT_ONCE = 16
#: How long one control request waits for the node's answer.
CONTROL_TIMEOUT = 5.0


def call_error(code: str, message: str, address: str) -> FederationError:
    """The typed error of a call to ``address`` with error ``code`` (from its reply or
    its status)."""
    if not message:
        message = {
            "timeout": f"{address} ran out of time at the node",
            "cancelled": f"{address} was cancelled",
            "interrupted": f"{address} was cancelled",
        }.get(code, f"{address} failed ({code})")
    return error_from_code(code, message)


class Recovery:
    """The asks of one client about its waiting calls (see the module's docstring)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        #: The asks under way, by request id.
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._asking = asyncio.Semaphore(RECOVER_AT_ONCE)
        self._next_turn = 0.0  # loop time of the next free turn for an ask of a silent call

    def watch(self, handle: CallHandle) -> None:
        """Ask about ``handle`` while it waits: when it has heard nothing from its node
        for :data:`FIRST_ASK` s, then at growing intervals, and once more shortly before
        its deadline."""
        handle._heard = asyncio.get_running_loop().time()
        handle._future.add_done_callback(handle._stop_timers)
        self._ask_later(handle, FIRST_ASK)

    def all_waiting(self) -> None:
        """Ask about every call still waiting (after a reconnect)."""
        for handle in list(self.client._pending.values()):
            self.soon(handle, False)

    def forget(self, request_id: str) -> None:
        """Stop asking about ``request_id``."""
        task = self.tasks.pop(request_id, None)
        if task is not None:
            task.cancel()

    def cancel_all(self) -> None:
        """Stop every ask (the client closes)."""
        for task in list(self.tasks.values()):
            task.cancel()

    def _ask_later(self, handle: CallHandle, wait: float, keep: float | None = None) -> None:
        """Check on ``handle`` in ``wait`` s; the interval after that grows from ``keep``
        (default ``wait``). Unless the last ask comes first: then that is the one check
        pending (one timer per call, not one for each kind of ask)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + wait
        last = handle._deadline - LAST_ASK
        if handle._ask_timer is not None:
            handle._ask_timer.cancel()
        if when < last - 1.0:
            step = wait if keep is None else keep
            handle._ask_timer = loop.call_at(when, self._ask_if_silent, handle, step)
            handle._ask_wait = step
        else:
            handle._ask_timer = loop.call_at(last, self.soon, handle, True)

    def _ask_if_silent(self, handle: CallHandle, wait: float) -> None:
        if self.client._closed or handle.done():
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - handle._heard >= FIRST_ASK:  # progress or a reply came lately: no need
            turn = max(now, self._next_turn)
            self._next_turn = turn + 1.0 / ASKS_PER_SECOND
            if turn <= now:
                self.soon(handle, False, tries=1)
            else:
                handle._timers.append(loop.call_at(turn, self.soon, handle, False, 1))
        wait = max(wait, FIRST_ASK)  # never a tight loop, whoever scheduled this check
        if handle._unreachable:
            self._ask_later(handle, UNREACHABLE_ASK, keep=wait)
        else:
            self._ask_later(handle, wait * ASK_GROWTH)

    def soon(self, handle: CallHandle, last: bool, tries: int = RECOVER_TRIES) -> None:
        """Start asking about ``handle`` (unless an ask is under way or it moves data)."""
        if self.client._closed or handle.done() or handle.request_id in self.tasks:
            return
        if handle._transfers:  # its arguments or its result are moving: nothing is lost
            return
        task = asyncio.get_running_loop().create_task(self.recover(handle, last, tries))
        self.tasks[handle.request_id] = task
        task.add_done_callback(lambda _: self.tasks.pop(handle.request_id, None))

    async def recover(self, handle: CallHandle, last: bool, tries: int) -> None:
        """Settle ``handle`` from the node's record (see :meth:`Client.recover
        <hub.client.Client.recover>`)."""
        loop = asyncio.get_running_loop()
        for attempt in range(tries):
            if handle.done():
                return
            timeout = max(0.1, min(CONTROL_TIMEOUT, handle._deadline - loop.time()))
            try:
                async with self._asking:
                    state = await self.client.status(
                        handle.site, handle.request_id, timeout=timeout
                    )
                    outcome = await self._outcome(handle, state, last=last, timeout=timeout)
            except (NotFoundError, CallTimeoutError) as exc:  # not there, or not reachable yet
                log.debug("client.recover_retried", request_id=handle.request_id, error=str(exc))
                unreachable = isinstance(exc, CallTimeoutError | UnreachableError)
                handle._unreachable = unreachable
                if last or attempt + 1 == tries or handle._deadline - loop.time() < RECOVER_PAUSE:
                    if unreachable and not last:  # check again soon, not at the grown interval
                        keep = max(handle._ask_wait, FIRST_ASK)
                        self._ask_later(handle, UNREACHABLE_ASK, keep=keep)
                    return
                await asyncio.sleep(RECOVER_PAUSE * (attempt + 1))
                continue
            except FederationError as exc:
                log.warning("client.recover_failed", request_id=handle.request_id, error=str(exc))
                if last and self.client._pending.get(handle.request_id) is handle:
                    # the reply is lost for good, and the node's record cannot replace it:
                    # say why now rather than time out at the deadline
                    handle._settle(error=exc)
                return
            handle._unreachable = False
            if self.client._pending.get(handle.request_id) is not handle:
                return  # nobody waits for it any more
            if outcome is not None and handle._settle(*outcome):
                log.info("client.reply_recovered", request_id=handle.request_id)
            return

    async def _outcome(
        self, handle: CallHandle, state: RequestStatus, *, last: bool, timeout: float
    ) -> tuple[Any, FederationError | None] | None:
        """What ``state`` says the call's outcome is: (value, None), (None, error), or None
        while the node has not ended the call (or its reply may still be on the way)."""
        rid = handle.request_id
        if state.state == RequestState.COMPLETED:
            gone = "no copy of the result was kept"
            if state.result_object:
                try:
                    value = await self.client._fetch(
                        handle.site, state, timeout=timeout, result_path=handle.result_path
                    )
                except UnreachableError:
                    raise  # no way to the node yet: asked again
                except NotFoundError as exc:
                    # the kept copy is gone (the node stopped before storing it, or it
                    # was removed): only the reply had it
                    gone = f"its kept copy is gone ({exc.message})"
                else:
                    return value, None
            if last:
                return None, NotFoundError(
                    f"{handle.address} completed at the node, but its reply was lost and {gone}",
                    hint=f"the node's log has it: `fedhub status {rid} --site {handle.site}`",
                )
            return None
        if state.state in (RequestState.FAILED, RequestState.REJECTED):
            # a rejection's logged reason (malformed ...) as the code its lost reply carried
            code = caller_code(state.code or "remote_error")
            return None, call_error(code, state.reason or "", handle.address)
        return None
