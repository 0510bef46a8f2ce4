"""The driver template (docs/driver_skeleton) works the way README.md's "Adding a driver" says: registered with
``hardware.registry.register``, built by ``create_source`` from a URL, it opens a real (pseudo-)terminal with
pyserial, sends its request and decodes the reply into a Sample. And the registry's rules: the built-in
drivers are in the table register() writes, a taken scheme is not silently replaced, bad names are refused."""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Iterator

import pytest

from docs.driver_skeleton import driver as skeleton_driver
from docs.driver_skeleton.decode import decode_frame
from docs.driver_skeleton.framing import build_frame
from hardware import registry
from hardware.errors import ChecksumError, DecodeError, FramingError, SourceConfigError
from schema.source_settings import SourceSettings

#: the example reply of docs/driver_skeleton/README.md, written out byte by byte (not built by the encoder)
STATUS_FRAME = bytes.fromhex("aa 10 10 0534 ff06 00ea 4b 04 0d02 0d03 0d01 0d02 d3 55")
STATUS_REQUEST = bytes.fromhex("aa 10 00 10 55")
#: a reply timeout far above a loaded machine's pty latency: only a broken driver waits this long
TIMEOUT_S = 10.0


def test_the_example_frame_decodes_to_its_documented_values() -> None:
    status = decode_frame(STATUS_FRAME)
    assert status.pack_voltage_v == pytest.approx(13.32)
    assert status.current_a == pytest.approx(-2.50)
    assert status.temperature_c == pytest.approx(23.4)
    assert status.soc_pct == 75
    assert status.cell_voltages_v == pytest.approx((3.330, 3.331, 3.329, 3.330))
    assert build_frame(0x10) == STATUS_REQUEST == skeleton_driver.STATUS_REQUEST


def test_the_example_frame_refuses_damage() -> None:
    bad_checksum = STATUS_FRAME[:-2] + bytes([STATUS_FRAME[-2] ^ 1]) + STATUS_FRAME[-1:]
    with pytest.raises(ChecksumError):
        decode_frame(bad_checksum)
    with pytest.raises(FramingError):
        decode_frame(STATUS_FRAME[:-1] + b"\x00")  # end mark
    with pytest.raises(FramingError):
        decode_frame(STATUS_FRAME[:-3])  # truncated
    three_cells_declared = bytearray(STATUS_FRAME[3:-2])
    three_cells_declared[7] = 3
    with pytest.raises(DecodeError, match="3 cells need 14 bytes, got 16"):
        decode_frame(build_frame(0x10, bytes(three_cells_declared)))
    with pytest.raises(DecodeError, match="register 0x11"):
        decode_frame(build_frame(0x11, STATUS_FRAME[3:-2]))


