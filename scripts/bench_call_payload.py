"""The full call round trip of a large payload, for ``scripts/bench_payload.py``.

A NetCDF file at geomar goes through ``fedhub call hereon.payload.identity da=@FILE
--out BACK`` (the CLI in a process of its own, file to file), across the hub to a
``fedhub-node run`` process at hereon that opens it lazily, returns it, logs, stores and
streams the result back: encrypted, logged, stored, returned. The peak RSS of the CLI and
of the node is each process's own high-water mark (``VmHWM`` in ``/proc/<pid>/status``,
read every 20 ms while it runs; :class:`PeakRss`). Not ``os.wait4``'s ``ru_maxrss``: Linux
carries the peak of the process that forked across ``exec``, so a child of this benchmark
(which holds the payload it wrote) would report the benchmark's own peak. The time is the
CLI process's, start to exit: at a few MiB its start (imports, connecting; about half a
second) dominates, which is why the targets are set at 100 MiB and 1 GiB.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hub.cli_keys import vouch_record
from hub.keys import KeyStore
from hub.nats import LocalFederation
from hub.netcdf3 import write_netcdf3
from node.bootstrap import open_log
from node.config import NodeConfig, load_config

__all__ = ["CallBench", "write_netcdf_payload"]

SITE, CALLER_SITE, CALLER = "hereon", "geomar", "bench@geomar"
ADDRESS = f"{SITE}.payload.identity"
MODULE_SOURCE = '''"""Returns its argument: the call benchmark's payload goes there and back."""

import xarray as xr


def identity(da: xr.DataArray) -> xr.DataArray:
    """Return ``da`` unchanged (opened lazily from the node's spool file)."""
    return da
