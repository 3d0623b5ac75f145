"""Query arithmetic: `"a beach" + 0.5*photo.jpg - "people"` as one query vector.

    terms = parse('"golden retriever" + 0.5*./pool.jpg - fruit')  # [Term(1.0, "text", ...), Term(0.5, "image", ...)...]
    vector = combine(encoders, terms)                               # (D,) float32, unit length

A term is a quoted text, a bare word (text), or an existing image path; an optional `W*` weight; terms joined by
` + ` or ` - ` (with spaces around them: a hyphen inside a word or path is not a minus). The rule (as rclip's):
each term's embedding is L2-normalised, multiplied by its signed weight, and the sum is L2-normalised again.
Errors (`QueryError`, a `DataError`) name the term: an empty term, a missing or unreadable image, a weight that is
not a number, terms that cancel out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vlm.errors import DataError
from vlm.readers.images import IMAGE_EXTS, ImageError, ImageRef


class QueryError(DataError):
    """A query expression that cannot be parsed or embedded; the message names the term."""


@dataclass(frozen=True)
class Term:
    weight: float  # signed
    kind: str  # "text" or "image"
    value: str  # the text, or the image path


_WEIGHTED = re.compile(r"^([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*\*\s*(.*)$", re.IGNORECASE | re.DOTALL)


def parse(expression: str) -> list[Term]:
    """The terms of `expression`; see the module docstring. `+` and `-` join terms only with spaces around them
    (outside quotes), so paths and words with hyphens stay whole. Raises `QueryError`."""
    if not expression.strip():
        raise QueryError("empty query: give a text, an image path, or terms joined by ' + ' and ' - '")
    segments: list[tuple[float, str]] = []
    sign, start, quote = 1.0, 0, ""
    for i, ch in enumerate(expression):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "+-" and (i == 0 or expression[i - 1].isspace()) and expression[i + 1 : i + 2] in ("", " ", "\t"):
            segments.append((sign, expression[start:i]))
            sign, start = (1.0 if ch == "+" else -1.0), i + 1
    if quote:
        raise QueryError(f"unclosed quote {quote} in {expression!r}")
    segments.append((sign, expression[start:]))
    if not segments[0][1].strip() and len(segments) > 1:  # a leading sign: "- people + beach"
        segments = segments[1:]
    terms = []
    for n, (sign, segment) in enumerate(segments):
        body = segment.strip()
        if not body:
            where = "at the end" if n == len(segments) - 1 else f"before term {n + 2}"
            raise QueryError(f"empty term {where} of {expression!r}")
        weight = 1.0
        weighted = _WEIGHTED.match(body)
        if weighted:
            weight, body = float(weighted.group(1)), weighted.group(2).strip()
        elif re.match(r"^[^\"']*\*", body):
            raise QueryError(f"cannot read the weight in {body!r}: write it as a number, e.g. 0.5*photo.jpg")
        if len(body) >= 2 and body[0] == body[-1] and body[0] in "\"'":
            text = body[1:-1].strip()
            if not text:
                raise QueryError(f"empty quoted term in {expression!r}")
            terms.append(Term(sign * weight, "text", text))
        elif not body:
            raise QueryError(f"a weight without a term in {expression!r}")
        else:
            terms.append(_bare_term(sign * weight, body))
    return terms


def _bare_term(weight: float, value: str) -> Term:
    """An unquoted term: an image when it names an existing file or looks like an image path, else text."""
    path = Path(value).expanduser()
    if path.is_file() or path.suffix.lower() in IMAGE_EXTS:
        if not path.is_file():
            raise QueryError(f"query image not found: {value}")
        return Term(weight, "image", str(path))
    return Term(weight, "text", value)


def combine(encoders, terms: list[Term]) -> np.ndarray:
    """The unit query vector: sum of weight * normalised embedding over `terms`, normalised again."""
    total = None
    for term in terms:
        if term.kind == "text":
            vector = encoders.encode_text([term.value])[0]
        else:
            try:
                image = ImageRef("file", term.value).open()
            except ImageError as e:
                raise QueryError(f"query image {term.value}: {e.reason}") from e
            vector = encoders.encode_image(encoders.preprocess(image)[None])[0]
        vector = F.normalize(vector.detach().float().cpu(), dim=-1) * term.weight
        total = vector if total is None else total + vector
    if total is None or float(torch.linalg.vector_norm(total)) < 1e-6:
        raise QueryError("the query's terms cancel out (their weighted sum is zero); change a weight or a term")
    return F.normalize(total, dim=-1).numpy()
