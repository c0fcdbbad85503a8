"""The local federation demo (run it with ``scripts/demo``).

Two research centers, hereon and geomar, joined through a hub — all on this machine:

1. start a hub and one leaf NATS server per site (each its own JetStream domain);
2. create keys: the sites, hereon's node, two people at geomar; geomar vouches for its
   people, hereon pins geomar's site key and grants klaus@geomar its climate module;
3. start hereon's node (``fedhub-node run``) serving configs/modules/climate.py;
4. klaus calls ``hereon.climate.compute_sum`` from geomar with a NetCDF file
   (``fedhub call``) and fetches the kept result again (``fedhub fetch``), then calls
   ``regional_mean`` from Python with a live progress report;
5. eve@geomar, who has no grant, is refused;
6. the federation-wide directory: hereon grants eve live (no restart) and her call runs;
   then her home site geomar revokes her key, and hereon refuses her next call within
   moments (the record travels geomar -> hub -> hereon and is checked against geomar's
   pinned key);
7. the node stops; its log is exported and audited (clean), then a tampered copy is
   audited (caught, naming the event).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hub.client import Client
from hub.cliutil import configure_logging
from hub.clock import now
from hub.directory import record_token
from hub.errors import UnauthorizedError
from hub.keys import KeyStore
from hub.nats import LocalFederation, connect, start_local_federation
from hub.records import GrantRecord, Revocation, sign_record
from hub.subjects import admin_subject, directory_subject
from node.admin import admin_message

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def run(
    *args: str, env: dict[str, str], check: bool = True, quiet: bool = False
) -> subprocess.CompletedProcess[str]:
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    if not quiet:
        print(f"$ {shown}", flush=True)
    proc = subprocess.run([str(BIN / args[0]), *args[1:]], env=env, text=True, capture_output=True)
    out = (proc.stdout + proc.stderr).rstrip()
    if out and not quiet:
        print("  " + out.replace("\n", "\n  "), flush=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo step failed (exit {proc.returncode}): {shown}")
    return proc


async def python_call(url: str, home: Path, auth: dict[str, Any]) -> None:
    print("$ python: Client.call('hereon.climate.regional_mean', da=..., on_progress=...)")
    da = xr.DataArray(np.linspace(0.0, 1.0, 400).reshape(20, 20), dims=("lat", "lon"))

    def show(fraction: float | None, message: str) -> None:
        bar = "#" * int(20 * (fraction or 0))
        print(f"  progress [{bar:<20}] {message}", flush=True)

    async with await Client.connect(url, "klaus@geomar", home=home, **auth) as fed:
        mean = await fed.call("hereon.climate.regional_mean", da=da, steps=4, on_progress=show)
    print(f"  result: {mean:.4f} (local check: {float(da.mean()):.4f})")


async def directory_demo(fed: LocalFederation, home: Path, da: Path) -> None:
    """Step 6: a live grant at hereon, then a revocation at eve's home site."""
    store = KeyStore(home)
    eve = "eve@geomar"
    grant = sign_record(
        GrantRecord(
            site="hereon",
            principal=eve,
            module="climate",
            function="compute_sum",
            serial=1,
            time=now(),
        ),
        store.load("site:hereon").signing_key,
    )
    print("$ (hereon's operator) grant eve@geomar climate.compute_sum, signed by site:hereon")
    operator = await connect(fed.site_url("hereon"), **fed.client_options("hereon", "operator"))
    try:
        await operator.request(admin_subject("hereon"), admin_message("grant", grant), timeout=10)
    finally:
        await operator.close()
    auth = fed.caller_auth(eve)
    async with await Client.connect(fed.site_url("geomar"), eve, home=home, **auth) as client:
        values = xr.open_dataarray(da).load()
        total = await client.call("hereon.climate.compute_sum", da=values, dim="time")
        print(f"  eve's call runs now, no restart: {total.values.tolist()}")
        revocation = sign_record(
            Revocation(identity=eve, kid=store.load(eve).kid, time=now(), reason="left geomar"),
            store.load("site:geomar").signing_key,
        )
        # what geomar's node does with `fedhub-node admin revoke`: its site's directory
        # stream takes the record, the hub copies it to every site
        print("$ (geomar, eve's home site) revoke eve@geomar's key, signed by site:geomar")
        node = await connect(fed.site_url("geomar"), **fed.client_options("geomar", "node"))
        start = time.monotonic()
        try:
            token = record_token(revocation)
            await node.jetstream().publish(
                directory_subject("geomar", "revocation", token),
                revocation.model_dump_json().encode(),
                headers={"Nats-Msg-Id": token},
            )
        finally:
            await node.close()
        for _ in range(100):
            try:
                await client.call("hereon.climate.compute_sum", da=values, dim="time")
            except UnauthorizedError as exc:
                took = time.monotonic() - start
                print(f"  hereon refuses eve {took:.2f} s after geomar's revocation: {exc}")
                return
            await asyncio.sleep(0.1)
    raise SystemExit("hereon never heard geomar's revocation")


