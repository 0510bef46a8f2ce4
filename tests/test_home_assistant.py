"""The Home Assistant output against a real mosquitto: MQTT discovery payloads checked against Home Assistant's
documented fields, states as the agent runs on the simulator, availability (a pack whose source stops answering,
and the last will after the agent process is killed), reconnection, and off by default."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from device_agent.agent import Agent
from device_agent.config import AgentConfig, ConfigError, HomeAssistantSettings, load_config
from device_agent.home_assistant import HomeAssistantBridge, HomeAssistantConfigError, attach_home_assistant
from device_agent.home_assistant.entities import ALARM_ROWS, PULSED_ALARMS
from device_agent.home_assistant.publisher import Publication, StatePublisher
from device_agent.runtime import build_agent
from device_agent.uplink.transport import MemoryTransport
from hardware.errors import SourceUnavailable
from hardware.simulator.source import SimulatorSource
from hardware.source import Source
from schema.messages import Alarm, Health, MessageKind, Sample, Telemetry
from schema.simulator_settings import SimulatorSettings
from tests.conftest import Mosquitto, Subscriber, require_mosquitto
from tests.support import REPO, free_port, require_module, scaled

# -- Home Assistant's documented MQTT discovery fields, as data --------------------------------------------------
# MQTT discovery: https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery (topic
# <discovery_prefix>/<component>/[<node_id>/]<object_id>/config, ids of [a-zA-Z0-9_-]; "origin" with a required
# name; device: "at least one of identifiers or connections"). Keys per component: the configuration variables of
# https://www.home-assistant.io/integrations/sensor.mqtt/ and https://www.home-assistant.io/integrations/binary_sensor.mqtt/
# (full names; this output uses no abbreviations).
COMMON_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic", "device", "device_class",
    "enabled_by_default", "encoding", "entity_category", "entity_picture", "expire_after", "force_update", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "object_id", "default_entity_id",
    "payload_available", "payload_not_available", "platform", "qos", "state_topic", "unique_id", "value_template",
    "origin",
}  # fmt: skip
DOCUMENTED_KEYS = {
    "sensor": COMMON_KEYS | {"last_reset_value_template", "options", "state_class", "suggested_display_precision",
                             "unit_of_measurement"},
    "binary_sensor": COMMON_KEYS | {"off_delay", "payload_off", "payload_on"},
}  # fmt: skip
REQUIRED_KEYS = {"sensor": {"state_topic"}, "binary_sensor": {"state_topic"}}
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model", "model_id", "name",
    "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}
AVAILABILITY_MODES = {"all", "any", "latest"}
ENTITY_CATEGORIES = {"config", "diagnostic"}
# device classes: https://www.home-assistant.io/integrations/sensor/#device-class and the units each accepts
# (https://developers.home-assistant.io/docs/core/entity/sensor/#available-device-classes); a class not listed
# with units here is documented but not used by battwin
SENSOR_DEVICE_CLASSES = {
    "apparent_power", "aqi", "area", "atmospheric_pressure", "battery", "blood_glucose_concentration",
    "carbon_dioxide", "carbon_monoxide", "conductivity", "current", "data_rate", "data_size", "date", "distance",
    "duration", "energy", "energy_distance", "energy_storage", "enum", "frequency", "gas", "humidity", "illuminance",
    "irradiance", "moisture", "monetary", "nitrogen_dioxide", "nitrogen_monoxide", "nitrous_oxide", "ozone", "ph",
    "pm1", "pm10", "pm25", "power_factor", "power", "precipitation", "precipitation_intensity", "pressure",
    "reactive_energy", "reactive_power", "signal_strength", "sound_pressure", "speed", "sulphur_dioxide",
    "temperature", "timestamp", "volatile_organic_compounds", "volatile_organic_compounds_parts", "voltage", "volume",
    "volume_flow_rate", "volume_storage", "water", "weight", "wind_direction", "wind_speed",
}  # fmt: skip
SENSOR_UNITS = {
    "battery": {"%"},
    "current": {"A", "mA"},
    "voltage": {"V", "mV", "µV", "kV", "MV"},
    "power": {"mW", "W", "kW", "MW", "GW", "TW", "BTU/h"},
    "temperature": {"°C", "°F", "K"},
}
# https://www.home-assistant.io/integrations/sensor/#state-class
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
# https://www.home-assistant.io/integrations/binary_sensor/#device-class
BINARY_SENSOR_DEVICE_CLASSES = {
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door", "gas", "heat",
    "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug", "power", "presence", "problem",
    "running", "safety", "smoke", "sound", "tamper", "update", "vibration", "window",
}  # fmt: skip
DISCOVERY_TOPIC = re.compile(r"^homeassistant/(sensor|binary_sensor)/([a-zA-Z0-9_-]+)/([a-zA-Z0-9_-]+)/config$")


def check_discovery(topic: str, config: dict[str, Any]) -> str:
    """Fail on anything Home Assistant's documentation does not allow; returns the component."""
    m = DISCOVERY_TOPIC.match(topic)
    assert m, f"not a discovery topic: {topic}"
    component = m.group(1)
    assert set(config) <= DOCUMENTED_KEYS[component], (
        f"{topic}: undocumented {set(config) - DOCUMENTED_KEYS[component]}"
    )
    assert REQUIRED_KEYS[component] <= set(config), topic
    assert not ({"availability", "availability_topic"} <= set(config)), "availability and availability_topic together"
    assert config["availability_mode"] in AVAILABILITY_MODES
    assert config["availability"], topic
    for entry in config["availability"]:
        assert set(entry) <= AVAILABILITY_KEYS and entry["topic"], entry
        assert (entry["payload_available"], entry["payload_not_available"]) == ("online", "offline")
    device = config["device"]
    assert set(device) <= DEVICE_KEYS
    assert device["identifiers"] and all(isinstance(i, str) and i for i in device["identifiers"])
    assert all(isinstance(device[k], str) and device[k] for k in ("name", "manufacturer", "model", "sw_version"))
    assert config["origin"]["name"] == "battwin"
    assert config.get("entity_category", "diagnostic") in ENTITY_CATEGORIES
    dc = config.get("device_class")
    if component == "sensor":
        assert dc is None or dc in SENSOR_DEVICE_CLASSES, dc
        if dc is not None:
            assert config.get("unit_of_measurement") in SENSOR_UNITS[dc], (topic, dc, config.get("unit_of_measurement"))
        assert config.get("state_class", "measurement") in STATE_CLASSES
    else:
        assert dc in BINARY_SENSOR_DEVICE_CLASSES, dc
        assert {config["payload_on"], config["payload_off"]} == {"ON", "OFF"}
    return component