class PtyBms:
    """The BMS end of a pseudo-terminal: answers each status request with :data:`STATUS_FRAME`."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        buf = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                buf += os.read(self.master, 256)
            except OSError:
                return
            while len(buf) >= len(STATUS_REQUEST):
                request, buf = buf[: len(STATUS_REQUEST)], buf[len(STATUS_REQUEST) :]
                self.requests.append(request)
                if request == STATUS_REQUEST:
                    os.write(self.master, STATUS_FRAME)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def bms() -> Iterator[PtyBms]:
    pytest.importorskip("serial")  # pyserial: a device dependency, in the dev lock
    device = PtyBms()
    yield device
    device.close()


@pytest.fixture
def skeleton_scheme() -> Iterator[str]:
    """The template registered by dotted path (imported on first use), and removed afterwards."""
    registry.register("skeleton", "docs.driver_skeleton.driver:create")
    yield "skeleton"
    registry.unregister("skeleton")


def test_a_registered_driver_reads_a_sample_through_create_source(bms: PtyBms, skeleton_scheme: str) -> None:
    assert skeleton_scheme in registry.known_schemes()
    assert registry.resolve(skeleton_scheme) is skeleton_driver.create
    source = registry.create_source(f"{skeleton_scheme}:{bms.path}?timeout={TIMEOUT_S}&cells=4", SourceSettings())
    assert isinstance(source, skeleton_driver.ExampleSource)
    assert source.options.retries == SourceSettings().retries  # the agent's [source] retries reach the driver
    with source:
        first, second = source.poll(), source.poll()
    assert bms.requests == [STATUS_REQUEST, STATUS_REQUEST]
    for sample in (first, second):
        assert sample.voltage_v == pytest.approx(13.32)
        assert sample.current_a == pytest.approx(-2.5)
        assert sample.temperatures_c == pytest.approx((23.4,))
        assert sample.soc_pct == 75.0
        assert sample.cell_voltages_v == pytest.approx((3.330, 3.331, 3.329, 3.330))
        assert sample.source_id == f"example:{bms.path.removeprefix('/dev/')}".replace("/", "_")
        assert sample.simulated is False


def test_the_url_options_and_settings_reach_the_template(skeleton_scheme: str) -> None:
    from_url = registry.create_source(f"{skeleton_scheme}:/dev/ttyUSB7?retries=5", SourceSettings(retries=1))
    from_settings = registry.create_source(f"{skeleton_scheme}:/dev/ttyUSB7", SourceSettings(retries=1))
    assert isinstance(from_url, skeleton_driver.ExampleSource)
    assert isinstance(from_settings, skeleton_driver.ExampleSource)
    assert from_url.options.retries == 5  # the URL's option wins over [source] retries
    assert from_settings.options.retries == 1
    with pytest.raises(SourceConfigError, match="unknown option"):
        registry.create_source(f"{skeleton_scheme}:/dev/ttyUSB7?retires=5", SourceSettings())
    with pytest.raises(SourceConfigError, match="missing serial device path"):
        registry.create_source(f"{skeleton_scheme}:", SourceSettings())


def test_an_unregistered_scheme_is_unknown() -> None:
    registry.register("skeleton", skeleton_driver.create)  # the function itself works too
    assert registry.resolve("SKELETON") is skeleton_driver.create
    registry.unregister("skeleton")
    with pytest.raises(SourceConfigError, match="unknown source scheme 'skeleton'"):
        registry.create_source("skeleton:/dev/ttyUSB0", SourceSettings())


def test_the_built_in_drivers_are_in_the_registered_table() -> None:
    assert set(registry.BUILTIN_DRIVERS) <= set(registry.known_schemes())
    from hardware.bms.jbd import driver as jbd

    assert registry.resolve("jbd") is jbd.create


def test_register_refuses_takeovers_and_bad_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        registry.register("jbd", "docs.driver_skeleton.driver:create")
    assert registry.resolve("jbd").__module__ == "hardware.bms.jbd.driver"  # unchanged
    registry.register("jbd", registry.BUILTIN_DRIVERS["jbd"])  # the same target again is fine
    with pytest.raises(ValueError, match="expected a URL scheme"):
        registry.register("9bms", skeleton_driver.create)
    with pytest.raises(ValueError, match="is not 'package.module:function'"):
        registry.register("skeleton", "docs.driver_skeleton.driver.create")
    with pytest.raises(TypeError, match="not callable"):
        registry.register("skeleton", 42)  # type: ignore[arg-type]
    assert "skeleton" not in registry.known_schemes()


def test_a_target_that_does_not_import_is_a_config_error() -> None:
    registry.register("skeleton", "docs.driver_skeleton.no_such_module:create")
    try:
        with pytest.raises(SourceConfigError, match="needs a package that is not installed"):
            registry.create_source("skeleton:/dev/ttyUSB0", SourceSettings())
    finally:
        registry.unregister("skeleton")
    registry.register("skeleton", "docs.driver_skeleton.driver:no_such_function")
    try:
        with pytest.raises(SourceConfigError, match="is not a function"):
            registry.create_source("skeleton:/dev/ttyUSB0", SourceSettings())
    finally:
        registry.unregister("skeleton")
