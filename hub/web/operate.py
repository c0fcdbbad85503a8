"""The operator's pages: a node's status, queue, calls in flight, recent events as a
timeline, and graphs (calls per minute by outcome, latency, queue depth over time).

The data comes from an :class:`~hub.web.app.OperatorView` (``fedhub-node web`` gives one
reading the node's own log and NATS). Queue depth has no history in the log, so the
console samples it every :data:`SAMPLE_EVERY` seconds while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from types import TracebackType
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub.errors import FederationError, NotFoundError
from hub.lifecycle import RequestState
from hub.web.app import OperatorView, render
from hub.web.charts import bar_chart, line_chart

__all__ = ["Sampler", "routes"]

SAMPLE_EVERY = 5.0
#: Queue depth samples kept (an hour at the default rate).
SAMPLES = 720


class Sampler:
    """Samples the node's queue depth in the background while the console runs."""

    def __init__(self, view: OperatorView | None) -> None:
        self.view = view
        self.depth: deque[tuple[float, int]] = deque(maxlen=SAMPLES)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Sampler:
        if self.view is not None:
            self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        assert self.view is not None
        while True:
            with contextlib.suppress(FederationError, OSError, KeyError, TypeError):
                depth = (await self.view.status()).get("queue_depth")
                if isinstance(depth, int):
                    self.depth.append((time.time(), depth))
            await asyncio.sleep(SAMPLE_EVERY)


def _view(request: Request) -> OperatorView:
    view: OperatorView | None = request.app.state.settings.operator
    if view is None:
        raise NotFoundError(
            "this console was started without a node",
            hint="operators start it with `fedhub-node web --config NODE.toml`",
        )
    return view


async def _data(request: Request) -> dict[str, Any]:
    view = _view(request)
    status, events, series = await asyncio.gather(view.status(), view.events(50), view.series())
    sampler: Sampler = request.app.state.sampler
    series["queue_depth"] = [
        {"time": time.strftime("%H:%M:%S", time.gmtime(t)), "depth": d} for t, d in sampler.depth
    ]
    return {"status": status, "events": events, "series": series}


def charts(series: dict[str, Any]) -> list[str]:
    """The operator page's graphs as SVG."""
    minutes = series.get("minutes", [])
    labels = [m["minute"][11:16] for m in minutes]
    outcomes = {
        name: [m.get(name, 0) for m in minutes]
        for name in (
            RequestState.COMPLETED.value,
            RequestState.FAILED.value,
            RequestState.REJECTED.value,
        )
    }
    latency = {
        "median": [m.get("latency_median_ms") for m in minutes],
        "p95": [m.get("latency_p95_ms") for m in minutes],
    }
    depth = series.get("queue_depth", [])
    return [
        bar_chart("calls per minute by outcome", labels, outcomes, "calls"),
        line_chart("latency, accepted to outcome", labels, latency, "ms"),
        line_chart(
            "queue depth (sampled by this console)",
            [d["time"] for d in depth],
            {"depth": [d["depth"] for d in depth]},
            "calls",
        ),
    ]


async def operator_page(request: Request) -> Response:
    data = await _data(request)
    return render(request, "operator.html", charts=charts(data["series"]), **data)


async def api_operator(request: Request) -> Response:
    return JSONResponse(await _data(request))


def routes() -> list[Route]:
    """The operator's routes."""
    return [Route("/node", operator_page), Route("/api/node", api_operator)]
