"""Every ``battwin ... --help`` exits 0 and prints that command's usage: the argparse tree is walked, so a
subcommand added later is covered too (the pass-through ones, ``decode`` and ``emulate``, have parsers of
their own)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from device_agent.cli import build_parser, main
from devkit.bms_emulators.cli import build_parser as emulate_parser
from hardware.decode_cli import build_parser as decode_parser
from tests.support import REPO

PASS_THROUGH = {"decode": decode_parser, "emulate": emulate_parser}


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*path, name))
                found += _commands(sub, (*path, name))
    return found


def _all_commands() -> list[tuple[str, ...]]:
    found = [(), *_commands(build_parser())]
    for name, own in PASS_THROUGH.items():
        found += [(name, *sub) for sub in _commands(own())]
    return sorted(set(found))


COMMANDS = _all_commands()


def test_the_walk_finds_the_commands() -> None:
    assert {("run",), ("replay",), ("demo",), ("decode",), ("emulate",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "battwin")
def test_help_exits_zero(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main([*path, "--help"])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    assert code in (0, None), out.err
    assert out.out.startswith(f"usage: {' '.join(('battwin', *path))}"), out.out[:200]


@pytest.mark.parametrize("argv", [["emulate", "--help"], ["decode", "-h"], ["emulate", "--seed", "3", "--help"]])
def test_pass_through_help_as_a_user_runs_it(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "device_agent.cli", *argv], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: battwin {argv[0]}")


def test_unknown_option_of_an_ordinary_command_is_still_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["replay", "x.csv", "--out", "y", "--no-such-option"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
