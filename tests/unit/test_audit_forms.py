"""Every rule of the log's form (docs/log-format.md, docs/events.md, docs/audit.md) is
enforced: canonical bodies, the time format and order, known types with valid data, the
lifecycle table, version 2 signatures, the export layout, and an empty log.

Logs are written by the real append path; a forged body is re-hashed and re-signed with the
node's own key, so the only thing wrong with it is the rule under test.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers.logs import Keys, audit_lines, open_new_log, request_events, resign
from pydantic import BaseModel

from hub.audit import AuditReport, audit_events
from hub.canonical import parse_canonical
from hub.chain import leaf_hash
from hub.crypto import sign
from hub.events import (
    DOMAIN_COMMIT,
    DOMAIN_EVENT,
    NodeStarted,
    NodeStopped,
    RequestCompleted,
    RequestFailed,
    RequestRejected,
    RequestStarted,
    ResultDeleted,
    ResultExpired,
    ResultFetched,
    ResultKeepShortened,
    ResultLost,
    ResultShared,
    ResultSliced,
    ResultTagged,
    ResultUnshared,
)
from hub.lifecycle import TRANSITIONS, RequestState
from hub.logfile import LogUnreadableError, export_line, iter_log, parse_export_line

STARTED = NodeStarted(version="0.2.0", pid=1)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys.generate()


def _lines(folder: Path, keys: Keys, *batches: list[BaseModel]) -> list[bytes]:
    with open_new_log(folder / "events.db", keys) as log:
        for batch in batches:
            log.append_many(batch)
        log.export(folder / "events.jsonl")
    return (folder / "events.jsonl").read_bytes().splitlines(keepends=True)


def _first(report: AuditReport) -> tuple[int | None, str, str]:
    first = report.first
    assert first is not None, "the audit passed"
    return first.seq, first.check, first.message


def _forged(line: bytes, keys: Keys, old: bytes, new: bytes, count: int = 1) -> bytes:
    """The line with ``old`` replaced by ``new`` in its body, re-hashed and signed by the
    node key over its version's domain (what a node with a faulty encoder would write)."""
    raw = parse_export_line(line, 1)
    assert old in raw.body
    body = raw.body.replace(old, new, count)
    h = leaf_hash(body)
    domain = DOMAIN_EVENT if b'"v":1}' in body[-7:] else DOMAIN_COMMIT
    return export_line(h, sign(keys.node.signing_key, domain, h), body)


# --- canonical bodies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        (b'{"data":{', b'{"data": {', "not in canonical form"),
        (b'"pid":0,', b'"pid":-0,', "not in canonical form"),
        (b'"pid":0,', b'"pid":0.0,', "floats have no canonical form"),
        (b'"pid":0,', b'"pid":0,"pid":0,', "not in canonical form"),
        (b'"version":"x"', b'"version":"\\u0078"', "not in canonical form"),
        (b'"modules":[],"pid":0', b'"pid":0,"modules":[]', "not in canonical form"),
        (b'"version":"x"', b'"version":"\\u00e9"', "not in canonical form"),
        (b'"pid":0,', b'"pid":1.0,', "floats have no canonical form"),
        (b'"pid":0,', b'"pid":0e0,', "floats have no canonical form"),
        (b'"version":"x"', b'"version":"x\\u001F"', "not in canonical form"),
        (b'"version":"x"', b'"version":"x\\/"', "not in canonical form"),
        (b'"pid":0,', b'"pid":9223372036854775808,', "outside the signed 64-bit range"),
        (b'"version":"x"', b'"version":"\\ud800"', "lone surrogate"),
    ],
    ids=[
        "whitespace",
        "minus zero",
        "float",
        "duplicate key",
        "needless escape",
        "key order",
        "escaped non-ASCII",
        "one point zero",
        "exponent",
        "upper-case hex escape",
        "escaped slash",
        "beyond 64 bits",
        "lone surrogate",
    ],
)
def test_a_signed_body_that_is_not_canonical_is_refused(
    tmp_path: Path, keys: Keys, old: bytes, new: bytes, why: str
) -> None:
    lines = _lines(tmp_path, keys, [STARTED], [NodeStarted(version="x", pid=0)])
    lines[-1] = _forged(lines[-1], keys, old, new)
    seq, check, message = _first(audit_lines(lines, keys.trusted))
    assert (seq, check) == (len(lines), "format")
    assert why in message


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.replace(b"T", b" "),
        lambda t: t[:-1] + b"+00:00",
        lambda t: t[:-4] + b"Z",
        lambda t: t[:-1] + b"0Z",
        lambda t: t.lower(),
        lambda t: t[:11] + b"24" + t[13:],
    ],
    ids=["space", "offset", "milliseconds", "seven digits", "lower case", "hour 24"],
)
def test_a_time_not_in_the_one_format_is_refused(tmp_path: Path, keys: Keys, change: Any) -> None:
    lines = _lines(tmp_path, keys, [STARTED], [NodeStopped()])
    time = parse_canonical(parse_export_line(lines[-1], 1).body)["time"].encode()
    lines[-1] = _forged(lines[-1], keys, time, change(time))
    seq, check, message = _first(audit_lines(lines, keys.trusted))
    assert (seq, check) == (len(lines), "format")
    assert "time is not" in message


