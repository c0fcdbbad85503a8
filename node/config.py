"""A site node's configuration: one TOML file, validated, every error naming its key.

See ``configs/site-hereon.toml`` for every option with comments. Relative paths are taken
relative to the config file's folder.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hub.errors import ConfigError

__all__ = [
    "LISTEN_PATTERN",
    "GrantConfig",
    "ModuleConfig",
    "NodeConfig",
    "ObservabilitySection",
    "ResultsSection",
    "load_config",
]

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
NodeName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]

#: Validation context key: the values come from a config file (see :func:`load_config`).
_IN_FILE = "in_file"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSection(_Section):
    """``[node]``: who this node is and where it keeps its files."""

    site: Name
    name: NodeName = "n1"
    data_dir: Path = Path("data")
    key_home: Path | None = None
    passphrase_file: Path | None = None


class NatsSection(_Section):
    """``[nats]``: the site's NATS server, or an embedded one when ``url`` is empty."""

    url: str = ""
    credentials: Path | None = None
    #: CA certificate that signed the server's TLS certificate (``fedhub federation init``
    #: writes it as ``ca.pem``); without it the system's CAs are trusted.
    ca: Path | None = None
    embedded_port: int = Field(-1, ge=-1, le=65535)
    leafnode_remotes: tuple[str, ...] = ()
    connect_timeout: float = Field(5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _server_url(cls, value: str) -> str:
        """A URL nats-py can connect to (``nats://``, ``tls://``, ``ws(s)://``, or host:port):
        a typo is a config error at start, not a connection retried forever."""
        if not value:
            return value
        url = value if "://" in value else f"nats://{value}"
        try:
            parsed = urlsplit(url)
            parsed.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ValueError(f"not a NATS server URL: {exc}") from None
        if (
            parsed.scheme not in ("nats", "tls", "ws", "wss")
            or not parsed.hostname
            or any(c.isspace() for c in value)
        ):
            raise ValueError("not a NATS server URL (nats://host:port, tls://host:port)")
        return value


class LogSection(_Section):
    """``[log]``: event log checkpoints and process logging."""

    checkpoint_every: int = Field(1000, ge=1)
    checkpoint_seconds: float = Field(60.0, gt=0)
    format: Literal["console", "json"] = "console"
    level: Literal["debug", "info", "warning", "error"] = "info"


class CallsSection(_Section):
    """``[calls]``: limits and policies of the request pipeline."""

    max_payload: int = Field(8 * 1024 * 1024, ge=1024)
    replay_window: float = Field(300.0, gt=0)
    ack_wait: float = Field(5.0, gt=0)
    max_deliver: int = Field(5, ge=1)
    fetch_batch: int = Field(64, ge=1, le=1024)
    max_in_flight: int = Field(256, ge=1)
    interrupted: Literal["retry", "fail"] = "fail"
    #: Arguments and results above this many bytes travel as bulk transfers (0: half of
    #: ``max_payload``); see docs/deploy.md, "Large payloads".
    bulk_threshold: int = Field(0, ge=0)
    #: Largest bulk argument a call may send, in bytes (0: no limit but the disk).
    bulk_max_size: int = Field(0, ge=0)
    #: Sealed bytes in flight per bulk transfer.
    bulk_window: int = Field(4 * 1024 * 1024, ge=64 * 1024)
    #: Seconds a bulk transfer may be silent before the node gives up on it.
    bulk_idle_timeout: float = Field(30.0, gt=0)
    #: Seconds between sweeps of orphaned spool files and result chunks.
    bulk_sweep_every: float = Field(300.0, gt=0)
    #: Result chunks without an object older than this (seconds) are orphans.
    bulk_orphan_age: float = Field(600.0, gt=0)


class ResultsSection(_Section):
    """``[results]``: how long and how much of the kept results the node keeps (the site's
    default; a module may set its own in ``[[modules]]``); see docs/results.md."""

    #: Seconds a result is kept after its call completed (default 30 days).
    keep_for: float = Field(30 * 86400.0, gt=0)
    #: Bytes of kept results per module (plaintext sizes); the oldest go first beyond it.
    max_size: int = Field(50 * 1024**3, ge=1)
    #: Seconds between two retention sweeps.
    sweep_every: float = Field(3600.0, gt=0)


#: ``host:port`` or ``[v6]:port`` of the health and metrics endpoint (empty: off).
LISTEN_PATTERN = r"^$|^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$"


class ObservabilitySection(_Section):
    """``[observability]``: the health and metrics endpoint, off unless ``listen`` is set."""

    listen: str = Field(
        "",
        pattern=LISTEN_PATTERN,
        description='host:port of /healthz and /metrics, e.g. "127.0.0.1:9464"; empty: off',
    )


class ModuleConfig(_Section):
    """``[[modules]]``: a backend module and how the runner executes its functions.

    The one model of a module's settings: the node reads it from its config file and
    hands it to :meth:`node.runner.Runner.add_module` as it is. Built directly, a bad
    value raises :class:`~hub.errors.ConfigError` naming the key.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    """The module's name in subjects: ``<site>.<name>.<function>``."""
    path: str
    """A ``.py`` file (relative to the config file's folder) or a dotted module name."""
    executor: Literal["thread", "process", "inline"] = "thread"
    """``thread`` (default), ``process`` (isolated, killable, a crash cannot take the
    node down; arguments and results are pickled) or ``inline``: sync functions run on the
    node's event loop itself, for functions that take well under a millisecond (no thread
    hop; but while one runs the node does nothing else, and a timeout or cancel can only
    be noticed after it returns)."""
    max_workers: int = Field(4, ge=1, le=256)
    """Threads, or worker processes, for sync functions."""
    max_concurrency: int = Field(8, ge=1)
    """Calls running at once (in process mode at most ``max_workers``)."""
    max_queue: int = Field(1000, ge=0)
    """Calls allowed to wait for a free slot; one more is refused as busy."""
    progress_interval: float = Field(0.05, ge=0)
    """Shortest time between two progress reports delivered, seconds (20 per second)."""
    timeout: float | None = Field(None, gt=0)
    #: zstd-compress each chunk of this module's bulk results before sealing.
    compress: bool = False
    """Upper bound on any call of this module, seconds (the caller's deadline still counts)."""
    keep_for: float | None = Field(None, gt=0)
    """Seconds this module's results are kept (default: ``[results] keep_for``)."""
    keep_max_size: int | None = Field(None, ge=1)
    """Bytes of this module's kept results (default: ``[results] max_size``)."""

    @model_validator(mode="wrap")
    @classmethod
    def _bad_value_is_a_config_error(
        cls, data: Any, handler: ModelWrapValidatorHandler[ModuleConfig], info: ValidationInfo
    ) -> ModuleConfig:
        """Built on its own, a bad value raises ConfigError; in a file, the file names it."""
        try:
            return handler(data)
        except ValidationError as exc:
            if info.context is not None and info.context.get(_IN_FILE):
                raise  # load_config names the file and the whole key path
            raise ConfigError(f"module config: {_first_error(exc)}") from exc

    @property
    def concurrency(self) -> int:
        """The effective number of calls that may run at once."""
        if self.executor == "process":
            return min(self.max_concurrency, self.max_workers)
        return self.max_concurrency


class GrantConfig(_Section):
    """``[[grants]]``: who may call what. ``principal`` is ``name@site`` or ``group:NAME``."""

    principal: Annotated[
        str, Field(pattern=r"^(group:[a-z0-9_-]+|[a-z0-9][a-z0-9_-]*@[a-z][a-z0-9_-]*)$")
    ]
    module: str
    functions: tuple[str, ...] = ("*",)


class SiteTrust(_Section):
    """``[[trust]]``: a federation site whose users' key records this node accepts."""

    site: Name
    key: str = Field(description="the site's Ed25519 key: a .pub file path or base64")


class NodeConfig(_Section):
    """The whole config file."""

    node: NodeSection
    nats: NatsSection = NatsSection()
    log: LogSection = LogSection()
    calls: CallsSection = CallsSection()
    observability: ObservabilitySection = ObservabilitySection()
    results: ResultsSection = ResultsSection()
    modules: tuple[ModuleConfig, ...] = ()
    grants: tuple[GrantConfig, ...] = ()
    trust: tuple[SiteTrust, ...] = ()
    users: tuple[str, ...] = Field((), description="files of key records vouched by a site")

    source: Path | None = Field(None, exclude=True)
    digest: str | None = Field(None, exclude=True)

    @field_validator("modules")
    @classmethod
    def _unique_modules(cls, value: tuple[ModuleConfig, ...]) -> tuple[ModuleConfig, ...]:
        names = [m.name for m in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"module names must be unique: {', '.join(dupes)}")
        return value

    @property
    def identity(self) -> str:
        """The node's identity id."""
        return f"node:{self.node.site}/{self.node.name}"

    @property
    def site_identity(self) -> str:
        """The site's identity id."""
        return f"site:{self.node.site}"

    @property
    def log_path(self) -> Path:
        """The node's SQLite event log."""
        return self.node.data_dir / "events.db"

    def resolve(self, path: Path | str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path).expanduser()
        if p.is_absolute() or self.source is None:
            return p
        return self.source.parent / p


def load_config(path: Path) -> NodeConfig:
    """Read and validate a node config; ConfigError names the file and the bad key."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        cfg = NodeConfig.model_validate(data, context={_IN_FILE: True})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}") from exc
    base = path.resolve().parent
    node = cfg.node

    def rel(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    node = node.model_copy(
        update={
            "data_dir": rel(node.data_dir.expanduser()),
            "key_home": rel(node.key_home.expanduser()) if node.key_home else None,
            "passphrase_file": rel(node.passphrase_file) if node.passphrase_file else None,
        }
    )
    return cfg.model_copy(
        update={
            "node": node,
            "source": path.resolve(),
            "digest": hashlib.blake2b(raw, digest_size=32).hexdigest(),
        }
    )


def _first_error(exc: ValidationError) -> str:
    """``key: message`` of the first error, and how many more there are."""
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{key}: {err['msg']}{more}"
