"""What the node sends a caller: result, error and progress frames, and how they are sent.

A reply that cannot be sent is never silent: a result frame too large for the connection
is refused before it is logged as completed (:meth:`Replies.check_size`, the pipeline
then fails the call with code ``oversize`` and tells the caller at once), and any other
reply the connection refuses is logged as a warning ``call.reply_failed`` with the
reason; the log still holds the request's outcome, which ``fedhub status`` and
``fedhub fetch`` report.

Replies are published without waiting for the server: the NATS client gathers what a
burst publishes and writes it to the socket at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from hub.clock import now
from hub.crypto import seal_secret
from hub.envelopes import Bulk, ReplyHeader, pack_reply
from hub.errors import FederationError, OversizeError

__all__ = ["Replies", "Send", "error_frame", "message_with_hint"]

log = structlog.get_logger(__name__)

Send = Callable[[str, bytes], Awaitable[None]]

#: The largest ``log_seq`` a result header is sized for before its event is logged.
_SEQ_BOUND = 10**15


def message_with_hint(exc: FederationError) -> str:
    """An error's message, with its hint in parentheses when it has one."""
    return f"{exc.message} ({exc.hint})" if exc.hint else exc.message


def error_frame(
    rid: str, node_id: str, code: str, message: str, content_key: bytes | None = None
) -> bytes:
    """An ``error`` reply: the text sealed with the request's content key when the node
    could open the request, else (public, shortened) in the header."""
    if content_key is not None:
        header = ReplyHeader(kind="error", id=rid, node=node_id, time=now(), code=code)
        return pack_reply(header, seal_secret(content_key, message.encode()))
    header = ReplyHeader(
        kind="error", id=rid, node=node_id, time=now(), code=code, message=message[:2000]
    )
    return pack_reply(header)


class Replies:
    """Builds and sends one node's replies."""

    def __init__(self, node_id: str, send: Send, max_payload: Callable[[], int]) -> None:
        self.node_id = node_id
        self._send = send
        self.max_payload = max_payload

    async def send(self, subject: str | None, data: bytes, *, request_id: str) -> bool:
        """Publish a reply; False (and a warning with the reason) if it could not be sent."""
        if not subject:
            return False
        try:
            await self._send(subject, data)
        except Exception as exc:  # the outcome is logged; the caller can ask for it again
            reason = str(exc) or type(exc).__name__
            log.warning("call.reply_failed", request_id=request_id, reason=reason)
            return False
        return True

    async def error(
        self, rid: str, reply: str, code: str, message: str, content_key: bytes | None = None
    ) -> bool:
        """Tell the caller a request failed."""
        frame = error_frame(rid, self.node_id, code, message, content_key)
        return await self.send(reply, frame, request_id=rid)

    def result_frame(
        self,
        rid: str,
        *,
        result_hash: str,
        wraps: dict[str, str],
        ciphertext: bytes,
        kept_as: str | None,
        log_seq: int,
        bulk: Bulk | None = None,
    ) -> bytes:
        """A ``result`` reply: the sealed result (or, with ``bulk``, the announcement of
        the bulk transfer that carries it), its key wrapped for the caller."""
        header = ReplyHeader(
            kind="result",
            id=rid,
            node=self.node_id,
            time=now(),
            result_hash=result_hash,
            wraps=wraps,
            object=kept_as,
            log_seq=log_seq,
            bulk=bulk,
        )
        return pack_reply(header, ciphertext)

    def reply_limit(self, reply_max: int | None) -> int:
        """The largest reply a caller gets in one message: what this connection carries,
        and at most the ``reply_max`` its request header names."""
        limit = self.max_payload()
        return limit if reply_max is None else min(limit, reply_max)

    def check_size(
        self,
        rid: str,
        *,
        result_hash: str,
        wraps: dict[str, str],
        ciphertext: bytes,
        kept_as: str | None,
        reply_max: int | None = None,
    ) -> None:
        """Raise :class:`OversizeError` when the result's reply frame would exceed what the
        connection carries in one message, or ``reply_max``, what the caller's server
        carries (checked before the call is logged as completed).
        """
        limit = self.reply_limit(reply_max)
        if len(ciphertext) < limit - 4096:
            return  # the header is far smaller than the room left
        frame = self.result_frame(
            rid,
            result_hash=result_hash,
            wraps=wraps,
            ciphertext=b"",
            kept_as=kept_as,
            log_seq=_SEQ_BOUND,
        )
        size = len(frame) + len(ciphertext)
        if size > limit:
            raise OversizeError(
                f"the result is {size:,} bytes sealed, and a reply to this caller can "
                f"carry at most {limit:,} bytes; results this large need a chunked transfer, "
                "which this node does not offer for it",
                hint="return less data per call (e.g. split the work into smaller calls)",
            )

    async def progress(
        self, rid: str, reply: str, content_key: bytes, fraction_ppm: int | None, message: str
    ) -> None:
        """Send a progress report (its message sealed for the caller)."""
        header = ReplyHeader(
            kind="progress", id=rid, node=self.node_id, time=now(), fraction_ppm=fraction_ppm
        )
        body = seal_secret(content_key, message.encode()) if message else b""
        await self.send(reply, pack_reply(header, body), request_id=rid)
