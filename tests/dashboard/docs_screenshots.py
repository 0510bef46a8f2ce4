"""Take the screenshots of docs/dashboard.md: ``python -m tests.dashboard.docs_screenshots [seconds]``.

Runs the demo's stack with `make demo`'s defaults (4 simulated batteries, the JBD emulator, the NASA replay, the
16-pack core; ×2000 time, ageing ×1, each simulated battery starting at its life stage) for ``seconds``
(default 150), then photographs the fleet view and a simulated battery's page with headless Chromium into
docs/img/, and prints each battery's cycle, SoH and RUL at the start and at the end (JSON lines; the figures of
docs/dashboard.md).
"""

from __future__ import annotations

import json
import logging
import sys
import time
import urllib.request
from typing import Any

from cloud.local_stack.demo import LocalStack, StackOptions
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS, REPLAY_LOG
from tests.support import REPO

OUT = REPO / "docs" / "img"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=120) as resp:
        return json.loads(resp.read())


def _report(url: str, when: str, elapsed_s: float) -> None:
    """Each battery's cycle, SoH, RUL (with p10-p90) and method, and the fleet's SoH spread, as one JSON line."""
    fleet = _get(url + "api/fleet")
    overview = _get(url + "api/fleet/overview")
    risk = {r["thing"]: r for r in overview["at_risk"]}
    rows = {
        r["thing"]: {
            "cycle": r["cycle_index"],
            "soh": None if r["soh"] is None else round(r["soh"], 4),
            "rul": None if r["rul_cycles"] is None else round(r["rul_cycles"], 1),
            "rul_p10_p90": [risk.get(r["thing"], {}).get(k) for k in ("rul_p10", "rul_p90")],
            "method": r["health_method"],
            "simulated": r["simulated"],
            "alarms": [a["code"] for a in r["open_alarms"]],
        }
        for r in fleet["items"]
    }
    sohs = [v["soh"] for v in rows.values() if v["soh"] is not None and v["simulated"]]
    spread = {"min": min(sohs), "max": max(sohs)} if sohs else None
    line = {"when": when, "elapsed_s": round(elapsed_s), "simulated_soh": spread, "batteries": rows}
    print(json.dumps(line), flush=True)


def main(argv: list[str]) -> int:
    from playwright.sync_api import sync_playwright

    seconds = float(argv[0]) if argv else 150.0
    logging.basicConfig(level=logging.ERROR)
    OUT.mkdir(parents=True, exist_ok=True)
    options = StackOptions(dashboard_port=0, replay_log=REPLAY_LOG, bank_packs=16)  # `make demo`'s fleet
    with LocalStack(options) as stack, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        started = time.monotonic()
        time.sleep(min(20.0, seconds))
        _report(str(stack.dashboard_url), "start", time.monotonic() - started)
        time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        _report(str(stack.dashboard_url), "end", time.monotonic() - started)
        page.goto(str(stack.dashboard_url))
        page.wait_for_selector("#fleet-table tbody tr")
        page.wait_for_selector("#chart-fleet-fade svg")
        time.sleep(3)
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
