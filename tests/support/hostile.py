"""Tools for the failure and hostile-party tests: a node on its own loop, a hub spy, forged
requests, and a read-only view of a node's event log.

Everything is real: requests are built with the same primitives the client uses, signed by
real keys and published to real servers; the log is read from the node's SQLite file.
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
import sqlite3
import threading
from collections import Counter
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from hub import codec
from hub.audit import AuditReport, audit_events
from hub.canonical import b64e, parse_canonical
from hub.clock import format_time, now
from hub.crypto import blake2b_256, new_content_key, seal_secret, wrap_key
from hub.envelopes import Reply, RequestHeader, pack_request, unpack_reply
from hub.keys import KeyPair
from hub.logfile import iter_log
from hub.subjects import call_subject, inbox_subject, info_subject, validate_identity
from node.config import NodeConfig
from node.daemon import NodeDaemon

T = TypeVar("T")

FINAL = ("request.completed", "request.failed")


# --- waiting ----------------------------------------------------------------------------


async def wait_reachable(client: Any, site: str, module: str, limit: float = 10.0) -> None:
    """Wait until ``site.module`` answers its info request from ``client``'s server.

    Subscription interest crosses leaf connections a moment after a node starts. Probes
    with short raw requests first: where someone listens on ``>`` (the spy) a request
    nobody serves times out instead of failing with "no responders".
    """
    nc: NatsClient = client.nc
    async with asyncio.timeout(limit):
        while True:
            try:
                await nc.request(info_subject(site, module), b"", timeout=0.3)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.05)
            else:
                break
        await client.module_info(site, module, refresh=True)


async def wait_until(check: Any, limit: float = 10.0, every: float = 0.05) -> None:
    """Poll ``check()`` (sync, or async) until it is true; TimeoutError after ``limit`` s.

    Polling, not an event: the state lives in another process or on a server.
    """
    async with asyncio.timeout(limit):
        while True:
            ok = check()
            if inspect.isawaitable(ok):
                ok = await ok
            if ok:
                return
            await asyncio.sleep(every)


# --- the node's log, read from the outside ------------------------------------------------


@dataclass(frozen=True)
class LogView:
    """Read-only view of a node's SQLite event log (safe while the node runs)."""

    path: Path

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, list(params)).fetchall()
        finally:
            conn.close()

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Parsed events in order, optionally only of one type."""
        if kind is None:
            rows = self._rows("SELECT body FROM events ORDER BY seq")
        else:
            rows = self._rows("SELECT body FROM events WHERE type = ? ORDER BY seq", [kind])
        return [parse_canonical(bytes(r[0])) for r in rows]

    def counts(self) -> Counter[str]:
        """Events per type."""
        return Counter(
            {str(t): int(n) for t, n in self._rows("SELECT type, COUNT(*) FROM events GROUP BY 1")}
        )

    def for_request(self, rid: str) -> list[dict[str, Any]]:
        """Every event of one request, in order (the ``data`` parts)."""
        rows = self._rows("SELECT body FROM events ORDER BY seq")
        events = (parse_canonical(bytes(r[0]))["data"] for r in rows)
        return [data for data in events if data.get("request_id") == rid]

    def count(self, kind: str) -> int:
        """How many events of one type."""
        return int(self._rows("SELECT COUNT(*) FROM events WHERE type = ?", [kind])[0][0])

    def rejections(self, skip: int = 0) -> list[dict[str, Any]]:
        """``request.rejected`` data in order, leaving out the first ``skip``."""
        rows = self._rows(
            "SELECT body FROM events WHERE type = 'request.rejected' ORDER BY seq"
            " LIMIT -1 OFFSET ?",
            [skip],
        )
        return [parse_canonical(bytes(r[0]))["data"] for r in rows]

    def finals(self) -> dict[str, list[dict[str, Any]]]:
        """Request id → its final events (completed/failed), in order."""
        out: dict[str, list[dict[str, Any]]] = {}
        for e in self.events():
            if e["type"] in FINAL:
                out.setdefault(e["data"]["request_id"], []).append(e["data"])
        return out

    def raw_bytes(self) -> bytes:
        """The whole database file (and its WAL) as bytes, to search for plaintext."""
        parts = [self.path.read_bytes()]
        wal = self.path.with_name(self.path.name + "-wal")
        if wal.exists():
            parts.append(wal.read_bytes())
        return b"".join(parts)


def audit_node(cfg: NodeConfig, site_key: bytes) -> AuditReport:
    """Audit a node's log trusting only the pinned key of its site."""
    return audit_events(iter_log(cfg.log_path), trusted_sites={cfg.node.site: site_key}, threads=2)


# --- a node on a loop of its own ----------------------------------------------------------


class NodeThread:
    """A :class:`NodeDaemon` served by an event loop in its own thread.

    For tests whose own thread must block (a sync client inside a running loop) or that
    drive the node's pipeline from synchronous code (hypothesis).
    """

    def __init__(self, cfg: NodeConfig, *, grace: float = 5.0) -> None:
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-node", daemon=True)
        self.thread.start()
        self.node = NodeDaemon(cfg, grace=grace)
        try:
            self.run(self.node.__aenter__(), timeout=30)
        except BaseException:
            self._stop_loop()
            raise

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the node's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Stop the node and its loop (harmless twice)."""
        if self.loop.is_closed():
            return
        try:
            self.run(self.node.stop("test"), timeout=30)
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


# --- a nosy party on the hub ----------------------------------------------------------------