def render(template: str, state: dict[str, Any]) -> str:
    """A discovery template as Home Assistant renders it (Jinja2, ``value_json`` = the parsed payload)."""
    jinja2: Any = require_module("jinja2")  # in requirements/dev.lock
    return str(jinja2.Environment().from_string(template).render(value_json=state))


class HaWatch(Subscriber):
    """Everything on ``homeassistant/#`` and ``battwin-ha/#`` (one subscriber, two filters)."""

    def __init__(self, url: str) -> None:
        super().__init__(url, "homeassistant/#")
        self.client.subscribe("battwin-ha/#", qos=1)
        time.sleep(0.2)

    def latest(self) -> dict[str, bytes]:
        with self._lock:
            return {t: p for t, p in self.messages}

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t == topic]

    def wait(self, pred: Any, timeout: float) -> bool:
        return _wait(pred, timeout)

    def configs(self) -> dict[str, dict[str, Any]]:
        return {t: json.loads(p) for t, p in self.latest().items() if t.endswith("/config") and p}


def sim_settings(**kw: Any) -> SimulatorSettings:
    return SimulatorSettings(**{"seed": 7, "time_acceleration": 1e6, "ageing_factor": 10.0, "start_ts": 1.7e9, **kw})


def agent_config(tmp_path: Path, ha_url: str, thing: str = "ha-1", **ha: Any) -> AgentConfig:
    settings = sim_settings()
    return AgentConfig(
        thing_name=thing,
        source={"url": "simulator", "sample_interval_s": 10.0, "simulator": settings.model_dump()},
        tracker={"cells_series": settings.cells_series},
        telemetry={"batch_max_samples": 20, "batch_max_age_s": 3600.0},
        spool={"path": tmp_path / f"{thing}.db"},
        shadow={"enabled": False},
        health={"use_shipped_model": False},
        home_assistant={"enabled": True, "url": ha_url, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, **ha},
    )


