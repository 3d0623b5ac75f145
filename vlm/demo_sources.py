"""The packages the demo corpus is made from: pins, the refusal list, download into a cache, and one reader per format.

Every image and caption comes out of an npm package, fetched with `npm pack NAME@VERSION` into a cache folder and
checked against npm's sha512 integrity (the registry's `dist.integrity`). A tarball is read in place (nothing is
extracted to disk). Each reader turns a package's files into `Item`s: the image (PNG or SVG bytes) and its captions.

Never used, refused by name wherever a package list is given: Google's (Noto), Facebook's and Microsoft's (Fluent)
emoji artwork and `@svgmoji/*`; they are kept out of training entirely, for independent checks of style
generalisation (issue 18).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import subprocess
import tarfile
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vlm.errors import DataError

# Languages of the emoji captions (emojibase-data's CLDR names and keywords); English first.
LANGUAGES = ("en", "de", "fr", "es", "zh", "ja")

# "noto" only where a name starts with it or a non-letter precedes it: "emojione-monotone" holds the letters too
FORBIDDEN = re.compile(r"^@svgmoji/|(?<![a-z])noto|google|android|facebook|messenger|fluent|microsoft")


@dataclass(frozen=True)
class Source:
    package: str
    version: str
    kind: str  # which reader: see READERS
    role: str  # "train", "held-out" (never in training) or "captions" (names and keywords only)
    licence: str  # as the package states it, for the data card
    integrity: str | None = None  # npm's "sha512-..." of the tarball; None only for a package made locally in tests
    restriction: str = ""  # a limit on use that its licence sets (shown in the data and model cards); "" if none
    style: str = ""  # for emoji artwork, whose drawing style it is ("Apple"), as the model card names it

    @property
    def tarball(self) -> str:
        """The file name `npm pack` writes: "@scope/name" -> "scope-name-VERSION.tgz"."""
        return f"{self.package.lstrip('@').replace('/', '-')}-{self.version}.tgz"


APPLE_TERMS = "package MIT; its README: Apple images, Copyright © Apple Inc., are not licensed for commercial usage"
APPLE_RESTRICTION = (
    "Apple's emoji images (Copyright © Apple Inc.) are not licensed for commercial use (emoji-datasource's README)"
)
SOURCES: tuple[Source, ...] = (
    Source("emojibase-data", "17.0.0", "emojibase", "captions", "MIT (names and keywords from Unicode CLDR)",
           "sha512-Yvgb5AWoHViHV/gq1qr5ZAarcBip+B27/ZLRsUJkbgAEaLlZ/fof9g882LTpmEpyhBNEC0m2SEmItljHsTygjA=="),
    Source("emoji-datasource-apple", "16.0.0", "emoji-datasource", "train", APPLE_TERMS,
           "sha512-dVYjsK0FnCry9F+PBtnivhG2K0xdwlmqYaSgiUtztUdAGPYiHYhZcVKvNBqC791g2qyEcFNTBO6utg4eQ3uLTw==",
           APPLE_RESTRICTION, "Apple"),
    Source("emoji-datasource-twitter", "16.0.0", "emoji-datasource", "train",
           "package MIT; Twitter (Twemoji) images CC-BY 4.0, Copyright Twitter, Inc. and other contributors",
           "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
           style="Twitter"),
    Source("openmoji", "17.0.0", "openmoji", "held-out", "CC-BY-SA 4.0 (OpenMoji, HfG Schwäbisch Gmünd)",
           "sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w=="),
    Source("@tabler/icons", "3.52.0", "tabler", "train", "MIT",
           "sha512-dldKlJNfO/gZnGLcIY0X2EFFKIMGwL/rEvTqglvBgAPFiwj9pZOCN5V3Sf0Gyjq6foX4VQmLdOmsS4w5FdWKAw=="),
    Source("@mdi/svg", "7.4.47", "mdi", "train", "Apache-2.0 (Pictogrammers Free License)",
           "sha512-WQ2gDll12T9WD34fdRFgQVgO8bag3gavrAgJ0frN4phlwdJARpE6gO1YvLEMJR0KKgoc+/Ea/A0Pp11I00xBvw=="),
    Source("lucide-static", "1.87.0", "lucide", "train", "ISC",
           "sha512-PqBn/aXv1MQLE18HqRO9iBzaH7nehke0Yu9B1Js/PFv0penav2j7LcyHr7lf30ssB1cNjW13OkuYmFfOwYGj+g=="),
    Source("bootstrap-icons", "1.13.2", "bootstrap", "train", "MIT",
           "sha512-fAU1Ly3dH7hwRg+CB8EZ0Vl0fF80zgXHeUVJyfUOKzoURr+TbwISbCW5tKUoQLERaWYG2emTCybcPbD96hdD1A=="),
    Source("@phosphor-icons/core", "2.1.1", "phosphor", "train", "MIT",
           "sha512-v4ARvrip4qBCImOE5rmPUylOEK4iiED9ZyKjcvzuezqMaiRASCHKcRIuvvxL/twvLpkfnEODCOJp5dM4eZilxQ=="),
)  # fmt: skip


# More emoji styles, drawn by other vendors, in Iconify's JSON packaging (SVG bodies named after the emoji). Not in
# SOURCES, so the default build stays the shipped model's corpus byte for byte: `vlm demo corpus --more-styles`.
MORE_STYLES: tuple[Source, ...] = (
    Source("@iconify-json/emojione", "1.2.3", "iconify-emoji", "train", "CC-BY 4.0 (Emoji One 2.3, EmojiTwo)",
           "sha512-T9+T3HIbJNLKKsmxYKlaYhvnHYkz/HNYTV7SHCXVZPfeUi4FqskY70YeN8yYAZT8cCv7w5vJxS4Q1m8zb9CMMg==",
           style="Emoji One 2"),
    Source("@iconify-json/emojione-v1", "1.2.3", "iconify-emoji", "train",
           "CC-BY-SA 4.0 (Emoji One 1, joypixels/emojione-legacy)",
           "sha512-UjI2VQEXVtGlPBvQuxEizro7QCgBcJDOYwKUupquvvZ8UV4xOlvm45IU82JYWegiAWLerY79gFLMZ26U6Ms+ww==",
           style="Emoji One 1"),
    Source("@iconify-json/emojione-monotone", "1.2.1", "iconify-emoji", "train", "CC-BY 4.0 (Emoji One 2, monotone)",
           "sha512-cZSNcPsuiAD6HCzCh/2dYKGh3pNI0jJlxBxQWfC33cQsPtqYZqulGBvlkThXYNvDl8VxgVHT9u+izyX/yeEIkA==",
           style="Emoji One 2 monotone"),
    Source("@iconify-json/fxemoji", "1.2.2", "iconify-emoji", "train", "Apache-2.0 (Mozilla's Firefox OS emoji)",
           "sha512-UAasRaxzFUKfIGSmLwnoarsssA4LX0VLLuEmplIqM6ZNQqIQRtav8tZ4H1neTlBreXuMQyAifr5jP4kn78DpiQ==",
           style="Firefox OS"),
    Source("@iconify-json/streamline-emojis", "1.2.4", "iconify-emoji", "train", "CC-BY 4.0 (Streamline emojis)",
           "sha512-iNr9T9XuZVTyQPJO8ZlLxBzPkpi7qMl+z1l0C31vpEMqhPMelth3n7CeWQYtixdetDPdI81yeG4ROqjWpYJE6A==",
           style="Streamline"),
)  # fmt: skip
PINNED = SOURCES + MORE_STYLES  # every package the corpus may be built from, as its cards look them up


def refuse_forbidden(package: str) -> None:
    """Raise DataError for the emoji artwork kept out of training (Noto, Facebook, Fluent, @svgmoji/*)."""
    if FORBIDDEN.search(package.lower()):
        raise DataError(
            f"{package}: refused. Google's (Noto), Facebook's and Microsoft's (Fluent) emoji artwork and @svgmoji/* "
            "are kept out of the demo corpus entirely (held back for independent style checks)"
        )


def integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch(sources: Iterable[Source], cache: str | Path, *, download: bool = True) -> dict[str, Path]:
    """The tarball of each source in `cache` (downloaded with `npm pack` where missing and `download`), verified.

    A missing tarball that cannot be had, or one whose hash or package.json differs from the pin, is a DataError
    naming the package."""
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    for s in sources:
        refuse_forbidden(s.package)
        path = cache / s.tarball
        if not path.is_file() and download:
            spec = f"{s.package}@{s.version}"
            try:
                subprocess.run(["npm", "pack", "--silent", "--pack-destination", str(cache), spec],
                               check=True, capture_output=True, text=True, timeout=900)  # fmt: skip
            except FileNotFoundError as e:
                raise DataError(f"{s.package}: not in {cache}, and npm is not installed to fetch it") from e
            except subprocess.CalledProcessError as e:
                raise DataError(f"{s.package}: `npm pack {spec}` failed: {e.stderr.strip()[-500:]}") from e
        if not path.is_file():
            raise DataError(f"{s.package}@{s.version}: missing from {cache} (expected {s.tarball}; fetch it with "
                            f"`npm pack {s.package}@{s.version} --pack-destination {cache}`)")  # fmt: skip
        if s.integrity is not None and integrity(path) != s.integrity:
            raise DataError(f"{s.package}@{s.version}: {path} does not match the pinned sha512; delete it, fetch again")
        out[s.package] = path
    return out


def read_package(source: Source, path: Path, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    """The regular files of the tarball whose names (without the leading "package/") pass `wanted`, in memory."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as tf:
            for m in tf:
                name = m.name.split("/", 1)[1] if "/" in m.name else m.name
                name = name.removeprefix("./")
                if m.isfile() and (name == "package.json" or wanted(name)):
                    files[name] = tf.extractfile(m).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{source.package}: cannot read {path}: {e}") from e
    try:
        meta = json.loads(files.pop("package.json"))
    except (KeyError, ValueError) as e:
        raise DataError(f"{source.package}: {path} has no readable package.json") from e
    if (meta.get("name"), meta.get("version")) != (source.package, source.version):
        raise DataError(f"{source.package}@{source.version}: {path} holds {meta.get('name')}@{meta.get('version')}")
    return files


LICENCE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENCE.txt", "LICENCE.md")


def licence_text(source: Source, path: Path) -> str:
    """The licence file at the top of the package's tarball (what redistributing its images must carry along)."""
    files = read_package(source, path, lambda n: n in LICENCE_FILES)
    for name in LICENCE_FILES:
        if name in files:
            return files[name].decode("utf-8", errors="replace")
    raise DataError(f"{source.package}@{source.version}: no licence file ({', '.join(LICENCE_FILES)}) in {path}")


@dataclass(frozen=True)
class Item:
    group: str  # folder in the corpus: "emoji/twitter", "icons/tabler", "heldout/openmoji"
    name: str  # file stem, unique in its group
    image: bytes
    fmt: str  # "png" or "svg"
    captions: tuple[str, ...]  # the first is the name, the caption evaluations use
    split_key: str = ""  # items sharing it are held out together (an icon's outline and filled forms)
    extra: Mapping[str, str] = field(default_factory=dict)  # category, per-language names


def _norm_hex(code: str) -> str:
    return "-".join(p for p in code.upper().split("-") if p != "FE0F")


@dataclass
class Cldr:
    """emojibase-data: per language, hexcode (without FE0F) -> (label, tags); each emoji's group name ("food &
    drink") and subgroup in words ("food fruit"). With `categories`, `captions` adds the group and subgroup."""

    names: dict[str, dict[str, tuple[str, tuple[str, ...]]]]
    groups: dict[str, str]
    subgroups: dict[str, str] = field(default_factory=dict)
    categories: bool = False

    @classmethod
    def read(cls, source: Source, path: Path, languages: Iterable[str] = LANGUAGES) -> Cldr:
        languages = tuple(languages)
        files = read_package(source, path, lambda n: n in {f"{lang}/data.json" for lang in languages}
                             or n == "en/messages.json")  # fmt: skip
        names: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {}
        groups: dict[str, str] = {}
        subgroups: dict[str, str] = {}
        try:
            messages = json.loads(files["en/messages.json"])
            group_names = {g["order"]: g["message"] for g in messages["groups"]}
            subgroup_words = {g["order"]: _words(g["key"]) for g in messages.get("subgroups", ())}
            for lang in languages:
                table = names.setdefault(lang, {})
                for e in json.loads(files[f"{lang}/data.json"]):
                    table[_norm_hex(e["hexcode"])] = (e["label"].strip(), tuple(t.strip() for t in e.get("tags", ())))
                    if lang == "en" and "group" in e:
                        groups[_norm_hex(e["hexcode"])] = group_names[e["group"]]
                    if lang == "en" and e.get("subgroup") in subgroup_words:
                        subgroups[_norm_hex(e["hexcode"])] = subgroup_words[e["subgroup"]]
        except (KeyError, ValueError, TypeError) as e:
            raise DataError(f"{source.package}: missing or malformed CLDR data ({e!r})") from e
        return cls(names, groups, subgroups)

    def captions(self, code: str, fallback: str) -> tuple[str, ...]:
        """English: the name, "NAME emoji", the name with up to three keywords, two keywords alone; then the name in
        each other language; with `categories`, then the emoji's group ("food & drink") and subgroup ("food fruit").
        Duplicates dropped, order kept."""
        code = _norm_hex(code)
        label, tags = self.names.get("en", {}).get(code, (fallback, ()))
        tags = tuple(t for t in tags if t.lower() != label.lower())
        out = [label, f"{label} emoji"]
        if tags:
            out.append(f"{label}, {', '.join(tags[:3])}")
        out += tags[:2]
        out += [self.names[lang][code][0] for lang in self.names if lang != "en" and code in self.names[lang]]
        if self.categories:
            out += [self.groups.get(code, ""), self.subgroups.get(code, "")]
        return tuple(dict.fromkeys(c for c in out if c))

    def extra(self, code: str) -> dict[str, str]:
        code = _norm_hex(code)
        out = {f"name_{lang}": t[code][0] for lang, t in self.names.items() if code in t}
        if code in self.groups:
            out["category"] = self.groups[code]
        return out


def read_emoji_datasource(source: Source, path: Path, cldr: Cldr) -> list[Item]:
    """emoji-datasource-<vendor>: every base emoji (no skin-tone variants) at 64 px, with CLDR captions."""
    vendor = source.package.rsplit("-", 1)[-1]
    if vendor not in ("apple", "twitter"):
        refuse_forbidden(f"emoji-datasource-{vendor}")
        raise DataError(f"{source.package}: only the apple and twitter emoji-datasource packages are read")
    files = read_package(source, path, lambda n: n == "emoji.json" or n.startswith(f"img/{vendor}/64/"))
    items = []
    for e in sorted(json.loads(files["emoji.json"]), key=lambda e: e["unified"]):
        image = files.get(f"img/{vendor}/64/{e['image']}")
        if image is None or not e.get(f"has_img_{vendor}", True):
            continue
        code = e["unified"]
        items.append(Item(f"emoji/{vendor}", code.lower(), image, "png",
                          cldr.captions(code, (e.get("name") or code).lower()), code, cldr.extra(code)))  # fmt: skip
    return items


def read_openmoji(source: Source, path: Path, cldr: Cldr) -> list[Item]:
    """OpenMoji's colour SVGs of the emoji that CLDR names (no skin tones, no OpenMoji extras): the unseen style."""
    files = read_package(source, path, lambda n: n == "data/openmoji.csv" or n.startswith("color/svg/"))
    rows = csv.DictReader(io.StringIO(files["data/openmoji.csv"].decode("utf-8")))
    items = []
    for r in sorted(rows, key=lambda r: r["hexcode"]):
        code, svg = r["hexcode"], files.get(f"color/svg/{r['hexcode']}.svg")
        if svg is None or r.get("skintone") or _norm_hex(code) not in cldr.names.get("en", {}):
            continue
        items.append(Item("heldout/openmoji", code.lower(), svg, "svg", cldr.captions(code, r["annotation"]),
                          code, cldr.extra(code)))  # fmt: skip
    return items


def _slug(text: str) -> str:
    """Lower-case ASCII letters and digits only, so differently spelt names meet: "Flag: Åland Islands",
    "flag-aland-islands" and "flagalandislands" all give "flagalandislands"."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower().replace("&", "and")
    return re.sub(r"[^a-z0-9]+", "", text)


def emoji_by_name(cldr: Cldr) -> dict[str, str]:
    """Slugged name -> hexcode (without FE0F): each emoji's English CLDR name and, for a single code point, its
    Unicode character name, which older sets name their files after (Firefox's "bactriancamel"). CLDR names win.
    The character names come from Python's `unicodedata`, so a Python with a newer Unicode may match a few more."""
    table: dict[str, str] = {}
    for code, (label, _) in cldr.names.get("en", {}).items():
        table.setdefault(_slug(label), code)
    for code in cldr.names.get("en", {}):
        unicode_name = _slug(unicodedata.name(chr(int(code, 16)), "")) if "-" not in code else ""
        if unicode_name:
            table.setdefault(unicode_name, code)
    return table


def iconify_svg(icon: Mapping, icon_set: Mapping) -> bytes:
    """An Iconify icon's SVG body as a standalone SVG, its box made square around the drawing (the few non-square
    icons keep their aspect when rasterised to a square)."""
    left, top = icon.get("left", icon_set.get("left", 0)), icon.get("top", icon_set.get("top", 0))
    width, height = icon.get("width", icon_set.get("width", 16)), icon.get("height", icon_set.get("height", 16))
    side = max(width, height)
    box = f"{left - (side - width) / 2:g} {top - (side - height) / 2:g} {side:g} {side:g}"
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" viewBox="{box}" '
            f'width="{side:g}" height="{side:g}">{icon["body"]}</svg>').encode()  # fmt: skip


def read_iconify_emoji(source: Source, path: Path, cldr: Cldr) -> list[Item]:
    """An Iconify emoji set (`@iconify-json/<set>`: icons.json of SVG bodies): every icon named after an emoji that
    CLDR names (its English name or Unicode character name; "flag-for-x" as "flag-x"; a numbered variant such as
    Streamline's "baby-2" as "baby"), with that emoji's CLDR captions. Skin-tone variants, aliases (the same
    drawing under another name) and names CLDR does not know are left out."""
    files = read_package(source, path, lambda n: n == "icons.json")
    try:
        icon_set = json.loads(files["icons.json"])
        icons = icon_set["icons"]
    except (KeyError, ValueError) as e:
        raise DataError(f"{source.package}: no readable icons.json in {path} ({e!r})") from e
    style = source.package.rsplit("/", 1)[-1]
    table = emoji_by_name(cldr)
    drawn: Counter = Counter()
    items = []
    for name in sorted(icons):
        if "skin-tone" in name:
            continue
        plain = re.sub(r"^flag-for-", "flag-", name)
        code = table.get(_slug(plain)) or table.get(_slug(re.sub(r"-\d+$", "", plain)))
        if code is None:
            continue
        drawn[code] += 1
        stem = code.lower() if drawn[code] == 1 else f"{code.lower()}-{drawn[code]}"
        items.append(Item(f"emoji/{style}", stem, iconify_svg(icons[name], icon_set), "svg",
                          cldr.captions(code, _words(name)), code, cldr.extra(code)))  # fmt: skip
    return items


def _words(name: str) -> str:
    return re.sub(r"[-_]+", " ", name).strip()


def _base(name: str) -> str:
    return re.sub(r"-(outline|fill|filled|variant)$", "", name)


def icon_captions(name: str, tags: Iterable[str], category: str = "") -> tuple[str, ...]:
    """An icon's name in words, "NAME icon", the name with up to three tags, two tags alone, "CATEGORY icon: NAME"."""
    words = _words(name)
    tags = [str(t).strip() for t in tags]
    tags = [t for t in tags if t and t.lower() != words.lower()]
    out = [words, f"{words} icon"]
    if tags:
        out.append(f"{words}, {', '.join(tags[:3])}")
    out += tags[:2]
    if category:
        out.append(f"{category.lower()} icon: {words}")
    return tuple(dict.fromkeys(out))


def _svg_items(group: str, files: Mapping[str, bytes], prefix: str, meta: Mapping[str, tuple[list[str], str]],
               style: str = "") -> list[Item]:  # fmt: skip
    items = []
    for fname in sorted(n for n in files if n.startswith(prefix) and n.endswith(".svg")):
        name = fname[len(prefix) : -4]
        if "/" in name:
            continue
        tags, category = meta.get(name, ([], ""))
        stem = f"{name}-{style}" if style else name
        items.append(Item(group, stem, files[fname], "svg", icon_captions(name, tags, category), _base(name),
                          {"category": category} if category else {}))  # fmt: skip
    return items


def read_tabler(source: Source, path: Path, cldr: Cldr) -> list[Item]:
    files = read_package(source, path, lambda n: n == "icons.json" or n.startswith(("icons/outline/", "icons/filled/")))
    meta = {k: (list(v.get("tags", [])), v.get("category", "")) for k, v in json.loads(files["icons.json"]).items()}
    return _svg_items("icons/tabler", files, "icons/outline/", meta) + _svg_items(
        "icons/tabler", files, "icons/filled/", meta, "filled"
    )


def read_mdi(source: Source, path: Path, cldr: Cldr) -> list[Item]:
    files = read_package(source, path, lambda n: n == "meta.json" or n.startswith("svg/"))
    meta = {}
    for m in json.loads(files["meta.json"]):
        if not m.get("deprecated"):
            meta[m["name"]] = ([_words(a) for a in m.get("aliases", [])], (m.get("tags") or [""])[0])
    files = {k: v for k, v in files.items() if not k.startswith("svg/") or k[4:-4] in meta}
    return _svg_items("icons/mdi", files, "svg/", meta)


def read_lucide(source: Source, path: Path, cldr: Cldr) -> list[Item]:
    files = read_package(source, path, lambda n: n == "tags.json" or n.startswith("icons/"))
    meta = {k: (list(v), "") for k, v in json.loads(files["tags.json"]).items()}
    return _svg_items("icons/lucide", files, "icons/", meta)


def read_bootstrap(source: Source, path: Path, cldr: Cldr) -> list[Item]:
    """bootstrap-icons ships no tags: the name is the caption."""
    return _svg_items("icons/bootstrap", read_package(source, path, lambda n: n.startswith("icons/")), "icons/", {})


PHOSPHOR_ICON = re.compile(r'name:\s*"([^"]+)".*?tags:\s*\[(.*?)\]', re.S)


def read_phosphor(source: Source, path: Path, cldr: Cldr) -> list[Item]:
    """@phosphor-icons/core: the regular and fill weights; tags parsed from dist/index.mjs (a literal JS array)."""
    files = read_package(source, path, lambda n: n == "dist/index.mjs" or n.startswith(("assets/regular/",
                                                                                          "assets/fill/")))  # fmt: skip
    meta: dict[str, tuple[list[str], str]] = {}
    for m in PHOSPHOR_ICON.finditer(files["dist/index.mjs"].decode("utf-8")):
        tags = [t for t in re.findall(r'"([^"]*)"', m.group(2)) if not t.startswith("*")]
        meta.setdefault(m.group(1), (tags, ""))
    fill = {f"assets/fill/{k[len('assets/fill/') :].removesuffix('-fill.svg')}.svg": v for k, v in files.items()
            if k.startswith("assets/fill/")}  # fmt: skip
    return _svg_items("icons/phosphor", files, "assets/regular/", meta) + _svg_items(
        "icons/phosphor", fill, "assets/fill/", meta, "fill"
    )


READERS: dict[str, Callable[[Source, Path, Cldr], list[Item]]] = {
    "emoji-datasource": read_emoji_datasource,
    "iconify-emoji": read_iconify_emoji,
    "openmoji": read_openmoji,
    "tabler": read_tabler,
    "mdi": read_mdi,
    "lucide": read_lucide,
    "bootstrap": read_bootstrap,
    "phosphor": read_phosphor,
}
