"""``hub.lifecycle.step`` is the one rule of a request's life: every cell of the table in
docs/events.md, read here from the page (not from the code), is a step it takes or refuses
with a LifecycleError naming the request -- never a silent None or a KeyError."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hub.errors import LifecycleError
from hub.lifecycle import RequestState, step

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
_ROW = re.compile(r"^\| `([a-z._]+)` \(([12])\) \|(.*)\|$")


def _cells() -> list[tuple[str, int, RequestState | None, str]]:
    table = DOC.read_text().split("<!-- lifecycle table: generated from hub.lifecycle -->")[1]
    header, *lines = table.split("<!-- end of lifecycle table -->")[0].strip().splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")][1:]
    states = [None if c == "(none)" else RequestState(c) for c in columns]
    out = []
    for line in lines:
        if (m := _ROW.match(line)) is None:
            continue
        cells = [c.strip() for c in m[3].split("|")]
        assert len(cells) == len(states)
        out += [(m[1], int(m[2]), s, c) for s, c in zip(states, cells, strict=True)]
    return out


CELLS = _cells()


def test_the_page_has_a_cell_for_every_state_of_every_request_event() -> None:
    assert len(CELLS) == 25 * 9  # 10 request event types of version 1, 15 of version 2
    assert {s for _, _, s, _ in CELLS} == {None, *RequestState}


@pytest.mark.parametrize(
    ("kind", "version", "before", "cell"),
    CELLS,
    ids=[f"{k}({v}) after {s.value if s else 'nothing'}" for k, v, s, _ in CELLS],
)
def test_each_step_is_taken_or_refused_as_the_page_says(
    kind: str, version: int, before: RequestState | None, cell: str
) -> None:
    if cell == "—":
        with pytest.raises(LifecycleError) as refused:
            step(before, kind, version, request_id="req00000001")
        assert "req00000001" in refused.value.diagnostics()
    elif cell == "=":
        assert step(before, kind, version, request_id="req00000001") is None
    else:
        assert step(before, kind, version, request_id="req00000001") == RequestState(cell)


@pytest.mark.parametrize(
    ("kind", "version"),
    [("request.received", 2), ("result.stored", 2), ("result.expired", 1), ("node.started", 2)],
)
def test_a_type_that_is_no_request_event_of_its_version_is_refused(kind: str, version: int) -> None:
    for before in (None, *RequestState):
        with pytest.raises(LifecycleError, match="is not a request event of log version"):
            step(before, kind, version)


def test_a_state_read_back_as_text_steps_as_the_enum_does() -> None:
    """The projections store the state's text: read back, it is the same state."""
    assert step(RequestState("accepted"), "request.completed") == RequestState.COMPLETED
    with pytest.raises(LifecycleError, match="completed twice"):
        step(RequestState("completed"), "request.completed", request_id="r")


# --- no other module spells a state ---------------------------------------------------------

ROOT = DOC.parents[1]
#: Texts that equal a state's name but are no request state: (file, text) -> how many.
NOT_STATES = {
    ("hub/cli_lookup.py", "received"): 1,  # the label of the time a request arrived
    ("hub/cli_progress.py", "running"): 1,  # a progress bar's message
    ("hub/errors.py", "failed"): 2,  # the wire code of an unclassified error
    ("hub/nats/objects.py", "deleted"): 3,  # an object store entry's flag
    ("hub/query.py", "received"): 2,  # a query field: when the request arrived
    ("hub/transfer/stream.py", "failed"): 1,  # a transfer's error code
    ("node/cli.py", "failed"): 1,  # why the daemon stopped
    ("node/cli.py", "running"): 1,  # whether the node process runs
    ("node/console.py", "running"): 1,  # whether the node process runs
    ("node/executors.py", "expired"): 1,  # a slot's attribute name
    ("node/runner.py", "completed"): 1,  # a module's counters of what its calls did
    ("node/runner.py", "failed"): 1,
    ("node/runner.py", "rejected"): 1,
}


def _spelled_states() -> dict[tuple[str, str], int]:
    import ast

    names = {state.value for state in RequestState}
    found: dict[tuple[str, str], int] = {}
    for folder in ("hub", "node"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            if where == "hub/lifecycle.py":
                continue
            tree = ast.parse(path.read_text())
            docstrings = {
                id(node.body[0].value)
                for node in ast.walk(tree)
                if isinstance(
                    node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
                )
                and node.body
                and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
            }
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and node.value in names
                    and id(node) not in docstrings
                ):
                    key = (where, str(node.value))
                    found[key] = found.get(key, 0) + 1
    return found


def test_no_module_but_the_lifecycle_spells_a_request_state_as_a_bare_string() -> None:
    assert _spelled_states() == NOT_STATES
