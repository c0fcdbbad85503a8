"""Bringing a node's identity and log into being: keys, the site's vouching, the genesis."""

from __future__ import annotations

import os
from pathlib import Path

from hub.canonical import b64d, b64e
from hub.clock import now
from hub.errors import KeyStoreError
from hub.keys import KeyPair, KeyStore
from hub.records import KeyRecord, SignedRecord, sign_record
from hub.subjects import instance_log_id
from node.config import NodeConfig
from node.eventlog import EventLog

__all__ = ["key_record", "node_key", "node_passphrase", "open_log"]


def key_record(pair: KeyPair, site: str, role: str, groups: tuple[str, ...] = ()) -> KeyRecord:
    """The key record a site signs to vouch for ``pair``."""
    return KeyRecord(
        identity=pair.identity,
        role=role,  # type: ignore[arg-type]
        site=site,
        kid=pair.kid,
        sign_key=b64e(pair.sign_public),
        box_key=b64e(pair.box_public),
        valid_from=now(),
        groups=groups,
    )


def node_passphrase(cfg: NodeConfig) -> str | None:
    """The passphrase of the node's keys: ``passphrase_file``, else ``$FEDHUB_PASSPHRASE``."""
    pf = cfg.node.passphrase_file
    if pf is None:
        return os.environ.get("FEDHUB_PASSPHRASE") or None
    try:
        return pf.read_text().rstrip("\r\n")
    except OSError as exc:
        raise KeyStoreError(f"cannot read node.passphrase_file {pf}: {exc.strerror}") from exc


def node_key(cfg: NodeConfig, *, create: bool = False) -> KeyPair:
    """The node's key pair from the key store (created on ``init``)."""
    store = KeyStore(cfg.node.key_home)
    if not store.exists(cfg.identity):
        if not create:
            raise KeyStoreError(
                f"no key for {cfg.identity} in {store.dir}",
                hint=f"run: fedhub-node init --config {cfg.source}",
            )
        return store.create(cfg.identity, node_passphrase(cfg))
    return store.load(cfg.identity, node_passphrase(cfg))


def _site_key(cfg: NodeConfig) -> KeyPair:
    """The site's key, needed once to vouch for the node key (same passphrase source)."""
    try:
        return KeyStore(cfg.node.key_home).load(cfg.site_identity, node_passphrase(cfg))
    except KeyStoreError as exc:
        raise KeyStoreError(
            f"the site key {cfg.site_identity} is needed once to vouch for the node key: "
            f"{exc.message}",
            hint=exc.hint,
        ) from exc


def open_log(cfg: NodeConfig, *, create: bool = False) -> EventLog:
    """Open the node's event log; with ``create``, write its genesis (needs the site key)."""
    site = _site_key(cfg) if create and not cfg.log_path.exists() else None
    key = node_key(cfg, create=create)
    if not cfg.log_path.exists() and not create:
        raise KeyStoreError(
            f"no event log at {cfg.log_path}", hint=f"run: fedhub-node init --config {cfg.source}"
        )
    log = EventLog(cfg.log_path, key, checkpoint_every=cfg.log.checkpoint_every)
    if not log.initialized:
        if not create:
            log.close()
            raise KeyStoreError(f"event log {cfg.log_path} has no genesis event")
        try:
            site = site or _site_key(cfg)
        except KeyStoreError:
            log.close()
            raise
        record: SignedRecord = sign_record(key_record(key, cfg.node.site, "node"), site.signing_key)
        log.initialize(cfg.node.site, site.sign_public, record)
    return log


def instance_log_path(cfg: NodeConfig, instance: int) -> Path:
    """Log file of the ``instance``-th process of this node (1: ``events.db``)."""
    return cfg.log_path if instance == 1 else cfg.node.data_dir / f"events.{instance}.db"


def open_instance_log(cfg: NodeConfig, instance: int) -> EventLog:
    """The log of an extra process of this node (``<identity>#<n>``), created on first use.

    Its genesis repeats the site key and the site-signed node key record of the node's first
    log, so no site key is needed to add a process.
    """
    if instance == 1:
        return open_log(cfg)
    key = node_key(cfg)
    with EventLog.open_readonly(cfg.log_path) as first:
        genesis = next(first.events(after=0, limit=1)).parsed()["data"]
    log = EventLog(
        instance_log_path(cfg, instance),
        key,
        checkpoint_every=cfg.log.checkpoint_every,
        log_id=instance_log_id(cfg.identity, instance),
    )
    if not log.initialized:
        log.initialize(
            cfg.node.site,
            b64d(genesis["site_key"]),
            SignedRecord.model_validate(genesis["node_key"]),
        )
    return log
