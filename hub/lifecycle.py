"""The life of a request, written once: its states and the legal steps between them.

Every part of fedhub that reasons about a request's state uses this module: the node's
pipeline (what to do with a redelivered call), the projections (the ``requests`` table),
the daemon and the CLI (what to show), and the audit (which event sequences are legal).
No other module spells a state as a bare string.

Log version 2 (what a node writes today)::

    (none) --request.accepted--> ACCEPTED --request.completed--> COMPLETED
                      |              |  \\--request.failed----> FAILED
                      |              +--request.started (a retry, attempt >= 2)--> RUNNING
    (none) --request.rejected--> REJECTED
    COMPLETED --result.expired--> EXPIRED     COMPLETED --result.deleted--> DELETED

``request.progress`` keeps an active request where it is; ``result.fetched``,
``result.shared``, ``result.unshared``, ``result.tagged``, ``result.keep_shortened``,
``result.sliced`` and ``result.lost`` follow ``request.completed``.
A ``request.rejected`` for a request id that is already known records a refused copy (a
replay) and leaves the request as it is.

Log version 1 (still read and audited) had three events for what version 2 says with one
``request.accepted`` carrying the caller's signed header: ``request.received`` (then
RECEIVED), ``request.accepted`` (RECEIVED to ACCEPTED, with only the request id) and
``request.started`` (attempt 1); and ``result.stored`` after or before the end. A request
received under version 1 may be accepted or rejected by a version 2 event (a node upgraded
while the call waited in its stream).

:func:`step` is the one rule; :data:`TRANSITIONS` is the same table, for code that
precomputes (the audit's fast path).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from hub.errors import LifecycleError

__all__ = [
    "ACTIVE",
    "FINAL",
    "REQUEST_EVENT_TYPES",
    "TRANSITIONS",
    "UNFINISHED",
    "RequestState",
    "step",
    "target",
]


class RequestState(StrEnum):
    """Where a request stands, as the log says."""

    RECEIVED = "received"
    """Version 1 only: the signed request arrived and was logged, not yet accepted."""
    ACCEPTED = "accepted"
    """Verified, authorized, not a replay: the node answers for it from now on."""
    RUNNING = "running"
    """The function was (re)started: version 1 always, version 2 for a retry."""
    COMPLETED = "completed"
    """The function returned a result (sealed for the caller)."""
    FAILED = "failed"
    """The request ended without a result."""
    REJECTED = "rejected"
    """Refused before the node took it on."""
    EXPIRED = "expired"
    """Completed, and its kept result was removed by the node's retention rules."""
    DELETED = "deleted"
    """Completed, and its owner removed the kept result."""


#: States in which the node still owes the request an outcome.
UNFINISHED: Final = frozenset({RequestState.RECEIVED, RequestState.ACCEPTED, RequestState.RUNNING})
#: States in which the node may run, progress or end the request.
ACTIVE: Final = frozenset({RequestState.ACCEPTED, RequestState.RUNNING})
#: States in which the request has ended (COMPLETED may still become EXPIRED or DELETED:
#: only its kept result goes).
FINAL: Final = frozenset(
    {
        RequestState.COMPLETED,
        RequestState.FAILED,
        RequestState.REJECTED,
        RequestState.EXPIRED,
        RequestState.DELETED,
    }
)

_S = RequestState
_ANY: Final = (None, *RequestState)
_KEEP = "keep"  # the event leaves the state as it is

