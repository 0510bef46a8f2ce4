"""The uplink against nucleus lite's two run-time limits found on a real lite 2.6 (issue 13):

* iotcored keeps QoS 1 publishes awaiting IoT Core's PUBACK in a 15,000-byte store of at most 10 records and
  refuses one that does not fit (ServiceError "Failed to publish the message."); the emulator's lite flavour
  emulates that store, the IPC transport keeps what it has in flight within 8 records / 14,000 B;
* a restarted ggipcd forgets the SVCUIDs it issued; the agent tells "nucleus down" (keep backing off) from
  "token refused" (give up after 3 refusals over >= 30 s, exit 75 so the nucleus restarts it with a new one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from device_agent.config import AgentConfig
from device_agent.greengrass.connection import IpcConnection, token_refused
from device_agent.greengrass.ipc_limits import (
    DEFAULT_INFLIGHT_BYTES,
    DEFAULT_INFLIGHT_MESSAGES,
    DEFAULT_STORE_HOLD_S,
    mqtt_publish_packet_bytes,
    publish_payload_budget,
)
from device_agent.greengrass.ipc_transport import IpcTransport
from device_agent.runtime import build_transport
from device_agent.uplink.publisher import Publisher
from device_agent.uplink.spool import Spool
from devkit.nucleus import NucleusEmulator
from devkit.nucleus.ops_iot import LITE_PUBLISH_FAILED, _publish_packet_size
from schema.messages import Alarm, Sample, Telemetry, encode_envelope
from tests.greengrass.gg_support import AGENT_RECIPE, THING, broad_recipe
from tests.support import REPO

TELEMETRY = f"battwin/{THING}/telemetry"
ALARMS = f"battwin/{THING}/alarms"
EXIT_NUCLEUS_REFUSED = 75


def _telemetry(msg_id: str, size: int) -> bytes:
    """A telemetry message as the agent encodes it, with as many samples as fit ``size`` bytes."""
    samples: list[Sample] = []
    payload = b""
    while True:
        k = len(samples)
        samples.append(Sample(ts=1.7e9 + k, voltage_v=13.2 - k * 1e-3, current_a=-1.5, source_id="sim-1"))
        candidate = encode_envelope(THING, "telemetry", Telemetry(samples=tuple(samples)), 1.7e9 + k, msg_id)
        if len(candidate) > size and payload:
            return payload
        payload = candidate


def _alarm(msg_id: str, size: int) -> bytes:
    """An alarm message as the agent encodes it, its text padded to ``size`` bytes."""
    alarm = Alarm(ts=1.7e9, code="spool_dropped", severity="warning", message="", source_id="sim-1")
    base = len(encode_envelope(THING, "alarms", alarm, 1.7e9, msg_id))
    padded = alarm.model_copy(update={"message": "x" * max(0, size - base)})
    return encode_envelope(THING, "alarms", padded, 1.7e9, msg_id)


def _backlog(spool: Spool, parts: int = 30) -> list[str]:
    """What an agent restarted after an outage finds in its spool: telemetry parts of ~7 KB (as the real lite
    run sent: 3,071 / 7,144 / 6,584 B) with an alarm after every third one. Returns the message ids in order."""
    budget = publish_payload_budget(TELEMETRY)
    ids = []
    for k in range(parts):
        msg_id = f"t{k:03d}"
        spool.put(msg_id, TELEMETRY, _telemetry(msg_id, budget - 150 * (k % 3)), 1.7e9 + k)
        ids.append(msg_id)
        if k % 3 == 2:
            msg_id = f"a{k:03d}"
            spool.put(msg_id, ALARMS, _alarm(msg_id, 400), 1.7e9 + k)
            ids.append(msg_id)
    return ids


def _published_ids(emu: NucleusEmulator) -> list[str]:
    return [json.loads(m.payload)["id"] for m in emu.published if m.topic.startswith("battwin/")]


# -- the packet size both sides count -----------------------------------------------------------------
def test_the_publish_packet_size_is_what_mqtt_3_1_1_writes():
    # fixed header 1 + remaining length (1 byte < 128, 2 bytes < 16,384) + topic length 2 + topic + packet id 2
    assert mqtt_publish_packet_bytes("a/b", 10) == 1 + 1 + 2 + 3 + 2 + 10
    assert mqtt_publish_packet_bytes(TELEMETRY, 7_287) == 1 + 2 + 2 + len(TELEMETRY) + 2 + 7_287
    assert mqtt_publish_packet_bytes("t", 20_000) == 1 + 3 + 2 + 1 + 2 + 20_000
    for topic, n in (("a/b", 0), ("a/b", 122), ("a/b", 123), (TELEMETRY, 7_287), ("t", 16_378), ("t", 16_379)):
        assert mqtt_publish_packet_bytes(topic, n) == _publish_packet_size(topic, n)  # the emulator's own count
    # the defaults: two of the largest telemetry parts do not fit 14,000 B, so at most one is in flight with
    # anything small; eight small messages are
    biggest = mqtt_publish_packet_bytes(TELEMETRY, publish_payload_budget(TELEMETRY))
    assert DEFAULT_INFLIGHT_BYTES < 15_000 and DEFAULT_INFLIGHT_MESSAGES < 10
    assert biggest < DEFAULT_INFLIGHT_BYTES < 2 * biggest


# -- the emulated store: the positive controls ------------------------------------------------------------
def test_lite_refuses_a_publish_that_does_not_fit_its_unacked_store(make_emulator, ipc_client_factory):
    """The unmodified client, no budget: with the cloud's acknowledgements held, lite's store takes two ~7 KB
    publishes (14,086 B of 15,000) and refuses the third with its ServiceError; released, it takes it."""
    from awsiot.greengrasscoreipc.model import QOS, ServiceError

    emu = make_emulator(broad_recipe(), flavour="lite")
    client = ipc_client_factory(emu)
    emu.hold_cloud_acks()
    payload = b"x" * 7_000
    for _ in range(2):
        client.publish_to_iot_core(topic_name=TELEMETRY, qos=QOS.AT_LEAST_ONCE, payload=payload)
    with pytest.raises(ServiceError) as info:
        client.publish_to_iot_core(topic_name=TELEMETRY, qos=QOS.AT_LEAST_ONCE, payload=payload)
    # lite writes "Failed to publish the message." as "_message", which the SDK does not read
    assert info.value.message is None and LITE_PUBLISH_FAILED == "Failed to publish the message."
    assert emu.store_refusals == 1 and len(emu.published) == 2  # refused: not sent to the cloud
    client.publish_to_iot_core(topic_name=TELEMETRY, qos=QOS.AT_MOST_ONCE, payload=payload)  # QoS 0: not stored
    assert emu.release_cloud_acks() == 2
    client.publish_to_iot_core(topic_name=TELEMETRY, qos=QOS.AT_LEAST_ONCE, payload=payload)
    # ten records at most, however small
    emu.release_cloud_acks()
    for _ in range(10):
        client.publish_to_iot_core(topic_name=TELEMETRY, qos=QOS.AT_LEAST_ONCE, payload=b"small")
    with pytest.raises(ServiceError):
        client.publish_to_iot_core(topic_name=TELEMETRY, qos=QOS.AT_LEAST_ONCE, payload=b"small")
    assert emu.store_refusals == 2
    assert emu.store_usage()[:2] == (10, 10 * _publish_packet_size(TELEMETRY, 5))


def test_classic_has_no_such_store(make_emulator, ipc_client_factory):
    from awsiot.greengrasscoreipc.model import QOS

    emu = make_emulator(broad_recipe(), flavour="classic")
    client = ipc_client_factory(emu)
    emu.hold_cloud_acks()
    for _ in range(12):
        client.publish_to_iot_core(topic_name=TELEMETRY, qos=QOS.AT_LEAST_ONCE, payload=b"x" * 7_000)
    assert emu.store_refusals == 0 and len(emu.published) == 12


def _drain(emu: NucleusEmulator, transport: IpcTransport, spool: Spool, inflight: int) -> Publisher:
    publisher = Publisher(spool, transport, inflight=inflight)
    transport.start()
    assert transport.wait_connected(10)
    publisher.start()
    assert publisher.wait_empty(120), f"{spool.pending} still spooled"
    publisher.stop()
    return publisher


@pytest.mark.slow
def test_the_agent_defaults_send_a_backlog_through_lite_without_a_refusal(make_emulator, tmp_path, monkeypatch):
    """The restart burst seen on real lite (the backlog sent at once → MQTTPublishStoreFailed): with iotcored's
    store emulated and IoT Core acknowledging each publish 50 ms after it was written (an in-region round
    trip; the transport allows 0.25 s, so a loaded machine has 0.2 s of slack), the agent's defaults (the
    transport runtime builds from a default configuration, the publisher's window of mqtt.inflight = 50) send
    the whole backlog with no refusal, nothing lost, in order."""
    emu = make_emulator(AGENT_RECIPE, flavour="lite", cloud_ack_delay_s=0.05)
    for key, value in emu.env().items():
        monkeypatch.setenv(key, value)
    config = AgentConfig(thing_name=THING)
    spool = Spool(tmp_path / "spool.db")
    ids = _backlog(spool)
    transport = build_transport(config)
    assert isinstance(transport, IpcTransport)
    try:
        publisher = _drain(emu, transport, spool, config.mqtt.inflight)
    finally:
        transport.stop()
    assert emu.store_refusals == 0 and transport.service_refusals == 0 and publisher.failures == 0
    assert _published_ids(emu) == ids, "every message arrives once, in order"
    _, _, peak_records, peak_bytes = emu.store_usage()
    assert peak_records <= DEFAULT_INFLIGHT_MESSAGES and peak_bytes <= DEFAULT_INFLIGHT_BYTES
    assert transport.budget.peak_bytes <= DEFAULT_INFLIGHT_BYTES
    spool.close()


@pytest.mark.slow
def test_a_client_that_ignores_the_budget_is_refused_and_still_loses_nothing(make_emulator, tmp_path):
    """The positive control for the test above, and the retry: the same backlog with the budget lifted (50 in
    flight, bytes unbounded, no hold — what the agent did before) is refused by lite's store; every refused
    publish stays in the spool, is sent again after a backoff pause, and arrives."""
    emu = make_emulator(AGENT_RECIPE, flavour="lite", cloud_ack_delay_s=0.1)
    spool = Spool(tmp_path / "spool.db")
    ids = _backlog(spool)
    conn = IpcConnection(emu.socket_path, emu.svcuid)
    transport = IpcTransport(
        conn,
        max_inflight_messages=50,
        max_inflight_bytes=10**9,
        store_hold_s=0.0,
        service_retry_min_s=0.2,
        service_retry_max_s=0.4,
    )
    try:
        publisher = _drain(emu, transport, spool, 50)
    finally:
        transport.stop()
        conn.stop()
    assert emu.store_refusals > 0 and transport.service_refusals == emu.store_refusals
    assert publisher.failures >= emu.store_refusals  # refused publishes failed, late, and were sent again
    assert set(_published_ids(emu)) == set(ids), "nothing lost"
    assert spool.pending == 0
    spool.close()


@pytest.mark.slow
def test_a_store_that_stays_full_gets_publishes_at_the_backoff_schedule_and_loses_nothing(make_emulator, tmp_path):
    """IoT Core acknowledges nothing for a while (lite's store stays full: a slow or stalled cloud link): the
    transport's retries follow its backoff schedule — one pause per step, never a tight loop — and once the
    acknowledgements come, everything arrives."""
    from hardware.transports.backoff import Backoff

    emu = make_emulator(AGENT_RECIPE, flavour="lite", cloud_ack_delay_s=0.05)
    emu.hold_cloud_acks()
    spool = Spool(tmp_path / "spool.db")
    ids = _backlog(spool, parts=9)
    conn = IpcConnection(emu.socket_path, emu.svcuid)
    transport = IpcTransport(conn, service_retry_min_s=0.2, service_retry_max_s=0.8)
    publisher = Publisher(spool, transport, inflight=50)
    window_s = 4.0
    transport.start()
    try:
        assert transport.wait_connected(10)
        publisher.start()
        threading.Event().wait(window_s)  # the counting window: the store stays full all along
        refused = emu.store_refusals
        pauses = Backoff(0.2, 0.8, jitter=0.5).max_attempts(window_s)
        assert 1 <= refused <= DEFAULT_INFLIGHT_MESSAGES * pauses, f"{refused} refusals in {window_s} s"
        accepted = len(emu.published)  # what the full store took (two ~7 KB parts and a small alarm at most)
        assert 1 <= accepted <= 3
        # the hold grows only when a publish was accepted since the last pause, never on refusals in a row
        assert transport.store_hold_s <= DEFAULT_STORE_HOLD_S * 2**accepted
        emu.hold_cloud_acks(False)  # the cloud acknowledges again (what was held, and from now on)
        assert publisher.wait_empty(120), f"{spool.pending} still spooled"
    finally:
        publisher.stop()
        transport.stop()
        conn.stop()
    assert set(_published_ids(emu)) == set(ids), "nothing lost"
    spool.close()


# -- a restarted ggipcd forgets the token -------------------------------------------------------------------
def test_connect_failures_are_told_apart(make_emulator, socket_path):
    from awscrt.exceptions import AwsCrtError
    from awsiot.eventstreamrpc import AccessDeniedError

    assert token_refused(AccessDeniedError("aws#AccessDenied", "Connection access denied"))  # classic's answer
    assert token_refused(AwsCrtError(1051, "AWS_IO_SOCKET_CLOSED", "socket is closed."))  # lite closes it
    assert not token_refused(RuntimeError("1047 (AWS_IO_SOCKET_CONNECTION_REFUSED): socket connection refused."))
    assert not token_refused(RuntimeError("44 (AWS_ERROR_FILE_INVALID_PATH): Invalid file path."))
    assert not token_refused(TimeoutError())


@pytest.mark.parametrize("flavour", ["lite"])
@pytest.mark.slow
def test_a_restarted_lite_ipc_server_refuses_the_token_and_the_connection_gives_up(make_emulator):
    emu = make_emulator(broad_recipe())
    conn = IpcConnection(
        emu.socket_path,
        emu.svcuid,
        reconnect_min_s=0.1,
        reconnect_max_s=0.4,
        stale_token_refusals=3,
        stale_token_after_s=1.0,
    )
    gave_up = threading.Event()
    reasons: list[str] = []
    conn.add_fatal_callback(lambda reason: (reasons.append(reason), gave_up.set()))
    conn.start()
    try:
        assert conn.wait_connected(10)
        emu.restart()  # ggipcd restarted: it no longer knows the token
        assert gave_up.wait(30)
        refused = emu.refused
        assert refused >= 3 and conn.token_refusals == refused and emu.connects == 1
        assert conn.fatal == reasons[0] and "SVCUID" in reasons[0]
        assert not conn.connected
        attempts = conn.connect_attempts
        assert not emu.wait_for_connections(2, timeout=1.0)  # it stopped trying
        assert conn.connect_attempts == attempts and emu.refused == refused
    finally:
        conn.stop()


@pytest.mark.slow
def test_a_nucleus_that_is_merely_down_is_waited_for(make_emulator):
    """Connection refused / no socket for longer than the give-up window is not a token refusal: the connection
    keeps backing off and reconnects with its token when the nucleus is back (classic: tokens survive)."""
    emu = make_emulator(broad_recipe(), flavour="classic")
    conn = IpcConnection(
        emu.socket_path,
        emu.svcuid,
        reconnect_min_s=0.1,
        reconnect_max_s=0.4,
        stale_token_refusals=2,
        stale_token_after_s=0.3,
    )
    conn.start()
    try:
        assert conn.wait_connected(10)
        attempts = conn.connect_attempts
        emu.restart(down_s=2.5)  # no socket for 2.5 s: several refused attempts over more than 0.3 s
        assert emu.wait_for_connections(2, timeout=20)
        assert conn.wait_connected(10)
        assert conn.connect_attempts - attempts >= 3, "it tried (and failed) while the nucleus was down"
        assert conn.fatal is None and conn.token_refusals == 0
    finally:
        conn.stop()


# -- the agent process: exits non-zero, nothing lost, restarted with a new SVCUID --------------------------
def _agent(emu: NucleusEmulator, spool: Path, **extra_env: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **emu.env(),
        "PYTHONPATH": str(REPO),
        "BATTWIN_SPOOL__PATH": str(spool),
        "BATTWIN_SOURCE__URL": "simulator",
        "BATTWIN_SOURCE__SAMPLE_INTERVAL_S": "0.05",
        "BATTWIN_TELEMETRY__BATCH_MAX_SAMPLES": "10",
        "BATTWIN_SHADOW__ENABLED": "false",
        **extra_env,
    }
    cmd = [sys.executable, "-m", "device_agent.cli", "run"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _logged(out: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.decode(errors="replace").splitlines() if line.startswith("{")]


@pytest.mark.parametrize("flavour", ["lite"])
@pytest.mark.slow
def test_the_agent_exits_on_a_stale_token_and_a_restart_with_a_new_one_sends_what_it_kept(make_emulator, tmp_path):
    emu = make_emulator(AGENT_RECIPE)
    spool_path = tmp_path / "spool.db"
    proc = _agent(emu, spool_path, BATTWIN_IPC__STALE_TOKEN_AFTER_S="1.0")
    try:
        assert emu.wait_for(lambda ms: sum(m.topic == TELEMETRY for m in ms) >= 2, timeout=60)
        emu.restart()  # lite's ggipcd restarted: the agent's SVCUID is refused from now on
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode(errors="replace")
    assert proc.returncode == EXIT_NUCLEUS_REFUSED, text[-3000:]
    logged = _logged(out)
    gave_up = [r for r in logged if r.get("msg", "").startswith("IPC token refused for good")]
    assert gave_up and gave_up[0]["refusals"] >= 3, text[-3000:]
    exiting = [r for r in logged if r.get("msg", "").startswith("agent exiting")]
    assert exiting and exiting[0]["exit_code"] == EXIT_NUCLEUS_REFUSED, text[-3000:]
    # what the agent accepted but could not send is in its spool ...
    spool = Spool(spool_path)
    kept = [m.id for m in spool.peek(10_000)]
    spool.close()
    assert kept, "samples taken while refused were spooled"
    assert exiting[0]["spooled"] == len(kept)
    before = set(_published_ids(emu))
    # ... and the nucleus restarts the component (systemd Restart=on-failure) with a new SVCUID
    emu.issue_svcuid()
    proc = _agent(emu, spool_path)
    try:
        assert emu.wait_for(lambda ms: set(kept) <= {json.loads(m.payload)["id"] for m in ms}, timeout=60)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode(errors="replace")[-3000:]
    assert not set(kept) & before, "the kept messages had not been sent before"


# -- lite's Restart=on-failure brings it back --------------------------------------------------------------
@pytest.mark.parametrize("flavour", ["lite"])
@pytest.mark.slow
def test_lite_restarts_the_failed_agent_with_a_new_svcuid_and_it_publishes_again(nucleus, tmp_path):
    from devkit.nucleus.deployment import LITE_START_LIMIT_BURST
    from tests.greengrass.gg_support import probe_recipe, write_component

    name = "com.test.Agent"
    recipe = probe_recipe(name, run=f"exec {sys.executable} -m device_agent.cli run")
    recipe["Manifests"][0]["Lifecycle"]["Setenv"] = {
        "PYTHONPATH": str(REPO),
        "BATTWIN_SPOOL__PATH": "{work:path}spool.db",
        "BATTWIN_SOURCE__SAMPLE_INTERVAL_S": "0.05",
        "BATTWIN_TELEMETRY__BATCH_MAX_SAMPLES": "10",
        "BATTWIN_SHADOW__ENABLED": "false",
        "BATTWIN_IPC__STALE_TOKEN_AFTER_S": "1.0",
    }
    write_component(tmp_path / "build", recipe, {"app.py": ""})
    nucleus.deploy_build(tmp_path / "build")

    def telemetry(ms: list[Any]) -> int:
        return sum(m.component == name and m.topic == TELEMETRY for m in ms)

    assert nucleus.wait_for(lambda ms: telemetry(ms) >= 2, timeout=60), _component_log(tmp_path, name)
    pid = nucleus.component_pid(name)
    before = telemetry(nucleus.published)
    nucleus.restart()  # ggipcd restarted: the running agent's SVCUID is gone
    # the agent gives up and exits 75; the unit restarts it with a new SVCUID; it publishes again
    assert nucleus.wait_for(lambda ms: telemetry(ms) >= before + 2, timeout=90), _component_log(tmp_path, name)
    assert nucleus.unit_restarts(name) == 1 < LITE_START_LIMIT_BURST
    assert nucleus.component_pid(name) not in (None, pid)
    assert nucleus.component_state(name) == "RUNNING"
    log = _component_log(tmp_path, name)
    assert "IPC token refused for good" in log and '"exit_code":75' in log.replace(" ", "")


def _component_log(tmp_path: Path, name: str) -> str:
    path = tmp_path / "greengrass" / "logs" / f"{name}.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"
