"""Health and Prometheus metrics of a node: ``/healthz`` and ``/metrics`` over HTTP.

Off by default; ``[observability] listen = "127.0.0.1:9464"`` turns it on. Two parts:

- :class:`NodeMetrics`: the figures, kept in a registry of the node's own (prometheus
  client). The request path reports each call's outcome with :meth:`NodeMetrics.call_finished`;
  the transfer layer reports bytes with :meth:`NodeMetrics.transfer_bytes`; the rest is read
  when scraped.
- :class:`ObservabilityServer`: a small HTTP/1.1 server on the node's event loop (no thread:
  a node whose loop is stuck does not answer its health check either). ``GET /healthz``:
  200 when connected to NATS and the event log is writable, 503 otherwise, with a small JSON
  body saying which. ``GET /metrics``: the Prometheus text format; queue depth (the calls
  consumer's pending and ack-pending), log head and the NATS gauge are read at each scrape.

Labels are bounded: a module label is one of the configured modules or ``unknown`` (a
message on a subject naming any other module), an outcome one of :data:`OUTCOMES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from hub.errors import ConfigError
from hub.lifecycle import FINAL
from node.config import LISTEN_PATTERN
from node.natslink import safe_url
from node.pipeline import DUPLICATE

if TYPE_CHECKING:
    from node.daemon import NodeDaemon

__all__ = ["LATENCY_BUCKETS", "OUTCOMES", "NodeMetrics", "ObservabilityServer", "parse_listen"]

log = structlog.get_logger(__name__)

#: Outcomes a call is counted under: how its request ended, or a copy of one already
#: known (anything else is counted as ``other``).
OUTCOMES = frozenset({state.value for state in FINAL} | {DUPLICATE})
#: Seconds; from sub-millisecond inline functions to long computations.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Free bytes below which the log's disk is reported as not writable.
MIN_FREE_BYTES = 16 * 1024 * 1024
#: Largest request head the HTTP server reads.
MAX_HEAD = 8192
#: Seconds a client has to send its request.
READ_TIMEOUT = 5.0


class NodeMetrics:
    """The node's figures in a registry of its own (not the process-global default)."""

    def __init__(self, modules: Iterable[str]) -> None:
        self.modules = frozenset(modules)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.calls = Counter(
            "fedhub_calls",
            "Calls handled by this node process, by module and outcome.",
            ["module", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fedhub_call_duration_seconds",
            "Time from taking a call off the stream to its logged outcome.",
            ["module"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_pending = Gauge(
            "fedhub_queue_pending",
            "Calls waiting in the stream for any worker of this node (consumer num_pending).",
            registry=self.registry,
        )
        self.queue_ack_pending = Gauge(
            "fedhub_queue_ack_pending",
            "Calls handed out to workers and not yet acknowledged (consumer num_ack_pending).",
            registry=self.registry,
        )
        self.log_head = Gauge(
            "fedhub_log_head_seq",
            "Sequence number of the last event in this process's event log.",
            registry=self.registry,
        )
        self.transfer = Counter(
            "fedhub_transfer_bytes",
            "Bytes of data moved by the transfer layer, by direction.",
            ["direction"],
            registry=self.registry,
        )
        self.nats_connected = Gauge(
            "fedhub_nats_connected",
            "1 while connected to the site's NATS server, else 0.",
            registry=self.registry,
        )
        self.nats_outages = Gauge(
            "fedhub_nats_outages",
            "Times the NATS connection was lost since the node connected.",
            registry=self.registry,
        )
        for module in self.modules:  # present (at 0) before the first call
            for outcome in OUTCOMES:
                self.calls.labels(module, outcome)
        for direction in ("in", "out"):
            self.transfer.labels(direction)

    def module_label(self, module: str | None) -> str:
        """``module`` if configured, else ``unknown`` (labels stay bounded)."""
        return module if module in self.modules else "unknown"

    def call_finished(self, module: str | None, outcome: str, seconds: float) -> None:
        """Count one call's outcome and observe how long it took."""
        label, outcome = self.module_label(module), str(outcome)
        self.calls.labels(label, outcome if outcome in OUTCOMES else "other").inc()
        self.latency.labels(label).observe(max(0.0, seconds))

    def transfer_bytes(self, n: int, direction: str = "out") -> None:
        """Count ``n`` bytes moved (``in`` or ``out``)."""
        self.transfer.labels("in" if direction == "in" else "out").inc(max(0, n))

    def render(self) -> bytes:
        """The Prometheus text exposition of every figure."""
        return generate_latest(self.registry)


def module_of(subject: str) -> str | None:
    """The module token of a call subject ``fh.call.<site>.<module>.<function>``."""
    parts = subject.split(".", 4)
    return parts[3] if len(parts) > 4 else None


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) as ``(host, port)``; ConfigError names the key."""
    host, _, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not listen or not re.fullmatch(LISTEN_PATTERN, listen) or not 0 < int(port) < 65536:
        raise ConfigError(
            f"observability.listen: {listen!r} is not host:port",
            hint='for example listen = "127.0.0.1:9464"',
        )
    return host, int(port)


class ObservabilityServer:
    """``/healthz`` and ``/metrics`` of ``daemon`` on ``listen``; an async context manager.

    Start it before the daemon: until the node is connected, ``/healthz`` says 503.
    """

    def __init__(self, daemon: NodeDaemon, listen: str) -> None:
        self.daemon = daemon
        self.host, self.port = parse_listen(listen)
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        """``host:port`` the endpoint listens on."""
        return f"{self.host}:{self.port}"

    async def __aenter__(self) -> ObservabilityServer:
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=MAX_HEAD
            )
        except OSError as exc:
            raise ConfigError(
                f"observability.listen: cannot listen on {self.host}:{self.port}: {exc.strerror}",
                hint="choose a free port, or leave listen empty to turn the endpoint off",
            ) from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("observability.listening", address=self.address)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    # --- what is served --------------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        """``(status, body)`` of ``/healthz``."""
        d = self.daemon
        connected = d.link is not None and d.link.connected
        writable, why = self._log_writable()
        ok = connected and writable and not d.stopping
        body: dict[str, Any] = {
            "status": "ok" if ok else "unavailable",
            "node": d.cfg.identity,
            "nats": {"connected": connected, "url": safe_url(d.url) if d.url else None},
            "log": {"writable": writable, **({"reason": why} if why else {})},
        }
        if d.stopping:
            body["stopping"] = True
        return (200 if ok else 503), body

    def _log_writable(self) -> tuple[bool, str | None]:
        eventlog = self.daemon.eventlog
        if eventlog is None:
            return False, "not open yet"
        path = eventlog.path
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
            return False, f"{path} is not writable"
        free = shutil.disk_usage(path.parent).free
        if free < MIN_FREE_BYTES:
            return False, f"{free} bytes free on the log's disk"
        return True, None

    async def metrics_text(self) -> bytes:
        """Refresh the figures read at scrape time, then render them all."""
        d, m = self.daemon, self.daemon.metrics
        assert m is not None
        m.nats_connected.set(1 if d.link is not None and d.link.connected else 0)
        m.nats_outages.set(d.link.outages if d.link is not None else 0)
        if d.eventlog is not None:
            m.log_head.set(d.eventlog.size)
        if d.link is not None and d.link.connected and d.consumer is not None:
            queue = await d.queue_depth()
            if queue is not None:
                m.queue_pending.set(queue["waiting"])
                m.queue_ack_pending.set(queue["unacked"])
        return m.render()

    # --- HTTP --------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.LimitOverrunError, ValueError):
                await _respond(writer, 431, b"request head too large\n", "text/plain")
                return
            except (asyncio.IncompleteReadError, TimeoutError):
                await _respond(writer, 400, b"bad request\n", "text/plain")
                return
            method, path = _request_line(head)
            if not method:
                await _respond(writer, 400, b"bad request\n", "text/plain")
                return
            if method not in ("GET", "HEAD"):
                await _respond(writer, 405, b"only GET\n", "text/plain")
                return
            only_head = method == "HEAD"
            if path == "/healthz":
                status, body = self.health()
                data = json.dumps(body).encode() + b"\n"
                await _respond(writer, status, data, "application/json", head_only=only_head)
            elif path == "/metrics":
                if self.daemon.metrics is None:
                    await _respond(writer, 404, b"metrics are off\n", "text/plain")
                    return
                text = await self.metrics_text()
                await _respond(writer, 200, text, CONTENT_TYPE_LATEST, head_only=only_head)
            else:
                await _respond(writer, 404, b"try /healthz or /metrics\n", "text/plain")
        except (ConnectionError, OSError):
            pass  # the client went away
        except Exception as exc:  # never let a scrape take the server down
            log.warning("observability.failed", error=f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                await _respond(writer, 500, b"internal error\n", "text/plain")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _request_line(head: bytes) -> tuple[str, str]:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return "", ""
    return parts[0], parts[1].split("?", 1)[0]


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    content_type: str,
    *,
    head_only: bool = False,
) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    writer.write(head if head_only else head + body)
    await writer.drain()
