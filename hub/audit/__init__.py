"""Replay a node's event log and verify it: a verdict with evidence.

What is checked, in one pass (docs/audit.md has the full list and the order):

* **form**: each body is canonical, its ``data`` matches its type's model, its time is
  well-formed; unknown types and versions are refused;
* **trust**: the genesis event names the site key and carries the node key record signed
  by it; the site key must be one the auditor pinned (unless told to trust the log's own),
  and the node must belong to that site;
* **hashes and chain**: each body hashes to its stored hash; ``seq`` counts up from 1 with
  no gap; ``prev`` is the previous event's hash; one log id throughout;
* **signatures**: version 1 signs every event, version 2 the last of every commit (which
  covers the unsigned ones before it); each is checked against the node key valid at
  that point (rotations and revocations are events too), off the main thread;
* **checkpoints**: each checkpoint event's signed root and size match the events before it;
  checkpoints held by the auditor (receipts) must be contained in and extended by the log;
* **lifecycle**: each request's events follow :mod:`hub.lifecycle`; nothing but a start
  follows a node's stop.

The modules: :mod:`.report` (findings, report, verdict text), :mod:`.forms` (body
shapes), :mod:`.rules` (the general path), :mod:`.trust` (genesis and key events),
:mod:`.fast` (the fast path), :mod:`.helper` (a helper process for large chain-only
audits), :mod:`.signatures` (the verification pool), :mod:`.federation` (the signed records
of grant, group and cosignature events), :mod:`.hubcopy` (a site's logs read from the
hub's copy, a log source like a file), :mod:`.witnessed` (the witnesses' notices about a
log, checked against its audit).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from hub.logfile import RawEvent, SqliteEvents
from hub.records import SignedRecord

from .fast import Row, scan
from .helper import SPLIT_MIN, SPLIT_SHARE, positioned, split_pass
from .report import AuditReport, Finding, verdict
from .rules import Rules, StopAuditError
from .signatures import Verifier

__all__ = ["AuditReport", "Finding", "audit_events", "verdict"]


def audit_events(
    events: Iterable[RawEvent],
    *,
    trusted_sites: dict[str, bytes] | None,
    receipts: Sequence[SignedRecord] = (),
    verify_signatures: bool = True,
    threads: int | None = None,
    processes: bool | None = None,
    progress: Callable[[int], None] | None = None,
) -> AuditReport:
    """Audit a log given as raw events.

    ``trusted_sites`` maps site names to their pinned Ed25519 keys; ``None`` trusts the
    site key the log itself names (reported as such). ``receipts`` are checkpoints
    obtained earlier that the log must contain. ``verify_signatures=False`` checks all
    but the signatures themselves. Signatures are checked by ``threads`` workers (default:
    one per core): worker processes once the log is large enough to be worth them (or
    always with ``processes=True``, never with ``processes=False``), threads otherwise.
    """
    rules = new_rules(trusted_sites, receipts, verify_signatures, threads, processes)
    if progress is None and isinstance(events, SqliteEvents):
        last = events.last_seq()
        after = int(last * SPLIT_SHARE)
        if last >= SPLIT_MIN and (not verify_signatures or _signs_commits(events.body_at(after))):
            run(rules, lambda: split_pass(rules, events, after))
            return rules.report
    rows, unreadable = _rows(events, progress)
    run(rules, lambda: scan(rules, rows, unreadable))
    return rules.report


def _signs_commits(body: object) -> bool:
    """Whether a stored body is of version 2, whose signatures are few: a helper process
    then does more good reading than the signature workers would (version 1 signs every
    event, and verifying them keeps every core busy)."""
    return type(body) is bytes and body.endswith(b',"v":2}')


def new_rules(
    trusted_sites: dict[str, bytes] | None,
    receipts: Sequence[SignedRecord] = (),
    verify_signatures: bool = True,
    threads: int | None = None,
    processes: bool | None = None,
) -> Rules:
    """The state of a new audit (with its signature pool, not started yet)."""
    verifier = Verifier(max(1, threads or os.cpu_count() or 2), processes)
    return Rules(trusted_sites, list(receipts), verifier, verify_signatures)


def run(rules: Rules, work: Callable[[], None]) -> None:
    """Do the pass, then collect the signatures' verdicts and finish the report."""
    try:
        work()
    except StopAuditError:
        pass
    except BaseException:
        rules.verifier.close()
        raise
    rules.bad_signatures(list(rules.verifier.finish()))
    rules.finish()


def _rows(
    events: Iterable[RawEvent], progress: Callable[[int], None] | None
) -> tuple[Iterable[Row], Callable[[int], Exception] | None]:
    """The rows to audit, and the error for a row that is not all bytes (if the source
    guarantees bytes). A SQLite log is read in bulk, without an object per event."""
    if isinstance(events, SqliteEvents):
        batches = events.rows()
        if progress is not None:
            batches = _counting_batches(batches, progress)
        return positioned(batches, 1), events.not_blobs
    if progress is not None:
        events = _counting(events, progress)
    return ((raw.position, (raw.hash, raw.sig, raw.body)) for raw in events), None


def _counting(events: Iterable[RawEvent], progress: Callable[[int], None]) -> Iterable[RawEvent]:
    for raw in events:
        if raw.position % 10_000 == 0:
            progress(raw.position)
        yield raw


def _counting_batches(
    batches: Iterator[tuple[int, list[tuple[Any, Any, Any]]]], progress: Callable[[int], None]
) -> Iterator[tuple[int, list[tuple[Any, Any, Any]]]]:
    for start, batch in batches:
        for position in range(-(-start // 10_000) * 10_000, start + len(batch), 10_000):
            progress(position)
        yield start, batch
