"""Prompt template sets for zero-shot classification.

A template set is a JSON list of strings, each with one named field `{c}` for the class name, CLIP_benchmark's
format (`template.format(c=classname)`). Shipped sets live in `vlm/templates/<name>.json`:

    cifar10, cifar100   the 18 prompts CLIP used for CIFAR (copied from clip-benchmark 1.6.2)
    imagenet            CLIP's 80 ImageNet prompts (clip-benchmark's `imagenet1k`)
    generic             7 everyday prompts ("a photo of a {c}.", "a drawing of a {c}.", ...)
    photo               CLIP's single default prompt, "a photo of a {c}."
    plain               the bare class name, "{c}"

`resolve_templates` accepts a shipped name, a path to a JSON file in the same format, a single literal template
("an icon of a {c}"), or a list of templates.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path

from vlm.errors import ConfigError

TEMPLATE_DIR = Path(__file__).parent / "templates"
FIELD = "{c}"


def available() -> list[str]:
    """The names of the shipped template sets."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.json"))


def validate(templates: Sequence[str], source: str = "templates") -> tuple[str, ...]:
    """Check each template fills with `.format(c=...)` and names the class; duplicates are dropped (order kept).

    Raises `ConfigError` naming the offending template: not a string, no `{c}`, another field (`{}`, `{0}`,
    `{name}`), or unbalanced braces. A literal brace is written `{{` or `}}`, as in `str.format`.
    """
    if isinstance(templates, str) or not isinstance(templates, Sequence):
        raise ConfigError(f"{source}: expected a list of template strings, got {type(templates).__name__}")
    if not templates:
        raise ConfigError(f"{source}: the template list is empty; give at least one, e.g. 'a photo of a {FIELD}.'")
    for t in templates:
        if not isinstance(t, str):
            raise ConfigError(f"{source}: template {t!r} is not a string")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        except ValueError as e:
            raise ConfigError(
                f"{source}: template {t!r} is malformed ({e}); write a literal brace as {{{{ or }}}}"
            ) from e
        if "c" not in fields:
            raise ConfigError(f"{source}: template {t!r} has no {FIELD} where the class name goes")
        others = sorted({f for f in fields if f != "c"})
        if others:
            raise ConfigError(
                f"{source}: template {t!r} has fields other than {FIELD}: {others}; only {FIELD} is filled"
            )
    return tuple(dict.fromkeys(templates))


def load(name: str) -> tuple[str, ...]:
    """A shipped set by name (see `available()`), or a JSON file holding a list of templates."""
    path = TEMPLATE_DIR / f"{name}.json"
    if name in available():
        return validate(json.loads(path.read_text(encoding="utf-8")), str(path))
    file = Path(name).expanduser()
    if file.suffix.lower() == ".json" or file.is_file():
        if not file.is_file():
            raise ConfigError(f"template file not found: {file}")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot parse template file {file}: {e}") from e
        return validate(data, str(file))
    raise ConfigError(
        f"unknown template set {name!r}. Available: {available()}; or pass a JSON file with a list of templates, "
        f"or a single template containing {FIELD}"
    )


def resolve(spec: str | Sequence[str] | None, default: str = "generic") -> tuple[str, ...]:
    """Templates from a set name, a JSON file, one literal template (any string with a brace), or a list."""
    if spec is None:
        return load(default)
    if isinstance(spec, str):
        return validate([spec], "template") if "{" in spec else load(spec)  # a brace: a template, not a name
    return validate(spec)
