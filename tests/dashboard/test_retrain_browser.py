"""The fleet loop as a person sees it in the local dashboard: "Retrain now" on the fleet view runs a training job
on the stack's lake, the gate promotes the challenger, and the "At risk" table shows batteries on the new model
version (their agents switched without a restart; the dashboard reads it from their health messages)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.dashboard.conftest import ARTIFACTS, fetch, wait_for
from tests.ml.ml_support import need_cells, need_tensorflow


@pytest.mark.slow
def test_retrain_now_promotes_a_model_the_fleet_view_shows(page: Any, dashboard_url: str, stack: Any) -> None:
    need_cells()
    need_tensorflow()
    assert stack.retrain is not None
    page.goto(dashboard_url)
    wait_for(lambda: page.locator("#at-risk tbody tr").count() >= 3, 60, 0.3, "the at-risk table to fill")
    shipped = {t for t in page.locator('#at-risk td[data-col="model_version"]').all_inner_texts()}
    button = page.locator("#retrain-button")
    assert button.is_enabled()
    t0 = time.monotonic()
    button.click()
    status = page.locator("#retrain-status")
    # the bound only limits a failing run (a training job on a loaded 2-core machine)
    wait_for(lambda: status.get_attribute("data-status") not in (None, "running", "idle"), 900, 1.0, "the run to end")
    took = time.monotonic() - t0
    text = status.inner_text()
    assert status.get_attribute("data-status") == "promoted", text
    _, loop = fetch(dashboard_url + "api/retrain")
    version = loop["champion"]["model_version"]
    assert version and version not in shipped and f"champion: {version}" in text
    assert "challenger" in text and " pp" in text

    def shown() -> list[str]:
        cells = page.locator('#at-risk td[data-col="model_version"]').all_inner_texts()
        return [c for c in cells if c == version]

    wait_for(shown, 120, 0.5, f"a battery on {version} in the at-risk table")
    assert f"{version} × " in page.locator("#at-risk-note").inner_text()
    page.screenshot(path=str(ARTIFACTS / "fleet-after-retrain.png"), full_page=True)
    print(f"retrain run {took:.0f} s in the browser; champion {version}")
