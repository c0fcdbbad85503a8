"""``fedhub audit --site NAME --url URL`` and ``--all``: audit sites from the hub's copies.

Each site's logs are read from the hub's ``FH_EVENTS_<SITE>`` (:mod:`hub.audit.hubcopy`)
and audited exactly as their export files would be, with the same pinned site keys. On
top of a file audit, the hub knows what witnesses said (:mod:`hub.witness`), checked
against each log's audit (:mod:`hub.audit.witnessed`): every checkpoint a witness notice
carries that the log's node keys signed is held against the log as a receipt (a log that
no longer contains it was rewritten or rolled back), the report says how many independent
sites vouched for each checkpoint, and a conflict notice whose two checkpoints the log's
node keys signed and that cannot both hold fails the site. A notice that proves nothing
(any site may publish one: a forged cosignature or checkpoint) is reported as ignored and
fails no site. Events that arrived twice with different hashes fail it too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.audit import AuditReport, audit_events, verdict
from hub.audit.hubcopy import CopiedLog, hub_sites, read_site_copy
from hub.audit.report import caveats
from hub.audit.witnessed import Witnessed
from hub.errors import ConfigError
from hub.nats.config import HUB_DOMAIN
from hub.nats.connection import auth_options, connect
from hub.witness import WitnessView, read_witness_view

__all__ = ["SiteAudit", "audit_hub", "cmd_audit_hub"]


@dataclass
class SiteAudit:
    """The audit of one site's logs from the hub's copy."""

    site: str
    logs: list[tuple[CopiedLog, AuditReport]] = field(default_factory=list)
    #: log id (or subject) -> what the witnesses' notices prove about that log
    witnessed: dict[str, Witnessed] = field(default_factory=dict)

    def witness(self, log: CopiedLog) -> Witnessed:
        """The checked witness notices about ``log`` (none, if it was not checked)."""
        return self.witnessed.get(log.log_id or log.subject) or Witnessed(log.log_id)

    @property
    def ok(self) -> bool:
        """Every log clean (checkpoints the witnesses cosigned or disputed included, as
        receipts), no event seen twice with two hashes, and no proven fork."""
        return bool(self.logs) and all(
            report.ok and not log.conflicts and not self.witness(log).evidence
            for log, report in self.logs
        )

    def problems(self) -> list[str]:
        """One line per reason the site fails (empty when clean)."""
        lines = []
        if not self.logs:
            lines.append("the hub holds no event of this site (an empty log proves nothing)")
        for log, report in self.logs:
            first = report.first
            if first is not None:
                lines.append(f"{log.log_id or log.subject}: {first.line()}")
            for c in log.conflicts:
                lines.append(
                    f"{log.log_id or log.subject}: fork: event {c.seq} copied twice "
                    f"with two hashes ({c.first[:16]}…, {c.second[:16]}…)"
                )
        return lines + [line for log, _ in self.logs for line in self.witness(log).evidence]

    def report_lines(self, log: CopiedLog) -> list[str]:
        """The witnesses' part of ``log``'s verdict."""
        return self.witness(log).lines()

    def summary(self) -> str:
        """One line: the site's verdict."""
        events = sum(report.events for _, report in self.logs)
        best = max((self.witness(log).vouchers() for log, _ in self.logs), default=0)
        vouched = f", checkpoints vouched by up to {best} other site(s)"
        head = "OK" if self.ok else "FAILED"
        head += caveats(report for _, report in self.logs)
        text = f"{self.site}: audit {head}: {len(self.logs)} log(s), {events} events{vouched}"
        problems = self.problems()
        return text + (f"; {problems[0]}" if problems else "")

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``--json``."""
        return {
            "site": self.site,
            "ok": self.ok,
            "problems": self.problems(),
            "logs": [
                {
                    "subject": log.subject,
                    "conflicts": [vars(c) for c in log.conflicts] if log.conflicts else [],
                    **self.witness(log).to_json(),
                    "report": report.to_json(),
                }
                for log, report in self.logs
            ],
        }


async def _read(
    url: str, sites: list[str] | None, folder: Path, auth: dict[str, Any]
) -> tuple[dict[str, list[CopiedLog]], WitnessView]:
    nc = await connect(url, connect_timeout=5, **auth)
    try:
        names = sites if sites is not None else await hub_sites(nc)
        copies = {site: await read_site_copy(nc, site, folder / site) for site in names}
        view = await read_witness_view(nc.jetstream(domain=HUB_DOMAIN))
    finally:
        await nc.close()
    return copies, view


def audit_hub(
    url: str,
    sites: list[str] | None,
    trusted: dict[str, bytes] | None,
    *,
    verify_signatures: bool = True,
    threads: int | None = None,
    creds: str | Path | None = None,
    ca: str | Path | None = None,
    folder: Path | None = None,
) -> list[SiteAudit]:
    """Audit ``sites`` (None: every site the hub copies) from the hub at ``url``.

    A generated hub admits only its admin's NKey, over TLS: ``creds`` and ``ca`` (default
    ``$FEDHUB_CREDS`` and ``$FEDHUB_CA``). The copies are read into a temporary folder, or
    into ``folder`` when given (they stay there, e.g. for a page that shows the events).
    """
    auth = auth_options(creds, ca)
    keep = contextlib.nullcontext(str(folder)) if folder is not None else None
    with keep or tempfile.TemporaryDirectory(prefix="fedhub-audit-") as tmp:
        copies, view = asyncio.run(_read(url, sites, Path(tmp), auth))
        if trusted is not None:
            view.verify(trusted)
        results = []
        for site, logs in copies.items():
            result = SiteAudit(site)
            for log in logs:
                opts: dict[str, Any] = {
                    "trusted_sites": trusted,
                    "verify_signatures": verify_signatures,
                    "threads": threads,
                }
                report = audit_events(log.raw_events(), **opts)
                # the log's node keys are known now: check what the witnesses said of it
                witnessed = Witnessed.check(view, report)
                if witnessed.receipts:  # again, holding what the witnesses saw against the log
                    report = audit_events(log.raw_events(), receipts=witnessed.receipts, **opts)
                witnessed.settle(report)
                result.logs.append((log, report))
                result.witnessed[log.log_id or log.subject] = witnessed
            results.append(result)
    return results


def cmd_audit_hub(args: argparse.Namespace, trusted: dict[str, bytes] | None) -> int:
    """The ``--site``/``--all`` forms of ``fedhub audit``; exit 0 when every site is clean."""
    if not args.url:
        raise ConfigError("--site and --all read the hub's copies: give the hub's --url")
    if args.path is not None:
        raise ConfigError("give a log file, or --site/--all with --url, not both")
    started = time.perf_counter()
    results = audit_hub(
        args.url,
        None if args.all else args.site,
        trusted,
        verify_signatures=not args.chain_only,
        threads=args.threads,
    )
    seconds = time.perf_counter() - started
    if args.json:
        print(json.dumps([r.to_json() for r in results], indent=2))
    elif args.all:
        for result in results:
            print(result.summary())
    else:
        for result in results:
            for log, report in result.logs:
                print(verdict(report, Path(f"hub:{log.subject}"), seconds))
                for line in result.report_lines(log):
                    print(line)
            print(result.summary())
    return 0 if results and all(r.ok for r in results) else 1
