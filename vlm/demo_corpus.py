"""`vlm demo corpus`: the demo corpus built from pinned npm packages (issue 18), reproducibly, with a data card.

Layout of the output folder (every CSV path is relative to it; the same inputs give the same bytes):

    pairs.csv                  training pairs: path,caption (several rows per image), sorted
    shapes/                    the synthetic shapes world (`vlm.synth`), so the segmentation demo keeps working
    emoji/<vendor>/*.png       emoji artwork of the trained styles (Apple, Twitter; with `--more-styles` also Emoji
                               One 1, 2 and 2 monotone, Firefox OS, Streamline) at 64 px on white
    icons/<set>/*.png          icon sets rasterised from SVG with resvg (`resvg-py`) at 64 px, black on white
    heldout/openmoji/          the unseen style, NEVER in pairs.csv: pairs.csv (path,caption = the English CLDR
                               name), labels.csv (path,label = the emoji category), names.csv (path,lang,caption)
    heldout/icons/             a seeded part of every icon set (by name, so an icon's outline and filled forms go
                               together), NEVER in pairs.csv: pairs.csv (path,caption = the name in words,set)
    DATA_CARD.md, data_card.json   per source: package, version, sha512, licence, role, counts, restriction

`exclude` (`vlm demo corpus --exclude PACKAGE`, repeatable) leaves a training source out, e.g. Apple's emoji artwork,
which is not licensed for commercial use. `build_demo_icons` (`vlm demo collection`) copies the held-out icons, which
every icon set's licence lets us redistribute, into the app's demo collection with each set's licence.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image

from vlm.atomic import atomic_dir
from vlm.demo_sources import (
    LANGUAGES,
    PINNED,
    READERS,
    SOURCES,
    Cldr,
    Item,
    Source,
    fetch,
    licence_text,
    refuse_forbidden,
)
from vlm.errors import ConfigError, DataError

LOG = logging.getLogger(__name__)

IMAGE_SIZE = 64
HELD_OUT_ICONS = 0.05


def is_corpus(path: str | Path) -> bool:
    """Whether `path` is a folder written by `build_corpus` (it has the data card and the held-out style)."""
    return (Path(path) / "data_card.json").is_file() and (Path(path) / "heldout" / "openmoji").is_dir()


def read_card(path: str | Path) -> dict:
    """The data card (`data_card.json`) of a corpus folder. A card written before restrictions were recorded gets
    them from the pins (`SOURCES`) of the same package and version."""
    try:
        card = json.loads((Path(path) / "data_card.json").read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: no readable data_card.json ({e}); is it a `vlm demo corpus` folder?") from e
    pins = {(s.package, s.version): s.restriction for s in PINNED}
    for s in card.get("sources", []):
        s.setdefault("restriction", pins.get((s["package"], s["version"]), ""))
    return card


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


def collect(sources: Sequence[Source], tarballs: dict[str, Path], limit: int | None = None, *,
            categories: bool = False) -> dict[str, list[Item]]:  # fmt: skip
    """Each package's items (the first `limit` of each in name order, for small builds), keyed by package; with
    `categories`, emoji captions include their emojibase group and subgroup (`Cldr.captions`)."""
    for s in sources:
        refuse_forbidden(s.package)
    cldr_src = [s for s in sources if s.kind == "emojibase"]
    if len(cldr_src) != 1:
        raise DataError("the demo corpus needs exactly one emojibase-data source (the emoji names and keywords)")
    cldr = Cldr.read(cldr_src[0], tarballs[cldr_src[0].package])
    cldr.categories = categories
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


def without(sources: Sequence[Source], exclude: Iterable[str]) -> tuple[Source, ...]:
    """`sources` less the training sources named in `exclude` (package names). A name that is not a training source
    is a ConfigError listing those that are: the CLDR names and the held-out style cannot be left out."""
    exclude = set(exclude)
    trainable = [s.package for s in sources if s.role == "train"]
    wrong = sorted(exclude - set(trainable))
    if wrong:
        raise ConfigError(f"cannot exclude {', '.join(wrong)}: only training sources can be left out of the demo "
                          f"corpus: {', '.join(trainable)}")  # fmt: skip
    return tuple(s for s in sources if s.package not in exclude)


def build_corpus(
    out_dir: str | Path,
    cache: str | Path,
    *,
    sources: Sequence[Source] = SOURCES,
    exclude: Iterable[str] = (),
    scenes: int = 20000,
    seed: int = 0,
    held_out_fraction: float = HELD_OUT_ICONS,
    limit: int | None = None,
    download: bool = True,
    category_captions: bool = False,
    artwork_pairs: bool = False,
) -> dict:
    """Fetch (into `cache`) and read every source but those in `exclude`, write the corpus to `out_dir` atomically;
    return the card.

    Options for the next recipe, off by default (the default build is the shipped model's corpus, byte for byte):
    `category_captions` adds each training emoji's emojibase group ("food & drink") and subgroup ("food fruit") to
    its captions; `artwork_pairs` also writes `pairs-artwork.csv`, the training rows without the shapes, so that a
    run can weight the shapes (`shapes/pairs.csv`) with `keep_data` / `keep_fraction`."""
    from vlm.synth import generate

    if not 0 < held_out_fraction < 1:
        raise ConfigError(f"held_out_fraction must lie in (0, 1), got {held_out_fraction}")
    excluded = sorted(set(exclude))
    sources = without(sources, excluded)
    for s in sources:
        refuse_forbidden(s.package)
    items = collect(sources, fetch(sources, cache, download=download), limit, categories=category_captions)
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
        # the card names only the options set, so that a default build's card stays as it was
        options = {"category_captions": category_captions, "artwork_pairs": artwork_pairs}
        options = {k: True for k, on in options.items() if on}
        if artwork_pairs:
            artwork = sorted(r for r in train_rows if not r[0].startswith("shapes/"))
            (tmp / "pairs-artwork.csv").write_text(_csv(["path", "caption"], artwork), "utf-8")
        card = data_card(sources, counts, scenes=scenes, seed=seed, held_out_fraction=held_out_fraction, limit=limit,
                         exclude=excluded, train_rows=len(train_rows), **options)  # fmt: skip
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
                "restriction": s.restriction,
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
    lines += restrictions(card)
    return "\n".join(lines)


def restrictions(card: dict, who: str = "Whatever is trained on this corpus is") -> list[str]:
    """The "Restrictions" section of a data or model card: what a source's licence forbids, and how to rebuild
    without it; or that the build left such sources out. `who`: what is trained on the artwork."""
    limited = [s for s in card["sources"] if s.get("restriction")]
    excluded = card["build"].get("exclude") or []
    lines = ["## Restrictions", ""]
    for s in limited:
        lines += [f"- **`{s['package']}`: {s['restriction']}.** {who} trained on that artwork; for commercial "
                  "use rebuild without it: "
                  f"`vlm demo corpus OUT --exclude {s['package']}`, then train again.", ""]  # fmt: skip
    if excluded:
        lines += [f"Left out of this build (`--exclude`): {', '.join(f'`{p}`' for p in excluded)}.", ""]
    if not limited and not excluded:
        lines += ["No source in this build restricts its use beyond its licence above.", ""]
    return lines


def build_demo_icons(corpus_dir: str | Path, cache: str | Path, dest: str | Path, *,
                     sources: Sequence[Source] = SOURCES) -> dict[str, int]:  # fmt: skip
    """Copy the corpus's held-out icons (no model trained on the corpus has seen them) to `dest` for the app's demo
    collection: `images/<set>/<name>.png` (64 px, as in the corpus), `pairs.csv` (path,caption: the icon's name in
    words), `LICENSES/<package>.txt` (each set's licence file, read from its pinned tarball in `cache`) and
    `ATTRIBUTION.md`. Only sources without a use restriction are copied. Written atomically; the same corpus and
    tarballs give the same bytes. Returns the number of icons per set."""
    root = Path(corpus_dir)
    listing = root / "heldout" / "icons" / "pairs.csv"
    if not listing.is_file():
        raise DataError(f"{listing} is missing: is {root} a `vlm demo corpus` folder?")
    with open(listing, encoding="utf-8", newline="") as f:
        held = sorted((r["set"], r["path"], r["caption"]) for r in csv.DictReader(f))
    by_set = {s.kind: s for s in sources}
    unknown = sorted({name for name, _, _ in held} - set(by_set))
    if unknown:
        raise DataError(f"{listing}: icon sets {', '.join(unknown)} are not among the pinned sources")
    used = [by_set[k] for k in sorted({name for name, _, _ in held})]
    for s in used:
        if s.restriction:
            raise DataError(f"{s.package}: its images may not be redistributed freely ({s.restriction})")
    tarballs = fetch(used, cache, download=False)
    counts = Counter(name for name, _, _ in held)
    with atomic_dir(dest) as tmp:
        for _, rel, _ in held:
            src = root / "heldout" / "icons" / rel
            if not src.is_file():
                raise DataError(f"{src} is missing: {listing} names it")
            (tmp / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "images" / rel).write_bytes(src.read_bytes())
        (tmp / "pairs.csv").write_text(_csv(["path", "caption"], [(f"images/{r}", c) for _, r, c in held]), "utf-8")
        (tmp / "LICENSES").mkdir()
        lines = [
            "# Icons of the demo collection",
            "",
            f"{len(held):,} icons, 64 x 64 PNG, black on white, rasterised from the SVGs of the npm packages below by "
            "`vlm demo corpus` (resvg) and copied here by `vlm demo collection`. They are the held-out part of each "
            "set (a seeded hash of the icon's name): no model trained on the demo corpus has seen them. Captions: "
            "the icon's name in words. Each set's licence file is in `LICENSES/`; the copyright notices are theirs.",
            "",
            "| set | package | version | licence | icons | licence file |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for s in used:
            name = f"{s.package.lstrip('@').replace('/', '-')}.txt"
            (tmp / "LICENSES" / name).write_text(licence_text(s, tarballs[s.package]), "utf-8")
            lines.append(f"| {s.kind} | `{s.package}` | {s.version} | {s.licence} | {counts[s.kind]:,} | "
                         f"`LICENSES/{name}` |")  # fmt: skip
        (tmp / "ATTRIBUTION.md").write_text("\n".join([*lines, ""]), "utf-8")
    LOG.info("demo icons: %d held-out icons from %d sets in %s", len(held), len(used), dest)
    return dict(sorted(counts.items()))
