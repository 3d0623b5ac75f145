"""Typed configuration: dataclasses as the single source of defaults, with CLI flags and YAML/JSON files derived.

A config is a tree of dataclasses. `add_arguments` turns every leaf field into one flat `--flag` (field names are
unique across the tree, so `--lr` rather than `--optim.lr`); `from_dict` builds the tree from a nested mapping and
rejects unknown keys and values of the wrong type, naming them. Precedence: defaults < config file < CLI flags.

Over 400 lines on purpose: the machinery (about half) and the config dataclasses several commands share
(`ModelOptions`; `RunConfig`, the run settings of every trainer in `vlm.training`; `TrainConfig` and its sections,
which `SegTrainConfig` reuses) are kept in one file, the one place every flag's definition and default is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from vlm.errors import ConfigError

T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """`X | None` -> (X, True); anything else -> (tp, False)."""
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# Number fields: what the error calls them, and the values accepted (a string from the CLI; never a bool).
_NUMBERS: dict[type, tuple[str, Any]] = {int: ("an integer", int | str), float: ("a number", int | float | str)}


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently convert: int->float, list->tuple, str->number from the CLI) `value` against `tp`."""
    inner, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: null is not allowed (expected {_type_name(inner)})")
    if _is_dataclass_type(inner):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {inner.__name__} fields, got {value!r}")
        return from_dict(inner, value, where=where)
    origin = get_origin(inner)
    if origin is Literal:
        choices = get_args(inner)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = get_args(inner)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}: {value!r}")
            items = [coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))]
        else:
            items = [coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
        return tuple(items) if origin is tuple else items
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if inner in _NUMBERS:
        what, accepted = _NUMBERS[inner]
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise ConfigError(f"{where}: expected {what}, got {value!r}")
        try:
            return inner(value)
        except ValueError:
            raise ConfigError(f"{where}: expected {what}, got {value!r}") from None
    if inner is str:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"{where}: unsupported config field type {tp!r}")  # a programming error, not user input


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a (nested) mapping; unknown keys and wrong types raise ConfigError."""
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {names}")
    data = _over_section_defaults(cls, data)
    kwargs = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from e


def _over_section_defaults(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """A section given as a mapping starts from the section's own default, not from its class's field defaults:
    `{"optim": {"lr": 3e-3}}` for `SegTrainConfig` keeps the decoder's weight decay and betas."""
    out = dict(data)
    for f in dataclasses.fields(cls):
        value = out.get(f.name)
        if isinstance(value, Mapping) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if dataclasses.is_dataclass(default):
                names = {g.name for g in dataclasses.fields(default) if g.init}
                base = {k: v for k, v in to_dict(default).items() if k in names}
                out[f.name] = merge(base, value)
    return out


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-ready nested dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(obj)))


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError; both say where the syntax broke
        raise ConfigError(f"cannot parse config file {path}: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------------------------------------------------
# CLI: one flat flag per leaf field.


def _leaves(cls: type, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dataclasses.Field, Any]]:
    hints = _field_types(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        inner, _ = _strip_optional(tp)
        if _is_dataclass_type(inner):
            out.extend(_leaves(inner, (*path, f.name)))
        else:
            out.append(((*path, f.name), f, tp))
    return out


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def field_of(cls: type, name: str, default: Any = dataclasses.MISSING) -> Any:
    """A copy of dataclass `cls`'s field `name` (default and help) for another config, so that the two share one
    definition; `default` replaces the default where the other config needs its own."""
    base = {f.name: f for f in dataclasses.fields(cls)}[name]
    if default is dataclasses.MISSING:
        if base.default_factory is not dataclasses.MISSING:
            return dataclasses.field(default_factory=base.default_factory, metadata=base.metadata)
        default = base.default
    return dataclasses.field(default=default, metadata=base.metadata)


def _default_at(cls: type, path: tuple[str, ...], f: dataclasses.Field) -> Any:
    """The default a leaf really gets in `cls`: a section's own default (e.g. `SegTrainConfig`'s `OptimConfig` with
    lr 1e-3) wins over the section class's field default."""
    try:
        node: Any = cls()
    except TypeError:  # a config with required fields: no instance to read
        return _default_of(f)
    for part in path:
        node = getattr(node, part)
    return node


def add_arguments(
    parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = (), required: tuple[str, ...] = ()
) -> None:
    """Add a `--field-name` flag for every leaf field of `cls` (nested dataclasses flattened), but those in `exclude`;
    those in `required` must be given. Field metadata: `help`, `metavar`, and `repeatable` (a list field whose flag
    may be given several times, each adding to the list)."""
    seen: dict[str, tuple[str, ...]] = {}
    for path, f, tp in _leaves(cls):
        name = path[-1]
        if name in exclude:
            continue
        if name in seen:
            raise TypeError(f"config field name {name!r} is used twice: {seen[name]} and {path}")
        seen[name] = path
        flag = "--" + name.replace("_", "-")
        inner, _ = _strip_optional(tp)
        help_text = f.metadata.get("help", "")
        default = _default_at(cls, path, f)
        if name not in required:
            help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help ("55-100 % of" broke `vlm train --help`)
        kwargs: dict[str, Any] = {"dest": "cfg__" + "__".join(path), "default": argparse.SUPPRESS, "help": help_text}
        if name in required:
            kwargs["required"] = True
        metavar = f.metadata.get("metavar", name.upper())
        if inner is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif get_origin(inner) is Literal:
            parser.add_argument(flag, choices=list(get_args(inner)), **kwargs)
        elif get_origin(inner) in (tuple, list):
            # A field marked repeatable collects every use of its flag (`--images A --images B`).
            action = "extend" if f.metadata.get("repeatable") else None
            parser.add_argument(flag, nargs="+", metavar=metavar, action=action, **kwargs)
        else:
            parser.add_argument(flag, metavar=metavar, **kwargs)


def from_leaves(cls: type[T], **values: Any) -> T:
    """Build `cls` from leaf names as the flags name them (`from_leaves(SegTrainConfig, lr=1e-3, model="demo")`),
    each put in its section; unknown names raise ConfigError."""
    paths = {path[-1]: path for path, _, _ in _leaves(cls)}
    unknown = sorted(set(values) - set(paths))
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown setting(s) {unknown}; valid: {sorted(paths)}")
    nested: dict[str, Any] = {}
    for name, value in values.items():
        node = nested
        for part in paths[name][:-1]:
            node = node.setdefault(part, {})
        node[name] = value
    return from_dict(cls, nested)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The nested mapping of the config flags actually given on the command line."""
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if not key.startswith("cfg__"):
            continue
        path = key[len("cfg__") :].split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two nested mappings; `override` wins."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve(cls: type[T], args: argparse.Namespace, config_file: str | None = None) -> T:
    """Defaults < `config_file` < flags given in `args`."""
    data = load_file(config_file) if config_file else {}
    return from_dict(cls, merge(data, overrides_from_args(args)))


# ---------------------------------------------------------------------------------------------------------------
# Loading one model: the options every command (and the app) that loads a model shares.

# How a loaded model computes (`vlm.models.load`): "auto" = bf16/fp16 autocast on a GPU, fp32 on CPU; "amp" and
# "amp_bf16" autocast over fp32 weights; "fp16" and "bf16" cast the weights themselves.
Precision = Literal["auto", "fp32", "amp", "amp_bf16", "fp16", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclasses.dataclass
class ModelOptions:
    """Which model to load and where it runs: `vlm classify`, `explain`, `eval`, `segment` take these flags."""

    model: str = dataclasses.field(
        default="demo", metadata={"help": "'demo', an open_clip name, a checkpoint folder or an hf-hub: id"}
    )
    pretrained: str | None = dataclasses.field(
        default=None, metadata={"help": "pretrained tag or weights file for an open_clip name"}
    )
    device: str | None = dataclasses.field(
        default=None, metadata={"help": "cpu, cuda, cuda:1 ... (none: cuda when available)"}
    )
    precision: Precision = dataclasses.field(
        default="auto", metadata={"help": "auto = bf16/fp16 autocast on a GPU, fp32 on CPU"}
    )


@dataclasses.dataclass
class LoraOptions:
    """LoRA (Hu et al. 2021) through peft: low-rank updates on chosen modules, the rest of the model frozen
    (`vlm.lora`). Rank 0 is off: every weight trains (a full fine-tune)."""

    lora_rank: int = dataclasses.field(default=0, metadata={"help": "LoRA rank r; 0 = off (full fine-tune)"})
    lora_alpha: float | None = dataclasses.field(
        default=None, metadata={"help": "LoRA scale numerator: updates are scaled by alpha/r (none: alpha = 2r)"}
    )
    lora_towers: Literal["both", "image", "text"] = dataclasses.field(
        default="both", metadata={"help": "which tower(s) get LoRA modules"}
    )
    lora_targets: tuple[str, ...] = dataclasses.field(
        default=(),
        metadata={"help": "module names or name endings (attn, mlp.c_fc, conv2 ...); none: every Linear, Conv2d and "
                  "MultiheadAttention the tower's forward calls"},
    )  # fmt: skip
    lora_dropout: float = dataclasses.field(default=0.0, metadata={"help": "dropout on the LoRA branch's input"})

    def __post_init__(self) -> None:
        if self.lora_rank < 0:
            raise ConfigError(f"lora_rank must be >= 0 (0 = off), got {self.lora_rank}")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ConfigError(f"lora_alpha must be positive, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")

    @property
    def enabled(self) -> bool:
        return self.lora_rank > 0

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha) if self.lora_alpha is not None else 2.0 * self.lora_rank


# What computes embeddings (`vlm.onnx_runtime`): "auto" = ONNX Runtime on a CPU when a valid export lies next to the
# model, else PyTorch; "onnx"/"onnx-int8" insist on the (quantised) export; "torch" never uses one.
Runtime = Literal["auto", "torch", "onnx", "onnx-int8"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)


@dataclasses.dataclass
class RuntimeOptions:
    """How embeddings are computed: `vlm index` and `vlm classify` take these flags."""

    runtime: Runtime = dataclasses.field(
        default="auto", metadata={"help": "auto = ONNX Runtime on a CPU when `vlm export onnx` was run, else torch"}
    )
    onnx: str | None = dataclasses.field(
        default=None, metadata={"help": "folder of the ONNX export (none: next to the model)"}
    )


# ---------------------------------------------------------------------------------------------------------------
# Training configuration. Defaults follow CLIP (Radford et al. 2021) and open_clip_train where they apply.


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclasses.dataclass
class ModelConfig:
    model: str = dataclasses.field(
        default="vlm-small", metadata=_help("open_clip architecture, checkpoint dir or hf-hub: id")
    )
    pretrained: str | None = dataclasses.field(
        default=None, metadata=_help("pretrained tag or weights file; none = from scratch")
    )
    precision: Literal["auto", "fp32", "amp", "amp_bf16"] = dataclasses.field(
        default="auto",
        metadata=_help("auto = bf16 autocast on GPUs that have it, fp16 autocast on older GPUs, fp32 on CPU"),
    )
    grad_checkpointing: bool = dataclasses.field(default=False, metadata=_help("trade compute for activation memory"))
    channels_last: bool = dataclasses.field(
        default=False,
        metadata=_help("image tower and its batches in channels-last (NHWC) memory: faster convolutions (oneDNN on "
                       "CPU, tensor cores on GPU); the same model and numbers up to float rounding"),
    )  # fmt: skip
    compile: bool = dataclasses.field(
        default=False,
        metadata=_help("torch.compile the training step's forward and backward (open_clip_train's --torchcompile): "
                       "fused kernels, the same model; compiling takes a minute or two at the start"),
    )  # fmt: skip
    lock_image: bool = dataclasses.field(default=False, metadata=_help("freeze the image tower (LiT)"))
    lock_image_unlocked_groups: int = dataclasses.field(
        default=0, metadata=_help("last N image layer groups left trainable")
    )
    lock_text: bool = dataclasses.field(default=False, metadata=_help("freeze the text tower"))
    lock_text_unlocked_layers: int = dataclasses.field(default=0, metadata=_help("last N text layers left trainable"))
    update_norm_stats: bool | None = dataclasses.field(
        default=None,
        metadata=_help("re-estimate BatchNorm running statistics on the new data; none = only from scratch (a "
                       "fine-tune keeps the pretraining statistics, see vlm/finetune.py)"),
    )  # fmt: skip


@dataclasses.dataclass
class DataConfig:
    train_data: str | None = dataclasses.field(
        default=None,
        metadata=_help("pairs: CSV/TSV/JSONL file, image folder with .txt captions, HF dataset dir, or .tar shards"),
    )
    data_format: Literal["auto", "csv", "tsv", "jsonl", "folder", "hf", "webdataset"] = "auto"
    image_key: str | None = dataclasses.field(
        default=None, metadata=_help("image column (auto: image/path/filepath/...)")
    )
    caption_key: str | None = dataclasses.field(
        default=None, metadata=_help("caption column (auto: caption/text/title/...)")
    )
    data_root: str | None = dataclasses.field(
        default=None, metadata=_help("image paths are relative to this (default: the file's folder)")
    )
    val_data: str | None = dataclasses.field(
        default=None, metadata=_help("separate validation pairs; default: split off train_data")
    )
    val_fraction: float = dataclasses.field(default=0.1, metadata=_help("share of train_data held out for validation"))
    strict: bool = dataclasses.field(default=False, metadata=_help("stop at the first bad row instead of skipping it"))
    verify_images: bool = dataclasses.field(default=True, metadata=_help("decode every image once before training"))
    workers: int = dataclasses.field(default=2, metadata=_help("DataLoader worker processes per rank"))
    augment: bool = dataclasses.field(
        default=False, metadata=_help("open_clip's random-resized-crop training augmentation")
    )
    style_augment: tuple[str, ...] = dataclasses.field(
        default=(),
        metadata={
            **_help("augmentations for drawn artwork (vlm/style_augment.py): grayscale, jitter, posterize, "
                    "outline, background, zoom (a zoom-out to 55-100 % of the frame); repeatable; none = off"),
            "repeatable": True,
        },
    )  # fmt: skip
    style_augment_p: float = dataclasses.field(
        default=0.5, metadata=_help("probability of each style augmentation (used only with style_augment)")
    )
    style_augment_prefixes: tuple[str, ...] = dataclasses.field(
        default=("emoji/", "icons/"),
        metadata={
            **_help("style augmentations apply to images whose path (relative to the data root) starts with one of "
                    "these; repeatable"),
            "repeatable": True,
        },
    )  # fmt: skip
    reference: tuple[str, ...] = dataclasses.field(
        default=(),
        metadata={
            **_help("what the model knew, scored before step 1, at every validation and at the end: labelled data "
                    "(zero-shot) or caption data (retrieval); 'zeroshot:PATH' or 'retrieval:PATH' to say which; "
                    "repeatable; none = the model's own reference set if it ships one (the demo model does)"),
            "repeatable": True,
        },
    )  # fmt: skip
    keep_data: str | None = dataclasses.field(
        default=None, metadata=_help("pairs to keep knowing (replay; own columns and root): a share of each batch")
    )
    keep_fraction: float = dataclasses.field(
        default=0.5, metadata=_help("share of each batch drawn from keep_data (used only with keep_data)")
    )
    first_caption_p: float = dataclasses.field(
        default=0.0, metadata=_help("chance that a sample takes its image's first caption (in the demo corpus, the "
                                    "name); otherwise one of all its captions at random. 0 = always at random")
    )  # fmt: skip

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not 0.0 < self.keep_fraction < 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1), got {self.keep_fraction}")
        if not 0.0 <= self.first_caption_p <= 1.0:
            raise ValueError(f"first_caption_p must be in [0, 1], got {self.first_caption_p}")
        if self.style_augment:
            from vlm.style_augment import StyleAugment  # torchvision: only when asked

            StyleAugment(self.style_augment, self.style_augment_p, self.style_augment_prefixes)  # raises if wrong


@dataclasses.dataclass
class OptimConfig:
    lr: float | None = dataclasses.field(
        default=None, metadata=_help("peak learning rate (AdamW); none = 5e-4 from scratch, 1e-5 from weights")
    )
    weight_decay: float | None = dataclasses.field(
        default=None, metadata=_help("decoupled weight decay on matrices only; none = 0.2 from scratch (CLIP), 0.1 "
                                     "from weights (FLYP, WiSE-FT)")
    )  # fmt: skip
    beta1: float = 0.9
    beta2: float = dataclasses.field(default=0.98, metadata=_help("CLIP uses 0.98 for stability with large batches"))
    eps: float = 1e-6
    warmup_steps: int | None = dataclasses.field(
        default=None, metadata=_help("linear warm-up steps before cosine decay; none = 100 from scratch, "
                                     "min(500, a 20th of the run) from weights")
    )  # fmt: skip
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = dataclasses.field(default=0.0, metadata=_help("cosine floor as a fraction of lr"))
    grad_clip: float | None = dataclasses.field(default=1.0, metadata=_help("max global grad norm; none = no clipping"))
    accum_steps: int = dataclasses.field(
        default=1, metadata=_help("micro-batches per step; features are cached so every micro-batch sees all negatives")
    )

    def __post_init__(self) -> None:
        if self.lr is not None and not self.lr > 0:  # also refuses NaN
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {self.accum_steps}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclasses.dataclass
class LossConfig:
    loss: Literal["clip", "siglip"] = dataclasses.field(
        default="clip", metadata=_help("symmetric InfoNCE or sigmoid loss")
    )
    local_loss: bool = dataclasses.field(
        default=False, metadata=_help("with several processes: local rows against global columns (less memory)")
    )
    gather_with_grad: bool = dataclasses.field(default=True, metadata=_help("all-gather features with gradients"))


@dataclasses.dataclass
class RunConfig:
    """What every training run has, whatever it trains (`vlm.training`): where it writes, how long it runs, how
    often it logs, validates and saves. `TrainConfig` and `vlm.segment.train.SegTrainConfig` extend it; a task with
    other defaults redeclares a field with `run_default`."""

    output_dir: str = dataclasses.field(
        default="runs/train", metadata=_help("run directory: checkpoints, metrics, logs")
    )
    batch_size: int = dataclasses.field(
        default=128, metadata=_help("global batch per optimizer step, over all processes")
    )
    epochs: int = dataclasses.field(
        default=10, metadata=_help("passes over the training data (ignored if steps is set)")
    )
    steps: int | None = dataclasses.field(default=None, metadata=_help("total optimizer steps; overrides epochs"))
    seed: int = 0
    save_every: int = dataclasses.field(default=500, metadata=_help("write a resumable checkpoint every N steps"))
    keep_last: int = dataclasses.field(default=2, metadata=_help("step checkpoints kept on disk"))
    val_every: int = dataclasses.field(
        default=500, metadata=_help("validate every N steps (and at the end); 0 = only at the end")
    )
    log_every: int = dataclasses.field(default=10, metadata=_help("write metrics every N steps"))
    resume: bool = dataclasses.field(default=False, metadata=_help("continue from the newest checkpoint in output_dir"))
    time_limit_minutes: float | None = dataclasses.field(
        default=None, metadata=_help("stop after N minutes, saving a checkpoint as Ctrl-C does; none = no limit")
    )
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        for name in ("save_every", "val_every", "log_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {self.keep_last}")
        if self.time_limit_minutes is not None and not self.time_limit_minutes > 0:
            raise ValueError(f"time_limit_minutes must be positive, got {self.time_limit_minutes}")


def run_default(name: str, default: Any) -> Any:
    """`RunConfig`'s field `name` (its help kept) with another default, for a task that redeclares it."""
    return field_of(RunConfig, name, default)


@dataclasses.dataclass
class TrainConfig(RunConfig):
    """`vlm train`: contrastive training of both towers on image-text pairs."""

    peak_tflops: float | None = dataclasses.field(
        default=None, metadata=_help("the device's dense peak for the logged MFU; none: from a table of known GPUs")
    )
    dist_timeout_minutes: float = dataclasses.field(
        default=60.0,
        metadata=_help("how long a process waits for the others (rank 0 alone reads the data first); NCCL's is 10"),
    )
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    lora: LoraOptions = dataclasses.field(default_factory=LoraOptions)

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 for a contrastive loss, got {self.batch_size}")
        super().__post_init__()
        if self.dist_timeout_minutes <= 0:
            raise ValueError(f"dist_timeout_minutes must be > 0, got {self.dist_timeout_minutes}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ValueError(f"peak_tflops must be > 0, got {self.peak_tflops}")
