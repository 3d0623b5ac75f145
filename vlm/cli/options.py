"""Flags shared by several commands, each declared once from a dataclass (`vlm.config.ModelOptions`,
`vlm.config.RuntimeOptions`)."""

from __future__ import annotations

import argparse
import dataclasses

from vlm import config


def add_model_options(
    p: argparse.ArgumentParser, exclude: tuple[str, ...] = (), required: tuple[str, ...] = ()
) -> None:
    """--model/--pretrained/--device/--precision (with its choices), from `config.ModelOptions`; a command leaves
    out those it takes otherwise (`vlm info MODEL`) or cannot honour (`exclude`), and may require some."""
    config.add_arguments(p, config.ModelOptions, exclude=exclude, required=required)


def add_runtime_options(p: argparse.ArgumentParser) -> None:
    """--runtime (auto/torch/onnx/onnx-int8) and --onnx DIR, from `config.RuntimeOptions`."""
    config.add_arguments(p, config.RuntimeOptions)
    p.set_defaults(runtime_flags=True)


def model_options(args: argparse.Namespace) -> config.ModelOptions:
    """The `ModelOptions` of the flags given (defaults for the others)."""
    given = config.overrides_from_args(args)
    names = {f.name for f in dataclasses.fields(config.ModelOptions)}
    return config.from_dict(config.ModelOptions, {k: v for k, v in given.items() if k in names})


def runtime_options(args: argparse.Namespace) -> config.RuntimeOptions:
    """The `RuntimeOptions` of the flags given; the defaults ("auto") for a command without them."""
    given = config.overrides_from_args(args)
    names = {f.name for f in dataclasses.fields(config.RuntimeOptions)}
    return config.from_dict(config.RuntimeOptions, {k: v for k, v in given.items() if k in names})


def model_given(args: argparse.Namespace) -> bool:
    """Whether --model was given (commands whose default model depends on other flags ask)."""
    return "model" in config.overrides_from_args(args)


def load_model(args: argparse.Namespace):
    """The `Encoders` the model flags name (through ONNX Runtime when the command has --runtime and it applies)."""
    from vlm.models import load

    opts = model_options(args)
    runtime = runtime_options(args) if getattr(args, "runtime_flags", False) else config.RuntimeOptions("torch")
    return load(
        opts.model, opts.pretrained, device=opts.device, precision=opts.precision,
        runtime=runtime.runtime, onnx=runtime.onnx,
    )  # fmt: skip


def add_report_options(p: argparse.ArgumentParser, files: str) -> None:
    """--batch-size/--workers (how the images are embedded) and --out/--json (where the report goes), as every
    evaluation that writes a report takes them; `files` names what --out receives."""
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default: 2)")
    p.add_argument("--out", help=f"write {files} here")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the Markdown table")
