"""``battwin emulate PROTOCOL``: run one device emulator and print the source URL to point an agent at.

Protocols: jbd, daly, jk (serial on a pty), modbus-tcp (alias sunspec), modbus-rtu (pty), sbs
(in-process only: an SMBus object cannot be shared with another process, so the CLI prints its
readings instead). Examples::

    battwin emulate jbd --seed 3 --time-acceleration 60
    battwin emulate modbus-tcp --port 5020 --faults exception:0.05,silence:0.02
    battwin emulate modbus-rtu --map generic_pack --duration 600
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from devkit.bms_emulators.faults import Fault, FaultControl
from devkit.bms_emulators.feed import PackFeed
from schema.simulator_settings import SimulatorSettings

log = logging.getLogger(__name__)

PROTOCOLS = ("jbd", "daly", "jk", "sbs", "modbus-tcp", "modbus-rtu")
ALIASES = {"sunspec": "modbus-tcp", "modbus": "modbus-tcp", "jk-bms": "jk"}


@dataclass
class EmulatorHandle:
    protocol: str
    url: str
    feed: PackFeed
    faults: FaultControl
    device: Any
    stop: Callable[[], None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="battwin emulate", description="Run a BMS/gauge emulator.")
    parser.add_argument("protocol", help=f"one of {', '.join(PROTOCOLS)} (sunspec = modbus-tcp)")
    parser.add_argument("--seed", type=int, default=1, help="simulator and fault RNG seed")
    parser.add_argument("--port", type=int, default=5020, help="TCP port for modbus-tcp (0 = any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address modbus-tcp listens on")
    parser.add_argument(
        "--faults",
        default="",
        help=f"fault mode or mix, e.g. 'silence' or 'bad_checksum:0.1,silence:0.05' "
        f"(modes: {', '.join(f.value for f in Fault)})",
    )
    parser.add_argument("--slow-delay", type=float, default=2.0, help="delay of the 'slow' fault, seconds")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--cells", type=int, default=4, help="series cells of the simulated pack")
    parser.add_argument("--capacity-ah", type=float, default=2.0, help="capacity of the simulated pack")
    parser.add_argument("--time-acceleration", type=float, default=1.0, help="simulated s per wall s")
    parser.add_argument("--map", default="sunspec", help="modbus: 'sunspec' or a register map (file or name)")
    parser.add_argument("--unit", type=int, default=1, help="modbus unit id")
    parser.add_argument("--current-sign", type=int, choices=(1, -1), default=1, help="daly/modbus current sign")
    return parser


def run_emulator(protocol: str, args: argparse.Namespace) -> EmulatorHandle:
    """Start the emulator ``protocol`` (as configured by ``args`` from :func:`build_parser`)."""
    protocol = ALIASES.get(protocol.lower(), protocol.lower())
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    settings = SimulatorSettings(
        seed=args.seed,
        cells_series=args.cells,
        capacity_ah=args.capacity_ah,
        time_acceleration=args.time_acceleration,
    )
    feed = PackFeed(settings, realtime=True)
    faults = FaultControl(seed=args.seed, slow_delay_s=args.slow_delay)
    faults.configure(args.faults)
    if protocol in ("jbd", "daly", "jk"):
        from devkit.bms_emulators.pty_device import PtyDeviceEmulator

        emulator: PtyDeviceEmulator
        if protocol == "jbd":
            from devkit.bms_emulators.jbd import JbdEmulator

            emulator = JbdEmulator(feed, faults)
        elif protocol == "daly":
            from devkit.bms_emulators.daly import DalyEmulator

            emulator = DalyEmulator(feed, faults, current_sign=args.current_sign)
        else:
            from devkit.bms_emulators.jk import JkEmulator

            emulator = JkEmulator(feed, faults)
        emulator.start()
        url = emulator.url + (f"?current_sign={args.current_sign}" if protocol == "daly" else "")
        return EmulatorHandle(protocol, url, feed, faults, emulator, emulator.stop)
    if protocol == "sbs":
        from devkit.bms_emulators.sbs import SbsEmulatorBus

        bus = SbsEmulatorBus(feed, faults)
        return EmulatorHandle(protocol, "sbs:(in-process)?address=0x0b", feed, faults, bus, bus.close)
    from devkit.bms_emulators.modbus import ModbusEmulator
    from hardware.modbus.regmap import load_map

    regmap = None if args.map == "sunspec" else load_map(args.map)
    modbus = ModbusEmulator(
        feed,
        faults,
        transport="tcp" if protocol == "modbus-tcp" else "rtu",
        unit=args.unit,
        regmap=regmap,
        host=args.host,
        port=args.port,
        current_sign=args.current_sign,
        map_ref=args.map,
    )
    modbus.start()
    return EmulatorHandle(protocol, modbus.url, feed, faults, modbus, modbus.stop)


def _sbs_report(handle: EmulatorHandle, stop: threading.Event) -> None:
    from hardware.sbs import registers as reg

    bus = handle.device
    while not stop.wait(1.0):
        words = bus.words(handle.feed.state())
        values = {k: v for r in (reg.VOLTAGE, reg.CURRENT, reg.TEMPERATURE, reg.RELATIVE_STATE_OF_CHARGE)
                  for k, v in reg.decode_register(r, words[r]).items()}  # fmt: skip
        print(" ".join(f"{k}={v}" for k, v in values.items()), flush=True)


def main_emulate(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        handle = run_emulator(args.protocol, args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"battwin emulate: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    print(f"source URL: {handle.url}", flush=True)
    if handle.protocol == "sbs":
        print("(the SBS emulator is an in-process SMBus object; printing its readings)", flush=True)
        threading.Thread(target=_sbs_report, args=(handle, stop), daemon=True).start()
    try:
        stop.wait(args.duration)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        handle.stop()
    print(f"stopped: {handle.faults.requests} requests, {handle.faults.injected} with a fault", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main_emulate(sys.argv[1:]))
