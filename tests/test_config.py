import argparse
import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from vlm import config
from vlm.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Inner:
    rate: float = 0.5
    name: str = "x"
    flag: bool = False


@dataclasses.dataclass
class Outer:
    count: int = 3
    maybe: int | None = None
    mode: Literal["a", "b"] = "a"
    pair: tuple[float, float] = (0.9, 0.98)
    inner: Inner = dataclasses.field(default_factory=Inner)


def parse(argv):
    p = argparse.ArgumentParser()
    config.add_arguments(p, Outer)
    return p.parse_args(argv)


def test_defaults_file_and_flags_in_order_of_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("count: 7\ninner:\n  rate: 0.25\n  name: from-file\n")
    cfg = config.resolve(Outer, parse(["--rate", "0.125", "--flag", "--pair", "0.8", "0.9"]), str(f))
    assert cfg == Outer(count=7, pair=(0.8, 0.9), inner=Inner(rate=0.125, name="from-file", flag=True))


def test_json_file_and_optional(tmp_path):
    f = tmp_path / "c.json"
    f.write_text('{"maybe": 4, "mode": "b"}')
    assert config.resolve(Outer, parse([]), str(f)) == Outer(maybe=4, mode="b")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"cuont": 1}, "unknown key(s) ['cuont']"),
        ({"inner": {"rat": 1}}, "config.inner: unknown key(s) ['rat']"),
        ({"count": "many"}, "config.count: expected an integer"),
        ({"count": True}, "config.count: expected an integer"),
        ({"mode": "c"}, "'c' is not one of ['a', 'b']"),
        ({"pair": [1.0]}, "expected 2 values"),
        ({"count": None}, "null is not allowed"),
        ({"inner": 5}, "expected a mapping"),
    ],
)
def test_bad_values_are_named(data, message):
    with pytest.raises(ConfigError) as e:
        config.from_dict(Outer, data)
    assert message in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        config.load_file(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        config.load_file(listy)


def test_train_config_validation_and_round_trip():
    cfg = config.TrainConfig()
    assert config.from_dict(config.TrainConfig, config.to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        config.from_dict(config.TrainConfig, {"batch_size": 1})
    with pytest.raises(ConfigError, match="val_fraction"):
        config.from_dict(config.TrainConfig, {"data": {"val_fraction": 1.5}})


def test_every_train_field_has_a_unique_flag():
    p = argparse.ArgumentParser()
    config.add_arguments(p, config.TrainConfig)  # raises if two leaves share a name
    args = p.parse_args(["--lr", "0.001", "--model", "vlm-tiny", "--no-tensorboard", "--steps", "5"])
    cfg = config.resolve(config.TrainConfig, args)
    assert (cfg.optim.lr, cfg.model.model, cfg.tensorboard, cfg.steps) == (0.001, "vlm-tiny", False, 5)


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_is_a_valid_train_config(path):
    """`vlm train --config configs/X.yaml` would stop at an unknown key or a bad value; the recipes are read here
    as the CLI reads them (defaults, then the file, then no flags)."""
    p = argparse.ArgumentParser()
    config.add_arguments(p, config.TrainConfig)
    cfg = config.resolve(config.TrainConfig, p.parse_args([]), str(path))
    assert cfg.steps > 0 and cfg.output_dir.startswith("runs/")


def test_train_help_renders():
    """argparse %-formats help text: a "%" in a field's help (e.g. "55-100 % of the frame") crashed `--help`."""
    p = argparse.ArgumentParser()
    config.add_arguments(p, config.TrainConfig)
    assert "55-100 % of" in p.format_help()
