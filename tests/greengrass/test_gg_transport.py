"""IpcTransport against the nucleus emulator: the Transport contract, refusals, reconnection."""

from __future__ import annotations

import logging

import pytest

from device_agent.greengrass.connection import IpcConnection, IpcUnavailable
from device_agent.greengrass.ipc_transport import IpcTransport
from device_agent.uplink.transport import Transport, TransportError
from devkit.nucleus import FLAVOURS
from tests.greengrass.gg_support import THING, Collector, broad_recipe


def _transport(emu, **kwargs) -> IpcTransport:
    """A transport on its own connection with fast reconnects (stop both with _stop)."""
    conn = IpcConnection(emu.socket_path, emu.svcuid, reconnect_min_s=0.05, reconnect_max_s=0.2)
    return IpcTransport(conn, **kwargs)


def _stop(transport: IpcTransport) -> None:
    transport.stop()
    transport.connection.stop()  # a connection passed in is not the transport's to close


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_is_a_transport_and_reads_the_environment(gg_env):
    transport: Transport = IpcTransport()  # what runtime.build_transport makes under Greengrass
    try:
        transport.start()
        assert transport.wait_connected(10)
        assert transport.connected
    finally:
        _stop(transport)
    assert not transport.connected
    assert gg_env.connects == 1


def test_outside_greengrass_it_says_so(monkeypatch):
    monkeypatch.delenv("SVCUID", raising=False)
    monkeypatch.delenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", raising=False)
    with pytest.raises(IpcUnavailable):
        IpcTransport()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_publish_futures_resolve_and_arrive_in_order(emulator):
    transport = _transport(emulator, store_hold_s=0.0)  # 300 at once: queued in order behind the in-flight budget
    transport.start()
    try:
        assert transport.wait_connected(10)
        sent = [(f"battwin/{THING}/{kind}", f"{i}".encode()) for i in range(300) for kind in ("telemetry",)]
        futures = [transport.publish(topic, payload) for topic, payload in sent]
        for f in futures:
            assert f.result(10) is None
        assert [(m.topic, m.payload, m.qos) for m in emulator.published] == [(t, p, 1) for t, p in sent]
    finally:
        _stop(transport)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_refused_publish_fails_late_and_is_logged_once(emulator, caplog):
    transport = _transport(emulator, refused_retry_delay_s=0.05)
    transport.start()
    try:
        assert transport.wait_connected(10)
        with caplog.at_level(logging.ERROR, logger="device_agent.greengrass.ipc_transport"):
            futures = [transport.publish("other/telemetry", b"x") for _ in range(3)]  # outside battwin/+/#
            for f in futures:
                with pytest.raises(TransportError, match="UnauthorizedError"):
                    f.result(10)
        assert len([r for r in caplog.records if "refused a publish" in r.getMessage()]) == 1
        assert emulator.published == [] and len(emulator.denials) == 3
    finally:
        _stop(transport)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_not_connected_publish_fails_at_once(emulator):
    conn = IpcConnection(emulator.socket_path, "wrong-token", reconnect_min_s=0.05, reconnect_max_s=0.1)
    transport = IpcTransport(conn)
    transport.start()
    try:
        assert not transport.wait_connected(0.3)
        with pytest.raises(TransportError, match="not connected"):
            transport.publish(f"battwin/{THING}/telemetry", b"x").result(1)
        assert emulator.refused >= 1 and emulator.published == []
    finally:
        _stop(transport)
        conn.stop()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_subscribe_before_and_after_connecting(make_emulator):
    emu = make_emulator(broad_recipe())
    transport = _transport(emu)
    early, late = Collector(), Collector()
    pending = transport.subscribe("cloud/+/commands", lambda t, p: early((t, p)))  # before start: pending
    transport.start()
    try:
        assert pending.result(10) is None
        assert transport.subscribe(f"battwin/{THING}/#", lambda t, p: late((t, p))).result(10) is None
        emu.deliver_from_cloud("cloud/dev1/commands", b"reboot")
        transport.publish(f"battwin/{THING}/telemetry", b"loop").result(10)  # IoT Core echoes it back
        assert early.wait(1) and late.wait(1)
        assert early.items == [("cloud/dev1/commands", b"reboot")]
        assert late.items == [(f"battwin/{THING}/telemetry", b"loop")]
        with pytest.raises(TransportError, match="UnauthorizedError"):
            transport.subscribe("not/allowed", lambda t, p: None).result(10)
    finally:
        _stop(transport)


# classic only: a restarted lite ggipcd forgets the SVCUIDs it issued, so the same process cannot reconnect
# (tests/greengrass/test_gg_lite_uplink.py: the agent exits and is restarted with a new one)
def test_reconnects_after_a_nucleus_restart_and_resubscribes(make_emulator):
    emu = make_emulator(broad_recipe())
    transport = _transport(emu)
    got = Collector()
    transport.subscribe("cloud/+/commands", lambda t, p: got((t, p)))
    transport.start()
    try:
        assert transport.wait_connected(10)
        assert emu.wait_for_subscriptions("iot", "cloud/+/commands", 1)
        transport.publish(f"battwin/{THING}/telemetry", b"before").result(10)
        emu.restart()
        assert emu.wait_for_connections(2, timeout=10)
        assert emu.wait_for_subscriptions("iot", "cloud/+/commands", 1)
        assert transport.wait_connected(10)
        emu.deliver_from_cloud("cloud/x/commands", b"after-restart")
        assert got.wait(1)
        assert got.items == [("cloud/x/commands", b"after-restart")]
        assert transport.publish(f"battwin/{THING}/telemetry", b"after").result(10) is None
        assert [m.payload for m in emu.published] == [b"before", b"after"]
        assert (transport.connects, transport.interruptions) == (2, 1)  # what the config sync watches
    finally:
        _stop(transport)
