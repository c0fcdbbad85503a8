"""The console's calls: submitted from a form, followed live, kept for this session.

``POST /api/submit/<address>`` sends a call and answers its request id at once;
``GET /api/requests/<id>/events`` streams its progress and then its outcome as server-sent
events (``progress``, then ``result`` or ``failure``); ``GET /api/requests`` lists the calls
of this console session, ``GET /api/requests/<id>`` one of them, and
``GET /api/requests/<id>/result.json`` downloads a result. Results stay in the console's
memory only while it runs (the node keeps its own copy: ``fedhub fetch``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from hub.call_handle import CallHandle
from hub.errors import ArgumentError, FederationError, NotFoundError

__all__ = ["CallRecord", "Calls"]

#: How often a progress stream looks at its call (seconds).
_POLL = 0.1


@dataclass
class CallRecord:
    """One call made from the console."""

    handle: CallHandle
    submitted: float = field(default_factory=time.time)
    result: Any = None
    error: dict[str, Any] | None = None
    #: Set once the outcome (result or error) is stored.
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def state(self) -> str:
        if not self.settled.is_set():
            return "running"
        return "failed" if self.error is not None else "completed"

    def to_json(self) -> dict[str, Any]:
        fraction, message = self.handle.progress
        out: dict[str, Any] = {
            "request_id": self.handle.request_id,
            "address": self.handle.address,
            "submitted": self.submitted,
            "state": self.state,
            "progress": fraction,
            "message": message,
        }
        if self.state == "completed":
            out["result"] = self.result
        if self.error is not None:
            out["error"] = self.error
        return out


def failure(exc: FederationError) -> dict[str, Any]:
    """A typed error as the console shows it."""
    return {"error": type(exc).__name__, "message": exc.message, "hint": exc.hint}


class Calls:
    """The calls of this console session, by request id."""

    def __init__(self) -> None:
        self.records: dict[str, CallRecord] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, handle: CallHandle, to_json: Any) -> CallRecord:
        """Keep ``handle``; its outcome is made JSON with ``to_json`` when it arrives."""
        record = CallRecord(handle)
        self.records[handle.request_id] = record

        async def settle() -> None:
            try:
                record.result = to_json(await handle.result())
            except FederationError as exc:
                record.error = failure(exc)
            except TypeError as exc:  # a result JSON cannot show
                record.error = failure(ArgumentError(f"the result cannot be shown: {exc}"))
            finally:
                record.settled.set()

        task = asyncio.create_task(settle())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return record

    def get(self, request_id: str) -> CallRecord:
        record = self.records.get(request_id)
        if record is None:
            raise NotFoundError(f"no call {request_id} in this console session")
        return record


async def events(calls: Calls, request_id: str) -> AsyncIterator[str]:
    """The server-sent events of one call: progress while it runs, then its outcome."""
    record = calls.get(request_id)
    shown: tuple[float | None, str] | None = None
    while record.state == "running":
        if record.handle.progress != shown:
            shown = record.handle.progress
            yield _event("progress", {"fraction": shown[0], "message": shown[1]})
        await asyncio.sleep(_POLL)
    await record.settled.wait()
    if record.handle.progress != shown:  # the last report, if it came with the outcome
        fraction, message = record.handle.progress
        yield _event("progress", {"fraction": fraction, "message": message})
    if record.error is not None:
        yield _event("failure", record.error)
    else:
        yield _event("result", {"request_id": request_id, "result": record.result})


def _event(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n"


def stream(calls: Calls, request_id: str) -> Response:
    """The event stream response (404 JSON for an unknown request id)."""
    try:
        calls.get(request_id)
    except NotFoundError as exc:
        return JSONResponse(failure(exc), status_code=404)
    return StreamingResponse(
        events(calls, request_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store"},
    )


def download(record: CallRecord) -> Response:
    """A completed call's result as a JSON file."""
    if record.state != "completed":
        return JSONResponse({"error": "NotReady", "state": record.state}, status_code=409)
    name = f"{record.handle.address}-{record.handle.request_id}.json"
    return Response(
        json.dumps(record.result, indent=2),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


async def submit(request: Request, calls: Calls, address: str, to_json: Any) -> Response:
    """``POST /api/submit/<address>``: send the call; its request id at once (202)."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    arguments = body.get("arguments") if isinstance(body, dict) else None
    if not isinstance(arguments, dict):
        return JSONResponse(
            failure(ArgumentError("no arguments object", hint='send {"arguments": {...}}')),
            status_code=400,
        )
    client = request.app.state.client
    try:
        handle = await client.submit(address, arguments)
    except FederationError as exc:
        from hub.errors import error_code, service_status

        status = 400 if isinstance(exc, ArgumentError) else service_status(error_code(exc))
        return JSONResponse(failure(exc), status_code=max(400, status))
    calls.add(handle, to_json)
    return JSONResponse({"request_id": handle.request_id, "address": address}, status_code=202)
