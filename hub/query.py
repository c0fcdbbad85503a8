"""Searching requests: query objects combined with ``&``, ``|`` and ``~``, as JSON and as text.

::

    from hub.query import F, Tag

    q = Tag("calibrated") & (F.module == "climate") & ~(F.state == "failed")
    q = q | (F.size > 10_000_000)
    saved = q.to_json()                  # {"or": [{"and": [...]}, {...}]}: store it anywhere
    again = Query.from_json(saved)       # the same query
    text = str(q)                        # tag:calibrated AND module:climate AND NOT ...
    Query.parse(text) == q               # the command line takes the text form

The text form: terms joined by ``AND``, ``OR`` and ``NOT`` (that precedence: NOT binds
tightest, then AND, then OR; terms side by side mean AND), parentheses, and terms
``field:value`` (equal), ``field>value``, ``field>=value``, ``field<value``,
``field<=value``, ``field!=value``, or a bare word (a tag). Values with spaces are quoted
(``"..."``). Fields: :data:`FIELDS`. A node evaluates a query on each of the asker's
requests (:meth:`Query.matches`); a tag matches the asker's tags of it (the owner's own
tags, or the shared tags of a result shared with them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from hub.answers import RequestRecord
from hub.errors import ValidationError

__all__ = [
    "FIELDS",
    "AllOf",
    "AnyOf",
    "F",
    "Field",
    "Not",
    "Query",
    "Tag",
    "Term",
    "parse",
    "record_fields",
]

#: The fields a query can name, and what they are: text, number or flag.
FIELDS: Final[Mapping[str, str]] = {
    "site": "text",
    "request_id": "text",
    "caller": "text",
    "address": "text",
    "module": "text",
    "function": "text",
    "state": "text",
    "code": "text",
    "received": "text",
    "updated": "text",
    "size": "number",
    "kept": "flag",
    "shared": "flag",
}
_OPS: Final[Mapping[str, Callable[[Any, Any], bool]]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and a > b,
    "ge": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b,
    "le": lambda a, b: a is not None and a <= b,
}
_SYMBOL: Final = {"eq": ":", "ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MAX_DEPTH = 32
_MAX_TERMS = 200


class Query:
    """A condition on a request record; combine with ``&``, ``|`` and ``~``."""

    def __and__(self, other: Query) -> Query:
        return AllOf((*_parts(self, AllOf), *_parts(other, AllOf)))

    def __or__(self, other: Query) -> Query:
        return AnyOf((*_parts(self, AnyOf), *_parts(other, AnyOf)))

    def __invert__(self) -> Query:
        return self.inner if isinstance(self, Not) else Not(self)

    def matches(self, record: Mapping[str, Any], tags: frozenset[str] = frozenset()) -> bool:
        """Whether a record (the fields of :data:`FIELDS`) with the asker's ``tags``
        matches."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """The JSON form (a search saved and used again with :meth:`from_json`)."""
        raise NotImplementedError

    @classmethod
    def from_json(cls, value: object) -> Query:
        """A query from its JSON form; ValidationError when it is not one."""
        return _from_json(value, 0, [0])

    @classmethod
    def parse(cls, text: str) -> Query:
        """A query from its text form; ValidationError naming what is wrong."""
        return parse(text)

    def dumps(self) -> str:
        """The JSON form as text."""
        return json.dumps(self.to_json(), sort_keys=True)


def _parts(q: Query, kind: type[Query]) -> tuple[Query, ...]:
    return q.items if isinstance(q, AllOf | AnyOf) and isinstance(q, kind) else (q,)


@dataclass(frozen=True)
class Tag(Query):
    """The asker has tagged the request ``name``."""

    name: str

    def __post_init__(self) -> None:
        if not _TAG.match(self.name):
            raise ValidationError(f"{self.name!r} is no tag (letters, digits, _ . -; at most 64)")

    def matches(self, record: Mapping[str, Any], tags: frozenset[str] = frozenset()) -> bool:
        return self.name in tags

    def to_json(self) -> dict[str, Any]:
        return {"tag": self.name}

    def __str__(self) -> str:
        return f"tag:{self.name}"


@dataclass(frozen=True)
class Term(Query):
    """``field op value``: equal, not equal, or an order (numbers and times)."""

    field: str
    op: str
    value: str | int | bool

    def __post_init__(self) -> None:
        kind = FIELDS.get(self.field)
        if kind is None:
            raise ValidationError(f"{self.field!r} is no field (use {', '.join(FIELDS)})")
        if self.op not in _OPS:
            raise ValidationError(f"{self.op!r} is no comparison")
        want = {"text": str, "number": int, "flag": bool}[kind]
        if type(self.value) is not want:
            raise ValidationError(f"{self.field} compares with a {kind}, not {self.value!r}")

    def matches(self, record: Mapping[str, Any], tags: frozenset[str] = frozenset()) -> bool:
        return bool(_OPS[self.op](record.get(self.field), self.value))

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "op": self.op, "value": self.value}

    def __str__(self) -> str:
        value = self.value
        text = str(value).lower() if isinstance(value, bool) else str(value)
        if not re.fullmatch(r"[A-Za-z0-9_.:@/+-]+", text) or text.upper() in _WORDS:
            text = json.dumps(text)
        return f"{self.field}{_SYMBOL[self.op]}{text}"


class Field:
    """``F.module == "climate"``, ``F.size > 1000``: terms built with Python operators."""

    def __init__(self, name: str) -> None:
        if name not in FIELDS:
            raise ValidationError(f"{name!r} is no field (use {', '.join(FIELDS)})")
        self.name = name

    def __eq__(self, value: object) -> Term:  # type: ignore[override]
        return Term(self.name, "eq", _value(value))

    def __ne__(self, value: object) -> Term:  # type: ignore[override]
        return Term(self.name, "ne", _value(value))

    def __gt__(self, value: object) -> Term:
        return Term(self.name, "gt", _value(value))

    def __ge__(self, value: object) -> Term:
        return Term(self.name, "ge", _value(value))

    def __lt__(self, value: object) -> Term:
        return Term(self.name, "lt", _value(value))

    def __le__(self, value: object) -> Term:
        return Term(self.name, "le", _value(value))

    __hash__ = None  # type: ignore[assignment]


class _Fields:
    """``F.<field>``: a :class:`Field` by attribute."""

    def __getattr__(self, name: str) -> Field:
        return Field(name)


#: ``F.module == "climate"`` and so on.
F: Final = _Fields()


def _value(value: object) -> str | int | bool:
    if isinstance(value, bool | int | str):
        return value
    raise ValidationError(f"a query compares with text, integers or flags, not {value!r}")


@dataclass(frozen=True)
class AllOf(Query):
    """Every part matches (``&``, ``AND``)."""

    items: tuple[Query, ...]

    def matches(self, record: Mapping[str, Any], tags: frozenset[str] = frozenset()) -> bool:
        return all(q.matches(record, tags) for q in self.items)

    def to_json(self) -> dict[str, Any]:
        return {"and": [q.to_json() for q in self.items]}

    def __str__(self) -> str:
        return " AND ".join(_wrap(q, AnyOf) for q in self.items)


@dataclass(frozen=True)
class AnyOf(Query):
    """At least one part matches (``|``, ``OR``)."""

    items: tuple[Query, ...]

    def matches(self, record: Mapping[str, Any], tags: frozenset[str] = frozenset()) -> bool:
        return any(q.matches(record, tags) for q in self.items)

    def to_json(self) -> dict[str, Any]:
        return {"or": [q.to_json() for q in self.items]}

    def __str__(self) -> str:
        return " OR ".join(str(q) for q in self.items)


@dataclass(frozen=True)
class Not(Query):
    """The part does not match (``~``, ``NOT``)."""

    inner: Query

    def matches(self, record: Mapping[str, Any], tags: frozenset[str] = frozenset()) -> bool:
        return not self.inner.matches(record, tags)

    def to_json(self) -> dict[str, Any]:
        return {"not": self.inner.to_json()}

    def __str__(self) -> str:
        return "NOT " + _wrap(self.inner, AllOf, AnyOf)


def _wrap(q: Query, *kinds: type[Query]) -> str:
    return f"({q})" if isinstance(q, kinds) else str(q)


# --- JSON -------------------------------------------------------------------------------


def _from_json(value: object, depth: int, count: list[int]) -> Query:
    count[0] += 1
    if depth > _MAX_DEPTH or count[0] > _MAX_TERMS:
        raise ValidationError(f"a query has at most {_MAX_TERMS} parts, {_MAX_DEPTH} deep")
    if not isinstance(value, dict) or len(value) not in (1, 3):
        raise ValidationError(f"not a query: {value!r:.80}")
    if len(value) == 3 and set(value) == {"field", "op", "value"}:
        return Term(str(value["field"]), str(value["op"]), value["value"])
    ((key, inner),) = value.items()
    if key == "tag" and isinstance(inner, str):
        return Tag(inner)
    if key == "not":
        return Not(_from_json(inner, depth + 1, count))
    if key in ("and", "or") and isinstance(inner, list) and inner:
        items = tuple(_from_json(v, depth + 1, count) for v in inner)
        return AllOf(items) if key == "and" else AnyOf(items)
    raise ValidationError(f"not a query: {value!r:.80}")


# --- text -------------------------------------------------------------------------------

_WORDS: Final = frozenset({"AND", "OR", "NOT"})
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<paren>[()])
      | (?P<term>(?P<field>[a-z_]+)(?P<op>:|!=|>=|<=|>|<)(?P<value>"(?:[^"\\]|\\.)*"|[^\s()]+))
      | (?P<word>[^\s()"]+)
    )""",
    re.VERBOSE,
)
_TEXT_OPS: Final = {":": "eq", "!=": "ne", ">": "gt", ">=": "ge", "<": "lt", "<=": "le"}


