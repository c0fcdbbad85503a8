"""The operator's view of one node for the web console (``fedhub-node web``).

Everything is read, never written: the node's SQLite log opened read-only (WAL lets the
running node go on writing), and the status file the running node rewrites every second
(queue depth, calls in flight, modules). Works on a stopped node too, from its log alone.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson

from hub.lifecycle import UNFINISHED, RequestState
from node.config import NodeConfig
from node.daemon import read_status_file

__all__ = ["NodeView"]

#: Events read for the graphs (the newest; a busy node's last hour may hold more).
SERIES_EVENTS = 50_000
#: Minutes the graphs cover.
MINUTES = 60
_MARKS = ", ".join("?" for _ in UNFINISHED)
_IN_FLIGHT = (  # only placeholders are formatted in
    "SELECT request_id, caller, address, state, received_time FROM requests "  # noqa: S608
    f"WHERE state IN ({_MARKS}) ORDER BY received_seq DESC LIMIT 100"
)
#: The events the graphs count, by the state they end a request in (plain text keys).
_OUTCOMES = {
    "request.completed": RequestState.COMPLETED.value,
    "request.failed": RequestState.FAILED.value,
    "request.rejected": RequestState.REJECTED.value,
}


class NodeView:
    """:class:`hub.web.OperatorView` of the node configured by ``cfg``."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg

    def _connect(self) -> sqlite3.Connection:
        path: Path = self.cfg.log_path
        return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)

    async def status(self) -> dict[str, Any]:
        """Identity, log head, requests by state, queue depth, calls in flight."""
        return await asyncio.to_thread(self._status)

    def _status(self) -> dict[str, Any]:
        cfg = self.cfg
        running = read_status_file(cfg.node.data_dir) or {}
        queue = running.get("queue") or {}
        out: dict[str, Any] = {
            "node": cfg.identity,
            "site": cfg.node.site,
            "log": str(cfg.log_path),
            "running": bool(running),
            "modules": [m.name for m in cfg.modules],
            "queue_depth": queue.get("waiting") if isinstance(queue, dict) else None,
            "queue_unacked": queue.get("unacked") if isinstance(queue, dict) else None,
            "queue_error": None if running else "the node is not running",
            "head_seq": None,
            "head_hash": None,
            "requests": {},
            "in_flight": [],
        }
        if not cfg.log_path.exists():
            out["queue_error"] = "no log yet (run fedhub-node init)"
            return out
        with self._connect() as conn:
            head = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            if head:
                out["head_seq"], out["head_hash"] = head[0], bytes(head[1]).hex()
            out["requests"] = dict(
                conn.execute("SELECT state, count(*) FROM requests GROUP BY state").fetchall()
            )
            rows = conn.execute(_IN_FLIGHT, [s.value for s in UNFINISHED]).fetchall()
        keys = ("request_id", "caller", "address", "state", "received_time")
        out["in_flight"] = [dict(zip(keys, row, strict=True)) for row in rows]
        return out

    async def events(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` events, newest first."""
        return await asyncio.to_thread(self._events, limit)

    def _events(self, limit: int) -> list[dict[str, Any]]:
        if not self.cfg.log_path.exists():
            return []
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT seq, body FROM events ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_event(seq, body) for seq, body in rows]

    async def series(self) -> dict[str, Any]:
        """Calls per minute by outcome, and latency (accepted to outcome) per minute."""
        return await asyncio.to_thread(self._series)

    def _series(self) -> dict[str, Any]:
        if not self.cfg.log_path.exists():
            return {"minutes": []}
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT seq, body FROM events ORDER BY seq DESC LIMIT ?", (SERIES_EVENTS,)
            ).fetchall()
        events = [_event(seq, body) for seq, body in reversed(rows)]
        now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        first = now - dt.timedelta(minutes=MINUTES - 1)
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        latencies: dict[str, list[float]] = defaultdict(list)
        accepted: dict[str, dt.datetime] = {}
        for event in events:
            when = _time(event.get("time"))
            if when is None:
                continue
            rid = event.get("request_id")
            if event["type"] == "request.accepted" and rid:
                accepted[rid] = when
            outcome = _OUTCOMES.get(str(event["type"]))
            if outcome is None or when < first:
                continue
            minute = when.strftime("%Y-%m-%dT%H:%M")
            counts[minute][outcome] += 1
            start = accepted.pop(rid, None) if rid else None
            if start is not None:
                latencies[minute].append((when - start).total_seconds() * 1000)
        minutes = []
        for i in range(MINUTES):
            label = (first + dt.timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M")
            entry: dict[str, Any] = {"minute": label, **counts.get(label, {})}
            spent = sorted(latencies.get(label, []))
            if spent:
                entry["latency_median_ms"] = round(statistics.median(spent), 2)
                entry["latency_p95_ms"] = round(
                    spent[min(len(spent) - 1, int(len(spent) * 0.95))], 2
                )
            minutes.append(entry)
        return {"minutes": minutes}


def _event(seq: int, body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {"seq": seq, "type": "(unreadable)", "time": None, "request_id": None}
    data = parsed.get("data") if isinstance(parsed, dict) else None
    return {
        "seq": seq,
        "type": parsed.get("type") if isinstance(parsed, dict) else None,
        "time": parsed.get("time") if isinstance(parsed, dict) else None,
        "request_id": data.get("request_id") if isinstance(data, dict) else None,
    }


def _time(text: object) -> dt.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