'''


def write_netcdf_payload(path: Path, size: int) -> None:
    """A NetCDF file of about ``size`` bytes of random float64."""
    values = np.random.default_rng(8).random(max(1, size // 8))
    write_netcdf3(xr.DataArray(values, dims=("x",), name="v"), path)  # as xarray would


def _hwm_kib(pid: int) -> int | None:
    """The peak RSS (KiB) of a running process; None once it has exited."""
    try:
        with Path(f"/proc/{pid}/status").open() as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None  # a zombie: its memory is gone


class PeakRss:
    """The peak RSS of processes, sampled from ``/proc/<pid>/status`` in a thread.

    ``VmHWM`` only grows, so the last reading before a process exits is its peak (up to
    what it reached in its last 20 ms, when it is tearing down).
    """

    def __init__(self, interval: float = 0.02) -> None:
        self._interval = interval
        self._kib: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def watch(self, pid: int) -> None:
        """Start sampling ``pid`` (it must be alive)."""
        self._kib.setdefault(pid, 0)
        self.sample()

    def sample(self) -> None:
        """Read every watched process now."""
        for pid in list(self._kib):
            kib = _hwm_kib(pid)
            if kib is not None:
                self._kib[pid] = max(self._kib[pid], kib)

    def mib(self, pid: int) -> float:
        """The peak of ``pid`` in MiB, as last read."""
        return self._kib.get(pid, 0) / 1024

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def close(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


def _cpu_ticks(pid: int) -> int:
    """User and system CPU of a process so far, in clock ticks."""
    with Path(f"/proc/{pid}/stat").open() as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _until_idle(pid: int, timeout: float) -> None:
    """Wait until ``pid`` used no CPU for half a second (its work is done)."""
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        ticks = _cpu_ticks(pid)
        if ticks == last:
            return
        last = ticks
        time.sleep(0.5)


def _wait(proc: subprocess.Popen[bytes], timeout: float, rss: PeakRss) -> tuple[int, float]:
    """Wait for ``proc`` (killed after ``timeout``), sampling its RSS up to its exit; its
    exit code and the CPU seconds it used (its own, all threads)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage.ru_utime + usage.ru_stime
        rss.sample()
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.02)


class CallBench:
    """Keys, node config and module of the call round trip (made once per run)."""

    def __init__(self, root: Path, fed: LocalFederation) -> None:
        self.root = root
        store = KeyStore(root / "keys")
        pairs = {i: store.create(i) for i in (f"site:{SITE}", f"site:{CALLER_SITE}", CALLER)}
        signed = vouch_record(pairs[f"site:{CALLER_SITE}"], store.public(CALLER))
        (root / "caller.json").write_text(json.dumps(signed.model_dump()))
        (root / "payload_module.py").write_text(MODULE_SOURCE)
        lines = [
            f"users = {json.dumps([str(root / 'caller.json')])}",
            "[node]",
            f'site = "{SITE}"',
            'name = "n1"',
            f"data_dir = {json.dumps(str(root / 'node'))}",
            f"key_home = {json.dumps(str(store.home))}",
            "[nats]",
            f"url = {json.dumps(fed.site_url(SITE))}",
            "[log]",
            'level = "warning"',
            "[[modules]]",
            'name = "payload"',
            f"path = {json.dumps(str(root / 'payload_module.py'))}",
            "[[grants]]",
            f'principal = "{CALLER}"',
            'module = "payload"',
            'functions = ["identity"]',
            "[[trust]]",
            f'site = "{CALLER_SITE}"',
            f"key = {json.dumps(str(store.dir / 'site%3Ageomar.pub'))}",
        ]
        path = root / "hereon-n1.toml"
        path.write_text("\n".join(lines) + "\n")
        self.cfg: NodeConfig = load_config(path)
        open_log(self.cfg, create=True).close()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_")}
        self.env.update(
            FEDHUB_HOME=str(store.home),
            FEDHUB_URL=fed.site_url(CALLER_SITE),
            FEDHUB_IDENTITY=CALLER,
            # the CLI process itself reads, seals, sends and writes: its peak RSS is the
            # client's (a resident agent would do the work in a process not measured here)
            FEDHUB_AGENT="off",
        )

    def _spawn_node(self) -> subprocess.Popen[bytes]:
        assert self.cfg.source is not None
        status = self.cfg.node.data_dir / "status.json"
        status.unlink(missing_ok=True)
        self.cfg.node.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.cfg.node.data_dir / "node.out").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "run", "--config", str(self.cfg.source)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + 30
        while not status.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the node did not start: {self._tail()}")
            time.sleep(0.05)
        return proc

    def _tail(self) -> str:
        return (self.cfg.node.data_dir / "node.out").read_text()[-2000:]

    def round_trip(self, source: Path, back: Path, *, compress: bool = False) -> dict[str, Any]:
        """One call of ``source`` there and back; seconds and both peak RSS (MiB)."""
        node = self._spawn_node()
        try:
            args = ["call", ADDRESS, f"da=@{source}", "--out", str(back), "--no-progress"]
            args += ["--timeout", "3600"] + (["--compress"] if compress else [])
            # the first call also fetches the module info: ask for it before timing
            warm = subprocess.run(
                [sys.executable, "-m", "hub.cli", "ls", f"{SITE}.payload"],
                env=self.env,
                capture_output=True,
                check=False,
            )
            if warm.returncode != 0:
                raise RuntimeError(f"the module is not reachable: {warm.stderr.decode()}")
            rss = PeakRss()
            rss.watch(node.pid)
            node_ticks = _cpu_ticks(node.pid)
            started = time.monotonic()
            cli = subprocess.Popen(
                [sys.executable, "-m", "hub.cli", *args],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            rss.watch(cli.pid)
            code, cli_cpu = _wait(cli, 3600, rss)
            seconds = time.monotonic() - started
            rss.sample()
            if code != 0:
                err = cli.stderr.read().decode() if cli.stderr else ""
                raise RuntimeError(f"the call failed ({code}): {err[-2000:]}")
            _until_idle(node.pid, 60)  # it may still be storing the result
            node_cpu = (_cpu_ticks(node.pid) - node_ticks) / os.sysconf("SC_CLK_TCK")
            cli_rss, node_rss = rss.mib(cli.pid), rss.mib(node.pid)
            rss.close()
        finally:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        return {
            "seconds": seconds,
            "client_peak_rss_mib": cli_rss,
            "node_peak_rss_mib": node_rss,
            "client_cpu_s": cli_cpu,
            "node_cpu_s": node_cpu,
        }
