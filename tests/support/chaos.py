"""Chaos, measured: a stream of calls across a federation while servers or the node fail.

A :class:`ChaosBench` starts, from the generated configs (TLS, NKeys), a hub of three
servers and the leaves of ``hereon`` and ``geomar``; a ``hereon`` node as its own
process (so it can be killed with SIGKILL); and a caller at ``geomar``. :meth:`ChaosBench.run`
sends calls at a steady rate to ``hereon.chaos.record`` (which appends a tag per run to a
file), injects one fault, keeps calling, then lets every call end and counts:

- **accepted**: the call's stream confirmed it (``submit`` returned); **refused**: never
  confirmed within its deadline;
- **completed** / **failed**: how the accepted calls ended at the caller;
- **duplicated**: calls with more than one outcome in the node's log, or run more than
  once (their tag written twice);
- **lost**: accepted calls without any outcome in the node's log;
- **recovery**: seconds from the fault's end to the next completed call; for a node
  restart also **resumed**: seconds from the restart until the last call the killed node
  held had ended; **longest gap**: the longest time with no call completing while calls
  were sent; **slowest**: the longest time a call took, submit to its end;
- **warn**: ``nats.disconnected`` warnings the node printed (one per outage).

The same bench serves the tests (short outages) and ``scripts/chaos.py`` (the full ones).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hub.client import CallHandle, Client
from hub.errors import FederationError
from hub.nats import LocalFederation, NatsServer
from node.config import NodeConfig
from support.hostile import LogView, audit_node, wait_reachable, wait_until
from support.world import World

__all__ = ["CALLER", "MODULE", "ChaosBench", "Fault", "Tally", "hub_server_of", "table"]

CALLER = "klaus@geomar"
MODULE = Path(__file__).resolve().parents[1] / "fixtures" / "modules" / "chaos.py"
_LEAF_UP = re.compile(r"127\.0\.0\.1:(\d+) - lid:\d+ - Leafnode connection created")

#: A fault: does its harm, returns (loop time it ended, loop time of a node restart or None).
Fault = Callable[["ChaosBench"], Awaitable[tuple[float, float | None]]]


def hub_server_of(fed: LocalFederation, site: str) -> NatsServer:
    """The hub server ``site``'s leaf is connected to now (from the leaf's own log)."""
    ports = _LEAF_UP.findall(fed.leaves[site].log_path.read_text())
    assert ports, f"{site}'s leaf never connected"
    servers = {s.name: s for h in fed.topology.hubs for s in h.servers}
    (name,) = [n for n, s in servers.items() if s.leafnode_port == int(ports[-1])]
    return fed.hubs[name]


@dataclass
class Tally:
    """What one scenario did to the calls."""

    scenario: str
    fault_seconds: float
    accepted: int = 0
    refused: int = 0
    completed: int = 0
    failed: int = 0
    duplicated: int = 0
    lost: int = 0
    recovery_s: float | None = None
    resumed_s: float | None = None
    longest_gap_s: float = 0.0
    slowest_s: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    node_outage_lines: int = 0
    node_tracebacks: int = 0
    audit_ok: bool = False
    audit_findings: list[str] = field(default_factory=list)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def as_dict(self) -> dict[str, Any]:
        """The tally as plain data (for ``--json``)."""
        return asdict(self)


@dataclass
class _Call:
    tag: str
    sent: float
    rid: str | None = None
    ended: float | None = None
    outcome: str = "pending"  # refused, completed, or the failure's code


class ChaosBench:
    """A federation, a node process, a caller; :meth:`run` one scenario on them."""

    def __init__(
        self,
        root: Path,
        *,
        rate: float = 10.0,
        work: float = 0.2,
        timeout: float = 20.0,
        calls: dict[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.rate, self.work, self.timeout = rate, work, timeout
        self.fed = LocalFederation(root / "federation", ("hereon", "geomar"), hub_servers=3)
        self.world = World(root / "world")
        self.world.person(CALLER)
        self.node_calls = {"max_in_flight": 64, **(calls or {})}
        self.cfg: NodeConfig | None = None
        self.runs = root / "runs.txt"
        self.node: Any = None
        self.client: Client | None = None
        self._calls: list[_Call] = []
        self._stopped = 0.0
        #: Tags of the calls the node had accepted and not ended when it was killed.
        self.held_at_kill: set[str] = set()

    async def __aenter__(self) -> ChaosBench:
        await self.fed.start()
        try:
            self.cfg = self.world.node_config(
                "hereon",
                nats_url=self.fed.site_url("hereon"),
                nats_credentials=self.fed.credentials("hereon", "node"),
                nats_ca=self.fed.generated.ca,
                modules=[("chaos", MODULE)],
                trust=["geomar"],
                users=[CALLER],
                grants=[(CALLER, "chaos", "*")],
                calls=self.node_calls,
            )
            self.node = await asyncio.to_thread(self.world.spawn_node, self.cfg)
            self.client = await Client.connect(
                self.fed.site_url("geomar"),
                CALLER,
                home=self.world.store.home,
                **self.fed.caller_auth(CALLER),
            )
            await wait_reachable(self.client, "hereon", "chaos", limit=20)
        except BaseException:
            await self.aclose()
            raise
        return self

    @property
    def config(self) -> NodeConfig:
        """The node's config (written once the federation runs)."""
        assert self.cfg is not None, "the bench has not started"
        return self.cfg

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the caller, stop the node, stop the servers."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
            self.client = None
        if self.node is not None:
            await asyncio.to_thread(self.node.stop)
            self.node = None
        await self.fed.aclose()

    # -- the stream of calls ---------------------------------------------------------------

    async def _one(self, call: _Call) -> None:
        assert self.client is not None
        try:
            handle: CallHandle = await self.client.submit(
                "hereon.chaos.record",
                path=str(self.runs),
                tag=call.tag,
                seconds=self.work,
                timeout=self.timeout,
            )
        except FederationError:
            call.outcome, call.ended = "refused", time.monotonic()
            return
        call.rid = handle.request_id
        try:
            assert await handle.result() == call.tag
            call.outcome = "completed"
        except FederationError as exc:
            call.outcome = getattr(exc, "code", None) or type(exc).__name__
        call.ended = time.monotonic()

    async def _stream(self, stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
        while not stop.is_set():
            call = _Call(f"c{len(self._calls)}", time.monotonic())
            self._calls.append(call)
            tasks.append(asyncio.create_task(self._one(call)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1 / self.rate)

    # -- one scenario ----------------------------------------------------------------------

    async def run(self, name: str, fault: Fault, *, before: float, after: float) -> Tally:
        """Calls for ``before`` s, the fault, calls for ``after`` s more; every call ends;
        then the counts, from the caller's view, the node's log and the runs file."""
        self._calls = []
        stop, tasks = asyncio.Event(), []
        streaming = asyncio.create_task(self._stream(stop, tasks))
        await asyncio.sleep(before)
        started = time.monotonic()
        fault_end, restarted = await fault(self)
        fault_seconds = fault_end - started
        await asyncio.sleep(after)
        stop.set()
        await streaming
        self._stopped = time.monotonic()
        async with asyncio.timeout(self.timeout + 30):
            await asyncio.gather(*tasks)
        tally = Tally(name, round(fault_seconds, 1), load=os.getloadavg())
        self._count(tally, fault_end, restarted)
        return tally

    def _count(self, tally: Tally, fault_end: float, restarted: float | None) -> None:
        calls = self._calls
        accepted = [c for c in calls if c.rid is not None]
        tally.accepted, tally.refused = len(accepted), sum(c.outcome == "refused" for c in calls)
        tally.completed = sum(c.outcome == "completed" for c in accepted)
        failures = Counter(c.outcome for c in accepted if c.outcome != "completed")
        tally.failed, tally.failures = sum(failures.values()), dict(failures)
        finals = LogView(self.config.log_path).finals()
        runs = Counter(self.runs.read_text().split()) if self.runs.exists() else Counter()
        tally.lost = sum(1 for c in accepted if c.rid not in finals)
        tally.duplicated = sum(
            1 for c in accepted if len(finals.get(c.rid or "", ())) > 1 or runs[c.tag] > 1
        )
        done = sorted(c.ended for c in calls if c.outcome == "completed" and c.ended)
        # while calls were being sent (the drain at the end is no gap)
        gaps = [b - a for a, b in itertools.pairwise(t for t in done if t <= self._stopped)]
        tally.longest_gap_s = round(max(gaps, default=0.0), 2)
        tally.slowest_s = round(
            max((c.ended - c.sent for c in accepted if c.ended), default=0.0), 2
        )
        after = [t for t in done if t >= fault_end]
        tally.recovery_s = round(min(after) - fault_end, 2) if after else None
        if restarted is not None:
            held = [c.ended for c in accepted if c.tag in self.held_at_kill and c.ended]
            tally.resumed_s = round(max(held) - restarted, 2) if held else 0.0
        out = (self.config.node.data_dir / "node.out").read_text(errors="replace")
        tally.node_outage_lines = out.count("nats.disconnected")
        tally.node_tracebacks = out.count("Traceback")
        report = audit_node(self.config, self.world.site("hereon").sign_public)
        tally.audit_ok = report.ok
        tally.audit_findings = [f.line() for f in report.findings][:5]

    # -- faults ----------------------------------------------------------------------------

    @staticmethod
    def kill_hub_server() -> Fault:
        """SIGKILL the hub server the node's leaf is connected to; it stays down."""

        async def fault(bench: ChaosBench) -> tuple[float, float | None]:
            await hub_server_of(bench.fed, "hereon").kill()
            return time.monotonic(), None

        return fault

    @staticmethod
    def stop_hub(seconds: float) -> Fault:
        """Stop every hub server for ``seconds``, then start them again."""

        async def fault(bench: ChaosBench) -> tuple[float, float | None]:
            for server in bench.fed.hubs.values():
                await server.stop()
            await asyncio.sleep(seconds)
            for server in bench.fed.hubs.values():
                await server.start()
            return time.monotonic(), None

        return fault

    @staticmethod
    def restart_leaf(site: str, seconds: float) -> Fault:
        """Stop ``site``'s leaf server for ``seconds``, then start it again."""

        async def fault(bench: ChaosBench) -> tuple[float, float | None]:
            leaf = bench.fed.leaves[site]
            await leaf.stop()
            await asyncio.sleep(seconds)
            await leaf.start()
            return time.monotonic(), None

        return fault

    @staticmethod
    def kill_node(pause: float = 1.0) -> Fault:
        """SIGKILL the node while calls run, start it again after ``pause`` seconds."""

        async def fault(bench: ChaosBench) -> tuple[float, float | None]:
            view = LogView(bench.config.log_path)

            def running() -> set[str]:
                finals = view.finals()
                return {
                    e["data"]["request_id"]
                    for e in view.events("request.accepted")
                    if e["data"]["request_id"] not in finals
                }

            await wait_until(lambda: bool(running()), limit=20)
            await asyncio.to_thread(bench.node.kill)
            rids = running()
            bench.held_at_kill = {c.tag for c in bench._calls if c.rid in rids}
            await asyncio.sleep(pause)
            bench.node = await asyncio.to_thread(bench.world.spawn_node, bench.config)
            now = time.monotonic()
            return now, now

        return fault


def table(tallies: list[Tally]) -> str:
    """The tallies as a text table, one scenario a row."""
    head = (
        f"{'scenario':<28} {'fault s':>7} {'accepted':>8} {'refused':>7} {'completed':>9} "
        f"{'failed':>6} {'dup':>4} {'lost':>4} {'recovery s':>10} {'resumed s':>9} "
        f"{'gap s':>6} {'slowest s':>9} {'warn':>4} {'audit':>5}  load"
    )
    rows = [head, "-" * len(head)]
    for t in tallies:
        rec = "-" if t.recovery_s is None else f"{t.recovery_s:.2f}"
        res = "-" if t.resumed_s is None else f"{t.resumed_s:.2f}"
        rows.append(
            f"{t.scenario:<28} {t.fault_seconds:>7.1f} {t.accepted:>8} {t.refused:>7} "
            f"{t.completed:>9} {t.failed:>6} {t.duplicated:>4} {t.lost:>4} {rec:>10} "
            f"{res:>9} {t.longest_gap_s:>6.2f} {t.slowest_s:>9.2f} "
            f"{t.node_outage_lines:>4} "
            f"{'ok' if t.audit_ok else 'BAD':>5}  " + " ".join(f"{x:.2f}" for x in t.load)
        )
    return "\n".join(rows)
