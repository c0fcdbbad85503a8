"""The console follows a call live: progress while it runs, the result, the session's
requests with a download; on a dev node (``fedhub serve``'s) with a module that reports
progress."""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.browser import Browser

from hub.serve import start_dev_node

pytestmark = pytest.mark.slow

MODULE = '''
import time

from hub.progress import Progress


def count(n: int, progress: Progress | None = None) -> int:
    """Count to n, slowly, saying how far it got."""
    for i in range(n):
        time.sleep(0.2)
        if progress is not None:
            progress.report((i + 1) / n, f"step {i + 1} of {n}")
    return n
'''


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("web-calls")
    (folder / "steps.py").write_text(MODULE)
    node = start_dev_node(folder / "steps.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_")}
    env["FEDHUB_HOME"] = str(node.home)  # the dev node is found through the key store
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
        found = re.match(r"fedhub web: (\S+)$", line.strip())
        assert found, (line, web.poll())
        yield found.group(1)
    finally:
        web.terminate()
        _, err = web.communicate(timeout=30)
        print(err)
        node.stop()


def test_submit_answers_at_once_and_the_event_stream_ends_with_the_result(console: str) -> None:
    base, _, token = console.partition("/?token=")
    headers = {"X-Fedhub-Token": token, "Content-Type": "application/json"}
    req = urllib.request.Request(
        f"{base}/api/submit/dev.steps.count",
        data=json.dumps({"arguments": {"n": 3}}).encode(),
        headers=headers,
    )
    with urllib.request.urlopen(req, timeout=30) as response:
        assert response.status == 202
        request_id = json.load(response)["request_id"]
    req = urllib.request.Request(f"{base}/api/requests/{request_id}/events", headers=headers)
    kinds, last = [], None
    with urllib.request.urlopen(req, timeout=60) as stream:
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("event: "):
                kinds.append(line.removeprefix("event: "))
            elif line.startswith("data: "):
                last = json.loads(line.removeprefix("data: "))
    assert kinds[-1] == "result" and last == {"request_id": request_id, "result": 3}
    assert set(kinds[:-1]) <= {"progress"}
    req = urllib.request.Request(f"{base}/api/requests", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as response:
        mine = {r["request_id"]: r for r in json.load(response)}
    assert mine[request_id]["state"] == "completed" and mine[request_id]["progress"] == 1.0


def test_a_call_shows_its_progress_and_result_then_is_listed_for_download(
    console: str, tmp_path: Path
) -> None:
    base, _, _ = console.partition("/?token=")
    browser = Browser(tmp_path / "profile")
    try:
        browser.navigate(console)
        browser.navigate(f"{base}/modules/dev/steps")
        form = "document.querySelector('form[data-address=\"dev.steps.count\"]')"
        browser.wait_for(form)
        browser.evaluate(
            f"(() => {{ const f = {form}; f.querySelector('[name=n]').value = '4';"
            " f.querySelector('button').click(); })()"
        )
        assert browser.wait_for(f"{form}.querySelector('.result.done')?.textContent") == "4"
        # the reports arrived (the node may fold the last one into the result)
        message = browser.evaluate(f"{form}.querySelector('.progress .message').textContent")
        assert re.fullmatch(r"step [1-4] of 4", message), message
        assert browser.evaluate(f"{form}.querySelector('.progress progress').value") == 1
        request_id = browser.evaluate(f"{form}.querySelector('.result').dataset.requestId")
        browser.navigate(f"{base}/requests")
        row = f"document.querySelector('tr[data-request-id=\"{request_id}\"]')"
        assert browser.wait_for(f"{row}?.querySelector('.state').textContent") == "completed"
        downloaded = browser.evaluate(
            f"fetch({row}.querySelector('a.download').href).then(r => r.json())"
        )
        assert downloaded == 4
    finally:
        browser.close()
