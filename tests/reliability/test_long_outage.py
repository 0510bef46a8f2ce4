"""A long broker outage (accelerated: thousands of messages queued), then the broker returns.

Every message accepted while the broker was down arrives exactly once after de-duplication by id, in
order per topic. Figures (queued, drain time) go to test-artifacts/outage.json.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.conftest import Mosquitto, require_mosquitto
from tests.support import REPO
from tests.test_e2e_mqtt import make_agent


@pytest.mark.slow
def test_long_outage_thousands_queued_exactly_once_in_order(tmp_path, subscriber_factory):
    require_mosquitto()
    broker = Mosquitto(tmp_path, persistent=True)
    broker.start()
    try:
        sub = subscriber_factory(broker.url, persistent_session=True)
        agent, accepted = make_agent(broker.url, tmp_path, thing="outage-long", accel=50_000.0)
        agent.config.telemetry.batch_max_samples = 2  # many small messages
        agent.batcher.max_samples = 2
        stop = threading.Event()
        worker = threading.Thread(target=agent.run, args=(stop,))
        worker.start()
        assert sub.wait_for(lambda envs: len(envs) > 50, timeout=30)
        broker.stop()
        t_down = time.monotonic()
        while agent.spool.pending < 3000 and time.monotonic() - t_down < 120:
            time.sleep(0.05)
        queued = agent.spool.pending
        outage_s = time.monotonic() - t_down
        broker.start()
        t_up = time.monotonic()
        stop.set()  # stop measuring; shutdown drains what is spooled
        worker.join(180)
        assert not worker.is_alive()
        drained_s = time.monotonic() - t_up
        assert agent.spool.pending == 0
        total = sum(map(len, accepted.values()))
        assert sub.wait_for(lambda envs: len({e["id"] for e in envs}) >= total, timeout=120)
        envs = sub.envelopes()
        ids = [e["id"] for e in envs]
        for kind, want in accepted.items():
            got = list(dict.fromkeys(e["id"] for e in envs if e["kind"] == kind))
            assert got == want, f"{kind}: order or completeness broken"
        figures = {
            "queued_during_outage": queued,
            "outage_s": round(outage_s, 1),
            "messages_total": total,
            "duplicates_received": len(ids) - len(set(ids)),
            "reconnect_and_drain_s": round(drained_s, 2),
        }
        out = REPO / "test-artifacts"
        out.mkdir(exist_ok=True)
        (out / "outage.json").write_text(json.dumps(figures, indent=2))
        assert queued >= 3000, figures
    finally:
        broker.stop()
