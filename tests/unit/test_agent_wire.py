"""The agent's wire and its guards, without a running agent: requests it refuses, peers it
refuses, folders it refuses, and a client path that imports nothing heavy."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hub import agent_client
from hub.agent import (
    ClientPool,
    Request,
    RequestError,
    Session,
    _Fallback,
    as_caller,
    ensure_private_dir,
    keystore_stamp,
    parse_request,
    refuse_peer,
)
from hub.errors import ConfigError
from hub.keys import KeyStore, default_home


def body(request: bytes) -> bytes:
    return request[len(agent_client.MAGIC) + 4 :]


def test_a_request_round_trips_argv_cwd_and_only_the_callers_fedhub_environment() -> None:
    raw = agent_client.encode_request(
        ["call", "x.y.z", "name=kl\u00e4us", "--out", "o.nc"],
        cwd="/tmp",
        env={"FEDHUB_HOME": "/h", "FEDHUB_PASSPHRASE": "s3cret", "HOME": "/home/k"},
        ttys="010",
    )
    assert raw.startswith(agent_client.MAGIC)
    assert int.from_bytes(raw[len(agent_client.MAGIC) :][:4], "big") == len(body(raw))
    got = parse_request(body(raw))
    assert got.argv == ["call", "x.y.z", "name=kl\u00e4us", "--out", "o.nc"]
    assert got.cwd == "/tmp" and got.ttys == "010" and got.op == "run"
    assert got.env == {"FEDHUB_HOME": "/h", "FEDHUB_PASSPHRASE": "s3cret", "HOME": "/home/k"}


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"Orun\0Bx\0T000\0C/\0Z?\0", "unknown field"),
        (b"Orun\0Bx\0T000\0C/\0Orun\0", "once"),
        (b"Orun\0Bx\0T000\0", "once"),
        (b"Oexec\0Bx\0T000\0C/\0", "unknown op"),
        (b"Orun\0Bx\0T0a0\0C/\0", "ttys"),
        (b"Orun\0Bx\0T000\0Crelative\0", "absolute"),
        (b"Orun\0Bx\0T000\0C/\0ELD_PRELOAD=/evil.so\0", "not one the agent takes"),
        (b"Orun\0Bx\0T000\0C/\0\0", "empty field"),
        (b"Orun\0Bx\0T000\0C/", "NUL"),
    ],
)
def test_a_malformed_request_is_refused_with_a_reason(raw: bytes, why: str) -> None:
    with pytest.raises(RequestError, match=why):
        parse_request(raw)


def test_a_peer_of_another_uid_is_refused_and_the_own_uid_is_not() -> None:
    assert refuse_peer(os.getuid()) is None
    refusal = refuse_peer(os.getuid() + 1)
    assert refusal is not None and "serves no other user" in refusal


def test_the_peer_uid_of_a_unix_socket_is_read_from_the_kernel() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert agent_client.peer_uid(left) == os.getuid()


def test_a_folder_others_may_enter_or_a_symlink_is_refused_and_the_client_never_connects(
    tmp_path: Path,
) -> None:
    open_folder = tmp_path / "open"
    open_folder.mkdir(mode=0o755)
    open_folder.chmod(0o755)
    with pytest.raises(ConfigError, match="not private"):
        ensure_private_dir(open_folder)
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(open_folder / agent_client.SOCKET_NAME))
    listening.listen()
    with listening:
        assert agent_client.connect(str(open_folder)) is None  # a socket is there; not used
    private = tmp_path / "private"
    ensure_private_dir(private)
    assert private.stat().st_mode & 0o777 == 0o700
    link = tmp_path / "link"
    link.symlink_to(private)
    with pytest.raises(ConfigError, match="not private"):
        ensure_private_dir(link)
    assert not agent_client.private_dir(str(link))


def test_the_agent_folder_follows_fedhub_home_then_the_runtime_dir_then_the_default_home(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert agent_client.agent_dir({"FEDHUB_HOME": "/h", "XDG_RUNTIME_DIR": "/r"}) == "/h/agent"
    assert agent_client.agent_dir({"XDG_RUNTIME_DIR": "/run/user/7"}) == "/run/user/7/fedhub"
    for name in ("FEDHUB_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", "/cfg")
    assert agent_client.agent_dir() == str(default_home() / "agent") == "/cfg/fedhub/agent"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", "/home/k")
    assert agent_client.agent_dir() == str(default_home() / "agent")
    assert agent_client.agent_dir() == "/home/k/.config/fedhub/agent"
    assert agent_client.agent_dir({"FEDHUB_HOME": "/" + "x" * 120}) is None  # no such socket


def test_the_command_is_found_after_global_options_and_only_plain_lines_go_to_the_agent() -> None:
    assert agent_client.command_of(["call", "a.b.c"]) == "call"
    assert agent_client.command_of(["--home", "/h", "--log-json", "fetch", "x"]) == "fetch"
    assert agent_client.command_of(["--home=/h", "call"]) == "call"
    assert agent_client.command_of(["--version"]) is None
    assert agent_client.command_of(["--bogus", "call"]) is None
    assert agent_client.disabled(["--no-agent", "call"], {})
    assert agent_client.disabled(["call"], {"FEDHUB_AGENT": "OFF"})
    assert not agent_client.disabled(["call"], {})
    assert agent_client.run(["--version"]) is None
    assert agent_client.run(["call", "a.b.c", "--log-json"]) is None


def test_the_key_store_stamp_changes_when_a_key_file_changes(tmp_path: Path) -> None:
    store = KeyStore(tmp_path)
    store.create("klaus@geomar")
    first = keystore_stamp(tmp_path)
    assert first == keystore_stamp(tmp_path)
    key = tmp_path / "keys" / "klaus@geomar.key"
    key.chmod(0o644)
    assert keystore_stamp(tmp_path) != first
    key.chmod(0o600)
    store.create("klaus@geomar", overwrite=True)
    assert keystore_stamp(tmp_path) != first
    assert keystore_stamp(tmp_path / "nothing") == ()


def test_the_clis_path_to_the_agent_imports_no_asyncio_typing_or_heavy_module() -> None:
    probe = (
        "import sys\nfrom hub.cli import main\nimport hub.agent_client\n"
        "import json\nprint(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    loaded = set(json.loads(out.splitlines()[-1]))
    heavy = {"asyncio", "typing", "argparse", "numpy", "nats", "pydantic", "hub.errors"}
    assert not loaded & heavy, loaded & heavy


def test_a_mistyped_key_store_home_gets_no_agent_and_no_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_")}
    env.update(FEDHUB_HOME=str(missing), FEDHUB_AGENT="on")
    run = subprocess.run(
        [sys.executable, "-m", "hub.cli", "call", "a.b.c", "x=1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 1 and "no person key" in run.stderr, run.stderr
    assert not missing.exists()


def test_the_callers_environment_and_directory_hold_only_inside_the_reading_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDHUB_URL", "nats://the-agents-own:4222")
    monkeypatch.setenv("FEDHUB_PASSPHRASE", "the agent's")
    monkeypatch.delenv("FEDHUB_HOME", raising=False)
    before_env, before_cwd = dict(os.environ), Path.cwd()
    request = Request("run", "b", "000", str(tmp_path), {"FEDHUB_HOME": "/caller"}, [])
    with as_caller(request):
        assert Path.cwd() == tmp_path
        assert os.environ["FEDHUB_HOME"] == "/caller"
        assert "FEDHUB_URL" not in os.environ and "FEDHUB_PASSPHRASE" not in os.environ
    assert (dict(os.environ), Path.cwd()) == (before_env, before_cwd)
    nowhere = Request("run", "b", "000", str(tmp_path / "gone"), {"FEDHUB_HOME": "/x"}, [])
    with pytest.raises(_Fallback, match="cannot enter"), as_caller(nowhere):
        pass
    assert (dict(os.environ), Path.cwd()) == (before_env, before_cwd)


async def test_output_written_from_a_worker_thread_reaches_the_caller_in_order() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    _, writer = await asyncio.open_unix_connection(sock=left)
    with right:
        session = Session(writer, "000", ClientPool())
        session.send(b"1", b"first\n")
        await asyncio.to_thread(session.send, b"2", b"from a thread\n")
        await asyncio.sleep(0)  # the thread's frame is queued on the loop
        session.send(b"X", b"0")
        session.flush()
        await writer.drain()
        right.settimeout(10)
        data = b""
        while not data.endswith(b"X\x00\x00\x00\x010"):
            data += right.recv(4096)
        writer.close()
    frames = [agent_client.frame(b"1", b"first\n"), agent_client.frame(b"2", b"from a thread\n")]
    assert data == b"".join(frames) + agent_client.frame(b"X", b"0")
