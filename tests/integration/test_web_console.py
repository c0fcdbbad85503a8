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
from pathlib import Path
from typing import Any

import pytest
from support.browser import Browser
from support.world import NodeProcess, World

pytestmark = pytest.mark.slow

KLAUS = "klaus@geomar"


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``fedhub web`` against a node serving the test climate module: its printed URL."""
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
        yield found.group(1)
    finally:
        web.terminate()
        _, err = web.communicate(timeout=30)
        print(err)  # the console's own log, shown when a test fails
        node.stop()


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
        assert browser.screenshot(tmp_path / "module.png").read_bytes()[:4] == b"\x89PNG"
    finally:
        browser.close()
