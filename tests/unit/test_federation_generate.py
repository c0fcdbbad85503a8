"""``fedhub federation init`` / ``add-site``: one folder per party, each with its own secrets.

Runs the real CLI on a real ``federation.toml`` (real site keys, real NKeys, a real CA);
the generated configs are run by real servers in tests/integration (test_leaf_permissions,
test_hub_clusters and every test on the shared ``federation``).
"""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import nkeys
import pytest
from cryptography import x509

from hub.cli import main
from hub.keys import KeyStore
from hub.nats.generate import role_permissions

TOML = """\
[federation]
name = "ocean"

[[hubs]]
name = "eu"
[[hubs.servers]]
name = "hub-1"
host = "hub1.example.org"
[[hubs.servers]]
name = "hub-2"
host = "hub2.example.org"
[[hubs.servers]]
name = "hub-3"
host = "hub3.example.org"

[[sites]]
name = "hereon"
site_key = "keys/hereon.pub"
host = "nats.hereon.example.org"
callers = ["klaus", "anna"]

[[sites]]
name = "geomar"
site_key = "keys/geomar.pub"
callers = ["klaus"]
"""


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI runs in this process: it must not point structlog at pytest's capture
    stream, which is closed after the test (later tests would log into it)."""
    monkeypatch.setattr("hub.cli.configure_logging", lambda **_: None)


def _pub(root: Path, site: str) -> Path:
    store = KeyStore(root / "store")
    ident = f"site:{site}"
    if not store.exists(ident):
        store.create(ident)
    path = root / "keys" / f"{site}.pub"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(store.public(ident).to_json()))
    return path


@pytest.fixture
def generated(tmp_path: Path) -> Path:
    for site in ("hereon", "geomar", "awi"):
        _pub(tmp_path, site)
    (tmp_path / "federation.toml").write_text(TOML)
    assert main(["federation", "init", str(tmp_path / "federation.toml"), "--out",
                 str(tmp_path / "out")]) == 0  # fmt: skip
    return tmp_path / "out"


def _seeds(folder: Path) -> dict[str, str]:
    """Every NKey seed under ``folder`` (files and configs), by its public key."""
    found: dict[str, str] = {}
    for path in folder.rglob("*"):
        if not path.is_file() or path.suffix in (".pem", ".pub", ".json", ".log"):
            continue
        for word in path.read_text(errors="replace").replace('"', " ").split():
            if word.startswith("SU") and len(word) == 58:
                found[nkeys.from_seed(bytearray(word.encode())).public_key.decode()] = str(path)
    return found


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_init_writes_a_folder_per_party_with_only_its_own_secrets(generated: Path) -> None:
    hub, hereon, geomar = generated / "hub", generated / "sites/hereon", generated / "sites/geomar"
    assert sorted(p.name for p in hub.iterdir()) == [
        "credentials", "hub-1", "hub-2", "hub-3", "leaf-keys.json", "secrets", "streams"
    ]  # fmt: skip
    hereon_seeds, geomar_seeds, hub_seeds = _seeds(hereon), _seeds(geomar), _seeds(hub)
    # a site holds its leaf's NKey and its users' (node, callers, operator, auditor) only
    assert len(hereon_seeds) == 1 + 1 + 2 + 1 + 1
    assert not set(hereon_seeds) & set(geomar_seeds)
    # the hub holds its admin's seed only; it knows the leaves by their public keys
    assert len(hub_seeds) == 1
    assert not set(hub_seeds) & (set(hereon_seeds) | set(geomar_seeds))
    config = (hub / "hub-1" / "nats-server.conf").read_text()
    leaf_keys = json.loads((hub / "leaf-keys.json").read_text())
    assert leaf_keys["hereon"] in config and leaf_keys["geomar"] in config
    # no password travels between parties: the hub's only secrets are its own routes'
    assert "password" not in (hereon / "nats-leaf.conf").read_text()
    for path in [*hereon.rglob("*.nk"), *hereon.rglob("*-key.pem"), hereon / "nats-leaf.conf"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_every_server_certificate_is_signed_by_the_federations_ca_and_names_its_host(
    generated: Path,
) -> None:
    ca = x509.load_pem_x509_certificate((generated / "ca" / "ca.pem").read_bytes())
    for folder, host in (("hub/hub-2", "hub2.example.org"),
                         ("sites/hereon", "nats.hereon.example.org")):  # fmt: skip
        cert = x509.load_pem_x509_certificate((generated / folder / "tls/server.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert host in names.get_values_for_type(x509.DNSName)


def test_a_three_server_hub_routes_to_its_peers_and_copies_events_with_three_replicas(
    generated: Path,
) -> None:
    config = (generated / "hub/hub-1/nats-server.conf").read_text()
    assert "hub2.example.org:6222" in config and "hub3.example.org:6222" in config
    assert "verify: true" in config
    copy = json.loads((generated / "hub/streams/FH_EVENTS_HEREON.json").read_text())
    assert copy["num_replicas"] == 3 and copy["deny_delete"] and copy["deny_purge"]
    assert copy["sources"][0]["external"]["api"] == "$JS.hereon.API"


def test_the_hubs_directory_stream_sources_every_sites_records_with_three_replicas(
    generated: Path,
) -> None:
    directory = json.loads((generated / "hub/streams/FH_DIRECTORY.json").read_text())
    assert directory["num_replicas"] == 3 and directory["deny_delete"] and directory["deny_purge"]
    assert [(s["name"], s["external"]["api"]) for s in directory["sources"]] == [
        ("FH_DIR", "$JS.hereon.API"),
        ("FH_DIR", "$JS.geomar.API"),
    ]


def test_add_site_rewrites_the_hub_and_leaves_every_other_sites_folder_untouched(
    generated: Path, tmp_path: Path
) -> None:
    before = {site: _digests(generated / "sites" / site) for site in ("hereon", "geomar")}
    hub_admin = (generated / "hub/credentials/admin.nk").read_bytes()
    assert main(["federation", "add-site", str(tmp_path / "federation.toml"), "awi",
                 "--site-key", str(tmp_path / "keys/awi.pub"), "--out", str(generated),
                 "--callers", "anna"]) == 0  # fmt: skip
    assert {site: _digests(generated / "sites" / site) for site in before} == before
    assert (generated / "hub/credentials/admin.nk").read_bytes() == hub_admin
    awi_leaf = json.loads((generated / "hub/leaf-keys.json").read_text())["awi"]
    assert awi_leaf in (generated / "hub/hub-3/nats-server.conf").read_text()
    assert (generated / "sites/awi/credentials/caller-anna.nk").exists()
    assert 'name = "awi"' in (tmp_path / "federation.toml").read_text()
    directory = json.loads((generated / "hub/streams/FH_DIRECTORY.json").read_text())
    assert "$JS.awi.API" in [s["external"]["api"] for s in directory["sources"]]
    assert (generated / "hub/streams/FH_EVENTS_AWI.json").exists()


def test_add_site_keeps_a_handed_over_sites_key_and_refuses_to_regenerate_its_folder(
    generated: Path, tmp_path: Path
) -> None:
    import shutil

    hereon_leaf = json.loads((generated / "hub/leaf-keys.json").read_text())["hereon"]
    shutil.rmtree(generated / "sites/hereon")  # handed over to hereon's operator
    assert (
        main(
            [
                "federation",
                "add-site",
                str(tmp_path / "federation.toml"),
                "awi",
                "--site-key",
                str(tmp_path / "keys/awi.pub"),
                "--out",
                str(generated),
            ]
        )
        == 0
    )
    assert hereon_leaf in (generated / "hub/hub-1/nats-server.conf").read_text()
    assert not (generated / "sites/hereon").exists()
    # init over that folder would have to mint hereon a new key: refused
    assert main(["federation", "init", str(tmp_path / "federation.toml"), "--out",
                 str(generated)]) == 1  # fmt: skip


def test_a_site_key_of_another_site_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _pub(tmp_path, "geomar")
    _pub(tmp_path, "hereon")
    (tmp_path / "federation.toml").write_text(TOML.replace("keys/hereon.pub", "keys/geomar.pub"))
    assert main(["federation", "init", str(tmp_path / "federation.toml"), "--out",
                 str(tmp_path / "out")]) == 1  # fmt: skip
    assert "holds the key of site:geomar, not site:hereon" in capsys.readouterr().err


def test_a_hub_of_two_servers_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _pub(tmp_path, "hereon")
    _pub(tmp_path, "geomar")
    text = TOML.replace('[[hubs.servers]]\nname = "hub-3"\nhost = "hub3.example.org"\n', "")
    (tmp_path / "federation.toml").write_text(text)
    assert main(["federation", "init", str(tmp_path / "federation.toml"), "--out",
                 str(tmp_path / "out")]) == 1  # fmt: skip
    assert "use 1, 3 or 5" in capsys.readouterr().err


def test_a_caller_may_subscribe_to_its_own_inboxes_only_and_use_no_jetstream_api() -> None:
    perm = role_permissions("hereon", "caller", "klaus")
    assert perm.subscribe == ("fh.inbox.hereon.klaus.>", "_INBOX.caller.klaus.>")
    assert not [s for s in perm.publish if s.startswith("$JS")]
    assert not perm.allow_responses
