"""The full call round trip of a large payload, for ``scripts/bench_payload.py``.

A NetCDF file at geomar goes through ``fedhub call hereon.payload.identity da=@FILE
--out BACK`` (file to file, paths relative to the CLI's working directory), across the hub
to a ``fedhub-node run`` process at hereon that opens it lazily, returns it, logs, stores
and streams the result back: encrypted, logged, stored, returned. Two ways, each with a
node process of its own and one 1 KiB warm-up call first:

* **through the resident agent** (docs/agent.md; what a user's ``fedhub call`` does by
  default): a fresh agent is started for the call (``fedhub agent start``) and stopped
  after it. The CLI process only hands it the command line, working directory and
  environment and relays its output; the agent reads ``da=@FILE``, seals and uploads it,
  and receives the result into ``--out`` itself. The warm-up call is checked to have run
  there (the CLI, under ``-X importtime``, never imports ``hub.client``; the agent's
  ``commands_run`` went up), and so is the timed one (``commands_run``);
* **by the CLI alone** (``FEDHUB_AGENT=off``): one process imports fedhub, connects, and
  moves the bytes.

The peak RSS of every process is its own high-water mark (``VmHWM`` in
``/proc/<pid>/status``, read every 20 ms while it runs; :class:`PeakRss`). Not
``os.wait4``'s ``ru_maxrss``: Linux carries the peak of the process that forked across
``exec``, so a child of this benchmark (which holds the payload it wrote) would report the
benchmark's own peak. The agent's covers its whole life: its start, imports, connection,
the warm-up call and the timed one. The time is the CLI process's, start to exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from hub import agent_client
from hub.cli_keys import vouch_record
from hub.keys import KeyStore
from hub.nats import LocalFederation
from hub.netcdf3 import write_netcdf3
from node.bootstrap import open_log
from node.config import NodeConfig, load_config

__all__ = ["CallBench", "same_file", "write_netcdf_payload"]

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


def _status_kib(pid: int, field: str = "VmHWM:") -> int | None:
    """A size (KiB) from ``/proc/<pid>/status``: by default the peak RSS (``VmHWM``);
    None once the process has exited."""
    try:
        with Path(f"/proc/{pid}/status").open() as status:
            for line in status:
                if line.startswith(field):
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
            kib = _status_kib(pid)
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
        )  # no FEDHUB_AGENT: round_trip sets it for the call without the agent
        folder = agent_client.agent_dir(self.env)
        if folder is None:
            raise RuntimeError("the agent's socket path would be too long: set a shorter TMPDIR")
        self.agent_folder = folder

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

    def _stop_node(self, node: subprocess.Popen[bytes]) -> None:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(60)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()

    def _fedhub(self, *args: str) -> None:
        """Run ``fedhub ARGS`` with the benchmark's environment; RuntimeError if it fails."""
        proc = subprocess.run(
            [sys.executable, "-m", "hub.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"fedhub {' '.join(args)} failed: {proc.stderr[-2000:]}")

    def _commands_run(self) -> int:
        """How many commands the running agent has run (its ``status``)."""
        answer = agent_client.ask(self.agent_folder, "status")
        if answer is None:
            raise RuntimeError(f"no agent answers in {self.agent_folder}")
        return int(json.loads(answer)["commands_run"])

    @contextlib.contextmanager
    def _agent(self) -> Iterator[int]:
        """A fresh resident agent for the benchmark's key store home (``fedhub agent
        start``), its pid read from its folder's ``agent.pid``; stopped on the way out."""
        if agent_client.ask(self.agent_folder, "status") is not None:
            raise RuntimeError(
                f"an agent serves {self.agent_folder} already: its peak RSS would not be "
                "this call's alone"
            )
        self._fedhub("agent", "start", "--idle", "600")
        pid = int(Path(self.agent_folder, "agent.pid").read_text())
        try:
            yield pid
        finally:
            try:
                self._fedhub("agent", "stop")
            except RuntimeError as exc:  # do not hide what ended the block
                print(f"warning: {exc}", file=sys.stderr)

    def round_trip(
        self, source: Path, back: Path, *, agent: bool, compress: bool = False
    ) -> dict[str, Any]:
        """One call of ``source`` there and back, into ``back``: through a fresh resident
        agent (``agent``) or by the CLI alone (``FEDHUB_AGENT=off``), each after one small
        warm-up call the same way. Seconds, and the CPU and peak RSS of each process."""
        node = self._spawn_node()
        env = self.env if agent else {**self.env, "FEDHUB_AGENT": "off"}
        rss = PeakRss()
        try:
            rss.watch(node.pid)
            with self._agent() if agent else contextlib.nullcontext(None) as agent_pid:
                if agent_pid is not None:
                    rss.watch(agent_pid)
                self._warm_up(source.parent, env, agent_pid)
                return self._timed(source, back, env, node.pid, agent_pid, rss, compress)
        finally:
            rss.close()
            self._stop_node(node)

    def _warm_up(self, work: Path, env: dict[str, str], agent_pid: int | None) -> None:
        """One call of a 1 KiB file, the way the timed one goes (the node's module info
        asked, the agent's client connected). Through the agent, the CLI runs under ``-X
        importtime`` and must import no ``hub.client``: the agent, not the CLI, did it."""
        warm, warm_back = work / "warm.nc", work / "warm-back.nc"
        write_netcdf_payload(warm, 1024)
        before = self._commands_run() if agent_pid is not None else 0
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "hub.cli", "call", ADDRESS,
             f"da=@{warm.name}", "--out", warm_back.name, "--no-progress"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"the warm-up call failed: {proc.stderr[-2000:]}")
        if not same_file(warm, warm_back):
            raise RuntimeError("the warm-up call returned other bytes than it sent")
        if agent_pid is not None:
            imported = {
                line.rsplit("|", 1)[-1].strip()
                for line in proc.stderr.splitlines()
                if line.startswith("import time:")
            }
            if "hub.client" in imported or self._commands_run() != before + 1:
                raise RuntimeError("the warm-up call ran in the CLI, not in the agent")
        warm.unlink()
        warm_back.unlink()

    def _timed(
        self,
        source: Path,
        back: Path,
        env: dict[str, str],
        node_pid: int,
        agent_pid: int | None,
        rss: PeakRss,
        compress: bool,
    ) -> dict[str, Any]:
        """The measured call, from ``source``'s folder with paths relative to it (the
        agent gets the CLI's working directory and resolves them there)."""
        args = ["call", ADDRESS, f"da=@{source.name}", "--out", back.name, "--no-progress"]
        args += ["--timeout", "3600"] + (["--compress"] if compress else [])
        before = self._commands_run() if agent_pid is not None else 0
        agent_rss = _status_kib(agent_pid, "VmRSS:") if agent_pid is not None else None
        node_ticks = _cpu_ticks(node_pid)
        agent_ticks = _cpu_ticks(agent_pid) if agent_pid is not None else 0
        started = time.monotonic()
        cli = subprocess.Popen(
            [sys.executable, "-m", "hub.cli", *args],
            cwd=source.parent,
            env=env,
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
        _until_idle(node_pid, 60)  # it may still be storing the result
        tick = os.sysconf("SC_CLK_TCK")
        out: dict[str, Any] = {
            "seconds": seconds,
            "cli_peak_rss_mib": rss.mib(cli.pid),
            "node_peak_rss_mib": rss.mib(node_pid),
            "cli_cpu_s": cli_cpu,
            "node_cpu_s": (_cpu_ticks(node_pid) - node_ticks) / tick,
        }
        if agent_pid is not None:
            if self._commands_run() != before + 1:
                raise RuntimeError("the call did not go through the agent")
            out |= {
                "agent_peak_rss_mib": rss.mib(agent_pid),
                "agent_rss_before_call_mib": (agent_rss or 0) / 1024,
                "agent_cpu_s": (_cpu_ticks(agent_pid) - agent_ticks) / tick,
            }
        return out


def same_file(a: Path, b: Path, block: int = 1 << 20) -> bool:
    """Whether two files hold the same bytes (read a block at a time)."""
    if not b.exists() or a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as fa, b.open("rb") as fb:
        while chunk := fa.read(block):
            if chunk != fb.read(block):
                return False
    return True
