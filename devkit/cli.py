"""The dev tools' ``battwin`` commands, registered through the ``battwin.cli`` entry-point group
(pyproject.toml), so that the device CLI (``device_agent/cli.py``) never imports this package by name:

* ``battwin demo`` — an embedded broker and a fleet of simulated batteries (:mod:`devkit.demo`); with the
  cloud part installed, the full local stack behind the ``battwin.demo`` group's ``full`` entry point;
* ``battwin emulate PROTOCOL`` — a BMS emulator on a pty or TCP port (:mod:`devkit.bms_emulators.cli`);
* ``battwin gg …`` — the local Greengrass nucleus emulator (:mod:`devkit.nucleus.cli`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from device_agent.cli import add_pass_through
from device_agent.logging_setup import setup_logging


def cmd_demo(args: argparse.Namespace) -> int:
    from devkit.demo import run_demo

    setup_logging("INFO" if args.verbose else "ERROR", stream=sys.stderr)
    options: dict[str, Any] = {}
    if args.table is not None:
        options["table"] = args.table
    if args.no_dashboard:
        options["dashboard"] = False
    if args.dashboard_port is not None:
        options["dashboard_port"] = args.dashboard_port
    if args.no_emulator:
        options["emulator"] = False
    if args.replay_log is not None:
        options["replay_log"] = args.replay_log
    if args.bank_packs is not None:
        options["bank_packs"] = args.bank_packs
    return run_demo(
        duration_s=args.duration,
        batteries=args.batteries,
        broker_url=args.broker,
        workdir=args.workdir,
        acceleration=args.acceleration,
        ageing=args.ageing,
        **options,
    )


def register_demo(subparsers: Any) -> None:
    """Add ``battwin demo`` to the ``battwin`` parser's subparsers."""
    p = subparsers.add_parser("demo", help="embedded broker + a fleet of simulated batteries, live summary")
    p.add_argument("--duration", type=float, default=None, help="end after this many seconds")
    p.add_argument("--batteries", type=int, default=4)
    p.add_argument("--broker", default=None, help="use this broker instead of the embedded amqtt")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--acceleration", type=float, default=2000.0, help="simulated seconds per wall second")
    p.add_argument("--ageing", type=float, default=1.0, help="ageing speed-up of the simulated cells")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--table", dest="table", action="store_true", default=None, help="terminal fleet table")
    p.add_argument("--no-table", dest="table", action="store_false")
    p.add_argument("--no-dashboard", action="store_true", help="(full stack) do not serve the web dashboard")
    p.add_argument("--dashboard-port", type=int, default=None, help="(full stack) dashboard port (default 8090)")
    p.add_argument("--no-emulator", action="store_true", help="(full stack) no BMS-emulator battery")
    p.add_argument("--replay-log", type=Path, default=None, help="(full stack) NASA log for the replayed battery")
    p.add_argument(
        "--bank-packs", type=int, default=None, help="(full stack) packs of the multi-pack core (default 16, 0: none)"
    )
    p.set_defaults(func=cmd_demo)


def register_emulate(subparsers: Any) -> None:
    """Add ``battwin emulate`` (a pass-through command: its own parser reads every argument)."""
    add_pass_through(
        subparsers,
        "emulate",
        "start a BMS emulator on a pty or TCP port",
        "devkit.bms_emulators.cli",
        "main_emulate",
    )
