"""Reading a remote function's types back: signature text and JSON Schema to annotations.

For ``fedhub stub`` (:mod:`hub.stub`): :func:`parse_signature` splits the signature text a
node serves (``name(params) -> ret`` or ``Class(ctor).method(params) -> ret``) into parameter
and return texts, and :func:`annotation_of` turns one of them into the annotation the stub
writes, when every name in it is understood (builtins, ``typing`` forms,
``numpy.ndarray``, ``xarray.DataArray``/``Dataset``, ``datetime``), else builds one from
the JSON Schema. Each records in ``imports`` what the stub must import for it.
"""

from __future__ import annotations

import ast
import json
from typing import Any

__all__ = [
    "ABC_NAMES",
    "BUILTINS",
    "GENERICS",
    "Texts",
    "annotation_of",
    "literal",
    "parse_signature",
]

#: Names an annotation may use as they are.
BUILTINS = frozenset(
    {"int", "float", "str", "bool", "bytes", "bytearray", "complex", "object", "None"}
)
#: Generic containers, old ``typing`` spellings included → the builtin the stub writes.
GENERICS = {
    "list": "list",
    "dict": "dict",
    "tuple": "tuple",
    "set": "set",
    "frozenset": "frozenset",
    "List": "list",
    "Dict": "dict",
    "Tuple": "tuple",
    "Set": "set",
    "FrozenSet": "frozenset",
    "typing.List": "list",
    "typing.Dict": "dict",
    "typing.Tuple": "tuple",
    "typing.Set": "set",
    "typing.FrozenSet": "frozenset",
}
#: ``collections.abc`` names the stub imports when a signature uses them.
ABC_NAMES = ("Sequence", "Mapping", "Iterable", "Collection")
_NDARRAY = (
    "numpy.ndarray",
    "np.ndarray",
    "ndarray",
    "NDArray",
    "npt.NDArray",
    "numpy.typing.NDArray",
)
_DATAARRAY = ("xarray.DataArray", "xr.DataArray", "DataArray")
_DATASET = ("xarray.Dataset", "xr.Dataset", "Dataset")
_DATETIME = ("datetime", "date", "time", "timedelta")

#: Dotted name in a signature → (text in the stub, what it needs imported).
_KNOWN: dict[str, tuple[str, str]] = {}
for _name in _NDARRAY:
    _KNOWN[_name] = ("numpy.ndarray", "numpy")
for _name in _DATAARRAY:
    _KNOWN[_name] = ("xarray.DataArray", "xarray")
for _name in _DATASET:
    _KNOWN[_name] = ("xarray.Dataset", "xarray")
for _name in _DATETIME:
    for _prefix in ("", "dt.", "datetime."):
        _KNOWN[_prefix + _name] = (f"datetime.{_name}", "datetime")
for _name in ABC_NAMES:
    for _prefix in ("", "typing.", "collections.abc.", "abc."):
        _KNOWN[_prefix + _name] = (_name, f"collections.abc.{_name}")
for _prefix in ("", "typing.", "t."):
    _KNOWN[_prefix + "Any"] = ("Any", "typing.Any")

_FEDHUB_TYPES = {
    "numpy.ndarray": ("numpy.ndarray", "numpy"),
    "xarray.DataArray": ("xarray.DataArray", "xarray"),
    "xarray.Dataset": ("xarray.Dataset", "xarray"),
    "bytes": ("bytes", ""),
}
_STRING_FORMATS = {
    "date-time": ("datetime.datetime", "datetime"),
    "date": ("datetime.date", "datetime"),
    "time": ("datetime.time", "datetime"),
    "duration": ("datetime.timedelta", "datetime"),
    "binary": ("bytes", ""),
}


class _UnknownError(Exception):
    """A name or form in an annotation the stub cannot reproduce."""


def literal(value: Any) -> str:
    """Python source of a JSON scalar (strings in double quotes, as ruff format writes)."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


# --- signatures -----------------------------------------------------------------------

#: ``[(parameter name, annotation text or None)]`` of a parameter list.
Texts = list[tuple[str, str | None]]


def parse_signature(text: str, remote: str) -> tuple[Texts | None, Texts, str] | None:
    """Split ``name(params) -> ret`` or ``Class(ctor).method(params) -> ret``; None if odd."""
    text = text.strip().removeprefix("async ").strip()
    try:
        open1 = text.index("(")
        close1 = _closing(text, open1)
        ctor: Texts | None = None
        params = _param_texts(text[open1 + 1 : close1])
        rest = text[close1 + 1 :]
        if rest.startswith("."):
            open2 = rest.index("(")
            close2 = _closing(rest, open2)
            ctor, params = params, _param_texts(rest[open2 + 1 : close2])
            rest = rest[close2 + 1 :]
    except ValueError:
        return None
    if ("." in remote) != (ctor is not None):
        return None
    rest = rest.strip()
    if not rest.startswith("->"):
        return None
    return ctor, params, rest[2:].strip()


def _closing(text: str, start: int) -> int:
    """Index of the bracket closing the one at ``start`` (quotes respected)."""
    depth = 0
    quote = ""
    i = start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError("unbalanced brackets")


def _split_top(text: str, sep: str) -> list[str]:
    """Split at ``sep`` characters outside brackets and quotes."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quote or depth:
        raise ValueError("unbalanced brackets or quotes")
    parts.append(text[start:])
    return parts


def _param_texts(text: str) -> Texts:
    """``[(name, annotation text or None)]`` of a parameter list."""
    out: Texts = []
    for piece in _split_top(text, ","):
        piece = piece.strip()
        if not piece or piece in ("*", "/"):
            continue
        head = _split_top(piece, "=")[0]
        name, colon, annotation = head.partition(":")
        name = name.strip()
        if not name.isidentifier():
            raise ValueError(f"not a parameter: {piece!r}")
        out.append((name, annotation.strip() if colon else None))
    return out