# -- off by default; the configuration is checked up front ------------------------------------------------------
def test_off_by_default_nothing_connects_to_a_local_broker(tmp_path, mosquitto):
    assert AgentConfig().home_assistant.enabled is False
    config = agent_config(tmp_path, mosquitto.url).model_copy(deep=True)
    config.home_assistant = HomeAssistantSettings(url=mosquitto.url)  # the defaults, pointed at a live broker
    agent = build_agent(config, MemoryTransport())
    assert agent.on_message is None  # nothing hooked
    agent.run(threading.Event(), max_samples=200)
    agent.close()
    time.sleep(0.5)
    connected = [line for line in mosquitto.log.read_text().splitlines() if "New client connected" in line]
    assert connected == [], connected  # nothing connected to the local broker at all ...
    probe = Subscriber(mosquitto.url, "homeassistant/#")  # ... where a client that does connect is logged
    probe.close()
    logged = lambda: "New client connected" in mosquitto.log.read_text()  # noqa: E731
    assert _wait(logged, scaled(5)), "mosquitto does not log connections: this test would prove nothing"


@pytest.mark.parametrize(
    ("section", "named"),
    [
        ({"password": "x"}, "password is set without a username"),
        ({"url": "mqtts://h:8883", "cert_file": "/c.pem"}, "cert_file and key_file go together"),
        ({"ca_file": "/ca.pem"}, "not mqtts://"),
        ({"discovery_prefix": "home/#"}, "home_assistant.discovery_prefix"),
        ({"discovery_prefix": "/homeassistant"}, "home_assistant.discovery_prefix"),
        ({"node_id": "my node"}, "home_assistant.node_id"),
        ({"url": "http://h"}, "home_assistant.url"),
        ({"queue_size": 0}, "home_assistant.queue_size"),
        ({"reconnect_min_s": 9, "reconnect_max_s": 2}, "exceeds reconnect_max_s"),
        ({"enabled": True, "colour": "red"}, "home_assistant.colour"),
    ],
)
def test_bad_sections_are_refused_naming_the_field(section, named):
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"home_assistant": section})
    assert named in str(err.value)


def test_a_missing_tls_file_is_refused_before_connecting(tmp_path):
    config = agent_config(tmp_path, "mqtts://127.0.0.1:8883", ca_file=tmp_path / "nope.pem")
    agent = Agent(config, SimulatorSource(sim_settings(), interval_s=10.0), MemoryTransport())
    with pytest.raises(HomeAssistantConfigError, match=r"home_assistant\.ca_file: .*nope\.pem does not exist"):
        attach_home_assistant(agent)
    agent.close()


