"""battwin's own SoC (device_agent.soc): the OCV tables, the Kalman blend, the estimator's corrections (rest,
full charge, gaps, the offset learnt at rest, capacity from partial cycles), the state kept across restarts, the
disagreement alarm at its boundary, and ``battwin replay --telemetry``."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from device_agent.agent import Agent
from device_agent.alarms import SOC_DISAGREEMENT, AlarmBook
from device_agent.config import AgentConfig, ConfigError, load_config
from device_agent.soc import OCV_TABLES, OcvTable, SocEstimator, SocFilter
from device_agent.soc.capacity import PARTIAL_AFTER_EFC, CapacityTracker
from device_agent.soc.estimator import UNKNOWN_SD_PCT
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MemoryTransport
from hardware.replay import ReplaySource
from schema.messages import Alarm, Sample, Telemetry, telemetry_samples

T0 = 1_700_000_000.0
NMC = OCV_TABLES["nmc"]
LFP = OCV_TABLES["lfp"]


def cfg(**soc: object) -> AgentConfig:
    return AgentConfig(thing_name="pack-1", shadow={"enabled": False}, soc={"capacity_ah": 2.0, **soc})


def sample(ts: float, volts: float, amps: float, soc_pct: float | None = None) -> Sample:
    return Sample(ts=ts, voltage_v=volts, current_a=amps, soc_pct=soc_pct, source_id="bms")


def rest(est: SocEstimator, t: float, volts: float, seconds: float, step: float = 10.0) -> tuple[float, Sample]:
    out = sample(t, volts, 0.0)
    for _ in range(int(seconds / step)):
        t += step
        out = est.update(sample(t, volts, 0.0))
    return t, out


def hold(
    est: SocEstimator, t: float, volts: float, amps: float, seconds: float, step: float = 10.0
) -> tuple[float, Sample]:
    out = sample(t, volts, amps)
    for _ in range(int(seconds / step)):
        t += step
        out = est.update(sample(t, volts, amps))
    return t, out


# -- tables and the blend --------------------------------------------------------------------------------
@pytest.mark.parametrize("table", [NMC, LFP], ids=["nmc", "lfp"])
def test_ocv_table_inverts_and_reports_its_slope(table: OcvTable):
    for soc in (0.0, 0.03, 0.2, 0.5, 0.77, 1.0):
        assert table.soc_at(table.ocv(soc)) == pytest.approx(soc, abs=1e-9)
    assert table.soc_at(table.volts[0] - 1.0) == 0.0 and table.soc_at(table.volts[-1] + 1.0) == 1.0
    assert all(table.slope(s / 100) > 0 for s in range(101))


def test_lfp_plateau_is_far_flatter_than_nmc():
    # mid-range: LFP moves well under 1 mV per pp of SoC, NMC several
    assert LFP.slope(0.5) * 0.01 < 0.001 < NMC.slope(0.5) * 0.01
    assert NMC.slope(0.5) / LFP.slope(0.5) > 5


def test_a_table_that_does_not_rise_is_refused():
    with pytest.raises(ValueError, match="OCV knots must rise strictly"):
        OcvTable("bad", (0.0, 0.5, 1.0), (3.0, 3.0, 4.2), 4.1)
    with pytest.raises(ValueError, match="as many SoC as voltage knots"):
        OcvTable("bad", (0.0, 1.0), (3.0,), 4.1)


def test_the_blend_weights_by_variance():
    f = SocFilter(50.0, 2.0)
    assert f.correct(80.0, 200.0) < 0.001 and f.soc_pct == pytest.approx(50.0, abs=0.01)
    f = SocFilter(50.0, 20.0)
    f.correct(80.0, 0.5)
    assert f.soc_pct == pytest.approx(80.0, abs=0.05) and f.sd_pct < 0.5
    f = SocFilter(50.0, 1.0)
    f.predict(delta_ah=-0.5, dt_s=3600.0, capacity_ah=2.0, offset_sd_c=0.01, capacity_sd=0.02)
    assert f.soc_pct == pytest.approx(25.0) and f.sd_pct == pytest.approx(1.0 + 1.0 + 0.5)


# -- the estimator ----------------------------------------------------------------------------------------
def test_nothing_is_published_without_a_capacity_or_before_the_estimate_is_narrow():
    est = SocEstimator(AgentConfig(thing_name="p", shadow={"enabled": False}))  # no rated, nothing measured
    _, out = rest(est, T0, 3.8, 1200)
    assert out.soc_est_pct is None
    est = SocEstimator(cfg())
    # under load from the start: the voltage says little, nothing published
    _, out = hold(est, T0, 3.7, -1.0, 300)
    assert out.soc_est_pct is None and est.filter is not None and est.filter.sd_pct >= UNKNOWN_SD_PCT


def test_a_rest_corrects_the_count_from_the_table_once_per_rest():
    est = SocEstimator(cfg(rest_min_s=600))
    t, out = rest(est, T0, NMC.ocv(0.6), 1200)
    assert out.soc_est_pct == pytest.approx(60.0, abs=0.5)
    assert est.rest_corrections == 1
    sd_after_one = est.filter.sd_pct if est.filter else 0.0
    t, out = rest(est, t, NMC.ocv(0.6), 3600)  # the same rest going on: the same single measurement
    assert est.rest_corrections == 1 and est.filter is not None
    assert est.filter.sd_pct == pytest.approx(sd_after_one, rel=0.05)
    # a discharge of 0.4 Ah on 2 Ah: -20 pp counted, then the next rest agrees
    t, out = hold(est, t, 3.6, -0.8, 1800)
    assert out.soc_est_pct == pytest.approx(40.0, abs=0.6)
    t, out = rest(est, t, NMC.ocv(0.4), 900)
    assert out.soc_est_pct == pytest.approx(40.0, abs=0.6) and est.rest_corrections == 2


def test_a_short_rest_does_not_correct():
    est = SocEstimator(cfg(rest_min_s=600))
    t, _ = rest(est, T0, NMC.ocv(0.6), 1200)
    t, _ = hold(est, t, 3.6, -0.8, 1800)  # counted to 40 %
    t, out = rest(est, t, NMC.ocv(0.7), 300)  # a voltage that says 70 %, but only 5 minutes
    assert out.soc_est_pct == pytest.approx(40.0, abs=0.6)


@pytest.mark.parametrize(("chemistry", "moves"), [("nmc", True), ("lfp", False)])
def test_a_rest_on_lfps_plateau_barely_moves_the_count(chemistry: str, moves: bool):
    table = OCV_TABLES[chemistry]  # type: ignore[index]
    est = SocEstimator(cfg(chemistry=chemistry))
    t, _ = hold(est, T0, table.ocv(0.95) + 0.05, 0.1, 20)  # a full charge tapering off: 100 %
    t, _ = hold(est, t, table.ocv(0.5), -1.0, 1800)  # 0.5 Ah out: counted 75 %
    # the count drifted: the rest voltage says 55 %
    t, out = rest(est, t, table.ocv(0.55), 1200)
    assert out.soc_est_pct is not None
    moved = (75.0 - out.soc_est_pct) / (75.0 - 55.0)  # the share of the disagreement the rest took
    if moves:  # NMC: the rest reading (~1.4 pp) is worth about as much as a fresh count (~1.3 pp)
        assert 0.35 < moved < 0.65
    else:  # LFP's plateau: the same 10 mV is ~12 pp of SoC, the count hardly moves
        assert 0.0 <= moved < 0.05


def test_full_charge_re_anchors_at_100():
    est = SocEstimator(cfg(rest_min_s=600))
    t, _ = rest(est, T0, NMC.ocv(0.3), 1200)
    t, out = hold(est, t, 4.0, 1.0, 3600)  # +50 pp counted: 80 %
    assert out.soc_est_pct == pytest.approx(80.0, abs=1.0)
    t, out = hold(est, t, 4.19, 0.5, 60)  # CV, still above the taper: no anchor yet
    assert est.full_anchors == 0
    t, out = hold(est, t, 4.2, 0.15, 60)  # tapered below 0.1 C at 4.2 V: full
    assert est.full_anchors > 0 and out.soc_est_pct == pytest.approx(100.0, abs=0.2)


def test_a_discharge_at_high_voltage_or_a_rest_is_not_a_full_charge():
    est = SocEstimator(cfg())
    hold(est, T0, 4.18, -0.1, 60)
    hold(est, T0 + 100, 4.18, 0.01, 60)
    assert est.full_anchors == 0


def test_a_gap_under_load_makes_the_soc_unknown_and_a_gap_at_rest_does_not():
    est = SocEstimator(cfg(rest_min_s=600))
    t, out = rest(est, T0, NMC.ocv(0.6), 1200)
    assert out.soc_est_pct is not None
    out = est.update(sample(t + 5000, 3.7, 0.0))  # a lab's rest between runs: the rest goes on
    assert out.soc_est_pct is not None
    t, _ = hold(est, t + 5000, 3.7, -1.0, 60)
    out = est.update(sample(t + 5000, 3.7, -1.0))  # no data for 80 min while a discharge ran
    assert out.soc_est_pct is None


def test_the_current_offset_is_learnt_at_rest_only_when_asked():
    def learnt(learn: bool) -> float:
        est = SocEstimator(cfg(rest_min_s=600, learn_offset=learn))
        t = T0
        for _ in range(360):  # an hour at rest reading 20 mA that does not flow
            t += 10.0
            est.update(sample(t, NMC.ocv(0.6), 0.02))
        return est.offset_a

    assert learnt(True) == pytest.approx(0.02, abs=0.002)
    assert learnt(False) == 0.0


def test_the_offset_taken_off_changes_the_count():
    def run(learn: bool) -> float:
        est = SocEstimator(cfg(rest_min_s=600, learn_offset=learn))
        t = T0
        for _ in range(360):
            t += 10.0
            est.update(sample(t, NMC.ocv(0.2), 0.02))
        _, out = hold(est, t, 3.8, 1.02, 3600)  # 1.02 A read for an hour
        assert out.soc_est_pct is not None
        return out.soc_est_pct

    assert run(True) == pytest.approx(70.0, abs=0.3)  # 20 % + 1.00 Ah / 2 Ah
    assert run(False) == pytest.approx(71.0, abs=0.3)  # 20 % + 1.02 Ah / 2 Ah


def test_the_measured_capacity_replaces_the_rated_one():
    measured: list[float] = []
    est = SocEstimator(cfg(rest_min_s=600), lambda: measured[-1] if measured else None)
    assert est.capacity_ah() == 2.0
    measured.append(1.6)
    assert est.capacity_ah() == pytest.approx(1.6)
    t, _ = rest(est, T0, NMC.ocv(0.9), 1200)
    _, out = hold(est, t, 3.8, -0.8, 3600)  # 0.8 Ah of 1.6 Ah: -50 pp
    assert out.soc_est_pct == pytest.approx(40.0, abs=0.6)


def test_partial_cycles_refine_an_old_capacity_but_not_a_fresh_one():
    cap = CapacityTracker(2.0)
    cap.measured(2.0)
    cap.reference(85.0, 1.0)
    cap.count(-0.9)  # 0.9 Ah for 50 pp: 1.8 Ah
    cap.reference(35.0, 1.0)
    assert cap.capacity_ah == 2.0 and cap.partial_updates == 0  # the measured capacity is fresh
    while cap.efc_since_measured < PARTIAL_AFTER_EFC:
        cap.count(0.9)
        cap.count(-0.9)
    cap.forget_reference()
    for _ in range(6):
        cap.reference(85.0, 1.0)
        cap.count(-0.9)
        cap.reference(35.0, 1.0)
        cap.count(0.9)
    assert cap.partial_updates >= 6
    assert cap.capacity_ah == pytest.approx(1.8, abs=0.03)
    cap.reference(80.0, 5.0)  # an end known too loosely: no update
    cap.count(-0.9)
    n = cap.partial_updates
    cap.reference(30.0, 1.0)
    assert cap.partial_updates == n


def test_disabled_leaves_samples_alone():
    est = SocEstimator(cfg(enabled=False))
    _, out = rest(est, T0, NMC.ocv(0.5), 1200)
    assert out.soc_est_pct is None


def test_config_refuses_a_band_wider_than_the_margin(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text("[soc]\nmargin_pct = 5\nhysteresis_pct = 5\n")
    with pytest.raises(ConfigError, match="hysteresis_pct"):
        load_config(path)
    path.write_text('[soc]\nchemistry = "lto"\n')
    with pytest.raises(ConfigError, match=r"soc\.chemistry"):
        load_config(path)


# -- the agent: publish, alarm, restart -------------------------------------------------------------------
def _agent(tmp_path: Path, config: AgentConfig, alarms: list[Alarm] | None = None) -> tuple[Agent, list[Sample]]:
    source = ReplaySource(tmp_path / "unused.csv")
    published: list[Sample] = []

    def on_message(kind, body, _id):  # type: ignore[no-untyped-def]
        if alarms is not None and isinstance(body, Alarm):
            alarms.append(body)
        if isinstance(body, Telemetry):
            published.extend(body.samples)

    agent = Agent(config, source, MemoryTransport(), Spool(tmp_path / "s.db"), on_message=on_message)
    return agent, published


def test_the_agent_publishes_soc_est_pct_beside_the_bms_value_and_keeps_it_across_restarts(tmp_path: Path):
    config = cfg(rest_min_s=600)
    agent, published = _agent(tmp_path, config)
    t = T0
    for _ in range(130):
        t += 10.0
        agent.process(sample(t, NMC.ocv(0.6), 0.0, soc_pct=58.0))
    agent.finish_source()
    last = published[-1]
    assert len(published) == 130 and last.soc_pct == 58.0 and last.soc_est_pct == pytest.approx(60.0, abs=0.5)
    # on the wire, beside the BMS's value
    wire = [m.payload for m in agent.spool.peek(100) if m.topic.endswith("/telemetry")]
    on_wire = [s for p in wire for s in telemetry_samples(json.loads(p)["body"])]
    assert any(s["soc_pct"] == 58.0 and "soc_est_pct" in s for s in on_wire)
    agent.progress.save()
    agent.close()
    again, published = _agent(tmp_path, config)
    assert again.soc.filter is not None and again.soc.filter.soc_pct == pytest.approx(60.0, abs=0.5)
    # straight on under load: the restored value is published, counted on (0.72 A for 10 s twice: -0.2 pp)
    again.process(sample(t + 10.0, 3.6, -0.72))
    again.process(sample(t + 20.0, 3.6, -0.72))
    again.finish_source()
    assert published[-1].soc_est_pct == pytest.approx(60.0 - 0.2, abs=0.6)
    again.close()


# margin 10 pp with a 3 pp band (the defaults): raised just past 10, held down to 7, cleared below 7
ALARM_STEPS = [(10.0, False), (10.1, True), (15.0, True), (7.1, True), (7.0, True), (6.9, False), (9.9, False)]


def test_the_disagreement_alarm_raises_past_the_margin_and_clears_past_its_band():
    emitted: list[Alarm] = []
    book = AlarmBook("bms", emitted.append)
    config = cfg()
    for k, (diff, active) in enumerate(ALARM_STEPS):
        s = sample(T0 + k, 3.7, 0.0, soc_pct=50.0).model_copy(update={"soc_est_pct": 50.0 + diff})
        book.evaluate((SOC_DISAGREEMENT,), s, config, s.ts)
        assert ("soc_disagreement" in book.active) is active, (diff, active)
    assert [(a.active, a.ts) for a in emitted] == [(True, T0 + 1), (False, T0 + 5)]
    assert emitted[0].details == {"difference_pct": 10.1}
    # nothing judged without both values, or when the SoC section is disabled
    book2 = AlarmBook("bms", emitted.append)
    book2.evaluate((SOC_DISAGREEMENT,), sample(T0, 3.7, 0.0, soc_pct=90.0), config, T0)
    off = sample(T0, 3.7, 0.0, soc_pct=90.0).model_copy(update={"soc_est_pct": 10.0})
    book2.evaluate((SOC_DISAGREEMENT,), off, cfg(enabled=False), T0)
    assert book2.active == {}


def test_the_agent_raises_the_alarm_when_the_bms_soc_is_stuck(tmp_path: Path):
    alarms: list[Alarm] = []
    agent, _ = _agent(tmp_path, cfg(rest_min_s=600), alarms)
    t = T0
    for _ in range(130):  # at rest at 60 %: the BMS agrees
        t += 10.0
        agent.process(sample(t, NMC.ocv(0.6), 0.0, soc_pct=60.0))
    for _ in range(180):  # 0.5 Ah out over 30 minutes; the BMS stays stuck at 60 %
        t += 10.0
        agent.process(sample(t, 3.6, -1.0, soc_pct=60.0))
    assert [(a.code, a.active) for a in alarms] == [("soc_disagreement", True)]
    agent.close()


# -- replay --telemetry -----------------------------------------------------------------------------------
@pytest.mark.slow  # two CLI subprocesses: 2.5 s, more on a loaded machine
def test_replay_with_telemetry_writes_the_samples_with_battwins_soc(tmp_path: Path):
    log = tmp_path / "log.csv.gz"
    rows = ["t_s,voltage_v,current_a,temperature_c"]
    t = 0.0
    for _ in range(70):  # rest at 60 % (NMC table), then a discharge
        rows.append(f"{t},{NMC.ocv(0.6):.4f},0.0,25.0")
        t += 10.0
    for _ in range(30):
        rows.append(f"{t},3.6,-1.0,25.0")
        t += 10.0
    with gzip.open(log, "wt") as fh:
        fh.write("\n".join(rows) + "\n")
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "device_agent.cli", "replay", str(log), "--out", str(out), "--start", "1000",
           "--telemetry"]  # fmt: skip
    env_config = tmp_path / "c.toml"
    env_config.write_text("[soc]\ncapacity_ah = 2.0\n")
    r = subprocess.run([*cmd, "--config", str(env_config)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    samples = [s for m in lines if m["kind"] == "telemetry" for s in m["samples"]]
    assert summary["telemetry"] == sum(1 for m in lines if m["kind"] == "telemetry") >= 1
    assert [s["ts"] for s in samples] == [1000.0 + 10.0 * k for k in range(100)]
    assert all({"ts", "voltage_v", "current_a"} <= set(s) for s in samples)
    assert samples[65]["soc_est_pct"] == pytest.approx(60.0, abs=0.5)
    # 290 s at 1 A after the rest: -4.0 pp (the trapezoid's first step is half)
    assert samples[-1]["soc_est_pct"] == pytest.approx(60.0 - 100 * (1.0 * 295 / 3600) / 2.0, abs=0.5)
    # without --telemetry: no telemetry lines
    r = subprocess.run([*cmd[:-1], "--config", str(env_config)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and all(json.loads(x)["kind"] != "telemetry" for x in out.read_text().splitlines())


def test_default_telemetry_with_soc_est_pct_is_35_samples_a_batch_on_the_ipc_budget(tmp_path: Path):
    """RELIABILITY.md: with battwin's SoC in every sample a default batch at 1 s is 35 samples (38–39 without),
    7.1–7.3 KB, never over the 7,287 B budget — as plain JSON (``telemetry.encoding = "json"``)."""
    from tests.test_published_figures import TELEMETRY, default_telemetry_on_the_ipc_budget, publish_payload_budget

    budget = publish_payload_budget(TELEMETRY)
    # published from the first rest on
    payloads = default_telemetry_on_the_ipc_budget(
        tmp_path, soc={"capacity_ah": 2.0, "rest_min_s": 300.0}, telemetry={"encoding": "json"}
    )
    batches = [telemetry_samples(json.loads(p)["body"]) for p in payloads]
    sizes = [len(p) for p in payloads]
    with_soc = [(len(b), size) for b, size in zip(batches, sizes, strict=True) if all("soc_est_pct" in s for s in b)]
    assert len(with_soc) > 50
    assert {n for n, _ in with_soc[:-1]} == {35}
    assert max(sizes) <= budget == 7_287 and min(size for _, size in with_soc[:-1]) >= 7_100


def test_the_simulator_reads_the_current_with_its_offset_and_stops_partial_charges():
    from hardware.simulator.model import PackSimulator
    from schema.simulator_settings import SimulatorSettings

    base = {"seed": 1, "cells_series": 1, "noise_current_a": 0.0, "depth_of_discharge": 0.5, "checkup_every": 10_000}
    plain = PackSimulator(SimulatorSettings(**base))
    offset = PackSimulator(SimulatorSettings(**base, current_offset_a=0.02, charge_stop_soc=0.8))
    for _ in range(30):  # at rest, then discharging: the reading is the true current plus the offset
        a, b = plain.step(60.0), offset.step(60.0)
        assert b.current_a == pytest.approx(a.current_a + 0.02, abs=1e-9)
    socs = []
    for _ in range(24 * 60):  # a day of 1-minute steps: the partial charges end at 80 %, never full
        socs.append(offset.step(60.0).soc_pct)
    assert 79.0 < max(socs[120:]) < 81.5  # after the first discharge from the initial full state
    assert max(plain.step(60.0).soc_pct for _ in range(24 * 60)) > 99.0


def test_during_a_discharge_the_capacity_is_the_one_measured_on_similar_discharges():
    from device_agent.soc.similar import SETTLE_S, DischargeMemory

    memory = DischargeMemory()

    def discharge(t: float, amps: float, temp: float, capacity: float | None) -> None:
        memory.start(t, temp)
        for k in range(1, 121):
            memory.add(t + 10.0 * k, -amps)
        memory.reached_cutoff(t + 1200.0)
        if capacity is not None:
            memory.measured(capacity)

    for k, cap in enumerate((1.80, 1.82, 1.20, 1.81)):  # 1 A at 25 °C; one odd run among them
        discharge(T0 + 10_000 * k, 1.0, 25.0, cap)
    discharge(T0 + 50_000, 4.0, 25.0, 1.50)  # 4 A at 25 °C
    discharge(T0 + 60_000, 1.0, 4.0, 1.00)  # 1 A at 4 °C

    def now(amps: float, temp: float, seconds: float = 300.0) -> float | None:
        memory.start(T0 + 100_000, temp)
        for k in range(1, int(seconds / 10) + 1):
            memory.add(T0 + 100_000 + 10.0 * k, -amps)
        return memory.capacity_now(T0 + 100_000 + seconds)

    assert now(1.0, 25.0) == pytest.approx(1.81)  # median of the latest three similar (1.82, 1.20, 1.81)
    assert now(4.1, 26.0) == pytest.approx(1.50)
    assert now(1.0, 5.0) == pytest.approx(1.00)  # cold: the cold run's
    assert now(3.5, 40.0) == pytest.approx(1.50)  # not seen at 40 °C: the nearest load's
    assert now(1.0, 25.0, seconds=SETTLE_S - 10) is None  # too early to judge the load
