"""`vlm demo corpus`: the demo corpus built from pinned npm packages (issue 18), reproducibly, with a data card.

Layout of the output folder (every CSV path is relative to it; the same inputs give the same bytes):

    pairs.csv                  training pairs: path,caption (several rows per image), sorted
    shapes/                    the synthetic shapes world (`vlm.synth`), so the segmentation demo keeps working
    emoji/<vendor>/*.png       emoji artwork of the trained styles (Apple, Twitter) at 64 px on white
    icons/<set>/*.png          icon sets rasterised from SVG with resvg (`resvg-py`) at 64 px, black on white
    heldout/openmoji/          the unseen style, NEVER in pairs.csv: pairs.csv (path,caption = the English CLDR
                               name), labels.csv (path,label = the emoji category), names.csv (path,lang,caption)
    heldout/icons/             a seeded part of every icon set (by name, so an icon's outline and filled forms go
                               together), NEVER in pairs.csv: pairs.csv (path,caption = the name in words,set)
    DATA_CARD.md, data_card.json   per source: package, version, sha512, licence, role, counts
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from vlm.atomic import atomic_dir
from vlm.demo_sources import LANGUAGES, READERS, SOURCES, Cldr, Item, Source, fetch, refuse_forbidden
from vlm.errors import ConfigError, DataError

LOG = logging.getLogger(__name__)

IMAGE_SIZE = 64
HELD_OUT_ICONS = 0.05


def _csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def render(item: Item, size: int = IMAGE_SIZE) -> bytes:
    """The item as an RGB PNG of `size` x `size` on white: SVG rasterised by resvg, PNG alpha-composited."""
    data = item.image
    if item.fmt == "svg":
        try:
            import resvg_py
        except ImportError as e:
            raise DataError("rasterising SVG icons needs resvg-py: pip install 'vlm-zeroshot[corpus]'") from e
        try:
            data = bytes(resvg_py.svg_to_bytes(svg_string=item.image.decode("utf-8"), width=size, height=size,
                                               background="#ffffff"))  # fmt: skip
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{item.group}/{item.name}: cannot rasterise its SVG: {e}") from e
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgba = im.convert("RGBA")
    except OSError as e:
        raise DataError(f"{item.group}/{item.name}: unreadable image: {e}") from e
    if rgba.size != (size, size):
        rgba = rgba.resize((size, size), Image.Resampling.LANCZOS)
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def held_out(group: str, key: str, seed: int, fraction: float) -> bool:
    """Whether an icon is in the held-out part of its set: a hash of (seed, set, base name), not the RNG."""
    digest = hashlib.sha256(f"{seed}\0{group}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def collect(sources: Sequence[Source], tarballs: dict[str, Path], limit: int | None = None) -> dict[str, list[Item]]:
    """Each package's items (the first `limit` of each in name order, for small builds), keyed by package."""
    for s in sources:
        refuse_forbidden(s.package)
    cldr_src = [s for s in sources if s.kind == "emojibase"]
    if len(cldr_src) != 1:
        raise DataError("the demo corpus needs exactly one emojibase-data source (the emoji names and keywords)")
    cldr = Cldr.read(cldr_src[0], tarballs[cldr_src[0].package])
    out = {}
    for s in sources:
        if s.kind == "emojibase":
            continue
        if s.kind not in READERS:
            raise ConfigError(f"{s.package}: unknown source kind {s.kind!r}")
        items = READERS[s.kind](s, tarballs[s.package], cldr)
        if not items:
            raise DataError(f"{s.package}@{s.version}: no images found in {tarballs[s.package]}")
        out[s.package] = items[:limit] if limit else items
        LOG.info("%s@%s: %d images", s.package, s.version, len(out[s.package]))
    return out


