"""Parse numpy-style (and Google-style) docstrings into their parts.

The runner uses this to put a function's summary into its info and each parameter's
description into the JSON Schema of its arguments. Pure, forgiving: a docstring without
sections is all summary and description; unknown sections are ignored.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

__all__ = ["Docstring", "parse_docstring"]

_NUMPY_UNDERLINE = re.compile(r"^\s*-{3,}\s*$")
_GOOGLE_HEADER = re.compile(r"^(\w[\w ]*):\s*$")

_PARAM_SECTIONS = {
    "parameters",
    "params",
    "args",
    "arguments",
    "keyword arguments",
    "other parameters",
}
_RETURN_SECTIONS = {"returns", "return", "yields"}
_RAISE_SECTIONS = {"raises", "raise"}
_KNOWN_SECTIONS = (
    _PARAM_SECTIONS
    | _RETURN_SECTIONS
    | _RAISE_SECTIONS
    | {"notes", "examples", "example", "see also", "references", "warnings", "attributes"}
)


@dataclass(frozen=True)
class Docstring:
    """The parts of a docstring that fedhub shows to callers."""

    summary: str = ""
    description: str = ""
    params: dict[str, str] = field(default_factory=dict)
    returns: str = ""
    raises: dict[str, str] = field(default_factory=dict)


def parse_docstring(text: str | None) -> Docstring:
    """Split ``text`` into summary, description, parameter/return/raise descriptions."""
    if not text or not text.strip():
        return Docstring()
    lines = inspect.cleandoc(text).splitlines()
    head, sections = _split_sections(lines)
    summary, description = _summary_and_description(head)
    params: dict[str, str] = {}
    returns: list[str] = []
    raises: dict[str, str] = {}
    for title, body in sections:
        if title in _PARAM_SECTIONS:
            params.update(_named_entries(body))
        elif title in _RETURN_SECTIONS:
            returns.append(_returns_text(body))
        elif title in _RAISE_SECTIONS:
            raises.update(_named_entries(body))
    return Docstring(
        summary=summary,
        description=description,
        params=params,
        returns="; ".join(r for r in returns if r),
        raises=raises,
    )


def _split_sections(lines: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Return the lines before the first section and ``(title, body)`` per section."""
    head: list[str] = []
    sections: list[tuple[str, list[str]]] = []
    current: list[str] = head
    i = 0
    while i < len(lines):
        line = lines[i]
        title = line.strip().lower()
        is_numpy = (
            bool(title)
            and i + 1 < len(lines)
            and not line.startswith((" ", "\t"))
            and _NUMPY_UNDERLINE.match(lines[i + 1]) is not None
        )
        google = _GOOGLE_HEADER.match(line)
        if is_numpy:
            current = []
            sections.append((title, current))
            i += 2
            continue
        if google and google.group(1).lower() in _KNOWN_SECTIONS:
            current = []
            sections.append((google.group(1).lower(), current))
            i += 1
            continue
        current.append(line)
        i += 1
    return head, sections


def _summary_and_description(head: list[str]) -> tuple[str, str]:
    paragraphs = _paragraphs(head)
    if not paragraphs:
        return "", ""
    return paragraphs[0], "\n\n".join(paragraphs[1:])


def _paragraphs(lines: list[str]) -> list[str]:
    paragraphs: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    return paragraphs


def _blocks(body: list[str]) -> list[tuple[str, str]]:
    """Group a section body into ``(unindented header line, joined indented text)``."""
    blocks: list[tuple[str, list[str]]] = []
    base = min((_indent(line) for line in body if line.strip()), default=0)
    for line in body:
        if not line.strip():
            continue
        if _indent(line) <= base:
            blocks.append((line.strip(), []))
        elif blocks:
            blocks[-1][1].append(line.strip())
    return [(header, " ".join(text)) for header, text in blocks]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _named_entries(body: list[str]) -> dict[str, str]:
    """``name : type`` (numpy) or ``name (type): text`` (Google) entries."""
    entries: dict[str, str] = {}
    for header, text in _blocks(body):
        if " : " in header or header.endswith(" :"):
            names, _, _kind = header.partition(":")
            description = text
        elif ":" in header:
            names, _, inline = header.partition(":")
            names = names.split("(")[0]
            description = " ".join(part for part in (inline.strip(), text) if part)
        else:
            names, description = header, text
        for name in names.split(","):
            key = name.strip().lstrip("*")
            if key:
                entries[key] = description
    return entries


def _returns_text(body: list[str]) -> str:
    parts: list[str] = []
    for header, text in _blocks(body):
        if text:
            parts.append(text)
        elif ":" in header and not header.rstrip().endswith(":"):
            # Google style: "Returns:\n    int: the count"
            parts.append(header.partition(":")[2].strip())
        else:
            parts.append(header)
    return " ".join(parts)