# (event type, log version) -> {state before: state after, or _KEEP}. A state missing from
# an entry is an illegal step; a type missing altogether is not a request event of that
# version.
_TABLE: dict[tuple[str, int], dict[RequestState | None, RequestState | str]] = {
    # -- version 1 --
    ("request.received", 1): {None: _S.RECEIVED},
    ("request.rejected", 1): {
        None: _S.REJECTED,
        _S.RECEIVED: _S.REJECTED,
        **dict.fromkeys((_S.ACCEPTED, _S.RUNNING, *FINAL), _KEEP),
    },
    ("request.accepted", 1): {_S.RECEIVED: _S.ACCEPTED},
    ("request.started", 1): dict.fromkeys(ACTIVE, _S.RUNNING),
    ("request.progress", 1): dict.fromkeys(ACTIVE, _KEEP),
    ("request.completed", 1): dict.fromkeys(ACTIVE, _S.COMPLETED),
    ("request.failed", 1): dict.fromkeys(ACTIVE, _S.FAILED),
    # stored while running, or right after completing (the node replied first)
    ("result.stored", 1): dict.fromkeys((*ACTIVE, _S.COMPLETED), _KEEP),
    ("result.fetched", 1): {_S.COMPLETED: _KEEP},
    ("result.shared", 1): {_S.COMPLETED: _KEEP},
    # -- version 2 --
    ("request.accepted", 2): {None: _S.ACCEPTED, _S.RECEIVED: _S.ACCEPTED},
    ("request.rejected", 2): {
        None: _S.REJECTED,
        _S.RECEIVED: _S.REJECTED,
        **dict.fromkeys((_S.ACCEPTED, _S.RUNNING, *FINAL), _KEEP),
    },
    ("request.started", 2): dict.fromkeys(ACTIVE, _S.RUNNING),
    ("request.progress", 2): dict.fromkeys(ACTIVE, _KEEP),
    ("request.completed", 2): dict.fromkeys(ACTIVE, _S.COMPLETED),
    ("request.failed", 2): {**dict.fromkeys(ACTIVE, _S.FAILED), _S.RECEIVED: _S.FAILED},
    ("result.fetched", 2): {_S.COMPLETED: _KEEP},
    ("result.shared", 2): {_S.COMPLETED: _KEEP},
    ("result.lost", 2): {_S.COMPLETED: _KEEP},
    ("result.unshared", 2): {_S.COMPLETED: _KEEP},
    ("result.tagged", 2): {_S.COMPLETED: _KEEP},
    ("result.keep_shortened", 2): {_S.COMPLETED: _KEEP},
    ("result.expired", 2): {_S.COMPLETED: _S.EXPIRED},
    ("result.deleted", 2): {_S.COMPLETED: _S.DELETED},
    ("result.sliced", 2): {_S.COMPLETED: _KEEP},
}

#: Every event type that concerns one request (carries a ``request_id``), any version.
REQUEST_EVENT_TYPES: Final = frozenset(kind for kind, _ in _TABLE)

#: The legal steps: ``TRANSITIONS[(type, version)][state before]`` is the state after
#: (None: unchanged). A missing state is an illegal step.
TRANSITIONS: Final[Mapping[tuple[str, int], Mapping[RequestState | None, RequestState | None]]] = {
    key: {
        before: (None if after == _KEEP else RequestState(after)) for before, after in steps.items()
    }
    for key, steps in _TABLE.items()
}


def step(
    state: RequestState | None, kind: str, version: int = 2, *, request_id: str = "-"
) -> RequestState | None:
    """The state of a request after an event of type ``kind`` (body version ``version``).

    Returns the new state, or None when the event leaves it unchanged. Raises
    :class:`~hub.errors.LifecycleError` naming the request when the step is illegal, or
    when ``kind`` is not a request event of that log version.
    """
    steps = TRANSITIONS.get((kind, version))
    if steps is None:
        raise LifecycleError(f"{kind} is not a request event of log version {version}")
    if state in steps:
        return steps[state]
    raise LifecycleError(_problem(state, kind, request_id))


def target(kind: str, version: int = 2) -> RequestState | None:
    """The state a legal ``kind`` event always leads to, or None if it leaves it (or if it
    leads to different states from different ones, as ``request.rejected`` does)."""
    afters = set(TRANSITIONS.get((kind, version), {}).values())
    if len(afters) == 1:
        return afters.pop()
    return None


def _problem(state: RequestState | None, kind: str, rid: str) -> str:
    where = state.value if state is not None else "unknown"
    if kind == "request.received":
        return f"request {rid} received twice"
    if kind == "request.accepted":
        return f"request {rid} accepted while {where if state else 'never received'}"
    if kind in ("request.completed", "request.failed"):
        if state in (RequestState.COMPLETED, RequestState.FAILED):
            return f"request {rid} completed twice"
        return f"request {rid} ended while {where}"
    if kind.startswith("result.") and kind != "result.stored":
        return f"{kind} for request {rid} that has no result ({where})"
    return f"{kind} for request {rid} while {where}"


# Every state must have a verdict in every entry's domain: a quick self-check at import
# (a table typo should fail loudly, not silently allow a step).
assert all(before in _ANY for steps in _TABLE.values() for before in steps)
