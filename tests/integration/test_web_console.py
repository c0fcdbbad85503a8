"""The web console (skeleton): its JSON endpoints, its token, and a function called through
its generated form in headless Chromium, against a real node."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.browser import Browser
from support.world import NodeProcess, World

pytestmark = pytest.mark.slow

KLAUS = "klaus@geomar"
#: A folder to keep screenshots of the pages in (the ones in docs/ come from here).
SHOTS = os.environ.get("FEDHUB_SCREENSHOTS")


def shoot(browser: Browser, name: str, fallback: Path) -> None:
    """A screenshot of the page: into $FEDHUB_SCREENSHOTS when set; always a valid PNG."""
    path = Path(SHOTS) / f"console-{name}.png" if SHOTS else fallback / f"{name}.png"
    assert browser.screenshot(path).read_bytes()[:4] == b"\x89PNG"


@dataclass
class Console:
    url: str
    log: Path  # the node's SQLite log


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """``fedhub web`` against a node serving the test climate module."""
    world = World(tmp_path_factory.mktemp("web"))
    world.person(KLAUS)
    cfg = world.node_config(
        "hereon", trust=["geomar"], users=[KLAUS], grants=[(KLAUS, "climate", "*")]
    )
    node: NodeProcess = world.spawn_node(cfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_")}
    env.update(FEDHUB_HOME=str(world.store.home), FEDHUB_IDENTITY=KLAUS)
    web = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "web", "--no-browser"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert web.stdout is not None
        ready, _, _ = select.select([web.stdout], [], [], 60)
        line = web.stdout.readline() if ready else ""
        found = re.match(r"fedhub web: (http://127\.0\.0\.1:\d+/\?token=\S+)$", line.strip())
        assert found, (line, web.poll())
        yield Console(found.group(1), cfg.log_path)
    finally:
        web.terminate()
        _, err = web.communicate(timeout=30)
        print(err)  # the console's own log, shown when a test fails
        node.stop()


@pytest.fixture(scope="module")
def console(web: Console) -> str:
    return web.url


def base_and_token(url: str) -> tuple[str, str]:
    base, _, token = url.partition("/?token=")
    return base, token


def request(
    url: str, *, token: str | None = None, body: Any = None, host: str | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["X-Fedhub-Token"] = token
    if host is not None:
        headers["Host"] = host
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        text = exc.read()
        return exc.code, json.loads(text) if text.startswith(b"{") else text.decode()


def test_json_endpoints_list_modules_and_call_with_the_token(console: str) -> None:
    base, token = base_and_token(console)
    status, modules = request(f"{base}/api/modules", token=token)
    assert status == 200
    (climate,) = [m for m in modules if (m["site"], m["module"]) == ("hereon", "climate")]
    assert "scale" in climate["functions"]
    status, info = request(f"{base}/api/modules/hereon/climate", token=token)
    assert status == 200 and info["node"] == "node:hereon/n1"
    scale = next(f for f in info["functions"] if f["name"] == "scale")
    assert [(p["name"], p["kind"]) for p in scale["fields"]] == [
        ("values", "json"),
        ("factor", "number"),
    ]
    status, answer = request(
        f"{base}/api/call/hereon.climate.scale",
        token=token,
        body={"arguments": {"values": [1, 2], "factor": 3}},
    )
    assert status == 200 and answer["result"] == [3.0, 6.0] and answer["request_id"]
    status, answer = request(
        f"{base}/api/call/hereon.climate.nope", token=token, body={"arguments": {}}
    )
    assert status == 404 and answer["error"] == "NotFoundError"


def test_without_the_token_or_under_another_host_name_nothing_is_served(console: str) -> None:
    base, token = base_and_token(console)
    for path in ("/api/modules", "/modules", "/api/modules/hereon/climate"):
        assert request(f"{base}{path}")[0] == 401
        assert request(f"{base}{path}", token="wrong-" + token)[0] == 401
    status, _ = request(
        f"{base}/api/call/hereon.climate.scale", body={"arguments": {"values": [1]}}
    )
    assert status == 401
    # DNS rebinding: a page of evil.example resolving to 127.0.0.1 is refused
    assert request(f"{base}/api/modules", token=token, host="evil.example")[0] == 400


def test_a_function_is_called_through_its_form_in_a_real_browser(
    console: str, tmp_path: Path
) -> None:
    browser = Browser(tmp_path / "profile")
    try:
        browser.navigate(console)  # the printed URL: token → cookie, then the modules page
        assert browser.wait_for("location.pathname") == "/modules"
        assert "token" not in browser.evaluate("location.href")
        link = browser.wait_for("document.querySelector('.module a')?.textContent")
        assert link == "hereon.climate"
        shoot(browser, "modules", tmp_path)
        browser.evaluate("document.querySelector('.module a').click()")
        browser.wait_for("document.querySelector('form[data-address=\"hereon.climate.scale\"]')")
        browser.evaluate(
            """(() => {
                const form = document.querySelector('form[data-address="hereon.climate.scale"]');
                form.querySelector('[name=values]').value = '[1, 2.5]';
                form.querySelector('[name=factor]').value = '4';
                form.querySelector('button').click();
            })()"""
        )
        text = browser.wait_for(
            'document.querySelector(\'form[data-address="hereon.climate.scale"] '
            ".result.done')?.textContent"
        )
        assert json.loads(text) == [4.0, 10.0]
        shoot(browser, "module", tmp_path)
    finally:
        browser.close()


@pytest.fixture(scope="module")
def logs(web: Console, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """The node's log exported (after a call), and a copy with one event's body changed:
    (honest, tampered, the changed entry's position: its line)."""
    base, token = base_and_token(web.url)
    request(
        f"{base}/api/call/hereon.climate.scale", token=token, body={"arguments": {"values": [1]}}
    )
    folder = tmp_path_factory.mktemp("logs")
    honest, tampered = folder / "honest.jsonl", folder / "tampered.jsonl"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "node.cli",
            "log",
            "export",
            "--db",
            str(web.log),
            "-o",
            str(honest),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    lines = honest.read_text().splitlines()
    for index, line in enumerate(lines[1:], 1):  # the first event with a number in its body
        entry = json.loads(line)
        data = entry["event"]["data"]
        numbers = [k for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool)]
        if numbers:
            data[numbers[0]] += 1
            lines[index] = json.dumps(entry, separators=(",", ":"))
            break
    else:
        pytest.fail("no event with a number to change")
    tampered.write_text("\n".join(lines) + "\n")
    return honest, tampered, index + 1


