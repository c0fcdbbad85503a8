"""The request pipeline: from a burst of messages on the call stream to exactly one logged
outcome per request.

Steps (docs/protocol.md has the full table)::

    burst → each message verified (node.intake, off the event loop for a burst)
          → not a replay, function exists, granted → arguments decrypted and decoded
          → ONE log append for the burst: request.accepted (the caller's signed header)
            per accepted call, request.rejected per refused message
    each call → run (progress → caller) → seal the result for the caller
          → log request.completed (naming where the result will be kept), or
            request.failed → reply → keep the sealed result (node.results; result.lost
            if that fails) → ack

The JetStream message is acked only once the outcome is logged; while a function runs the
node tells the server it is still working (``+WPI``). If the node dies mid-run the message
comes back (a redelivery, told apart from a replay by its delivery count) and the
``calls.interrupted`` policy decides: ``fail`` logs ``request.failed`` (code
``interrupted``) without running it again — at most once; ``retry`` runs it again
(``request.started`` with the next attempt) — at least once. A request already final is
never run or completed again: the caller is told it already ended. Which step is legal
from which state is :mod:`hub.lifecycle`'s to say; a request a version 1 node received
(``received``) is accepted or failed by a version 2 event.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel

from hub import codec
from hub.canonical import b64e
from hub.crypto import blake2b_256, open_content_key, open_secret, seal_payload
from hub.directory import Directory
from hub.envelopes import RequestHeader, wraps_to_text
from hub.errors import (
    CallCancelledError,
    CanonicalError,
    FederationError,
    FunctionFailedError,
    InterfaceChangedError,
    ReplayError,
    TransferError,
    ValidationError,
    error_code,
)
from hub.events import RequestAccepted, RequestCompleted, RequestFailed, RequestStarted
from hub.keys import KeyPair
from hub.lifecycle import FINAL, RequestState, step
from hub.records import KeyRecord
from node import projections
from node.bulk import BulkLink, SealedResult
from node.config import CallsSection
from node.control import Control, ControlAnswer
from node.execution import ProgressForwarder, public_reason
from node.intake import Rejection, Verified, admit, open_request
from node.logwriter import LogWriter
from node.projections import AcceptedCall
from node.replay import ReplayGuard, recent_nonces
from node.replies import Replies, Send, message_with_hint
from node.results import LoadResult, ResultStore, StoreResult
from node.runner import CancelSignal, Runner
from node.staging import Staging

__all__ = ["DUPLICATE", "Delivery", "Job", "Outcome", "Pipeline"]

log = structlog.get_logger(__name__)

#: The outcome of a copy of a request that was already dealt with.
DUPLICATE = "duplicate"

#: A burst at least this large is verified on two threads instead of one.
_SPLIT_BURST = 16


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the pipeline did with one message (for the daemon's ack and for tests)."""

    request_id: str | None
    state: str  # a final RequestState, or DUPLICATE
    code: str | None = None
    ack: bool = True


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the consumer delivered it."""

    data: bytes
    subject: str
    delivery: int = 1


@dataclass(frozen=True, slots=True)
class Job:
    """An accepted call, logged, ready to run (:meth:`Pipeline.run`)."""

    header: RequestHeader
    record: KeyRecord
    content_key: bytes
    kwargs: dict[str, object]
    attempt: int


class Pipeline:
    """Turns call messages into outcomes for one node."""

    def __init__(
        self,
        *,
        site: str,
        node_id: str,
        key: KeyPair,
        directory: Directory,
        runner: Runner,
        writer: LogWriter,
        calls: CallsSection,
        send: Send,
        max_reply: Callable[[], int] | None = None,
        store_result: StoreResult | None = None,
        load_result: LoadResult | None = None,
        module_timeouts: dict[str, float | None] | None = None,
        bulk: BulkLink | None = None,
    ) -> None:
        self.site = site
        self.node_id = node_id
        self.key = key
        self.directory = directory
        self.runner = runner
        self.writer = writer
        self.calls = calls
        self.module_timeouts = module_timeouts or {}
        self.bulk = bulk
        self.replay = ReplayGuard(calls.replay_window)
        self.replies = Replies(node_id, send, max_reply or (lambda: calls.max_payload + 64 * 1024))
        self.results = ResultStore(writer, store_result, load_result)
        self.running: dict[str, CancelSignal] = {}
        self.cancel_early: dict[str, float] = {}
        self.in_flight = 0
        self._taking: set[str] = set()  # ids accepted by a burst whose append is under way
        self._reader: sqlite3.Connection | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._control = Control(self)
        #: Fetches arguments passed by reference (set by the daemon once connected).
        self.staging: Staging | None = None
        #: Module name → hash of its code (set by the daemon; logged in request.accepted).

    async def load_replay_memory(self) -> int:
        """Remember the nonces the log received within the replay window (after a
        restart); returns how many."""
        conn, window = self.writer.eventlog.db.conn, self.calls.replay_window
        read_at = time.time()
        items = await self.writer.call(lambda: recent_nonces(conn, window, read_at))
        assert isinstance(items, list)
        return self.replay.load(items, read_at=read_at)

    async def request_state(self, rid: str) -> dict[str, Any] | None:
        """The projected row of ``rid``, read on a connection of its own (WAL readers do
        not wait for the writer, and a point lookup is cheap enough for the loop thread)."""
        return projections.request_status(self._read(), rid)

    def _read(self) -> sqlite3.Connection:
        """The read connection (opened on first use)."""
        if self._reader is None:
            path = self.writer.eventlog.path.resolve()
            self._reader = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        return self._reader

    def close(self) -> None:
        """Close the read connection and the verifying threads; harmless twice."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def control(self, data: bytes) -> ControlAnswer:
        """Answer a signed cancel/status/fetch message (see :mod:`node.control`); raises
        the typed error for a refusal."""
        return await self._control.answer(data)

    # --- one message, or a burst ----------------------------------------------------------

    async def handle(self, data: bytes, subject: str, *, delivery: int = 1) -> Outcome:
        """Process one call message to its outcome; never raises for anything the message
        contains."""
        (taken,) = await self.take([Delivery(data, subject, delivery)])
        return taken if isinstance(taken, Outcome) else await self.run(taken)

    async def take(self, burst: Sequence[Delivery]) -> list[Outcome | Job]:
        """Verify a burst, log what it accepts and rejects in ONE append, tell the refused.

        Returns, per message, its outcome or the job that runs it (:meth:`run`, which
        ends it). Raises only if the log refuses the append (then nothing was accepted).
        """
        self.in_flight += len(burst)
        done = 0
        taking: list[str] = []
        try:
            opened = await self._open_all(burst)
            # from here to the append's enqueueing nothing yields: the states read, the
            # replay guard and the ids being taken agree with the order of the log
            ids = [o.header.id for o in opened if isinstance(o, Verified)]
            conn = self.writer.connection_if_idle() or self._read()
            rows = projections.request_statuses(conn, ids) if ids else {}
            states = [rows.get(o.header.id) if isinstance(o, Verified) else None for o in opened]
            taken: list[Outcome | Job | None] = [None] * len(burst)
            events: list[BaseModel] = []
            refused: list[Rejection] = []
            unopened: dict[int, tuple[RequestHeader, FederationError]] = {}  # do not open
            known: list[int] = []  # copies of requests the log already has
            for i, (d, o, state) in enumerate(zip(burst, opened, states, strict=True)):
                if isinstance(o, Verified) and state is not None:
                    known.append(i)
                    continue
                if isinstance(o, Verified):
                    rej = self._taken_already(o) or admit(
                        o,
                        replay=self.replay,
                        runner=self.runner,
                        directory=self.directory,
                        site=self.site,
                    )
                    if rej is None:
                        self._taking.add(o.header.id)
                        taking.append(o.header.id)
                        events.append(self._accepted(o, d.delivery))
                        try:
                            key, kwargs = self._decrypt(o)
                        except FederationError as exc:
                            unopened[i] = (o.header, exc)
                        else:
                            taken[i] = Job(o.header, o.record, key, kwargs, 1)
                        continue
                    o = rej
                events.append(o.event())
                refused.append(o)
                taken[i] = Outcome(o.request_id, RequestState.REJECTED, o.code)
            if events:
                await self.writer.append(*events, alone=self.in_flight <= 1)
            self._taking.difference_update(taking)
            for rej in refused:
                log.warning("call.rejected", code=rej.code, reason=rej.error.message)
                answer = rej.reply(self.node_id)
                if answer is not None:
                    await self.replies.send(*answer, request_id=rej.request_id or "-")
            for i, (header, problem) in unopened.items():
                taken[i] = await self._fail(header, None, problem, time.perf_counter())
            for i in known:
                o, row = opened[i], states[i]
                assert isinstance(o, Verified) and row is not None
                taken[i] = await self._seen_before(o, row, burst[i])
            out = [t for t in taken if t is not None]
            done = sum(isinstance(t, Outcome) for t in out)
            return out
        except BaseException:
            done = len(burst)
            self._taking.difference_update(taking)
            raise
        finally:
            self.in_flight -= done

    def _taken_already(self, req: Verified) -> Rejection | None:
        """A request whose id is being accepted right now (earlier in this burst, or in a
        burst whose append is under way) is refused as received before, after it."""
        rid = req.header.id
        if rid not in self._taking:
            return None
        return Rejection.of(req, ReplayError(f"request {rid} was received before"), "replay")

    async def _open_all(self, burst: Sequence[Delivery]) -> list[Verified | Rejection]:
        """:func:`~node.intake.open_request` for each message: a single message right here
        (a hop to a thread would cost it more than its check), a burst on the verifying
        threads (libsodium releases the GIL)."""

        def open_many(part: Sequence[Delivery]) -> list[Verified | Rejection]:
            return [
                open_request(
                    d.data,
                    d.subject,
                    site=self.site,
                    directory=self.directory,
                    max_payload=self.calls.max_payload,
                )
                for d in part
            ]

        if len(burst) == 1:
            return open_many(burst)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(2, thread_name_prefix="verify")
        loop = asyncio.get_running_loop()
        parts = [burst] if len(burst) < _SPLIT_BURST else [burst[::2], burst[1::2]]
        opened = await asyncio.gather(
            *(loop.run_in_executor(self._pool, open_many, p) for p in parts)
        )
        if len(opened) == 1:
            return opened[0]
        evens, odds = opened
        return [(evens if i % 2 == 0 else odds)[i // 2] for i in range(len(burst))]

    def _accepted(self, req: Verified, delivery: int) -> RequestAccepted:
        h = req.header
        return AcceptedCall.of(
            h.caller,
            h.address,
            h.keep_for,
            request_id=h.id,
            header=b64e(req.header_bytes),
            sig=b64e(req.sig),
            delivery=delivery if delivery > 1 else None,
        )

    async def _seen_before(self, req: Verified, row: dict[str, Any], d: Delivery) -> Outcome | Job:
        """A copy of a request the log already knows: a replay, a copy of a finished one,
        or a redelivery after the node died (the ``interrupted`` policy decides)."""
        h, rid = req.header, req.header.id
        state = RequestState(row["state"])
        if rid in self.running:
            # a redelivery of a call this process is still running (the server gave up
            # waiting for its ack): the running one will ack it; neither ack nor run again
            log.info("call.redelivered_while_running", request_id=rid)
            return Outcome(rid, DUPLICATE, RequestState.RUNNING, ack=False)
        if d.delivery <= 1:
            rej = Rejection.of(req, ReplayError(f"request {rid} was received before"), "replay")
            await self.writer.append(rej.event())
            answer = rej.reply(self.node_id)
            if answer is not None:
                await self.replies.send(*answer, request_id=rid)
            return Outcome(rid, RequestState.REJECTED, "replay")
        if state in FINAL:
            log.info("call.redelivered_final", request_id=rid, state=state)
            message = f"request {rid} already ended ({state}); see `fedhub status {rid}`"
            await self.replies.error(rid, h.reply, DUPLICATE, message)
            return Outcome(rid, DUPLICATE, state)
        # unfinished when the node died: the documented policy decides
        if self.calls.interrupted == "fail":
            err = CallCancelledError(
                f"request {rid} was interrupted by a node restart and not run again",
                code="interrupted",
            )
            failed = RequestFailed(request_id=rid, code="interrupted", reason=err.message)
            step(state, failed.type, request_id=rid)
            await self.writer.append(failed)
            await self.replies.error(rid, h.reply, "interrupted", err.message)
            return Outcome(rid, RequestState.FAILED, "interrupted")
        attempt = int(row.get("attempts") or 0) + 1
        again: RequestAccepted | RequestStarted = (
            self._accepted(req, d.delivery)  # received by a version 1 node, never started
            if state == RequestState.RECEIVED
            else RequestStarted(request_id=rid, attempt=attempt)
        )
        step(state, again.type, request_id=rid)
        await self.writer.append(again)
        try:
            content_key, kwargs = self._decrypt(req)
        except FederationError as exc:
            return await self._fail(h, None, exc, time.perf_counter())
        return Job(h, req.record, content_key, kwargs, max(attempt, 1))

    def _decrypt(self, req: Verified) -> tuple[bytes, dict[str, object]]:
        """Unwrap the content key (wrapped by the caller's registered key), decrypt and
        decode the arguments, check the interface the caller read."""
        h = req.header
        content_key = open_content_key(
            req.wraps,
            self.key.kid,
            self.key.box_secret,
            sender=req.record.box_key_bytes(),
        )
        plaintext = open_secret(content_key, req.ciphertext)
        try:
            kwargs = codec.decode_many(plaintext, max_size=self.calls.max_payload * 4)
        except CanonicalError as exc:
            raise ValidationError(f"arguments cannot be decoded: {exc.message}") from exc
        spec = self.runner.function(h.module, h.function)
        if h.schema_hash and h.schema_hash != spec.schema_hash:
            raise InterfaceChangedError(
                f"{h.address} changed its interface since the caller read it",
                hint="refresh the module info (`fedhub ls`) and call again",
            )
        return content_key, kwargs

    # --- running an accepted call ---------------------------------------------------------

    async def run(self, job: Job) -> Outcome:
        """Run an accepted call and end it: completed (replied, result kept) or failed."""
        h, rid = job.header, job.header.id
        structlog.contextvars.bind_contextvars(request_id=rid)
        started = time.perf_counter()
        try:
            cancel = CancelSignal()
            if self.cancel_early.pop(rid, None) is not None:
                cancel.set()
            self.running[rid] = cancel
            timeout = h.timeout_ms / 1000
            module_timeout = self.module_timeouts.get(h.module)
            if module_timeout is not None:
                timeout = min(timeout, module_timeout)
            reporter = ProgressForwarder(self.replies, self.writer, h, job.content_key)
            deadline = time.monotonic() + timeout
            try:
                kwargs = job.kwargs
                if h.bulk is not None:  # the arguments follow as a bulk transfer
                    kwargs = {**kwargs, **await self._receive(job, cancel, timeout)}
                if h.refs is not None:  # arguments by reference: fetched from their sites
                    if self.staging is None:
                        raise ValidationError("this node takes no arguments by reference")
                    staged = await self.staging.arguments(h, job.record, timeout, cancel)
                    kwargs = {**kwargs, **staged}
                value = await self.runner.run(
                    h.module,
                    h.function,
                    kwargs,
                    timeout=max(0.001, deadline - time.monotonic()),
                    on_progress=reporter.report,
                    cancel=cancel,
                )
            finally:
                self.running.pop(rid, None)
                await reporter.close()
            return await self._complete(job, value, started, deadline)
        except asyncio.CancelledError:
            raise  # the node is stopping: the message goes back to the stream
        except Exception as exc:  # every other failure ends the request, exactly once
            return await self._fail(h, job.content_key, exc, started)
        finally:
            # the dispatcher keeps the message alive from delivery to ack (sending and
            # keeping a large result takes longer than ack_wait, and a redelivery meanwhile
            # would be answered as a copy of an ended call)
            self.in_flight -= 1
            if self.bulk is not None:
                self.bulk.release(rid)
            structlog.contextvars.unbind_contextvars("request_id")

    async def _receive(self, job: Job, cancel: CancelSignal, timeout: float) -> dict[str, object]:
        """The arguments of a call that sends them as a bulk transfer."""
        if self.bulk is None:
            raise TransferError("this node takes no bulk payloads", code="refused")
        return await self.bulk.receive_arguments(
            job.header, job.content_key, cancel=cancel, timeout=timeout
        )

    async def _complete(self, job: Job, value: object, started: float, deadline: float) -> Outcome:
        """Seal the result for the caller, log ``request.completed``, reply, keep it."""
        h, rid, record = job.header, job.header.id, job.record
        if self.bulk is not None:
            prepared = await self.bulk.seal_result(value, h, record)
            if isinstance(prepared, SealedResult):
                return await self._complete_bulk(job, prepared, started, deadline)
            encoded = prepared
        else:
            encoded = codec.encode(value)
        sealed = seal_payload(
            encoded,
            self.key.box_secret,
            self.key.box_public,
            {record.kid: record.box_key_bytes()},
        )
        ciphertext, wraps = sealed.ciphertext, wraps_to_text(sealed.wraps)
        result_hash = blake2b_256(ciphertext).hex()
        kept_as = self.results.name_for(rid, h.keep_for)
        self.replies.check_size(
            rid,
            result_hash=result_hash,
            wraps=wraps,
            ciphertext=ciphertext,
            kept_as=kept_as,
            reply_max=h.reply_max,
        )
        duration = int((time.perf_counter() - started) * 1e6)
        stored = await self.writer.append(
            RequestCompleted(
                request_id=rid,
                result_hash=result_hash,
                result_size=len(ciphertext),
                duration_us=duration,
                object=kept_as,
            ),
            alone=self.in_flight <= 1,
        )
        frame = self.replies.result_frame(
            rid,
            result_hash=result_hash,
            wraps=wraps,
            ciphertext=ciphertext,
            kept_as=kept_as,
            log_seq=stored[-1].seq,
        )
        await self.replies.send(h.reply, frame, request_id=rid)
        if kept_as is not None:
            # one turn of the loop first: the NATS client's flusher, woken by the reply,
            # writes it to the socket alone. Written together with the store's two
            # publishes, it would leave the server only after both were stored (the
            # server forwards what it read once it has processed all of it): ~0.25 ms
            # more on the caller's path at one call in flight
            await asyncio.sleep(0)
            await self.results.keep(rid, kept_as, wraps, ciphertext)
        log.info("call.completed", address=h.address, duration_us=duration)
        return Outcome(rid, RequestState.COMPLETED)

    async def _complete_bulk(
        self, job: Job, result: SealedResult, started: float, deadline: float
    ) -> Outcome:
        """A large result: log ``request.completed`` (its payload hash and where it is
        kept), announce it to the caller, then stream it there and keep it at once."""
        h, rid, bulk = job.header, job.header.id, result.bulk
        assert self.bulk is not None
        kept_as = self.results.name_for(rid, h.keep_for)
        duration = int((time.perf_counter() - started) * 1e6)
        stored = await self.writer.append(
            RequestCompleted(
                request_id=rid,
                result_hash=bulk.hash,
                result_size=bulk.size,
                duration_us=duration,
                object=kept_as,
            ),
            alone=self.in_flight <= 1,
        )
        announce = self.replies.result_frame(
            rid,
            result_hash=bulk.hash,
            wraps=result.wraps,
            ciphertext=b"",
            kept_as=kept_as,
            log_seq=stored[-1].seq,
            bulk=bulk,
        )
        await self.replies.send(h.reply, announce, request_id=rid)
        link = self.bulk

        async def send() -> None:
            try:
                await link.send_result(h, result, max(30.0, deadline - time.monotonic()))
            except TransferError as exc:  # the caller learns it from its receiver
                log.warning("call.result_send_failed", request_id=rid, reason=exc.message)

        work = [send()]
        if kept_as is not None:
            work.append(self.results.keep_with(rid, lambda: link.store_result(kept_as, result)))
        await asyncio.gather(*work)
        log.info("call.completed", address=h.address, duration_us=duration, bulk=bulk.size)
        return Outcome(rid, RequestState.COMPLETED)

    async def _fail(
        self, header: RequestHeader, content_key: bytes | None, exc: Exception, started: float
    ) -> Outcome:
        """Log ``request.failed`` with its code and tell the caller."""
        if not isinstance(exc, FederationError):
            log.error("call.internal_error", address=header.address, exc_info=exc)
            exc = FunctionFailedError(
                f"{header.address} failed inside the node ({type(exc).__name__})",
                code="internal_error",
                hint="the site's operator can find it in the node's log",
            )
        code = error_code(exc)
        duration = int((time.perf_counter() - started) * 1e6)
        await self.writer.append(
            RequestFailed(
                request_id=header.id,
                code=code,
                reason=public_reason(exc, code),
                duration_us=duration,
            )
        )
        await self.replies.error(header.id, header.reply, code, message_with_hint(exc), content_key)
        log.warning("call.failed", address=header.address, code=code)
        return Outcome(header.id, RequestState.FAILED, code)