# -- discovery and states on a real broker ----------------------------------------------------------------------
def test_discovery_payloads_and_states_as_the_agent_runs(tmp_path, mosquitto):
    watch = HaWatch(mosquitto.url)
    config = agent_config(tmp_path, mosquitto.url)
    spooled: dict[str, list[Any]] = {"telemetry": [], "cycles": [], "health": [], "alarms": []}

    mid_run: list[bool] = []

    def keep(kind: MessageKind, body: Any, msg_id: str) -> None:
        spooled[kind].append(body)
        if kind == "telemetry" and len(spooled["telemetry"]) == 50:  # mid-run: a state reached Home Assistant
            mid_run.append(_wait(lambda: bool(watch.on("battwin-ha/ha_1/simulator_7/sample")), scaled(10)))

    agent = Agent(config, SimulatorSource(sim_settings(), interval_s=10.0), MemoryTransport(), on_message=keep)
    bridge = attach_home_assistant(agent)
    assert isinstance(bridge, HomeAssistantBridge)
    assert bridge.broker is not None and bridge.broker.wait_connected(scaled(10))
    agent.run(threading.Event(), max_samples=3000)  # shutdown sends what is pending and "offline"
    agent.close()
    assert spooled["health"], "the simulator run produced no health estimate; the test cannot check health states"
    base = "battwin-ha/ha_1/simulator_7"
    assert watch.wait(lambda: watch.on("battwin-ha/ha_1/status")[-1:] == [b"offline"], scaled(10))

    configs = watch.configs()
    components = {topic: check_discovery(topic, c) for topic, c in configs.items()}
    unique_ids = [c["unique_id"] for c in configs.values()]
    assert len(unique_ids) == len(set(unique_ids))
    by_key = {topic.split("/")[3].removeprefix("simulator_7_"): c for topic, c in configs.items()}
    cells = len(spooled["telemetry"][0].samples[0].cell_voltages_v)
    expected_sensors = {"voltage", "current", "power", "soc_bms", "soc_battwin", "cell_spread", "temperature_1",
                        "soh", "rul", "capacity", "initial_capacity", "equivalent_cycles",
                        *(f"cell_{i}_voltage" for i in range(1, cells + 1))}  # fmt: skip
    sensors = {k for k in by_key if f"homeassistant/sensor/ha_1/simulator_7_{k}/config" in components}
    assert sensors == expected_sensors
    binary = {k for k in by_key if f"homeassistant/binary_sensor/ha_1/simulator_7_{k}/config" in configs}
    assert binary == {row.key for row in ALARM_ROWS}
    assert binary == set(get_alarm_codes()) - PULSED_ALARMS  # every alarm that holds a state has its sensor
    # one device for the pack, named after the thing and source, from battwin's simulator
    devices = {json.dumps(c["device"], sort_keys=True) for c in configs.values()}
    assert len(devices) == 1
    device = json.loads(devices.pop())
    assert device["identifiers"] == ["battwin_ha_1_simulator_7"] and device["manufacturer"] == "battwin"
    assert "simulated" in device["model"] and device["name"] == "ha-1 simulator:7"
    # availability: every entity on the agent's last-will topic; the measurements also on the pack's topic
    for key, c in by_key.items():
        topics = [a["topic"] for a in c["availability"]]
        assert topics[0] == "battwin-ha/ha_1/status" and c["availability_mode"] == "all"
        assert (f"{base}/availability" in topics) == (key not in binary)

    # states: sample states while the agent ran, each the latest sample of a telemetry batch
    samples = [json.loads(p) for p in watch.on(f"{base}/sample")]
    assert mid_run == [True], "no sample state reached the broker while the agent ran"
    assert len({s["ts"] for s in samples}) >= 2 and len({s["voltage"] for s in samples}) >= 2
    last_sample: Sample = spooled["telemetry"][-1].samples[-1]
    assert samples[-1]["ts"] == last_sample.ts and samples[-1]["simulated"] is True
    state = samples[-1]
    assert float(render(by_key["voltage"]["value_template"], state)) == pytest.approx(last_sample.voltage_v, abs=1e-3)
    assert float(render(by_key["current"]["value_template"], state)) == pytest.approx(last_sample.current_a, abs=1e-3)
    assert float(render(by_key["soc_bms"]["value_template"], state)) == pytest.approx(last_sample.soc_pct, abs=0.06)
    assert float(render(by_key["temperature_1"]["value_template"], state)) == pytest.approx(
        last_sample.temperatures_c[0], abs=0.06
    )
    cell_values = [float(render(by_key[f"cell_{i}_voltage"]["value_template"], state)) for i in range(1, cells + 1)]
    assert cell_values == pytest.approx(list(last_sample.cell_voltages_v), abs=1e-4)
    # battwin's own SoC: shown when the sample carries it, unavailable (not 0, not stale) when it does not
    soc_est = getattr(last_sample, "soc_est_pct", None)
    value_availability = by_key["soc_battwin"]["availability"][-1]
    assert render(value_availability["value_template"], state) == ("offline" if soc_est is None else "online")
    assert render(value_availability["value_template"], {**state, "soc_battwin": 55.5}) == "online"
    assert render(by_key["soc_battwin"]["value_template"], {**state, "soc_battwin": 55.5}) == "55.5"
    # health: SoH in percent, capacity, cycles from the last estimate
    health = json.loads(watch.on(f"{base}/health")[-1])
    last_health: Health = spooled["health"][-1]
    assert float(render(by_key["soh"]["value_template"], health)) == pytest.approx(last_health.soh * 100, abs=0.01)
    assert float(render(by_key["capacity"]["value_template"], health)) == pytest.approx(last_health.capacity_ah, 1e-3)
    rul_online = render(by_key["rul"]["availability"][-1]["value_template"], health)
    assert rul_online == (
        "offline" if last_health.rul_cycles_p50 is None and last_health.rul_cycles is None else "online"
    )
    # alarms: one JSON state, every binary sensor's value ON/OFF
    alarms = json.loads(watch.on(f"{base}/alarms")[-1])
    assert {render(by_key[k]["value_template"], alarms) for k in binary} <= {"ON", "OFF"}
    assert watch.on(f"{base}/availability")[-1] == b"online"
    # retained: a Home Assistant that starts later gets discovery and the last states at once
    late = HaWatch(mosquitto.url)
    assert late.wait(lambda: len(late.configs()) == len(configs) and late.on(f"{base}/sample"), scaled(10))
    assert late.on("battwin-ha/ha_1/status") == [b"offline"]
    late.close()
    watch.close()


