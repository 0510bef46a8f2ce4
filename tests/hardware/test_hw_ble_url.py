"""The ``ble:`` source on any Python: its URL forms, the sample mapping, and the typed error where aiobmsble
cannot run (Python 3.11, or without ``battwin[ble]``). Reading packs is tests/hardware/test_hw_ble.py (3.12+)."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from enum import Enum

import pytest

import hardware.ble.support as support
from hardware.ble import BleSupportMissing, BleTarget, parse_ble_url
from hardware.ble.mapping import reading_from_sample
from hardware.errors import DecodeError, SourceConfigError
from hardware.registry import create_source, known_schemes
from schema.source_settings import SourceSettings, parse_source_url


@pytest.mark.parametrize(
    ("url", "target", "bms_type"),
    [
        ("ble:AA:BB:CC:DD:EE:FF?type=jbd", BleTarget(address="AA:BB:CC:DD:EE:FF"), "jbd"),
        ("ble:aa:bb:cc:dd:ee:ff", BleTarget(address="AA:BB:CC:DD:EE:FF"), "auto"),
        ("ble:name=xiaoxiang?type=auto", BleTarget(name="xiaoxiang"), "auto"),
        ("ble:?name=JBD-*&type=xiaoxiang", BleTarget(name="JBD-*"), "jbd"),
        ("ble:C8:47:8C:00:00:01?type=JK", BleTarget(address="C8:47:8C:00:00:01"), "jikong"),
        ("ble:C8:47:8C:00:00:01?type=jikong_bms", BleTarget(address="C8:47:8C:00:00:01"), "jikong"),
    ],
)
def test_url_forms(url: str, target: BleTarget, bms_type: str) -> None:
    assert parse_ble_url(parse_source_url(url)) == (target, bms_type)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ble:", "missing the pack's Bluetooth address or name"),
        ("ble:ttyUSB0", "is not a Bluetooth address"),
        ("ble:AA:BB:CC:DD:EE", "is not a Bluetooth address"),
        ("ble:AA:BB:CC:DD:EE:FF?name=x", "not both"),
        ("ble:name=a?name=b", "given twice"),
        ("ble:name=", "1..64 printable"),
        ("ble:AA:BB:CC:DD:EE:FF?type=j%20bd", "not a BMS family name"),
        ("ble://mypack", "not ble://"),
    ],
)
def test_bad_urls_are_config_errors_on_any_python(url: str, message: str) -> None:
    with pytest.raises(SourceConfigError, match=message) as info:
        create_source(url, SourceSettings())
    assert not isinstance(info.value, BleSupportMissing)  # the URL is checked before the extra


def test_unknown_options_are_refused() -> None:
    with pytest.raises(SourceConfigError, match="unknown option"):
        create_source("ble:AA:BB:CC:DD:EE:FF?tpye=jbd", SourceSettings())


def test_target_matching() -> None:
    assert BleTarget(address="AA:BB:CC:DD:EE:FF").matches("aa:bb:cc:dd:ee:ff", None)
    assert not BleTarget(address="AA:BB:CC:DD:EE:FF").matches("AA:BB:CC:DD:EE:00", "AA:BB:CC:DD:EE:FF")
    assert BleTarget(name="JBD-*").matches("11:22:33:44:55:66", "JBD-SP04S034")
    assert not BleTarget(name="JBD-*").matches("11:22:33:44:55:66", "jbd-sp04")  # case matters, like the name
    assert not BleTarget(name="JBD-*").matches("11:22:33:44:55:66", None)


def test_the_registry_lists_ble_on_every_python() -> None:
    assert "ble" in known_schemes()


def test_without_aiobmsble_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """On Python 3.11 this is the real thing; on 3.12+ the missing package is simulated."""
    if sys.version_info >= (3, 12):
        real = importlib.import_module

        def no_aiobmsble(name: str, package: str | None = None) -> object:
            if name.split(".", maxsplit=1)[0] == "aiobmsble":
                raise ModuleNotFoundError("No module named 'aiobmsble'", name="aiobmsble")
            return real(name, package)

        monkeypatch.setattr(support.importlib, "import_module", no_aiobmsble)
    with pytest.raises(BleSupportMissing, match=r"battwin\[ble\]") as info:
        create_source("ble:AA:BB:CC:DD:EE:FF?type=jbd", SourceSettings())
    assert isinstance(info.value, SourceConfigError)  # the CLI reports it as a configuration error, no traceback


def test_python_311_is_named_as_the_problem() -> None:
    problem = support.ble_support_problem((3, 11))
    assert problem is not None and "Python >= 3.12" in problem and "Python 3.11" in problem
    assert "battwin[ble]" in problem


def test_importing_the_ble_package_needs_no_aiobmsble() -> None:
    for name in ("hardware.ble", "hardware.ble.source", "hardware.ble.mapping", "hardware.ble.url"):
        importlib.import_module(name)
    if sys.version_info < (3, 12):
        assert "aiobmsble" not in sys.modules


# -- aiobmsble's sample → battwin's fields (stand-ins for aiobmsble's TempSensor: a value and a type name) ----
class _T(Enum):
    GENERIC = 0
    CELL = 1
    MOSFET = 4
    PCB = 5


@dataclass(frozen=True)
class _Temp:
    value: float
    type: _T


def test_mapping_keeps_units_and_sign_and_leaves_out_non_battery_sensors() -> None:
    reading = reading_from_sample(
        {
            "voltage": 13.28,
            "current": -2.5,  # aiobmsble: positive = charging, as battwin
            "battery_level": 75,
            "cell_count": 4,
            "cell_voltages": [3.32, 3.321, 3.319, 3.32],
            "temp_values": [_Temp(23.4, _T.MOSFET), _Temp(21.0, _T.CELL), _Temp(20.5, _T.GENERIC), 19.5],
            "problem": False,
        }
    )
    assert (reading.voltage_v, reading.current_a, reading.soc_pct) == (13.28, -2.5, 75.0)
    assert reading.temperatures_c == (21.0, 20.5, 19.5)
    assert reading.cell_voltages_v == (3.32, 3.321, 3.319, 3.32) and reading.reported_cells == 4


def test_mapping_without_cells_or_temperatures() -> None:
    reading = reading_from_sample({"voltage": 51.2, "current": 10.0})
    assert reading.cell_voltages_v is None and reading.reported_cells is None
    assert reading.temperatures_c == () and reading.soc_pct is None


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        ({"current": 1.0}, "no voltage"),
        ({"voltage": 13.0}, "no current"),
        ({"voltage": "13", "current": 1.0}, "not a number"),
        ({"voltage": 13.0, "current": float("nan")}, "current=nan"),
        ({"voltage": 13.0, "current": 1.0, "temp_values": [_Temp(True, _T.CELL)]}, "not a number"),  # type: ignore[arg-type]
    ],
)
def test_mapping_refuses_what_is_not_a_reading(sample: dict[str, object], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        reading_from_sample(sample)
