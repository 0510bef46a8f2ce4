"""``battwin decode`` and ``battwin emulate`` entry points."""

from __future__ import annotations

import json
import threading

import pytest

from devkit.bms_emulators.cli import build_parser, main_emulate, run_emulator
from devkit.bms_emulators.sunspec_model import battery_model
from hardware.decode_cli import main_decode
from hardware.registry import create_source
from hardware.sbs.pec import read_word_pec
from tests.hardware.hw_support import corpus_records, make_feed, require_corpus, settings
from tests.support import scaled

JBD_BASIC = "dd03001d0618000001f201f400002c7c00000000000080640304030b8b0b8a0b84fa8d77"


def _daly(data_id: int, data: bytes) -> str:
    from hardware.bms.daly.framing import build_frame

    return build_frame(0x01, data_id, data).hex()


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, object]]]:
    code = main_decode(argv)
    lines = capsys.readouterr().out.strip().splitlines()
    return code, [json.loads(line) for line in lines]


def test_decode_jbd(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["jbd", JBD_BASIC, "dd a5 03 00 ff fd 77"], capsys)
    assert code == 0
    assert out[0]["pack_voltage_v"] == 15.6 and out[0]["temperatures_c"] == [22.4, 22.3, 21.7]
    assert out[0]["soc_pct"] == 100 and out[0]["cycles"] == 0
    assert out[1]["direction"] == "request" and out[1]["command"] == "read register 0x03"


def test_decode_reports_errors_and_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    bad = JBD_BASIC[:-6] + "fa8e77"
    code, out = _run(["jbd", bad, "zz", JBD_BASIC], capsys)
    assert code == 1
    assert out[0] == {"error": "ChecksumError", "message": out[0]["message"]}
    assert out[1]["error"] == "ValueError"
    assert "pack_voltage_v" in out[2]


def test_decode_daly_merges_multi_frame_replies(capsys: pytest.CaptureFixture[str]) -> None:
    frames = [
        _daly(0x94, bytes([4, 2, 0, 1, 0, 0, 7, 0])),
        _daly(0x95, bytes([2, 0x0E, 0x10, 0, 0, 0, 0, 0])),
        _daly(0x95, bytes([1, 0x0E, 0x74, 0x0E, 0x75, 0x0E, 0x76, 0])),
        _daly(0x96, bytes([1, 65, 66, 0, 0, 0, 0, 0])),
        _daly(0x90, bytes([0, 148, 0, 148, 0x74, 0x68, 0x02, 0x58])),
    ]
    code, out = _run(["daly", *frames], capsys)
    assert code == 0
    assert [o["data_id"] for o in out] == ["0x94", "0x95", "0x96", "0x90"]
    assert out[1]["cell_voltages_v"] == [3.7, 3.701, 3.702, 3.6] and out[1]["frames"] == [1, 2]
    assert out[2]["temperatures_c"] == [25, 26]
    assert out[3]["current_a"] == -20.0 and out[3]["soc_pct"] == 60.0
    code, out = _run(["daly", "--current-sign", "-1", frames[4]], capsys)
    assert out[0]["current_a"] == 20.0


def _daly_cell_frames() -> list[dict[str, object]]:
    require_corpus()
    frames = [
        r
        for r in corpus_records("daly.jsonl", "daly_uart")
        if r["register_or_id"] == "0x95" and r["checksum_valid"] and r["direction"] == "response"
    ]
    assert frames, "the corpus has no 0x95 frames"
    return frames


def test_decode_daly_single_cell_voltage_frame_of_a_real_reply(capsys: pytest.CaptureFixture[str]) -> None:
    """One 0x95 frame of a multi-frame reply decodes on its own and says which cells it carries."""
    checked = 0
    for record in _daly_cell_frames():
        code, out = _run(["daly", str(record["hex"])], capsys)
        assert code == 0, out
        (result,) = out
        n = int(str(record["hex"])[8:10], 16)  # the data's first byte: the frame number
        assert result["data_id"] == "0x95" and result["frame_number"] == n
        assert result["cells"] == [3 * n - 2, 3 * n - 1, 3 * n]
        expected = record.get("expected")
        if isinstance(expected, dict):
            assert expected["frame_number"] == n
            assert result["cell_voltages_v"] == expected["cell_voltages_v"]
            checked += 1
    assert checked, "no 0x95 frame of the corpus has expected values"


