"""Several packs under one agent (issue #17 item 1): configuration, per-pack twins, isolation, shared transport,
bank view. End-to-end runs against mosquitto and the cloud ingest's checks are at the bottom."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from device_agent import packs as packs_module
from device_agent.agent import Agent
from device_agent.bank import PackFigures, bank_view
from device_agent.config import AgentConfig, ConfigError, load_config, pack_config
from device_agent.packs import MultiPackAgent, SharedTransport
from device_agent.runtime import build_runner
from device_agent.uplink.transport import MemoryTransport, TransportError
from hardware.errors import SourceTimeout
from hardware.simulator.source import SimulatorSource
from hardware.source import Source
from schema.messages import Envelope, Sample
from schema.simulator_settings import SimulatorSettings


def _packs_config(tmp_path: Path, packs: list[dict[str, Any]], **extra: Any) -> AgentConfig:
    fields: dict[str, Any] = {
        "thing_name": "core-1",
        "source": {"url": "simulator", "sample_interval_s": 10.0},
        "telemetry": {"batch_max_samples": 20, "batch_max_age_s": 3600.0},
        "spool": {"path": tmp_path / "spool.db"},
        "shadow": {"enabled": False},
        "health": {"use_shipped_model": False},
        "packs": packs,
    }
    return AgentConfig(**{**fields, **extra})


def _sim(seed: int, capacity_ah: float = 2.0) -> SimulatorSource:
    settings = SimulatorSettings(
        seed=seed, capacity_ah=capacity_ah, time_acceleration=1e6, start_ts=1.7e9, rest_after_charge_s=60.0
    )
    return SimulatorSource(settings, interval_s=10.0, name=f"pack{seed}")


class CountingTransport(MemoryTransport):
    """A MemoryTransport that records its lifecycle and what was published after it stopped."""

    def __init__(self) -> None:
        super().__init__()
        self.starts = 0
        self.stops = 0
        self.after_stop: list[str] = []

    def start(self) -> None:
        self.starts += 1
        self.set_online(True)

    def stop(self) -> None:
        self.stops += 1
        super().stop()

    def publish(self, topic: str, payload: bytes) -> Any:
        if self.stops:
            self.after_stop.append(topic)
        return super().publish(topic, payload)


def _by_thing(transport: MemoryTransport) -> dict[str, list[Envelope]]:
    out: dict[str, list[Envelope]] = {}
    for topic, payload in transport.published:
        env = Envelope.model_validate_json(payload)
        assert topic == f"battwin/{env.thing}/{env.kind}"  # what the cloud ingest checks
        env.parsed_body()
        out.setdefault(env.thing, []).append(env)
    return out


# -- configuration --------------------------------------------------------------------------------------------
def test_a_config_without_packs_is_the_single_agent_as_before(tmp_path):
    config = load_config(None, {"spool": {"path": str(tmp_path / "s.db")}, "shadow": {"enabled": False}})
    assert config.packs == []
    runner = build_runner(config, MemoryTransport())
    try:
        assert type(runner) is Agent and runner.config.thing_name == "battwin-sim-1"
        assert runner.topic("telemetry") == "battwin/battwin-sim-1/telemetry"
    finally:
        runner.close()


def test_each_pack_gets_its_thing_name_spool_file_share_and_overrides(tmp_path):
    config = _packs_config(
        tmp_path,
        [
            {"id": "a", "url": "jbd:/dev/ttyUSB0"},
            {
                "id": "b",
                "url": "jbd:/dev/ttyUSB1",
                "tracker": {"cells_series": 16},
                "health": {"rated_capacity_ah": 280},
            },
        ],
    )
    a, b = (pack_config(config, p) for p in config.packs)
    assert (a.thing_name, b.thing_name) == ("core-1.a", "core-1.b")
    assert (a.spool.path.name, b.spool.path.name) == ("spool.a.db", "spool.b.db")
    assert a.spool.max_bytes + b.spool.max_bytes <= config.spool.max_bytes
    assert (a.source.url, b.source.url) == ("jbd:/dev/ttyUSB0", "jbd:/dev/ttyUSB1")
    assert (a.tracker.cells_series, b.tracker.cells_series) == (1, 16)
    assert (a.health.rated_capacity_ah, b.health.rated_capacity_ah) == (None, 280.0)
    assert a.source.sample_interval_s == 10.0 and a.packs == [] and config.thing_name == "core-1"


@pytest.mark.parametrize(
    ("packs", "expected"),
    [
        ([{"id": "a", "url": "simulator"}, {"id": "A", "url": "simulator"}], "id 'A' is used twice"),
        (
            [{"id": "a", "url": "jbd:/dev/ttyUSB0"}, {"id": "b", "url": "jbd:/dev/ttyUSB0"}],
            "share the serial device /dev/ttyUSB0: jbd reads one pack per device",
        ),
        (
            [
                {"id": "a", "url": "daly:/dev/ttyUSB0?address=0x40"},
                {"id": "b", "url": "daly:/dev/ttyUSB0?address=0x80"},
            ],
            "address option selects the host port",
        ),
        (
            [
                {"id": "a", "url": "modbus-rtu:/dev/ttyUSB0?unit=2"},
                {"id": "b", "url": "modbus-rtu:/dev/ttyUSB0?unit=0x2"},
            ],
            "with the same unit",
        ),
        (
            [{"id": "a", "url": "modbus-rtu:/dev/ttyUSB0"}, {"id": "b", "url": "jbd:/dev/ttyUSB0"}],
            "with different drivers",
        ),
        (
            [{"id": "a", "url": "modbus-tcp://10.0.0.5:502?unit=1"}, {"id": "b", "url": "modbus-tcp://10.0.0.5:502"}],
            "same network device and unit",
        ),
        ([{"id": "a", "url": "jbd:/dev/ttyUSB0", "tracker": {"cells_series": 0}}], "packs[a].tracker: cells_series"),
        ([{"id": "a", "url": "jbd:/dev/ttyUSB0", "health": {"colour": 1}}], "packs[a].health: colour"),
        ([{"id": "a", "url": "   "}], "packs[a].url: source URL is empty"),
        ([{"id": "x" * 32, "url": "simulator"}], "is longer than 128 characters"),
        ([{"id": "a.b", "url": "simulator"}], "packs.0.id"),
        ([{"id": "a", "url": "simulator", "spool": {}}], "packs.0.spool"),
    ],
)
def test_bad_pack_lists_are_refused_up_front_naming_the_packs(packs, expected):
    overrides: dict[str, Any] = {"packs": packs}
    if "x" * 32 in json.dumps(packs):
        overrides["thing_name"] = "c" * 100
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert expected in str(err.value)


def test_packs_on_one_bus_with_distinct_addresses_are_accepted_and_spool_share_is_checked():
    ok = load_config(
        None,
        {
            "packs": [
                {"id": "u1", "url": "modbus-rtu:/dev/ttyUSB0?unit=1"},
                {"id": "u2", "url": "modbus-rtu:/dev/ttyUSB0?unit=2"},
                {"id": "s", "url": "sbs:/dev/i2c-1?address=0x0b"},
                {"id": "t", "url": "sbs:/dev/i2c-1?address=0x0c"},
            ]
        },
    )
    assert [p.id for p in ok.packs] == ["u1", "u2", "s", "t"]
    with pytest.raises(ConfigError, match="leaves 32768 each"):
        load_config(
            None, {"spool": {"max_bytes": 65536}, "packs": [{"id": "a", "url": "sim"}, {"id": "b", "url": "sim"}]}
        )


def test_packs_from_a_toml_file(tmp_path):
    path = tmp_path / "battwin.toml"
    path.write_text(
        'thing_name = "garage"\n[bank]\narrangement = "series"\n'
        '[[packs]]\nid = "p1"\nurl = "jbd:/dev/ttyUSB0"\n'
        '[[packs]]\nid = "p2"\nurl = "jbd:/dev/ttyUSB1"\n[packs.tracker]\ncells_series = 8\n'
    )
    config = load_config(path)
    assert config.bank.arrangement == "series"
    assert [pack_config(config, p).thing_name for p in config.packs] == ["garage.p1", "garage.p2"]
    assert pack_config(config, config.packs[1]).tracker.cells_series == 8


def test_an_unknown_driver_is_refused_before_any_pack_runs(tmp_path):
    config = _packs_config(tmp_path, [{"id": "a", "url": "simulator"}, {"id": "b", "url": "nosuchbms:/dev/x"}])
    with pytest.raises(Exception, match=r"packs\[b\]"):
        MultiPackAgent(config, MemoryTransport())


# -- per-pack twins over one transport --------------------------------------------------------------------------
def test_each_pack_is_its_own_twin_on_its_own_topics(tmp_path):
    config = _packs_config(tmp_path, [{"id": "a", "url": "simulator"}, {"id": "b", "url": "simulator"}])
    transport = CountingTransport()
    runner = MultiPackAgent(config, transport, {"a": _sim(1, 2.0), "b": _sim(2, 3.0)})
    stats = runner.run(threading.Event(), max_samples=3000)
    runner.close()
    things = _by_thing(transport)
    assert set(things) == {"core-1.a", "core-1.b"}
    for pack_id, capacity in (("a", 2.0), ("b", 3.0)):
        envs = things[f"core-1.{pack_id}"]
        source_ids = {s.source_id for e in envs if e.kind == "telemetry" for s in e.parsed_body().samples}  # type: ignore[attr-defined]
        assert source_ids == {f"simulator:pack{1 if pack_id == 'a' else 2}"}  # no sample of the other pack
        cycles = [e.parsed_body() for e in envs if e.kind == "cycles"]
        assert len(cycles) == stats[pack_id].cycles >= 2
        caps = [c.capacity_ah for c in cycles if c.capacity_ah is not None]  # type: ignore[attr-defined]
        assert caps and all(abs(c - capacity) < 0.25 * capacity for c in caps)  # its own battery's capacity
    assert (tmp_path / "spool.a.db").exists() and (tmp_path / "spool.b.db").exists()
    assert transport.starts == 1 and transport.stops == 1 and transport.after_stop == []
    view = runner.last_bank
    assert view is not None and view.packs == 2 and view.arrangement == "parallel"
    status = json.loads((tmp_path / "bank.json").read_text())
    assert status["packs"] == 2 and [p["pack_id"] for p in status["pack_figures"]] == ["a", "b"]
    assert status["simulated"] is True
    # both packs measured a capacity: in parallel they add up, and the 2 Ah pack is the weakest
    assert view.capacity_ah is not None and abs(view.capacity_ah - 5.0) < 1.0 and view.weakest_pack == "a"


class RaisingSource(Source):
    """A driver with a bug: every open/poll raises something that is not a SourceError."""

    source_id = "broken:0"
    time_acceleration = 1000.0  # retried every 10 ms (sample_interval_s / this), not every 10 s

    def poll(self) -> Sample:
        raise ZeroDivisionError("driver bug")


class HangingSource(Source):
    """A read that never returns until released (a wedged USB adapter)."""

    source_id = "hang:0"
    time_acceleration = 1000.0

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def poll(self) -> Sample:
        self.entered.set()
        self.release.wait()
        raise SourceTimeout("released")


def test_a_failing_pack_and_a_hanging_pack_do_not_stall_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(packs_module, "JOIN_TIMEOUT_S", 2.0)
    config = _packs_config(
        tmp_path,
        [
            {"id": "ok1", "url": "sim"},
            {"id": "bug", "url": "sim"},
            {"id": "hang", "url": "sim"},
            {"id": "ok2", "url": "sim"},
        ],
        **{"source": {"url": "simulator", "sample_interval_s": 10.0, "offline_after_failures": 3}},
    )
    hanging = HangingSource()
    transport = CountingTransport()
    runner = MultiPackAgent(
        config, transport, {"ok1": _sim(1), "bug": RaisingSource(), "hang": hanging, "ok2": _sim(2)}
    )
    stop = threading.Event()
    done = threading.Event()

    def run() -> None:
        runner.run(stop, max_samples=None)
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert hanging.entered.wait(30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            healthy = [runner.packs[i].agent.stats.samples for i in (0, 3)]
            if min(healthy) >= 500 and runner.packs[1].agent.stats.poll_failures >= 3:
                break
            time.sleep(0.05)
        stop.set()
        assert done.wait(60)  # the run ends although the hanging pack's thread is still stuck
    finally:
        hanging.release.set()
        thread.join(30)
    runner.close()
    samples = {p.id: p.agent.stats.samples for p in runner.packs}
    assert samples["ok1"] >= 500 and samples["ok2"] >= 500 and samples["bug"] == 0 and samples["hang"] == 0
    things = _by_thing(transport)
    assert {e.kind for e in things["core-1.ok1"]} >= {"telemetry"} and {e.kind for e in things["core-1.ok2"]} >= {
        "telemetry"
    }
    offline = [e.parsed_body() for e in things["core-1.bug"] if e.kind == "alarms"]
    assert any(a.code == "source_offline" and "ZeroDivisionError" in a.message for a in offline)  # type: ignore[attr-defined]
    assert transport.stops == 1


class BusProbe(Source):
    """Records how many reads are on the bus at once."""

    def __init__(self, name: str, on_bus: list[int], peak: list[int], lock: threading.Lock) -> None:
        self.source_id = name
        self.on_bus, self.peak, self.lock = on_bus, peak, lock
        self.n = 0

    def poll(self) -> Sample:
        with self.lock:
            self.on_bus[0] += 1
            self.peak[0] = max(self.peak[0], self.on_bus[0])
        time.sleep(0.002)
        with self.lock:
            self.on_bus[0] -= 1
        self.n += 1
        return Sample(ts=1.7e9 + self.n, voltage_v=13.2, current_a=0.0, source_id=self.source_id)


def test_packs_on_one_bus_take_turns(tmp_path):
    config = _packs_config(
        tmp_path,
        [{"id": f"u{k}", "url": f"modbus-rtu:/dev/ttyFAKE?unit={k}"} for k in (1, 2, 3)],
        source={"url": "simulator", "sample_interval_s": 0.001},
    )
    on_bus, peak, lock = [0], [0], threading.Lock()
    probes = {f"u{k}": BusProbe(f"probe:{k}", on_bus, peak, lock) for k in (1, 2, 3)}
    runner = MultiPackAgent(config, MemoryTransport(), probes)  # type: ignore[arg-type]
    runner.run(threading.Event(), max_samples=100)
    runner.close()
    assert all(p.n == 100 for p in probes.values())
    assert peak[0] == 1  # never two reads on the bus at once


def test_the_shared_transport_starts_once_and_stops_once_after_the_last_user():
    inner = CountingTransport()
    share = SharedTransport(inner)
    handles = [share.handle() for _ in range(3)]
    for h in handles:
        h.start()
        h.start()  # a handle counts once
    handles[0].stop()
    handles[0].stop()
    handles[1].stop()
    assert (inner.starts, inner.stops) == (1, 0)
    handles[2].stop()
    assert (inner.starts, inner.stops) == (1, 1)
    with pytest.raises(TransportError):  # the connection is closed for every user
        handles[0].publish("t", b"x").result(1)


def test_the_shared_window_is_split_among_the_packs():
    class Ipcish(MemoryTransport):
        max_inflight_messages = 8

    share = SharedTransport(Ipcish())
    handles = [share.handle() for _ in range(4)]
    assert [h.max_inflight_messages for h in handles] == [2, 2, 2, 2]


# -- bank view ------------------------------------------------------------------------------------------------
FIGS = [
    PackFigures("a", True, capacity_ah=100.0, soc_pct=80.0, voltage_v=13.3, current_a=-10.0),
    PackFigures("b", True, capacity_ah=90.0, soc_pct=70.0, voltage_v=13.2, current_a=-9.0),
    PackFigures("c", False, capacity_ah=95.0, soc_pct=75.0, voltage_v=13.1, current_a=-11.0),
]


def test_bank_view_in_parallel():
    v = bank_view("parallel", FIGS)
    assert v.capacity_ah == pytest.approx(285.0)
    assert v.remaining_ah == pytest.approx(80.0 + 63.0 + 71.25)
    assert v.voltage_v == pytest.approx(13.2) and v.current_a == pytest.approx(-30.0)
    assert (v.weakest_pack, v.weakest_capacity_ah) == ("b", 90.0)
    assert v.soc_spread_pct == pytest.approx(10.0)
    assert v.capacity_spread_pct == pytest.approx(10.0)
    assert v.voltage_spread_v == pytest.approx(0.2)
    assert (v.packs, v.packs_online) == (3, 2)


def test_bank_view_in_series():
    v = bank_view("series", FIGS)
    assert v.capacity_ah == pytest.approx(90.0)  # the smallest pack limits the string
    assert v.remaining_ah == pytest.approx(63.0)  # b empties first
    assert v.voltage_v == pytest.approx(39.6) and v.current_a == pytest.approx(-10.0)
    assert v.weakest_pack == "b"


def test_bank_view_does_not_guess_what_is_not_measured():
    v = bank_view("parallel", [PackFigures("a", True, soc_pct=50.0), PackFigures("b", True, capacity_ah=10.0)])
    assert v.capacity_ah is None and v.remaining_ah is None and v.current_a is None
    assert v.weakest_pack == "b"  # the only measured capacity
    assert bank_view("series", []).capacity_ah is None


# -- scoping: what the nucleus (recipe accessControl) and IoT Core (DevicePolicy) let a core publish -------------
def _iot_policy_allows(pattern: str, topic: str) -> bool:
    """IoT Core policy resource matching: ``*`` any characters (``/`` included), ``?`` one, else literal."""
    import re

    return (
        re.fullmatch("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), topic)
        is not None
    )


def test_pack_topics_pass_both_nuclei_and_the_iot_policy_keeps_each_core_to_its_own_packs():
    import yaml

    from devkit.nucleus.acl import AccessControl
    from tests.support import REPO

    recipe = yaml.safe_load((REPO / "recipes" / "com.battwin.Agent.yaml").read_text())
    acl = AccessControl.from_configuration(recipe["ComponentConfiguration"]["DefaultConfiguration"])
    config = _packs_config(Path("/tmp"), [{"id": "p1", "url": "sim"}, {"id": "p2", "url": "sim"}])
    topics = [
        f"battwin/{pack_config(config, p).thing_name}/{kind}" for p in config.packs for kind in ("telemetry", "alarms")
    ]
    for flavour in ("classic", "lite"):
        for topic in topics:
            assert acl.allows("aws.greengrass.ipc.mqttproxy", "aws.greengrass#PublishToIoTCore", topic, flavour), topic

    template = (REPO / "cloud" / "template.yaml").read_text()
    thing_var = "${!iot:Connection.Thing.ThingName}"
    publish = [
        line.split(":topic/", 1)[1].rstrip('"')
        for line in template.splitlines()
        if ":topic/battwin/" in line and thing_var in line
    ]
    assert len(publish) == 2  # battwin/<thing>/* and battwin/<thing>.*

    def allowed(core: str, topic: str) -> bool:
        return any(_iot_policy_allows(p.replace(thing_var, core), topic) for p in publish)

    assert all(allowed("core-1", t) for t in topics)
    assert allowed("core-1", "battwin/core-1/telemetry")  # the single-pack agent as before
    assert not allowed("core-1", "battwin/core-10/telemetry")  # another core whose name starts the same
    assert not allowed("core-1", "battwin/core-10.p1/telemetry")  # ... nor its packs
    assert not allowed("core-10", "battwin/core-1.p1/telemetry")
    assert not allowed("core", "battwin/core-1.p1/telemetry")

    # Basic Ingest (DeviceBasicIngestPolicy): the core's own kinds and its packs', through the rule each kind names
    ingest = [
        line.split(":topic/", 1)[1].rstrip('"').replace("${ResourcePrefix}", "battwin")
        for line in template.splitlines()
        if ":topic/$aws/rules/" in line and thing_var in line
    ]
    assert len(ingest) == 8  # two forms for each of the four rules, each rule named (no ${ResourcePrefix}_*)
    assert all("_*" not in p for p in ingest)

    def ingests(core: str, topic: str) -> bool:
        return any(_iot_policy_allows(p.replace(thing_var, core), topic) for p in ingest)

    for kind in ("telemetry", "cycles", "health", "alarms"):
        assert ingests("core-1", f"$aws/rules/battwin_{kind}/battwin/core-1/{kind}")
        assert ingests("core-1", f"$aws/rules/battwin_{kind}/battwin/core-1.p1/{kind}")
    basic = [f"$aws/rules/battwin_{t.rsplit('/', 1)[1]}/{t}" for t in topics]  # what the packs' agents publish
    assert all(ingests("core-1", t) for t in basic)
    assert not ingests("core-1", "$aws/rules/battwin_telemetry/battwin/core-10/telemetry")  # another thing
    assert not ingests("core-1", "$aws/rules/battwin_telemetry/battwin/core-10.p1/telemetry")
    assert not ingests("core-10", "$aws/rules/battwin_telemetry/battwin/core-1/telemetry")
    assert not ingests("core-1", "$aws/rules/battwin_telemetry/battwin/core-1/cycles")  # another kind, own rule
    assert not ingests("core-1", "$aws/rules/other_rule/battwin/core-1/telemetry")  # a rule not ours
    # the two policies do not open each other's topics
    assert not allowed("core-1", "$aws/rules/battwin_telemetry/battwin/core-1/telemetry")
    assert not ingests("core-1", "battwin/core-1/telemetry")
    # ... and what a `${ResourcePrefix}_*` rule would have allowed: publishing as another thing
    star = "$aws/rules/battwin_*/battwin/${!iot:Connection.Thing.ThingName}/*"
    assert _iot_policy_allows(
        star.replace(thing_var, "core-1"), "$aws/rules/battwin_x/battwin/core-10/y/battwin/core-1/z"
    )
    # the nucleus lets the pack topics through Basic Ingest too (the recipe's accessControl)
    for flavour in ("classic", "lite"):
        for topic in basic:
            assert acl.allows("aws.greengrass.ipc.mqttproxy", "aws.greengrass#PublishToIoTCore", topic, flavour), topic


# -- end to end: battwin run with packs, JBD emulators over ptys, mosquitto, the cloud ingest's checks ------------
@pytest.mark.slow
def test_battwin_run_with_packs_end_to_end(tmp_path, mosquitto, subscriber_factory):
    import subprocess
    import sys

    from cloud.ingest.checks import RuleEvent, validate_message
    from devkit.bms_emulators.faults import Fault, FaultControl
    from devkit.bms_emulators.jbd import JbdEmulator
    from tests.hardware.hw_support import make_feed

    faults = [FaultControl(), FaultControl()]
    emulators = [JbdEmulator(make_feed(seed), f) for seed, f in zip((3, 4), faults, strict=True)]
    for e in emulators:
        e.start()
    sub = subscriber_factory(mosquitto.url)
    conf = tmp_path / "battwin.toml"
    conf.write_text(
        f'thing_name = "garage"\n[mqtt]\nurl = "{mosquitto.url}"\n[spool]\npath = "{tmp_path / "spool.db"}"\n'
        "[shadow]\nenabled = false\n[health]\nuse_shipped_model = false\n"
        "[source]\nsample_interval_s = 0.2\noffline_after_failures = 2\n"
        "[telemetry]\nbatch_max_samples = 5\nbatch_max_age_s = 3600\n"
        '[bank]\narrangement = "series"\ninterval_s = 1\n'
        f'[[packs]]\nid = "j1"\nurl = "{emulators[0].url}?timeout=0.5&backoff_min_s=0"\n'
        f'[[packs]]\nid = "j2"\nurl = "{emulators[1].url}?timeout=0.5&backoff_min_s=0"\n'
        '[[packs]]\nid = "sim"\nurl = "simulator"\n[packs.source.simulator]\nseed = 5\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "device_agent.cli", "run", "--config", str(conf), "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        things = ("garage.j1", "garage.j2", "garage.sim")

        def telemetry_from(envs: list[dict[str, Any]], thing: str) -> int:
            return sum(1 for e in envs if e["thing"] == thing and e["kind"] == "telemetry")

        assert sub.wait_for(lambda envs: all(telemetry_from(envs, t) >= 2 for t in things), timeout=60)
        # pack j2's BMS stops answering (its pty stays open: a freed /dev/pts/N could be handed to another
        # process's emulator on this shared machine, and the driver would reconnect to that one)
        faults[1].set(Fault.SILENCE)
        before = {t: telemetry_from(sub.envelopes(), t) for t in ("garage.j1", "garage.sim")}
        assert sub.wait_for(
            lambda envs: (
                any(
                    e["thing"] == "garage.j2" and e["kind"] == "alarms" and e["body"]["code"] == "source_offline"
                    for e in envs
                )
                and all(telemetry_from(envs, t) >= before[t] + 3 for t in before)
            ),
            timeout=60,
        )
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=60)
        for e in emulators:
            e.stop()
    assert proc.returncode == 0, err[-2000:]
    for topic, payload in sub.messages:
        _, thing, kind = topic.split("/")
        envelope, _body = validate_message(
            payload,
            RuleEvent(rule_topic=topic, rule_thing=thing, rule_kind=kind),
            time.time(),
            max_message_bytes=128 * 1024,
            max_clock_skew_s=86_400.0,
        )  # raises Rejected on a thing/topic mismatch or a bad body
        assert envelope.thing in things
    sim = [e for e in sub.envelopes() if e["thing"] == "garage.sim"]
    assert sim and all(e["simulated"] for e in sim)
    assert not any(e["simulated"] for e in sub.envelopes() if e["thing"] in ("garage.j1", "garage.j2"))
    status = json.loads((tmp_path / "bank.json").read_text())
    assert status["arrangement"] == "series" and status["packs"] == 3
    figures = {p["pack_id"]: p for p in status["pack_figures"]}
    assert status["voltage_v"] == pytest.approx(sum(f["voltage_v"] for f in figures.values()))  # in series
    assert status["packs_online"] == 2 and figures["j2"]["online"] is False  # its BMS went silent


@pytest.mark.slow
def test_the_multipack_benchmark_measures_both_agents_and_writes_its_figures(tmp_path):
    import subprocess
    import sys

    from tests.conftest import require_mosquitto
    from tests.support import REPO

    require_mosquitto()
    out = tmp_path / "multipack.json"
    args = ["--packs", "3", "--seconds", "3", "--warmup", "2", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_multipack.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["packs"] == 3 and figures["single_pack"]["packs"] == 1 and figures["simulated"] is True
    assert figures["cpu_pct_of_one_core"] > 0 and figures["rss_mb"] > figures["bare_python_rss_mb"]
    assert figures["multi_pack"]["samples"] > figures["single_pack"]["samples"] > 0  # three packs polled, not one
    assert set(figures["met"]) == {"cpu_pct_of_one_core", "rss_mb"}
    assert "simulated packs at 1 Hz" in proc.stdout


def test_the_readme_multipack_example_is_a_valid_configuration(tmp_path):
    from tests.support import REPO

    readme = (REPO / "README.md").read_text()
    section = readme.split("## Several packs on one core", 1)[1]
    toml = section.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "battwin.toml"
    path.write_text(toml)
    config = load_config(path)
    packs = [pack_config(config, p) for p in config.packs]
    assert [p.thing_name for p in packs] == ["garage.p1", "garage.p2", "garage.p3"]
    assert (packs[1].tracker.cells_series, packs[1].health.rated_capacity_ah) == (16, 280.0)
    assert packs[2].tracker.cells_series == 1  # the override was p2's only
    runner = MultiPackAgent(
        config.model_copy(update={"spool": config.spool.model_copy(update={"path": tmp_path / "s.db"})}),
        MemoryTransport(),
    )
    try:
        buses = {p.id: p.source.bus for p in runner.packs}
        assert buses["p1"] is None and buses["p2"] is not None and buses["p2"] is buses["p3"]  # one RS485 bus
    finally:
        runner.close()


def test_what_the_single_pack_agent_left_unsent_is_sent_after_switching_to_packs(tmp_path):
    from device_agent.uplink.spool import Spool

    old = Spool(tmp_path / "spool.db")
    old.put("left-1", "battwin/core-1/telemetry", b'{"left":1}', 1.7e9)
    old.put("left-2", "battwin/core-1/alarms", b'{"left":2}', 1.7e9)
    old.close()
    config = _packs_config(tmp_path, [{"id": "a", "url": "sim"}])
    transport = CountingTransport()
    runner = MultiPackAgent(config, transport, {"a": _sim(1)})
    runner.run(threading.Event(), max_samples=50)
    runner.close()
    topics = [t for t, _ in transport.published]
    assert {"battwin/core-1/telemetry", "battwin/core-1/alarms"} <= set(topics)  # the leftovers, as spooled
    assert Spool(tmp_path / "spool.db").pending == 0  # acknowledged, then deleted
    assert transport.stops == 1


def test_a_live_change_and_a_new_model_reach_every_pack(tmp_path):
    config = _packs_config(
        tmp_path, [{"id": "a", "url": "sim"}, {"id": "b", "url": "sim", "telemetry": {"decimation": 5}}]
    )
    runner = MultiPackAgent(config, MemoryTransport(), {"a": _sim(1), "b": _sim(2)})
    try:
        changed = config.model_copy(
            update={"telemetry": config.telemetry.model_copy(update={"batch_max_samples": 7, "decimation": 2})}
        )
        runner.apply_config(changed)

        class Model:
            method = "hybrid"
            version = "test-1"
            calls = 0

            def forecast(self, *args: Any, **kwargs: Any) -> None:
                Model.calls += 1

        runner.set_health_model(Model())  # type: ignore[arg-type]
        for agent in runner.agents:
            agent._run_tasks()  # what each pack's thread does before its next poll
        a, b = runner.agents
        assert (a.batcher.max_samples, b.batcher.max_samples) == (7, 7)
        assert (a.batcher.decimation, b.batcher.decimation) == (2, 5)  # b's own override still wins
        assert a.estimator.model is b.estimator.model is not None  # one model, shared
        assert a.estimator.model.version == "test-1"
        a.estimator.model.forecast([], 1.0, 0.8, 10)
        assert Model.calls == 1
    finally:
        runner.close()


def test_packs_from_the_environment_as_the_recipe_passes_them(monkeypatch):
    monkeypatch.setenv(
        "BATTWIN_PACKS", '[{"id": "a", "url": "jbd:/dev/ttyUSB0"}, {"id": "b", "url": "jbd:/dev/ttyUSB1"}]'
    )
    assert [p.id for p in load_config().packs] == ["a", "b"]
    for empty in ("[]", ""):  # the default, and an empty list rendered as nothing
        monkeypatch.setenv("BATTWIN_PACKS", empty)
        assert load_config().packs == []
    monkeypatch.setenv("BATTWIN_PACKS", "jbd:/dev/ttyUSB0")
    with pytest.raises(ConfigError, match='field "packs"'):
        load_config()
