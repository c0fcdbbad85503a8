"""``fedhub federation``: write every party's NATS configs and credentials from one file.

``fedhub federation init federation.toml --out DIR`` writes the hub's and every site's
folder (see :mod:`hub.nats.generate`); ``fedhub federation add-site federation.toml NAME
--site-key FILE --out DIR`` adds a site to the file, rewrites the hub's configs and writes
the new site's folder, leaving every other site's folder and secrets as they are.
``fedhub federation setup-hub DIR --url URL`` creates (or updates) the hub's own streams,
the event copies and the federation-wide directory, from ``DIR/hub/streams`` (see
:mod:`hub.nats.hubsetup`), with the hub's admin NKey.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import nats.errors

from hub.cliutil import examples
from hub.errors import ConfigError, TransportError
from hub.nats.config import HUB_DOMAIN
from hub.nats.connection import auth_options, connect
from hub.nats.generate import HUB_ADMIN, Generated, generate
from hub.nats.hubsetup import setup_hub
from hub.nats.topology import Site, Topology, load_topology

__all__ = ["add_commands", "add_site_text"]


def _report(result: Generated, only: list[str] | None = None) -> None:
    print(f"wrote {result.out}")
    for name, path in result.hub_configs.items():
        print(f"  hub server {name:<12} {path.relative_to(result.out)}")
    for site, path in result.leaf_configs.items():
        if only is None or site in only:
            print(f"  site       {site:<12} {path.parent.relative_to(result.out)}/")
    print("give each party its own folder only; keep ca/ offline (it signs new servers)")


def cmd_init(args: argparse.Namespace) -> int:
    topology = load_topology(args.config)
    _report(generate(topology, args.out, base=args.config.resolve().parent))
    first = topology.hubs[0].servers[0]
    url = f"tls://{first.host}:{first.client_port}"
    print(f"once the hub runs: fedhub federation setup-hub {args.out} --url {url}")
    return 0


def add_site_text(text: str, site: Site) -> str:
    """``federation.toml`` text with a ``[[sites]]`` table for ``site`` appended."""
    lines = ["", "[[sites]]"]
    for key, value in site.model_dump(exclude_none=True).items():
        lines.append(f"{key} = {json.dumps(value)}")
    return text.rstrip("\n") + "\n" + "\n".join(lines) + "\n"


def cmd_add_site(args: argparse.Namespace) -> int:
    path: Path = args.config
    topology = load_topology(path)
    if args.name in topology.names:
        raise ConfigError(f"site {args.name!r} is already in {path}")
    fields: dict[str, Any] = {"name": args.name, "site_key": str(args.site_key)}
    for key in ("hub", "host", "client_port", "store_dir"):
        value = getattr(args, key)
        if value is not None:
            fields[key] = value
    for role in ("nodes", "callers", "operators", "auditors"):
        value = getattr(args, role)
        if value is not None:
            fields[role] = [v for v in value.split(",") if v]
    site = Site.model_validate(fields)
    text = add_site_text(path.read_text(), site)
    topology = Topology.model_validate(
        {
            **topology.model_dump(),
            "sites": [*(s.model_dump() for s in topology.sites), site.model_dump()],
        }
    )
    result = generate(topology, args.out, base=path.resolve().parent, sites=[site.name])
    path.write_text(text)
    _report(result, only=[site.name])
    print(f"added {site.name} to {path}; reload every hub server (nats-server --signal reload)")
    print(f"then add its streams to the hub: fedhub federation setup-hub {args.out} --url URL")
    return 0


def _hub_folder(folder: Path) -> Path:
    """The hub's folder: ``folder`` itself or ``folder/hub`` (the one `init` wrote)."""
    for hub in (folder / "hub", folder):
        if (hub / "streams").is_dir():
            return hub
    raise ConfigError(
        f"{folder} holds no hub streams (streams/*.json)",
        hint="give the folder `fedhub federation init` wrote, or its hub/ folder",
    )


def _hub_ca(hub: Path) -> Path | None:
    """The CA certificate a hub server's folder holds (any of them: it is the same)."""
    return next(iter(sorted(hub.glob("*/tls/ca.pem"))), None)