def parse(text: str) -> Query:
    """The query a text form says (see the module docstring)."""
    tokens: list[tuple[str, Any]] = []
    at = 0
    text = text.strip()
    while at < len(text):
        m = _TOKEN.match(text, at)
        if m is None or m.end() == at:
            raise ValidationError(f"cannot read the query at {text[at : at + 20]!r}")
        at = m.end()
        if m.group("paren"):
            tokens.append((m.group("paren"), None))
        elif m.group("term"):
            tokens.append(("term", _term(m.group("field"), m.group("op"), m.group("value"))))
        else:
            word = m.group("word")
            tokens.append((word, None) if word in _WORDS else ("term", Tag(word)))
    if not tokens:
        raise ValidationError("an empty query")
    if len(tokens) > _MAX_TERMS:
        raise ValidationError(f"a query has at most {_MAX_TERMS} parts")
    parser = _Parser(tokens)
    q = parser.either(0)
    if parser.at < len(tokens):
        raise ValidationError(f"unexpected {tokens[parser.at][0]!r} in the query")
    return q


def _term(field: str, op: str, raw: str) -> Query:
    value: str | int | bool = json.loads(raw) if raw.startswith('"') else raw
    if field == "tag":
        if op != ":":
            raise ValidationError("a tag is matched with tag:NAME")
        return Tag(str(value))
    kind = FIELDS.get(field)
    if kind == "number":
        try:
            value = int(str(value))
        except ValueError as exc:
            raise ValidationError(f"{field} compares with an integer, not {raw}") from exc
    elif kind == "flag":
        if str(value).lower() not in ("true", "false", "yes", "no"):
            raise ValidationError(f"{field} is true or false, not {raw}")
        value = str(value).lower() in ("true", "yes")
    return Term(field, _TEXT_OPS[op], value)


