"""Tests for the `sdtoolkit` command line: help for every subcommand and option, and `sdtoolkit info`."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch

from sdtoolkit.cli import SUBCOMMANDS, build_parser, main


def subparsers_of(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_python_m_help_lists_subcommands():
    result = subprocess.run(
        [sys.executable, "-m", "sdtoolkit", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert name in result.stdout


def test_main_without_command_prints_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_every_subcommand_registered():
    assert set(subparsers_of(build_parser())) == set(SUBCOMMANDS)


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"sdtoolkit {name}" in out
    assert "%%" not in out  # argparse prints descriptions as written: only help lines need '%' escaped


def test_distill_method_help(capsys):
    """`sdtoolkit distill --help` lists every method and `distill METHOD --help` prints each one's flags: a '%' in a
    method's description (e.g. "10% caption dropout") must not crash argparse's help formatting."""
    from sdtoolkit.distill.loop import method_names

    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "--help"])
    assert exit_info.value.code == 0
    listing = capsys.readouterr().out
    for name in method_names():
        assert name in listing
        with pytest.raises(SystemExit) as exit_info:
            main(["distill", name, "--help"])
        assert exit_info.value.code == 0, name
        out = capsys.readouterr().out
        assert f"sdtoolkit distill {name}" in out and "%%" not in out, name


def options_without_help(parser: argparse.ArgumentParser) -> list[str]:
    """Every option of `parser` and its subparsers (recursively) whose help is missing or blank, and every
    subcommand registered without a help line."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help and choice.help.strip()}
            for name, subparser in action.choices.items():
                if name not in helped:
                    missing.append(f"{parser.prog} {name} (subcommand)")
                missing += options_without_help(subparser)
        elif not (action.help and action.help.strip()):
            missing.append(f"{parser.prog} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_option_has_help():
    assert not options_without_help(build_parser())


def test_help_check_catches_omissions():
    parser = argparse.ArgumentParser(prog="demo")
    subparsers = parser.add_subparsers()
    good = subparsers.add_parser("good", help="fine")
    good.add_argument("--ok", help="fine")
    good.add_argument("--bad")
    subparsers.add_parser("silent")
    assert options_without_help(parser) == ["demo good --bad", "demo silent (subcommand)"]


def test_info_text(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert torch.__version__ in out
    assert "Attention backends" in out and "cpu float32" in out
    assert "builtin:shapes" in out
    assert "HF_HUB_CACHE" in out


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["torch"] == torch.__version__
    cpu = next(entry for entry in info["attention"] if entry["device"] == "cpu")
    assert cpu["dtype"] == "float32" and {"sdpa", "math", "jvp"} <= set(cpu["available"])
    assert info["hub"]["offline"] is True  # tests/conftest.py sets HF_HUB_OFFLINE=1
    models = {m["id"]: m for m in info["builtin_models"]}
    assert list(models) == ["builtin:shapes", "builtin:shapes-flow", "builtin:shapes-novel-view"]
    assert models["builtin:shapes"]["present"] is True  # shipped; shapes-flow is listed with its training command
    assert models["builtin:shapes-novel-view"]["present"] is True  # image-to-3d's novel-view prior
    assert info["devices"]["cpu"]["threads"] >= 1


def test_argparse_errors_are_one_line_naming_the_subcommand(capsys):
    """A value argparse cannot parse, or a flag no subcommand has: one line naming the subcommand that got it
    (it used to print the whole usage block, and an unknown flag of `distill lcm` in the top level's usage)."""
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "lcm", "--max-steps", "two"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdtoolkit distill lcm: error: argument --max-steps"), err
    assert main(["distill", "lcm", "--bogus", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sdtoolkit distill lcm: error: unrecognized arguments: --bogus 3 (sdtoolkit distill lcm --help "
                   "lists the flags)"], err  # fmt: skip