async def _setup(url: str, hub: Path, options: dict[str, Any]) -> list[tuple[str, int]]:
    nc = await connect(url, connect_timeout=5, **options)
    try:
        infos = await setup_hub(nc.jetstream(domain=HUB_DOMAIN, timeout=10), hub / "streams")
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransportError(f"the hub at {url} did not set up its streams: {exc}") from exc
    finally:
        await nc.close()
    return [(str(info.config.name), len(info.config.sources or [])) for info in infos]


def cmd_setup_hub(args: argparse.Namespace) -> int:
    from hub.cli_calls import quiet_nats

    quiet_nats(args)  # a refused login is one error line, not nats-py's traceback
    if str(getattr(args, "log_level", "warning")).lower() != "debug":
        logging.getLogger("asyncio").setLevel(logging.ERROR)  # TLS close chatter
    hub = _hub_folder(args.dir)
    creds = args.creds or hub / "credentials" / f"{HUB_ADMIN}.nk"
    ca = args.ca or _hub_ca(hub)
    options = auth_options(creds, ca)
    for name, sources in asyncio.run(_setup(args.url, hub, options)):
        print(f"  stream {name:<24} sources {sources} site stream(s)")
    print(f"the hub at {args.url} keeps its streams; run this again when a site joins")
    return 0


def add_commands(sub: Any) -> None:
    """Add ``federation init``, ``add-site`` and ``setup-hub`` to the ``fedhub`` subcommands."""
    fed = sub.add_parser(
        "federation",
        help="generate the NATS configs of a federation",
        epilog=examples("fedhub federation init configs/federation.toml --out federation"),
    )
    fsub = fed.add_subparsers(dest="federation_command", required=True, metavar="ACTION")
    init = fsub.add_parser(
        "init",
        help="write every party's configs, credentials and TLS from federation.toml",
        epilog=examples("fedhub federation init configs/federation.toml --out federation"),
    )
    init.add_argument("config", type=Path, metavar="federation.toml")
    init.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    init.set_defaults(func=cmd_init)
    add = fsub.add_parser(
        "add-site",
        help="add site NAME: rewrite the hub's configs, write only the new site's folder",
        epilog=examples(
            "fedhub federation add-site configs/federation.toml awi --site-key site-awi.pub "
            "--out federation"
        ),
    )
    add.add_argument("config", type=Path, metavar="federation.toml")
    add.add_argument("name", metavar="NAME", help="the new site's name")
    add.add_argument(
        "--site-key",
        type=Path,
        required=True,
        metavar="FILE",
        help="the site's public key file (fedhub keys show site:NAME --json)",
    )
    add.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="the folder `init` wrote"
    )
    add.add_argument("--hub", help="hub cluster its leaf connects to (default: the first)")
    add.add_argument("--host", help="address of its leaf server")
    add.add_argument("--client-port", type=int, help="client port of its leaf server")
    add.add_argument("--store-dir", help="JetStream store of its leaf server")
    for role in ("nodes", "callers", "operators", "auditors"):
        add.add_argument(f"--{role}", metavar="A,B", help=f"comma-separated {role}")
    add.set_defaults(func=cmd_add_site)
    setup = fsub.add_parser(
        "setup-hub",
        help="create or update the hub's streams (event copies, directory) from DIR",
        epilog=examples("fedhub federation setup-hub federation --url tls://hub.example.org:4222"),
    )
    setup.add_argument(
        "dir", type=Path, metavar="DIR", help="the folder `init` wrote, or its hub/ folder"
    )
    setup.add_argument("--url", required=True, help="a hub server's client URL (tls://host:4222)")
    setup.add_argument(
        "--creds", type=Path, metavar="FILE", help="the hub admin's NKey (hub/credentials/admin.nk)"
    )
    setup.add_argument(
        "--ca", type=Path, metavar="FILE", help="CA certificate (a hub server's tls/ca.pem)"
    )
    setup.set_defaults(func=cmd_setup_hub)
