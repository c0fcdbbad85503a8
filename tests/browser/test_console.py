"""The web console in a real browser: headless Chromium (Debian's package) driven by
Playwright through a real federation on loopback.

A caller at geomar opens the console, finds hereon's climate module, calls a function
through its generated form with a NetCDF file, watches its progress, and downloads the
result; an auditor audits the node's log (OK) and a tampered copy (FAILED, the first bad
event highlighted); an operator sees the node's status, events and graphs. With
``FEDHUB_SCREENSHOTS=DIR`` each page is also saved as a PNG (how docs/console/ is made).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import xarray as xr
from conftest import node_nats
from playwright.async_api import Browser, Page, async_playwright
from support.world import World

from hub.logfile import iter_log
from hub.web import ConsoleSettings, serve
from node.config import NodeConfig
from node.console import NodeView

if TYPE_CHECKING:
    from conftest import Federation

CALLER = "klaus@geomar"
CHROMIUM = Path(os.environ.get("FEDHUB_CHROMIUM", "/usr/bin/chromium"))
#: Chromium's flags on a machine without network or screen.
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.slow


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path / "world")
    w.person(CALLER)
    return w


@pytest.fixture
def hereon(world: World, federation: Federation, unique: Any) -> NodeConfig:
    return world.node_config(
        "hereon",
        name=unique("web").replace("_", "-"),
        **node_nats(federation, "hereon"),
        trust=["geomar"],
        users=[CALLER],
        grants=[(CALLER, "climate", "*")],
    )


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():  # noqa: ASYNC240 (once, before the browser starts)
        pytest.fail(f"Chromium is not installed at {CHROMIUM} (scripts/test installs it)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            yield b
        finally:
            await b.close()


async def _console(settings: ConsoleSettings) -> tuple[str, asyncio.Task[None]]:
    """Serve ``settings`` on a free port; its link (with the token) and its task."""
    link: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def ready(url: str) -> None:
        link.set_result(url)

    task = asyncio.create_task(serve(settings, 0, ready))
    done, _ = await asyncio.wait({task, link}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    return await asyncio.wait_for(link, 1), task


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _shot(page: Page, name: str) -> Any:
    folder = os.environ.get("FEDHUB_SCREENSHOTS")
    if not folder:
        return asyncio.sleep(0)
    Path(folder).mkdir(parents=True, exist_ok=True)
    return page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def _settings(world: World, federation: Federation, **extra: Any) -> ConsoleSettings:
    auth = federation.caller_auth(CALLER)
    return ConsoleSettings(
        url=federation.site_url("geomar"),
        identity=CALLER,
        home=world.store.home,
        creds=str(auth["creds"]) if auth else None,
        ca=str(federation.generated.ca) if federation.secure else None,
        workdir=world.root / "console",
        **extra,
    )


async def test_a_caller_calls_a_function_from_its_form_watches_progress_and_downloads_the_result(
    world: World, federation: Federation, hereon: NodeConfig, browser: Browser, tmp_path: Path
) -> None:
    node = world.spawn_node(hereon)
    data = xr.DataArray(np.arange(12.0).reshape(4, 3), dims=("time", "x"), name="t2m")
    upload = tmp_path / "field.nc"
    data.to_netcdf(upload)
    link, task = await _console(_settings(world, federation))
    try:
        page = await browser.new_page(accept_downloads=True)
        await page.goto(link)
        assert "token=" not in page.url, "the token leaves the address bar after the first visit"
        await page.wait_for_selector("#modules a[href='/modules/hereon/climate']", timeout=20_000)
        assert await page.text_content("#identity") == CALLER
        await _shot(page, "calls")

        await page.click("#modules a[href='/modules/hereon/climate']")
        form = page.locator("#fn-slow_mean form")
        await form.locator("input[name=da]").set_input_files(str(upload))
        await form.locator("input[name=steps]").fill("8")
        await form.locator("button[type=submit]").click()
        state = form.locator(".state")
        await page.wait_for_function(
            "() => document.querySelector('#fn-slow_mean .state')"
            ".textContent.startsWith('completed')",
            timeout=60_000,
        )
        assert "completed" in (await state.text_content() or "")
        assert float(await form.locator(".result").text_content() or "nan") == pytest.approx(5.5)
        assert await form.locator("progress").get_attribute("value") == "1"
        await _shot(page, "module-form")

        async with page.expect_download() as waiting:
            await form.locator("a.dl-json").click()
        download = await waiting.value
        saved = tmp_path / "result.json"
        await download.save_as(saved)
        assert json.loads(saved.read_text()) == pytest.approx(5.5)

        # the same call in the JSON API, with the progress the node reported
        answer = await page.request.get(link.split("/?")[0] + "/api/calls")
        calls = await answer.json()
        assert [c["address"] for c in calls] == ["hereon.climate.slow_mean"]
        assert calls[0]["state"] == "completed"
        assert calls[0]["message"] == "step 8 of 8"
    finally:
        await _stop(task)
        node.stop()


async def test_a_function_given_bad_input_tells_the_caller_in_the_page(
    world: World, federation: Federation, hereon: NodeConfig, browser: Browser
) -> None:
    node = world.spawn_node(hereon)
    link, task = await _console(_settings(world, federation))
    try:
        page = await browser.new_page()
        await page.goto(link.replace("/?", "/modules/hereon/climate?"))
        form = page.locator("#fn-scale form")
        await form.locator("input[name=values]").fill("[1, 2,")  # not JSON
        await form.locator("button[type=submit]").click()
        await page.wait_for_function(
            "() => document.querySelector('#fn-scale .state').textContent === 'refused'"
        )
        assert "not valid JSON" in (await form.locator(".result").text_content() or "")
        await form.locator("input[name=values]").fill("[1, 2.5]")
        await form.locator("button[type=submit]").click()
        await page.wait_for_function(
            "() => document.querySelector('#fn-scale .state').textContent.startsWith('completed')",
            timeout=60_000,
        )
        assert json.loads(await form.locator(".result").text_content() or "") == [2.0, 5.0]
    finally:
        await _stop(task)
        node.stop()


async def test_an_auditor_sees_a_clean_log_pass_and_a_tampered_copy_fail_at_its_first_bad_event(
    world: World, federation: Federation, hereon: NodeConfig, browser: Browser, tmp_path: Path
) -> None:
    node = world.spawn_node(hereon)
    from hub.client import Client

    async with await Client.connect(
        federation.site_url("geomar"), CALLER, home=world.store.home,
        **federation.caller_auth(CALLER),
    ) as fed:  # fmt: skip
        for factor in (1.0, 2.0, 3.0):
            assert await fed.call("hereon.climate.scale", values=[1.0], factor=factor) == [factor]
    node.stop()
    export = tmp_path / "log.jsonl"
    from hub.logfile import export_line

    with export.open("wb") as out:
        for raw in iter_log(hereon.log_path):
            out.write(export_line(raw.hash, raw.sig, raw.body))
    lines = export.read_bytes().splitlines(keepends=True)
    bad = max(i for i, line in enumerate(lines) if b'"request.completed"' in line)
    tampered = tmp_path / "tampered.jsonl"
    lines[bad] = lines[bad].replace(b'"request.completed"', b'"request.failed"', 1)
    tampered.write_bytes(b"".join(lines))

    link, task = await _console(_settings(world, federation))
    try:
        page = await browser.new_page()
        await page.goto(link.replace("/?", "/audit?"))
        await page.set_input_files("input[name=log]", str(export))
        await page.click("#audit-form button[type=submit]")
        await page.wait_for_selector("#verdict")
        assert await page.text_content("#verdict") == "OK"
        assert "completed 3" in (await page.text_content("table.summary") or "")
        assert await page.locator("#lifecycles tbody tr").count() == 3
        await _shot(page, "audit-ok")

        await page.goto(link.replace("/?", "/audit?"))
        await page.set_input_files("input[name=log]", str(tampered))
        await page.click("#audit-form button[type=submit]")
        await page.wait_for_selector("#verdict")
        assert await page.text_content("#verdict") == "FAILED"
        highlighted = page.locator("#around tr.bad td")
        assert await highlighted.first.text_content() == str(bad + 1)  # entries count from 1
        assert "does not hash" in (await page.text_content("#first-bad") or "")
        await _shot(page, "audit-failed")
    finally:
        await _stop(task)


async def test_an_operator_sees_the_node_status_its_events_as_a_timeline_and_graphs(
    world: World, federation: Federation, hereon: NodeConfig, browser: Browser
) -> None:
    node = world.spawn_node(hereon)
    link, task = await _console(_settings(world, federation, operator=NodeView(hereon)))
    try:
        from hub.client import Client

        async with await Client.connect(
            federation.site_url("geomar"), CALLER, home=world.store.home,
            **federation.caller_auth(CALLER),
        ) as fed:  # fmt: skip
            for _ in range(3):
                assert await fed.call("hereon.climate.scale", values=[2.0]) == [4.0]
            with pytest.raises(Exception, match="boom"):
                await fed.call("hereon.climate.fail", message="boom")
        page = await browser.new_page()
        await page.goto(link)
        await page.click("#nav-node")
        await page.wait_for_selector("#timeline li")
        assert hereon.identity in (await page.text_content("h1") or "")
        timeline = await page.text_content("#timeline") or ""
        assert "request.completed" in timeline and "request.failed" in timeline
        assert await page.locator("svg.chart").count() == 3
        assert await page.locator("svg.chart rect.s-completed").count() >= 1
        assert await page.locator("svg.chart rect.s-failed").count() >= 1
        await _shot(page, "node")
        data = await (await page.request.get(link.split("/?")[0] + "/api/node")).json()
        assert data["status"]["requests"]["completed"] == 3
        assert data["status"]["requests"]["failed"] == 1
        assert sum(m.get("completed", 0) for m in data["series"]["minutes"]) == 3
    finally:
        await _stop(task)
        node.stop()


async def test_the_console_refuses_visitors_without_its_token_and_foreign_host_names(
    world: World, federation: Federation, browser: Browser
) -> None:
    import urllib.error
    import urllib.request

    link, task = await _console(_settings(world, federation))
    base = link.split("/?")[0]
    try:
        for path in ("/", "/api/modules", "/audit", "/api/calls"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                await asyncio.to_thread(urllib.request.urlopen, base + path, timeout=10)
            assert refused.value.code == 401
        wrong = urllib.request.Request(base + "/?token=not-it")
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(urllib.request.urlopen, wrong, timeout=10)
        assert refused.value.code == 401
        token = link.split("token=")[1]
        rebinding = urllib.request.Request(
            base + "/api/calls",
            headers={"Host": "evil.example:80", "Authorization": f"Bearer {token}"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(urllib.request.urlopen, rebinding, timeout=10)
        assert refused.value.code == 403
        good = urllib.request.Request(
            base + "/api/calls", headers={"Authorization": f"Bearer {token}"}
        )
        with await asyncio.to_thread(urllib.request.urlopen, good, timeout=10) as answer:
            assert json.loads(answer.read()) == []
    finally:
        await _stop(task)
        shutil.rmtree(world.root / "console", ignore_errors=True)


async def test_my_requests_lists_a_kept_result_to_download_and_share_with_a_colleague(
    world: World, federation: Federation, browser: Browser, tmp_path: Path, unique: Any
) -> None:
    colleague = "anna@geomar"
    world.person(colleague)
    cfg = world.node_config(
        "hereon",
        name=unique("kept").replace("_", "-"),
        **node_nats(federation, "hereon"),
        trust=["geomar"],
        users=[CALLER, colleague],
        grants=[(CALLER, "climate", "*")],
    )
    node = world.spawn_node(cfg)
    from hub.client import Client
    from hub.errors import NotFoundError, UnauthorizedError

    def connect(who: str) -> Any:
        return Client.connect(
            federation.site_url("geomar"), who, home=world.store.home,
            **federation.caller_auth(who),
        )  # fmt: skip

    link, task = await _console(_settings(world, federation))
    try:
        async with await connect(CALLER) as fed:
            handle = await fed.submit("hereon.climate.scale", values=[1.0, 2.0])
            assert await handle.result() == [2.0, 4.0]
        rid = handle.request_id
        page = await browser.new_page(accept_downloads=True)
        await page.goto(link)
        await page.click("#nav-requests")
        row = page.locator(f"#req-{rid}")
        await row.wait_for()
        assert "completed" in (await row.text_content() or "")
        async with page.expect_download() as waiting:
            await row.locator("a.dl-csv").click()
        saved = tmp_path / "kept.csv"
        await (await waiting.value).save_as(saved)
        assert saved.read_text().split() == ["2.0", "4.0"]  # a list: one value a row

        await row.locator("form.share input[name=principal]").fill(colleague)
        await row.locator("form.share button").click()
        await page.wait_for_selector(f"#req-{rid} .shares .tag")
        assert await page.text_content(f"#req-{rid} .shares .tag") == colleague
        await _shot(page, "requests")
        async with await connect(colleague) as anna:
            shared = await anna.result(rid, site="hereon")
            assert await shared.result() == [2.0, 4.0]

        await page.locator(f"#req-{rid} .shares button.unshare").click()
        await page.wait_for_function(f"() => !document.querySelector('#req-{rid} .shares .tag')")
        async with await connect(colleague) as anna:
            with pytest.raises((NotFoundError, UnauthorizedError)):
                await (await anna.result(rid, site="hereon")).result()
    finally:
        await _stop(task)
        node.stop()


async def test_an_auditor_audits_a_site_from_the_hubs_copy_of_its_log(
    world: World,
    federation_factory: Callable[..., Awaitable[Federation]],
    browser: Browser,
    unique: Any,
) -> None:
    from hub.client import Client
    from hub.fedaudit import audit_hub
    from node.daemon import NodeDaemon

    fed = await federation_factory(("hereon", "geomar"))
    cfg = world.node_config(
        "hereon",
        name=unique("hub").replace("_", "-"),
        **node_nats(fed, "hereon"),
        trust=["geomar"],
        users=[CALLER],
        grants=[(CALLER, "climate", "*")],
    )
    async with NodeDaemon(cfg) as node:
        await fed.copy_events()
        async with await Client.connect(
            fed.site_url("geomar"), CALLER, home=world.store.home, **fed.caller_auth(CALLER)
        ) as client:
            for i in range(3):
                assert await client.call("hereon.climate.scale", values=[i]) == [2.0 * i]
        assert node.eventlog is not None
    size = sum(1 for _ in iter_log(cfg.log_path))
    admin, ca = fed.generated.hub_admin, fed.generated.ca
    pinned = {s: world.site(s).sign_public for s in ("hereon", "geomar")}
    for _ in range(100):  # until the hub holds the whole log (at most 100 rounds of 0.2 s)
        [site] = await asyncio.to_thread(
            audit_hub, fed.hub_url, ["hereon"], pinned, creds=admin, ca=ca
        )
        if site.logs and site.logs[0][1].events == size:
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail("the hub never held hereon's whole log")

    settings = _settings(world, fed, hub_url=fed.hub_url, hub_creds=str(admin))
    link, task = await _console(settings)
    try:
        page = await browser.new_page()
        await page.goto(link.replace("/?", "/audit?"))
        await page.fill("input[name=hub_site]", "hereon")
        await page.click("#audit-form button[type=submit]")
        await page.wait_for_selector("#verdict", timeout=30_000)
        assert await page.text_content("#verdict") == "OK"
        assert "from the hub" in (await page.text_content("h1") or "")
        assert "hereon: audit OK" in (await page.text_content(".verdict-text") or "")
        assert await page.locator("#lifecycles tbody tr").count() == 3
        await _shot(page, "audit-hub")
    finally:
        await _stop(task)
