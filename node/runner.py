"""Backend runner: load a scientist's module, describe its functions, run them safely.

A backend module is a plain Python file or importable module. :func:`load_module` finds
what becomes callable (see docs/modules.md):

* every public function *defined in* the module (imported helpers are not exposed);
* every public method of every public class defined there, as ``Class.method``, whose
  arguments are the constructor's plus the method's — each call builds a fresh instance
  (DASF semantics, no state survives between calls);
* if the module defines ``__all__``, exactly the names it lists.

Each becomes a :class:`FunctionSpec` with a pydantic model of its arguments, a
:class:`~pydantic.TypeAdapter` of its return type, JSON Schemas (descriptions taken from the
numpy-style docstring) and a ``schema_hash``. Signatures that cannot be described
(``*args``, ``**kwargs``, positional-only parameters, types without a JSON Schema,
unresolvable annotations) are skipped with a ``runner.skipped`` warning and listed in
:meth:`BackendModule.info`.

:class:`Runner` executes calls: async functions on the event loop, sync ones in a per-module
thread pool (default) or in worker processes (``ModuleConfig(executor="process")``), with a
per-module concurrency limit, a bounded waiting queue, per-call timeouts, cancellation and
progress. Threads cannot be killed: on timeout or cancellation the function's
:class:`~hub.progress.Progress` is marked cancelled so cooperative functions stop, and the
thread's slot stays taken until it returns. Worker processes can: a timed-out or cancelled
call's process is killed and replaced. Each process worker is a one-process
``ProcessPoolExecutor`` started from the ``forkserver`` context (``spawn`` where forkserver is
unavailable), never ``fork``, since the node is a multi-threaded asyncio program; the child
loads the module again from its file path or dotted name, so only names and argument values
cross the process boundary. A crashed worker (``os._exit``, segfault) fails its call with
:class:`~hub.errors.FunctionFailedError` and is replaced; the runner keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import importlib
import importlib.util
import inspect
import itertools
import json
import multiprocessing
import os
import re
import signal
import sys
import threading
import traceback
import types
import typing
import warnings
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import pydantic
import structlog
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.json_schema import PydanticJsonSchemaWarning

from hub.errors import (
    CallCancelledError,
    CallTimeoutError,
    ConfigError,
    FunctionFailedError,
    NodeError,
    UnknownFunctionError,
    ValidationError,
)
from hub.progress import Progress
from hub.types import fedhub_type
from node.docstrings import Docstring, parse_docstring

if typing.TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext

__all__ = [
    "BackendModule",
    "CancelSignal",
    "FunctionSpec",
    "ModuleConfig",
    "ProgressCallback",
    "Runner",
    "load_module",
]

log = structlog.get_logger(__name__)

#: Receives ``(fraction, message)`` on the event loop while a call runs.
ProgressCallback = Callable[[float | None, str], None]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_ERROR_TEXT = 500
#: How long a finished process call waits for its last progress reports to arrive.
_PROGRESS_DRAIN_SECONDS = 5.0
#: How long a cancelled async function gets to finish its cleanup.
_ASYNC_CANCEL_GRACE_SECONDS = 1.0


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

    def info(self) -> dict[str, Any]:
        """JSON-able description of the module and every function it serves."""
        return {
            "module": self.name,
            "doc": self.doc,
            "functions": {name: spec.info() for name, spec in sorted(self.functions.items())},
            "skipped": dict(sorted(self.skipped.items())),
        }


def load_module(spec: str, *, name: str | None = None) -> BackendModule:
    """Load a backend module from a ``.py`` path or a dotted module name.

    ``name`` is the module's public name (default: the file stem or the last dotted part).
    Any loading problem raises :class:`~hub.errors.ConfigError` naming the module and cause.
    """
    return _load_module(spec, name=name, log_skipped=True)


def _load_module(spec: str, *, name: str | None, log_skipped: bool) -> BackendModule:
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
        raise ConfigError(f"cannot load module {public!r} from {path}: {_one_line(exc)}") from exc
    return module


def _import_dotted(spec: str, public: str) -> types.ModuleType:
    try:
        return importlib.import_module(spec)
    except Exception as exc:
        raise ConfigError(f"cannot load module {public!r} ({spec}): {_one_line(exc)}") from exc


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
        raise _UnsupportedError(f"cannot resolve type annotations: {_one_line(exc)}") from exc


def _signature(obj: Any) -> inspect.Signature:
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError) as exc:
        raise _UnsupportedError(f"no inspectable signature: {_one_line(exc)}") from exc


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
        raise _UnsupportedError(f"return type has no JSON Schema: {_one_line(exc)}") from exc
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
            return f"parameter {param.name!r} has no JSON Schema: {_one_line(inner)}"
    return f"arguments of {qualified} have no JSON Schema: {_one_line(exc)}"


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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > _MAX_ERROR_TEXT:
        text = text[: _MAX_ERROR_TEXT - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _copy_json(value: dict[str, Any]) -> dict[str, Any]:
    copied: dict[str, Any] = json.loads(json.dumps(value))
    return copied


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ModuleConfig:
    """How the runner executes one module's functions."""

    executor: Literal["thread", "process", "inline"] = "thread"
    """``thread`` (default), ``process`` (isolated, killable, a crash cannot take the
    node down; arguments and results are pickled) or ``inline``: sync functions run on the
    node's event loop itself, for functions that take well under a millisecond (no thread
    hop; but while one runs the node does nothing else, and a timeout or cancel can only
    be noticed after it returns)."""
    max_workers: int = 4
    """Threads, or worker processes, for sync functions."""
    max_concurrent: int | None = None
    """Calls running at once (default ``max_workers``; in process mode at most that)."""
    max_queue: int = 32
    """Calls allowed to wait for a free slot; one more is refused as busy."""
    progress_interval: float = 0.05
    """Shortest time between two progress reports delivered (20 per second)."""

    def __post_init__(self) -> None:
        if self.executor not in ("thread", "process", "inline"):
            raise ConfigError(
                f"executor must be 'thread', 'process' or 'inline', not {self.executor!r}"
            )
        if self.max_workers < 1:
            raise ConfigError(f"max_workers must be at least 1, not {self.max_workers}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be at least 1, not {self.max_concurrent}")
        if self.max_queue < 0:
            raise ConfigError(f"max_queue must not be negative, not {self.max_queue}")

    @property
    def concurrency(self) -> int:
        """The effective number of calls that may run at once."""
        limit = self.max_concurrent or self.max_workers
        if self.executor == "process":
            limit = min(limit, self.max_workers)
        return limit


