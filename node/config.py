"""A site node's configuration: one TOML file, validated, every error naming its key.

See ``configs/site-hereon.toml`` for every option with comments. Relative paths are taken
relative to the config file's folder.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hub.errors import ConfigError

__all__ = ["GrantConfig", "ModuleConfig", "NodeConfig", "load_config"]

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
NodeName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]


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
    embedded_port: int = Field(-1, ge=-1, le=65535)
    leafnode_remotes: tuple[str, ...] = ()
    connect_timeout: float = Field(5.0, gt=0)


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
    ack_wait: float = Field(30.0, gt=0)
    max_deliver: int = Field(5, ge=1)
    fetch_batch: int = Field(64, ge=1, le=1024)
    max_in_flight: int = Field(256, ge=1)
    interrupted: Literal["retry", "fail"] = "fail"


class ModuleConfig(_Section):
    """``[[modules]]``: a backend module and how it runs."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    path: str
    executor: Literal["thread", "process", "inline"] = "thread"
    max_workers: int = Field(4, ge=1, le=256)
    max_concurrency: int = Field(8, ge=1)
    max_queue: int = Field(1000, ge=0)
    timeout: float | None = Field(None, gt=0)


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
        cfg = NodeConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{path}: {key}: {err['msg']}{more}") from exc
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
