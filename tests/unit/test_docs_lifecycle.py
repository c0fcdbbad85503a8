"""The lifecycle table in docs/events.md is the one in hub.lifecycle (TRANSITIONS), cell for
cell: a change to either without the other fails here."""

from __future__ import annotations

from pathlib import Path

from hub.lifecycle import TRANSITIONS, RequestState

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
START, END = (
    "<!-- lifecycle table: generated from hub.lifecycle -->",
    "<!-- end of lifecycle table -->",
)
_BEFORE: list[RequestState | None] = [None, *RequestState]


def render() -> str:
    """The table as docs/events.md shows it: a row per (type, version), a column per state
    before; each cell the state after, ``=`` (unchanged) or ``—`` (illegal)."""
    head = "| event (version) | " + " | ".join(s.value if s else "(none)" for s in _BEFORE) + " |"
    rows = [head, "|---" * (len(_BEFORE) + 1) + "|"]
    for (kind, version), steps in sorted(TRANSITIONS.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = []
        for state in _BEFORE:
            if state not in steps:
                cells.append("—")
            else:
                after = steps[state]
                cells.append("=" if after is None else after.value)
        rows.append(f"| `{kind}` ({version}) | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def test_the_lifecycle_table_in_the_docs_is_the_one_the_code_uses() -> None:
    text = DOC.read_text()
    assert START in text and END in text, "docs/events.md lost its lifecycle table markers"
    shown = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert shown == render()
