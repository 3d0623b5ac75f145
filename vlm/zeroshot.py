"""Zero-shot classification: any set of labels becomes a classifier over image embeddings.

Each label is put into every prompt template ("a photo of a {c}."), the prompts are embedded and L2-normalised,
averaged per label and normalised again: CLIP's prompt ensembling, exactly as clip-benchmark's
`zero_shot_classifier` computes it. Probabilities are a softmax over `logit_scale * cosine(image, class)`.

    clf = build_classifier(encoders, ["cat", "dog"], "generic")      # ZeroShotClassifier, weights (C, D)
    probs = clf.probs(encoders.encode_image(batch))                  # (N, C)
    classify(encoders, [Image.open("x.png")], "cat, dog, bird")      # [Prediction(labels, probs)]

Labels are cleaned first (`clean_labels`): surrounding and repeated whitespace is collapsed, empty entries are
dropped, and duplicates are dropped case-insensitively, because CLIP's tokenizer lower-cases (so "Cat" and "cat"
would get the same embedding and split the probability between them). A prompt longer than the text tower's
context is cut by the tokenizer; the classifier lists the labels affected in `truncated` and logs a warning.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from vlm import templates as template_sets
from vlm.errors import ConfigError
from vlm.models import Encoders

LOG = logging.getLogger(__name__)

DEFAULT_TEMPLATES = "generic"
LABEL_SEPARATORS = re.compile(r"[,\n]")


# ---------------------------------------------------------------------------------------------------------------
# Labels.


class CleanLabels(NamedTuple):
    labels: tuple[str, ...]  # usable labels, in the order given
    duplicates: tuple[str, ...]  # entries dropped because an earlier one equals them (ignoring case)
    empty: int  # entries dropped because they held only whitespace


def parse_labels(text: str) -> list[str]:
    """Split a user's "cat, dog, bird" (commas or newlines) into raw entries; `clean_labels` tidies them."""
    if not isinstance(text, str):
        raise ConfigError(f"labels must be a string such as 'cat, dog', got {type(text).__name__}")
    return LABEL_SEPARATORS.split(text)


def clean_labels(labels: str | Sequence[str], *, strict: bool = False) -> CleanLabels:
    """Collapse whitespace, drop empty entries and case-insensitive duplicates (first spelling kept).

    A string is split on commas and newlines first. With `strict` (class names of a dataset, where dropping one
    would shift the class ids) an empty entry or a duplicate raises `ConfigError` instead. Raises `ConfigError`
    when no usable label is left.
    """
    raw = parse_labels(labels) if isinstance(labels, str) else labels
    if not isinstance(raw, Sequence):
        raise ConfigError(f"labels must be a string or a list of strings, got {type(labels).__name__}")
    kept: dict[str, str] = {}
    duplicates: list[str] = []
    empty = 0
    for i, item in enumerate(raw):
        if not isinstance(item, str):
            raise ConfigError(f"label {i} is not a string: {item!r}")
        label = " ".join(item.split())
        if not label:
            empty += 1
            if strict:
                raise ConfigError(f"label {i} is empty; every class needs a name")
            continue
        key = label.casefold()
        if key in kept:
            if strict:
                raise ConfigError(
                    f"label {i} {label!r} repeats {kept[key]!r} (labels are compared ignoring case, as CLIP's "
                    f"tokenizer lower-cases); give each class a distinct name"
                )
            duplicates.append(label)
            continue
        kept[key] = label
    if not kept:
        raise ConfigError(
            f"no usable labels in {labels!r}: give one or more class names separated by commas, e.g. 'cat, dog, bird'"
        )
    if duplicates:
        LOG.warning("dropped %d duplicate label(s): %s", len(duplicates), duplicates[:10])
    return CleanLabels(tuple(kept.values()), tuple(duplicates), empty)


# ---------------------------------------------------------------------------------------------------------------
# The classifier.


