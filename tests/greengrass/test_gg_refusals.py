"""What the agent logs when the nucleus refuses a publish: the accessControl hint only for UnauthorizedError;
a full spooler is called what it is. Through the unmodified awsiotsdk IPC client and the nucleus emulator."""

from __future__ import annotations

import logging

import pytest

from device_agent.greengrass.connection import IpcConnection
from device_agent.greengrass.ipc_limits import describe_refusal
from device_agent.greengrass.ipc_transport import IpcTransport
from device_agent.uplink.transport import TransportError
from tests.greengrass.gg_support import THING

LOGGER = "device_agent.greengrass.ipc_transport"
#: what the classic nucleus' spooler raises when it is full (MqttProxyIPCAgent answers it as a ServiceError)
SPOOLER_FULL = "Spooler queue is full and new message would not be added into spooler"


class SpoolerStoreException(Exception):
    pass


class _FullSpooler:
    """Stands where the emulator forwards PublishToIoTCore to the cloud: refuses like a full nucleus spooler."""

    def publish(self, topic: str, payload: bytes) -> None:
        raise SpoolerStoreException(SPOOLER_FULL)

    def subscribe(self, topic: str, handler: object) -> None:
        return None

    def stop(self) -> None:
        return None


def _refusal_logs(emulator, topic: str, caplog: pytest.LogCaptureFixture) -> tuple[str, list[logging.LogRecord]]:
    conn = IpcConnection(emulator.socket_path, emulator.svcuid, reconnect_min_s=0.05, reconnect_max_s=0.2)
    transport = IpcTransport(conn, refused_retry_delay_s=0.01)
    transport.start()
    try:
        assert transport.wait_connected(10)
        with caplog.at_level(logging.INFO, logger=LOGGER), pytest.raises(TransportError) as err:
            transport.publish(topic, b"{}").result(10)
    finally:
        transport.stop()
        conn.stop()
    return str(err.value), [r for r in caplog.records if r.name == LOGGER and hasattr(r, "error")]


def test_a_full_spooler_is_not_blamed_on_the_access_control(emulator, caplog):
    emulator._forwarder = _FullSpooler()  # the nucleus' MQTT client with its spooler full
    error, records = _refusal_logs(emulator, f"battwin/{THING}/telemetry", caplog)
    assert "ServiceError" in error and "Spooler queue is full" in error
    (record,) = records
    assert "spooler is full" in record.getMessage()
    assert "accessControl" not in record.getMessage()
    assert record.levelno == logging.WARNING and record.error == "ServiceError"


def test_an_unauthorized_topic_points_at_the_access_control(emulator, caplog):
    error, records = _refusal_logs(emulator, "other/telemetry", caplog)  # outside battwin/+/#
    assert "UnauthorizedError" in error
    (record,) = records
    assert "accessControl" in record.getMessage() and record.levelno == logging.ERROR


@pytest.mark.parametrize(
    ("kind", "message", "says", "level"),
    [
        ("UnauthorizedError", "not authorized", "accessControl", logging.ERROR),
        ("ServiceError", f"Publish to topic t failed with error {SPOOLER_FULL}", "spooler is full", logging.WARNING),
        ("ServiceError", "Failed to publish", "refused a publish with ServiceError: Failed to publish", logging.ERROR),
        (
            "ServiceError",
            "",
            "no reason (nucleus lite answers so while its IoT Core connection is down)",
            logging.WARNING,
        ),
        ("InvalidArgumentsError", "payload too big", "InvalidArgumentsError: payload too big", logging.ERROR),
    ],
)
def test_describe_refusal(kind: str, message: str, says: str, level: int) -> None:
    got_level, text = describe_refusal(kind, message)
    assert says in text and got_level == level
    assert ("accessControl" in text) == (kind == "UnauthorizedError")
