"""The model flags are declared once (`vlm.config.ModelOptions`): every command that loads one model has the same
--model/--pretrained/--device/--precision, with the precisions `vlm.models.load` accepts as choices."""

from __future__ import annotations

import dataclasses

import pytest

from vlm import config, models
from vlm.cli import build_parser, main

COMMANDS = [["classify", "x.png", "--labels", "a"], ["explain", "x.png", "a"], ["eval", "zeroshot", "d"]]
COMMANDS += [["eval", "retrieval", "p.csv"], ["segment", "x.png", "a"], ["eval", "segmentation", "--data", "d"]]


def test_one_list_of_precisions():
    assert models.PRECISIONS is config.PRECISIONS
    assert config.ModelOptions().precision in config.PRECISIONS


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_every_model_command_takes_the_same_options(argv):
    args = build_parser().parse_args([*argv, "--model", "vlm-tiny", "--device", "cpu", "--precision", "fp32"])
    assert config.resolve(config.ModelOptions, args) == config.ModelOptions("vlm-tiny", None, "cpu", "fp32")
    defaults = config.resolve(config.ModelOptions, build_parser().parse_args(argv))
    assert defaults == config.ModelOptions()


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_an_unknown_precision_is_refused_with_the_choices(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--precision", "fp64"])
    assert e.value.code == 2
    assert "invalid choice: 'fp64'" in capsys.readouterr().err


def _help_of(argv: list[str], flag: str) -> str:
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[argv[0]]
    for name in argv[1:]:
        sub = sub._subparsers._group_actions[0].choices[name]
    return next(a.help for a in sub._actions if flag in a.option_strings)


@pytest.mark.parametrize("argv", [["info"], ["index", "build"], ["index", "search"], ["serve"]], ids=" ".join)
def test_info_index_and_serve_take_the_model_flags_from_the_same_fields(argv):
    fields = {f.name: f.metadata["help"] for f in dataclasses.fields(config.ModelOptions)}
    assert _help_of(argv, "--device").startswith(fields["device"])
    if argv != ["index", "search"]:
        assert _help_of(argv, "--pretrained").startswith(fields["pretrained"])


def test_index_build_still_requires_a_model(capsys):
    with pytest.raises(SystemExit) as e:
        main(["index", "build", "coll", "photos"])
    assert e.value.code == 2 and "--model" in capsys.readouterr().err
    args = build_parser().parse_args(["info", "demo", "--device", "cpu", "--precision", "fp32"])
    assert (args.model, config.resolve(config.ModelOptions, args).precision) == ("demo", "fp32")


def test_every_commands_help_renders():
    """`vlm X --help` for every command and subcommand (argparse %-formats help texts; one stray "%" in a field's
    help once made `vlm train --help` raise instead of printing)."""
    import argparse

    def walk(parser: argparse.ArgumentParser, name: str) -> list[str]:
        parser.format_help()  # raises on a help text argparse cannot format
        names = [name]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, sub_parser in action.choices.items():
                    names += walk(sub_parser, f"{name} {sub}")
        return names

    names = walk(build_parser(), "vlm")
    assert {"vlm train", "vlm eval retrieval", "vlm index search"} <= set(names)
