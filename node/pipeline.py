"""The request pipeline: from a message on the call stream to exactly one logged outcome.

Steps, each logged (docs/protocol.md has the full table)::

    frame → caller key known and not revoked → signature → header schema → addressed to us
    → ciphertext matches the signed hash → not a replay → granted → function exists
    → log request.received + request.accepted
    → decrypt → decode → validate → run (progress → caller) → encrypt result to the caller
    → log request.completed (or request.failed) → reply → store the sealed result
    → log result.stored → ack

The JetStream message is acked only once the outcome is logged; while a function runs the
node tells the server it is still working (``+WPI``). If the node dies mid-run the message
comes back (a redelivery, told apart from a replay by its delivery count) and the
``calls.interrupted`` policy decides: ``fail`` logs ``request.failed`` (code
``interrupted``) without running it again — at most once; ``retry`` runs it again
(``request.started`` attempt 2) — at least once. A request already final is never run or
completed again: its outcome is simply re-sent.

Rejections before the signature is checked are logged but answered only to the inbox of
the identity the request claims, so a forged request cannot make the node send to
arbitrary subjects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from hub import codec
from hub.canonical import b64d, b64e, parse_canonical
from hub.clock import now, parse_time
from hub.crypto import (
    blake2b_256,
    new_content_key,
    open_secret,
    seal_secret,
    unwrap_key,
    verify,
    wrap_key,
)
from hub.directory import Directory
from hub.envelopes import (
    DOMAIN_REQUEST,
    ReplyHeader,
    RequestHeader,
    check_payload,
    pack_reply,
    parse_request_header,
    split_request,
)
from hub.errors import (
    CallCancelledError,
    CallTimeoutError,
    CanonicalError,
    DecryptionError,
    FederationError,
    FunctionFailedError,
    IntegrityError,
    NodeError,
    NotFoundError,
    OversizeError,
    RemoteError,
    ReplayError,
    SignatureError,
    UnauthorizedError,
    UnknownFunctionError,
    ValidationError,
)
from hub.events import (
    RequestAccepted,
    RequestCompleted,
    RequestFailed,
    RequestProgress,
    RequestReceived,
    RequestRejected,
    RequestStarted,
    ResultStored,
)
from hub.keys import KeyPair
from hub.records import KeyRecord
from hub.subjects import inbox_prefix, parse_call_subject, validate_identity
from node import projections
from node.config import CallsSection
from node.control import Control, ControlAnswer
from node.logwriter import LogWriter
from node.runner import CancelSignal, Runner

__all__ = ["Outcome", "Pipeline"]

log = structlog.get_logger(__name__)

Send = Callable[[str, bytes], Awaitable[None]]
StoreResult = Callable[[str, bytes], Awaitable[str]]
LoadResult = Callable[[str], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the pipeline did with one message (for the daemon's ack and for tests)."""

    request_id: str | None
    state: str  # rejected | completed | failed | duplicate
    code: str | None = None
    ack: bool = True


