"""``battwin`` command line.

Core commands live here (``run``, ``replay``, ``decode``); optional packages add theirs through the
``battwin.cli`` entry-point group (``ml`` and ``cloud`` register ``battwin ml …`` and ``battwin cloud …``,
the dev tools in ``devkit`` ``battwin demo``, ``battwin emulate`` and ``battwin gg …`` that way), so the
device code never imports them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from device_agent.config import AgentConfig, ConfigError, load_config, set_nested
from device_agent.logging_setup import setup_logging

log = logging.getLogger("battwin")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
#: the nucleus refuses the agent's IPC token for good: exit so that it restarts the agent (EX_TEMPFAIL)
EXIT_NUCLEUS_REFUSED = 75


class UsageError(Exception):
    """Bad command-line input: exit code 2 with the message."""


def _config_from_args(args: argparse.Namespace, extra: dict[str, Any] | None = None) -> AgentConfig:
    overrides: dict[str, Any] = {}
    mapping = {
        "source": "source.url",
        "broker": "mqtt.url",
        "thing": "thing_name",
        "spool": "spool.path",
        "sample_interval": "source.sample_interval_s",
        "log_level": "log_level",
        "model_dir": "health.model_dir",
        "cells_series": "tracker.cells_series",
        "cutoff_per_cell": "tracker.cutoff_voltage_per_cell_v",
        "eol": "health.eol_threshold",
        "ca_file": "mqtt.ca_file",
        "cert_file": "mqtt.cert_file",
        "key_file": "mqtt.key_file",
    }
    for attr, dotted in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            set_nested(overrides, dotted, value)
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        set_nested(overrides, key.strip(), value)
    for key, value in (extra or {}).items():
        set_nested(overrides, key, value)
    return load_config(getattr(args, "config", None), overrides)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file")
    p.add_argument("--thing", help="thing name (MQTT topics battwin/<thing>/...)")
    p.add_argument("--source", help="source URL: simulator, replay:PATH, jbd:/dev/ttyUSB0, ...")
    p.add_argument("--sample-interval", type=float, help="seconds between polls")
    p.add_argument("--cells-series", type=int, help="series cells (cut-off = cells × per-cell cut-off)")
    p.add_argument("--cutoff-per-cell", type=float, help="discharge cut-off voltage per cell (V)")
    p.add_argument("--eol", type=float, help="end-of-life SoH threshold (default 0.8)")
    p.add_argument("--model-dir", type=Path, help="directory with model.tflite + model.json")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config field, e.g. mqtt.inflight=20")


def _install_signal_stop(stop: threading.Event) -> None:
    def _handler(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(sig, _handler)


# -- run ------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from device_agent.runtime import build_agent, uplink_description

    config = _config_from_args(args)
    setup_logging(config.log_level)
    if config.packs:
        return _run_packs(config, args)
    agent = build_agent(config)
    stop = threading.Event()
    _install_signal_stop(stop)
    on_fatal = getattr(agent.transport, "add_fatal_callback", None)
    if callable(on_fatal):  # Greengrass IPC: the nucleus refuses our token for good -> stop, exit non-zero
        on_fatal(lambda reason: stop.set())
    if args.duration:
        threading.Timer(args.duration, stop.set).start()
    log.info(
        "agent starting",
        extra={"thing": config.thing_name, "source": config.source.url, "uplink": uplink_description(config)},
    )
    spooled = 0
    try:
        stats = agent.run(stop, max_samples=args.max_samples)
    finally:
        with contextlib.suppress(Exception):
            spooled = agent.spool.pending
        agent.close()
    log.info("agent stopped", extra={"samples": stats.samples, "cycles": stats.cycles, "health": stats.health})
    fatal = getattr(agent.transport, "fatal", None)
    if isinstance(fatal, str):
        log.error(
            "agent exiting: the nucleus no longer accepts its IPC token; unsent messages stay in the spool "
            "for the restarted agent",
            extra={"reason": fatal, "exit_code": EXIT_NUCLEUS_REFUSED, "spooled": spooled},
        )
        return EXIT_NUCLEUS_REFUSED
    return EXIT_OK


def _run_packs(config: AgentConfig, args: argparse.Namespace) -> int:
    """``run`` with ``packs`` configured: every pack in this process over one connection (device_agent.packs)."""
    from device_agent.runtime import build_pack_runner, uplink_description

    runner = build_pack_runner(config)
    stop = threading.Event()
    _install_signal_stop(stop)
    on_fatal = getattr(runner.transport, "add_fatal_callback", None)
    if callable(on_fatal):
        on_fatal(lambda reason: stop.set())
    if args.duration:
        threading.Timer(args.duration, stop.set).start()
    log.info(
        "multi-pack agent starting",
        extra={"thing": config.thing_name, "packs": [p.id for p in config.packs], "uplink": uplink_description(config)},
    )
    spooled = 0
    try:
        stats = runner.run(stop, max_samples=args.max_samples)
    finally:
        with contextlib.suppress(Exception):
            spooled = runner.pending
        runner.close()
    log.info("multi-pack agent stopped", extra={"samples": {k: s.samples for k, s in stats.items()}})
    fatal = getattr(runner.transport, "fatal", None)
    if isinstance(fatal, str):
        log.error(
            "agent exiting: the nucleus no longer accepts its IPC token; unsent messages stay in the spools",
            extra={"reason": fatal, "exit_code": EXIT_NUCLEUS_REFUSED, "spooled": spooled},
        )
        return EXIT_NUCLEUS_REFUSED
    return EXIT_OK


# -- replay (offline) -----------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> int:
    from device_agent.runtime import replay_offline

    config = _config_from_args(args)
    setup_logging(config.log_level if args.log_level else "WARNING")
    counts = replay_offline(config, Path(args.log), Path(args.out), start_ts=args.start, telemetry=args.telemetry)
    print(json.dumps(counts))
    return EXIT_OK if counts.get("error") is None else EXIT_USAGE


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        fn = getattr(importlib.import_module(module), func)
        return int(fn(list(args.rest)))

    return run


def add_pass_through(subparsers: Any, name: str, text: str, module: str, func: str) -> None:
    """A command whose arguments all go to ``module.func(argv)`` (its own parser): ``battwin decode``, and
    ``battwin emulate`` that the dev tools register through the ``battwin.cli`` group."""
    p = subparsers.add_parser(name, help=text, add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_lazy(module, func), passthrough=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="battwin", description="Edge battery digital twin")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run one edge agent")
    _add_common(p)
    p.add_argument("--broker", help="mqtt://host:1883 or mqtts://host:8883")
    p.add_argument("--spool", type=Path, help="spool database path")
    p.add_argument("--ca-file", type=Path)
    p.add_argument("--cert-file", type=Path)
    p.add_argument("--key-file", type=Path)
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--max-samples", type=int, help="stop after this many samples")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("replay", help="replay a BMS log offline and write cycle + health records")
    _add_common(p)
    p.add_argument("log", help="BMS log (CSV or CSV.gz with t_s, voltage_v, current_a, temperature_c)")
    p.add_argument("--out", required=True, help="output JSON lines file")
    p.add_argument("--start", type=float, default=0.0, help="Unix time of the log's t_s = 0 (default 0)")
    p.add_argument(
        "--telemetry", action="store_true", help="also write the telemetry messages (every sample, with soc_est_pct)"
    )
    p.set_defaults(func=cmd_replay)

    add_pass_through(sub, "decode", "decode BMS frames given as hex", "hardware.decode_cli", "main_decode")

    for ep in entry_points(group="battwin.cli"):
        try:
            register = ep.load()
            register(sub)
        except Exception as exc:  # an optional part that is not installed or broken must not break the CLI
            log.debug("plugin %s unavailable: %s", ep.name, exc)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # a pass-through command hands every argument to its own parser; argparse's REMAINDER does not take an
    # option that comes first (`battwin emulate --help`, `battwin emulate --seed 3 daly`), so those come back
    # as unknown and are put in front of the rest
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if not getattr(args, "passthrough", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.rest = [*unknown, *args.rest]
    try:
        return int(args.func(args))
    except (ConfigError, UsageError) as exc:
        print(f"battwin: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # typed errors from sources and files
        from hardware.errors import SourceConfigError, SourceError

        if isinstance(exc, SourceConfigError):
            print(f"battwin: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if isinstance(exc, SourceError):
            print(f"battwin: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        raise


if __name__ == "__main__":
    sys.exit(main())
