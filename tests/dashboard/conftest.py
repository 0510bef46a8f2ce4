"""Fixtures of the dashboard tests: the whole local stack (short, accelerated) and a headless Chromium.

The browser is Debian's chromium driven by Playwright (``playwright`` from PyPI; its own browser download is
not used). Without either the browser tests skip and say why; under CI=true that is a failure.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud.local_stack.demo import LocalStack, StackOptions
from tests.support import IN_CI, NASA_LOGS, REPO, need_shared_data, real_component

ARTIFACTS = REPO / "test-artifacts" / "dashboard"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPLAY_LOG = NASA_LOGS / "B0036.csv.gz"
SIM_THING = "sim-25c-1c"
BMS_THING = "bms-jbd-1"
REPLAY_THING = "nasa-b0036"


def fetch(url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def wait_for(pred: Any, timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {str(last)[:300]})")


@pytest.fixture(scope="package")
def stack() -> Iterator[LocalStack]:
    """The full local stack: 2 simulated batteries, the JBD emulator, a NASA replay; the dashboard on a free port."""
    need_shared_data()
    logging.getLogger("device_agent.agent").setLevel(logging.ERROR)
    options = StackOptions(
        batteries=2,
        acceleration=2000.0,
        ageing=1.0,
        dashboard_port=0,
        replay_log=REPLAY_LOG,
        replay_rate_hz=600.0,
        poll_ms=1000,
    )
    with LocalStack(options) as running:
        url = running.dashboard_url
        assert url is not None
        names = {m.name for m in running.members}
        assert names == {SIM_THING, "sim-45c-1c", BMS_THING, REPLAY_THING}

        def ready() -> bool:
            status, fleet = fetch(url + "api/fleet")
            if status != 200:
                return False
            rows = {r["thing"]: r for r in fleet["items"]}
            return set(rows) == names and all(rows[n]["soh"] is not None for n in (SIM_THING, BMS_THING, REPLAY_THING))

        wait_for(ready, 120, 1.0, "every battery in the fleet with a health estimate")
        yield running


@pytest.fixture(scope="package")
def dashboard_url(stack: LocalStack) -> str:
    assert stack.dashboard_url is not None
    return stack.dashboard_url


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright==1.65.2)"
    if not CHROMIUM.is_file() and shutil.which("chromium") is None:
        return "Debian's chromium is not installed (apt-get install chromium)"
    return None


@pytest.fixture(scope="package")
@real_component("chromium")
def browser() -> Iterator[Any]:
    reason = _browser_missing()
    if reason is not None:
        if IN_CI:
            pytest.fail(f"browser tests cannot run under CI=true: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    executable = str(CHROMIUM) if CHROMIUM.is_file() else str(shutil.which("chromium"))
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh page; console errors are collected and fail the test; a screenshot is kept on failure."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
    pg.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    pg.errors = errors
    yield pg
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        pg.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}.png"), full_page=True)
    context.close()
    assert not errors, errors


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + rep.when, rep)