def build_corpus(
    out_dir: str | Path,
    cache: str | Path,
    *,
    sources: Sequence[Source] = SOURCES,
    scenes: int = 20000,
    seed: int = 0,
    held_out_fraction: float = HELD_OUT_ICONS,
    limit: int | None = None,
    download: bool = True,
) -> dict:
    """Fetch (into `cache`) and read every source, write the corpus to `out_dir` atomically; return the card."""
    from vlm.synth import generate

    if not 0 < held_out_fraction < 1:
        raise ConfigError(f"held_out_fraction must lie in (0, 1), got {held_out_fraction}")
    for s in sources:
        refuse_forbidden(s.package)
    items = collect(sources, fetch(sources, cache, download=download), limit)
    train_rows: list[tuple[str, str]] = []
    heldout_icons: list[tuple[str, str, str]] = []
    openmoji: list[Item] = []
    counts: dict[str, Counter] = {s.package: Counter() for s in sources}
    with atomic_dir(out_dir) as tmp:
        for s in sources:
            for item in items.get(s.package, ()):
                if s.role == "held-out":
                    group, rel = item.group, f"{item.group}/images/{item.name}.png"
                    openmoji.append(item)
                    counts[s.package]["held-out images"] += 1
                elif item.group.startswith("icons/") and held_out(item.group, item.split_key, seed, held_out_fraction):
                    group = f"heldout/{item.group}"
                    rel = f"{group}/{item.name}.png"
                    heldout_icons.append((rel.removeprefix("heldout/icons/"), item.captions[0], item.group[6:]))
                    counts[s.package]["held-out images"] += 1
                else:
                    group, rel = item.group, f"{item.group}/{item.name}.png"
                    train_rows += [(rel, c) for c in item.captions]
                    counts[s.package]["training images"] += 1
                    counts[s.package]["training captions"] += len(item.captions)
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                (tmp / rel).write_bytes(render(item))
        _write_openmoji(tmp, openmoji)
        (tmp / "heldout" / "icons").mkdir(parents=True, exist_ok=True)
        (tmp / "heldout/icons/pairs.csv").write_text(_csv(["path", "caption", "set"], sorted(heldout_icons)), "utf-8")
        if scenes:
            shapes = generate(tmp / "shapes", scenes, seed, IMAGE_SIZE, progress=False)
            with open(shapes.out_dir / "pairs.csv", encoding="utf-8", newline="") as f:
                train_rows += [(f"shapes/{r['path']}", r["caption"]) for r in csv.DictReader(f)]
        (tmp / "pairs.csv").write_text(_csv(["path", "caption"], sorted(train_rows)), "utf-8")
        card = data_card(sources, counts, scenes=scenes, seed=seed, held_out_fraction=held_out_fraction, limit=limit,
                         train_rows=len(train_rows))  # fmt: skip
        (tmp / "data_card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", "utf-8")
        (tmp / "DATA_CARD.md").write_text(card_markdown(card), "utf-8")
    LOG.info("demo corpus: %d training caption rows in %s", len(train_rows), out_dir)
    return card


def _write_openmoji(root: Path, items: Sequence[Item]) -> None:
    folder = root / "heldout" / "openmoji"
    folder.mkdir(parents=True, exist_ok=True)
    pairs = [(f"images/{i.name}.png", i.captions[0]) for i in items]
    labels = [(f"images/{i.name}.png", i.extra["category"]) for i in items if "category" in i.extra]
    names = [(f"images/{i.name}.png", lang, i.extra[f"name_{lang}"]) for i in items for lang in LANGUAGES
             if f"name_{lang}" in i.extra]  # fmt: skip
    (folder / "pairs.csv").write_text(_csv(["path", "caption"], pairs), "utf-8")
    (folder / "labels.csv").write_text(_csv(["path", "label"], labels), "utf-8")
    (folder / "names.csv").write_text(_csv(["path", "lang", "caption"], names), "utf-8")


def data_card(sources: Sequence[Source], counts: dict[str, Counter], **build: object) -> dict:
    """What went in: no dates or paths, so two builds of the same inputs write the same card."""
    return {
        "build": build,
        "sources": [
            {
                "package": s.package,
                "version": s.version,
                "sha512": s.integrity,
                "role": s.role,
                "licence": s.licence,
                "counts": dict(sorted(counts[s.package].items())),
            }
            for s in sources
        ],
        "never_included": "Google's (Noto), Facebook's and Microsoft's (Fluent) emoji artwork, @svgmoji/* (refused "
        "by vlm.demo_sources.refuse_forbidden)",
    }


def card_markdown(card: dict) -> str:
    lines = [
        "# Demo corpus: data card",
        "",
        "Built by `vlm demo corpus` (vlm/demo_corpus.py) from the npm packages below, fetched with `npm pack` and",
        "checked against their sha512. Nothing in it was drawn or written by hand; the shapes are `vlm.synth`'s.",
        "OpenMoji (the unseen style) and a seeded part of every icon set are written under `heldout/` only, never",
        "into `pairs.csv`. " + card["never_included"] + ": never included.",
        "",
        "| package | version | role | licence | counts |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in card["sources"]:
        counts = ", ".join(f"{k} {v:,}" for k, v in s["counts"].items()) or "(names and keywords)"
        lines.append(f"| `{s['package']}` | {s['version']} | {s['role']} | {s['licence']} | {counts} |")
    lines += ["", "Build: " + ", ".join(f"{k} {v}" for k, v in card["build"].items()), ""]
    return "\n".join(lines)
