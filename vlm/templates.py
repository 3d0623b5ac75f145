"""Prompt template sets for zero-shot classification.

A template set is a JSON list of strings, each with one named field `{c}` for the class name, CLIP_benchmark's
format (`template.format(c=classname)`). Shipped sets live in `vlm/templates/<name>.json`:

    cifar10, cifar100   the 18 prompts CLIP used for CIFAR (copied from clip-benchmark 1.6.2)
    imagenet            CLIP's 80 ImageNet prompts (clip-benchmark's `imagenet1k`)
    generic             7 everyday prompts ("a photo of a {c}.", "a drawing of a {c}.", ...)
    photo               CLIP's single default prompt, "a photo of a {c}."
    plain               the bare class name, "{c}"

`resolve` accepts a shipped name, a path to a JSON file in the same format, a single literal template
("an icon of a {c}"), or a list of templates. Text from the web goes through `resolve(..., files=False)`: a shipped
name or one literal template, never a file (a path typed there would otherwise read server files and echo them).

Every template is bounded, wherever it comes from: at most `MAX_CHARS` characters, `{c}` at most `MAX_FIELDS` times
and bare (no format spec or conversion: `{c:>999999999}` would build a gigabyte string per label).
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path

from vlm.errors import ConfigError

TEMPLATE_DIR = Path(__file__).parent / "templates"
FIELD = "{c}"
MAX_CHARS = 300  # far beyond any text encoder's 77 tokens; the longest shipped template has 35 characters
MAX_FIELDS = 3  # `{c}` per template (the shipped sets use it once)


def bare_label(label: str) -> str:
    """`label` case-folded, its whitespace collapsed and without a leading English article, so that "A  red circle"
    and "red circle" name the same class; a lone article stays as it is."""
    words = label.casefold().split()
    return " ".join(words[1:] if len(words) > 1 and words[0] in ("a", "an", "the") else words)


def available() -> list[str]:
    """The names of the shipped template sets."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.json"))


def validate(templates: Sequence[str], source: str = "templates") -> tuple[str, ...]:
    """Check each template fills with `.format(c=...)` and names the class; duplicates are dropped (order kept).

    Raises `ConfigError` naming the offending template: not a string, longer than `MAX_CHARS`, no `{c}`, `{c}` more
    than `MAX_FIELDS` times or with a format spec or conversion (`{c:>9}`, `{c!r}`), another field (`{}`, `{0}`,
    `{name}`), or unbalanced braces. A literal brace is written `{{` or `}}`, as in `str.format`.
    """
    if isinstance(templates, str) or not isinstance(templates, Sequence):
        raise ConfigError(f"{source}: expected a list of template strings, got {type(templates).__name__}")
    if not templates:
        raise ConfigError(f"{source}: the template list is empty; give at least one, e.g. 'a photo of a {FIELD}.'")
    for t in templates:
        if not isinstance(t, str):
            raise ConfigError(f"{source}: template {t!r} is not a string")
        if len(t) > MAX_CHARS:
            raise ConfigError(
                f"{source}: a template is {len(t):,} characters long; keep each under {MAX_CHARS} "
                f"(the text encoder reads about 77 tokens)"
            )
        try:
            parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(t) if f is not None]
            fields = [f for f, _, _ in parsed]
        except ValueError as e:
            raise ConfigError(
                f"{source}: template {t!r} is malformed ({e}); write a literal brace as {{{{ or }}}}"
            ) from e
        others = sorted({f for f in fields if f != "c"})
        if others:
            raise ConfigError(
                f"{source}: template {t!r} has fields other than {FIELD}: {others}; only {FIELD} is filled"
            )
        if "c" not in fields:
            raise ConfigError(f"{source}: template {t!r} has no {FIELD} where the class name goes")
        if any(spec or conv for _, spec, conv in parsed):
            raise ConfigError(
                f"{source}: template {t!r} formats {FIELD} (a ':' spec or '!' conversion); write a bare {FIELD}"
            )
        if len(fields) > MAX_FIELDS:
            raise ConfigError(f"{source}: template {t!r} uses {FIELD} {len(fields)} times; at most {MAX_FIELDS}")
    return tuple(dict.fromkeys(templates))


def load(name: str, files: bool = True) -> tuple[str, ...]:
    """A shipped set by name (see `available()`), or (with `files`) a JSON file holding a list of templates."""
    if name in available():
        path = TEMPLATE_DIR / f"{name}.json"
        return validate(json.loads(path.read_text(encoding="utf-8")), str(path))
    if not files:  # the file system is not even looked at: the answer must not depend on what exists there
        raise ConfigError(
            f"unknown template set {name!r}. Available: {available()}; or type one template containing {FIELD}, "
            f"e.g. 'an icon of a {FIELD}'"
        )
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


def resolve(spec: str | Sequence[str] | None, default: str = "generic", *, files: bool = True) -> tuple[str, ...]:
    """Templates from a set name, a JSON file (only with `files`), one literal template (any string with a brace),
    or a list."""
    if spec is None:
        return load(default)
    if isinstance(spec, str):
        return validate([spec], "template") if "{" in spec else load(spec, files)  # a brace: a template, not a name
    return validate(spec)
