"""Backend modules: load a scientist's module and describe what becomes callable.

A backend module is a plain Python file or importable module. :func:`load_module` finds
what becomes callable (see docs/modules.md):

* every public function *defined in* the module (imported helpers are not exposed);
* every public method of every public class defined there, as ``Class.method``, whose
  arguments are the constructor's plus the method's — each call builds a fresh instance
  (DASF semantics, no state survives between calls);
* if the module defines ``__all__``, exactly the names it lists.

Each becomes a :class:`FunctionSpec` with a pydantic model of its arguments, a
:class:`~pydantic.TypeAdapter` of its return type, JSON Schemas (descriptions taken from the
numpy-style docstring), a signature text and a ``schema_hash``. Signatures that cannot be
described (``*args``, ``**kwargs``, positional-only parameters, types without a JSON
Schema, unresolvable annotations) are skipped with a ``runner.skipped`` warning and listed
in :meth:`BackendModule.info`. Running the functions is :mod:`node.runner`'s job.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import pydantic
import structlog
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.json_schema import PydanticJsonSchemaWarning

from hub.crypto import blake2b_256
from hub.errors import ConfigError, FunctionFailedError, ValidationError
from hub.progress import Progress
from hub.types import fedhub_type
from node.docstrings import Docstring, parse_docstring

__all__ = ["BackendModule", "FunctionSpec", "load_module", "one_line"]

log = structlog.get_logger(__name__)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_ERROR_TEXT = 500


class _UnsupportedError(Exception):
    """A callable whose signature cannot be modelled; the message is the reason."""


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True, eq=False)
class FunctionSpec:
    """One callable of a backend module, with its argument model and schemas."""

    name: str
    """Name callers use: ``compute_sum`` or ``Station.describe``."""
    qualified_name: str
    """``<module>.<name>``, used in messages and logs."""
    func: Callable[..., Any]
    """The function, or for a method the plain function defined on the class."""
    owner: type | None
    """The class for ``Class.method`` specs (a fresh instance per call), else ``None``."""
    is_async: bool
    args_model: type[BaseModel]
    return_adapter: TypeAdapter[Any]
    signature_text: str
    doc: Docstring
    takes_progress: str | None
    """Name of the parameter annotated :class:`~hub.progress.Progress`, if any."""
    constructor_params: tuple[str, ...] = ()
    return_text: str = "Any"
    schema_hash: str = ""
    _fields: dict[str, str] = field(default_factory=dict, repr=False)
    _arguments_schema: dict[str, Any] = field(default_factory=dict, repr=False)
    _return_schema: dict[str, Any] = field(default_factory=dict, repr=False)

    def arguments_schema(self) -> dict[str, Any]:
        """JSON Schema of the arguments object (a copy)."""
        return _copy_json(self._arguments_schema)

    def return_schema(self) -> dict[str, Any]:
        """JSON Schema of the return value (a copy)."""
        return _copy_json(self._return_schema)

    def validate_arguments(self, kwargs: Mapping[str, object]) -> dict[str, object]:
        """Validate ``kwargs`` and return them with defaults filled in and values converted.

        Raises :class:`~hub.errors.ValidationError` listing every bad field on one line.
        """
        if not isinstance(kwargs, Mapping):
            raise ValidationError(
                f"invalid arguments for {self.qualified_name}: expected a mapping of "
                f"names to values, got {type(kwargs).__name__}"
            )
        try:
            model = self.args_model.model_validate(dict(kwargs))
        except pydantic.ValidationError as exc:
            raise ValidationError(
                f"invalid arguments for {self.qualified_name}: {_describe_errors(exc)}",
                hint=f"expected {self.signature_text}",
            ) from exc
        return {param: getattr(model, name) for param, name in self._fields.items()}

    def validate_result(self, value: object) -> object:
        """Check ``value`` against the return annotation; return the validated value.

        Raises :class:`~hub.errors.FunctionFailedError` when the function broke its promise.
        """
        try:
            return self.return_adapter.validate_python(value)
        except pydantic.ValidationError as exc:
            raise FunctionFailedError(
                f"{self.qualified_name} returned {type(value).__name__}, declared "
                f"{self.return_text}: {_describe_errors(exc)}"
            ) from exc

    def invoke(self, kwargs: Mapping[str, object], progress: Progress | None) -> Any:
        """Call the function with validated ``kwargs`` (a coroutine for async functions)."""
        arguments = dict(kwargs)
        if self.owner is not None:
            init = {name: arguments.pop(name) for name in self.constructor_params}
            target = getattr(self.owner(**init), self.name.rpartition(".")[2])
        else:
            target = self.func
        if self.takes_progress is not None:
            arguments[self.takes_progress] = progress
        return target(**arguments)

    def info(self) -> dict[str, Any]:
        """JSON-able description: schemas, docstring parts, signature and schema hash."""
        return {
            "name": self.name,
            "qualified_name": self.qualified_name,
            "kind": "method" if self.owner is not None else "function",
            "is_async": self.is_async,
            "signature": self.signature_text,
            "summary": self.doc.summary,
            "description": self.doc.description,
            "raises": dict(self.doc.raises),
            "progress": self.takes_progress is not None,
            "arguments": self.arguments_schema(),
            "returns": self.return_schema(),
            "schema_hash": self.schema_hash,
        }


@dataclass(frozen=True, eq=False)
class BackendModule:
    """A loaded backend module: its callables and what was skipped, with reasons."""

    name: str
    spec: str
    """What :func:`load_module` was given (file paths made absolute); reloaded in workers."""
    module: types.ModuleType
    functions: dict[str, FunctionSpec]
    skipped: dict[str, str]
    doc: str = ""

    def code_hash(self) -> str | None:
        """BLAKE2b-256 (hex) of the module's code as loaded: its file, or for a package
        every ``.py`` file below it (relative path and bytes, in path order); None when
        it has no file (a built-in or namespace module)."""
        file = getattr(self.module, "__file__", None)
        if not file:
            return None
        path = Path(file)
        if path.name != "__init__.py":
            return blake2b_256(path.read_bytes()).hex()
        root = path.parent
        digest = b"".join(
            blake2b_256(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
            for f in sorted(root.rglob("*.py"))
        )
        return blake2b_256(digest).hex()

    def info(self) -> dict[str, Any]:
        """JSON-able description of the module and every function it serves."""
        return {
            "module": self.name,
            "doc": self.doc,
            "functions": {name: spec.info() for name, spec in sorted(self.functions.items())},
            "skipped": dict(sorted(self.skipped.items())),
        }


def load_module(spec: str, *, name: str | None = None, log_skipped: bool = True) -> BackendModule:
    """Load a backend module from a ``.py`` path or a dotted module name.

    ``name`` is the module's public name (default: the file stem or the last dotted part).
    Any loading problem raises :class:`~hub.errors.ConfigError` naming the module and cause.
    Skipped names are logged as ``runner.skipped`` unless ``log_skipped`` is false (a worker
    process loading the module again).
    """
    is_path = spec.endswith(".py") or "/" in spec or os.sep in spec
    if is_path:
        path = Path(spec).expanduser().resolve()
        public = name or path.stem
        _check_name(public, spec)
        module = _import_path(path, public)
        source = str(path)
    else:
        public = name or spec.rpartition(".")[2]
        _check_name(public, spec)
        module = _import_dotted(spec, public)
        source = spec
    functions, skipped = _collect(module, public)
    if log_skipped:
        for skipped_name, reason in skipped.items():
            log.warning("runner.skipped", module=public, name=skipped_name, reason=reason)
    doc = parse_docstring(module.__doc__)
    text = "\n\n".join(part for part in (doc.summary, doc.description) if part)
    return BackendModule(public, source, module, functions, skipped, text)


def _check_name(public: str, spec: str) -> None:
    if not _NAME.fullmatch(public):
        raise ConfigError(
            f"cannot load module {spec!r}: {public!r} is not a valid module name",
            hint="use letters, digits and underscores, or pass name=",
        )


def _import_path(path: Path, public: str) -> types.ModuleType:
    if not path.is_file():
        raise ConfigError(f"cannot load module {public!r}: file {path} not found")
    existing = sys.modules.get(public)
    if existing is not None:
        if getattr(existing, "__file__", None) == str(path):
            return existing
        raise ConfigError(
            f"cannot load module {public!r} from {path}: the name is taken by the already "
            f"imported module {existing.__name__!r}",
            hint="pass another name",
        )
    installed = importlib.util.find_spec(public)
    if installed is not None and installed.origin != str(path):
        raise ConfigError(
            f"cannot load module {public!r} from {path}: the name would shadow the installed "
            f"module at {installed.origin}",
            hint="pass another name",
        )
    import_spec = importlib.util.spec_from_file_location(public, path)
    if import_spec is None or import_spec.loader is None:
        raise ConfigError(f"cannot load module {public!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(import_spec)
    sys.modules[public] = module
    try:
        import_spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[public]
        if not isinstance(exc, Exception):
            raise
        raise ConfigError(f"cannot load module {public!r} from {path}: {one_line(exc)}") from exc
    return module


def _import_dotted(spec: str, public: str) -> types.ModuleType:
    try:
        return importlib.import_module(spec)
    except Exception as exc:
        raise ConfigError(f"cannot load module {public!r} ({spec}): {one_line(exc)}") from exc


# --------------------------------------------------------------------------- introspection


def _collect(
    module: types.ModuleType, public: str
) -> tuple[dict[str, FunctionSpec], dict[str, str]]:
    functions: dict[str, FunctionSpec] = {}
    skipped: dict[str, str] = {}
    listed = getattr(module, "__all__", None)
    if listed is not None:
        names = [str(n) for n in listed]
    else:
        names = [n for n in vars(module) if not n.startswith("_")]
    for attr in names:
        obj = getattr(module, attr, None)
        defined_here = getattr(obj, "__module__", None) == module.__name__
        if listed is None and not defined_here:
            continue
        if inspect.isclass(obj):
            _collect_class(obj, public, module.__name__, functions, skipped, listed is not None)
        elif inspect.isroutine(obj):
            try:
                functions[attr] = _build_spec(public, attr, obj, owner=None)
            except _UnsupportedError as exc:
                skipped[attr] = str(exc)
        elif listed is not None:
            skipped[attr] = "listed in __all__ but not a function or class"
    return functions, skipped


def _collect_class(
    cls: type,
    public: str,
    module_name: str,
    functions: dict[str, FunctionSpec],
    skipped: dict[str, str],
    explicit: bool,
) -> None:
    if issubclass(cls, Enum | BaseException):
        if explicit:
            skipped[cls.__name__] = "enums and exceptions are types, not services"
        return
    for attr in sorted(dir(cls)):
        if attr.startswith("_"):
            continue
        owner = next((k for k in cls.__mro__ if attr in vars(k)), None)
        if owner is None or owner.__module__ != module_name:
            continue
        static = inspect.getattr_static(cls, attr)
        name = f"{cls.__name__}.{attr}"
        if isinstance(static, staticmethod | classmethod):
            skipped[name] = "static and class methods are not exposed"
            continue
        if not inspect.isfunction(static):
            continue
        try:
            functions[name] = _build_spec(public, name, static, owner=cls)
        except _UnsupportedError as exc:
            skipped[name] = str(exc)


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj, include_extras=True)
    except Exception as exc:
        raise _UnsupportedError(f"cannot resolve type annotations: {one_line(exc)}") from exc


def _signature(obj: Any) -> inspect.Signature:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError) as exc:
        raise _UnsupportedError(f"no inspectable signature: {one_line(exc)}") from exc


def _is_progress(hint: Any) -> bool:
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if hint is Progress:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return len(args) == 1 and _is_progress(args[0])
    return False


def _check_kind(param: inspect.Parameter, where: str) -> None:
    if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
        star = "*" if param.kind is param.VAR_POSITIONAL else "**"
        raise _UnsupportedError(
            f"{where}{star}{param.name} cannot be described by a schema (name every argument)"
        )
    if param.kind is param.POSITIONAL_ONLY:
        raise _UnsupportedError(f"{where}positional-only parameter {param.name!r}")


def _build_spec(public: str, name: str, func: Any, *, owner: type | None) -> FunctionSpec:
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise _UnsupportedError("generator functions are not supported (return a value)")
    params: list[tuple[inspect.Parameter, Any]] = []
    ctor_params: list[inspect.Parameter] = []
    doc = parse_docstring(inspect.getdoc(func))
    if owner is not None:
        init = inspect.getattr_static(owner, "__init__")
        init_hints = _hints(init) if inspect.isfunction(init) else {}
        for param in _signature(owner).parameters.values():
            _check_kind(param, "constructor: ")
            hint = init_hints.get(param.name, Any)
            if _is_progress(hint):
                raise _UnsupportedError("a constructor cannot take a Progress parameter")
            params.append((param, hint))
            ctor_params.append(param)
        class_doc = parse_docstring(inspect.getdoc(owner))
        doc = Docstring(
            summary=doc.summary or class_doc.summary,
            description=doc.description,
            params={**class_doc.params, **doc.params},
            returns=doc.returns,
            raises=doc.raises,
        )
    hints = _hints(func)
    signature = _signature(func)
    method_params = list(signature.parameters.values())
    if owner is not None:
        method_params = method_params[1:]  # self
    progress_name: str | None = None
    own_params: list[inspect.Parameter] = []
    for param in method_params:
        _check_kind(param, "")
        hint = hints.get(param.name, Any)
        if _is_progress(hint):
            if progress_name is not None:
                raise _UnsupportedError("more than one Progress parameter")
            progress_name = param.name
            continue
        if any(p.name == param.name for p, _ in params):
            raise _UnsupportedError(
                f"parameter {param.name!r} is both a constructor and a method argument"
            )
        params.append((param, hint))
        own_params.append(param)

    qualified = f"{public}.{name}"
    model, fields = _arguments_model(qualified, params, doc)
    return_hint = hints.get("return", Any)
    if signature.return_annotation is inspect.Signature.empty:
        return_hint = Any
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(fedhub_type(return_hint))
        return_schema = _json_schema(lambda: adapter.json_schema(mode="serialization"))
    except Exception as exc:
        raise _UnsupportedError(f"return type has no JSON Schema: {one_line(exc)}") from exc
    if doc.returns:
        return_schema.setdefault("description", doc.returns)
    try:
        arguments_schema = _json_schema(model.model_json_schema)
    except Exception as exc:
        raise _UnsupportedError(_culprit(qualified, params, exc)) from exc

    return_text = _annotation_text(signature.return_annotation)
    text = _signature_text(name, ctor_params, own_params, signature.return_annotation, owner)
    if inspect.iscoroutinefunction(func):
        text = f"async {text}"
    canonical = json.dumps(
        {"arguments": arguments_schema, "returns": return_schema},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return FunctionSpec(
        name=name,
        qualified_name=qualified,
        func=func,
        owner=owner,
        is_async=inspect.iscoroutinefunction(func),
        args_model=model,
        return_adapter=adapter,
        signature_text=text,
        doc=doc,
        takes_progress=progress_name,
        constructor_params=tuple(p.name for p in ctor_params),
        return_text=return_text,
        schema_hash=hashlib.blake2b(canonical.encode(), digest_size=32).hexdigest(),
        _fields=fields,
        _arguments_schema=arguments_schema,
        _return_schema=return_schema,
    )


def _arguments_model(
    qualified: str, params: list[tuple[inspect.Parameter, Any]], doc: Docstring
) -> tuple[type[BaseModel], dict[str, str]]:
    """Build the arguments model; returns it and ``{parameter: model field}``."""
    taken = {param.name for param, _ in params}
    definitions: dict[str, Any] = {}
    fields: dict[str, str] = {}
    for index, (param, hint) in enumerate(params):
        field_name = param.name
        extra: dict[str, Any] = {}
        if _reserved(param.name):
            field_name = f"arg{index}"
            while field_name in taken:
                field_name += "_"
            extra["alias"] = param.name
        default = ... if param.default is inspect.Parameter.empty else param.default
        description = doc.params.get(param.name) or None
        definitions[field_name] = (
            fedhub_type(hint),
            Field(default, description=description, **extra),
        )
        fields[param.name] = field_name
    summary = "\n\n".join(part for part in (doc.summary, doc.description) if part)
    try:
        model = pydantic.create_model(
            re.sub(r"\W", "_", qualified) + "_arguments",
            __config__=ConfigDict(
                extra="forbid",
                arbitrary_types_allowed=True,
                protected_namespaces=(),
                title=f"{qualified} arguments",
            ),
            __doc__=summary or None,
            **definitions,
        )
    except Exception as exc:
        raise _UnsupportedError(_culprit(qualified, params, exc)) from exc
    return model, fields


def _reserved(name: str) -> bool:
    return name.startswith(("_", "model_")) or hasattr(BaseModel, name)


def _culprit(qualified: str, params: list[tuple[inspect.Parameter, Any]], exc: Exception) -> str:
    """Name the first parameter whose type pydantic cannot describe."""
    for param, hint in params:
        try:
            probe = pydantic.create_model(
                "probe",
                __config__=ConfigDict(arbitrary_types_allowed=True, protected_namespaces=()),
                value=(fedhub_type(hint), ...),
            )
            _json_schema(probe.model_json_schema)
        except Exception as inner:
            return f"parameter {param.name!r} has no JSON Schema: {one_line(inner)}"
    return f"arguments of {qualified} have no JSON Schema: {one_line(exc)}"


def _json_schema(build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PydanticJsonSchemaWarning)
        return build()


def _annotation_text(annotation: Any) -> str:
    if annotation is inspect.Signature.empty:
        return "Any"
    if isinstance(annotation, str):
        return annotation
    return inspect.formatannotation(annotation)


def _param_text(param: inspect.Parameter) -> str:
    text = param.name
    if param.annotation is not param.empty:
        text += f": {_annotation_text(param.annotation)}"
        if param.default is not param.empty:
            text += f" = {param.default!r}"
    elif param.default is not param.empty:
        text += f"={param.default!r}"
    return text


def _signature_text(
    name: str,
    ctor: list[inspect.Parameter],
    own: list[inspect.Parameter],
    returns: Any,
    owner: type | None,
) -> str:
    call = f"{name.rpartition('.')[2]}({', '.join(_param_text(p) for p in own)})"
    if owner is not None:
        call = f"{owner.__name__}({', '.join(_param_text(p) for p in ctor)}).{call}"
    return f"{call} -> {_annotation_text(returns)}"


def _describe_errors(exc: pydantic.ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in error["loc"]) or "(value)"
        text = f"{loc}: {error['msg']}"
        if error["type"] not in ("missing", "extra_forbidden"):
            text += f" (got {type(error['input']).__name__})"
        parts.append(text)
    return "; ".join(parts)


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, cut at 500 characters: for error messages."""
    text = " ".join(str(exc).split())
    if len(text) > _MAX_ERROR_TEXT:
        text = text[: _MAX_ERROR_TEXT - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _copy_json(value: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(value))
    return copied