def test_a_time_that_goes_backwards_is_refused(tmp_path: Path, keys: Keys) -> None:
    lines = _lines(tmp_path, keys, [STARTED], [NodeStopped()])
    lines[-1] = resign(lines[-1], keys.node, claim_kid=False, edit_time=True)
    seq, check, _ = _first(audit_lines(lines, keys.trusted))
    assert (seq, check) == (len(lines), "time")


# --- types and their data -------------------------------------------------------------------


class Exploded(BaseModel):
    """An event type no version of the log defines."""

    type: str = "request.exploded"
    request_id: str = "req00000001"


def test_an_unknown_event_type_is_refused_as_unknown(tmp_path: Path, keys: Keys) -> None:
    lines = _lines(tmp_path, keys, [STARTED, Exploded()])
    seq, check, message = _first(audit_lines(lines, keys.trusted))
    assert (seq, check) == (3, "format")
    assert message == "unknown event type 'request.exploded' (log version 2)"


def test_a_version_1_only_type_in_a_version_2_body_is_refused(tmp_path: Path, keys: Keys) -> None:
    lines = _lines(tmp_path, keys, [STARTED])
    lines[-1] = _forged(lines[-1], keys, b'"node.started"', b'"result.stored"', count=2)
    seq, check, message = _first(audit_lines(lines, keys.trusted))
    assert (seq, check) == (2, "format")
    assert message == "unknown event type 'result.stored' (log version 2)"


def test_data_that_does_not_match_its_schema_is_refused(tmp_path: Path, keys: Keys) -> None:
    accepted, done = request_events(_RID)[0], _REACH[RequestState.COMPLETED][1]
    lines = _lines(tmp_path, keys, [STARTED, accepted], [done])
    lines[-1] = _forged(lines[-1], keys, b'"result_hash":"' + b"ab" * 32 + b'",', b"")
    seq, check, message = _first(audit_lines(lines, keys.trusted))
    assert (seq, check) == (4, "format")
    assert "request.completed data does not match its schema" in message


# --- the lifecycle table, step by step -------------------------------------------------------

_RID = "req00000001"
_ACCEPTED = request_events(_RID, "open")[0]
_REACH: dict[RequestState | None, list[BaseModel]] = {
    None: [],
    RequestState.ACCEPTED: [_ACCEPTED],
    RequestState.RUNNING: [_ACCEPTED, RequestStarted(request_id=_RID, attempt=2)],
    RequestState.COMPLETED: [
        _ACCEPTED,
        RequestCompleted(request_id=_RID, result_hash="ab" * 32, result_size=1, duration_us=1),
    ],
    RequestState.FAILED: [_ACCEPTED, RequestFailed(request_id=_RID, code="x", reason="y")],
    RequestState.REJECTED: request_events(_RID, "rejected"),
}
_EVENT: dict[str, BaseModel] = {
    "request.accepted": _ACCEPTED,
    "request.rejected": request_events(_RID, "rejected")[0],
    "request.started": RequestStarted(request_id=_RID, attempt=2),
    "request.progress": request_events(_RID)[1],
    "request.completed": _REACH[RequestState.COMPLETED][1],
    "request.failed": _REACH[RequestState.FAILED][1],
    "result.fetched": ResultFetched(request_id=_RID, by="klaus@geomar"),
    "result.shared": ResultShared(request_id=_RID, by="klaus@geomar", recipients=()),
    "result.lost": ResultLost(request_id=_RID, reason="disk full"),
    "result.unshared": ResultUnshared(request_id=_RID, by="klaus@geomar", principal="a@b"),
    "result.expired": ResultExpired(request_id=_RID, reason="kept for 30d"),
    "result.keep_shortened": ResultKeepShortened(request_id=_RID, by="klaus@geomar", keep_for=60),
    "result.tagged": ResultTagged(request_id=_RID, by="klaus@geomar", scope="shared", tags=("a",)),
    "result.deleted": ResultDeleted(request_id=_RID, by="klaus@geomar"),
    "result.sliced": ResultSliced(
        request_id=_RID,
        by="klaus@geomar",
        part="slice",
        selection_hash="cd" * 32,
        size=80,
        sent_hash="ef" * 32,
    ),
}
_STEPS = [
    (kind, state, state in steps)
    for (kind, version), steps in TRANSITIONS.items()
    if version == 2
    for state in _REACH
]