async def demo(work: Path) -> int:
    home = work / "keys"
    env = {**os.environ, "FEDHUB_HOME": str(home)}
    say("1. a hub and two sites (NATS leaf servers with JetStream domains)")
    fed = await start_local_federation(work / "nats", ("hereon", "geomar"))
    node: subprocess.Popen[str] | None = None
    try:
        print(f"  configs, NKeys and TLS as `fedhub federation init` writes them: {fed.out}")
        print(f"  hub     {fed.hub_url}")
        for site in fed.sites:
            print(f"  {site:<7} {fed.site_url(site)}  (JetStream domain {site!r})")

        say("2. identities: sites vouch for their people, hereon grants klaus a module")
        for ident in ("site:hereon", "site:geomar", "node:hereon/n1", "klaus@geomar", "eve@geomar"):
            run("fedhub", "keys", "new", ident, env=env)
        run(
            "fedhub",
            "keys",
            "vouch",
            "klaus@geomar",
            "--site",
            "site:geomar",
            "-o",
            str(work / "klaus.json"),
            env=env,
        )
        run(
            "fedhub",
            "keys",
            "vouch",
            "eve@geomar",
            "--site",
            "site:geomar",
            "-o",
            str(work / "eve.json"),
            env=env,
        )
        config = work / "hereon.toml"
        config.write_text(
            f"""users = ["klaus.json", "eve.json"]   # key records vouched for by their sites

[node]
site = "hereon"
name = "n1"
data_dir = "hereon-n1"
key_home = "keys"

[nats]                         # hereon's leaf server, TLS, this node's own NKey
url = "{fed.site_url("hereon")}"
credentials = "{fed.credentials("hereon", "node", "n1")}"
ca = "{fed.generated.ca}"

[[modules]]
name = "climate"
path = "{ROOT / "configs" / "modules" / "climate.py"}"

[[trust]]                      # geomar's site key, pinned: it vouches for its people
site = "geomar"
key = "keys/keys/site%3Ageomar.pub"

[[grants]]                     # one named person at another center, not everyone there
principal = "klaus@geomar"
module = "climate"
functions = ["*"]
"""
        )
        print(f"  wrote {config.name}")
        run("fedhub-node", "init", "--config", str(config), env=env)

        say("3. hereon's node serves the climate module")
        out = (work / "node.out").open("w")
        node = subprocess.Popen(  # noqa: ASYNC220 - the node outlives this step on purpose
            [str(BIN / "fedhub-node"), "run", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        status = work / "hereon-n1" / "status.json"
        for _ in range(200):
            if status.exists() or node.poll() is not None:
                break
            await asyncio.sleep(0.05)
        if not status.exists():
            raise SystemExit("node did not start:\n" + (work / "node.out").read_text())
        print(f"$ fedhub-node run --config {config.name}   (pid {node.pid})")
        geomar = fed.site_url("geomar")
        cenv = {
            **env,
            "FEDHUB_URL": geomar,
            "FEDHUB_IDENTITY": "klaus@geomar",
            "FEDHUB_CREDS": str(fed.credentials("geomar", "caller", "klaus")),
            "FEDHUB_CA": str(fed.generated.ca),
        }
        run("fedhub", "ls", env=cenv, check=False)

        say("4. klaus@geomar calls hereon.climate.compute_sum with a NetCDF file")
        days = xr.DataArray(
            np.arange(3 * 4, dtype="float64").reshape(3, 4),
            dims=("time", "station"),
            coords={"station": ["list", "sylt", "kiel", "bremen"]},
            name="anomaly",
            attrs={"units": "K"},
        )
        days.to_netcdf(work / "anomaly.nc")
        called = run(
            "fedhub",
            "call",
            "--as",
            "klaus@geomar",
            "hereon.climate.compute_sum",
            "da=@anomaly.nc",
            "dim=time",
            "--out",
            str(work / "sum.nc"),
            env=cenv,
        )
        result = xr.open_dataarray(work / "sum.nc").load()
        print(f"  sum.nc: {result.values.tolist()} {result.attrs.get('units', '')} per station")
        rid = next(
            line.split()[1] for line in called.stderr.splitlines() if line.startswith("request ")
        )
        print("  (later, the result again: hereon kept it sealed for klaus)")
        run(
            "fedhub",
            "fetch",
            "--as",
            "klaus@geomar",
            "--site",
            "hereon",
            "--out",
            str(work / "sum-again.nc"),
            "--",
            rid,
            env=cenv,
        )
        again = xr.open_dataarray(work / "sum-again.nc").load()
        if not again.identical(result):
            raise SystemExit("the fetched result differs from the one the call returned")
        await python_call(geomar, home, fed.caller_auth("klaus@geomar"))

        say("5. eve@geomar has no grant: refused, and the refusal is logged")
        run(
            "fedhub",
            "call",
            "--as",
            "eve@geomar",
            "hereon.climate.compute_sum",
            "da=@anomaly.nc",
            env={**cenv, "FEDHUB_CREDS": str(fed.credentials("geomar", "caller", "eve"))},
            check=False,
        )

        say("6. the federation-wide directory: a live grant, a revocation at the home site")
        await directory_demo(fed, home, work / "anomaly.nc")

        say("7. the node stops; its signed log is exported and audited")
        node.terminate()
        node.wait(timeout=30)
        db = work / "hereon-n1" / "events.db"
        export = work / "hereon-events.jsonl"
        run("fedhub-node", "log", "export", "--db", str(db), "-o", str(export), env=env)
        run("fedhub", "audit", str(export), "--site-key", "site:hereon", env=env)
        lines = export.read_bytes().splitlines(keepends=True)
        target = next(i for i, line in enumerate(lines) if b'"request.completed"' in line)
        lines[target] = lines[target].replace(b'"result_size":', b'"result_size":1', 1)
        tampered = work / "tampered.jsonl"
        tampered.write_bytes(b"".join(lines))
        print(f"  (changed one digit in event {target + 1} of a copy)")
        proc = run(
            "fedhub", "audit", str(tampered), "--site-key", "site:hereon", env=env, check=False
        )
        if proc.returncode != 1:
            raise SystemExit("the tampered log was not caught")
        summary = json.loads(run("fedhub", "audit", str(db), "--json", env=env, quiet=True).stdout)
        say(f"done: {summary['events']} events audited clean; all files in {work}")
        return 0
    finally:
        if node is not None and node.poll() is None:
            node.kill()
        # the CLI's resident agent (docs/agent.md) started by the calls above; its folder
        # is in this demo's key store, which stays behind for a look
        run("fedhub", "agent", "stop", env=env, check=False, quiet=True)
        await fed.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, help="work folder (default: a new temporary one)")
    args = parser.parse_args()
    configure_logging(level="warning")
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # TLS close chatter of nats-py
    work = args.dir or Path(tempfile.mkdtemp(prefix="fedhub-demo-"))
    if args.dir and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    return asyncio.run(demo(work))


if __name__ == "__main__":
    sys.exit(main())
