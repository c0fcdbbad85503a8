"""Typed Python client modules generated from a module's info (``fedhub stub``).

:func:`generate_stub` turns the description a node serves for one module (see
``node.modules.FunctionSpec.info``) into the source of a plain Python module: one function
per remote function, one class per remote class, with the real parameter names, types,
defaults and docstrings. Each function calls ``client.call("<site>.<module>.<function>",
...)`` on the client passed as ``client=`` or on the module's default client
(``connect()``, made on first use from ``$FEDHUB_URL`` and ``$FEDHUB_IDENTITY``).

Types come from the signature text when every name in it is understood (builtins,
``typing`` forms, ``numpy.ndarray``, ``xarray.DataArray``/``Dataset``, ``datetime``), else
from the parameter's JSON Schema (an Enum becomes a ``Literal``, a pydantic model a
``dict[str, Any]``); reading them is :mod:`hub.stub_types`' job, writing the source this
module's. Defaults come from the JSON Schema; a default that cannot be written
as a literal of the parameter's type becomes ``_DEFAULT``, which is not sent, so the node
fills in its own default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hub.errors import ConfigError
from hub.stub_types import (
    ABC_NAMES,
    BUILTINS,
    GENERICS,
    Texts,
    annotation_of,
    literal,
    parse_signature,
)

__all__ = ["FLAVOURS", "generate_stub"]

#: The kinds of client module: blocking functions, or coroutines.
FLAVOURS = ("sync", "async")

#: Longest line the generator aims for (ruff's default line length).
_WIDTH = 88

#: Names the generated module defines or uses; remote names that collide get a ``_`` suffix.
_RESERVED = frozenset(
    {
        "MODULE",
        "SITE",
        "Any",
        "Literal",
        "Path",
        "Client",
        "SyncClient",
        "annotations",
        "hub",
        "atexit",
        "collections",
        "connect",
        "datetime",
        "numpy",
        "use",
        "xarray",
        *ABC_NAMES,
        # builtins the generated code itself uses
        *BUILTINS,
        *GENERICS.values(),
        "TypeError",
        "sorted",
    }
)


@dataclass
class _Param:
    name: str
    annotation: str
    default: str | None
    """Python source of the default, or ``None`` for a required parameter."""
    doc: str


@dataclass
class _Function:
    remote: str
    """The remote name: ``compute_sum`` or ``Station.describe``."""
    ctor: list[_Param] | None
    """The constructor's parameters for ``Class.method``; ``None`` for a plain function."""
    params: list[_Param]
    returns: str
    returns_doc: str
    info: dict[str, Any]


def generate_stub(
    info: dict[str, Any], *, site: str | None = None, node: str = "", flavour: str = "sync"
) -> str:
    """Return the source of a typed client module for one remote module.

    ``info`` is the module's info as its node serves it (``site``, ``module``,
    ``functions``, ``doc``, ``skipped``); ``site`` overrides ``info["site"]`` (a
    ``BackendModule.info()`` has none). ``node`` names the node the info came from.
    ``flavour``: ``"sync"`` (blocking functions on a :class:`hub.SyncClient`) or
    ``"async"`` (coroutines on a :class:`hub.Client`). The module imports only fedhub's
    public API (``hub.__all__``).
    """
    if flavour not in FLAVOURS:
        raise ConfigError(f"no stub flavour {flavour!r}", hint="sync or async")
    aio = flavour == "async"
    site = site or info.get("site")
    module = info.get("module")
    if not isinstance(site, str) or not isinstance(module, str):
        raise ConfigError("module info names no site or module; cannot generate a stub")
    functions = info.get("functions")
    if not isinstance(functions, dict):
        raise ConfigError(f"module info of {site}.{module} lists no functions")
    imports: set[str] = {"typing.Any"}
    plain: list[_Function] = []
    classes: dict[str, list[_Function]] = {}
    for remote, finfo in sorted(functions.items()):
        fn = _describe(remote, finfo, imports)
        if fn.ctor is not None:
            classes.setdefault(remote.partition(".")[0], []).append(fn)
        else:
            plain.append(fn)

    taken = set(_RESERVED)
    body: list[str] = []
    exported: list[str] = []
    for fn in plain:
        # a method whose signature could not be read becomes ``class_method``
        owner, dot, method = fn.remote.rpartition(".")
        name = _free_name(f"{owner.lower()}_{method}" if dot else fn.remote, taken)
        exported.append(name)
        body += ["", "", *_function_source(name, fn, site, module, aio)]
    for class_name, methods in sorted(classes.items()):
        name = _free_name(class_name, taken)
        exported.append(name)
        body += ["", "", *_class_source(name, methods, site, module, aio)]

    lines = _header(site, module, info, node, imports, aio)
    lines += ["", f"__all__ = {_list_text(sorted([*exported, 'connect', 'use']))}", ""]
    lines += [f"SITE = {literal(site)}", f"MODULE = {literal(module)}"]
    lines += (_RUNTIME_ASYNC if aio else _RUNTIME).splitlines()
    lines += body
    return "\n".join(lines).rstrip() + "\n"


