"""The dashboard in a real browser (headless Chromium) against the running local stack.

What is asserted is what a person sees: rows in the fleet table, data points drawn in each chart (SVG
elements, counted), values that change over time, a configuration edit that comes back from the device.
Screenshots go to test-artifacts/dashboard/.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any

import pytest

from tests.dashboard.conftest import (
    ARTIFACTS,
    BMS_THING,
    REPLAY_THING,
    SIM_THING,
    fetch,
    wait_for,
)

CHART_IDS = (
    "live-voltage",
    "live-current",
    "live-temperature",
    "capacity-time",
    "capacity-cycles",
    "fade",
    "temperature-dist",
)


def _rows(page: Any) -> dict[str, dict[str, str]]:
    out = {}
    for tr in page.locator("#fleet-table tbody tr").all():
        thing = tr.get_attribute("data-thing")
        cells = {
            td.get_attribute("data-col") or f"c{k}": td.inner_text() for k, td in enumerate(tr.locator("td").all())
        }
        out[thing] = cells
    return out


def _pct(text: str) -> float:
    return float(text.replace("%", "").strip())


@pytest.mark.keep_quick("the quick tier's Chromium test (it starts the local stack and Chromium: 10-25 s)")
def test_fleet_table_fills_marks_simulated_and_sorts(page: Any, dashboard_url: str, stack: Any) -> None:
    page.goto(dashboard_url)
    wait_for(lambda: page.locator("#fleet-table tbody tr").count() >= 4, 20, 0.3, "the fleet table to fill")
    rows = _rows(page)
    assert set(rows) == {m.name for m in stack.members}
    # every simulated battery (simulator and emulated BMS) says so; the NASA replay says real data
    for name in rows:
        row = page.locator(f'#fleet-table tbody tr[data-thing="{name}"]')
        expected = "REAL DATA" if name == REPLAY_THING else "SIMULATED"
        assert row.locator(".badge").first.inner_text() == expected, name
    assert page.locator("#fleet-table .badge.sim").count() == 3
    # values are the API's (compared with the fleet endpoint below)
    assert rows[SIM_THING]["c0"].startswith(SIM_THING)
    assert page.locator(f'tr[data-thing="{BMS_THING}"] td').nth(1).inner_text().startswith("jbd:")
    assert page.locator(f'tr[data-thing="{REPLAY_THING}"] td').nth(1).inner_text() == "replay:B0036"

    # the page shows the API's SoH: page and API are read at different moments and a battery's SoH moves with
    # every health record (most at the start), so they are compared again until one poll has caught up
    def soh_agrees() -> bool:
        shown = _rows(page)
        _, now = fetch(dashboard_url + "api/fleet")
        api = {r["thing"]: r for r in now["items"]}
        return all(
            "%" in shown[n]["soh"] and abs(_pct(shown[n]["soh"]) - 100 * api[n]["soh"]) <= 0.1
            for n in (SIM_THING, BMS_THING, REPLAY_THING)
        )

    wait_for(soh_agrees, 60, 0.3, "the fleet table's SoH to match the API's")
    # a battery's temperature comes with its first telemetry batch, which can reach DeviceState after its health
    # record (the rules runner's workers also put every batch to the lake's Firehose): read once all have one
    things = (SIM_THING, BMS_THING, REPLAY_THING)
    wait_for(lambda: all("°C" in _rows(page)[n]["temperature_c"] for n in things), 60, 0.3, "every temperature")
    rows = _rows(page)
    for name in things:
        assert re.fullmatch(r"-?\d+\.\d °C", rows[name]["temperature_c"]), rows[name]
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", rows[name]["last_seen"])
    # sorting: by SoH ascending, then descending
    page.click('#fleet-table th[data-key="soh"]')
    asc = [_pct(t) for t in page.locator('#fleet-table td[data-col="soh"]').all_inner_texts() if "%" in t]
    assert asc == sorted(asc) and len(asc) >= 3
    assert page.locator('#fleet-table th[data-key="soh"]').get_attribute("data-sort") == "asc"
    page.click('#fleet-table th[data-key="soh"]')
    desc = [_pct(t) for t in page.locator('#fleet-table td[data-col="soh"]').all_inner_texts() if "%" in t]
    assert desc == sorted(desc, reverse=True)
    page.click('#fleet-table th[data-key="thing"]')
    names = [tr.get_attribute("data-thing") for tr in page.locator("#fleet-table tbody tr").all()]
    assert names == sorted(names)
    page.screenshot(path=str(ARTIFACTS / "fleet.png"), full_page=True)


def _chart_points(page: Any, chart: str) -> int:
    svg = page.locator(f"#chart-{chart} svg")
    if svg.count() == 0:
        return 0
    return int(svg.get_attribute("data-points") or 0)


@pytest.mark.slow
def test_battery_page_draws_every_chart_with_data(page: Any, dashboard_url: str) -> None:
    page.goto(f"{dashboard_url}#/thing/{SIM_THING}")
    page.wait_for_selector("#chart-live-voltage svg", timeout=20_000)
    # the forecast needs a few complete discharges: wait until every chart has drawn points, and 3 discharges
    wait_for(
        lambda: (
            all(_chart_points(page, c) > 0 for c in CHART_IDS)
            and page.locator("#chart-capacity-cycles circle.pt").count() >= 3
            and page.locator("#chart-fade path.line.dash").count() == 1
        ),
        90,
        1.0,
        "data in every chart",
    )
    assert page.locator("#thing-title .badge.sim").inner_text() == "SIMULATED"
    # live voltage / current / temperature: one polyline each with many samples
    for chart in ("live-voltage", "live-current", "live-temperature"):
        n = int(page.locator(f"#chart-{chart} path.line").first.get_attribute("data-n"))
        assert n >= 20, (chart, n)
        d = page.locator(f"#chart-{chart} path.line").first.get_attribute("d")
        assert d.count("L") == n - 1
    # capacity over time and over cycles: one dot per complete discharge, the same count in both
    _, view = fetch(f"{dashboard_url}api/things/{SIM_THING}")
    n_time = page.locator("#chart-capacity-time circle.pt").count()
    n_cycles = page.locator("#chart-capacity-cycles circle.pt").count()
    assert n_time >= 3 and n_cycles == n_time
    assert abs(n_cycles - len(view["capacity"]["cycle"])) <= 3  # the page may be a poll behind or ahead
    # fade: measured dots, the estimate line, the dashed forecast and the EOL threshold line
    fade = page.locator("#chart-fade")
    assert fade.locator('circle.pt[data-series="measured (capacity / C0)"]').count() >= 3
    assert int(fade.locator('path.line[data-series="estimated SoH"]').get_attribute("data-n")) >= 2
    assert int(fade.locator("path.line.dash").get_attribute("data-n")) >= 2
    assert fade.locator(".hline line").count() == 1
    assert "EOL threshold" in (fade.locator(".hline text").text_content() or "")

    # the forecast's 80 % band: drawn from the health message's soh_lo / soh_hi, as the API holds them
    def band_matches_message() -> bool:
        band = fade.locator("path.band")
        if band.count() != 1:
            return False
        _, dev = fetch(f"{dashboard_url}api/v1/devices/{SIM_THING}")
        fc = ((dev.get("health") or {}).get("forecast")) or []
        lo = [float(v) for v in (band.get_attribute("data-lo") or "").split(",") if v]
        hi = [float(v) for v in (band.get_attribute("data-hi") or "").split(",") if v]
        n = int(band.get_attribute("data-n") or 0)
        return (
            n >= 2 and len(lo) == n == len(hi) and n <= len(fc)
            and lo == [p["soh_lo"] for p in fc[:n]] and hi == [p["soh_hi"] for p in fc[:n]]
        )  # fmt: skip

    wait_for(band_matches_message, 60, 1.0, "the fade chart's band = the latest health message's interval")
    band = fade.locator("path.band")
    lo = [float(v) for v in (band.get_attribute("data-lo") or "").split(",")]
    hi = [float(v) for v in (band.get_attribute("data-hi") or "").split(",")]
    assert all(a < b for a, b in zip(lo, hi, strict=True))  # a band, not a line
    assert (band.get_attribute("d") or "").count("L") == 2 * len(lo) - 1  # both edges, every point

    # the RUL tile shows the 80 % range (p10–p90) when the health message has one
    def rul_tile_matches_message() -> bool:
        _, dev = fetch(f"{dashboard_url}api/v1/devices/{SIM_THING}")
        tile = page.locator('[data-testid="tile-rul"]').inner_text()
        if (dev.get("health") or {}).get("rul_cycles_p10") is None:
            return "80 %" not in tile
        return re.search(r"\(80 %: [\d.]+–([\d.]+|beyond the horizon)\)", tile) is not None

    wait_for(rul_tile_matches_message, 60, 1.0, "the RUL tile's 80 % range = the latest health message's")
    # temperature distribution: boxes with a median line, and peak dots
    boxes = page.locator("#chart-temperature-dist g.box")
    assert boxes.count() >= 2
    assert page.locator("#chart-temperature-dist g.box rect").count() == boxes.count()
    assert page.locator("#chart-temperature-dist circle.peak").count() == boxes.count()
    # tiles show API values
    assert re.fullmatch(r"\d+\.\d %", page.locator('[data-testid="tile-soh"]').inner_text())
    assert page.locator('[data-testid="tile-method"]').inner_text().startswith(("physics", "hybrid", "persistence"))
    page.screenshot(path=str(ARTIFACTS / f"battery-{SIM_THING}.png"), full_page=True)


@pytest.mark.slow
def test_replay_and_bms_pages_draw_data(page: Any, dashboard_url: str) -> None:
    for thing, badge in ((REPLAY_THING, "REAL DATA"), (BMS_THING, "SIMULATED")):
        page.goto(f"{dashboard_url}#/thing/{thing}")
        wait_for(
            lambda: (
                all(_chart_points(page, c) > 0 for c in CHART_IDS[:5])
                and page.locator("#chart-capacity-cycles circle.pt").count() >= 2
            ),
            60,
            1.0,
            f"{thing} charts",
        )
        assert page.locator("#thing-title .badge").inner_text() == badge
        page.screenshot(path=str(ARTIFACTS / f"battery-{thing}.png"), full_page=True)


@pytest.mark.slow
def test_values_update_over_time(page: Any, dashboard_url: str) -> None:
    page.goto(f"{dashboard_url}#/thing/{SIM_THING}")
    page.wait_for_selector("#chart-live-voltage svg[data-last-x]", timeout=20_000)
    first_x = float(page.locator("#chart-live-voltage svg").get_attribute("data-last-x"))
    first_seen = page.locator('[data-testid="tile-last-seen"]').inner_text()
    wait_for(
        lambda: float(page.locator("#chart-live-voltage svg").get_attribute("data-last-x")) > first_x,
        30,
        0.5,
        "the live chart to move on",
    )
    wait_for(
        lambda: page.locator('[data-testid="tile-last-seen"]').inner_text() != first_seen,
        30,
        0.5,
        "'last seen' to change",
    )
    page.goto(dashboard_url)
    page.wait_for_selector(f'tr[data-thing="{SIM_THING}"] td[data-col="last_seen"]')
    cell = page.locator(f'tr[data-thing="{SIM_THING}"] td[data-col="last_seen"]')
    before = cell.inner_text()
    wait_for(lambda: cell.inner_text() != before, 30, 0.5, "the fleet table to update")


def _fleet_key(fleet: dict[str, Any]) -> list[tuple[Any, ...]]:
    return sorted((r["thing"], r["soh"], r["rul_cycles"]) for r in fleet["items"])


def _raised(dashboard_url: str, things: list[str]) -> int:
    """Alarm raises stored for ``things``, counted from the API's history (not from the fleet view)."""
    n = 0
    for thing in things:
        _, page = fetch(f"{dashboard_url}api/v1/devices/{thing}/history?kind=alarms&limit=1000")
        n += sum(1 for it in page["items"] if (it.get("body") or {}).get("active"))
    return n