class _Parser:
    """Recursive descent: either := both (OR both)*; both := one (AND? one)*;
    one := NOT one | ( either ) | term."""

    def __init__(self, tokens: list[tuple[str, Any]]) -> None:
        self.tokens = tokens
        self.at = 0

    def _peek(self) -> str | None:
        return self.tokens[self.at][0] if self.at < len(self.tokens) else None

    def either(self, depth: int) -> Query:
        q = self.both(depth)
        while self._peek() == "OR":
            self.at += 1
            q = q | self.both(depth)
        return q

    def both(self, depth: int) -> Query:
        q = self.one(depth)
        while self._peek() not in (None, "OR", ")"):
            if self._peek() == "AND":
                self.at += 1
            q = q & self.one(depth)
        return q

    def one(self, depth: int) -> Query:
        if depth > _MAX_DEPTH:
            raise ValidationError(f"a query nests at most {_MAX_DEPTH} deep")
        kind = self._peek()
        if kind is None:
            raise ValidationError("the query ends too early")
        self.at += 1
        if kind == "NOT":
            return ~self.one(depth + 1)
        if kind == "(":
            q = self.either(depth + 1)
            if self._peek() != ")":
                raise ValidationError("a ( without its )")
            self.at += 1
            return q
        if kind == "term":
            term: Query = self.tokens[self.at - 1][1]
            return term
        raise ValidationError(f"unexpected {kind!r} in the query")


def record_fields(record: RequestRecord) -> dict[str, Any]:
    """The fields of :data:`FIELDS` of a catalog record, as :meth:`Query.matches` reads them."""
    return {
        "site": record.site,
        "request_id": record.request_id,
        "caller": record.caller,
        "address": record.address,
        "module": record.module,
        "function": record.function,
        "state": record.state.value,
        "code": record.code,
        "received": record.received_time,
        "updated": record.updated_time,
        "size": record.result_size,
        "kept": record.kept,
        "shared": record.shared_with_me,
    }
