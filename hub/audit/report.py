"""What an audit found: findings, a summary of the log, and the verdict as text."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AuditReport", "Finding", "caveats", "verdict"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One failed check, located at an event.

    ``position`` is the event's place in the input, counted from 1 (line N of an export
    holding an event, or the Nth row of a SQLite log by ``seq``); ``seq`` is the sequence
    number the event's body claims, when it can be read.
    """

    position: int
    seq: int | None
    check: str
    message: str
    expected: str | None = None
    found: str | None = None

    def line(self) -> str:
        """One readable line."""
        where = f"event {self.seq}" if self.seq is not None else f"entry {self.position}"
        return f"{where}: {self.check}: {self.detail()}"

    def detail(self) -> str:
        """The message, with what was expected and found where known."""
        parts = [
            f"{what} {value}"
            for what, value in (("expected", self.expected), ("found", self.found))
            if value is not None
        ]
        return self.message + (f" ({', '.join(parts)})" if parts else "")

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``--json``."""
        return {
            "position": self.position,
            "seq": self.seq,
            "check": self.check,
            "message": self.message,
            "expected": self.expected,
            "found": self.found,
        }


@dataclass
class AuditReport:
    """What an audit found: findings (empty when clean) and a summary of the log."""

    log: str | None = None
    site: str | None = None
    events: int = 0
    first_time: str | None = None
    last_time: str | None = None
    types: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: kid -> Ed25519 public key of each of the log's own node keys (genesis, rotations):
    #: what its checkpoints are signed with (not in the JSON form; ``keys`` says the rest)
    node_keys: dict[str, bytes] = field(default_factory=dict)
    checkpoints: int = 0
    receipts: list[dict[str, Any]] = field(default_factory=list)
    signatures_checked: int = 0
    signatures_verified: bool = True
    trust: str = ""
    trust_pinned: bool = True
    unclean_restarts: int = 0
    root: str | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.findings

    @property
    def first(self) -> Finding | None:
        """The first bad event (lowest position)."""
        return min(self.findings, key=lambda f: f.position) if self.findings else None

    def to_json(self) -> dict[str, Any]:
        """The full report."""
        return {
            "ok": self.ok,
            "log": self.log,
            "site": self.site,
            "events": self.events,
            "time_range": [self.first_time, self.last_time],
            "types": dict(sorted(self.types.items())),
            "requests": dict(sorted(self.requests.items())),
            "keys": self.keys,
            "checkpoints_verified": self.checkpoints,
            "receipts": self.receipts,
            "signatures_checked": self.signatures_checked,
            "signatures_verified": self.signatures_verified,
            "trust": self.trust,
            "trust_pinned": self.trust_pinned,
            "unclean_restarts": self.unclean_restarts,
            "root": self.root,
            "first_finding": self.first.to_json() if self.first else None,
            "findings": [f.to_json() for f in sorted(self.findings, key=lambda f: f.position)],
        }


def caveats(reports: Iterable[AuditReport]) -> str:
    """What a verdict's first line must not hide, as `` [...]`` (or ""): where trust came
    from, what was skipped, in any of ``reports``."""
    notes = []
    reports = list(reports)
    if any(not report.trust_pinned for report in reports):
        notes.append("UNSAFE: trust taken from the log itself, not from a pinned site key")
    if any(not report.signatures_verified for report in reports):
        notes.append("signatures NOT checked (--chain-only)")
    return f"  [{'; '.join(notes)}]" if notes else ""


def verdict(report: AuditReport, path: Path, seconds: float) -> str:
    """The verdict as a one-screen text: first line OK or FAILED, then the summary."""
    lines = []
    state = "OK" if report.ok else "FAILED"
    lines.append(f"audit {state}  {report.log}  ({path}){caveats([report])}")
    first = report.first
    if first is not None:
        lines.append(f"  first bad   {first.line()}")
        if len(report.findings) > 1:
            lines.append(
                f"  and         {len(report.findings) - 1} more findings (--json lists all)"
            )
    lines.append(f"  events      {report.events:,}  {report.first_time} .. {report.last_time}")
    lines.append(f"  trust       {report.trust or 'none established'}")
    if report.signatures_verified:
        lines.append(f"  signatures  {report.signatures_checked:,} checked")
    else:
        lines.append("  signatures  not checked (--chain-only)")
    lines.append(f"  checkpoints {report.checkpoints} verified")
    for receipt in report.receipts:
        lines.append(
            f"  receipt     size {receipt['size']} ({receipt['time']}): contained and extended"
        )
    if not report.receipts or any(f.check == "receipt" for f in report.findings):
        # unless every receipt given holds
        lines.append(
            "  tail        not proven: a truncated tail can only be ruled out with a receipt "
            "(--checkpoint)"
        )
    reqs = ", ".join(f"{k} {v}" for k, v in sorted(report.requests.items())) or "none"
    lines.append(f"  requests    {reqs}")
    if report.unclean_restarts:
        lines.append(f"  restarts    {report.unclean_restarts} without a clean stop before")
    for kid, info in report.keys.items():
        lines.append(f"  key         {kid} {info['identity']} ({info['role']}, {info['status']})")
    lines.append(f"  root        {report.root} at size {report.events}")
    rate = report.events / seconds if seconds > 0 else 0.0
    lines.append(f"  time        {seconds:.2f} s ({rate:,.0f} events/s)")
    return "\n".join(lines)