class _Rejected(Exception):  # noqa: N818 - internal control flow, carries the rejection
    def __init__(
        self,
        error: FederationError,
        code: str,
        reply_to: str | None,
        *,
        verified: bool = True,
    ) -> None:
        super().__init__(error.message)
        self.error, self.code, self.reply_to = error, code, reply_to
        # False until the signature checked out: then the id and caller are only claims,
        # and must not be recorded as this request's (a forger could block the real one).
        self.verified = verified


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
        store_result: StoreResult | None = None,
        load_result: LoadResult | None = None,
        module_timeouts: dict[str, float | None] | None = None,
    ) -> None:
        self.site = site
        self.node_id = node_id
        self.key = key
        self.directory = directory
        self.runner = runner
        self.writer = writer
        self.calls = calls
        self.send = send
        self.store_result = store_result
        self.load_result = load_result
        self.module_timeouts = module_timeouts or {}
        self._nonces: dict[str, float] = {}
        self._running: dict[str, CancelSignal] = {}
        self._owners: dict[str, str] = {}
        self.in_flight = 0
        self._reader: sqlite3.Connection | None = None
        self._cancel_early: dict[str, float] = {}
        self._storing: dict[str, asyncio.Future[None]] = {}
        self._control = Control(self)

    # --- replay memory --------------------------------------------------------------------

    async def load_recent_nonces(self) -> int:
        """Remember nonces of requests received within the replay window (after a restart)."""
        horizon = time.time() - self.calls.replay_window

        def read() -> list[bytes]:
            rows = self.writer.eventlog.db.execute(
                "SELECT body FROM events WHERE type = 'request.received' AND time >= ?",
                [_time_text(horizon)],
            ).fetchall()
            return [bytes(r[0]) for r in rows]

        bodies = await self.writer.call(read)
        assert isinstance(bodies, list)
        for body in bodies:
            ev = parse_canonical(body)
            self._nonces[ev["data"]["nonce"]] = parse_time(ev["time"]).timestamp()
        return len(bodies)

    def _forget_old_nonces(self, now_s: float) -> None:
        if len(self._nonces) < 10_000:
            return
        horizon = now_s - self.calls.replay_window
        self._nonces = {n: t for n, t in self._nonces.items() if t >= horizon}

    async def _request_state(self, rid: str) -> dict[str, Any] | None:
        """The projected state of ``rid``, read on a connection of its own (WAL readers do
        not wait for the writer, and a point lookup is cheap enough for the loop thread)."""
        if self._reader is None:
            path = self.writer.eventlog.path.resolve()
            self._reader = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        return projections.request_status(self._reader, rid)

    def close(self) -> None:
        """Close the read connection; harmless twice."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # --- the pipeline ---------------------------------------------------------------------

    async def handle(
        self,
        data: bytes,
        subject: str,
        *,
        delivery: int = 1,
        keepalive: Callable[[], Awaitable[None]] | None = None,
    ) -> Outcome:
        """Process one call message; never raises for anything the message contains."""
        self.in_flight += 1
        try:
            return await self._handle(data, subject, delivery, keepalive)
        except _Rejected as rej:
            return await self._reject(data, rej)
        finally:
            self.in_flight -= 1

    async def _handle(
        self,
        data: bytes,
        subject: str,
        delivery: int,
        keepalive: Callable[[], Awaitable[None]] | None,
    ) -> Outcome:
        header, record, header_bytes, sig, ciphertext = self._verify(data, subject)
        rid = header.id
        structlog.contextvars.bind_contextvars(request_id=rid)
        try:
            state = await self._request_state(rid)
            if state is not None:
                return await self._seen_before(
                    header, state, delivery, ciphertext, record, keepalive
                )
            self._check_fresh(header)
            self._authorize(header, record)
            received = RequestReceived(
                request_id=rid,
                caller=header.caller,
                address=header.address,
                header=b64e(header_bytes),
                sig=b64e(sig),
                nonce=header.nonce,
                payload_hash=header.payload_hash,
                payload_size=header.payload_size,
                delivery=delivery,
            )
            try:
                content_key, kwargs = self._open(header, record, ciphertext)
            except FederationError as exc:
                await self.writer.append(received, RequestAccepted(request_id=rid))
                return await self._fail(header, None, exc, time.perf_counter())
            await self.writer.append(
                received,
                RequestAccepted(request_id=rid),
                RequestStarted(request_id=rid, attempt=1),
                alone=self.in_flight <= 1,
            )
            log.info("call.accepted", caller=header.caller, address=header.address)
            return await self._execute(
                header,
                record,
                content_key,
                kwargs,
                attempt=1,
                keepalive=keepalive,
                logged_start=True,
            )
        finally:
            structlog.contextvars.unbind_contextvars("request_id")

    def _verify(
        self, data: bytes, subject: str
    ) -> tuple[RequestHeader, KeyRecord, bytes, bytes, bytes]:
        """Frame, caller key, signature, header, addressing, payload hash."""
        if len(data) > self.calls.max_payload:
            raise _Rejected(
                OversizeError(
                    f"request is {len(data):,} bytes; this site takes {self.calls.max_payload:,}",
                    hint="pass less data per call",
                ),
                "oversize",
                self._claimed_reply(data),
                verified=False,
            )
        try:
            header_bytes, sig, ciphertext = split_request(data)
            claimed = parse_canonical(header_bytes)
            caller, kid, reply = str(claimed["caller"]), str(claimed["kid"]), claimed.get("reply")
        except (CanonicalError, KeyError, TypeError) as exc:
            raise _Rejected(
                CanonicalError(f"malformed request: {exc}"), "malformed", None, verified=False
            ) from exc
        reply_to = self._safe_reply(caller, reply)
        try:
            record = self.directory.caller(caller, kid)
        except UnauthorizedError as exc:
            # a revoked (but once registered) key can still prove it signed this request,
            # which makes the refusal attributable; an unknown key proves nothing
            known = self.directory.keys.get(kid)
            signed = (
                known is not None
                and known.identity == caller
                and _signed_by(known, header_bytes, sig)
            )
            raise _Rejected(exc, "unauthorized", reply_to, verified=signed) from exc
        try:
            verify(record.sign_key_bytes(), DOMAIN_REQUEST, header_bytes, sig)
        except SignatureError as exc:
            raise _Rejected(
                SignatureError(f"request signature of {caller} does not verify"),
                "bad_signature",
                reply_to,
                verified=False,
            ) from exc
        try:
            header = parse_request_header(header_bytes)
            check_payload(header, ciphertext)
        except IntegrityError as exc:
            raise _Rejected(exc, "malformed", reply_to) from exc
        try:
            addressed = parse_call_subject(subject)
        except FederationError as exc:
            raise _Rejected(exc, "misrouted", reply_to) from exc
        if (addressed.site, addressed.module, addressed.function) != (
            header.site,
            header.module,
            header.function,
        ) or header.site != self.site:
            raise _Rejected(
                NotFoundError(
                    f"request for {header.address} arrived on {subject} at site {self.site}"
                ),
                "misrouted",
                reply_to,
            )
        return header, record, header_bytes, sig, ciphertext

    def _claimed_reply(self, data: bytes) -> str | None:
        """The inbox an unverified request claims, if it is one of its claimed caller's."""
        try:
            claimed = parse_canonical(split_request(data)[0])
            return self._safe_reply(str(claimed["caller"]), claimed.get("reply"))
        except (CanonicalError, KeyError, TypeError):
            return None

    def _safe_reply(self, caller: str, reply: object) -> str | None:
        """The reply subject, only if it is an inbox of the identity the request names."""
        try:
            ident = validate_identity(caller)
            prefix = inbox_prefix(ident.site, ident.name) + "."
        except FederationError:
            return None
        if isinstance(reply, str) and reply.startswith(prefix) and " " not in reply:
            return reply
        return None

    def _check_fresh(self, header: RequestHeader) -> None:
        now_s = time.time()
        sent = parse_time(header.time).timestamp()
        if abs(now_s - sent) > self.calls.replay_window:
            raise _Rejected(
                ReplayError(
                    f"request time {header.time} is outside the "
                    f"{self.calls.replay_window:.0f} s window",
                    hint="check the caller's clock",
                ),
                "replay",
                header.reply,
            )
        if header.nonce in self._nonces:
            raise _Rejected(
                ReplayError(f"nonce of request {header.id} was used before"), "replay", header.reply
            )
        self._forget_old_nonces(now_s)
        self._nonces[header.nonce] = sent

    def _authorize(self, header: RequestHeader, record: KeyRecord) -> None:
        try:
            self.runner.function(header.module, header.function)
        except UnknownFunctionError as exc:
            raise _Rejected(
                NotFoundError(
                    f"site {self.site} serves no function {header.module}.{header.function}"
                ),
                "not_found",
                header.reply,
            ) from exc
        try:
            self.directory.authorize(record, header.module, header.function)
        except UnauthorizedError as exc:
            raise _Rejected(exc, "unauthorized", header.reply) from exc

    async def _seen_before(
        self,
        header: RequestHeader,
        state: dict[str, Any],
        delivery: int,
        ciphertext: bytes,
        record: KeyRecord,
        keepalive: Callable[[], Awaitable[None]] | None = None,
    ) -> Outcome:
        rid = header.id
        current = state["state"]
        if rid in self._running:
            # a redelivery of a call this process is still running (the server gave up
            # waiting for its ack): the running one will ack it; neither ack nor run again
            log.info("call.redelivered_while_running")
            return Outcome(rid, "duplicate", "running", ack=False)
        if delivery <= 1:
            raise _Rejected(
                ReplayError(f"request {rid} was received before"), "replay", header.reply
            )
        if current in ("completed", "failed", "rejected"):
            log.info("call.redelivered_final", state=current)
            await self._send_error(
                header,
                None,
                "duplicate",
                f"request {rid} already ended ({current}); see `fedhub status {rid}`",
            )
            return Outcome(rid, "duplicate", current)
        # received/accepted/running when the node died: the documented policy decides
        if current == "received":
            await self.writer.append(RequestAccepted(request_id=rid))
        if self.calls.interrupted == "fail":
            err = CallCancelledError(
                f"request {rid} was interrupted by a node restart and not run again",
                code="interrupted",
            )
            await self.writer.append(
                RequestFailed(request_id=rid, code="interrupted", reason=err.message)
            )
            await self._send_error(header, None, "interrupted", err.message)
            return Outcome(rid, "failed", "interrupted")
        attempt = int(state.get("attempts") or 0) + 1
        try:
            content_key, kwargs = self._open(header, record, ciphertext)
        except FederationError as exc:
            return await self._fail(header, None, exc, time.perf_counter())
        return await self._execute(
            header, record, content_key, kwargs, attempt=attempt, keepalive=keepalive
        )

    def _open(
        self, header: RequestHeader, record: KeyRecord, ciphertext: bytes
    ) -> tuple[bytes, dict[str, object]]:
        """Unwrap the content key, decrypt and decode the arguments, check the interface."""
        wrapped = header.wraps.get(self.key.kid)
        if wrapped is None:
            raise DecryptionError(
                f"request {header.id} has no key wrapped for this node ({self.key.kid})"
            )
        raw = b64d(wrapped)
        if raw[:32] != record.box_key_bytes():
            raise DecryptionError("arguments were not encrypted by the caller's registered key")
        content_key = unwrap_key(self.key.box_secret, raw)
        plaintext = open_secret(content_key, ciphertext)
        try:
            kwargs = codec.decode_many(plaintext, max_size=self.calls.max_payload * 4)
        except CanonicalError as exc:
            raise ValidationError(f"arguments cannot be decoded: {exc.message}") from exc
        spec = self.runner.function(header.module, header.function)
        if header.schema_hash and header.schema_hash != spec.schema_hash:
            raise ValidationError(
                f"{header.address} changed its interface since the caller read it",
                hint="refresh the module info (`fedhub ls`) and call again",
            )
        return content_key, kwargs

    async def _execute(
        self,
        header: RequestHeader,
        record: KeyRecord,
        content_key: bytes,
        kwargs: dict[str, object],
        *,
        attempt: int,
        keepalive: Callable[[], Awaitable[None]] | None = None,
        logged_start: bool = False,
    ) -> Outcome:
        rid = header.id
        started = time.perf_counter()
        try:
            if not logged_start:
                await self.writer.append(RequestStarted(request_id=rid, attempt=attempt))
            cancel = CancelSignal()
            if self._cancel_early.pop(rid, None) is not None:
                cancel.set()
            self._running[rid] = cancel
            self._owners[rid] = header.caller
            timeout = header.timeout_ms / 1000
            module_timeout = self.module_timeouts.get(header.module)
            if module_timeout is not None:
                timeout = min(timeout, module_timeout)
            reporter = _ProgressForwarder(self, header, content_key)
            ka = _KeepAlive(keepalive, self.calls.ack_wait / 3) if keepalive else None
            try:
                value = await self.runner.run(
                    header.module,
                    header.function,
                    kwargs,
                    timeout=timeout,
                    on_progress=reporter.report,
                    cancel=cancel,
                )
            finally:
                if ka is not None:
                    ka.stop()
                self._running.pop(rid, None)
                self._owners.pop(rid, None)
                await reporter.close()
            body = codec.encode(value)
            result_key = new_content_key()
            result_ct = seal_secret(result_key, body)
            result_hash = blake2b_256(result_ct).hex()
            wraps = {
                record.kid: b64e(
                    wrap_key(
                        self.key.box_secret, self.key.box_public, record.box_key_bytes(), result_key
                    )
                )
            }
            duration = int((time.perf_counter() - started) * 1e6)
            stored = await self.writer.append(
                RequestCompleted(
                    request_id=rid,
                    result_hash=result_hash,
                    result_size=len(result_ct),
                    duration_us=duration,
                ),
                alone=self.in_flight <= 1,
            )
            await self._send(
                header.reply,
                pack_reply(
                    ReplyHeader(
                        kind="result",
                        id=rid,
                        node=self.node_id,
                        time=now(),
                        result_hash=result_hash,
                        wraps=wraps,
                        object=rid if self.store_result is not None else None,
                        log_seq=stored[-1].seq,
                    ),
                    result_ct,
                ),
            )
            if self.store_result is not None:
                await self._store(rid, wraps, result_ct, result_hash, record.kid)
            log.info("call.completed", address=header.address, duration_us=duration)
            return Outcome(rid, "completed")
        except asyncio.CancelledError:
            raise  # the node is stopping: the message goes back to the stream
        except Exception as exc:  # every other failure ends the request, exactly once
            return await self._fail(header, content_key, exc, started)

    async def _store(
        self, rid: str, wraps: dict[str, str], ciphertext: bytes, digest: str, kid: str
    ) -> None:
        """Keep the sealed result for a later fetch, then log ``result.stored``.

        This runs after the reply (the caller does not wait for it) and before the call's
        message is acked. If it fails, or the node dies first, the log simply has no
        ``result.stored`` for the request: the caller has its result, a later fetch finds
        none, and ``fedhub status`` says so.
        """
        assert self.store_result is not None
        done = asyncio.get_running_loop().create_future()
        self._storing[rid] = done
        try:
            obj = await self.store_result(rid, _stored_form(wraps, ciphertext))
            await self.writer.append(
                ResultStored(
                    request_id=rid,
                    object=obj,
                    size=len(ciphertext),
                    ciphertext_hash=digest,
                    recipients=(kid,),
                ),
                alone=self.in_flight <= 1,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the call itself has completed; only the copy is missing
            log.warning("result.not_stored", request_id=rid, error=str(exc))
        finally:
            self._storing.pop(rid, None)
            done.set_result(None)

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
        code = _code_of(exc)
        duration = int((time.perf_counter() - started) * 1e6)
        await self.writer.append(
            RequestFailed(
                request_id=header.id,
                code=code,
                reason=_public_reason(exc, code),
                duration_us=duration,
            )
        )
        await self._send_error(header, content_key, code, _message_with_hint(exc))
        log.info("call.failed", address=header.address, code=code)
        return Outcome(header.id, "failed", code)

    # --- answers --------------------------------------------------------------------------

    async def _send(self, subject: str | None, data: bytes) -> None:
        if not subject:
            return
        try:
            await self.send(subject, data)
        except Exception as exc:  # the outcome is logged; the caller can ask for it again
            log.warning("call.reply_failed", error=str(exc))

    async def _send_error(
        self, header: RequestHeader, content_key: bytes | None, code: str, message: str
    ) -> None:
        if content_key is not None:
            reply = ReplyHeader(
                kind="error", id=header.id, node=self.node_id, time=now(), code=code
            )
            await self._send(
                header.reply, pack_reply(reply, seal_secret(content_key, message.encode()))
            )
        else:
            reply = ReplyHeader(
                kind="error",
                id=header.id,
                node=self.node_id,
                time=now(),
                code=code,
                message=message[:2000],
            )
            await self._send(header.reply, pack_reply(reply))

    async def _reject(self, data: bytes, rej: _Rejected) -> Outcome:
        rid: str | None = None
        caller: str | None = None
        try:
            header_bytes, _, _ = split_request(data)
            claimed = parse_canonical(header_bytes)
            rid = claimed.get("id") if isinstance(claimed.get("id"), str) else None
            caller = claimed.get("caller") if isinstance(claimed.get("caller"), str) else None
        except (CanonicalError, AttributeError):
            header_bytes = data[:4096]
        if rid is not None and not _looks_like_id(rid):
            rid = None
        reason = rej.error.message[:400]
        if not rej.verified and (rid or caller):
            # unproven claims stay out of the request's identity (a forger must not be able
            # to block or blame the real one) but are kept in the reason, for the record
            reason += f" (unverified claims: request {rid}, caller {(caller or '')[:60]})"
        try:
            await self.writer.append(
                RequestRejected(
                    request_id=rid if rej.verified else None,
                    caller=(caller[:140] if caller else None) if rej.verified else None,
                    envelope_hash=blake2b_256(header_bytes).hex(),
                    code=rej.code,
                    reason=reason[:500],
                )
            )
        except FederationError as exc:
            log.error("call.reject_not_logged", error=str(exc))
        log.warning("call.rejected", code=rej.code, reason=rej.error.message, caller=caller)
        if rej.reply_to and rid:
            reply = ReplyHeader(
                kind="error",
                id=rid,
                node=self.node_id,
                time=now(),
                code=_wire_code(rej),
                message=_message_with_hint(rej.error)[:2000],
            )
            await self._send(rej.reply_to, pack_reply(reply))
        return Outcome(rid, "rejected", rej.code)

    async def control(self, data: bytes) -> ControlAnswer:
        """Answer a signed cancel/status/fetch message (see :mod:`node.control`); raises
        the typed error for a refusal."""
        return await self._control.answer(data)


class _ProgressForwarder:
    """Sends progress to the caller (sealed) and logs it at most once a second."""

    def __init__(self, pipeline: Pipeline, header: RequestHeader, key: bytes) -> None:
        self.p, self.header, self.key = pipeline, header, key
        self.tasks: list[asyncio.Task[None]] = []
        self.last_logged = 0.0

    def report(self, fraction: float | None, message: str) -> None:
        self.tasks = [t for t in self.tasks if not t.done()]
        self.tasks.append(asyncio.create_task(self._send(fraction, message)))

    async def _send(self, fraction: float | None, message: str) -> None:
        ppm = None if fraction is None else max(0, min(1_000_000, round(fraction * 1_000_000)))
        reply = ReplyHeader(
            kind="progress", id=self.header.id, node=self.p.node_id, time=now(), fraction_ppm=ppm
        )
        body = seal_secret(self.key, message.encode()) if message else b""
        await self.p._send(self.header.reply, pack_reply(reply, body))
        t = time.monotonic()
        if t - self.last_logged >= 1.0 or ppm == 1_000_000:
            self.last_logged = t
            with contextlib.suppress(FederationError):
                await self.p.writer.append(
                    RequestProgress(request_id=self.header.id, fraction_ppm=ppm)
                )

    async def close(self) -> None:
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


class _KeepAlive:
    """Tells the server every ``every`` seconds that a call is still running (``+WPI``),
    so its message is not redelivered; a timer, not a task, so a short call costs nothing.
    """

    def __init__(self, tick: Callable[[], Awaitable[None]], every: float) -> None:
        self.tick, self.every = tick, every
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = self.loop.call_later(every, self._fire)
        self.task: asyncio.Task[None] | None = None

    def _fire(self) -> None:
        self.task = self.loop.create_task(self._send())
        self.timer = self.loop.call_later(self.every, self._fire)

    async def _send(self) -> None:
        with contextlib.suppress(Exception):
            await self.tick()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _stored_form(wraps: dict[str, str], ciphertext: bytes) -> bytes:
    """How a result is kept: u32 length, JSON ``{"v": 1, "wraps": ...}``, the ciphertext."""
    head = json.dumps({"v": 1, "wraps": wraps}, sort_keys=True).encode()
    return len(head).to_bytes(4, "big") + head + ciphertext


def _parse_stored_form(data: bytes) -> tuple[dict[str, str], bytes]:
    """The wraps and ciphertext of a kept result (IntegrityError if it is not one)."""
    try:
        size = int.from_bytes(data[:4], "big")
        head = json.loads(data[4 : 4 + size])
        wraps = head["wraps"]
        if len(data) < 4 + size or head.get("v") != 1 or not isinstance(wraps, dict):
            raise ValueError("bad head")
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError("the stored result is not in fedhub's stored form") from exc
    return {str(k): str(v) for k, v in wraps.items()}, data[4 + size :]


def _code_of(exc: FederationError) -> str:
    if isinstance(exc, RemoteError):
        return exc.code
    if isinstance(exc, CallTimeoutError):
        return "timeout"
    if isinstance(exc, DecryptionError):
        return "undecryptable"
    if isinstance(exc, NodeError):
        return "busy"
    if isinstance(exc, CanonicalError):
        return "invalid_result"
    return "failed"


def _wire_code(rej: _Rejected) -> str:
    if isinstance(rej.error, RemoteError):
        return rej.error.code
    return {
        "bad_signature": "unauthorized",
        "malformed": "invalid_arguments",
        "misrouted": "not_found",
    }.get(rej.code, rej.code)


def _public_reason(exc: FederationError, code: str) -> str:
    """What the log may say: no argument values, only what kind of failure it was."""
    if code == "function_failed":
        return exc.message.split(":", 1)[0][:300]
    return exc.message[:300]


def _message_with_hint(exc: FederationError) -> str:
    return f"{exc.message} ({exc.hint})" if exc.hint else exc.message


def _signed_by(record: KeyRecord, header_bytes: bytes, sig: bytes) -> bool:
    """Whether a request header is signed by ``record``'s key."""
    try:
        verify(record.sign_key_bytes(), DOMAIN_REQUEST, header_bytes, sig)
    except SignatureError:
        return False
    return True


def _looks_like_id(rid: str) -> bool:
    return 8 <= len(rid) <= 64 and all(c.isalnum() or c in "_-" for c in rid)


def _time_text(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
