import sqlite3
import threading
import time

import pytest

from device_agent.uplink.spool import ACK_BATCH, ACK_DELAY_S, Spool, SpoolError


def fill(spool, n, size=100, start=0):
    for k in range(start, start + n):
        spool.put(f"id{k}", "battwin/t/telemetry", bytes([k % 256]) * size, float(k))


def test_messages_survive_reopen_in_order(tmp_path):
    path = tmp_path / "s.db"
    s = Spool(path)
    fill(s, 10)
    s.ack([m.seq for m in s.peek(3)])
    s.close()
    s = Spool(path)
    msgs = s.peek(100)
    assert [m.id for m in msgs] == [f"id{k}" for k in range(3, 10)]
    assert s.pending == 7 and s.bytes_used == 700


def test_duplicate_id_is_stored_once(tmp_path):
    s = Spool(tmp_path / "s.db")
    s.put("same", "t", b"a", 1.0)
    s.put("same", "t", b"a", 1.0)
    assert len(s.peek(10)) == 1


def test_drop_oldest_when_full_is_counted_and_persisted(tmp_path):
    path = tmp_path / "s.db"
    s = Spool(path, max_bytes=64 * 1024, policy="drop_oldest")
    fill(s, 100, size=1024)  # 100 KiB into a 64 KiB spool
    assert s.bytes_used <= 64 * 1024
    ids = [m.id for m in s.peek(1000)]
    assert ids[-1] == "id99" and ids[0] != "id0"  # newest kept, oldest dropped
    assert s.dropped_total == 100 - len(ids)
    s.close()
    assert Spool(path, max_bytes=64 * 1024).dropped_total == 100 - len(ids)


def test_drop_newest_refuses_and_keeps_old(tmp_path):
    s = Spool(tmp_path / "s.db", max_bytes=64 * 1024, policy="drop_newest")
    fill(s, 100, size=1024)
    ids = [m.id for m in s.peek(1000)]
    assert ids[0] == "id0" and len(ids) == 64
    assert s.dropped_total == 36


def test_concurrent_put_and_ack(tmp_path):
    s = Spool(tmp_path / "s.db")
    done = threading.Event()
    acked = []

    def consumer():
        while not done.is_set() or s.pending:
            msgs = s.peek(50)
            s.ack([m.seq for m in msgs])
            acked.extend(m.id for m in msgs)

    t = threading.Thread(target=consumer)
    t.start()
    fill(s, 2000, size=10)
    done.set()
    t.join(30)
    assert acked == [f"id{k}" for k in range(2000)]


def test_state_round_trip_and_corrupt_file(tmp_path):
    s = Spool(tmp_path / "s.db")
    s.set_state("agent", {"cycle": 3, "points": [[1, 2.0, None, 25.0]]})
    assert s.get_state("agent")["cycle"] == 3
    s.close()
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a sqlite database" * 100)
    with pytest.raises(SpoolError, match="bad.db"):
        Spool(bad)


def test_wal_mode(tmp_path):
    s = Spool(tmp_path / "s.db")
    s.close()
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_full_spool_drops_telemetry_before_alarms_and_health(tmp_path):
    s = Spool(tmp_path / "s.db", max_bytes=64 * 1024, policy="drop_oldest")
    s.put("alarm-1", "battwin/t/alarms", b"a" * 1000, 0.0)
    s.put("health-1", "battwin/t/health", b"h" * 1000, 0.0)
    for k in range(100):
        s.put(f"tel{k}", "battwin/t/telemetry", b"x" * 1024, float(k))
    ids = [m.id for m in s.peek(1000)]
    assert ids[:2] == ["alarm-1", "health-1"]  # the oldest, but not telemetry: kept
    assert "tel0" not in ids and "tel99" in ids


def test_ack_while_a_put_holds_the_spool_does_not_wait_and_is_never_resent(tmp_path):
    path = tmp_path / "s.db"
    s = Spool(path)
    fill(s, 65)
    batch = [m.seq for m in s.peek(ACK_BATCH + 10)]  # a full batch: due for deletion at once
    with s._lock:  # a put in progress on the agent's thread
        t = threading.Thread(target=s.ack, args=(batch,))
        t.start()
        t.join(2)
        assert not t.is_alive()  # the publisher was not held up
        # acknowledged but not deleted yet: never handed out again
        assert [m.id for m in s.peek(100)] == [f"id{k}" for k in range(60, 65)]
    assert s.pending == 65
    fill(s, 1, start=65)  # the next put deletes them, in its own transaction
    assert s.pending == 6 and s.bytes_used == 600
    s.close()
    assert [m.id for m in Spool(path).peek(100)] == [f"id{k}" for k in range(60, 66)]


def test_acknowledgements_are_deleted_in_batches_or_after_a_short_delay(tmp_path):
    s = Spool(tmp_path / "s.db")
    fill(s, 3)
    first = s.peek(1)[0].seq
    s.ack([first])
    assert s.pending == 3 and [m.id for m in s.peek(10)] == ["id1", "id2"]  # queued, not handed out
    time.sleep(ACK_DELAY_S * 2)
    s.ack([])  # the publisher's next pass: the oldest waited long enough
    assert s.pending == 2
    s.ack([m.seq for m in s.peek(10)], wait=True)  # stop(): deleted before returning
    assert s.pending == 0 and s.bytes_used == 0


def test_acknowledged_messages_are_deleted_on_close(tmp_path):
    path = tmp_path / "s.db"
    s = Spool(path)
    fill(s, 3)
    s.ack([s.peek(1)[0].seq])
    s.close()
    assert [m.id for m in Spool(path).peek(10)] == ["id1", "id2"]


@pytest.mark.parametrize(("value", "pragma"), [("NORMAL", 1), ("FULL", 2)])
def test_spool_synchronous_is_settable_and_the_agent_honours_it(tmp_path, monkeypatch, value, pragma):
    """RELIABILITY.md tells owners without power-loss protection to set the spool to FULL: the setting exists
    (here through the environment, as the recipe's or a user's configuration would set it) and reaches SQLite."""
    from device_agent.agent import Agent
    from device_agent.config import ConfigError, load_config
    from device_agent.uplink.transport import MemoryTransport
    from hardware.simulator.source import SimulatorSource
    from schema.simulator_settings import SimulatorSettings

    monkeypatch.setenv("BATTWIN_SPOOL__SYNCHRONOUS", value)
    config = load_config(overrides={"spool": {"path": str(tmp_path / "spool.db")}})
    assert config.spool.synchronous == value
    agent = Agent(config, SimulatorSource(SimulatorSettings(seed=1)), MemoryTransport())
    try:
        assert agent.spool._db.execute("PRAGMA synchronous").fetchone()[0] == pragma
    finally:
        agent.spool.close()
    monkeypatch.setenv("BATTWIN_SPOOL__SYNCHRONOUS", "OFF")  # never silently less durable than NORMAL
    with pytest.raises(ConfigError, match=r"spool\.synchronous"):
        load_config()
