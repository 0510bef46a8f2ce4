"""Driver benchmarks (issue #3): decode throughput per protocol, polls over a pty, SunSpec reads over TCP.

Targets: >= 50,000 frames/s decoded per protocol; JBD and Daly full polls over a pty >= 50/s; SunSpec
802 reads over Modbus TCP >= 200/s. Every figure is printed with its target and the ratio, and
written to bench/results/drivers.json. Emulators run on the same 2 cores as the driver, so the poll
figures include the emulator's work too.
"""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devkit.bms_emulators.daly import DalyEmulator  # noqa: E402
from devkit.bms_emulators.feed import PackFeed  # noqa: E402
from devkit.bms_emulators.jbd import JbdEmulator, basic_info_payload, cell_voltages_payload  # noqa: E402
from devkit.bms_emulators.jk import status_body  # noqa: E402
from devkit.bms_emulators.modbus import ModbusEmulator  # noqa: E402
from devkit.bms_emulators.sunspec_model import battery_model  # noqa: E402
from hardware.bms.daly.decode import decode_frame as daly_decode  # noqa: E402
from hardware.bms.daly.framing import build_frame as daly_frame  # noqa: E402
from hardware.bms.jbd.decode import decode_response as jbd_decode  # noqa: E402
from hardware.bms.jbd.framing import build_response as jbd_frame  # noqa: E402
from hardware.bms.jk.decode import decode_frame as jk_decode  # noqa: E402
from hardware.bms.jk.framing import TYPE_RESPONSE  # noqa: E402
from hardware.bms.jk.framing import build_frame as jk_frame  # noqa: E402
from hardware.modbus.sunspec import decode_model_802  # noqa: E402
from hardware.registry import create_source  # noqa: E402
from hardware.sbs.pec import read_word_pec  # noqa: E402
from hardware.sbs.registers import decode_transaction  # noqa: E402
from schema.simulator_settings import SimulatorSettings  # noqa: E402
from schema.source_settings import SourceSettings  # noqa: E402

RESULTS = REPO / "bench" / "results"
DECODE_TARGET = 50_000.0
PTY_POLL_TARGET = 50.0
SUNSPEC_TARGET = 200.0


def rate(fn: Callable[[], object], seconds: float = 1.0, batch: int = 1000) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after a short warm-up)."""
    for _ in range(min(batch, 200)):
        fn()
    calls = 0
    start = time.perf_counter()
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls / elapsed


def decode_benchmarks(feed: PackFeed) -> dict[str, float]:
    state = feed.state()
    jbd_basic = jbd_frame(0x03, basic_info_payload(state))
    jbd_cells = jbd_frame(0x04, cell_voltages_payload(state))
    daly = daly_frame(0x01, 0x90, bytes([0x00, 0xA8, 0x00, 0xA8, 0x75, 0x1A, 0x03, 0x84]))
    jk = jk_frame(0x06, status_body(state), source=0, transport_type=TYPE_RESPONSE)
    state_14s = PackFeed(SimulatorSettings(seed=1, cells_series=14)).state()
    jk_14s = jk_frame(0x06, status_body(state_14s), source=0, transport_type=TYPE_RESPONSE)
    sbs = bytes([0x09, 0x98, 0x3A, read_word_pec(0x0B, 0x09, 0x98, 0x3A)])
    regs = battery_model(state)
    frames = {
        "jbd_0x03": lambda: jbd_decode(jbd_basic),
        "jbd_0x04": lambda: jbd_decode(jbd_cells),
        "daly_0x90": lambda: daly_decode(daly),
        f"jk_read_all_4s_{len(jk)}B": lambda: jk_decode(jk),
        f"jk_read_all_14s_{len(jk_14s)}B": lambda: jk_decode(jk_14s),
        "sbs_word_pec": lambda: decode_transaction(sbs),
        "sunspec_802": lambda: decode_model_802(regs),
    }
    return {name: rate(fn) for name, fn in frames.items()}


def pty_polls(feed: PackFeed) -> dict[str, float]:
    out = {}
    for name, emulator_cls in (("jbd", JbdEmulator), ("daly", DalyEmulator)):
        with emulator_cls(feed) as emulator:
            source = create_source(f"{emulator.url}?timeout=1", SourceSettings(retries=0))
            with source:
                out[name] = rate(source.poll, seconds=2.0, batch=20)
    return out


def sunspec_reads(feed: PackFeed) -> float:
    with ModbusEmulator(feed) as emulator:
        source = create_source(f"{emulator.url}&timeout=1&cells=4", SourceSettings(retries=0))
        with source:
            return rate(source.poll, seconds=2.0, batch=20)


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    feed = PackFeed(SimulatorSettings(seed=1))
    feed.advance(700.0)
    decode = decode_benchmarks(feed)
    polls = pty_polls(feed)
    sunspec = sunspec_reads(feed)

    rows: list[tuple[str, float, float, str]] = []
    rows += [(f"decode {k}", v, DECODE_TARGET, "frames/s") for k, v in decode.items()]
    rows += [(f"poll over pty {k}", v, PTY_POLL_TARGET, "polls/s") for k, v in polls.items()]
    rows.append(("sunspec 802 read over modbus tcp", sunspec, SUNSPEC_TARGET, "reads/s"))
    print(f"{'benchmark':40s} {'measured':>12s} {'target':>10s} {'ratio':>8s}")
    for name, value, target, unit in rows:
        print(f"{name:40s} {value:12,.0f} {target:10,.0f} {value / target:7.1f}x  {unit}")
    ok = all(value >= target for _, value, target, _ in rows)
    print("all targets met" if ok else "TARGET MISSED")

    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "decode_frames_per_s": decode,
        "pty_polls_per_s": polls,
        "sunspec_802_reads_per_s": sunspec,
        "targets": {"decode": DECODE_TARGET, "pty_poll": PTY_POLL_TARGET, "sunspec_read": SUNSPEC_TARGET},
        "ratios": {name: round(value / target, 2) for name, value, target, _ in rows},
        "all_targets_met": ok,
    }
    (RESULTS / "drivers.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
