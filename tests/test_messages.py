import json
import math

import pytest
from pydantic import ValidationError

from schema.messages import Alarm, CycleRecord, Envelope, Health, Sample, Telemetry, envelope, telemetry_samples


def sample(**kw):
    base = dict(ts=1_700_000_000.0, voltage_v=13.2, current_a=-1.5, temperatures_c=(25.0,), source_id="sim:1")
    base.update(kw)
    return Sample(**base)


def test_sample_round_trips_through_json():
    s = sample(cell_voltages_v=(3.3, 3.31, 3.29, 3.3), soc_pct=55.0, simulated=True)
    again = Sample.model_validate_json(s.model_dump_json())
    assert again == s
    assert again.temperature_c == 25.0


@pytest.mark.parametrize(
    "field,value",
    [
        ("voltage_v", math.nan),
        ("voltage_v", math.inf),
        ("current_a", float("-inf")),
        ("voltage_v", "thirteen"),
        ("soc_pct", 101.0),
        ("ts", -5.0),
        ("voltage_v", 1e9),
        ("source_id", "bad id with spaces"),
        ("source_id", ""),
    ],
)
def test_sample_rejects_bad_values(field, value):
    with pytest.raises(ValidationError) as exc:
        sample(**{field: value})
    assert field in str(exc.value)


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError, match="extra"):
        Sample.model_validate({**sample().model_dump(), "voltage": 3.0})


def test_envelope_carries_id_kind_and_simulated_flag():
    t = Telemetry(samples=(sample(simulated=True), sample(ts=1_700_000_001.0, simulated=True)))
    env = envelope("pack-1", "telemetry", t, ts=1_700_000_001.0)
    assert env.simulated is True and env.kind == "telemetry" and len(env.id) >= 16
    wire = json.loads(env.model_dump_json())
    back = Envelope.model_validate(wire)
    assert isinstance(back.parsed_body(), Telemetry)
    assert back.parsed_body().samples[1].ts == 1_700_000_001.0


def test_envelope_ids_are_unique():
    ids = {
        envelope("p", "alarms", Alarm(ts=1.0, code="x", severity="info", message="m", source_id="s"), 1.0).id
        for _ in range(1000)
    }
    assert len(ids) == 1000


def test_cycle_record_and_health_validate_ranges():
    with pytest.raises(ValidationError):
        CycleRecord(
            index=-1,
            kind="discharge",
            start_ts=0,
            end_ts=1,
            duration_s=1,
            charge_ah=1,
            energy_wh=1,
            complete=True,
            start_voltage_v=4,
            end_voltage_v=3,
            min_voltage_v=3,
            max_voltage_v=4,
            mean_current_a=-1,
            n_samples=2,
            source_id="s",
        )
    with pytest.raises(ValidationError, match="soh"):
        Health(
            ts=1,
            cycle_index=1,
            equivalent_cycles=1,
            capacity_ah=1,
            initial_capacity_ah=1,
            soh=math.nan,
            eol_threshold=0.8,
            method="physics",
            model_version="x",
            source_id="s",
        )
    with pytest.raises(ValidationError, match="method"):
        Health(
            ts=1,
            cycle_index=1,
            equivalent_cycles=1,
            capacity_ah=1,
            initial_capacity_ah=1,
            soh=1.0,
            eol_threshold=0.8,
            method="magic",
            model_version="x",
            source_id="s",
        )


def test_envelope_body_must_match_its_kind():
    env = envelope("p", "alarms", Alarm(ts=1.0, code="x", severity="info", message="m", source_id="s"), 1.0)
    wrong = Envelope.model_validate({**env.model_dump(), "kind": "health"})
    with pytest.raises(ValidationError):
        wrong.parsed_body()


def test_agent_telemetry_leaves_out_missing_readings_and_reads_back_the_same(tmp_path):
    from device_agent.agent import Agent
    from device_agent.config import AgentConfig
    from device_agent.uplink.spool import Spool
    from device_agent.uplink.transport import MemoryTransport
    from hardware.simulator.source import SimulatorSource
    from schema.simulator_settings import SimulatorSettings

    cfg = AgentConfig(thing_name="pack-1", telemetry={"batch_max_samples": 2}, shadow={"enabled": False})
    agent = Agent(cfg, SimulatorSource(SimulatorSettings()), MemoryTransport(), Spool(tmp_path / "s.db"))
    bare = Sample(ts=1.0, voltage_v=3.7, current_a=-1.0, source_id="bms", simulated=True)
    full = Sample(
        ts=2.0,
        voltage_v=3.6,
        current_a=-1.0,
        temperatures_c=(25.0,),
        soc_pct=50.0,
        cell_voltages_v=(3.6,),
        source_id="bms",
        simulated=True,
    )
    agent.process(bare)
    agent.process(full)
    (msg,) = [m for m in agent.spool.peek(10) if m.topic.endswith("/telemetry")]
    raw = telemetry_samples(json.loads(msg.payload)["body"])
    assert "soc_pct" not in raw[0] and "cell_voltages_v" not in raw[0]  # not sent as null
    assert raw[0]["simulated"] is True and raw[1]["soc_pct"] == 50.0
    # what the cloud reads back is what the agent had
    assert Envelope.model_validate_json(msg.payload).parsed_body() == Telemetry(samples=(bare, full))
    agent.close()
