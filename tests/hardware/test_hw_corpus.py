"""Every frame of the real capture corpus (/work/shared/bms-frames) for jbd, daly_uart, jk_uart_4e57.

* checksum_valid false -> the strict single-frame parser raises a ProtocolError subclass;
* payload_only -> decoded with the payload-level function;
* everything else decodes, and every key of ``expected`` is compared with the decoded value.

The corpus copies expected values from several projects; where a project uses its own convention
(README.txt "Conventions on which the sources disagree") the comparison applies that convention
explicitly (see the per-key tables below). Keys without a decoded counterpart are listed in
``NOT_DECODED`` with the reason; an unknown key fails the test, so nothing is skipped silently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest

from hardware.bms.daly import decode as daly
from hardware.bms.daly.framing import SPEC as DALY_SPEC
from hardware.bms.jbd import decode as jbd
from hardware.bms.jbd.framing import RESPONSE_SPEC as JBD_SPEC
from hardware.bms.jk import decode as jk
from hardware.errors import ChecksumError, FramingError
from hardware.transports.framing import StreamFramer
from tests.hardware.hw_support import corpus_records, record_id, require_corpus

JBD = corpus_records("jbd.jsonl", "jbd")
DALY = corpus_records("daly.jsonl", "daly_uart")
JK = corpus_records("jk.jsonl", "jk_uart_4e57")

NOT_DECODED = {
    # key: why the decoders do not produce it
    "reserved_raw": "Daly 0x94 byte 7 is reserved; not decoded",
}


def _close(got: Any, want: Any, tol: float = 1e-6) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return bool(got) == bool(want)
    if isinstance(want, int | float) and isinstance(got, int | float):
        return math.isclose(float(got), float(want), rel_tol=0, abs_tol=tol)
    if isinstance(want, list):
        return len(got) == len(want) and all(_close(g, w, tol) for g, w in zip(got, want, strict=True))
    return bool(got == want)


def _cell_stats(cells: tuple[float, ...]) -> dict[str, float | int]:
    return {
        "min_cell_voltage_v": min(cells),
        "max_cell_voltage_v": max(cells),
        "min_voltage_cell": cells.index(min(cells)) + 1,
        "max_voltage_cell": cells.index(max(cells)) + 1,
        "delta_cell_voltage_v": round(max(cells) - min(cells), 3),
        "average_cell_voltage_v": sum(cells) / len(cells),
    }


def _date_parts(text: str) -> tuple[int, int, int]:
    if "." in text:
        y, m, d = (int(p) for p in text.split("."))
        return y, m, d
    return int(text[:4]), int(text[4:6]), int(text[6:8])


def _compare(record: dict[str, Any], value_of: Callable[[str, Any], tuple[Any, float]]) -> int:
    """Compare every expected key; return how many were compared."""
    compared = 0
    for key, want in record["expected"].items():
        if key in NOT_DECODED:
            continue
        got, tol = value_of(key, want)
        assert _close(got, want, tol), f"{key}: decoded {got!r}, expected {want!r}"
        compared += 1
    return compared


# -- JBD ---------------------------------------------------------------------------------------------


def _jbd_value(record: dict[str, Any], values: Any) -> Callable[[str, Any], tuple[Any, float]]:
    jbdtool = (record.get("expected_source") or {}).get("path") == "docs/debug.txt"

    def value_of(key: str, want: Any) -> tuple[Any, float]:
        v = values
        if isinstance(v, jbd.JbdCellVoltages):
            if key == "cell_voltages_v":
                return list(v.cell_voltages_v), 1e-9
            return _cell_stats(v.cell_voltages_v)[key], 1e-6
        if isinstance(v, jbd.JbdHardwareName | jbd.JbdErrorCounts):
            return getattr(v, key), 0
        assert isinstance(v, jbd.JbdBasicInfo), type(v)
        fets = [name for bit, name in ((1, "Charge"), (2, "Discharge")) if v.fet_bitmask & bit]
        table: dict[str, Any] = {
            "power_w": round(v.pack_voltage_v * v.current_a, 2),
            "soc_byte_pct": v.soc_pct,
            # batmon-ha re-derives SOC from the capacities instead of the SOC byte (README.txt)
            "soc_pct_batmon_rederived": round(100 * v.capacity_remaining_ah / v.nominal_capacity_ah, 1),
            # batmon-ha: positive = discharging, i.e. the negated wire current
            "current_a_batmon_convention": -v.current_a,
            "operation_status_bitmask": v.fet_bitmask,
            "operation_status": ", ".join({"Charge": "Charging", "Discharge": "Discharging"}[n] for n in fets),
            "fet": ",".join(fets),
            "fet_control_status": f"{v.fet_bitmask:02x}",
            "charge_mosfet": v.charge_fet_on,
            "discharge_mosfet": v.discharge_fet_on,
            "problem_code": v.errors_bitmask,
            "balance_bits": f"{v.balancer_status_bitmask:04x}",
            "version_byte_raw": f"{v.software_version_raw:x}",
            "production_date_raw": f"{v.production_date_raw:04x}",
            # jbdtool prints the version byte as a decimal tenth (0x80 -> 12.8); esphome as nibbles (8.0)
            "software_version": v.software_version_raw / 10 if jbdtool else v.software_version,
        }
        if key == "manufacture_date":
            assert v.production_date is not None
            return tuple(int(p) for p in v.production_date.split("-")), 0
        if key in table:
            return table[key], 0.011
        return getattr(v, key), 1e-6

    return value_of


@pytest.mark.parametrize("record", JBD, ids=record_id)
def test_jbd_record(record: dict[str, Any]) -> None:
    data = bytes.fromhex(record["hex"])
    if record["checksum_valid"] is False:
        with pytest.raises((FramingError, ChecksumError)):
            jbd.decode_response(data)
        return
    if record.get("payload_only"):
        values: Any = jbd.decode_payload(int(record["register_or_id"], 16), data)
    elif record["direction"] == "request":
        command = jbd.decode_request(data)
        if record["expected"]:
            text = record["expected"]["command"].lower()
            if text.startswith("exit factory without writing"):
                assert command.command == "exit factory mode without writing"
            else:
                charging = re.search(r"charging (on|off)", text)
                discharging = re.search(r"discharging (on|off)", text)
                assert charging and discharging
                assert f"charging {charging.group(1)}" in command.command
                assert f"discharging {discharging.group(1)}" in command.command
        return
    elif data[2] != 0:  # a real error reply (status 0x81 in a btsnoop capture)
        with pytest.raises(jbd.JbdErrorReply):
            jbd.decode_response(data)
        return
    else:
        values = jbd.decode_response(data)
    if record["expected"]:
        expected = dict(record["expected"])
        if "manufacture_date" in expected:
            expected["manufacture_date"] = _date_parts(expected["manufacture_date"])
        assert _compare({"expected": expected}, _jbd_value(record, values)) > 0


def test_jbd_leading_garbage_resyncs_in_the_stream_framer() -> None:
    """The two jbdtool reads with garbage before DD: strict parsing rejects them, the stream finds the frame."""
    require_corpus()
    garbage = [r for r in JBD if r.get("framing_error") == "leading garbage before DD"]
    assert garbage
    for record in garbage:
        framer = StreamFramer(JBD_SPEC)
        framer.feed(bytes.fromhex(record["hex"]))
        frame = framer.next_frame(flush=True)
        assert frame is not None
        jbd.decode_response(frame)
        assert framer.garbage_bytes == 2


# -- Daly --------------------------------------------------------------------------------------------


def _daly_value(values: Any) -> Callable[[str, Any], tuple[Any, float]]:
    def value_of(key: str, want: Any) -> tuple[Any, float]:
        v = values
        if isinstance(v, daly.DalyStatusInfo):
            table = {
                "charger_status": "connected" if v.charger_connected else "disconnected",
                "load_status": "connected" if v.load_connected else "disconnected",
                "flags_raw": f"{v.dio_bitmask:02x}",
            }
            if key in table:
                return table[key], 0
        if isinstance(v, daly.DalyCellVoltageFrame) and key == "cell_voltages_v":
            return list(v.cell_voltages_v), 1e-9
        return getattr(v, key), 1e-6

    return value_of


@pytest.mark.parametrize("record", DALY, ids=record_id)
def test_daly_record(record: dict[str, Any]) -> None:
    data = bytes.fromhex(record["hex"])
    if record["checksum_valid"] is False:
        with pytest.raises((FramingError, ChecksumError)):
            daly.decode_frame(data)
        if record["expected"]:  # the valid frame behind the garbage still decodes through the stream framer
            framer = StreamFramer(DALY_SPEC)
            framer.feed(data)
            frame = framer.next_frame(flush=True)
            assert frame is not None
            assert _compare(record, _daly_value(daly.decode_frame(frame))) > 0
        return
    if record.get("payload_only"):
        values: Any = daly.decode_payload(int(record["register_or_id"], 16), data)
    elif record["direction"] == "request":
        frame = daly.parse_frame(data)
        assert frame.address in (0x40, 0x80) and not any(frame.data)
        return
    else:
        # the corpus' current_a values are (raw - 30000) / 10 as mpp-solar and solarreader print them:
        # the driver's default current_sign=+1 reads the wire the same way
        values = daly.decode_frame(data, current_sign=1)
    if record["expected"]:
        assert _compare(record, _daly_value(values)) > 0


def test_daly_truncated_frame_is_a_framing_error() -> None:
    with pytest.raises(FramingError):
        daly.decode_frame(bytes.fromhex("a50195080b"))


# -- JK ----------------------------------------------------------------------------------------------


def _jk_value(record: dict[str, Any], v: jk.JkStatus) -> Callable[[str, Any], tuple[Any, float]]:
    mpp_solar = (record.get("source") or {}).get("repo") == "jblance/mpp-solar"

    def value_of(key: str, want: Any) -> tuple[Any, float]:
        assert v.pack_voltage_v is not None and v.current_a is not None
        if key in _cell_stats(v.cell_voltages_v):
            return _cell_stats(v.cell_voltages_v)[key], 1e-5
        runtime = v.total_runtime_min or 0
        table: dict[str, Any] = {
            "cell_voltages_v": list(v.cell_voltages_v),
            "power_w": round(v.pack_voltage_v * v.current_a, 2),
            "capacity_remaining_ah": (v.capacity_ah or 0) * (v.soc_pct or 0) / 100,
            "total_battery_capacity_ah": v.capacity_ah,
            "total_runtime_formatted": f"{runtime // 1440}d {runtime % 1440 // 60}h",
            # mpp-solar's *_switch keys are the live MOS/balancer state bits of 0x8C
            "charge_switch": v.charging_mosfet_on,
            "discharge_switch": v.discharging_mosfet_on,
            "balance_switch": v.balancing_active,
        }
        if mpp_solar and key in ("temperatures_c", "mosfet_temperature_c"):
            return (list(v.temperatures_c) if key == "temperatures_c" else v.mosfet_temperature_c), 1e-9
        if key in table:
            return table[key], 0.006
        got = getattr(v, key)
        return (list(got) if isinstance(got, tuple) else got), 1e-6

    return value_of


@pytest.mark.parametrize("record", JK, ids=record_id)
def test_jk_record(record: dict[str, Any]) -> None:
    data = bytes.fromhex(record["hex"])
    if record["checksum_valid"] is False:
        with pytest.raises((FramingError, ChecksumError)):
            jk.decode_frame(data)
        return
    if record["direction"] == "request":
        request = jk.decode_request(data)
        assert request.command == 0x06 and request.register == 0x00
        return
    status = jk.decode_frame(data)
    assert status.cell_count == len(status.cell_voltages_v)
    if record["expected"]:
        assert _compare(record, _jk_value(record, status)) > 0


# -- corpus presence and coverage --------------------------------------------------------------------


def test_corpus_is_present_and_covered() -> None:
    require_corpus()
    assert len(JBD) > 100 and len(DALY) > 40 and len(JK) > 5
    with_expected = [r for r in JBD + DALY + JK if r["expected"]]
    assert len(with_expected) >= 30
