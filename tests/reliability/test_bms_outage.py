"""The BMS goes away and comes back; garbage and half frames on the line.

Real driver, real pty, the JBD emulator driven by the physics simulator; the agent's own coordinator
decides about staleness and alarms. Checks: typed errors only, an offline alarm after N failed polls,
no sample published while the BMS is silent (nothing made up), recovery when it returns.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MemoryTransport
from devkit.bms_emulators.faults import Fault
from devkit.bms_emulators.feed import PackFeed
from devkit.bms_emulators.jbd import JbdEmulator
from hardware.registry import create_source
from schema.messages import telemetry_samples
from schema.simulator_settings import SimulatorSettings


def wait(pred, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def published(transport: MemoryTransport, kind: str) -> list[dict]:
    return [json.loads(p)["body"] for t, p in list(transport.published) if t.endswith("/" + kind)]


def samples(transport: MemoryTransport) -> list[dict]:
    return [s for b in published(transport, "telemetry") for s in telemetry_samples(b)]


@pytest.mark.slow
def test_bms_unplugged_and_replugged(tmp_path: Path):
    feed = PackFeed(SimulatorSettings(seed=3))
    feed.advance(700.0)
    emulator = JbdEmulator(feed)
    link = tmp_path / "ttyBMS"  # a stable name, as the udev rule in hardware/README.md gives
    link.symlink_to(emulator.start())
    cfg = AgentConfig(
        thing_name="bms-1",
        source={"url": f"jbd:{link}?cells=4", "sample_interval_s": 0.05, "offline_after_failures": 3, "retries": 0},
        telemetry={"batch_max_samples": 1},
        shadow={"enabled": False},
    )
    transport = MemoryTransport()
    agent = Agent(cfg, create_source(cfg.source.url, cfg.source), transport, Spool(tmp_path / "s.db"))
    stop = threading.Event()
    worker = threading.Thread(target=agent.run, args=(stop,))
    worker.start()
    try:
        assert wait(lambda: len(samples(transport)) >= 10), "no samples from the emulated BMS"
        assert not any(a["code"] == "source_offline" for a in published(transport, "alarms"))
        # unplug: the device disappears
        emulator.stop()
        link.unlink()
        t_gone = time.time()
        assert wait(lambda: any(a["code"] == "source_offline" and a["active"] for a in published(transport, "alarms")))
        n_at_alarm = len(samples(transport))
        time.sleep(0.5)
        assert len(samples(transport)) == n_at_alarm, "samples were published while the BMS was gone"
        assert agent.stats.poll_failures >= 3
        # replug: a new pty behind the same stable name
        emulator2 = JbdEmulator(feed)
        link.symlink_to(emulator2.start())
        try:
            assert wait(
                lambda: any(a["code"] == "source_offline" and not a["active"] for a in published(transport, "alarms")),
                timeout=30,
            )
            assert wait(lambda: len(samples(transport)) >= n_at_alarm + 10)
        finally:
            stop.set()
            worker.join(20)
            emulator2.stop()
    finally:
        stop.set()
        worker.join(20)
    after = [s for s in samples(transport) if s["ts"] > t_gone]
    assert after, "no samples after the BMS came back"
    assert all(not s["simulated"] for s in samples(transport))


def test_garbage_and_half_frames_are_rejected_not_published(tmp_path: Path):
    feed = PackFeed(SimulatorSettings(seed=4))
    feed.advance(700.0)
    with JbdEmulator(feed) as emulator:
        cfg = AgentConfig(
            thing_name="bms-2",
            source={
                "url": f"jbd:{emulator.path}?cells=4",
                "sample_interval_s": 0.02,
                "offline_after_failures": 1000,
                "retries": 0,
            },
            telemetry={"batch_max_samples": 1},
            shadow={"enabled": False},
        )
        transport = MemoryTransport()
        agent = Agent(cfg, create_source(cfg.source.url, cfg.source), transport, Spool(tmp_path / "s.db"))
        stop = threading.Event()
        worker = threading.Thread(target=agent.run, args=(stop,))
        worker.start()
        try:
            assert wait(lambda: len(samples(transport)) >= 5)
            for fault in (Fault.GARBAGE, Fault.TRUNCATED, Fault.BAD_CHECKSUM, Fault.IMPLAUSIBLE):
                before_fail = agent.stats.poll_failures
                emulator.faults.set(fault, count=5)
                assert wait(lambda: agent.stats.poll_failures >= before_fail + 3), f"{fault} was not detected"
                emulator.faults.clear()
            n = len(samples(transport))
            assert wait(lambda: len(samples(transport)) >= n + 5), "no recovery after the faults cleared"
        finally:
            stop.set()
            worker.join(20)
    # every published sample is a plausible reading of the 4S pack: nothing decoded from garbage got through
    for s in samples(transport):
        assert 4 * 2.0 <= s["voltage_v"] <= 4 * 4.5
        assert len(s["cell_voltages_v"]) == 4


def test_explicit_simulator_fallback_is_tagged_and_kept_out_of_health(tmp_path: Path):
    feed = PackFeed(SimulatorSettings(seed=5))
    feed.advance(700.0)
    emulator = JbdEmulator(feed)
    link = tmp_path / "ttyBMS"
    link.symlink_to(emulator.start())
    cfg = AgentConfig(
        thing_name="bms-3",
        source={
            "url": f"jbd:{link}?cells=4",
            "sample_interval_s": 0.05,
            "offline_after_failures": 3,
            "retries": 0,
            "fallback": "simulator",
        },
        telemetry={"batch_max_samples": 1},
        shadow={"enabled": False},
    )
    transport = MemoryTransport()
    agent = Agent(cfg, create_source(cfg.source.url, cfg.source), transport, Spool(tmp_path / "s.db"))
    stop = threading.Event()
    worker = threading.Thread(target=agent.run, args=(stop,))
    worker.start()
    try:
        assert wait(lambda: len(samples(transport)) >= 5)
        emulator.stop()
        link.unlink()
        assert wait(lambda: any(s["simulated"] for s in samples(transport)))
        assert any(a["code"] == "source_fallback_simulator" and a["active"] for a in published(transport, "alarms"))
        seen_by_tracker = agent.tracker.samples_seen
        n = len(samples(transport))
        assert wait(lambda: len(samples(transport)) >= n + 10)
        assert agent.tracker.samples_seen == seen_by_tracker, "simulated fallback data reached the cycle tracker"
        link.symlink_to(JbdEmulator(feed).start())
        assert wait(
            lambda: any(
                a["code"] == "source_fallback_simulator" and not a["active"] for a in published(transport, "alarms")
            ),
            timeout=30,
        )
        assert wait(lambda: not samples(transport)[-1]["simulated"])
    finally:
        stop.set()
        worker.join(20)
