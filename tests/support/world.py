"""A small federation world for tests: one key store, sites, people, node configs, nodes.

Everything is real: key files, site-signed key records, TOML configs read by the node,
``fedhub-node init`` through its Python entry points, nodes run either in this process
(:meth:`World.node`, an async context manager) or as a separate ``fedhub-node run``
process (:meth:`World.spawn_node`) that tests can SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub.canonical import b64e
from hub.clock import now
from hub.keys import KeyPair, KeyStore
from hub.records import KeyRecord, SignedRecord, sign_record
from hub.subjects import validate_identity
from node.bootstrap import open_log
from node.config import NodeConfig, load_config

CLIMATE = Path(__file__).resolve().parents[1] / "fixtures" / "modules" / "climate.py"


def _toml_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


@dataclass
class World:
    """Keys and configs of a test federation under ``root``."""

    root: Path
    store: KeyStore = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = KeyStore(self.root / "keys")

    # -- identities ------------------------------------------------------------------------

    def site(self, name: str) -> KeyPair:
        """The site key of ``name`` (created on first use)."""
        ident = f"site:{name}"
        return self.store.load(ident) if self.store.exists(ident) else self.store.create(ident)

    def person(self, identity: str, *, groups: Iterable[str] = (), vouch: bool = True) -> KeyPair:
        """A person's keys; with ``vouch``, also their record signed by their site."""
        pair = (
            self.store.load(identity)
            if self.store.exists(identity)
            else self.store.create(identity)
        )
        if vouch:
            self.record_file(pair, groups=groups)
        return pair

    def record(
        self, pair: KeyPair, *, groups: Iterable[str] = (), signer: KeyPair | None = None
    ) -> SignedRecord:
        """The key record of ``pair`` signed by its site (or by ``signer``)."""
        ident = validate_identity(pair.identity)
        site = signer or self.site(ident.site)
        rec = KeyRecord(
            identity=pair.identity,
            role=ident.kind,
            site=ident.site,
            kid=pair.kid,
            sign_key=b64e(pair.sign_public),
            box_key=b64e(pair.box_public),
            valid_from=now(),
            groups=tuple(groups),
        )
        return sign_record(rec, site.signing_key)

    def record_file(self, pair: KeyPair, *, groups: Iterable[str] = ()) -> Path:
        """Write the vouched record of ``pair`` to ``records/<name>.json``."""
        path = self.root / "records" / f"{pair.identity.replace(':', '_').replace('/', '_')}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(self.record(pair, groups=groups).model_dump()))
        return path

    # -- nodes -----------------------------------------------------------------------------

    def node_config(
        self,
        site: str,
        *,
        name: str = "n1",
        nats_url: str = "",
        nats_credentials: Path | None = None,
        nats_ca: Path | None = None,
        modules: Iterable[tuple[str, Path]] = (("climate", CLIMATE),),
        executor: str = "thread",
        grants: Iterable[tuple[str, str, str]] = (),
        trust: Iterable[str] = (),
        users: Iterable[str] = (),
        calls: dict[str, Any] | None = None,
        log: dict[str, Any] | None = None,
        init: bool = True,
    ) -> NodeConfig:
        """Write a node config (and, with ``init``, the node key and log genesis)."""
        self.site(site)
        lines = []
        user_files = [str(self.record_file(self.store.load(u))) for u in users]
        lines.append(f"users = {_toml_value(user_files)}")
        lines += [
            "[node]",
            f'site = "{site}"',
            f'name = "{name}"',
            f'data_dir = "{self.root / "nodes" / f"{site}-{name}"}"',
            f'key_home = "{self.store.home}"',
            "[nats]",
            f"url = {_toml_value(nats_url)}",
            *([f"credentials = {_toml_value(str(nats_credentials))}"] if nats_credentials else []),
            *([f"ca = {_toml_value(str(nats_ca))}"] if nats_ca else []),
            "[log]",
        ]
        for k, v in {"level": "warning", **(log or {})}.items():
            lines.append(f"{k} = {_toml_value(v)}")
        lines.append("[calls]")
        for k, v in (calls or {}).items():
            lines.append(f"{k} = {_toml_value(v)}")
        for mod_name, path in modules:
            lines += [
                "[[modules]]",
                f'name = "{mod_name}"',
                f'path = "{path}"',
                f'executor = "{executor}"',
            ]
        for principal, module, function in grants:
            lines += [
                "[[grants]]",
                f'principal = "{principal}"',
                f'module = "{module}"',
                f'functions = ["{function}"]',
            ]
        for other in trust:
            self.site(other)
            pub = self.store.dir / f"site%3A{other}.pub"
            lines += ["[[trust]]", f'site = "{other}"', f'key = "{pub}"']
        path = self.root / f"{site}-{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        cfg = load_config(path)
        if init:
            open_log(cfg, create=True).close()
        return cfg

    def spawn_node(self, cfg: NodeConfig, *, timeout: float = 20.0) -> NodeProcess:
        """Run ``fedhub-node run --config`` as a separate process; wait until it serves."""
        assert cfg.source is not None
        status = cfg.node.data_dir / "status.json"
        if status.exists():
            status.unlink()
        out = (cfg.node.data_dir / "node.out").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "run", "--config", str(cfg.source), "--grace", "5"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FEDHUB_HOME": str(self.store.home)},
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"node exited with {proc.returncode}: {_tail(cfg)}")
            if status.exists():
                return NodeProcess(proc, cfg)
            time.sleep(0.05)
        proc.kill()
        raise RuntimeError(f"node did not start within {timeout} s: {_tail(cfg)}")


def _tail(cfg: NodeConfig) -> str:
    path = cfg.node.data_dir / "node.out"
    return path.read_text()[-2000:] if path.exists() else ""


@dataclass
class NodeProcess:
    """A node running as its own process."""

    proc: subprocess.Popen[bytes]
    cfg: NodeConfig

    def kill(self) -> None:
        """SIGKILL: no clean stop, no node.stopped event."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code (kills after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return int(self.proc.returncode)

    def output(self) -> str:
        """What the node printed so far."""
        return _tail(self.cfg)
