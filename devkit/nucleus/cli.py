"""``battwin gg …``: Greengrass developer tools (registered through the ``battwin.cli`` entry-point group).

``battwin gg emulate --socket PATH --thing NAME --recipe recipes/com.battwin.Agent.yaml`` starts the local
nucleus emulator and prints the two variables a component process needs; export them in another shell
and run the agent (``battwin run --thing NAME``) to exercise the IPC path without a Greengrass core.
Also runnable as ``python -m devkit.nucleus.cli emulate …``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_RECIPE = Path("recipes/com.battwin.Agent.yaml")


def register(subparsers: Any) -> None:
    """Add ``gg`` and its subcommands to the ``battwin`` parser's subparsers."""
    gg = subparsers.add_parser("gg", help="AWS IoT Greengrass tools (local nucleus emulator)")
    sub = gg.add_subparsers(dest="gg_command", required=True)
    p = sub.add_parser(
        "emulate",
        help="run a local Greengrass nucleus emulator (IPC on a Unix socket) for development",
        description="Emulates the nucleus' IPC server: IoT Core publish/subscribe (recorded, optionally "
        "forwarded to an MQTT broker), local pub/sub, ShadowManager, component configuration, with the "
        "recipe's accessControl enforced. A development tool, not a Greengrass core.",
    )
    p.add_argument("--socket", required=True, type=Path, help="Unix socket path to listen on (≤ 107 bytes)")
    p.add_argument("--thing", required=True, help="the core device's thing name ({iot:thingName})")
    p.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help=f"component recipe (default {DEFAULT_RECIPE})")
    p.add_argument("--component", help="component name (default: the recipe's ComponentName)")
    p.add_argument(
        "--forward-mqtt", metavar="URL", help="also publish to / subscribe on this broker (mqtt://host:1883)"
    )
    p.add_argument("--svcuid", help="auth token to accept (default: a random one)")
    p.add_argument(
        "--flavour", choices=["classic", "lite"], default="classic", help="answer like this nucleus (default classic)"
    )
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.set_defaults(func=cmd_emulate)


def cmd_emulate(args: argparse.Namespace) -> int:
    from device_agent.logging_setup import setup_logging
    from devkit.nucleus import SOCKET_ENV, TOKEN_ENV, NucleusEmulator

    setup_logging(args.log_level, stream=sys.stderr)
    if not args.recipe.is_file():
        print(f"battwin gg emulate: recipe {args.recipe} not found", file=sys.stderr)
        return 2
    try:
        args.socket.parent.mkdir(parents=True, exist_ok=True)
        emulator = NucleusEmulator(
            args.socket,
            args.thing,
            args.recipe,
            component=args.component,
            svcuid=args.svcuid,
            forward_mqtt=args.forward_mqtt,
            flavour=args.flavour,
        )
        emulator.start()
    except (ValueError, OSError) as exc:
        print(f"battwin gg emulate: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _handler(signum: int, frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(sig, _handler)
    env = emulator.env()
    print(f"# nucleus emulator for {emulator.component} on thing {args.thing}; in the component's shell:")
    print(f"export {TOKEN_ENV}={env[TOKEN_ENV]}")
    print(f"export {SOCKET_ENV}={env[SOCKET_ENV]}")
    print(f"# then e.g.: battwin run --thing {args.thing}   (Ctrl-C here stops the emulator)", flush=True)
    try:
        stop.wait(args.duration)
    finally:
        emulator.stop()
    published = emulator.published
    topics: dict[str, int] = {}
    for m in published:
        topics[m.topic] = topics.get(m.topic, 0) + 1
    print(f"# stopped: {len(published)} message(s) published to IoT Core, {len(emulator.denials)} request(s) denied")
    for topic, n in sorted(topics.items()):
        print(f"#   {n:6d}  {topic}")
    for d in emulator.denials[:20]:
        print(f"#   denied {d.operation} on {d.resource} ({d.destination})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="battwin")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["gg", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
