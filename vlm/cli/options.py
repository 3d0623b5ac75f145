"""Flags shared by several commands, each declared once from a dataclass (`vlm.config.ModelOptions`)."""

from __future__ import annotations

import argparse

from vlm import config


def add_model_options(
    p: argparse.ArgumentParser, exclude: tuple[str, ...] = (), required: tuple[str, ...] = ()
) -> None:
    """--model/--pretrained/--device/--precision (with its choices), from `config.ModelOptions`; a command leaves
    out those it takes otherwise (`vlm info MODEL`) or cannot honour (`exclude`), and may require some."""
    config.add_arguments(p, config.ModelOptions, exclude=exclude, required=required)


def model_options(args: argparse.Namespace) -> config.ModelOptions:
    """The `ModelOptions` of the flags given (defaults for the others)."""
    return config.resolve(config.ModelOptions, args)


def model_given(args: argparse.Namespace) -> bool:
    """Whether --model was given (commands whose default model depends on other flags ask)."""
    return "model" in config.overrides_from_args(args)


def load_model(args: argparse.Namespace):
    """The `Encoders` the model flags name."""
    from vlm.models import load

    opts = model_options(args)
    return load(opts.model, opts.pretrained, device=opts.device, precision=opts.precision)
