"""The shapes world's language: referring phrases that pick out one object, and captions of whole scenes."""

from __future__ import annotations

import re

import numpy as np

from vlm.synth.world import POSITION_PHRASE, ObjectSpec, SceneSpec

CAPTIONS_PER_SCENE = 3
TOKEN_BUDGET = 40  # words + punctuation; 48-token context minus SOT/EOT minus slack for words BPE splits in two


# -- language ---------------------------------------------------------------------------------------------------


def _pos_matches(phrase_pos: str, cell: str) -> bool:
    """'left' matches the whole left column, 'top' the top row, 'top left' and 'centre' one cell."""
    if phrase_pos == "centre":
        return cell == "centre"
    return set(phrase_pos.split()) <= set(cell.split())


def _phrase_candidates(obj: ObjectSpec) -> list[tuple[str | None, str | None]]:
    """(size, position) additions to '<colour> <shape>', shortest first."""
    parts = obj.position.split()
    places = [parts[1], parts[0], obj.position] if len(parts) == 2 else [obj.position]
    return [(None, None), (obj.size, None), *((None, p) for p in places), *((obj.size, p) for p in places)]


def referring_phrases(objects: list[ObjectSpec] | tuple[ObjectSpec, ...]) -> list[str | None]:
    """The shortest phrase that picks out each object alone among `objects` (None where none does)."""
    out: list[str | None] = []
    for obj in objects:
        phrase = None
        for size, pos in _phrase_candidates(obj):
            hits = [
                o
                for o in objects
                if (o.colour, o.shape) == (obj.colour, obj.shape)
                and size in (None, o.size)
                and (pos is None or _pos_matches(pos, o.position))
            ]
            if len(hits) == 1:
                words = ["the", size, obj.colour, obj.shape, POSITION_PHRASE[pos] if pos else None]
                phrase = " ".join(w for w in words if w)
                break
        out.append(phrase)
    return out


NUMBER_WORDS = ("zero", "one", "two", "three", "four")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x")) else "s")


def _noun(unit: list[ObjectSpec], with_size: bool, with_pos: bool, relative: bool = False) -> str:
    """'a small red circle in the top left', 'a circle that is red', 'two red circles', 'two circles that are red'."""
    o, k = unit[0], len(unit)
    size = f"{o.size} " if with_size and all(u.size == o.size for u in unit) else ""
    if k > 1:
        return f"{NUMBER_WORDS[k]} {size}" + (
            f"{_plural(o.shape)} that are {o.colour}" if relative else f"{o.colour} {_plural(o.shape)}"
        )
    place = f" {POSITION_PHRASE[o.position]}" if with_pos else ""
    return _a(f"{size}{o.shape} that is {o.colour}{place}" if relative else f"{size}{o.colour} {o.shape}{place}")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _relation(a: ObjectSpec, b: ObjectSpec) -> str | None:
    """'to the left of', 'above', ... when the two are clearly apart along the dominant axis, else None."""
    dx, dy = b.centre[0] - a.centre[0], b.centre[1] - a.centre[1]
    if max(abs(dx), abs(dy)) < a.radius + b.radius:
        return None
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def _compose(
    template: str,
    spec: SceneSpec,
    units: list[list[ObjectSpec]],
    flags: list[tuple[bool, bool]],
    rng: np.random.Generator,
) -> str:
    """One caption from a template; `units` are groups of objects sharing colour and shape, `flags` (size, place)."""
    nouns = [_noun(u, s, p, relative=template == "relative") for u, (s, p) in zip(units, flags, strict=True)]
    listing = _join(nouns)
    n = len(spec.objects)
    if template == "list":
        return listing
    if template == "count":
        return f"{NUMBER_WORDS[n]} {'shape' if n == 1 else 'shapes'}: {listing}"
    if template == "there":
        return f"there {'is' if len(units[0]) == 1 else 'are'} {listing}"
    if template == "relative":
        return f"{nouns[0]} next to {nouns[1]}" if len(nouns) == 2 else listing
    if template == "picture":
        return f"{rng.choice(['a picture of', 'an image of', 'a drawing of'])} {listing}"
    if template == "background":
        return f"a {spec.background.kind} background with {listing}"
    if template == "with":
        return f"{nouns[0]} with {_join(nouns[1:])}"
    if template == "relation":
        a, b = (_noun(u, with_size, False) for u, (with_size, _) in zip(units, flags, strict=True))
        return f"{a} {_relation(units[0][0], units[1][0])} {b}"
    raise ValueError(f"unknown caption template {template!r}")


def approx_tokens(text: str) -> int:
    """Words plus punctuation: the CLIP BPE count for this vocabulary, give or take a split word."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def captions(spec: SceneSpec, rng: np.random.Generator, n: int = CAPTIONS_PER_SCENE) -> list[str]:
    """`n` distinct captions naming every object's colour and shape, with varied templates, orders and details."""
    groups: dict[tuple[str, str], list[ObjectSpec]] = {}
    for o in spec.objects:
        groups.setdefault((o.colour, o.shape), []).append(o)
    units = list(groups.values())
    templates = ["list", "count", "there", "relative", "picture", "background"]
    if len(units) > 1:
        templates.append("with")
    if len(units) == 2 and all(len(u) == 1 for u in units) and _relation(units[0][0], units[1][0]):
        templates.append("relation")
    out: list[str] = []
    for _ in range(4 * n):
        if len(out) == n:
            break
        template = templates[rng.integers(len(templates))]
        order = [units[i] for i in rng.permutation(len(units))]
        if template == "relation" and _relation(order[0][0], order[1][0]) is None:
            order = order[::-1]
        # The first caption gives every size and place (as the token budget allows): a specific caption per scene
        # tells scenes with the same shapes apart in retrieval and teaches size and place; the rest vary.
        p_size, p_pos = (1.0, 1.0) if not out else (0.35, 0.6 if len(spec.objects) == 1 else 0.3)
        flags = [(bool(rng.random() < p_size), bool(rng.random() < p_pos)) for _ in order]
        text = _compose(template, spec, order, flags, rng)
        for drop in (1, 0):  # too long for a 48-token context: drop places, then sizes
            if approx_tokens(text) > TOKEN_BUDGET:
                flags = [(s and drop == 1, False) for s, _ in flags]
                text = _compose(template, spec, order, flags, rng)
        if text not in out:
            out.append(text)
    return out
