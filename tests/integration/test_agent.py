"""The resident agent runs ``fedhub call`` for the user's own command lines, exactly as the
CLI would in-process, and keeps everyone else out.

Each test has a dev node of its own (``fedhub serve``: a real nats-server and node) and so a
key store home and an agent of its own; the agent is stopped by its pid in teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.terminal import run_on_terminal

from hub import agent_client
from hub.keys import KeyStore
from hub.serve import DevNode, start_dev_node

pytestmark = pytest.mark.slow

MODULE = '''
import time

from hub.progress import Progress


def slow(steps: int = 400, progress: Progress | None = None) -> int:
    """Count slowly (0.05 s a step), stopping when cancelled."""
    for step in range(steps):
        if progress is not None:
            if progress.cancelled:
                break
            progress.report((step + 1) / steps, f"step {step + 1} of {steps}")
        time.sleep(0.05)
    return steps


def echo(x: int) -> int:
    """x, back."""
    return x


def count(items: list[int]) -> int:
    """How many items."""
    return len(items)
'''

FEDHUB = [sys.executable, "-m", "hub.cli"]


class Site:
    """A dev node and the environment of a person calling it through their agent."""

    def __init__(self, node: DevNode) -> None:
        self.node = node
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_")}
        self.env.update(FEDHUB_HOME=str(node.home), FEDHUB_AGENT="on")
        self.env.pop("XDG_RUNTIME_DIR", None)
        folder = agent_client.agent_dir(self.env)
        assert folder is not None
        self.folder = Path(folder)

    def fedhub(
        self, *args: str, cwd: Path | None = None, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*FEDHUB, *args],
            env={**self.env, **env},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def status(self) -> dict[str, object] | None:
        run = self.fedhub("agent", "status", "--json")
        return json.loads(run.stdout) if run.returncode == 0 else None

    def pid(self) -> int | None:
        try:
            return int((self.folder / "agent.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None


def gone(pid: int, within: float = 15.0) -> bool:
    """Whether process ``pid`` has ended within ``within`` seconds (it is not our child)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    (tmp_path / "bench.py").write_text(MODULE)
    node = start_dev_node(tmp_path / "bench.py")
    here = Site(node)
    try:
        yield here
    finally:
        pid = here.pid()
        if pid is not None:  # stopped by its pid, never by name
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            assert gone(pid), f"agent {pid} did not stop"
        node.stop()


def started(site: Site) -> dict[str, object]:
    run = site.fedhub("agent", "start")
    assert run.returncode == 0, run.stderr
    status = site.status()
    assert status is not None
    return status


def test_a_call_through_the_agent_prints_what_the_cli_prints_with_paths_of_the_callers_cwd(
    site: Site, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "items.json").write_text("[1, 2, 3]")
    before = started(site)
    assert before["commands_run"] == 0
    argv = ["call", "dev.bench.count", "items=@items.json", "--out", "n.json"]
    through = site.fedhub(*argv, cwd=work)
    assert through.returncode == 0, through.stderr
    assert json.loads((work / "n.json").read_text()) == 3
    (work / "n.json").unlink()
    here = site.fedhub(*argv, cwd=work, FEDHUB_AGENT="off")
    assert here.returncode == 0, here.stderr
    assert json.loads((work / "n.json").read_text()) == 3
    shown = [line for line in through.stderr.splitlines() if not line.startswith("request ")]
    assert shown == [line for line in here.stderr.splitlines() if not line.startswith("request ")]
    assert shown == ["wrote n.json"]
    after = site.status()
    assert after is not None and after["commands_run"] == 1 and after["clients"] == 1
    again = site.fedhub("call", "dev.bench.echo", "x=7", cwd=work)
    assert (again.returncode, again.stdout) == (0, "7\n")
    assert site.status()["clients"] == 1  # type: ignore[index]  # the same warm client
    # the agent's folder holds its socket, pid, lock and log: no key, no result
    assert sorted(p.name for p in site.folder.iterdir()) == [
        "agent.lock",
        "agent.log",
        "agent.pid",
        "agent.sock",
    ]
    assert site.folder.stat().st_mode & 0o777 == 0o700


