"""What open_clip's tokenizer does with the demo corpus's captions in each language (issue 18, item 2).

For every language, over emojibase-data's CLDR emoji names (and the training caption "NAME, kw1, kw2, kw3"),
tokenised by the demo model's tokenizer (open_clip's `SimpleTokenizer`, CLIP's byte-level BPE, 49,408 tokens,
lower-casing; the demo model's context is 48 tokens, ViT-B-32's 77):

- tokens per caption and per character (SOT/EOT not counted); English is the peer every ratio is against;
- fragments: the share of tokens that are not a whole character (a byte-level BPE has no unknown token: a script it
  learned little of falls back to pieces of UTF-8 bytes, e.g. 猫 -> 3 tokens of one byte each);
- truncated: the share of captions longer than the context (they lose their end);
- collisions: distinct captions that become the same token sequence (after lower-casing and truncation);
- tokens shared with English: the share of a language's distinct tokens that English captions also use.

    python -m bench.caption_tokens                               # from the cached emojibase-data tarball
    python -m bench.caption_tokens --cache runs/demo-packages --model demo
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from bench.common import report
from vlm import models
from vlm.cli import configure_logging
from vlm.demo_sources import LANGUAGES, SOURCES, Cldr, fetch

LOG = logging.getLogger("bench.caption_tokens")


def fragment(tokenizer, token: int) -> bool:
    """Whether a BPE token is a piece of a character rather than whole characters."""
    text = tokenizer.decoder[token].removesuffix("</w>")
    raw = bytes(tokenizer.byte_decoder[c] for c in text)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def measure(tokenizer, captions: list[str], context: int, english_tokens: set[int] | None) -> dict[str, float]:
    ids = [tokenizer.encode(c) for c in captions]
    lengths = np.array([len(i) for i in ids])
    chars = np.array([len(c) for c in captions])
    flat = [t for i in ids for t in i]
    kept = {tuple(i[: context - 2]) for i in ids}  # what the model sees: SOT + context-2 tokens + EOT
    row = {
        "captions": len(captions),
        "distinct": len(set(captions)),
        "chars/caption": float(chars.mean()),
        "tokens/caption": float(lengths.mean()),
        "tokens/char": float(lengths.sum() / chars.sum()),
        "max tokens": int(lengths.max()),
        "fragment share": float(np.mean([fragment(tokenizer, t) for t in flat])),
        f"truncated@{context}": float(np.mean(lengths > context - 2)),
        "truncated@77": float(np.mean(lengths > 75)),
        "collisions": len(set(captions)) - len(kept),
    }
    if english_tokens is not None:
        mine = set(flat)
        row["tokens shared with en"] = len(mine & english_tokens) / len(mine)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default="runs/demo-packages", help="where `vlm demo corpus` keeps the npm tarballs")
    p.add_argument("--model", default="demo", help="whose tokenizer and context length (default: demo)")
    p.add_argument("--languages", default=",".join(LANGUAGES), help="comma-separated (default: %(default)s)")
    args = p.parse_args(argv)
    configure_logging()
    from open_clip.tokenizer import SimpleTokenizer

    encoders = models.load(args.model, device="cpu", precision="fp32")
    tokenizer = encoders.tokenizer
    if not isinstance(tokenizer, SimpleTokenizer):
        print(f"{args.model}: its tokenizer is {type(tokenizer).__name__}, not open_clip's SimpleTokenizer")
        return 1
    context = tokenizer.context_length
    source = next(s for s in SOURCES if s.kind == "emojibase")
    path = fetch([source], Path(args.cache), download=False)[source.package]
    languages = args.languages.split(",")
    cldr = Cldr.read(source, path, languages)
    rows, english = [], None
    for lang in languages:
        table = cldr.names[lang]
        for what, captions in (
            ("name", [label for label, _ in table.values()]),
            ("name + 3 keywords", [", ".join((label, *tags[:3])) for label, tags in table.values()]),
        ):
            row = {"lang": lang, "caption": what, **measure(tokenizer, captions, context, english)}
            rows.append(row)
        if lang == "en":
            english = {t for label, tags in table.values() for t in tokenizer.encode(", ".join((label, *tags[:3])))}
    base = {r["caption"]: r["tokens/caption"] for r in rows if r["lang"] == "en"}
    for r in rows:
        r["tokens vs en"] = r["tokens/caption"] / base[r["caption"]]
    report("caption_tokens", rows, model=encoders.source, tokenizer=type(tokenizer).__name__, context=context,
           package=f"{source.package}@{source.version}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
