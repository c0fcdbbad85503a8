"""``fedhub serve FILE.py``: one command to try a module, and nothing of it trusted elsewhere."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.world import World

from hub.nats.server import running_server_pid
from hub.serve import DEV_USER, DevNode, start_dev_node

pytestmark = pytest.mark.slow

MODULE = '''
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def _hidden() -> None:
    pass
'''


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_") or k == "FEDHUB_AGENT"
    }
    env.update(extra)
    return env


def read_lines(proc: subprocess.Popen[str], count: int, timeout: float = 60.0) -> list[str]:
    """The first ``count`` lines of ``proc``'s stdout, waiting at most ``timeout`` s."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buffer = b""
    while buffer.count(b"\n") < count and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buffer += chunk
    lines = buffer.decode().splitlines()
    return [line.strip() for line in lines[:count]]


def fedhub(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_serve_prints_two_lines_that_call_the_module_and_ctrl_c_cleans_up(
    tmp_path: Path,
) -> None:
    (tmp_path / "mymodule.py").write_text(MODULE)
    own_home = tmp_path / "my-keys"  # the user's own key store must stay untouched
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "serve", "mymodule.py"],
        cwd=tmp_path,
        env=clean_env(FEDHUB_HOME=str(own_home)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a shell's foreground job
    )
    try:
        lines = read_lines(proc, 2)
        assert len(lines) == 2, (lines, proc.poll())
        export, call = lines
        assert export.startswith("export FEDHUB_HOME=")
        assert call == "fedhub call dev.mymodule.add a=... b=..."
        dev_home = Path(export.removeprefix("export FEDHUB_HOME="))
        # the two lines, filled in, work from another shell (no URL needed)
        run = fedhub(
            "call",
            "dev.mymodule.add",
            "a=2",
            "b=3",
            "--json",
            env=clean_env(FEDHUB_HOME=str(dev_home)),
        )
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout) == 5
        run = fedhub("ls", "dev.mymodule", env=clean_env(FEDHUB_HOME=str(dev_home)))
        assert "add(a: int, b: int) -> int" in run.stdout, run.stdout + run.stderr
        assert "_hidden" not in run.stdout
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole foreground group
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "trusted by no real site" in err
    assert not dev_home.parent.exists(), "keys and log of dev mode are deleted"
    assert not own_home.exists()


def test_serve_of_a_missing_file_or_a_bad_name_fails_with_one_line(tmp_path: Path) -> None:
    run = fedhub("serve", "nothere.py", env=clean_env(FEDHUB_HOME=str(tmp_path)))
    assert run.returncode == 2 and run.stderr.startswith("error: ArgumentError: no module file")
    (tmp_path / "My-Module.py").write_text(MODULE)
    run = fedhub("serve", str(tmp_path / "My-Module.py"), env=clean_env())
    assert run.returncode == 2, run.stderr
    assert "--name" in run.stderr and len(run.stderr.splitlines()) == 1


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int) -> None:
    """Wait (up to 5 s) until ``pid`` no longer runs."""
    for _ in range(100):
        if not _alive(pid):
            return
        time.sleep(0.05)


def _started(tmp_path: Path) -> tuple[DevNode, Path]:
    """A dev node serving the test module, and the pid file of its embedded server."""
    (tmp_path / "mymodule.py").write_text(MODULE)
    node = start_dev_node(tmp_path / "mymodule.py")
    return node, node.root / "data" / "nats.pid"


def _kill_node(node: DevNode, pid_file: Path) -> int:
    """Kill the node process hard (SIGKILL); the pid of its embedded server."""
    server = running_server_pid(pid_file)
    assert server is not None
    node.process.kill()
    node.process.wait(timeout=10)
    return server


def test_a_dev_node_killed_hard_leaves_no_server_running_once_stopped(tmp_path: Path) -> None:
    # a killed node's embedded server lives on (a real node's next start adopts it with
    # its queued calls); a dev node has no next start, and its folder is deleted
    node, pid_file = _started(tmp_path)
    try:
        server = _kill_node(node, pid_file)
        assert _alive(server), "the server outlives its node"
    finally:
        node.stop()
    _wait_gone(server)
    assert not _alive(server)
    assert not node.root.exists()


def test_a_node_killed_hard_leaves_its_server_to_its_next_start_which_adopts_it(
    tmp_path: Path,
) -> None:
    # the server holds the site's queued calls: the next node on the same data dir takes
    # it over (not a second server on the same store), serves, and stops it when it stops
    node, pid_file = _started(tmp_path)
    env = clean_env(FEDHUB_HOME=str(node.home), FEDHUB_AGENT="off")
    try:
        server = _kill_node(node, pid_file)
        assert _alive(server)
        config = node.root / "dev-node.toml"
        with (tmp_path / "next-node.log").open("wb") as out:
            node.process = subprocess.Popen(
                [sys.executable, "-m", "node.cli", "run", "--config", str(config)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        for _ in range(100):  # until the next node serves
            run = fedhub("call", "dev.mymodule.add", "a=2", "b=3", "--json", env=env)
            if run.returncode == 0:
                break
            time.sleep(0.2)
        assert (run.returncode, run.stdout.strip()) == (0, "5"), run.stderr
        assert running_server_pid(pid_file) == server, "adopted, not started again"
        node.process.send_signal(signal.SIGTERM)
        assert node.process.wait(timeout=30) == 0
        assert not pid_file.exists()
    finally:
        node.stop()
    _wait_gone(server)
    assert not _alive(server), "the node that adopted the server stops it"


@pytest.fixture
def dev_node(tmp_path: Path) -> Iterator[DevNode]:
    (tmp_path / "mymodule.py").write_text(MODULE)
    node = start_dev_node(tmp_path / "mymodule.py")
    try:
        yield node
    finally:
        node.stop()


def test_a_real_site_refuses_the_dev_persons_record_and_calls(
    dev_node: DevNode, tmp_path: Path
) -> None:
    """Hostile: the dev person's record, handed to a real site, is not valid there; a real
    site that even grants you@dev refuses its calls, since it pins no dev site key."""
    world = World(tmp_path / "real")
    cfg = world.node_config("hereon", grants=[(DEV_USER, "climate", "*")])
    # 1. listing the dev record as a user: the real node refuses to start with it
    text = cfg.source.read_text() if cfg.source else ""
    assert cfg.source is not None
    dev_record = dev_node.root / "you.json"
    cfg.source.write_text(text.replace("users = []", f'users = ["{dev_record}"]'))
    run = subprocess.run(
        [sys.executable, "-m", "node.cli", "check", "--config", str(cfg.source), "--offline"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
        check=False,
    )
    assert run.returncode != 0
    assert "you@dev" in run.stdout + run.stderr
    # 2. without it, the node runs; you@dev, with the real site's key pinned, is refused
    cfg.source.write_text(text)
    node = world.spawn_node(cfg)
    try:
        url = (cfg.node.data_dir / "nats.url").read_text().strip()
        env = clean_env(FEDHUB_HOME=str(dev_node.home), FEDHUB_URL=url)
        pub = tmp_path / "site-hereon.pub"
        pub.write_text(json.dumps(world.site("hereon").public.to_json()))
        assert fedhub("keys", "import", str(pub), env=env).returncode == 0
        run = fedhub("call", "hereon.climate.compute_sum", "da=[1]", "--timeout", "20", env=env)
        assert run.returncode == 1
        assert "UnauthorizedError" in run.stderr, run.stderr
    finally:
        node.stop()