def test_decode_daly_fragments_and_whole_replies(capsys: pytest.CaptureFixture[str]) -> None:
    frames = {int(str(r["hex"])[8:10], 16): str(r["hex"]) for r in _daly_cell_frames()}
    assert {1, 3, 4} <= set(frames)
    # frames with a gap: each one by itself; a 0x94 of the same call trims the padding past the last cell
    status = _daly(0x94, bytes([8, 1, 0, 0, 0, 0, 0, 0]))
    code, out = _run(["daly", status, frames[3], frames[1]], capsys)
    assert code == 0
    assert [o.get("frame_number") for o in out] == [None, 3, 1]
    assert out[1]["cells"] == [7, 8] and len(out[1]["cell_voltages_v"]) == 2
    assert out[2]["cells"] == [1, 2, 3]
    # a whole reply is still merged into one object
    whole = _daly(0x95, bytes([2, 0x0E, 0x10, 0x0E, 0x11, 0x0E, 0x12, 0]))
    code, out = _run(["daly", _daly(0x94, bytes([5, 1, 0, 0, 0, 0, 0, 0])), whole, frames[1]], capsys)
    assert code == 0
    assert out[1]["frames"] == [1, 2] and len(out[1]["cell_voltages_v"]) == 5
    assert out[1]["cell_voltages_v"][3:] == [3.6, 3.601]
    # a frame number 0 is still refused
    code, out = _run(["daly", _daly(0x95, bytes([0, 0x0E, 0x10, 0, 0, 0, 0, 0]))], capsys)
    assert code == 1 and out[0]["error"] == "DecodeError"


def test_decode_daly_single_temperature_frame(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["daly", _daly(0x96, bytes([2, 65, 66, 67, 68, 69, 70, 71]))], capsys)
    assert code == 0
    assert out == [{"protocol": "daly", "data_id": "0x96", "frame_number": 2, "sensors": list(range(8, 15)),
                    "temperatures_c": [25, 26, 27, 28, 29, 30, 31]}]  # fmt: skip


def test_decode_jk_sbs_sunspec(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = _run(["jk", "4e5700130000000006030000000000006800000129"], capsys)
    assert code == 0 and out[0]["direction"] == "request" and out[0]["command"] == 6

    pec = read_word_pec(0x0B, 0x09, 0x98, 0x3A)
    code, out = _run(["sbs", "09983a", f"09983a{pec:02x}", "0380 80", "0f e803"], capsys)
    assert code == 0
    assert out[0]["voltage_v"] == 15.0 and out[1]["voltage_v"] == 15.0
    assert out[3] == {"protocol": "sbs", "register": "0x0f", "name": "RemainingCapacity", "remaining_energy_wh": 10.0}

    regs = battery_model(make_feed().state())
    code, out = _run(["sunspec802", b"".join(r.to_bytes(2, "big") for r in regs).hex()], capsys)
    assert code == 0 and out[0]["state"] == "connected"
    assert isinstance(out[0]["voltage_v"], float)


def test_decode_usage_errors_return_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_decode(["nosuch", "00"]) == 2
    assert main_decode([]) == 2
    capsys.readouterr()


def test_run_emulator_serves_a_driver() -> None:
    args = build_parser().parse_args(["daly", "--seed", "4", "--time-acceleration", "100"])
    handle = run_emulator(args.protocol, args)
    try:
        assert handle.url.startswith("daly:/dev/pts/")
        source = create_source(f"{handle.url}&timeout={scaled(0.5)}", settings())
        with source:
            sample = source.poll()
        assert sample.cell_voltages_v is not None and len(sample.cell_voltages_v) == 4
    finally:
        handle.stop()


def test_main_emulate_runs_for_a_duration(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_emulate(["modbus-tcp", "--port", "0", "--duration", "0.2", "--faults", "silence:0.5"]) == 0
    out = capsys.readouterr().out
    assert "source URL: modbus-tcp://127.0.0.1:" in out and "stopped:" in out
    assert main_emulate(["nosuch", "--duration", "0"]) == 2


def test_main_emulate_sbs_prints_readings(capsys: pytest.CaptureFixture[str]) -> None:
    done = threading.Event()
    code: list[int] = []

    def run() -> None:
        code.append(main_emulate(["sbs", "--duration", "1.3"]))
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(15)
    assert code == [0]
    assert "voltage_v=" in capsys.readouterr().out