@dataclass(frozen=True, eq=False)  # compared by identity: tensors have no single truth value
class ZeroShotClassifier:
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    weights: torch.Tensor  # (C, D) float32 on CPU, rows L2-normalised: one ensembled text embedding per label
    logit_scale: float  # the model's learned inverse temperature
    fingerprint: str  # of the model that embedded the prompts
    truncated: tuple[str, ...]  # labels with at least one prompt cut by the tokenizer's context length

    def similarity(self, image_emb: torch.Tensor) -> torch.Tensor:
        """(N, D) L2-normalised image embeddings -> (N, C) cosine similarities, float32 on CPU."""
        return image_emb.detach().float().cpu() @ self.weights.T

    def logits(self, image_emb: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C): `logit_scale * cosine`, the model's own logits."""
        return self.logit_scale * self.similarity(image_emb)

    def probs(self, image_emb: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C) class probabilities (each row sums to 1)."""
        return self.logits(image_emb).softmax(dim=1)


CacheKey = tuple[str, str, tuple[str, ...], tuple[str, ...]]


class ClassifierCache:
    """A thread-safe LRU of classifiers keyed by (model fingerprint, precision, labels, templates).

    Bounded both by entry count and by the bytes of the weights it holds (1,000 labels x 512 dims = 2 MB).
    """

    def __init__(self, max_entries: int = 64, max_bytes: int = 512 * 2**20):
        if max_entries < 1 or max_bytes < 1:
            raise ConfigError(f"cache bounds must be positive, got max_entries={max_entries}, max_bytes={max_bytes}")
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: OrderedDict[Hashable, ZeroShotClassifier] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> ZeroShotClassifier | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return found

    def put(self, key: Hashable, clf: ZeroShotClassifier) -> None:
        size = clf.weights.element_size() * clf.weights.nelement()
        with self._lock:
            if key in self._items:
                old = self._items.pop(key)
                self._bytes -= old.weights.element_size() * old.weights.nelement()
            self._items[key] = clf
            self._bytes += size
            while len(self._items) > 1 and (len(self._items) > self.max_entries or self._bytes > self.max_bytes):
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.weights.element_size() * evicted.weights.nelement()


def cache_key(encoders: Encoders, labels: Sequence[str], templates: Sequence[str]) -> CacheKey:
    return (encoders.fingerprint, encoders.precision, tuple(labels), tuple(templates))


def _token_count(tokenizer: Callable, text: str) -> int | None:
    """Tokens the tokenizer would need for `text` without truncation (special tokens included), if it can say."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):  # open_clip's CLIP BPE tokenizer
        return len(tokenizer.encode(text)) + 2
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's wrappers around Hugging Face tokenizers
    if callable(inner):
        return len(inner(text)["input_ids"])
    return None


def _truncated_rows(tokenizer: Callable, prompts: Sequence[str], tokens: torch.Tensor) -> list[int]:
    """Rows of `tokens` (N, context) whose prompt did not fit the context."""
    context = tokens.shape[1]
    # CLIP BPE pads with 0: a prompt that fits leaves the last column 0 unless it fills it exactly.
    candidates = (tokens[:, -1] != 0).nonzero().flatten().tolist() if hasattr(tokenizer, "sot_token_id") else None
    rows = range(len(prompts)) if candidates is None else candidates
    out = []
    for r in rows:
        n = _token_count(tokenizer, prompts[r])
        if n is not None and n > context:
            out.append(r)
    return out