# --------------------------------------------------------------------------- runner


class _Lease:
    """One taken concurrency slot; released exactly once, possibly later."""

    def __init__(self, state: _ModuleState) -> None:
        self._state = state
        self._released = False
        self.deferred = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._state.in_flight -= 1
            self._state.semaphore.release()


class _Relay:
    """Forwards progress reports of one call to its callback on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: ProgressCallback | None) -> None:
        self._loop = loop
        self._callback = callback
        self._loop_thread = threading.get_ident()
        self.open = True
        self.done = asyncio.Event()

    def on_loop(self, fraction: float | None, message: str) -> None:
        if not self.open or self._callback is None:
            return
        try:
            self._callback(fraction, message)
        except Exception:
            log.warning("runner.progress_callback_failed", exc_info=True)

    def from_any_thread(self, fraction: float | None, message: str) -> None:
        if threading.get_ident() == self._loop_thread:
            self.on_loop(fraction, message)
            return
        with contextlib.suppress(RuntimeError):  # loop closed: nobody is listening
            self._loop.call_soon_threadsafe(self.on_loop, fraction, message)


class _WorkerSlot:
    """One worker process (a one-process pool) plus the pipe its progress comes back on."""

    def __init__(self, executor: ProcessPoolExecutor, pid: int, conn: Connection) -> None:
        self.executor = executor
        self.pid = pid
        self.calls: dict[int, _Relay] = {}
        self._stop = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._read, args=(conn,), name=f"fedhub-worker-{pid}", daemon=True
        )
        self._thread.start()

    def _read(self, conn: Connection) -> None:
        try:
            while not self._stop.is_set():
                if conn.poll(0.1):
                    item = conn.recv()
                    self._loop.call_soon_threadsafe(self._dispatch, item)
        except Exception:  # worker gone, pipe broken or loop closed: stop reading
            return
        finally:
            conn.close()

    def _dispatch(self, item: tuple[Any, ...]) -> None:
        relay = self.calls.get(item[0])
        if relay is None:
            return
        if item[1] == "progress":
            relay.on_loop(item[2], item[3])
        elif item[1] == "done":
            relay.done.set()

    def discard(self, *, kill: bool) -> None:
        """Stop reading; kill the process if asked; let the pool go."""
        self._stop.set()
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        self.executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Shut the worker down cleanly, waiting for it (blocking; use a thread)."""
        self.executor.shutdown(wait=True, cancel_futures=True)
        self._stop.set()
        self._thread.join(timeout=1.0)