def get_alarm_codes() -> list[str]:
    from device_agent.alarms import ALARMS

    return list(ALARMS)


class FlakySource(Source):
    """A battery read over a link that drops out: the simulator's readings as a real source would give them
    (``simulated = False``, test-only). From poll ``fail_from`` every poll fails until ``reconnect`` is set; after
    ``then`` good polls more it sets ``stop``."""

    simulated = False

    def __init__(self, fail_from: int, reconnect: threading.Event, stop: threading.Event, then: int = 50) -> None:
        self.inner = SimulatorSource(sim_settings(), interval_s=10.0)
        self.source_id = "jbd:ttyUSB0"
        self.time_acceleration = 1e6
        self.polls = 0
        self.fail_from = fail_from
        self.reconnect, self.stop, self.then = reconnect, stop, then

    def open(self) -> None:
        self.inner.open()

    def poll(self) -> Sample:
        self.polls += 1
        sample = self.inner.poll()  # the battery goes on, read or not
        if self.polls >= self.fail_from:
            if not self.reconnect.is_set():
                time.sleep(0.01)  # a read timing out
                raise SourceUnavailable("no reply on /dev/ttyUSB0")
            self.then -= 1
            if self.then <= 0:
                self.stop.set()
        return sample.model_copy(update={"simulated": False, "source_id": self.source_id})

    def close(self) -> None:
        self.inner.close()


def test_a_pack_whose_source_stops_answering_is_unavailable_not_a_flat_line(tmp_path, mosquitto):
    watch = HaWatch(mosquitto.url)
    config = agent_config(tmp_path, mosquitto.url, thing="ha-2")
    config.source.fallback = "simulator"  # simulated data while offline: sent to the cloud tagged, never to HA
    config.telemetry.batch_max_samples = 5
    base = "battwin-ha/ha_2/jbd_ttyusb0"
    reconnect, stop = threading.Event(), threading.Event()
    seen: list[bool] = []

    def link_back_once_ha_knows() -> None:  # the link comes back once Home Assistant was told the pack is offline
        seen.append(_wait(lambda: b"offline" in watch.on(f"{base}/availability"), scaled(20)))
        reconnect.set()

    threading.Thread(target=link_back_once_ha_knows, daemon=True).start()
    agent = Agent(config, FlakySource(100, reconnect, stop), MemoryTransport())
    bridge = attach_home_assistant(agent)
    assert bridge is not None and bridge.broker is not None and bridge.broker.wait_connected(scaled(10))
    agent.run(stop)
    agent.close()
    assert seen == [True], "the pack's availability never turned offline"
    assert watch.wait(lambda: watch.on("battwin-ha/ha_2/status")[-1:] == [b"offline"], scaled(10))
    assert watch.on(f"{base}/availability") == [b"online", b"offline", b"online"]
    offline_states = [json.loads(p)["source_offline"] for p in watch.on(f"{base}/alarms")]
    assert "ON" in offline_states and offline_states[-1] == "OFF"
    # the simulated fallback samples reached neither a device of their own nor the pack's states
    assert agent.stats.poll_failures >= config.source.offline_after_failures
    assert not [t for t in watch.latest() if "simulator_fallback" in t]  # the fallback source: simulator:fallback
    assert all(json.loads(p)["simulated"] is False for p in watch.on(f"{base}/sample"))
    device = watch.configs()["homeassistant/sensor/ha_2/jbd_ttyusb0_voltage/config"]["device"]
    assert (device["manufacturer"], device["model"]) == ("Jiabaida (JBD)", "JBD smart BMS")
    watch.close()