@torch.no_grad()
def _ensemble(
    encoders: Encoders, labels: Sequence[str], templates: Sequence[str], batch_size: int, progress: bool
) -> tuple[torch.Tensor, list[str]]:
    """(C, D) ensembled, normalised class embeddings; prompts are embedded about `batch_size` at a time."""
    per_chunk = max(1, batch_size // len(templates))  # labels per forward pass
    rows, truncated = [], []
    for start in tqdm(range(0, len(labels), per_chunk), desc="embed labels", disable=not progress):
        chunk = labels[start : start + per_chunk]
        prompts = [t.format(c=label) for label in chunk for t in templates]
        tokens = encoders.tokenize(prompts)  # (n * T, context)
        for r in _truncated_rows(encoders.tokenizer, prompts, tokens):
            truncated.append(chunk[r // len(templates)])
        emb = encoders.encode_text(tokens).cpu()  # (n * T, D), float32, L2-normalised
        mean = emb.view(len(chunk), len(templates), -1).mean(dim=1)  # (n, D)
        rows.append(F.normalize(mean, dim=-1))
    return torch.cat(rows), list(dict.fromkeys(truncated))


def build_classifier(
    encoders: Encoders,
    labels: str | Sequence[str],
    templates: str | Sequence[str] | None = None,
    *,
    batch_size: int = 256,
    cache: ClassifierCache | None = None,
    progress: bool = False,
    template_files: bool = True,
) -> ZeroShotClassifier:
    """Class weights for `labels` (cleaned strictly: an empty or duplicate label is an error, so label i stays
    class i) with `templates` (a set name, a JSON file, one template with `{c}`, or a list; default "generic").
    `template_files=False` for text from the web: a set name or a literal template, never a file."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    labels = clean_labels(labels, strict=True).labels
    templates = template_sets.resolve(templates, DEFAULT_TEMPLATES, files=template_files)
    key = cache_key(encoders, labels, templates)
    if cache is not None and (found := cache.get(key)) is not None:
        return found
    weights, truncated = _ensemble(encoders, labels, templates, batch_size, progress)
    if truncated:
        LOG.warning(
            "%d label(s) made prompts longer than the model's %d-token context; the tokenizer cut them: %s",
            len(truncated),
            encoders.context_length,
            [t[:60] + ("..." if len(t) > 60 else "") for t in truncated[:5]],
        )
    clf = ZeroShotClassifier(labels, templates, weights, encoders.logit_scale, encoders.fingerprint, tuple(truncated))
    if cache is not None:
        cache.put(key, clf)
    return clf


# ---------------------------------------------------------------------------------------------------------------
# Images to probabilities.


class Prediction(NamedTuple):
    labels: tuple[str, ...]  # the top-k labels, most probable first
    probs: tuple[float, ...]  # their probabilities (over all labels, not renormalised over the top k)


@torch.no_grad()
def embed_images(encoders: Encoders, images: Sequence[Image.Image], batch_size: int = 64) -> torch.Tensor:
    """PIL images -> (N, D) float32 L2-normalised embeddings on CPU."""
    if not images:
        return torch.zeros(0, encoders.embed_dim)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack([encoders.preprocess(im.convert("RGB")) for im in images[start : start + batch_size]])
        chunks.append(encoders.encode_image(batch).cpu())
    return torch.cat(chunks)


def top_k(probs: torch.Tensor, labels: Sequence[str], k: int) -> list[Prediction]:
    """(N, C) probabilities -> the k best labels of each row (k is capped at C)."""
    if k < 1:
        raise ConfigError(f"top-k must be >= 1, got {k}")
    values, indices = probs.topk(min(k, probs.shape[1]), dim=1)
    return [
        Prediction(tuple(labels[i] for i in idx), tuple(float(v) for v in vals))
        for vals, idx in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def classify(
    encoders: Encoders,
    images: Sequence[Image.Image],
    labels: str | Sequence[str],
    templates: str | Sequence[str] | None = None,
    *,
    k: int = 5,
    batch_size: int = 64,
    cache: ClassifierCache | None = None,
) -> list[Prediction]:
    """The `k` most probable labels for each image. Labels are cleaned leniently (see `clean_labels`)."""
    clean = clean_labels(labels)
    clf = build_classifier(encoders, clean.labels, templates, cache=cache)
    return top_k(clf.probs(embed_images(encoders, images, batch_size)), clf.labels, k)


def describe(clf: ZeroShotClassifier) -> dict[str, Any]:
    """A JSON-ready summary (without the weights)."""
    return {
        "labels": len(clf.labels),
        "templates": list(clf.templates),
        "logit_scale": clf.logit_scale,
        "fingerprint": clf.fingerprint,
        "truncated_labels": list(clf.truncated),
    }
