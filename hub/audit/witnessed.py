"""What the witnesses' notices prove about one log, checked against the log's audit.

Any site may publish to the federation directory, so the federation audit
(:mod:`hub.fedaudit`) takes no notice at its word (docs/audit.md#witness-notices):

* a checkpoint a notice carries counts only if one of the log's own node keys -- known
  once the log is audited -- signed it, for this log, under its key id and not after that
  key was revoked (:func:`hub.audit.rules.open_receipt`); it is then a receipt, held
  against the log like ``--checkpoint``;
* a cosignature counts as its site's voucher only if it verified up to the witness's
  pinned site key (:meth:`hub.witness.WitnessView.verify`) and the checkpoint it names
  counts;
* a conflict notice is evidence of a fork only if both its checkpoints count and they
  cannot both hold: one size with two roots, or -- a notice carries no path between two
  sizes -- a log that does not hold both (the log is the proof of consistency).

Each notice that counts for nothing is reported as ignored, with why; it fails no site.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hub.records import Checkpoint, SignedRecord
from hub.witness import ConflictNotice, WitnessView, claimed_log

from .report import AuditReport, Finding
from .rules import open_receipt

__all__ = ["Witnessed"]


@dataclass(frozen=True, slots=True)
class _Dispute:
    """A conflict notice whose two checkpoints the log's node keys signed."""

    notice: ConflictNotice
    earlier: Checkpoint
    later: Checkpoint

    def line(self, log: str | None) -> str:
        a, b, c = self.earlier, self.later, self.notice
        return (
            f"{log}: {c.reason}: checkpoints {a.size} ({a.root[:16]}…) and {b.size} "
            f"({b.root[:16]}…), both signed by the log's node keys, are of two histories "
            f"(reported by witness {c.witness}; the checkpoints are the evidence)"
        )


@dataclass
class Witnessed:
    """The witnesses' notices about one log, once checked (see the module)."""

    log: str | None
    #: the checkpoints the log's node keys signed: held against the log
    receipts: list[SignedRecord] = field(default_factory=list)
    #: (size, root) of a counted checkpoint -> the sites whose cosignatures verified
    vouched: dict[tuple[int, str], set[str]] = field(default_factory=dict)
    #: one line per fork the notices prove
    evidence: list[str] = field(default_factory=list)
    #: one line per notice (or part of one) that counts for nothing, and why
    ignored: list[str] = field(default_factory=list)
    #: whether the cosignatures were verified (not without pinned site keys)
    cosignatures_checked: bool = True
    #: directory records that are no witness record at all
    unreadable: list[str] = field(default_factory=list)
    _pending: list[_Dispute] = field(default_factory=list, repr=False)

    @classmethod
    def check(cls, view: WitnessView, report: AuditReport) -> Witnessed:
        """Check what ``view`` holds about the log of ``report`` (a finished audit)."""
        out = cls(report.log, cosignatures_checked=view.checked, unreadable=list(view.problems))
        receipts: dict[str, SignedRecord] = {}
        counted: set[tuple[int, str]] = set()
        for notice in view.cosignatures:
            if claimed_log(notice.checkpoint) != report.log:
                continue
            cp = out._own(report, notice.checkpoint, "cosigned checkpoint")
            if cp is not None:
                receipts[notice.checkpoint.record] = notice.checkpoint
                counted.add((cp.size, cp.root))
        for _, site, cosig in view.verified:
            if cosig.log == report.log and (cosig.size, cosig.root) in counted:
                out.vouched.setdefault((cosig.size, cosig.root), set()).add(site)
        out.ignored += view.rejected.get(report.log or "", [])
        for conflict in view.conflicts:
            if conflict.log != report.log:
                continue
            what = f"{conflict.reason} notice from {conflict.witness}"
            earlier = out._own(report, conflict.earlier, f"{what}: earlier checkpoint")
            later = out._own(report, conflict.later, f"{what}: later checkpoint")
            for signed, cp in ((conflict.earlier, earlier), (conflict.later, later)):
                if cp is not None:  # the log's own statement, whoever carries it
                    receipts[signed.record] = signed
            if earlier is None or later is None:
                continue
            dispute = _Dispute(conflict, earlier, later)
            if earlier.size != later.size:
                out._pending.append(dispute)  # the log decides (settle)
            elif earlier.root != later.root:
                out._add(out.evidence, dispute.line(report.log))
            else:
                out._add(out.ignored, f"ignored: {what}: its two checkpoints are the same")
        out.receipts = list(receipts.values())
        return out

    def settle(self, report: AuditReport) -> None:
        """After the audit held the receipts against the log: a notice of two checkpoints
        of different sizes is evidence when the log does not hold both (a ``receipt``
        finding of the audit says which), else they are consistent and it is ignored."""
        held = {(r["size"], r["root"]) for r in report.receipts}
        # an audit that gave up (too many findings) held no receipt against the log
        judged = bool(held) or any(f.check == "receipt" for f in report.findings)
        for dispute in self._pending:
            a, b = dispute.earlier, dispute.later
            if not judged:
                why = (
                    f"not judged: {dispute.notice.reason} notice from {dispute.notice.witness}: "
                    "the audit stopped before it held the receipts against the log"
                )
                self._add(self.ignored, why)
            elif (a.size, a.root) in held and (b.size, b.root) in held:
                why = (
                    f"ignored: {dispute.notice.reason} notice from {dispute.notice.witness}: "
                    f"the log holds both checkpoints ({a.size} and {b.size}): no conflict"
                )
                self._add(self.ignored, why)
            else:
                self._add(self.evidence, dispute.line(self.log))
        self._pending.clear()

    def _own(self, report: AuditReport, signed: SignedRecord, what: str) -> Checkpoint | None:
        cp = open_receipt(report, signed)
        if isinstance(cp, Finding):
            self._add(self.ignored, f"ignored: {what} claiming key {signed.signer}: {cp.detail()}")
            return None
        return cp

    @staticmethod
    def _add(lines: list[str], line: str) -> None:
        if line not in lines:
            lines.append(line)

    def vouchers(self) -> int:
        """The most independent sites that vouched for one checkpoint of the log."""
        return max((len(sites) for sites in self.vouched.values()), default=0)

    def checkpoints(self) -> list[dict[str, Any]]:
        """Each checkpoint of the log witnessed: size, root and the sites that vouched."""
        return [
            {"size": size, "root": root, "sites": sorted(sites)}
            for (size, root), sites in sorted(self.vouched.items())
        ]

    def lines(self) -> list[str]:
        """The witnesses' part of a log's verdict."""
        lines = [
            f"  checkpoint {size} ({root[:16]}…): vouched for by {len(sites)} other "
            f"site(s): {', '.join(sorted(sites))}"
            for (size, root), sites in sorted(self.vouched.items())
        ]
        if not self.cosignatures_checked:
            lines.append("  cosignatures not checked: no site key is pinned")
        elif not lines:
            lines.append("  no checkpoint of this log was witnessed by another site")
        return [
            *lines,
            *(f"  {line}" for line in self.evidence),
            *(f"  {line}" for line in self.ignored),
            *(f"  {line}" for line in self.unreadable),
        ]

    def to_json(self) -> dict[str, Any]:
        """JSON form for ``--json``."""
        return {
            "witnessed": self.checkpoints(),
            "evidence": self.evidence,
            "ignored": self.ignored,
            "cosignatures_checked": self.cosignatures_checked,
        }