class TwoPacks:
    """What a multi-pack runner offers the output (device_agent.packs.MultiPackAgent): its config and agents."""

    def __init__(self, config: AgentConfig, agents: list[Agent]) -> None:
        self.config = config
        self.agents = agents


def test_several_packs_share_one_connection_and_each_is_a_device(tmp_path, mosquitto):
    watch = HaWatch(mosquitto.url)
    core = agent_config(tmp_path, mosquitto.url, thing="core-1")
    agents = []
    for n in (1, 2):  # two simulators with the same seed: the same source id, told apart by the thing name
        cfg = core.model_copy(update={"thing_name": f"core-1.pack{n}"}, deep=True)
        cfg.spool.path = tmp_path / f"pack{n}.db"
        agents.append(Agent(cfg, SimulatorSource(sim_settings(), interval_s=10.0), MemoryTransport()))
    bridge = attach_home_assistant(TwoPacks(core, agents))
    assert bridge is not None and bridge.broker is not None and bridge.broker.wait_connected(scaled(10))
    runs = [threading.Thread(target=a.run, args=(threading.Event(),), kwargs={"max_samples": 200}) for a in agents]
    for t in runs:
        t.start()
    for t in runs:
        t.join(timeout=scaled(30))
    for a in agents:
        a.close()
    # the connection closed after the last pack stopped, with "offline"
    assert watch.wait(lambda: watch.on("battwin-ha/core_1/status")[-1:] == [b"offline"], scaled(10))
    configs = watch.configs()
    devices = {c["device"]["identifiers"][0]: c["device"]["name"] for c in configs.values()}
    assert devices == {
        "battwin_core_1_simulator_7": "core-1.pack1 simulator:7",
        "battwin_core_1_core_1_pack2_simulator_7": "core-1.pack2 simulator:7",
    }
    unique_ids = [c["unique_id"] for c in configs.values()]
    assert len(unique_ids) == len(set(unique_ids))
    for pack in ("simulator_7", "core_1_pack2_simulator_7"):
        assert watch.on(f"battwin-ha/core_1/{pack}/sample"), pack
    assert len([line for line in mosquitto.log.read_text().splitlines() if "as battwin-ha-" in line]) == 1
    watch.close()


def test_readings_from_before_the_source_went_offline_do_not_bring_the_pack_back_online(tmp_path):
    """The offline alarm is raised at once while the telemetry batch holding the last good readings closes later:
    that batch shows the readings but leaves the pack unavailable; the alarm clearing brings it back."""
    from device_agent.home_assistant.bridge import _Delivered, _Seed
    from device_agent.home_assistant.discovery import PackIdentity

    bridge = HomeAssistantBridge(HomeAssistantSettings(enabled=True, url="mqtt://127.0.0.1:1"), "ha-8")
    good = SimulatorSource(sim_settings(), interval_s=10.0)
    good.open()
    real = [good.poll().model_copy(update={"simulated": False}) for _ in range(3)]
    fallback = [good.poll() for _ in range(2)]  # the fallback's simulated samples (not shown)
    topic = "battwin-ha/ha_8/jbd_ttyusb0/availability"

    def availability(item: Any) -> list[bytes]:
        return [p.payload for p in bridge._translate(item) if p.topic == topic]

    def alarm(active: bool) -> Any:
        return Alarm(
            code="source_offline",
            severity="critical",
            active=active,
            ts=real[-1].ts,
            message="x",
            source_id="jbd:ttyUSB0",
        )

    assert availability(_Seed(PackIdentity("jbd:ttyUSB0", "ha-8", False, "jbd_ttyusb0"), frozenset())) == []
    assert availability(_Delivered("jbd_ttyusb0", "telemetry", Telemetry(samples=tuple(real[:1])), False)) == [
        b"online"
    ]
    assert availability(_Delivered("jbd_ttyusb0", "alarms", alarm(True), False)) == [b"offline"]
    late = Telemetry(samples=(*real[1:], *fallback))  # the batch that was open when the source stopped answering
    assert availability(_Delivered("jbd_ttyusb0", "telemetry", late, False)) == []
    assert availability(_Delivered("jbd_ttyusb0", "alarms", alarm(False), False)) == [b"online"]


