"""The demo corpus builder (vlm/demo_corpus.py, vlm/demo_sources.py) on small packages made here: no network.

Each fake package is a real npm-style tarball (package/package.json + the files the real package has, in its real
layout), so the readers, the pin checks, rasterisation and the writer run exactly as on the real packages.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlm.data import read_pairs
from vlm.demo_corpus import build_corpus, build_demo_icons, held_out, read_card
from vlm.demo_sources import LANGUAGES, MORE_STYLES, SOURCES, Source, integrity, refuse_forbidden
from vlm.errors import ConfigError, DataError

EMOJI = {"1F355": ("pizza", ["cheese", "food"], 4), "1F408": ("cat", ["pet"], 3), "1F680": ("rocket", ["space"], 5)}
NAMES = {"de": {"1F355": "Pizza", "1F408": "Katze", "1F680": "Rakete"}, "ja": {"1F355": "ピザ", "1F408": "猫"}}
GROUPS = ["smileys-emotion", "people-body", "component", "animals-nature", "food-drink", "travel-places"]
SUBGROUPS = {"1F355": ("food-prepared", 7), "1F408": ("animal-mammal", 3)}  # the rocket has none


def svg(i: int, fill: str = "none") -> bytes:
    head = f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="{fill}" stroke="currentColor">'
    return (
        f'{head}<circle cx="12" cy="12" r="{3 + i % 8}"/><rect x="{i % 10}" y="2" width="4" height="6"/></svg>'.encode()
    )


def png(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (64, 64), (*colour, 255)).save(buf, format="PNG")
    return buf.getvalue()


ICONS = [f"icon-{i:02d}" for i in range(12)]


def name(label: str, lang: str) -> str:
    return label if lang == "en" else f"{label} ({lang})"


def package_files(kind: str, vendor: str = "twitter") -> dict[str, bytes]:
    if kind == "emojibase":
        subgroups = [{"key": k, "message": "x", "order": o} for k, o in SUBGROUPS.values()]
        groups = [{"order": i, "message": g} for i, g in enumerate(GROUPS)]
        files = {"en/messages.json": json.dumps({"groups": groups, "subgroups": subgroups})}
        for lang in LANGUAGES:
            rows = [{"label": NAMES.get(lang, {}).get(h, name(lab, lang)), "hexcode": h, "tags": tags, "group": g,
                     **({"subgroup": SUBGROUPS[h][1]} if h in SUBGROUPS else {})}
                    for h, (lab, tags, g) in EMOJI.items()]  # fmt: skip
            files[f"{lang}/data.json"] = json.dumps(rows, ensure_ascii=False)
        return {k: v.encode() for k, v in files.items()}
    if kind == "emoji-datasource":
        rows = [{"unified": h, "image": f"{h.lower()}.png", "name": lab.upper(), f"has_img_{vendor}": True}
                for h, (lab, _, _) in EMOJI.items()]  # fmt: skip
        files = {f"img/{vendor}/64/{r['image']}": png((i * 80, 100, 200)) for i, r in enumerate(rows)}
        return {"emoji.json": json.dumps(rows).encode(), **files}
    if kind == "openmoji":
        header = "emoji,hexcode,group,subgroups,annotation,tags,skintone\n"
        rows = "".join(f"x,{h},g,s,{lab},,\n" for h, (lab, _, _) in EMOJI.items()) + "x,1F355-1F3FB,g,s,pizza,,1\n"
        return {"data/openmoji.csv": (header + rows).encode(), **{f"color/svg/{h}.svg": svg(i, "red")
                                                                  for i, h in enumerate(EMOJI)}}  # fmt: skip
    if kind == "tabler":
        meta = {n: {"name": n, "category": "Food", "tags": ["tag", 3]} for n in ICONS}
        outline = {f"icons/outline/{n}.svg": svg(i) for i, n in enumerate(ICONS)}
        return {"icons.json": json.dumps(meta).encode(), **outline, "icons/filled/icon-01.svg": svg(1, "black")}
    if kind == "mdi":
        meta = [{"name": n, "aliases": ["alias-x"], "tags": ["Food"]} for n in ICONS]
        return {"meta.json": json.dumps(meta).encode(), **{f"svg/{n}.svg": svg(i) for i, n in enumerate(ICONS)}}
    if kind == "lucide":
        return {"tags.json": json.dumps({n: ["a", "b"] for n in ICONS}).encode(),
                **{f"icons/{n}.svg": svg(i) for i, n in enumerate(ICONS)}}  # fmt: skip
    if kind == "bootstrap":
        return {f"icons/{n}.svg": svg(i) for i, n in enumerate(ICONS)}
    if kind == "phosphor":
        entry = '  {{\n    name: "{}",\n    tags: [\n      "*new*",\n      "t{}"\n    ],\n  }},\n'
        mjs = "const n = [\n" + "".join(entry.format(n, i) for i, n in enumerate(ICONS)) + "];\n"
        return {"dist/index.mjs": mjs.encode(), **{f"assets/regular/{n}.svg": svg(i) for i, n in enumerate(ICONS)},
                **{f"assets/fill/{n}-fill.svg": svg(i, "black") for i, n in enumerate(ICONS[:3])}}  # fmt: skip
    raise AssertionError(kind)


def licence(package: str) -> bytes:
    return f"The licence of {package}: Copyright its authors.\n".encode()


def write_tarball(path: Path, package: str, version: str, files: dict[str, bytes]) -> None:
    meta = json.dumps({"name": package, "version": version}).encode()
    files = {"package.json": meta, "LICENSE": licence(package), **files}
    with tarfile.open(path, "w:gz") as tf:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"package/{name}")
            info.size, info.mtime = len(data), 0
            tf.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def fake_sources(tmp_path_factory) -> tuple[list[Source], Path]:
    """Every pinned source, made small here, with its integrity computed from the tarball written."""
    cache = tmp_path_factory.mktemp("cache")
    sources = []
    for s in SOURCES:
        vendor = s.package.rsplit("-", 1)[-1]
        write_tarball(cache / s.tarball, s.package, s.version, package_files(s.kind, vendor))
        sources.append(replace(s, integrity=integrity(cache / s.tarball)))
    return sources, cache


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_two_builds_are_byte_identical_and_held_out_sets_stay_out_of_training(fake_sources, tmp_path):
    sources, cache = fake_sources
    for name in ("a", "b"):
        build_corpus(tmp_path / name, cache, sources=sources, scenes=3, held_out_fraction=0.3, download=False)
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert a == b
    art = [p for p in a if p.startswith(("emoji/", "icons/", "heldout/")) and p.endswith(".png")]
    assert len(art) == 2 * 3 + 3 + (12 + 1) + 12 + 12 + 12 + (12 + 3)  # emoji, openmoji, tabler, mdi, ..., phosphor

    root = tmp_path / "a"
    train = rows(root / "pairs.csv")
    paths = {r["path"] for r in train}
    assert not any("openmoji" in p or p.startswith("heldout/") for p in paths)
    assert {p.split("/")[0] for p in paths} == {"emoji", "icons", "shapes"}
    captions = {r["caption"] for r in train if r["path"] == "emoji/twitter/1f408.png"}
    assert {"cat", "cat emoji", "cat, pet", "pet", "Katze", "猫"} <= captions
    assert {r["caption"] for r in train if r["path"] == "icons/mdi/icon-03.png"} >= {"icon 03", "alias x"}
    phosphor = {r["path"] for r in train if r["path"].startswith("icons/phosphor/icon-")}
    assert phosphor and "icons/phosphor/icon-00-fill.png" in phosphor | {
        f"icons/phosphor/{r['path']}" for r in rows(root / "heldout/icons/pairs.csv") if r["set"] == "phosphor"
    }
    for p in phosphor:  # tags parsed from index.mjs, the "*new*" marker dropped
        i = int(p.split("icon-")[1][:2])
        assert {r["caption"] for r in train if r["path"] == p} >= {f"icon {i:02d}", f"t{i}", f"icon {i:02d}, t{i}"}
    assert "*new*" not in {r["caption"] for r in train}
    # every training row points at an image the pair reader accepts
    assert len(read_pairs(root / "pairs.csv", progress=False).pairs) == len(paths)

    held = rows(root / "heldout/icons/pairs.csv")
    assert held and all((root / "heldout/icons" / r["path"]).is_file() for r in held)
    for r in held:  # the hash split decides, and an icon's outline and filled forms go together
        name = Path(r["path"]).stem.removesuffix("-filled").removesuffix("-fill")
        assert held_out(f"icons/{r['set']}", name, 0, 0.3)
        assert not any(p.startswith(f"icons/{r['set']}/{name}") for p in paths)
    om = rows(root / "heldout/openmoji/pairs.csv")
    assert [r["caption"] for r in om] == ["pizza", "cat", "rocket"]  # no skin-tone variant
    assert [r["label"] for r in rows(root / "heldout/openmoji/labels.csv")] == ["food-drink", "animals-nature",
                                                                                 "travel-places"]  # fmt: skip
    names = {(r["lang"], r["caption"]) for r in rows(root / "heldout/openmoji/names.csv")}
    assert {("de", "Katze"), ("ja", "猫"), ("fr", "cat (fr)"), ("zh", "rocket (zh)")} <= names
    with Image.open(root / "heldout/openmoji/images/1f355.png") as im:
        assert (im.size, im.mode) == ((64, 64), "RGB")
        assert im.getpixel((32, 32))[0] > 200 and im.getpixel((0, 0)) == (255, 255, 255)  # red disc on white
    card = json.loads((root / "data_card.json").read_text("utf-8"))
    by = {s["package"]: s for s in card["sources"]}
    assert by["openmoji"]["counts"] == {"held-out images": 3} and "CC-BY-SA" in by["openmoji"]["licence"]
    assert by["emoji-datasource-twitter"]["counts"]["training images"] == 3
    assert "openmoji" in (root / "DATA_CARD.md").read_text("utf-8")


def test_category_captions_and_artwork_pairs_are_options_that_leave_the_default_build_alone(fake_sources, tmp_path):
    sources, cache = fake_sources
    kw = {"sources": sources, "scenes": 3, "held_out_fraction": 0.3, "download": False}
    build_corpus(tmp_path / "a", cache, **kw)
    build_corpus(tmp_path / "b", cache, **kw, category_captions=True, artwork_pairs=True)
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert set(b) - set(a) == {"pairs-artwork.csv"}
    assert {k for k in a if a[k] != b[k]} == {"pairs.csv", "data_card.json", "DATA_CARD.md"}  # images, held-out: same
    plain = collections.Counter(tuple(r.values()) for r in rows(tmp_path / "a/pairs.csv"))
    more = collections.Counter(tuple(r.values()) for r in rows(tmp_path / "b/pairs.csv"))
    added = more - plain
    assert not plain - more  # every default row is still there
    assert set(added) == {(f"emoji/{v}/{h}.png", c) for v in ("apple", "twitter")
                          for h, c in (("1f355", "food-drink"), ("1f355", "food prepared"), ("1f408", "animals-nature"),
                                       ("1f408", "animal mammal"), ("1f680", "travel-places"))}  # fmt: skip
    artwork = [tuple(r.values()) for r in rows(tmp_path / "b/pairs-artwork.csv")]
    assert artwork == [r for r in (tuple(r.values()) for r in rows(tmp_path / "b/pairs.csv")) if r[0][:7] != "shapes/"]
    assert {r[0].split("/")[0] for r in artwork} == {"emoji", "icons"}
    card_a, card_b = (json.loads((tmp_path / n / "data_card.json").read_text("utf-8")) for n in "ab")
    assert "category_captions" not in card_a["build"] and "artwork_pairs" not in card_a["build"]
    assert card_b["build"]["category_captions"] is True and card_b["build"]["artwork_pairs"] is True
    # the held-out category labels are the evaluation's, whatever the captions
    assert rows(tmp_path / "a/heldout/openmoji/labels.csv") == rows(tmp_path / "b/heldout/openmoji/labels.csv")


def iconify_set() -> dict[str, bytes]:
    """An Iconify emoji set: names by CLDR name, by Unicode character name, numbered variants, a skin tone, an
    unknown name, an alias (the same drawing again), and one non-square icon (a red bar 100 wide in a 500-high box)."""
    rect = '<rect x="0" y="0" width="{}" height="{}" fill="#{}"/>'
    icons = {
        "slice-of-pizza": {"body": rect.format(512, 512, "00f")},  # Unicode's name for 1F355 (CLDR: "pizza")
        "cat-1": {"body": rect.format(512, 512, "0f0")},
        "cat-2": {"body": rect.format(512, 512, "0a0")},
        "rocket": {"body": rect.format(100, 500, "f00"), "width": 100, "height": 500},
        "rocket-medium-skin-tone": {"body": rect.format(512, 512, "000")},
        "flying-saucer": {"body": rect.format(512, 512, "000")},
    }
    data = {"prefix": "fake", "width": 512, "height": 512, "icons": icons, "aliases": {"pizza": {"parent": "rocket"}}}
    return {"icons.json": json.dumps(data).encode(), "info.json": b"{}"}


def test_more_styles_name_iconify_emoji_by_cldr_and_unicode_names(fake_sources, tmp_path):
    sources, cache = fake_sources
    style = Source("@iconify-json/fake-emoji", "1.0.0", "iconify-emoji", "train", "CC-BY 4.0")
    write_tarball(cache / style.tarball, style.package, style.version, iconify_set())
    kw = {"scenes": 1, "held_out_fraction": 0.3, "download": False}
    build_corpus(tmp_path / "a", cache, sources=sources, **kw)
    build_corpus(
        tmp_path / "b", cache, sources=[*sources, replace(style, integrity=integrity(cache / style.tarball))], **kw
    )
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    assert set(b) - set(a) == {f"emoji/fake-emoji/{n}.png" for n in ("1f355", "1f408", "1f408-2", "1f680")}
    assert {k: v for k, v in b.items() if k in a} == {**a, **{k: b[k] for k in ("pairs.csv", "data_card.json",
                                                                                "DATA_CARD.md")}}  # fmt: skip
    train = rows(tmp_path / "b/pairs.csv")
    for code in ("1f355", "1f408", "1f680"):  # the same CLDR captions as the other styles' drawing of that emoji
        captions = [r["caption"] for r in train if r["path"] == f"emoji/fake-emoji/{code}.png"]
        assert captions == [r["caption"] for r in train if r["path"] == f"emoji/twitter/{code}.png"]
    with Image.open(tmp_path / "b/emoji/fake-emoji/1f680.png") as im:  # kept its aspect: a centred bar, white sides
        assert im.getpixel((32, 32)) == (255, 0, 0) and im.getpixel((32, 1)) == (255, 0, 0)
        assert im.getpixel((4, 32)) == im.getpixel((59, 32)) == (255, 255, 255)
    with Image.open(tmp_path / "b/emoji/fake-emoji/1f408-2.png") as im:
        assert im.getpixel((32, 32)) == (0, 170, 0)
    card = {s["package"]: s for s in json.loads((tmp_path / "b/data_card.json").read_text("utf-8"))["sources"]}
    own_rows = sum(r["path"].startswith("emoji/fake-emoji/") for r in train)
    assert card[style.package]["counts"] == {"training images": 4, "training captions": own_rows}
    # the pinned sets are training styles, none of them refused artwork, none of them in the default build
    assert {s.role for s in MORE_STYLES} == {"train"} and not {s.package for s in MORE_STYLES} & {s.package for s in
                                                                                                 SOURCES}  # fmt: skip
    for s in MORE_STYLES:
        refuse_forbidden(s.package)


def test_a_malformed_iconify_set_is_named(fake_sources, tmp_path):
    sources, cache = fake_sources
    for name, files in (("not-json", {"icons.json": b"{not json"}), ("no-icons", {"icons.json": b'{"prefix": "x"}'}),
                        ("no-file", {"info.json": b"{}"})):  # fmt: skip
        style = Source(f"@iconify-json/{name}", "1.0.0", "iconify-emoji", "train", "CC-BY 4.0")
        write_tarball(cache / style.tarball, style.package, style.version, files)
        bad = [*sources, replace(style, integrity=integrity(cache / style.tarball))]
        with pytest.raises(DataError, match=f"@iconify-json/{name}: no readable icons.json"):
            build_corpus(tmp_path / name, cache, sources=bad, scenes=1, download=False)
        assert not (tmp_path / name).exists()  # nothing half-written


def test_a_missing_package_is_named(fake_sources, tmp_path):
    sources, cache = fake_sources
    partial = tmp_path / "cache"
    partial.mkdir()
    for s in sources:
        if s.package != "@phosphor-icons/core":
            (partial / s.tarball).write_bytes((cache / s.tarball).read_bytes())
    with pytest.raises(DataError, match=r"@phosphor-icons/core@2\.1\.1: missing from"):
        build_corpus(tmp_path / "out", partial, sources=sources, scenes=1, download=False)
    assert not (tmp_path / "out").exists()


def test_a_tarball_unlike_its_pin_is_refused(fake_sources, tmp_path):
    sources, cache = fake_sources
    twitter = next(s for s in sources if s.package == "emoji-datasource-twitter")
    bad = replace(twitter, integrity="sha512-" + "A" * 86 + "==")
    with pytest.raises(DataError, match=r"emoji-datasource-twitter@16\.0\.0: .* does not match the pinned sha512"):
        build_corpus(tmp_path / "out", cache, sources=[*sources[:1], bad], scenes=1, download=False)
    other = replace(twitter, version="9.9.9", integrity=None)
    (tmp_path / other.tarball).write_bytes((cache / twitter.tarball).read_bytes())
    (tmp_path / sources[0].tarball).write_bytes((cache / sources[0].tarball).read_bytes())
    with pytest.raises(DataError, match=r"holds emoji-datasource-twitter@16\.0\.0"):
        build_corpus(tmp_path / "out", tmp_path, sources=[*sources[:1], other], scenes=1, download=False)


@pytest.mark.parametrize(
    "package",
    ["emoji-datasource-google", "emoji-datasource-facebook", "@svgmoji/noto", "@svgmoji/openmoji", "noto-emoji",
     "fluentui-emoji", "@fluentui/svg-icons", "@iconify-json/noto-v1", "notocoloremoji"],
)  # fmt: skip
def test_forbidden_artwork_is_refused_before_anything_is_read(fake_sources, tmp_path, package):
    sources, cache = fake_sources
    with pytest.raises(DataError, match="refused"):
        refuse_forbidden(package)
    twitter = next(s for s in sources if s.package == "emoji-datasource-twitter")
    forbidden = replace(twitter, package=package)  # even dressed as an allowed kind, with a tarball in the cache
    (cache / forbidden.tarball).write_bytes((cache / twitter.tarball).read_bytes())
    with pytest.raises(DataError, match=f"{package}: refused"):
        build_corpus(tmp_path / "out", cache, sources=[*sources, forbidden], scenes=1, download=False)
    assert not (tmp_path / "out").exists()
    # "monotone" holds the letters "noto": the rule matches the name, not any run of letters
    for allowed in ("emoji-datasource-apple", "openmoji", "@mdi/svg", "@iconify-json/emojione-monotone"):
        refuse_forbidden(allowed)


def test_corpus_figures_read_every_held_out_set(fake_sources, tmp_path, tiny_encoders):
    from eval.demo import corpus_figures

    sources, cache = fake_sources
    build_corpus(tmp_path / "c", cache, sources=sources, scenes=1, held_out_fraction=0.3, download=False)
    figures = corpus_figures(tiny_encoders, tmp_path / "c")
    held = rows(tmp_path / "c/heldout/icons/pairs.csv")
    assert figures["held-out style (OpenMoji) images"] == 3 and figures["emoji categories"] == 3
    assert figures["held-out icons"] == len({r["path"] for r in held})
    assert {k for k in figures if k.endswith("]")} == {f"held-out style text->image R@5 [{lang}]" for lang in LANGUAGES}
    assert all(0 <= v <= 1 for k, v in figures.items() if "R@" in k or "top-1" in k)
    (tmp_path / "c/heldout/openmoji/names.csv").unlink()
    with pytest.raises(DataError, match=r"names\.csv is missing"):
        corpus_figures(tiny_encoders, tmp_path / "c")


def test_style_gap_compares_openmoji_with_each_trained_style(fake_sources, tmp_path, tiny_encoders):
    from eval.demo import style_gap

    sources, cache = fake_sources
    build_corpus(tmp_path / "c", cache, sources=sources, scenes=1, held_out_fraction=0.3, download=False)
    root = tmp_path / "c"
    for code in ("1f355", "1f408", "1f680"):  # Twitter's images made OpenMoji's own: the same look, found first
        (root / f"emoji/twitter/{code}.png").write_bytes((root / f"heldout/openmoji/images/{code}.png").read_bytes())
    gap = style_gap(tiny_encoders, root, k=1)
    assert set(gap) == {f"{v} (trained style) text->image R@1" for v in ("apple", "twitter")} | {
        f"OpenMoji image -> {v} image R@1" for v in ("apple", "twitter")}  # fmt: skip
    assert gap["OpenMoji image -> twitter image R@1"] == 1.0
    assert all(0 <= v <= 1 for v in gap.values())
    with pytest.raises(DataError, match="emoji/"):
        style_gap(tiny_encoders, tmp_path)


def test_exclude_leaves_a_training_source_out_and_the_cards_say_so(fake_sources, tmp_path):
    from vlm.cli import build_parser

    sources, cache = fake_sources
    build_corpus(tmp_path / "all", cache, sources=sources, scenes=1, download=False)
    card = (tmp_path / "all/DATA_CARD.md").read_text("utf-8")
    assert "not licensed for commercial use" in card and "--exclude emoji-datasource-apple" in card
    build_corpus(tmp_path / "free", cache, sources=sources, exclude=["emoji-datasource-apple"], scenes=1,
                 download=False)  # fmt: skip
    root = tmp_path / "free"
    assert not (root / "emoji/apple").exists() and (root / "emoji/twitter").is_dir()
    assert not any(r["path"].startswith("emoji/apple/") for r in rows(root / "pairs.csv"))
    assert any(r["path"].startswith("emoji/apple/") for r in rows(tmp_path / "all/pairs.csv"))
    data = json.loads((root / "data_card.json").read_text("utf-8"))
    assert data["build"]["exclude"] == ["emoji-datasource-apple"]
    assert "emoji-datasource-apple" not in {s["package"] for s in data["sources"]}
    assert "Left out of this build (`--exclude`): `emoji-datasource-apple`" in (root / "DATA_CARD.md").read_text()
    for wrong in ("openmoji", "emojibase-data", "no-such-package"):  # the held-out style and names stay
        with pytest.raises(ConfigError, match=f"cannot exclude {wrong}: only training sources .*@tabler/icons"):
            build_corpus(tmp_path / "x", cache, sources=sources, exclude=[wrong], scenes=1, download=False)
    old = json.loads((tmp_path / "all/data_card.json").read_text("utf-8"))  # a card from before restrictions
    for source in old["sources"]:
        del source["restriction"]
    (tmp_path / "all/data_card.json").write_text(json.dumps(old), "utf-8")
    filled = {s["package"]: s["restriction"] for s in read_card(tmp_path / "all")["sources"]}
    assert "commercial" in filled["emoji-datasource-apple"] and filled["@tabler/icons"] == ""
    args = build_parser().parse_args(["demo", "corpus", "out", "--exclude", "a", "--exclude", "b"])
    assert args.exclude == ["a", "b"]


def test_demo_icons_are_the_held_out_icons_with_each_sets_licence(fake_sources, tmp_path, capsys):
    sources, cache = fake_sources
    build_corpus(tmp_path / "c", cache, sources=sources, scenes=1, held_out_fraction=0.3, download=False)
    counts = build_demo_icons(tmp_path / "c", cache, tmp_path / "icons", sources=sources)
    build_demo_icons(tmp_path / "c", cache, tmp_path / "again", sources=sources)
    assert tree(tmp_path / "icons") == tree(tmp_path / "again")
    # the command checks the tarballs against the real pins: these local fakes are refused, by name, and nothing is
    # written
    from vlm.cli import main

    argv = ["demo", "collection", str(tmp_path / "c"), "--cache", str(cache), "--dest", str(tmp_path / "cli")]
    assert main(argv) == 2 and not (tmp_path / "cli").exists()
    assert "does not match the pinned sha512" in capsys.readouterr().err
    held = rows(tmp_path / "c/heldout/icons/pairs.csv")
    out = rows(tmp_path / "icons/pairs.csv")
    assert sorted((f"images/{r['path']}", r["caption"]) for r in held) == sorted((r["path"], r["caption"]) for r in out)
    assert counts == dict(sorted(collections.Counter(r["set"] for r in held).items()))
    for r in held:  # the corpus's own rendering, byte for byte
        assert (tmp_path / "icons/images" / r["path"]).read_bytes() == (
            tmp_path / "c/heldout/icons" / r["path"]
        ).read_bytes()
    trained = {r["path"].removeprefix("icons/") for r in rows(tmp_path / "c/pairs.csv")}
    assert not trained & {r["path"] for r in held}
    attribution = (tmp_path / "icons/ATTRIBUTION.md").read_text("utf-8")
    by_kind = {s.kind: s for s in sources}
    for kind in counts:
        s = by_kind[kind]
        name = s.package.lstrip("@").replace("/", "-")
        assert (tmp_path / f"icons/LICENSES/{name}.txt").read_bytes() == licence(s.package)
        assert f"`{s.package}` | {s.version} | {s.licence} | {counts[kind]:,}" in attribution
    assert not any("apple" in p or "openmoji" in p for p in tree(tmp_path / "icons"))
    tabler = next(s for s in sources if s.kind == "tabler")
    restricted = [replace(s, restriction="not for redistribution") if s is tabler else s for s in sources]
    with pytest.raises(DataError, match="@tabler/icons: its images may not be redistributed"):
        build_demo_icons(tmp_path / "c", cache, tmp_path / "no", sources=restricted)
    assert not (tmp_path / "no").exists()


def test_export_writes_the_corpus_card_with_figures_and_restrictions(fake_sources, tmp_path, tiny_encoders):
    from safetensors.torch import load_file

    from eval.demo import SHAPES_FIGURE, card_figures
    from vlm import checkpoint, models
    from vlm.demo import export

    sources, cache = fake_sources
    build_corpus(tmp_path / "c", cache, sources=sources, scenes=1, held_out_fraction=0.3, download=False)
    figures, showcase = card_figures(tiny_encoders, tmp_path / "c", 0.1, 0, per_label=1)
    assert 0 <= figures[SHAPES_FIGURE] <= 1 and "held-out style text->image R@5 [ja]" in figures
    assert set(showcase) == {"queries", "queries_by_language", "labels"}
    trained = models.save(tiny_encoders, tmp_path / "final")
    path = export(trained, figures, dest=tmp_path / "shipped", data_card=read_card(tmp_path / "c"), showcase=showcase)
    card = (path / "README.md").read_text("utf-8")
    for key, value in figures.items():
        assert (f"| {key} | {value:.3f} |" if isinstance(value, float) else f"| {key} | {value} |") in card
    assert "vlm demo corpus runs/demo-corpus" in card and "| `openmoji` | 17.0.0 | held-out |" in card
    assert "not licensed for commercial use" in card and "--exclude emoji-datasource-apple" in card
    assert "This model was trained on that artwork" in card
    assert "emoji drawn in 2 styles (Apple, Twitter) and 5 icon sets" in card  # named from the data card's sources
    record = checkpoint.read_config(path)
    assert record["provenance"]["demo_data_card"]["sources"][1]["package"] == "emoji-datasource-apple"
    assert record["provenance"]["demo_showcase"] == showcase and "## What to try" in card
    weights = load_file(path / "model.safetensors")
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float16}


def test_margins_and_picks_follow_the_measured_ranks():
    from eval.demo import margins, pick

    gen = torch.Generator().manual_seed(0)
    items = torch.nn.functional.normalize(torch.randn(7, 5, generator=gen), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(11, 5, generator=gen), dim=1)
    owner = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3])
    got = margins(queries, items, owner)
    scores = (queries @ items.T).numpy()
    for q in range(11):  # brute force: own score minus the best other
        others = [scores[q, j] for j in range(7) if j != owner[q]]
        assert abs(float(got[q]) - (scores[q, owner[q]] - max(others))) < 1e-6
        assert (float(got[q]) > 0) == (int(scores[q].argmax()) == int(owner[q]))
    tie = margins(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([0]))
    assert float(tie[0]) == 0  # a tie is not a hit
    names = ["pizza", "a slice of cheese pizza", "cat", "rocket", "dog", "Pizza"]
    margin = torch.tensor([0.5, 0.9, 0.4, -0.1, 0.3, 0.45])
    assert pick(names, margin, 3) == ["pizza", "cat", "dog"]  # too long, duplicate (case), negative: skipped
    assert pick(names, margin, 3, groups=["food", "food", "animal", "travel", "animal", "food"]) == ["pizza", "cat"]


def test_describe_says_what_the_figures_say():
    from vlm.demo import FIRST_RECIPE_LABELS, SHAPES_FIGURE, describe

    figures = {"held-out style text->image R@5": 0.6, "held-out icons text->image R@5": 0.3, SHAPES_FIGURE: 0.95,
               "emoji category zero-shot top-1": 0.4, "held-out style text->image R@5 [en]": 0.6,
               "held-out style text->image R@5 [de]": 0.35, "held-out style text->image R@5 [zh]": 0.05}  # fmt: skip
    show = {"queries": ["pizza", "rocket"], "queries_by_language": {"de": "Katze"}, "labels": ["pizza", "red circle"]}
    about = describe({"demo_figures": figures, "demo_showcase": show})
    assert about.labels == ("pizza", "red circle") and about.queries == ("pizza", "rocket", "Katze")
    assert "60%" in about.knows and "30%" in about.knows and "95%" in about.knows and "names in de" in about.knows
    assert "names in zh (R@5 5%)" in about.weak and "photos" in about.weak and "40% right of 10" in about.weak
    figures["emoji category zero-shot top-1"] = 0.5
    assert "categories" not in describe({"demo_figures": figures, "demo_showcase": show}).weak
    # below KNOWN nothing counts as known, whatever the ratio to English
    low = {k: v / 10 for k, v in figures.items()}
    weak = describe({"demo_figures": low, "demo_showcase": show})
    assert weak.knows == "little yet" and "names in de, zh" in weak.weak and "top 5 for 6% of names" in weak.weak
    assert describe({}).labels == FIRST_RECIPE_LABELS  # a card without a showcase: the first recipe's defaults
    from ui.status import banner

    model = {"demo": True, "random_weights": False, "about": {"knows": about.knows, "weak": about.weak}}
    text = banner({"model": model, "collection": {"images": 3284}, "switching_to": None, "run": {"state": "idle"}})
    assert f"It knows {about.knows}. It does not know {about.weak}." in text and "3,284 demo images" in text