@pytest.mark.slow
def test_fleet_view_shows_soh_spread_risk_ranking_fade_curves_and_alarms(page: Any, dashboard_url: str) -> None:
    """The operator's first screen, checked against the API's own values: one page answer is frozen (the same
    /api/fleet and /api/fleet/overview served to every poll) so the drawing can be compared with the values
    it was drawn from, which the test reads from /api/fleet and the API's history itself."""
    frozen: dict[str, Any] = {}

    def freeze() -> bool:
        _, before = fetch(dashboard_url + "api/fleet")
        raised_before = _raised(dashboard_url, [r["thing"] for r in before["items"]])
        status, overview = fetch(dashboard_url + "api/fleet/overview")
        _, after = fetch(dashboard_url + "api/fleet")
        if status != 200 or _fleet_key(before) != _fleet_key(after):
            return False  # a health estimate arrived meanwhile: try again
        if any(r["soh"] is None for r in after["items"]):
            return False
        raised_after = _raised(dashboard_url, [r["thing"] for r in after["items"]])
        frozen.update(fleet=after, overview=overview, raised=(raised_before, raised_after))
        return True

    wait_for(freeze, 60, 1.0, "a fleet where every battery has a health estimate, read consistently")
    fleet, overview = frozen["fleet"], frozen["overview"]

    def serve(payload: str) -> Any:
        return lambda route: route.fulfill(status=200, content_type="application/json", body=payload)

    for path, body in (("/api/fleet", fleet), ("/api/fleet/overview", overview)):
        page.route(f"**{path}", serve(json.dumps(body)))
    page.goto(dashboard_url)
    page.wait_for_selector("#chart-soh-hist svg[data-bars]", timeout=20_000)
    page.wait_for_selector("#chart-fleet-fade svg[data-points]", timeout=20_000)
    rows = fleet["items"]
    assert len(rows) >= 4

    # SoH distribution: the bars count the fleet's SoH values, bin by bin (2-point bins, lo <= SoH < hi)
    expected = Counter(math.floor(r["soh"] / 0.02 + 1e-9) for r in rows)
    bars = page.locator("#chart-soh-hist g.bar")
    drawn = {
        bars.nth(k).get_attribute("data-label"): int(bars.nth(k).get_attribute("data-count"))
        for k in range(bars.count())
    }
    want = {f"{2 * k}–{2 * k + 2} %": n for k, n in expected.items()}
    assert {k: v for k, v in drawn.items() if v} == want
    assert int(page.locator("#chart-soh-hist svg").get_attribute("data-total")) == len(rows)

    # at risk: every battery with an RUL, fewest cycles first
    with_rul = sorted((r for r in rows if r["rul_cycles"] is not None), key=lambda r: (r["rul_cycles"], r["soh"]))
    risk_rows = page.locator("#at-risk tbody tr")
    assert [risk_rows.nth(k).get_attribute("data-risk-thing") for k in range(risk_rows.count())] == [
        r["thing"] for r in with_rul
    ]
    shown = [
        float(risk_rows.nth(k).locator('td[data-col="rul_cycles"]').inner_text()) for k in range(risk_rows.count())
    ]
    assert shown == sorted(shown) and len(shown) >= 3
    for r, text in zip(with_rul, shown, strict=True):
        assert text == pytest.approx(r["rul_cycles"], abs=0.5)
    # one line per battery however long its model version is (the cell cuts it with an ellipsis, the full version
    # in its title): the versions wrapped into tall rows that left two batteries in the panel's view
    versions = risk_rows.locator('td[data-col="model_version"]')
    assert versions.first.get_attribute("title") == versions.first.inner_text() != ""
    one_line = page.locator('#at-risk td[data-col="soh"]').first.evaluate(
        "e => parseFloat(getComputedStyle(e).lineHeight) || 20"
    )
    heights = [risk_rows.nth(k).bounding_box()["height"] for k in range(min(4, risk_rows.count()))]
    assert max(heights) < 2 * one_line + 12, (heights, one_line)
    ranges = [risk_rows.nth(k).locator('td[data-col="rul_range"]').inner_text() for k in range(risk_rows.count())]
    assert any(re.fullmatch(r"\d+–(\d+|beyond horizon)", t) for t in ranges), ranges

    # fade curves: one line per battery, each with its measured discharges
    curves = page.locator("#chart-fleet-fade path.line")
    assert curves.count() == len(rows)
    assert {curves.nth(k).get_attribute("data-series") for k in range(curves.count())} == {r["thing"] for r in rows}
    for k in range(curves.count()):
        assert int(curves.nth(k).get_attribute("data-n")) >= 2

    # alarms over time: the raises stored in the API, between the counts read before and after the freeze
    lo, hi = frozen["raised"]
    svg = page.locator("#chart-fleet-alarms svg")
    total = int(svg.get_attribute("data-total") or 0) if svg.count() else 0
    assert lo <= total <= hi
    page.screenshot(path=str(ARTIFACTS / "fleet-view.png"), full_page=True)


