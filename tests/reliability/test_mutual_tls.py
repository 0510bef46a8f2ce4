"""Mutual TLS against a mosquitto that requires client certificates, with a test CA made at test time."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from device_agent.logging_setup import JsonFormatter
from device_agent.uplink.mqtt_transport import MqttTransport
from device_agent.uplink.spool import Spool
from device_agent.uplink.transport import TransportError
from hardware.simulator.source import SimulatorSource
from schema.simulator_settings import SimulatorSettings
from tests.conftest import Mosquitto, require_mosquitto


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, ca: bool = False, san: str | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(san), x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


def _write(path: Path, obj, key: bool = False) -> Path:
    if key:
        data = obj.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    else:
        data = obj.public_bytes(serialization.Encoding.PEM)
    path.write_bytes(data)
    path.chmod(0o600 if key else 0o644)
    return path


@pytest.fixture
def pki(tmp_path):
    ca_key, other_ca_key = _key(), _key()
    ca = _cert("battwin test CA", ca_key, "battwin test CA", ca_key, ca=True)
    srv_key, dev_key, bad_key = _key(), _key(), _key()
    files = {
        "ca": _write(tmp_path / "ca.pem", ca),
        "server_cert": _write(
            tmp_path / "server.pem", _cert("localhost", srv_key, "battwin test CA", ca_key, san="localhost")
        ),
        "server_key": _write(tmp_path / "server.key", srv_key, key=True),
        "dev_cert": _write(tmp_path / "device.pem", _cert("tls-dev", dev_key, "battwin test CA", ca_key)),
        "dev_key": _write(tmp_path / "device.key", dev_key, key=True),
        "foreign_cert": _write(tmp_path / "foreign.pem", _cert("intruder", bad_key, "foreign CA", other_ca_key)),
        "foreign_key": _write(tmp_path / "foreign.key", bad_key, key=True),
    }
    return files


@pytest.fixture
def tls_broker(tmp_path, pki):
    require_mosquitto()
    b = Mosquitto(tmp_path)
    # replace the plain listener with a TLS one that requires client certificates
    b.conf.write_text(
        f"{b.user}listener {b.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"cafile {pki['ca']}\ncertfile {pki['server_cert']}\nkeyfile {pki['server_key']}\n"
        "require_certificate true\nuse_identity_as_username true\n"
    )
    b.start()
    yield b
    b.stop()


def settings(port: int, pki: dict, cert: str | None, key: str | None) -> dict:
    s = {"url": f"mqtts://localhost:{port}", "ca_file": str(pki["ca"]), "connect_timeout_s": 3.0}
    if cert:
        s |= {"cert_file": str(pki[cert]), "key_file": str(pki[key])}
    return s


def test_agent_connects_with_its_certificate_and_publishes(tls_broker, pki, tmp_path):
    cfg = AgentConfig(
        thing_name="tls-dev",
        mqtt=settings(tls_broker.port, pki, "dev_cert", "dev_key"),
        telemetry={"batch_max_samples": 5},
        spool={"path": tmp_path / "s.db"},
    )
    t = MqttTransport(cfg.mqtt, "tls-dev")
    agent = Agent(
        cfg, SimulatorSource(SimulatorSettings(time_acceleration=1e6), interval_s=10), t, Spool(tmp_path / "s.db")
    )
    agent.run(threading.Event(), max_samples=50)
    assert t.connects >= 1
    assert agent.publisher.acked >= 10 and agent.spool.pending == 0


def _client_context(pki: dict) -> ssl.SSLContext:
    """The test CA's certificates carry no Authority Key Identifier, which Python >= 3.13's default context
    (VERIFY_X509_STRICT) refuses on the client side; mosquitto and awscrt accept them. Without the strict flag a
    refusal below is the broker's, never this client's own check."""
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    return ctx


def _raw_mqtt_connect(port: int, ctx: ssl.SSLContext) -> bytes:
    """A TLS handshake and an MQTT 3.1.1 CONNECT by hand; what the broker answers (b"" when it closes)."""
    import socket

    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        s.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x1e\x00\x00")
        return s.recv(4)


def test_the_refusal_checks_can_see_a_valid_client_get_in(tls_broker, pki):
    """Positive control for the refusals below: on the same broker, by the same two paths, the device's own
    certificate gets in (so a refusal there is the certificate's, not a broker that refuses everyone)."""
    cfg = AgentConfig(mqtt=settings(tls_broker.port, pki, "dev_cert", "dev_key"))
    t = MqttTransport(cfg.mqtt, "tls-dev")
    t.start()
    try:
        assert t.wait_connected(15.0), "the device's own certificate was refused"
    finally:
        t.stop()
    ctx = _client_context(pki)
    ctx.load_cert_chain(str(pki["dev_cert"]), str(pki["dev_key"]))
    assert _raw_mqtt_connect(tls_broker.port, ctx) == b"\x20\x02\x00\x00"  # CONNACK, accepted


@pytest.mark.parametrize("who", ["no certificate", "foreign certificate"])
@pytest.mark.slow
def test_clients_without_a_valid_certificate_are_refused(tls_broker, pki, who):
    cert, key = (None, None) if who == "no certificate" else ("foreign_cert", "foreign_key")
    cfg = AgentConfig(mqtt=settings(tls_broker.port, pki, cert, key))
    t = MqttTransport(cfg.mqtt, "intruder")
    t.start()
    try:
        assert not t.wait_connected(4.0), f"a client with {who} got in"
    finally:
        t.stop()
    # the broker side agrees: an ssl client with that identity is refused at the handshake
    ctx = _client_context(pki)
    if cert:
        ctx.load_cert_chain(str(pki[cert]), str(pki[key]))
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        if not _raw_mqtt_connect(tls_broker.port, ctx):
            raise ConnectionResetError("closed by the broker")


def test_key_with_loose_permissions_warns(pki, caplog):
    pki["dev_key"].chmod(0o644)
    cfg = AgentConfig(mqtt=settings(1, pki, "dev_cert", "dev_key"))
    with caplog.at_level(logging.WARNING):
        MqttTransport(cfg.mqtt, "x")
    assert any("chmod 600" in r.getMessage() for r in caplog.records)


def test_missing_key_file_is_a_clear_error(pki, tmp_path):
    cfg = AgentConfig(mqtt={**settings(1, pki, "dev_cert", "dev_key"), "key_file": str(tmp_path / "nope.key")})
    with pytest.raises(TransportError, match="nope.key"):
        MqttTransport(cfg.mqtt, "x")


def test_secrets_never_reach_the_logs(pki, monkeypatch):
    """Keys, tokens and the Greengrass SVCUID stay out of the JSON log lines, even when passed as extras."""
    secret = "SVCUID-0123456789abcdef"
    monkeypatch.setenv("SVCUID", secret)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("battwin.test.secrets")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    key_pem = pki["dev_key"].read_text()
    log.info("connecting", extra={"svcuid": secret, "auth_token": secret, "private_key": key_pem})
    log.info("plain message with %s", "no secret")
    text = stream.getvalue()
    assert secret not in text and "BEGIN PRIVATE KEY" not in text
    assert json.loads(text.splitlines()[0])["svcuid"] == "***"
