"""From messages the call consumer delivers to the pipeline, and back to acks.

The consumer hands over every message already waiting without yielding to the event
loop, so what it delivers back to back is one burst: :meth:`Dispatcher.deliver` starts
the burst's task with the first message, and the task takes what was delivered by the time
it first runs (the loop's next turn), as one unit (:meth:`node.pipeline.Pipeline.take`:
signatures checked off the loop, one log append). Outcomes known at once (rejections,
copies) are acked together (publishing only queues an ack; the client writes them out in
one go); each accepted call runs in its own task and is acked when its outcome is logged,
except a burst's only call, which runs on in the burst's task (no task and no loop turn
between its log append and its run: the path of one call in flight).
Each message holds its consumer slot until it is acked or handed back, and is kept alive
(``+WPI`` every ``ack_wait/3``, :class:`~node.execution.KeepAlive`) all that time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from nats.aio.msg import Msg

from node.execution import KeepAlive
from node.observability import NodeMetrics, module_of
from node.pipeline import Delivery, Job, Outcome, Pipeline

__all__ = ["Dispatcher"]

log = structlog.get_logger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None], str], object]


class Dispatcher:
    """Feeds bursts of call messages to a pipeline; acks each when its outcome is logged.

    ``spawn(coro, "call")`` starts a task the node waits for when it stops; ``release()``
    frees one consumer slot; ``metrics`` (when the node serves them) hears every outcome.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        spawn: Spawn,
        release: Callable[[], None],
        *,
        metrics: NodeMetrics | None = None,
        keepalive_every: float | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.spawn = spawn
        self._release = release
        #: ``+WPI`` for held messages (every ``ack_wait/3``), from delivery to ack.
        self.keepalive = KeepAlive(keepalive_every) if keepalive_every else None
        self.metrics = metrics
        self._burst: list[Msg] = []  # delivered since the loop last turned
        self.bursts = 0

    def release(self, msg: Msg) -> None:
        """``msg`` was acked or handed back: no more keep-alive, its slot is free."""
        if self.keepalive is not None:
            self.keepalive.drop(msg)
        self._release()

    def close(self) -> None:
        """Stop the keep-alive timer."""
        if self.keepalive is not None:
            self.keepalive.stop()

    def deliver(self, msg: Msg) -> None:
        """The consumer's handler: add ``msg`` to the burst being gathered."""
        self._burst.append(msg)
        if self.keepalive is not None:
            self.keepalive.hold(msg)
        if len(self._burst) == 1:
            # the task's first step runs on the loop's next turn, after the messages
            # delivered with this one: it takes them all (one task and turn per burst)
            self.spawn(self._calls(), "call")

    def _take_burst(self) -> list[Msg]:
        burst, self._burst = self._burst, []
        self.bursts += 1
        return burst

    async def _calls(self) -> None:
        """Take a burst (one log append), settle what ends at once, run the rest."""
        msgs = self._take_burst()
        started = time.perf_counter()
        deliveries = [
            Delivery(
                m.data,
                m.subject,
                m.metadata.num_delivered if m.metadata and m.metadata.num_delivered else 1,
            )
            for m in msgs
        ]
        try:
            taken = await self.pipeline.take(deliveries)
        except asyncio.CancelledError:
            # stopping before the burst was logged: hand it back for redelivery
            for m in msgs:
                with contextlib.suppress(Exception):
                    await asyncio.shield(m.nak())
                self.release(m)
            raise
        except Exception:  # a bug (or a log that refuses) must not take the node down
            log.exception("call.crashed", burst=len(msgs))
            for m in msgs:
                with contextlib.suppress(Exception):
                    await m.nak(delay=1.0)
                self.release(m)
            return
        jobs = [(msg, step) for msg, step in zip(msgs, taken, strict=True) if isinstance(step, Job)]
        if len(jobs) > 1:
            # each in its task, all started in this turn (the thread executor returns the
            # outcomes of calls submitted in one turn together: one commit, one flush)
            for msg, job in jobs:
                self.spawn(self._run(msg, job, started), "call")
        for msg, step in zip(msgs, taken, strict=True):
            if isinstance(step, Outcome):
                await self._settle(msg, step, started)
        if len(jobs) == 1:  # a lone call runs on here: no task to start, no turn to wait
            await self._run(*jobs[0], started)

    async def _run(self, msg: Msg, job: Job, started: float) -> None:
        try:
            outcome = await self.pipeline.run(job)
        except asyncio.CancelledError:
            # stopping with the call unfinished: hand it back for redelivery
            with contextlib.suppress(Exception):
                await asyncio.shield(msg.nak())
            self.release(msg)
            raise
        except Exception:  # a bug must not take the node down; the message comes back
            log.exception("call.crashed", request_id=job.header.id)
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
            self.release(msg)
            return
        await self._settle(msg, outcome, started)

    async def _settle(self, msg: Msg, outcome: Outcome, started: float) -> None:
        """Ack a message whose outcome is logged, and free its slot."""
        if self.metrics is not None:  # the one place a call's outcome is known
            self.metrics.call_finished(
                module_of(msg.subject), outcome.state, time.perf_counter() - started
            )
        try:
            if outcome.ack:
                await msg.ack()
        except Exception as exc:  # the outcome is logged; a redelivery re-sends it
            log.warning("call.ack_failed", request_id=outcome.request_id, reason=str(exc))
        finally:
            self.release(msg)