def _shadow_row(page: Any, table: str, field: str) -> str | None:
    row = page.locator(f'#{table} tr[data-field="{field}"] td').nth(1)
    return row.text_content() if row.count() else None


@pytest.mark.slow
def test_shadow_edit_round_trips(page: Any, dashboard_url: str, stack: Any) -> None:
    page.goto(f"{dashboard_url}#/thing/{SIM_THING}")
    page.wait_for_selector("#shadow-form")
    wait_for(
        lambda: _shadow_row(page, "shadow-reported", "source.sample_interval_s") is not None,
        30,
        0.5,
        "the device's reported configuration",
    )
    current = float(_shadow_row(page, "shadow-reported", "source.sample_interval_s") or 0)
    target = 8.0 if current != 8.0 else 9.0
    # a valid change: the device applies it and reports it back
    page.fill('input[data-field="source.sample_interval_s"]', str(target))
    page.click("#shadow-apply")
    wait_for(
        lambda: _shadow_row(page, "shadow-desired", "source.sample_interval_s") == f"{target:g}",
        15,
        0.3,
        "desired to show the new value",
    )
    wait_for(
        lambda: _shadow_row(page, "shadow-reported", "source.sample_interval_s") == f"{target:g}",
        30,
        0.3,
        "the device to report the new sample interval",
    )
    agent = next(m.agent for m in stack.members if m.name == SIM_THING)
    wait_for(lambda: agent.config.source.sample_interval_s == target, 10, 0.2, "the agent to apply it")
    assert page.locator("#shadow-delta tr").count() == 0  # nothing pending
    # an invalid value: refused by the device with the reason; the last good value stays
    page.fill('input[data-field="source.sample_interval_s"]', "-1")
    page.click("#shadow-apply")
    wait_for(
        lambda: _shadow_row(page, "shadow-rejected", "source.sample_interval_s"),
        30,
        0.3,
        "the device to reject the value",
    )
    reason = _shadow_row(page, "shadow-rejected", "source.sample_interval_s") or ""
    assert "greater than 0" in reason, reason
    assert _shadow_row(page, "shadow-reported", "source.sample_interval_s") == f"{target:g}"
    assert _shadow_row(page, "shadow-delta", "source.sample_interval_s") == "-1"
    assert agent.config.source.sample_interval_s == target
    # the refusal is an alarm event (config_rejected): listed, and marked on the capacity timeline
    wait_for(
        lambda: page.locator('#events-table tr[data-kind="event"]').filter(has_text="config_rejected").count() > 0,
        30,
        0.5,
        "the config_rejected event in the alarm list",
    )
    wait_for(
        lambda: page.locator('#chart-capacity-time g.marker[data-code="config_rejected"]').count() > 0,
        30,
        0.5,
        "the config_rejected marker on the capacity timeline",
    )
    page.screenshot(path=str(ARTIFACTS / "shadow-rejected.png"), full_page=True)
    # put it back (and the rejection goes away)
    page.fill('input[data-field="source.sample_interval_s"]', "10")
    page.click("#shadow-apply")
    wait_for(
        lambda: _shadow_row(page, "shadow-reported", "source.sample_interval_s") == "10",
        30,
        0.3,
        "the device to report 10 again",
    )
    wait_for(lambda: page.locator("#shadow-rejected tr").count() == 0, 30, 0.3, "the rejection to clear")