class _ModuleState:
    def __init__(self, module: BackendModule, config: ModuleConfig) -> None:
        self.module = module
        self.config = config
        self.semaphore = asyncio.Semaphore(config.concurrency)
        self.in_flight = 0
        self.queued = 0
        self.completed = 0
        self.failed = 0
        self.timed_out = 0
        self.cancelled = 0
        self.rejected = 0
        self.threads: ThreadPoolExecutor | None = None
        self.slots: asyncio.Queue[_WorkerSlot | None] | None = None
        self.live_slots: set[_WorkerSlot] = set()
        if config.executor == "thread":
            self.threads = ThreadPoolExecutor(
                max_workers=config.max_workers, thread_name_prefix=f"fedhub-{module.name}"
            )
        elif config.executor == "process":
            self.slots = asyncio.Queue()
            for _ in range(config.max_workers):
                self.slots.put_nowait(None)

    def stats(self) -> dict[str, int]:
        return {
            "in_flight": self.in_flight,
            "queued": self.queued,
            "completed": self.completed,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "cancelled": self.cancelled,
            "rejected": self.rejected,
        }


_Outcome = Literal["done", "timeout", "cancelled"]


class Runner:
    """Runs backend functions with limits, timeouts, cancellation and progress.

    Use as an async context manager; :meth:`aclose` is safe to call twice::

        async with Runner() as runner:
            runner.add_module(load_module("climate.py"), ModuleConfig(executor="process"))
            total = await runner.run("climate", "scale", {"values": [1.0]}, timeout=10)
    """

    def __init__(self) -> None:
        self._states: dict[str, _ModuleState] = {}
        self._ids = itertools.count(1)
        self._closed = False

    async def __aenter__(self) -> Runner:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def add_module(self, module: BackendModule, config: ModuleConfig | None = None) -> None:
        """Serve ``module`` under its name with ``config`` (default: threads)."""
        if module.name in self._states:
            raise ConfigError(f"module {module.name!r} is already served by this runner")
        self._states[module.name] = _ModuleState(module, config or ModuleConfig())

    @property
    def modules(self) -> dict[str, BackendModule]:
        """The served modules by name."""
        return {name: state.module for name, state in self._states.items()}

    def function(self, module: str, function: str) -> FunctionSpec:
        """The spec of ``module.function``; :class:`~hub.errors.UnknownFunctionError` if none."""
        state = self._states.get(module)
        if state is None:
            raise UnknownFunctionError(f"module {module!r} is not served by this node")
        spec = state.module.functions.get(function)
        if spec is None:
            raise UnknownFunctionError(f"module {module!r} has no function {function!r}")
        return spec

    def stats(self) -> dict[str, dict[str, int]]:
        """Per module: in_flight, queued, completed, failed, timed_out, cancelled, rejected."""
        return {name: state.stats() for name, state in self._states.items()}

    async def aclose(self) -> None:
        """Stop all workers; threads still running finish on their own."""
        if self._closed:
            return
        self._closed = True
        for state in self._states.values():
            if state.threads is not None:
                state.threads.shutdown(wait=False, cancel_futures=True)
            slots, state.live_slots = state.live_slots, set()
            for slot in slots:
                if slot.calls:
                    slot.discard(kill=True)
                else:
                    await asyncio.to_thread(slot.close)

    async def run(
        self,
        module: str,
        function: str,
        kwargs: Mapping[str, object],
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        cancel: CancelSignal | None = None,
    ) -> object:
        """Validate ``kwargs``, run ``module.function`` and return its validated result.

        ``timeout`` counts from this call, queueing included. Raises ValidationError,
        UnknownFunctionError, NodeError (busy), CallTimeoutError, CallCancelledError or
        FunctionFailedError.
        """
        if self._closed:
            raise NodeError("the runner is closed")
        spec = self.function(module, function)
        state = self._states[module]
        arguments = spec.validate_arguments(kwargs)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        limits = _Limits(deadline, timeout, cancel)
        if cancel is not None and cancel.is_set():
            state.cancelled += 1
            raise CallCancelledError(f"{spec.qualified_name} was cancelled before it started")
        lease = await self._acquire(state, spec, limits)
        relay = _Relay(loop, on_progress)
        try:
            if spec.is_async:
                value = await self._run_async(state, spec, arguments, relay, limits)
            elif state.config.executor == "inline":
                value = self._run_inline(state, spec, arguments, relay, limits)
            elif state.threads is not None:
                value = await self._run_thread(state, spec, arguments, relay, lease, limits)
            else:
                value = await self._run_process(state, spec, arguments, relay, limits)
            result = spec.validate_result(value)
        except CallTimeoutError:
            state.timed_out += 1
            raise
        except CallCancelledError:
            state.cancelled += 1
            raise
        except FunctionFailedError:
            state.failed += 1
            raise
        finally:
            relay.open = False
            if not lease.deferred:
                lease.release()
        state.completed += 1
        return result

    # -- slots

    async def _acquire(
        self,
        state: _ModuleState,
        spec: FunctionSpec,
        limits: _Limits,
    ) -> _Lease:
        semaphore = state.semaphore
        if semaphore.locked():
            if state.queued >= state.config.max_queue:
                state.rejected += 1
                raise NodeError(
                    f"module {state.module.name} is busy: {state.queued} calls queued",
                    hint="try again later, or raise max_queue or max_workers for this module",
                )
            state.queued += 1
            waiter = asyncio.ensure_future(semaphore.acquire())
            try:
                outcome = await _wait(waiter, limits)
            except asyncio.CancelledError:
                await _abandon_acquire(waiter, semaphore)
                raise
            finally:
                state.queued -= 1
            if outcome != "done":
                await _abandon_acquire(waiter, semaphore)
                if outcome == "timeout":
                    state.timed_out += 1
                    raise CallTimeoutError(
                        f"{spec.qualified_name} timed out after {limits.timeout:g} s while queued"
                    )
                state.cancelled += 1
                raise CallCancelledError(f"{spec.qualified_name} was cancelled while queued")
        else:
            await semaphore.acquire()
        state.in_flight += 1
        return _Lease(state)

    # -- execution

    async def _run_async(
        self,
        state: _ModuleState,
        spec: FunctionSpec,
        arguments: dict[str, object],
        relay: _Relay,
        limits: _Limits,
    ) -> object:
        progress = Progress(relay.from_any_thread, min_interval=state.config.progress_interval)
        task: asyncio.Future[Any] = asyncio.ensure_future(
            typing.cast("Awaitable[Any]", spec.invoke(arguments, progress))
        )
        try:
            outcome = await _wait(task, limits)
        except asyncio.CancelledError:
            progress.cancel()
            task.cancel()
            raise
        if outcome != "done":
            progress.cancel()
            task.cancel()
            await asyncio.wait({task}, timeout=_ASYNC_CANCEL_GRACE_SECONDS)
            _consume(task)
            raise _interrupted(spec, outcome, limits.timeout)
        try:
            value = task.result()
        except asyncio.CancelledError as exc:
            raise CallCancelledError(f"{spec.qualified_name} cancelled itself") from exc
        except Exception as exc:
            raise _failed(spec, exc) from exc
        progress.flush()
        return value

    def _run_inline(
        self,
        state: _ModuleState,
        spec: FunctionSpec,
        arguments: dict[str, object],
        relay: _Relay,
        limits: _Limits,
    ) -> object:
        """Call a sync function right here, on the loop (``executor = "inline"``)."""
        progress = Progress(relay.from_any_thread, min_interval=state.config.progress_interval)
        try:
            value = _call_sync(spec, arguments, progress)
        except Exception as exc:
            raise _failed(spec, exc) from exc
        if limits.cancel is not None and limits.cancel.is_set():
            raise _interrupted(spec, "cancelled", limits.timeout)
        if limits.deadline is not None and asyncio.get_running_loop().time() > limits.deadline:
            raise _interrupted(spec, "timeout", limits.timeout)
        return value

    async def _run_thread(
        self,
        state: _ModuleState,
        spec: FunctionSpec,
        arguments: dict[str, object],
        relay: _Relay,
        lease: _Lease,
        limits: _Limits,
    ) -> object:
        assert state.threads is not None
        progress = Progress(relay.from_any_thread, min_interval=state.config.progress_interval)
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        future = loop.run_in_executor(
            state.threads, functools.partial(context.run, _call_sync, spec, arguments, progress)
        )
        future.add_done_callback(_consume)
        try:
            outcome = await _wait(future, limits)
        except asyncio.CancelledError:
            outcome = "cancelled"
            progress.cancel()
            lease.deferred = True
            future.add_done_callback(lambda _: lease.release())
            raise
        if outcome != "done":
            # The thread cannot be stopped: ask it to stop and keep its slot until it does.
            progress.cancel()
            lease.deferred = True
            future.add_done_callback(lambda _: lease.release())
            raise _interrupted(spec, outcome, limits.timeout)
        try:
            return future.result()
        except Exception as exc:
            raise _failed(spec, exc) from exc

    async def _run_process(
        self,
        state: _ModuleState,
        spec: FunctionSpec,
        arguments: dict[str, object],
        relay: _Relay,
        limits: _Limits,
    ) -> object:
        assert state.slots is not None
        slot = await state.slots.get()
        call_id = next(self._ids)
        try:
            if slot is None:
                slot = await self._start_worker(state)
            slot.calls[call_id] = relay
            future = asyncio.wrap_future(
                slot.executor.submit(_child_call, call_id, spec.name, arguments)
            )
            future.add_done_callback(_consume)
            try:
                outcome = await _wait(future, limits)
            except asyncio.CancelledError:
                self._replace(state, slot, kill=True)
                slot = None
                raise
            if outcome != "done":
                log.warning("runner.worker_killed", function=spec.qualified_name, reason=outcome)
                self._replace(state, slot, kill=True)
                slot = None
                raise _interrupted(spec, outcome, limits.timeout)
            try:
                reply = future.result()
            except BrokenProcessPool as exc:
                self._replace(state, slot, kill=True)
                slot = None
                if self._closed:
                    raise CallCancelledError(
                        f"{spec.qualified_name} was interrupted by shutdown"
                    ) from exc
                log.error("runner.worker_died", function=spec.qualified_name)
                raise FunctionFailedError(
                    f"worker process died while running {spec.qualified_name}; "
                    "the worker was replaced"
                ) from exc
            except Exception as exc:
                raise FunctionFailedError(
                    f"{spec.qualified_name} could not exchange values with its worker "
                    f"process: {_one_line(exc)}"
                ) from exc
            if reply[0] == "error":
                _, kind, message, trace = reply
                log.error(
                    "runner.function_failed",
                    function=spec.qualified_name,
                    error=kind,
                    traceback=trace,
                )
                raise FunctionFailedError(f"{spec.qualified_name} raised {kind}: {message}")
            if spec.takes_progress is not None:
                try:
                    async with asyncio.timeout(_PROGRESS_DRAIN_SECONDS):
                        await relay.done.wait()
                except TimeoutError:
                    log.warning("runner.progress_lost", function=spec.qualified_name)
            return reply[1]
        finally:
            if slot is not None:
                slot.calls.pop(call_id, None)
            state.slots.put_nowait(slot)

    async def _start_worker(self, state: _ModuleState) -> _WorkerSlot:
        context = _mp_context()
        receiver, sender = context.Pipe(duplex=False)
        module = state.module
        executor = ProcessPoolExecutor(
            max_workers=1,
            mp_context=context,
            initializer=_child_init,
            initargs=(module.spec, module.name, sender, state.config.progress_interval),
        )
        try:
            pid = await asyncio.wrap_future(executor.submit(os.getpid))
        except Exception as exc:
            executor.shutdown(wait=False, cancel_futures=True)
            receiver.close()
            raise FunctionFailedError(
                f"cannot start a worker process for module {module.name}: {_one_line(exc)}"
            ) from exc
        finally:
            sender.close()
        slot = _WorkerSlot(executor, pid, receiver)
        state.live_slots.add(slot)
        log.info("runner.worker_started", module=module.name, pid=pid)
        return slot

    def _replace(self, state: _ModuleState, slot: _WorkerSlot, *, kill: bool) -> None:
        """Discard ``slot``; the next call starts a fresh worker in its place."""
        slot.discard(kill=kill)
        state.live_slots.discard(slot)
        log.info("runner.worker_replaced", module=state.module.name, pid=slot.pid)


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _Limits:
    deadline: float | None
    timeout: float | None
    cancel: CancelSignal | None


