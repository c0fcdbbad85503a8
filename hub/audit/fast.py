"""The fast path: one check per event for the request events of a healthy log.

Most events of a healthy log are request events in the exact form a node writes. For
those, :func:`scan` compares the body's header with the one expected at that point, byte
for byte, matches ``data`` against its type's compiled pattern (:data:`~hub.audit.forms.
FAST_KINDS`, generated from the event models and the lifecycle table) and applies the
request's step; anything else -- another kind of event, or anything unexpected -- goes
through the general path (:meth:`Rules.event <hub.audit.rules.Rules.event>`), which
decides exactly as if the fast path did not exist.
"""

from __future__ import annotations

import re
from binascii import hexlify
from collections.abc import Callable, Iterable
from typing import Any, Final

from hub.chain import leaf_hash
from hub.logfile import RawEvent

from .forms import FAST_KINDS, FAST_TAIL, SLOW
from .rules import Rules
from .signatures import CHUNK
from .trust import Key

__all__ = ["LEAF_GROUP", "Row", "fast_key", "scan"]

# Rows as the auditor reads them: (position, (claimed hash, signature, body)).
Row = tuple[int, tuple[Any, Any, Any]]

#: Event hashes are added to the Merkle tree in groups of this many (or when a root is due).
LEAF_GROUP: Final = 4096

# The key id and log id of the expected header must have the form TAIL reads.
_FAST_KID = re.compile(rb"[0-9a-f]{20}")
_FAST_LOG = re.compile(rb'[^"\\\x00-\x1f\x80-\xff]{3,140}')


def fast_key(rules: Rules) -> Key | None:
    """The node key events are checked against, if the fast path may run now: the node is
    running under a current, unrevoked key, and no unsigned events of another key wait
    for a signature (else the general path decides)."""
    key = rules.trust.node_key
    if key is None or key.revoked_at is not None or not rules.running:
        return None
    if any(kid != key.kid for _, _, kid in rules.uncovered):
        return None
    return key


def scan(
    rules: Rules,
    rows: Iterable[Row],
    unreadable: Callable[[int], Exception] | None,
    *,
    fast: bool = True,
) -> None:
    """The pass over ``rows``: the fast check where it applies, the general path elsewhere.

    The fast check accepts an event only if the general path would find nothing wrong
    with it, and then changes the state exactly as it would: the header must be byte for
    byte the one expected here (node key id, log id, ``prev`` = the previous hash, ``seq`` =
    the position, the current body version), followed by a well-formed time no earlier
    than the last and a request event type whose ``data`` matches its pattern; the
    request's state must allow the step; a signature must be 64 bytes (version 1: always
    there). Its state lives in local variables, written back (``sync``) before the general
    path runs and read again (``load``) after. ``unreadable(position)`` is the error for a
    row whose values are not all bytes (when the source promises bytes).
    """
    rep = rules.report
    requests = rules.requests
    types = rules.types
    uncovered = rules.uncovered
    verify = rules.verify_signatures
    verifier = rules.verifier
    positions = verifier.positions
    add_blob = verifier.blob.extend
    pending: list[bytes] = []  # event hashes not yet in the Merkle tree
    leaf = leaf_hash
    tail = FAST_TAIL.fullmatch
    fast_kinds = FAST_KINDS
    slow = SLOW
    chunk = CHUNK
    group = LEAF_GROUP
    # Fast-path state: ``head`` is the expected header up to ``prev``'s value (empty: the
    # fast path is off); ``done`` counts events accepted since the last sync.
    head = b""
    signer: Key | None = None
    kid_text = ""
    version = 1
    prev = rules.prev
    prevhex = b""
    last = b""
    last_pos = 0
    done = 0
    signed = 0

    def check(pos: int, hash_: Any, sig: Any, body: Any) -> bool:
        nonlocal prev, prevhex, last, last_pos, done, signed
        if type(body) is not bytes or type(sig) is not bytes:
            return False
        h = leaf(body)
        if h != hash_:
            return False
        at = body.rfind(b',"kid":"')
        expected = head + prevhex + b'","seq":' + str(pos).encode() + b',"time":"'
        if not body.startswith(expected, at) or not body.startswith(b'{"data":'):
            return False
        m = tail(body, at + len(expected))
        if m is None:
            return False
        time, kind_key = m.groups()
        spec = fast_kinds.get(kind_key)
        if spec is None or time < last or spec.version != version:
            return False
        d = spec.data(body, 8, at)
        if d is None:
            return False
        rid = d.group(1).decode()
        new = spec.steps.get(requests.get(rid), slow)
        if new is slow:
            return False
        if sig:
            if len(sig) != 64:
                return False
            if verify:
                positions.append(pos)
                add_blob(h)
                add_blob(sig)
                if len(positions) >= chunk:
                    verifier.flush()
            if uncovered:
                uncovered.clear()
            signed += 1
        elif version == 1:
            return False
        elif not uncovered:
            uncovered.append((pos, pos, kid_text))
        if new is not None:
            requests[rid] = new  # type: ignore[assignment]  # not SLOW, so a state
        types[spec.kind] = types.get(spec.kind, 0) + 1
        pending.append(h)
        if len(pending) >= group:
            rules.add_leaves(pending)
        prev = h
        prevhex = hexlify(h)
        last = time
        last_pos = pos
        done += 1
        return True

    def sync() -> None:
        nonlocal done, signed
        if done:
            rep.events += done
            if verify:
                rep.signatures_checked += signed
            text = last.decode()
            rep.last_time = text
            if signer is not None:
                signer.last_time = text
            rules.prev = prev
            rules.prev_hex = prevhex.decode()
            rules.last_position = last_pos
            done = signed = 0
        rules.add_leaves(pending)

    def load() -> None:
        nonlocal head, signer, kid_text, version, prev, prevhex, last
        head = b""
        key = fast_key(rules) if fast else None
        log, last_time = rep.log, rep.last_time
        if key is None or log is None or last_time is None:
            return
        try:
            kid_bytes, log_bytes, last = key.kid.encode(), log.encode(), last_time.encode()
        except UnicodeEncodeError:
            return
        if _FAST_KID.fullmatch(kid_bytes) is None or _FAST_LOG.fullmatch(log_bytes) is None:
            return
        version = rules.version
        if verify:
            verifier.use_key(key.sign_key, version)
        signer = key
        kid_text = key.kid
        prev = rules.prev
        prevhex = rules.prev_hex.encode()
        head = b',"kid":"' + kid_bytes + b'","log":"' + log_bytes + b'","prev":"'

    load()
    for pos, (hash_, sig, body) in rows:
        if head and check(pos, hash_, sig, body):
            continue
        sync()
        if unreadable is not None and not (
            type(hash_) is bytes and type(sig) is bytes and type(body) is bytes
        ):
            raise unreadable(pos)
        rules.event(RawEvent(pos, hash_, sig, body))
        load()
    sync()