def test_every_version_2_request_type_of_the_lifecycle_table_is_exercised() -> None:
    assert {kind for kind, _ in TRANSITIONS if _ == 2} == set(_EVENT)


@pytest.mark.parametrize(
    ("kind", "state", "legal"),
    _STEPS,
    ids=[f"{k} after {s.value if s else 'nothing'}" for k, s, _ in _STEPS],
)
def test_each_step_of_the_lifecycle_table_is_allowed_or_refused_as_the_table_says(
    tmp_path: Path, keys: Keys, kind: str, state: RequestState | None, legal: bool
) -> None:
    lines = _lines(tmp_path, keys, [STARTED, *_REACH[state]], [_EVENT[kind]])
    report = audit_lines(lines, keys.trusted)
    if legal:
        assert report.ok, [f.line() for f in report.findings]
    else:
        assert _first(report)[:2] == (len(lines), "lifecycle")


def test_a_rejection_without_a_request_id_needs_no_earlier_event(
    tmp_path: Path, keys: Keys
) -> None:
    unread = RequestRejected(envelope_hash="cd" * 32, code="malformed", reason="not JSON")
    assert audit_lines(_lines(tmp_path, keys, [STARTED, unread]), keys.trusted).ok


# --- version 2 signatures ---------------------------------------------------------------------


def test_events_at_the_end_covered_by_no_signature_are_refused_at_the_first(
    tmp_path: Path, keys: Keys
) -> None:
    lines = _lines(tmp_path, keys, [STARTED], request_events(_RID))
    cut = lines[:-2]  # the last two events of the commit, its signed one among them
    seq, check, message = _first(audit_lines(cut, keys.trusted))
    assert (seq, check) == (3, "signature")
    assert message == "events 3..4 at the end of the log are covered by no signature"


def test_unsigned_events_covered_by_a_signature_of_another_key_are_refused_at_the_first(
    tmp_path: Path, keys: Keys
) -> None:
    lines = _lines(tmp_path, keys, [STARTED], request_events(_RID))
    lines[-1] = resign(lines[-1], keys.other_node, claim_kid=True)
    seq, check, message = _first(audit_lines(lines, keys.trusted))
    assert (seq, check) == (3, "signature")
    assert f"covered by a signature of key {keys.other_node.kid}" in message


def test_a_version_1_event_after_a_version_2_event_is_refused(tmp_path: Path, keys: Keys) -> None:
    lines = _lines(tmp_path, keys, [STARTED], [NodeStopped()])
    lines[-1] = _forged(lines[-1], keys, b'"v":2}', b'"v":1}')
    seq, check, message = _first(audit_lines(lines, keys.trusted))
    assert (seq, check) == (len(lines), "format")
    assert "version 1 event after a version 2 event" in message


def test_an_unsigned_version_1_event_is_refused(tmp_path: Path, keys: Keys) -> None:
    lines = _lines(tmp_path, keys, [STARTED], [NodeStopped()])
    raw = parse_export_line(_forged(lines[-2], keys, b'"v":2}', b'"v":1}'), 1)
    lines = [lines[0], export_line(raw.hash, b"", raw.body)]
    assert ("signature", "version 1 event is not signed") in [
        (f.check, f.message) for f in audit_lines(lines, keys.trusted).findings
    ]


# --- the export layout and the input ---------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda data: data.replace(b"\n", b"\r\n"), "CRLF"),
        (lambda data: data.replace(b"\n", b"\n\n", 1), "blank"),
        (lambda data: data.replace(b"\n", b"\n \n", 1), "blank"),
        (lambda data: data[:-1], "does not end in LF"),
    ],
    ids=["CRLF", "empty line", "whitespace line", "no final LF"],
)
def test_an_export_off_its_layout_is_unreadable(
    tmp_path: Path, keys: Keys, change: object, why: str
) -> None:
    lines = _lines(tmp_path, keys, [STARTED])
    path = tmp_path / "changed.jsonl"
    path.write_bytes(change(b"".join(lines)))  # type: ignore[operator]
    with pytest.raises(LogUnreadableError, match=why):
        list(iter_log(path))


def test_an_unsigned_event_is_exported_with_an_empty_signature_and_read_back(
    tmp_path: Path, keys: Keys
) -> None:
    lines = _lines(tmp_path, keys, [STARTED, NodeStopped()])
    assert b'"sig":"","event":' in lines[1]
    assert parse_export_line(lines[1], 2).sig == b""
    assert audit_lines(lines, keys.trusted).ok


def test_an_empty_log_proves_nothing_and_fails(tmp_path: Path, keys: Keys) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    report = audit_events(iter_log(empty), trusted_sites=keys.trusted)
    assert not report.ok
    assert "an empty log proves nothing" in report.findings[0].message


