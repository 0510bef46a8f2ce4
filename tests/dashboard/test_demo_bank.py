"""The demo's multi-pack core: one agent and one MQTT connection for a bank of packs, each its own battery in
the fleet (its own thing, cycles and health), at its own life stage, tagged simulated; the bank view on disk."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cloud.local_stack.demo import LocalStack, StackOptions
from cloud.local_stack.fleet import BANK_NAME
from tests.dashboard.conftest import fetch, wait_for

PACKS = 4


@pytest.mark.slow
def test_the_demo_bank_is_one_core_whose_packs_are_each_a_battery_of_the_fleet() -> None:
    options = StackOptions(batteries=1, bank_packs=PACKS, emulator=False, replay_log=None, dashboard_port=0)
    with LocalStack(options) as stack:
        things = [f"{BANK_NAME}.p{k:02d}" for k in range(1, PACKS + 1)]
        assert f"{PACKS} packs: {things[0]} … {things[-1]}" in stack.describe()
        url = stack.dashboard_url
        assert url is not None

        def bank_rows() -> dict[str, Any]:
            items = fetch(url + "api/fleet")[1]["items"]
            rows = {r["thing"]: r for r in items if r["thing"].startswith(BANK_NAME + ".")}
            ready = [r.get("soh") and r.get("temperature_c") is not None for r in rows.values()]
            done = len(rows) == PACKS and all(ready)
            return rows if done else {}

        rows = wait_for(bank_rows, 120, 1.0, "every pack of the bank in the fleet with health and telemetry")
        assert sorted(rows) == things
        for thing, row in rows.items():
            assert row["simulated"] is True and row["source"] == f"simulator:{thing}"
        # backfilled at different life stages (180 … 330 cycles): the packs' health differs
        assert len({round(r["soh"], 3) for r in rows.values()}) == PACKS
        bank = wait_for(lambda: _bank(stack), 60, 1.0, "the bank view")
        assert bank["packs"] == PACKS and bank["simulated"] is True
        assert bank["weakest_pack"] in {f"p{k:02d}" for k in range(1, PACKS + 1)}
        assert bank["capacity_ah"] == pytest.approx(sum(p["capacity_ah"] for p in bank["pack_figures"]), rel=1e-6)


def _bank(stack: LocalStack) -> dict[str, Any] | None:
    path = stack.workdir / "bank.json"
    return json.loads(path.read_text()) if path.is_file() else None