def test_fetch_through_the_agent_gets_a_kept_result_again(site: Site, tmp_path: Path) -> None:
    started(site)
    call = site.fedhub("call", "dev.bench.echo", "x=41")
    assert call.returncode == 0, call.stderr
    request_id = call.stderr.split()[1]
    fetched = site.fedhub("fetch", "--site", "dev", request_id, "--out", "r.json", cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stderr.splitlines() == ["wrote r.json"]
    assert json.loads((tmp_path / "r.json").read_text()) == 41
    assert site.status()["commands_run"] == 2  # type: ignore[index]


def test_commands_running_at_once_each_get_their_own_output(site: Site, tmp_path: Path) -> None:
    started(site)
    procs = {
        steps: subprocess.Popen(
            [*FEDHUB, "call", "dev.bench.slow", f"steps={steps}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=site.env,
        )
        for steps in (6, 7, 8, 9)
    }
    ids = set()
    for steps, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        assert (proc.returncode, out) == (0, f"{steps}\n"), err
        (line,) = err.splitlines()
        ids.add(line.split()[1])
    assert len(ids) == len(procs)
    status = site.status()
    assert status is not None and status["commands_run"] == len(procs)
    assert status["clients"] == 1  # one warm client served them all


def test_errors_through_the_agent_keep_their_line_and_exit_code(site: Site, tmp_path: Path) -> None:
    started(site)
    cases = [
        ("call", "dev.bench.nothere", "x=1"),
        ("call", "dev.bench.echo", "x=@missing.json"),
        ("call", "dev.bench.echo", "--no-such-option"),
        ("call", "not-an-address", "x=1"),
    ]
    for argv in cases:
        through = site.fedhub(*argv, cwd=tmp_path)
        here = site.fedhub(*argv, cwd=tmp_path, FEDHUB_AGENT="off")
        assert (through.returncode, through.stdout, through.stderr) == (
            here.returncode,
            here.stdout,
            here.stderr,
        ), argv
        last = through.stderr.splitlines()[-1]
        assert through.returncode in (1, 2) and "error: " in last, argv
    assert site.status()["commands_run"] == len(cases)  # type: ignore[index]


def test_the_first_call_runs_in_process_and_leaves_an_agent_for_the_next(site: Site) -> None:
    assert site.status() is None
    first = site.fedhub("call", "dev.bench.echo", "x=1")
    assert (first.returncode, first.stdout) == (0, "1\n"), first.stderr
    deadline = time.monotonic() + 30
    status = site.status()
    while status is None and time.monotonic() < deadline:
        time.sleep(0.1)
        status = site.status()
    assert status is not None, "no agent was started in the background"
    assert status["commands_run"] == 0
    second = site.fedhub("call", "dev.bench.echo", "x=2")
    assert (second.returncode, second.stdout) == (0, "2\n"), second.stderr
    assert site.status()["commands_run"] == 1  # type: ignore[index]


def test_a_removed_or_rotated_key_stops_working_through_the_agent_at_once(site: Site) -> None:
    started(site)
    assert site.fedhub("call", "dev.bench.echo", "x=1").returncode == 0
    keys = site.node.home / "keys"
    (key,) = keys.glob("*@*.key")
    public = key.with_suffix(".pub")
    saved, saved_public = key.read_bytes(), public.read_bytes()
    key.unlink()
    run = site.fedhub("call", "dev.bench.echo", "x=1")
    here = site.fedhub("call", "dev.bench.echo", "x=1", FEDHUB_AGENT="off")
    assert run.returncode == 1 and "no person key" in run.stderr, run.stderr
    assert (run.returncode, run.stderr) == (here.returncode, here.stderr)
    # a new key under the same name: the node knows only the old one and refuses it
    identity = key.stem
    made = site.fedhub("keys", "new", identity, FEDHUB_AGENT="off")
    assert made.returncode == 0, made.stderr
    run = site.fedhub("call", "dev.bench.echo", "x=1")
    assert run.returncode == 1 and "Unauthorized" in run.stderr, run.stderr
    key.write_bytes(saved)  # the old key again: works again
    key.chmod(0o600)
    public.write_bytes(saved_public)
    run = site.fedhub("call", "dev.bench.echo", "x=1")
    assert run.returncode == 0, run.stderr


def test_the_progress_bar_is_drawn_live_on_the_callers_terminal(site: Site) -> None:
    started(site)
    code, out, text = run_on_terminal([*FEDHUB, "call", "dev.bench.slow", "steps=10"], site.env)
    assert (code, out) == (0, b"10\n")
    assert "step 1 of 10" in text and "step 10 of 10" in text
    assert "[####################] 100%" in text
    assert text.endswith("\r\x1b[K")  # the bar is erased at the end
    assert site.status()["commands_run"] == 1  # type: ignore[index]  # drawn by the agent


def _slow_call(site: Site) -> tuple[subprocess.Popen[str], str]:
    """``fedhub call dev.bench.slow`` started, once its call is on its way (its request id
    printed)."""
    proc = subprocess.Popen(
        [*FEDHUB, "call", "dev.bench.slow"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=site.env,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # "request <id>": the call is on its way
    assert first.startswith("request "), first
    return proc, first.split()[1]


def test_ctrl_c_through_the_agent_cancels_the_call_at_the_node_and_exits_130(
    site: Site,
) -> None:
    started(site)
    proc, request_id = _slow_call(site)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (130, ""), err
    assert err.splitlines() == [f"interrupted; asked dev to cancel request {request_id}"]
    state: dict[str, object] = {}
    for _ in range(100):  # the cancellation lands at the node's next progress step
        run = site.fedhub("status", "--site", "dev", "--json", "--", request_id)
        assert run.returncode == 0, run.stderr
        state = json.loads(run.stdout)
        if state["state"] not in ("received", "accepted", "running"):
            break
        time.sleep(0.1)
    assert (state["state"], state["code"]) == ("failed", "cancelled")
    assert site.status()["commands_run"] == 1  # type: ignore[index]  # it ran in the agent


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_wherever_it_lands_while_relaying_ends_the_command_with_130_not_a_traceback(
    site: Site, presses: int
) -> None:
    # KeyboardInterrupt could land between two steps of the relay, outside any try: the
    # relay has a SIGINT handler of its own instead (one press: cancel; two: stop now)
    started(site)
    for delay in (0.0, 0.002, 0.01, 0.05):
        proc, _ = _slow_call(site)
        time.sleep(delay)
        for _ in range(presses):
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert (proc.returncode, out) == (130, ""), err
        assert "Traceback" not in err, err


def test_a_passphrase_comes_with_each_command_and_a_wrong_one_never_rides_on_a_right_one(
    site: Site,
) -> None:
    keys = site.node.home / "keys"
    (key,) = keys.glob("*@*.key")
    store = KeyStore(site.node.home)
    store.save(store.load(key.stem), passphrase="right horse")
    started(site)
    right = site.fedhub("call", "dev.bench.echo", "x=1", FEDHUB_PASSPHRASE="right horse")
    assert (right.returncode, right.stdout) == (0, "1\n"), right.stderr
    for env in ({"FEDHUB_PASSPHRASE": "wrong horse"}, {}):
        through = site.fedhub("call", "dev.bench.echo", "x=1", **env)
        here = site.fedhub("call", "dev.bench.echo", "x=1", FEDHUB_AGENT="off", **env)
        assert through.returncode == 1 and "KeyStoreError" in through.stderr, through.stderr
        assert (through.returncode, through.stderr) == (here.returncode, here.stderr)
    assert site.status()["commands_run"] == 3  # type: ignore[index]
    assert "right horse" not in (site.folder / "agent.log").read_text()


def test_the_agent_exits_after_its_idle_time(site: Site) -> None:
    run = site.fedhub("agent", "start", "--idle", "1")
    assert run.returncode == 0, run.stderr
    pid = site.pid()
    assert pid is not None and gone(pid)
    assert not (site.folder / agent_client.SOCKET_NAME).exists()


def test_an_agent_of_another_build_hands_the_command_back_and_steps_aside(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    started(site)
    pid = site.pid()
    assert pid is not None
    monkeypatch.setattr(agent_client, "build_id", lambda: "0.0.0:1")  # an upgraded CLI
    request = agent_client.encode_request(["call", "dev.bench.echo", "x=1"], cwd="/", env={})
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(15)
        sock.connect(str(site.folder / agent_client.SOCKET_NAME))
        sock.sendall(request)
        answer = sock.recv(4096)
    assert answer[:1] == b"F", answer
    assert gone(pid)


def test_the_agent_exits_when_its_socket_is_removed(site: Site) -> None:
    started(site)
    pid = site.pid()
    assert pid is not None
    (site.folder / agent_client.SOCKET_NAME).unlink()
    assert gone(pid)


def test_garbage_and_oversized_requests_get_one_line_and_the_agent_serves_on(site: Site) -> None:
    started(site)
    path = str(site.folder / agent_client.SOCKET_NAME)
    for raw in (
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        agent_client.MAGIC + (10 * agent_client.MAX_REQUEST).to_bytes(4, "big"),
        agent_client.MAGIC + (3).to_bytes(4, "big") + b"Z1\0",
        agent_client.MAGIC + (4).to_bytes(4, "big") + b"Orun",
    ):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(15)
            sock.connect(path)
            sock.sendall(raw)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        assert answer[:1] == b"!", answer
        line = answer[5:].decode()
        assert line.startswith("fedhub agent: malformed request") and line.count("\n") == 1
    run = site.fedhub("call", "dev.bench.echo", "x=5")
    assert (run.returncode, run.stdout) == (0, "5\n"), run.stderr


def test_the_agent_refuses_a_folder_others_may_enter_and_replaces_a_stale_socket(
    site: Site,
) -> None:
    site.folder.mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(site.folder / agent_client.SOCKET_NAME))
    stale.close()  # a socket file with no agent behind it
    assert site.status() is None
    site.folder.chmod(0o755)
    refused = subprocess.run(
        [sys.executable, "-m", "hub.agent", str(site.folder)],
        env=site.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1
    assert "is not private (mode 0755" in refused.stderr
    start = site.fedhub("agent", "start")
    assert start.returncode == 1 and "not a private directory" in start.stderr, start.stderr
    run = site.fedhub("call", "dev.bench.echo", "x=3")  # nor does the CLI use it
    assert (run.returncode, run.stdout) == (0, "3\n")
    assert site.status() is None and site.pid() is None
    site.folder.chmod(0o700)
    status = started(site)
    assert status["socket"] == str(site.folder / agent_client.SOCKET_NAME)
    assert (site.folder / agent_client.SOCKET_NAME).stat().st_mode & 0o777 == 0o600