class CancelSignal(asyncio.Event):
    """An :class:`asyncio.Event` that also calls back when set (no waiting task needed)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        super().set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def add_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when the signal is set."""
        self._callbacks.append(callback)

    def remove_callback(self, callback: Callable[[], None]) -> None:
        """Forget a callback (harmless when it already ran)."""
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)


async def _wait(future: asyncio.Future[Any], limits: _Limits) -> _Outcome:
    """Wait for ``future`` until the deadline or cancellation; never cancels ``future``.

    One waker future, woken by the future itself, a timer at the deadline, or the cancel
    signal's callback: no helper task per call.
    """
    deadline, cancel = limits.deadline, limits.cancel
    if not future.done():
        loop = asyncio.get_running_loop()
        waker: asyncio.Future[None] = loop.create_future()

        def wake(*_: object) -> None:
            if not waker.done():
                waker.set_result(None)

        future.add_done_callback(wake)
        timer = loop.call_at(deadline, wake) if deadline is not None else None
        if cancel is not None:
            cancel.add_callback(wake)
            if cancel.is_set():
                wake()
        try:
            await waker
        finally:
            future.remove_done_callback(wake)
            if timer is not None:
                timer.cancel()
            if cancel is not None:
                cancel.remove_callback(wake)
    if future.done():
        return "done"
    if cancel is not None and cancel.is_set():
        return "cancelled"
    return "timeout"


