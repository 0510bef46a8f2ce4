"""SIGKILL while publishing, and a spool whose disk fills up: nothing accepted is lost, the agent goes on."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import MemoryTransport
from hardware.simulator.source import SimulatorSource
from schema.simulator_settings import SimulatorSettings
from tests.support import IN_CI, REPO

# A producer process: accepts messages into the spool (printing each id only after put() returned) while
# the real Publisher sends them to the broker over the real awscrt transport.
CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from device_agent.config import MqttSettings
from device_agent.uplink.mqtt_transport import MqttTransport
from device_agent.uplink.publisher import Publisher
from device_agent.uplink.spool import Spool
spool = Spool(sys.argv[2])
t = MqttTransport(MqttSettings(url=sys.argv[3]), "crash-child")
t.start()
pub = Publisher(spool, t, inflight=20)
pub.start()
start, count = int(sys.argv[4]), int(sys.argv[5])
for k in range(start, start + count):
    spool.put(f"m{k:06d}", "battwin/crash/telemetry", (f'{{"k":{k}}}').encode(), float(k))
    print(k, flush=True)
    pub.notify()
    time.sleep(0.0005)
pub.wait_empty(60)
print("drained", flush=True)
"""


def write_figures(name: str, figures: dict) -> None:
    out = REPO / "test-artifacts"
    out.mkdir(exist_ok=True)
    (out / name).write_text(json.dumps(figures, indent=2))


@pytest.mark.slow
def test_sigkill_while_publishing_loses_nothing_accepted(tmp_path, mosquitto, subscriber_factory):
    sub = subscriber_factory(mosquitto.url, "battwin/crash/#")
    db = tmp_path / "spool.db"
    rng = random.Random(11)
    accepted: list[int] = []
    next_k = 0
    kills = 0
    for _round in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(Path.cwd()), str(db), mosquitto.url, str(next_k), "100000"],
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + rng.uniform(0.3, 1.5)
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            accepted.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)
        kills += 1
        rest, _ = proc.communicate(timeout=10)
        accepted += [int(x) for x in rest.split() if x.isdigit()]
        next_k = accepted[-1] + 1 if accepted else 0
        # the spool survives every kill: integrity holds and it opens again
        con = sqlite3.connect(db)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
    # a last run sends what is left
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(Path.cwd()), str(db), mosquitto.url, str(next_k), "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "drained" in proc.stdout
    assert Spool(db).pending == 0
    want = {f"m{k:06d}" for k in accepted}
    assert sub.wait_for(lambda _e: {json.loads(p)["k"] for _, p in sub.messages} >= set(accepted), timeout=60)
    got = [json.loads(p)["k"] for _, p in sub.messages]
    assert len(want) > 500 and kills == 6
    assert set(accepted) <= set(got), f"{len(set(accepted) - set(got))} accepted messages lost"
    # order of first arrival follows the order of acceptance
    first = list(dict.fromkeys(got))
    assert [k for k in first if k in set(accepted)] == sorted(set(accepted))
    write_figures(
        "sigkill.json",
        {"kills": kills, "accepted": len(set(accepted)), "lost": 0, "duplicates_received": len(got) - len(set(got))},
    )


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs: a real filesystem that fills up."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        msg = f"cannot mount a small tmpfs here ({r.stderr.strip()}); needs root"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_full_disk_applies_policy_alarms_and_recovers(small_fs):
    filler = small_fs / "filler"
    cfg = AgentConfig(
        thing_name="disk-1",
        spool={"path": small_fs / "spool.db", "max_bytes": 64 * 1024 * 1024},  # larger than the disk
        telemetry={"batch_max_samples": 20, "batch_max_age_s": 3600},
    )
    transport = MemoryTransport(online=False)  # offline: everything stays in the spool
    agent = Agent(cfg, SimulatorSource(SimulatorSettings(time_acceleration=1e6), interval_s=10), transport)
    # fill the disk until only a little room is left
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - 256 * 1024))
    stats = agent.run(threading.Event(), max_samples=20_000)
    assert stats.samples == 20_000, "the agent stopped instead of applying the policy"
    assert agent.spool.dropped_total > 0 and stats.spool_dropped > 0
    dropped_alarms = [
        json.loads(m.payload)["body"]
        for m in agent.spool.peek(100_000)
        if json.loads(m.payload)["kind"] == "alarms" and json.loads(m.payload)["body"]["code"] == "spool_dropped"
    ]
    assert dropped_alarms, "the drop was not reported as an alarm"
    # RELIABILITY.md: "reported as a spool_dropped alarm at most once a minute with the count" (agent time)
    assert len(dropped_alarms) >= 2, "one alarm cannot show the spacing"
    stamps = [a["ts"] for a in dropped_alarms]
    assert all(b - a >= 60.0 for a, b in itertools.pairwise(stamps)), stamps
    counts = [a["details"]["dropped"] for a in dropped_alarms]
    assert all(c > 0 for c in counts) and sum(counts) <= stats.spool_dropped
    assert dropped_alarms[-1]["details"]["dropped_total"] <= agent.spool.dropped_total
    # telemetry goes first: every cycle record and health estimate made while the disk was full is kept
    kinds = [json.loads(m.payload)["kind"] for m in agent.spool.peek(100_000)]
    assert kinds.count("cycles") == stats.cycles and kinds.count("health") == stats.health > 0
    newest_before = agent.spool.peek(100_000)[-1].id
    # space returns: the spool takes new messages again without dropping, and they go out once online
    filler.unlink()
    dropped = agent.spool.dropped_total
    agent2 = Agent(
        cfg, SimulatorSource(SimulatorSettings(time_acceleration=1e6, seed=2), interval_s=10), transport, agent.spool
    )
    agent2.run(threading.Event(), max_samples=400)
    assert agent.spool.dropped_total == dropped
    assert any(m.id == newest_before for m in agent.spool.peek(100_000))
    transport.set_online(True)
    agent3 = Agent(
        cfg, SimulatorSource(SimulatorSettings(time_acceleration=1e6, seed=3), interval_s=10), transport, agent.spool
    )
    agent3.run(threading.Event(), max_samples=20)
    assert agent.spool.pending == 0
    write_figures(
        "disk_full.json",
        {
            "filesystem_bytes": 4 * 2**20,
            "samples_while_full": stats.samples,
            "messages_dropped": dropped,
            "drop_alarms": len(dropped_alarms),
            "dropped_after_space_returned": agent.spool.dropped_total - dropped,
        },
    )