# --- describing functions -------------------------------------------------------------


def _describe(remote: str, finfo: dict[str, Any], imports: set[str]) -> _Function:
    schema = finfo.get("arguments") or {}
    props: dict[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    defs = schema.get("$defs") or {}
    ctor_texts: Texts | None = None
    own_texts: Texts = [(n, None) for n in props]
    return_text: str | None = None
    parsed = parse_signature(str(finfo.get("signature", "")), remote)
    if parsed is not None:
        names = [n for n, _ in (parsed[0] or [])] + [n for n, _ in parsed[1]]
        if sorted(names) != sorted(props) or len(set(names)) != len(names):
            parsed = None  # unreadable: everything from the schema, keyword-only
    if parsed is not None:
        ctor_texts, own_texts, return_text = parsed

    def param(name: str, text: str | None) -> _Param:
        prop = props.get(name, {})
        annotation = annotation_of(text, prop, defs, imports)
        default: str | None = None
        if name not in required:
            default = _default_text(prop.get("default", _MISSING), annotation)
        return _Param(name, annotation, default, str(prop.get("description") or ""))

    returns_schema = finfo.get("returns") or {}
    returns = annotation_of(return_text, returns_schema, returns_schema.get("$defs") or {}, imports)
    ctor = None if ctor_texts is None else [param(n, t) for n, t in ctor_texts]
    if parsed is None and "." in remote:
        ctor = None  # a method without a readable signature becomes a flat function
    return _Function(
        remote=remote,
        ctor=ctor,
        params=[param(n, t) for n, t in own_texts],
        returns=returns,
        returns_doc=str(returns_schema.get("description") or ""),
        info=finfo,
    )


_MISSING = object()


def _default_text(value: Any, annotation: str) -> str:
    """Python source of a JSON default when it fits the annotation, else ``_DEFAULT``."""
    if value is _MISSING:
        return "_DEFAULT"
    fits = {
        type(None): ("None", "Any"),
        bool: ("bool", "Any"),
        int: ("int", "float", "Any"),
        float: ("float", "Any"),
        str: ("str", "Any"),
    }.get(type(value))
    if fits is None or (isinstance(value, float) and not math.isfinite(value)):
        return "_DEFAULT"
    text = literal(value)
    words = set(annotation.replace("[", " ").replace("]", " ").replace("|", " ").split())
    if words & set(fits) or (annotation.startswith("Literal[") and text in annotation):
        return text
    return "_DEFAULT"


# --- writing source -------------------------------------------------------------------


def _free_name(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _extra_name(base: str, params: list[_Param]) -> str:
    """``client``/``timeout``, with ``_`` appended while a remote parameter has the name."""
    names = {p.name for p in params}
    while base in names:
        base += "_"
    return base


def _param_source(p: _Param) -> str:
    text = f"{p.name}: {p.annotation}"
    return text if p.default is None else f"{text} = {p.default}"


def _def_lines(
    indent: str,
    name: str,
    params: list[str],
    returns: str,
    *,
    keyword_from: int | None,
    aio: bool = False,
) -> list[str]:
    """A ``def`` line, wrapped one parameter per line when it is too long."""
    items = list(params)
    if keyword_from is not None:
        items.insert(keyword_from, "*")
    define = "async def" if aio and name != "__init__" else "def"
    one = f"{indent}{define} {name}({', '.join(items)}) -> {returns}:"
    if len(one) <= _WIDTH:
        return [one]
    return [
        f"{indent}{define} {name}(",
        *(f"{indent}    {item}," for item in items),
        f"{indent}) -> {returns}:",
    ]


def _call_lines(indent: str, lead: str, args: list[str], entries: list[str]) -> list[str]:
    """``lead(args..., {entries})``, wrapped when it is too long."""
    dict_text = "{" + ", ".join(entries) + "}"
    one = f"{indent}{lead}({', '.join([*args, dict_text])})"
    if len(one) <= _WIDTH:
        return [one]
    inner = indent + "    "
    middle = f"{inner}{', '.join([*args, dict_text])}"
    if len(middle) <= _WIDTH:
        return [f"{indent}{lead}(", middle, f"{indent})"]
    lines = [f"{indent}{lead}(", *(f"{inner}{a}," for a in args), f"{inner}{{"]
    lines += [f"{inner}    {e}," for e in entries]
    return [*lines, f"{inner}}},", f"{indent})"]


def _call_and_return(
    indent: str, returns: str, args: list[str], entries: list[str], aio: bool = False
) -> list[str]:
    """The call, its result typed by a local annotation (no runtime cost), and the return."""
    call = "await _call" if aio else "_call"
    if returns == "None":
        return _call_lines(indent, call, args, entries)
    lines = _call_lines(indent, f"result: {returns} = {call}", args, entries)
    return [*lines, f"{indent}return result"]


def _docstring(indent: str, paragraphs: list[str]) -> list[str]:
    text = "\n\n".join(p.strip("\n") for p in paragraphs if p.strip())
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    lines = text.splitlines() or [""]
    out = [f'{indent}"""{lines[0]}']
    out += [f"{indent}{line}" if line.strip() else "" for line in lines[1:]]
    out.append(f'{indent}"""')
    return out


def _doc_paragraphs(fn: _Function, address: str, params: list[_Param]) -> list[str]:
    info = fn.info
    summary = str(info.get("summary") or "").strip() or f"Call ``{address}``."
    parts = [summary, str(info.get("description") or "")]
    if params:
        rows = ["Parameters", "----------"]
        for p in params:
            optional = ", optional" if p.default is not None else ""
            rows.append(f"{p.name} : {p.annotation}{optional}")
            if p.doc:
                rows += [f"    {line}" for line in p.doc.splitlines()]
        parts.append("\n".join(rows))
    if fn.returns != "None":
        rows = ["Returns", "-------", fn.returns]
        if fn.returns_doc:
            rows += [f"    {line}" for line in fn.returns_doc.splitlines()]
        parts.append("\n".join(rows))
    raises = info.get("raises") or {}
    if isinstance(raises, dict) and raises:
        rows = ["Raises", "------"]
        for exc, why in raises.items():
            rows += [str(exc), *(f"    {line}" for line in str(why).splitlines())]
        parts.append("\n".join(rows))
    parts.append(f"Runs remotely as ``{address}``.")
    return parts


def _function_source(name: str, fn: _Function, site: str, module: str, aio: bool) -> list[str]:
    params = fn.params
    client = _extra_name("client", params)
    timeout = _extra_name("timeout", params)
    sources = [_param_source(p) for p in params]
    extras = [f"{client}: {_client_type(aio)} | None = None", f"{timeout}: float | None = None"]
    # a method whose signature could not be read has constructor and method arguments
    # mixed (in schema order): keyword-only, so their order cannot matter
    keyword_from = 0 if "." in fn.remote else len(sources)
    lines = _def_lines(
        "", name, [*sources, *extras], fn.returns, keyword_from=keyword_from, aio=aio
    )
    address = f"{site}.{module}.{fn.remote}"
    lines += _docstring("    ", _doc_paragraphs(fn, address, params))
    entries = [f"{literal(p.name)}: {p.name}" for p in params]
    args = [literal(fn.remote), client, timeout]
    return lines + _call_and_return("    ", fn.returns, args, entries, aio)


def _client_type(aio: bool) -> str:
    return "Client" if aio else "SyncClient"


def _class_source(
    name: str, methods: list[_Function], site: str, module: str, aio: bool
) -> list[str]:
    ctor = methods[0].ctor or []
    class_name = methods[0].remote.partition(".")[0]
    lines = [f"class {name}:"]
    lines += _docstring(
        "    ",
        [
            f"Remote class ``{class_name}`` of ``{site}.{module}``.",
            "Every method call sends the constructor's arguments along and builds a fresh\n"
            "instance on the node; nothing is kept between calls.",
        ],
    )
    client = _extra_name("client", ctor)
    init = [_param_source(p) for p in ctor] + [f"{client}: {_client_type(aio)} | None = None"]
    lines += ["", *_def_lines("    ", "__init__", ["self", *init], "None", keyword_from=len(init))]
    mapping = ", ".join(f"{literal(p.name)}: {p.name}" for p in ctor)
    lines.append(f"        self._arguments: dict[str, Any] = {{{mapping}}}")
    lines.append(f"        self._client = {client}")
    taken = {"_arguments", "_client"}
    for fn in methods:
        method = _free_name(fn.remote.partition(".")[2], taken)
        timeout = _extra_name("timeout", fn.params)
        sources = ["self", *(_param_source(p) for p in fn.params)]
        sources.append(f"{timeout}: float | None = None")
        keyword_from = len(sources) - 1
        lines += [
            "",
            *_def_lines("    ", method, sources, fn.returns, keyword_from=keyword_from, aio=aio),
        ]
        address = f"{site}.{module}.{fn.remote}"
        lines += _docstring("        ", _doc_paragraphs(fn, address, fn.params))
        entries = ["**self._arguments", *(f"{literal(p.name)}: {p.name}" for p in fn.params)]
        args = [literal(fn.remote), "self._client", timeout]
        lines += _call_and_return("        ", fn.returns, args, entries, aio)
    return lines


def _list_text(names: list[str]) -> str:
    one = "[" + ", ".join(literal(n) for n in names) + "]"
    if len(one) + 10 <= _WIDTH:
        return one
    return "[\n" + "".join(f"    {literal(n)},\n" for n in names) + "]"


def _header(
    site: str, module: str, info: dict[str, Any], node: str, imports: set[str], aio: bool
) -> list[str]:
    doc = str(info.get("doc") or "").strip()
    source = f"the info of {node}" if node else "the module's info"
    wait = "await " if aio else ""
    paragraphs = [
        f"Typed {'asyncio ' if aio else ''}client of ``{site}.{module}``.",
        doc.splitlines()[0] if doc else "",
        f"Generated by ``fedhub stub {site}.{module}{' --async' if aio else ''}`` from "
        f"{source};\n"
        "regenerate it when the module changes. Each function calls the remote function of\n"
        "the same name and returns its result::\n\n"
        f"    import {module}_client as {module}\n\n"
        f"    {wait}{module}.connect()  # the defaults of the fedhub CLI, or pass them\n"
        f"    result = {wait}{module}.<function>(...)\n\n"
        "Without ``connect()`` the first call connects with those defaults. Pass\n"
        f"``client=`` (a ``{'await hub.aconnect' if aio else 'hub.connect'}(...)`` client) "
        "to use another\nconnection and ``timeout=`` (seconds) to bound one call.",
    ]
    skipped = info.get("skipped") or {}
    if isinstance(skipped, dict) and skipped:
        rows = [f"- ``{k}``: {v}" for k, v in sorted(skipped.items())]
        paragraphs.append("Not served by the node (so not here):\n\n" + "\n".join(rows))
    lines = _docstring("", paragraphs)
    lines += ["", "from __future__ import annotations", ""]
    stdlib = ["atexit"]
    if "datetime" in imports:
        stdlib.append("datetime")
    lines += [f"import {m}" for m in stdlib if not (aio and m == "atexit")]
    abc = sorted(i.rpartition(".")[2] for i in imports if i.startswith("collections.abc."))
    if abc:
        lines.append(f"from collections.abc import {', '.join(abc)}")
    lines.append("from pathlib import Path")
    typing_names = sorted(i.rpartition(".")[2] for i in imports if i.startswith("typing."))
    lines.append(f"from typing import {', '.join(typing_names)}")
    lines.append("")
    third = ["hub", *(m for m in ("numpy", "xarray") if m in imports)]
    lines += [f"import {m}" for m in third]
    lines.append(f"from hub import {_client_type(aio)}")
    return lines


_RUNTIME = '''

class _Default:
    """Marks an argument left out: the node uses the function's own default."""

    def __repr__(self) -> str:
        return "<node default>"


_DEFAULT: Any = _Default()
_client: SyncClient | None = None


def connect(
    url: str | None = None,
    identity: str | None = None,
    *,
    home: str | Path | None = None,
    passphrase: str | None = None,
    timeout: float = 300.0,
) -> SyncClient:
    """Connect this module's functions to the federation; returns the client.

    The defaults are the fedhub CLI's: ``url`` from ``$FEDHUB_URL`` (else a node
    running here, else ``nats://127.0.0.1:4222``), ``identity`` from
    ``$FEDHUB_IDENTITY`` (else the only person key in the key store), ``home`` (the
    key store) from ``$FEDHUB_HOME``; ``timeout`` is the default deadline of a call
    in seconds.
    """
    global _client
    client = hub.connect(
        url,
        identity,
        home=Path(home) if home is not None else None,
        passphrase=passphrase,
        default_timeout=timeout,
    )
    atexit.register(client.close)
    if _client is not None:
        _client.close()
    _client = client
    return client


def use(client: SyncClient | None) -> None:
    """Make ``client`` the default of this module's functions (``None`` forgets it)."""
    global _client
    _client = client


def _call(
    function: str,
    client: SyncClient | None,
    timeout: float | None,
    arguments: dict[str, Any],
) -> Any:
    sent = {k: v for k, v in arguments.items() if v is not _DEFAULT}
    clash = sorted(sent.keys() & {"timeout", "on_progress"})
    if clash:
        raise TypeError(
            f"{function}: hub.client cannot pass an argument named {clash[0]!r} yet "
            "(the name of one of its own call options)"
        )
    fed = client or _client or connect()
    return fed.call(f"{SITE}.{MODULE}.{function}", timeout=timeout, **sent)'''

_RUNTIME_ASYNC = '''

class _Default:
    """Marks an argument left out: the node uses the function's own default."""

    def __repr__(self) -> str:
        return "<node default>"


_DEFAULT: Any = _Default()
_client: Client | None = None


async def connect(
    url: str | None = None,
    identity: str | None = None,
    *,
    home: str | Path | None = None,
    passphrase: str | None = None,
    timeout: float = 300.0,
) -> Client:
    """Connect this module's functions to the federation; returns the client.

    The defaults are the fedhub CLI's: ``url`` from ``$FEDHUB_URL`` (else a node
    running here, else ``nats://127.0.0.1:4222``), ``identity`` from
    ``$FEDHUB_IDENTITY`` (else the only person key in the key store), ``home`` (the
    key store) from ``$FEDHUB_HOME``; ``timeout`` is the default deadline of a call
    in seconds.
    """
    global _client
    client = await hub.aconnect(
        url,
        identity,
        home=Path(home) if home is not None else None,
        passphrase=passphrase,
        default_timeout=timeout,
    )
    if _client is not None:
        await _client.aclose()
    _client = client
    return client


def use(client: Client | None) -> None:
    """Make ``client`` the default of this module's functions (``None`` forgets it)."""
    global _client
    _client = client


async def _call(
    function: str,
    client: Client | None,
    timeout: float | None,
    arguments: dict[str, Any],
) -> Any:
    sent = {k: v for k, v in arguments.items() if v is not _DEFAULT}
    clash = sorted(sent.keys() & {"timeout", "on_progress"})
    if clash:
        raise TypeError(
            f"{function}: hub.client cannot pass an argument named {clash[0]!r} yet "
            "(the name of one of its own call options)"
        )
    fed = client or _client or await connect()
    return await fed.call(f"{SITE}.{MODULE}.{function}", timeout=timeout, **sent)'''