async def _abandon_acquire(waiter: asyncio.Future[Any], semaphore: asyncio.Semaphore) -> None:
    waiter.cancel()
    await asyncio.wait({waiter})
    if not waiter.cancelled() and waiter.exception() is None:
        semaphore.release()


def _consume(future: asyncio.Future[Any] | Future[Any]) -> None:
    """Mark a future's exception as retrieved (it is handled or deliberately dropped)."""
    if future.done() and not future.cancelled():
        future.exception()


def _interrupted(spec: FunctionSpec, outcome: _Outcome, timeout: float | None) -> Exception:
    if outcome == "timeout":
        return CallTimeoutError(f"{spec.qualified_name} timed out after {timeout:g} s")
    return CallCancelledError(f"{spec.qualified_name} was cancelled")


def _failed(spec: FunctionSpec, exc: BaseException) -> FunctionFailedError:
    log.error(
        "runner.function_failed",
        function=spec.qualified_name,
        error=type(exc).__name__,
        exc_info=exc,
    )
    return FunctionFailedError(
        f"{spec.qualified_name} raised {type(exc).__name__}: {_one_line(exc).partition(': ')[2]}"
    )


def _call_sync(spec: FunctionSpec, arguments: dict[str, object], progress: Progress) -> object:
    try:
        return spec.invoke(arguments, progress)
    finally:
        progress.flush()


