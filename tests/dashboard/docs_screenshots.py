"""Take the screenshots of docs/dashboard.md: ``python -m tests.dashboard.docs_screenshots [seconds]``.

Runs the demo's stack (4 simulated batteries, the JBD emulator, the NASA replay; ×2000 time, ×10 ageing) for
``seconds`` (default 150), then photographs the fleet table and a simulated battery's page with headless
Chromium into docs/img/.
"""

from __future__ import annotations

import logging
import sys
import time

from cloud.local_stack.demo import LocalStack, StackOptions
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS, REPLAY_LOG
from tests.support import REPO

OUT = REPO / "docs" / "img"


def main(argv: list[str]) -> int:
    from playwright.sync_api import sync_playwright

    seconds = float(argv[0]) if argv else 150.0
    logging.basicConfig(level=logging.ERROR)
    OUT.mkdir(parents=True, exist_ok=True)
    options = StackOptions(batteries=4, acceleration=2000.0, ageing=10.0, dashboard_port=0, replay_log=REPLAY_LOG)
    with LocalStack(options) as stack, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        time.sleep(seconds)
        page.goto(str(stack.dashboard_url))
        page.wait_for_selector("#fleet-table tbody tr")
        time.sleep(2)
        page.screenshot(path=str(OUT / "dashboard-fleet.png"), full_page=True)
        page.goto(f"{stack.dashboard_url}#/thing/sim-25c-1c")
        page.wait_for_selector("#chart-fade svg")
        time.sleep(3)
        page.screenshot(path=str(OUT / "dashboard-battery.png"), full_page=True)
        browser.close()
    print(f"screenshots in {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