# -- never in the way of the polling loop ----------------------------------------------------------------------
def test_the_queue_is_bounded_and_refusals_are_counted():
    publisher = StatePublisher(lambda item: [], queue_size=16, status=lambda on: Publication("s", b"", True))
    accepted = [publisher.submit(i) for i in range(40)]  # no worker: nothing drains the queue
    assert accepted == [True] * 16 + [False] * 24
    assert publisher.dropped == 24
    # an alarm or health record is never refused: a flood of telemetry cannot hide a state change
    assert publisher.submit("alarm", droppable=False) and publisher.dropped == 24


def test_an_alarm_behind_a_telemetry_flood_still_reaches_home_assistant(tmp_path, mosquitto):
    """A stalled publisher thread (a busy device) whose queue fills with telemetry: the source_offline alarm that
    comes next is still queued, and the pack turns unavailable once the thread runs again."""
    watch = HaWatch(mosquitto.url)
    config = agent_config(tmp_path, mosquitto.url, thing="ha-7", queue_size=16)
    config.telemetry.batch_max_samples = 1  # one queued item per reading
    availability = "battwin-ha/ha_7/jbd_ttyusb0/availability"
    stall, release, stop = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    class StallingSource(FlakySource):
        def poll(self) -> Sample:
            n = self.polls + 1
            if n == 30:  # Home Assistant has the pack online; from the next item on the publisher thread stalls
                seen["online"] = _wait(lambda: watch.on(availability) == [b"online"], scaled(20))
                stall.set()
            if n == 90:  # 29 readings and the offline alarm wait behind the stalled thread: it runs again
                release.set()
                seen["offline"] = _wait(lambda: b"offline" in watch.on(availability), scaled(20))
                stop.set()
            if 60 <= n < 90:
                self.polls += 1
                raise SourceUnavailable("no reply on /dev/ttyUSB0")
            return super().poll()

    agent = Agent(config, StallingSource(10**9, threading.Event(), threading.Event()), MemoryTransport())
    bridge = attach_home_assistant(agent)
    assert bridge is not None and bridge.broker is not None and bridge.broker.wait_connected(scaled(10))
    translate = bridge.publisher._translate

    def stalling(item: Any) -> Any:
        if stall.is_set():
            release.wait(scaled(60))
        return translate(item)

    bridge.publisher._translate = stalling  # type: ignore[method-assign]
    agent.run(stop)
    agent.close()
    watch.close()
    assert seen == {"online": True, "offline": True}
    assert bridge.publisher.dropped >= 10  # the flood did fill the queue: readings were refused, the alarm was not


def test_a_local_broker_that_is_down_costs_the_agent_nothing(tmp_path, caplog):
    caplog.set_level("WARNING", logger="device_agent.home_assistant")
    config = agent_config(tmp_path, f"mqtt://127.0.0.1:{free_port()}", thing="ha-3")  # nothing listens there
    config.telemetry.batch_max_samples = 1  # a state per sample: the most the publisher could be asked
    agent = Agent(config, SimulatorSource(sim_settings(), interval_s=10.0), MemoryTransport())
    bridge = attach_home_assistant(agent)
    assert bridge is not None
    stats = agent.run(threading.Event(), max_samples=2000)
    agent.close()
    assert stats.samples == 2000 and stats.telemetry_batches >= 1999  # the agent ran through
    not_delivered = bridge.publisher.superseded + bridge.publisher.dropped
    assert not_delivered >= 1900  # states not delivered, counted (replaced while waiting, or refused by the queue)
    assert bridge.publisher.pending <= 60  # ... and memory bounded: one per topic, not one per state
    assert bridge.broker is not None and bridge.broker.connect_attempts >= 1 and not bridge.broker.connected
    assert any(r.getMessage() == "home assistant: states not delivered" for r in caplog.records)