@functools.cache
def _mp_context() -> BaseContext:
    """forkserver where available (never fork: the node is multi-threaded), else spawn."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["node.runner"])
        return context
    return multiprocessing.get_context("spawn")


# -- in the worker process

_child: dict[str, Any] = {}


def _child_init(spec: str, name: str, conn: Connection, interval: float) -> None:
    """Worker initializer: load the module (so pickled arguments resolve) once."""
    _child["module"] = _load_module(spec, name=name, log_skipped=False)
    _child["conn"] = conn
    _child["interval"] = interval


def _child_call(call_id: int, function: str, arguments: dict[str, object]) -> tuple[Any, ...]:
    """Run one call in the worker; errors come back as plain text, not pickled exceptions."""
    module: BackendModule = _child["module"]
    conn: Connection = _child["conn"]
    spec = module.functions[function]
    progress: Progress | None = None
    if spec.takes_progress is not None:

        def send(fraction: float | None, message: str) -> None:
            conn.send((call_id, "progress", fraction, message))

        progress = Progress(send, min_interval=_child["interval"])
    try:
        return ("ok", spec.invoke(arguments, progress))
    except Exception as exc:
        return ("error", type(exc).__name__, _one_line(exc).partition(": ")[2], _trace(exc))
    finally:
        if progress is not None:
            progress.flush()
            conn.send((call_id, "done"))


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))