_NOT_A_TABLE = {
    "view": "CREATE VIEW events AS SELECT seq, hash, sig, body, type FROM stored",
    "virtual table": "CREATE VIRTUAL TABLE events USING fts5(seq, hash, sig, body, type)",
    "table with computed columns": "CREATE TABLE events (seq INTEGER PRIMARY KEY, "
    "hash BLOB, sig BLOB, body BLOB, type TEXT, shown BLOB AS (body))",
}


@pytest.mark.parametrize("kind", sorted(_NOT_A_TABLE))
def test_a_sqlite_log_whose_events_are_not_a_stored_table_is_unreadable(
    tmp_path: Path, keys: Keys, kind: str
) -> None:
    """A forged file may make ``events`` a view (a recursive one never ends: no deadline
    would stop the audit), a virtual table or a table computing its values: not a log."""
    real = tmp_path / "events.db"
    with open_new_log(real, keys) as log:
        log.append(STARTED)
    forged = tmp_path / "forged.db"
    with sqlite3.connect(forged) as conn:
        conn.execute(f"ATTACH DATABASE '{real}' AS real")
        conn.execute("CREATE TABLE stored AS SELECT seq, hash, sig, body, type FROM real.events")
        conn.execute(_NOT_A_TABLE[kind])
        if kind != "view":
            conn.execute("INSERT INTO events (seq, hash, sig, body, type) SELECT * FROM stored")
    conn.close()
    with pytest.raises(LogUnreadableError, match=f"events is a {kind}"):
        audit_events(iter_log(forged), trusted_sites=keys.trusted)


def test_a_sqlite_log_whose_events_never_end_is_refused_at_once(tmp_path: Path) -> None:
    """``fedhub audit`` on a file whose ``events`` is a recursive view exits 2 (the run is
    bounded by the subprocess timeout, so the test ends even if the audit would not)."""
    forged = tmp_path / "endless.db"
    with sqlite3.connect(forged) as conn:
        conn.execute(
            "CREATE VIEW events AS WITH RECURSIVE c(seq, hash, sig, body, type) AS "
            "(SELECT 1, x'00', x'', x'7b7d', 't' UNION ALL "
            "SELECT seq + 1, hash, sig, body, type FROM c) SELECT * FROM c"
        )
    conn.close()
    cmd = [sys.executable, "-m", "hub.cli", "audit", str(forged), "--trust-log-keys"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert "events is a view" in done.stderr


def test_every_request_event_type_has_a_fast_pattern_so_no_request_event_takes_the_slow_path() -> (
    None
):
    """A field the pattern builder cannot express (e.g. a bounded integer) would send every
    event of its type to the general path: correct, but several times slower."""
    from hub.audit.forms import FAST_KINDS
    from hub.events import V1_ONLY_TYPES
    from hub.lifecycle import TRANSITIONS

    wanted = {
        kind.encode() + b'","v":' + str(version).encode()
        for kind, version in TRANSITIONS
        if version == 1 or kind not in V1_ONLY_TYPES
    }
    assert wanted <= set(FAST_KINDS), sorted(wanted - set(FAST_KINDS))


def test_the_fast_pattern_of_request_accepted_reads_a_redelivery_count_and_its_absence() -> None:
    from hub.audit.forms import FAST_KINDS

    match = FAST_KINDS[b'request.accepted","v":2'].data
    base = b'"header":"eyJhIjoxfQ","request_id":"req0000001","sig":"c2ln",'
    assert match(b"{" + base + b'"type":"request.accepted"}')
    assert match(b'{"delivery":2,' + base + b'"type":"request.accepted"}')
    assert match(b'{"delivery":17,' + base + b'"type":"request.accepted"}')
    assert not match(b'{"delivery":1,' + base + b'"type":"request.accepted"}')
    assert not match(b'{"delivery":0,' + base + b'"type":"request.accepted"}')


@pytest.mark.parametrize("source", ["endless", "fifo"])
def test_a_receipt_that_never_ends_is_given_up_like_a_log(
    tmp_path: Path, keys: Keys, source: str
) -> None:
    """``--checkpoint /dev/zero`` would be read into memory without end, a FIFO nobody
    writes to waited on for ever: each is unreadable input (exit 2) within the bounds of a
    log (a size limit, ``--max-seconds``)."""
    _lines(tmp_path, keys, [STARTED])
    if source == "fifo":
        receipt = tmp_path / "receipt.fifo"
        os.mkfifo(receipt)
        expect = "did not end in time"
    else:
        receipt, expect = Path("/dev/zero"), "too long"
    cmd = [sys.executable, "-m", "hub.cli", "audit", str(tmp_path / "events.jsonl")]
    cmd += ["--trust-log-keys", "--checkpoint", str(receipt), "--max-seconds", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stderr
    assert expect in done.stderr