def test_reconnects_and_answers_home_assistant_birth(tmp_path):
    require_mosquitto()
    broker = Mosquitto(tmp_path)  # not started yet: the agent comes up before the broker
    config = agent_config(tmp_path, broker.url, thing="ha-4")
    config.source.simulator.time_acceleration = 200.0
    config.telemetry.batch_max_samples = 5
    agent = Agent(config, SimulatorSource(config.source.simulator, interval_s=10.0), MemoryTransport())
    bridge = attach_home_assistant(agent)
    assert bridge is not None and bridge.broker is not None
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    runner.start()
    try:
        retried = _wait(lambda: bridge.broker is not None and bridge.broker.connect_attempts >= 2, scaled(15))
        assert retried  # the first connect failed and was tried again (with backoff)
        broker.start()
        watch = HaWatch(broker.url)
        assert watch.wait(lambda: watch.on("battwin-ha/ha_4/status")[-1:] == [b"online"], scaled(15))
        assert watch.wait(lambda: len(watch.configs()) >= 20, scaled(10))
        n_configs = len(watch.configs())
        # Home Assistant restarts: its birth message makes the agent send discovery again
        with watch._lock:
            watch.messages.clear()
        watch.client.publish("homeassistant/status", b"online", qos=1)
        assert watch.wait(lambda: len(watch.configs()) == n_configs, scaled(10))
        # the broker restarts: the agent reconnects and says it is online again
        broker.stop()
        with watch._lock:
            watch.messages.clear()
        broker.start()
        watch2 = HaWatch(broker.url)  # persistence is off: nothing retained survived, the agent sends it again
        assert watch2.wait(lambda: watch2.on("battwin-ha/ha_4/status")[-1:] == [b"online"], scaled(20))
        assert watch2.wait(lambda: len(watch2.configs()) == n_configs, scaled(10))
        watch2.close()
        watch.close()
    finally:
        stop.set()
        runner.join(timeout=scaled(15))
        agent.close()
        broker.stop()


def _wait(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


# -- the agent process dies: Home Assistant shows it unavailable ------------------------------------------------
@pytest.mark.slow
def test_killed_agent_process_shows_unavailable(tmp_path, mosquitto):
    watch = HaWatch(mosquitto.url)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BATTWIN_HOME_ASSISTANT__ENABLED": "true",
        "BATTWIN_HOME_ASSISTANT__URL": mosquitto.url,
        "BATTWIN_SHADOW__ENABLED": "false",
        "BATTWIN_HEALTH__USE_SHIPPED_MODEL": "false",
    }
    cmd = [sys.executable, "-m", "device_agent.cli", "run", "--thing", "ha-kill", "--source", "simulator",
           "--broker", mosquitto.url, "--spool", str(tmp_path / "kill.db"), "--sample-interval", "1",
           "--set", "telemetry.batch_max_samples=2"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        status = "battwin-ha/ha_kill/status"
        sample = "battwin-ha/ha_kill/simulator_1/sample"
        up = watch.wait(lambda: watch.on(status)[-1:] == [b"online"] and len(watch.on(sample)) >= 2, scaled(30))
        assert up, f"agent did not come up: {proc.poll()} {watch.latest().keys()}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=scaled(10))
        # the broker publishes the agent's last will: every entity of the pack turns unavailable
        assert watch.wait(lambda: watch.on(status)[-1:] == [b"offline"], scaled(10))
        configs = watch.configs()
        assert configs and all(c["availability"][0]["topic"] == status for c in configs.values())
        late = HaWatch(mosquitto.url)  # retained: a Home Assistant starting now sees it unavailable too
        assert late.wait(lambda: late.on(status) == [b"offline"], scaled(10))
        late.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watch.close()


def test_the_docs_list_every_entity():
    from device_agent.home_assistant.entities import HEALTH_ROWS, PACK_SAMPLE_ROWS

    text = (REPO / "docs" / "home_assistant.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z0-9_N]+)` \|", text, flags=re.M))
    rows = {row.key for row in (*PACK_SAMPLE_ROWS, *HEALTH_ROWS, *ALARM_ROWS)} | {"temperature_N", "cell_N_voltage"}
    assert documented >= rows, rows - documented
    assert not {code for code in PULSED_ALARMS if f"| `{code}` |" in text}