def post_log(url: str, path: Path) -> tuple[int, Any]:
    base, token = base_and_token(url)
    req = urllib.request.Request(
        f"{base}/api/audit", data=path.read_bytes(), headers={"X-Fedhub-Token": token}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_audit_endpoint_proves_an_honest_log_and_names_the_first_bad_event(
    console: str, logs: tuple[Path, Path, int]
) -> None:
    honest, tampered, line = logs
    status, report = post_log(console, honest)
    assert status == 200 and report["ok"] is True, report
    assert report["requests"].get("completed", 0) >= 1
    status, report = post_log(console, tampered)
    assert status == 200 and report["ok"] is False
    assert report["first"]["position"] == line, report["findings"]
    assert report["first"]["check"] == "hash"
    junk = honest.with_name("junk.jsonl")
    junk.write_text("not a log\n")
    status, answer = post_log(console, junk)
    assert status == 400 and answer["error"] == "ArgumentError"


def test_an_auditor_sees_a_tampered_log_flagged_in_a_real_browser(
    console: str, logs: tuple[Path, Path, int], tmp_path: Path
) -> None:
    honest, tampered, line = logs
    browser = Browser(tmp_path / "profile")
    try:
        browser.navigate(console)
        base, _ = base_and_token(console)
        browser.navigate(f"{base}/audit")
        for path, verdict in ((tampered, "failed"), (honest, "ok")):
            browser.set_files("form.audit [name=log]", path)
            browser.evaluate("document.querySelector('form.audit button').click()")
            state = browser.wait_for(
                f"document.querySelector('.verdict .state.{verdict}')?.textContent"
            )
            assert state.startswith(f"audit {verdict.upper()}")
            if verdict == "failed":
                first = browser.evaluate(
                    "document.querySelector('.finding.first-bad')?.dataset.position"
                )
                assert first == str(line)
                shoot(browser, "audit", tmp_path)
            else:
                assert browser.evaluate("document.querySelectorAll('.finding').length") == 0
    finally:
        browser.close()
