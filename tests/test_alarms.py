"""Alarms as data: each threshold row raises just past its limit, holds within its hysteresis band and clears
just past its clear level; every code has exactly one row."""

from __future__ import annotations

from typing import get_args

import pytest

from device_agent.agent import Agent
from device_agent.alarms import ALARMS, EOL_HYSTERESIS, HEALTH_ALARMS, SAMPLE_ALARMS, AlarmBook, AlarmCode
from device_agent.config import AgentConfig
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MemoryTransport
from hardware.simulator.source import SimulatorSource
from schema.messages import Alarm, Health, Message, MessageKind, Sample
from schema.simulator_settings import SimulatorSettings

# 60 °C with a 5 °C band (the defaults); a 0.125 V spread (clears below 80 %: 0.1 V), exact in binary
CONFIG = AgentConfig(thing_name="pack-1", shadow={"enabled": False}, alarms={"max_cell_spread_v": 0.125})
T0 = 1_700_000_000.0


def test_every_code_has_one_row_with_its_severity():
    assert set(ALARMS) == set(get_args(AlarmCode))
    assert {code: spec.severity for code, spec in ALARMS.items()} == {
        "source_offline": "critical",
        "source_fallback_simulator": "warning",
        "spool_dropped": "warning",
        "message_too_large": "warning",
        "model_unavailable": "warning",
        "model_rejected": "warning",
        "eol_reached": "critical",
        "over_temperature": "critical",
        "cell_imbalance": "warning",
        "config_rejected": "warning",
        "soc_disagreement": "warning",
        "capacity_drop": "warning",
        "resistance_jump": "warning",
        "abnormal_heating": "warning",
        "cell_drift": "warning",
    }
    assert {row.code for row in SAMPLE_ALARMS} == {"over_temperature", "cell_imbalance", "soc_disagreement"}
    assert {row.code for row in HEALTH_ALARMS} == {"eol_reached"}


def _agent(tmp_path) -> tuple[Agent, list[Alarm]]:
    alarms: list[Alarm] = []

    def on_message(kind: MessageKind, body: Message, _id: str) -> None:
        if isinstance(body, Alarm):
            alarms.append(body)

    source = SimulatorSource(SimulatorSettings())
    agent = Agent(CONFIG, source, MemoryTransport(), Spool(tmp_path / "s.db"), on_message=on_message)
    return agent, alarms


def _temperature(ts: float, hottest: float) -> Sample:
    return Sample(ts=ts, voltage_v=13.2, current_a=-1.0, temperatures_c=(25.0, hottest), source_id="bms")


def _cells(ts: float, spread: float, current_a: float = 0.0) -> Sample:
    cells = (3.25, 3.25 + spread, 3.26)
    return Sample(ts=ts, voltage_v=13.2, current_a=current_a, cell_voltages_v=cells, source_id="bms")


# (row, sample maker, [(value, active after it)]): at the limit nothing happens, just past it the alarm is
# raised, inside the band (down to the clear level itself) it holds, just past the clear level it clears
SAMPLE_CASES = [
    (
        "over_temperature",
        _temperature,
        [(60.0, False), (60.01, True), (70.0, True), (55.01, True), (55.0, True), (54.99, False), (59.9, False)],
    ),
    (
        "cell_imbalance",
        _cells,
        [(0.125, False), (0.1251, True), (0.2, True), (0.1001, True), (0.0999, False), (0.124, False)],
    ),
]


@pytest.mark.parametrize(("code", "make", "steps"), SAMPLE_CASES, ids=[c[0] for c in SAMPLE_CASES])
def test_a_sample_alarm_raises_past_its_limit_and_clears_past_its_band(tmp_path, code, make, steps):
    agent, alarms = _agent(tmp_path)
    for k, (value, active) in enumerate(steps):
        agent.process(make(T0 + k, value))
        assert (code in agent.alarms.active) is active, (value, active)
    # one message when raised, one when cleared, stamped with the sample's time
    assert [(a.code, a.active, a.severity) for a in alarms] == [
        (code, True, ALARMS[code].severity),
        (code, False, "info"),
    ]
    raised, cleared = alarms
    cleared_at = next(k for k, (_v, active) in enumerate(steps) if k > 1 and not active)
    assert raised.ts == T0 + 1 and cleared.ts == T0 + cleared_at
    assert raised.message == ALARMS[code].text and cleared.message == f"cleared: {ALARMS[code].text}"
    assert raised.details == ({"temperature_c": 60.01} if code == "over_temperature" else {"spread_v": 0.1251})
    agent.close()


def test_imbalance_is_judged_at_rest_only(tmp_path):
    agent, alarms = _agent(tmp_path)
    agent.process(_cells(T0, 0.4, current_a=-2.0))  # under load: cells spread apart normally
    agent.process(_temperature(T0 + 1, 25.0))  # no cell voltages at all
    assert alarms == []
    agent.process(_cells(T0 + 2, 0.4, current_a=0.01))  # at rest
    assert "cell_imbalance" in agent.alarms.active
    agent.process(_cells(T0 + 3, 0.0, current_a=-2.0))  # a low spread under load does not clear it either
    assert "cell_imbalance" in agent.alarms.active
    agent.close()


def _health(ts: float, soh: float) -> Health:
    return Health(
        ts=ts,
        cycle_index=10,
        equivalent_cycles=10.0,
        capacity_ah=soh * 2.0,
        initial_capacity_ah=2.0,
        soh=soh,
        eol_threshold=0.8,
        method="physics",
        model_version="physics",
        source_id="bms",
    )


def test_end_of_life_raises_below_the_threshold_and_clears_past_its_band():
    emitted: list[Alarm] = []
    book = AlarmBook("bms", emitted.append)
    clear_at = 0.8 + EOL_HYSTERESIS
    steps = [(0.8, False), (0.7999, True), (0.75, True), (0.8199, True), (clear_at, True), (0.8201, False)]
    for k, (soh, active) in enumerate(steps):
        book.evaluate(HEALTH_ALARMS, _health(T0 + k, soh), CONFIG, T0 + k)
        assert ("eol_reached" in book.active) is active, (soh, active)
    assert [(a.code, a.active, a.ts, a.details) for a in emitted] == [
        ("eol_reached", True, T0 + 1, {"soh": 0.7999}),
        ("eol_reached", False, T0 + 5, {}),
    ]