@dataclass
class Captured:
    """One message seen by the spy."""

    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    reply: str = ""

    def is_event_copy(self) -> bool:
        """A node's signed event log on its way to or from a copy the federation keeps
        (``fh.events.*``, or a delivery of an ``FH_EVENTS*`` stream to one of its readers,
        such as an auditor of the hub's copies): metadata the hub holds by design
        (docs/topology.md), never a payload."""
        return self.subject.startswith("fh.events.") or ".FH_EVENTS" in self.reply


@dataclass
class Spy:
    """Subscribed to ``>``: keeps every message it can see."""

    nc: NatsClient
    seen: list[Captured] = field(default_factory=list)
    _sub: Any = None

    async def start(self, *also: str) -> Spy:
        """Subscribe to everything (and to the ``also`` patterns); make sure the server knows."""

        async def keep(msg: Msg) -> None:
            self.seen.append(
                Captured(msg.subject, bytes(msg.data), dict(msg.headers or {}), msg.reply or "")
            )

        self._sub = await self.nc.subscribe(">", cb=keep)
        for pattern in also:
            await self.nc.subscribe(pattern, cb=keep)
        await self.nc.flush()
        return self

    def holding(self, needle: bytes) -> list[Captured]:
        """Messages whose payload contains ``needle``."""
        return [m for m in self.seen if needle in m.data]

    def on(self, prefix: str) -> list[Captured]:
        """Messages whose subject starts with ``prefix``."""
        return [m for m in self.seen if m.subject.startswith(prefix)]

    def leaks(self, needles: Iterable[bytes]) -> list[tuple[str, bytes]]:
        """(subject, needle) for every needle found in a payload or a header."""
        found = []
        needles = list(needles)
        for m in self.seen:
            blob = m.data + "".join(f"{k}:{v}" for k, v in m.headers.items()).encode()
            found += [(m.subject, n) for n in needles if n in blob]
        return found


def find_in_tree(root: Path, needles: Iterable[bytes]) -> list[tuple[Path, bytes]]:
    """(file, needle) for every needle found in any file under ``root``."""
    needles = list(needles)
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                blob = path.read_bytes()
            except OSError:  # a file removed while we walk (compaction)
                continue
            found += [(path, n) for n in needles if n in blob]
    return found


# --- forged and hand-made requests ----------------------------------------------------------


@dataclass(frozen=True)
class Crafted:
    """A request built by hand: its id, the inbox it names, the call subject, the bytes."""

    request_id: str
    reply: str
    subject: str
    data: bytes


def craft_request(
    caller: KeyPair,
    *,
    node_kid: str,
    node_box_key: bytes,
    address: str,
    kwargs: Mapping[str, object],
    claim: str | None = None,
    claim_kid: str | None = None,
    reply: str | None = None,
    wraps: dict[str, str] | None = None,
    ciphertext: bytes | None = None,
    timeout_ms: int = 30_000,
    nonce: str | None = None,
    sent: str | None = None,
    request_id: str | None = None,
) -> Crafted:
    """A request envelope signed by ``caller`` (as the client would build it), with overrides.

    ``claim``/``claim_kid`` put another identity/key id into the header (still signed by
    ``caller``); ``wraps`` replaces the wrapped content keys; ``ciphertext`` replaces the
    encrypted arguments (the header then names its hash, so only the key is wrong).
    """
    site, module, function = address.split(".", 2)
    identity = claim or caller.identity
    ident = validate_identity(identity)
    key = new_content_key()
    body = (
        ciphertext if ciphertext is not None else seal_secret(key, codec.encode_many(dict(kwargs)))
    )
    rid = request_id or secrets.token_urlsafe(16)
    inbox = reply or inbox_subject(ident.site, ident.name, secrets.token_urlsafe(8))
    header = RequestHeader(
        id=rid,
        caller=identity,
        kid=claim_kid or caller.kid,
        site=site,
        module=module,
        function=function,
        time=sent or now(),
        nonce=nonce or b64e(secrets.token_bytes(16)),
        timeout_ms=timeout_ms,
        reply=inbox,
        payload_hash=blake2b_256(body).hex(),
        payload_size=len(body),
        wraps=wraps
        if wraps is not None
        else {node_kid: b64e(wrap_key(caller.box_secret, caller.box_public, node_box_key, key))},
    )
    data = pack_request(header, body, caller.signing_key)
    return Crafted(rid, inbox, call_subject(site, module, function), data)


def time_text(offset_seconds: float) -> str:
    """A header time ``offset_seconds`` from now (negative: in the past)."""
    return format_time(datetime.now(UTC) + timedelta(seconds=offset_seconds))


def flip_bit(data: bytes, bit: int) -> bytes:
    """``data`` with one bit inverted."""
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- answers to hand-made requests ------------------------------------------------------------


async def publish_and_wait(
    nc: NatsClient, crafted: Crafted, *, msg_id: str | None = None, limit: float = 10.0
) -> Reply:
    """Publish ``crafted`` to the call stream and return the node's first non-progress reply.

    Listens on the inbox the request names (a node answers only there).
    """
    sub = await nc.subscribe(crafted.reply)
    try:
        await nc.flush()
        await nc.jetstream().publish(
            crafted.subject, crafted.data, headers={"Nats-Msg-Id": msg_id or crafted.request_id}
        )
        async with asyncio.timeout(limit):
            while True:
                msg = await sub.next_msg(timeout=limit)
                reply = unpack_reply(msg.data)
                if reply.header.kind != "progress":
                    return reply
    finally:
        await sub.unsubscribe()
