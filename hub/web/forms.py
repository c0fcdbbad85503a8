"""Form fields from a function's arguments JSON Schema (the console's call forms)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["form_fields"]


def _kind(schema: dict[str, Any]) -> str:
    """How a parameter is entered: number, integer, boolean, text, json or file."""
    if schema.get("x-fedhub-type") in ("xarray.DataArray", "xarray.Dataset", "numpy.ndarray"):
        return "file"
    options = [o for o in schema.get("anyOf") or () if o.get("type") != "null"]
    if len(options) == 1:
        return _kind(options[0])
    kind = schema.get("type")
    if kind in ("number", "integer", "boolean"):
        return str(kind)
    if kind == "string" and "enum" not in schema:
        return "text"
    return "json"


def form_fields(arguments: dict[str, Any]) -> list[dict[str, Any]]:
    """One field per parameter: name, kind, whether required, default (as text), help."""
    required = set(arguments.get("required") or ())
    fields = []
    for name, schema in (arguments.get("properties") or {}).items():
        if not isinstance(schema, dict):
            continue
        kind = _kind(schema)
        default = schema.get("default")
        shown = "" if default is None else default if kind == "text" else json.dumps(default)
        fields.append(
            {
                "name": name,
                "kind": kind,
                "required": name in required,
                "default": shown,
                "help": str(schema.get("description") or schema.get("title") or ""),
                "choices": schema.get("enum"),
            }
        )
    return fields
