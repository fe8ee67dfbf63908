"""Every command's --help names what a flag takes (DIR, N, URL, RATE...), never argparse's
fallback: the upper-cased dest, which for settings is a dotted key like OUTPUT.OUT."""

from __future__ import annotations

import argparse
import re

import pytest

from harvester import __version__, cli
from harvester.sim.__main__ import build_parser as sim_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = {"harvester": parser, **{f"harvester {n}": p for n, p in sub.choices.items()
                                        if n != "sim"}}
    commands["harvester sim"] = sim_parser()
    return commands


def _shown(action: argparse.Action) -> str | None:
    """The metavar --help prints for an action that takes a value (None if it takes none)."""
    if action.nargs == 0 or isinstance(action, argparse._SubParsersAction):
        return None
    if action.metavar is not None:
        return str(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def test_the_commands_are_all_covered() -> None:
    assert set(_commands()) >= {"harvester", "harvester harvest", "harvester sync",
                                "harvester export", "harvester learners", "harvester demo",
                                "harvester verify", "harvester sim"}


@pytest.mark.parametrize("name", sorted(_commands()))
def test_no_metavar_is_a_dotted_key_or_an_upper_cased_dest(name: str) -> None:
    parser = _commands()[name]
    for action in parser._actions:
        shown = _shown(action)
        if shown is None:
            continue
        assert "." not in shown, f"{name} {action.option_strings}: {shown}"
        assert shown != action.dest.upper(), f"{name} {action.option_strings}: {shown}"
    text = parser.format_help()
    assert not re.search(r"\b[A-Z_]+\.[A-Z_]+\b", text), text


def test_version_names_the_harvester_python_and_aiohttp(
        capsys: pytest.CaptureFixture[str]) -> None:
    import platform

    import aiohttp

    assert cli.main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [f"harvester {__version__} (Python "
                                f"{platform.python_version()}, aiohttp {aiohttp.__version__})"]