# --- annotations ----------------------------------------------------------------------


def annotation_of(
    text: str | None, schema: dict[str, Any], defs: dict[str, Any], imports: set[str]
) -> str:
    """The stub's annotation: from ``text`` when understood, else from the JSON Schema."""
    if text:
        wanted: set[str] = set()
        try:
            result = _from_text(ast.parse(text, mode="eval").body, wanted)
        except (SyntaxError, ValueError, RecursionError, _UnknownError):
            pass
        else:
            imports |= wanted
            return result
    wanted = set()
    result = _from_schema(schema, defs, wanted, depth=0)
    imports |= wanted
    return result


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    raise _UnknownError(ast.dump(node))


def _base(name: str) -> str:
    """``Literal`` for ``typing.Literal``/``t.Literal``, else the name unchanged."""
    head, _, last = name.rpartition(".")
    return last if head in ("typing", "t", "typing_extensions") else name


def _from_text(node: ast.expr, imports: set[str]) -> str:
    if isinstance(node, ast.Constant):
        if node.value is None:
            return "None"
        if isinstance(node.value, str):  # a forward reference
            return _from_text(ast.parse(node.value, mode="eval").body, imports)
        raise _UnknownError(repr(node.value))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([_from_text(part, imports) for part in _union_parts(node)])
    if isinstance(node, ast.Subscript):
        return _subscript(node, imports)
    name = _dotted(node)
    if name in BUILTINS:
        return name
    if name in GENERICS:
        return GENERICS[name]
    if name in _KNOWN:
        text, module = _KNOWN[name]
        imports.add(module)
        return text
    raise _UnknownError(name)


def _union_parts(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union_parts(node.left) + _union_parts(node.right)
    return [node]


def _union(parts: list[str]) -> str:
    unique = list(dict.fromkeys(parts))
    if "Any" in unique:
        return "Any"
    if "None" in unique:  # None last reads best: ``X | None``
        unique = [p for p in unique if p != "None"] + ["None"]
    return " | ".join(unique)


def _subscript(node: ast.Subscript, imports: set[str]) -> str:
    name = _dotted(node.value)
    args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
    base = _base(name)
    if name in _KNOWN and _KNOWN[name][0] == "numpy.ndarray":
        imports.add("numpy")
        return "numpy.ndarray"
    if base == "Literal":
        values = []
        for arg in args:
            if not isinstance(arg, ast.Constant) or not isinstance(
                arg.value, str | int | bool | type(None)
            ):
                raise _UnknownError("Literal of a non-constant")
            values.append(literal(arg.value))
        imports.add("typing.Literal")
        return f"Literal[{', '.join(values)}]"
    if base == "Optional" and len(args) == 1:
        return _union([_from_text(args[0], imports), "None"])
    if base == "Union":
        return _union([_from_text(arg, imports) for arg in args])
    if base == "Annotated" and args:
        return _from_text(args[0], imports)
    if name in GENERICS or (name in _KNOWN and _KNOWN[name][1].startswith("collections.")):
        outer = _from_text(node.value, imports)
        inner = [
            "..." if isinstance(a, ast.Constant) and a.value is Ellipsis else _from_text(a, imports)
            for a in args
        ]
        return f"{outer}[{', '.join(inner)}]"
    raise _UnknownError(name)


def _from_schema(schema: Any, defs: dict[str, Any], imports: set[str], *, depth: int) -> str:
    """An annotation for what a JSON Schema (pydantic's dialect) describes."""
    if not isinstance(schema, dict) or depth > 20:
        imports.add("typing.Any")
        return "Any"
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return _from_schema(defs.get(ref.removeprefix("#/$defs/")), defs, imports, depth=depth + 1)
    fedhub_type = _FEDHUB_TYPES.get(str(schema.get("x-fedhub-type")))
    if fedhub_type is not None:
        if fedhub_type[1]:
            imports.add(fedhub_type[1])
        return fedhub_type[0]
    if "const" in schema:
        schema = {**schema, "enum": [schema["const"]]}
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(_is_scalar(v) for v in enum):
        imports.add("typing.Literal")
        return f"Literal[{', '.join(literal(v) for v in enum)}]"
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return _union([_from_schema(o, defs, imports, depth=depth + 1) for o in options])
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and len(all_of) == 1:
        return _from_schema(all_of[0], defs, imports, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union(
            [_from_schema({**schema, "type": k}, defs, imports, depth=depth + 1) for k in kind]
        )
    if kind == "string":
        text, module = _STRING_FORMATS.get(str(schema.get("format")), ("str", ""))
        if module:
            imports.add(module)
        return text
    simple = {"integer": "int", "number": "float", "boolean": "bool", "null": "None"}
    if kind in simple:
        return simple[kind]
    if kind == "array":
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list) and prefix and schema.get("items") is None:
            items = [_from_schema(p, defs, imports, depth=depth + 1) for p in prefix]
            return f"tuple[{', '.join(items)}]"
        return f"list[{_from_schema(schema.get('items', {}), defs, imports, depth=depth + 1)}]"
    if kind == "object":
        extra = schema.get("additionalProperties")
        value = "Any"
        if isinstance(extra, dict) and not schema.get("properties"):
            value = _from_schema(extra, defs, imports, depth=depth + 1)
        imports.add("typing.Any")
        return f"dict[str, {value}]"
    imports.add("typing.Any")
    return "Any"


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | bool)
