"""Small SVG charts drawn on the server (no script, no CDN): bars and lines over time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from hub.lifecycle import RequestState

__all__ = ["bar_chart", "line_chart"]

_W, _H, _PAD = 560, 160, 28
#: Colours by series name (outcomes use the same words as the log).
COLOURS = {
    RequestState.COMPLETED.value: "#2e7d32",
    RequestState.FAILED.value: "#c62828",
    RequestState.REJECTED.value: "#ef6c00",
    "median": "#1565c0",
    "p95": "#6a1b9a",
    "depth": "#00838f",
}


def _frame(title: str, top: float, unit: str, body: str, labels: Sequence[str]) -> str:
    ticks = ""
    if labels:
        step = max(1, len(labels) // 6)
        width = (_W - 2 * _PAD) / max(1, len(labels))
        for i in range(0, len(labels), step):
            x = _PAD + i * width
            ticks += f'<text x="{x:.1f}" y="{_H - 6}" class="tick">{escape(labels[i])}</text>'
    return (
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>"
        f'<text x="{_PAD}" y="14" class="ctitle">{escape(title)}</text>'
        f'<text x="{_W - _PAD}" y="14" class="tick" text-anchor="end">max {top:g} {unit}</text>'
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" class="axis"/>'
        f"{body}{ticks}</svg>"
    )


def bar_chart(
    title: str, labels: Sequence[str], series: Mapping[str, Sequence[float]], unit: str = ""
) -> str:
    """Stacked bars, one per label, one colour per series."""
    n = len(labels)
    totals = [float(sum(values[i] for values in series.values())) for i in range(n)]
    top = max(totals, default=0.0) or 1.0
    width = (_W - 2 * _PAD) / max(1, n)
    scale = (_H - 2 * _PAD - 8) / top
    body = ""
    for i in range(n):
        y = float(_H - _PAD)
        for name, values in series.items():
            h = values[i] * scale
            if h <= 0:
                continue
            y -= h
            colour = COLOURS.get(name, "#555")
            tip = f"{labels[i]} {name}: {values[i]:g}"
            body += (
                f'<rect x="{_PAD + i * width + 1:.1f}" y="{y:.1f}" width="{max(1, width - 2):.1f}"'
                f' height="{h:.1f}" fill="{colour}" class="s-{escape(name)}">'
                f"<title>{escape(tip)}</title></rect>"
            )
    return _frame(title, top, unit, body + _legend(series, title), labels)


def line_chart(
    title: str, labels: Sequence[str], series: Mapping[str, Sequence[float | None]], unit: str = ""
) -> str:
    """Lines over time; ``None`` leaves a gap."""
    n = len(labels)
    top = max((v for values in series.values() for v in values if v is not None), default=0) or 1
    step = (_W - 2 * _PAD) / max(1, n - 1)
    scale = (_H - 2 * _PAD - 8) / top
    body = ""
    for name, values in series.items():
        points = " ".join(
            f"{_PAD + i * step:.1f},{_H - _PAD - v * scale:.1f}"
            for i, v in enumerate(values)
            if v is not None
        )
        if points:
            colour = COLOURS.get(name, "#555")
            body += (
                f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"'
                f' class="s-{escape(name)}"/>'
            )
            for i, v in enumerate(values):  # a dot per value: one minute alone still shows
                if v is not None:
                    body += (
                        f'<circle cx="{_PAD + i * step:.1f}" cy="{_H - _PAD - v * scale:.1f}"'
                        f' r="2.5" fill="{colour}"><title>{escape(labels[i])} {escape(name)}:'
                        f" {v:g} {escape(unit)}</title></circle>"
                    )
    return _frame(title, top, unit, body + _legend(series, title), labels)


def _legend(series: Mapping[str, object], title: str) -> str:
    out = ""
    start = _PAD + 6 * len(title) + 24  # after the title (10 px text: ~6 px a character)
    for i, name in enumerate(series):
        x = start + 80 * i
        colour = COLOURS.get(name, "#555")
        out += (
            f'<rect x="{x}" y="5" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14}" y="14" class="tick">{escape(name)}</text>'
        )
    return out
