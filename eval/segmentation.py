"""Referring-segmentation evaluation: mask metrics (pure functions), a runner, and a JSON + Markdown + PNG report.

Metrics (the names used by the RefCOCO literature, e.g. LAVT and CRIS):
    mIoU             mean over samples of |pred & gt| / |pred | gt|
    oIoU             overall IoU: sum of intersections / sum of unions over all samples (big objects weigh more)
    precision@t      share of samples with IoU >= t, for t in 0.5, 0.7, 0.9
A sample whose prediction and ground truth are both empty has IoU 1 (nothing to find, nothing found).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from vlm.atomic import atomic_write_json, atomic_write_text, atomic_write_with
from vlm.models import Encoders
from vlm.segment import segment
from vlm.segment.data import SegSample, load_pair, slug
from vlm.segment.decoder import SegDecoder
from vlm.segment.overlay import heatmap_image, overlay

LOG = logging.getLogger(__name__)

THRESHOLDS = (0.5, 0.7, 0.9)


# -- metrics --------------------------------------------------------------------------------------------------


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Pixel counts |pred & gt| and |pred | gt| of two bool masks of the same shape."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    pred, gt = pred.astype(bool), gt.astype(bool)
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def ious(intersections: Sequence[int], unions: Sequence[int]) -> np.ndarray:
    """Per-sample IoU (N,) float64; 1 where the union is empty."""
    inter = np.asarray(intersections, dtype=np.float64)
    union = np.asarray(unions, dtype=np.float64)
    return np.divide(inter, union, out=np.ones_like(inter), where=union > 0)


def segmentation_metrics(
    intersections: Sequence[int], unions: Sequence[int], thresholds: Sequence[float] = THRESHOLDS
) -> dict[str, float]:
    """mIoU, oIoU and precision@t from per-sample intersection and union pixel counts."""
    if len(intersections) != len(unions):
        raise ValueError(f"{len(intersections)} intersections but {len(unions)} unions")
    if not len(unions):
        raise ValueError("no samples to score")
    iou = ious(intersections, unions)
    total_union = float(np.sum(unions, dtype=np.float64))
    out = {
        "mIoU": float(iou.mean()),
        "oIoU": float(np.sum(intersections, dtype=np.float64) / total_union) if total_union else 1.0,
    }
    for t in thresholds:
        out[f"precision@{t:g}"] = float(np.mean(iou >= t))
    out["samples"] = len(iou)
    return out


# -- running --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class SegEvalResult:
    metrics: dict[str, float]
    rows: list[dict[str, Any]]  # one per sample: key, image, phrase, iou, intersection, union, areas
    examples: list[dict[str, Any]]  # the first few samples' image, prediction, heat map and truth, for pictures
    settings: dict[str, Any]


def _by_image(samples: Sequence[SegSample]) -> dict[str, list[SegSample]]:
    groups: dict[str, list[SegSample]] = {}
    for s in samples:
        groups.setdefault(s.group, []).append(s)
    return groups


def evaluate_segmentation(
    encoders: Encoders,
    samples: Sequence[SegSample],
    *,
    method: str = "dense",
    examples: int = 0,
    progress: bool = False,
    **segment_kwargs: Any,
) -> SegEvalResult:
    """Segment every sample's phrase and score it against its mask; each image is segmented once with all of its
    phrases. `segment_kwargs` go to `vlm.segment.segment` (decoder=, threshold=, exclusive=, background=, ...)."""
    rows: list[dict[str, Any]] = []
    kept: list[dict[str, Any]] = []
    groups = _by_image(samples)
    for group in tqdm(groups.values(), desc=f"segment ({method})", unit="image", disable=not progress):
        image = group[0].image.open()
        result = segment(encoders, image, [s.phrase for s in group], method=method, **segment_kwargs)
        for k, sample in enumerate(group):
            _, gt = load_pair(sample)
            inter, union = intersection_union(result.masks[k], gt)
            rows.append(
                {
                    "key": sample.key,
                    "image": sample.image.describe(),
                    "phrase": sample.phrase,
                    "iou": float(ious([inter], [union])[0]),
                    "intersection": inter,
                    "union": union,
                    "pred_area": int(result.masks[k].sum()),
                    "gt_area": int(gt.sum()),
                    "truncated": result.truncated[k],
                }
            )
            if len(kept) < examples:
                kept.append(
                    {"image": image, "phrase": sample.phrase, "pred": result.masks[k], "heat": result.heatmaps[k]}
                    | {"gt": gt, "iou": rows[-1]["iou"]}
                )
    metrics = segmentation_metrics([r["intersection"] for r in rows], [r["union"] for r in rows])
    settings = {"method": method, **{k: _jsonable(v) for k, v in segment_kwargs.items()}}
    return SegEvalResult(metrics, rows, kept, settings)


def validate_decoder(encoders: Encoders, samples: Sequence[SegSample], decoder: SegDecoder) -> dict[str, float]:
    """The decoder trainer's validation (`vlm.segment.train.train_decoder(validate=...)`): IoU metrics on `samples`."""
    result = evaluate_segmentation(encoders, samples, method="decoder", decoder=decoder)
    return {k: v for k, v in result.metrics.items() if k != "samples"}


def _jsonable(value: Any) -> Any:
    spec = getattr(value, "spec", None)  # a SegDecoder: its shape, not its repr
    if spec is not None and hasattr(spec, "to_json"):
        return spec.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


# -- reporting ------------------------------------------------------------------------------------------------


def example_picture(example: dict[str, Any]) -> Image.Image:
    """Ground truth | prediction | heat map, side by side, each at the image's size."""
    image = example["image"]
    truth = overlay(image, example["gt"][None], ["truth: " + example["phrase"]])
    pred = overlay(image, example["pred"][None], [f"IoU {example['iou']:.2f}"])
    heat = heatmap_image(example["heat"])
    w, h = image.size
    canvas = Image.new("RGB", (3 * w + 8, h), (255, 255, 255))
    for i, part in enumerate((truth, pred, heat)):
        canvas.paste(part, (i * (w + 4), 0))
    return canvas


def write_report(
    result: SegEvalResult, out_dir: str | Path, *, data: str, model: dict[str, Any], title: str | None = None
) -> dict[str, Path]:
    """segmentation.json, segmentation.md and examples/NN_<phrase>.png under `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pictures = []
    for i, ex in enumerate(result.examples):
        path = out / "examples" / f"{i:02d}_{slug(ex['phrase'])}.png"
        picture = example_picture(ex)
        atomic_write_with(path, lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
        pictures.append(path)
    record = {
        "task": "segmentation",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": data,
        "model": model,
        "settings": result.settings,
        "metrics": result.metrics,
        "samples": result.rows,
        "examples": [str(p.relative_to(out)) for p in pictures],
    }
    json_path, md_path = out / "segmentation.json", out / "segmentation.md"
    atomic_write_json(json_path, record)
    atomic_write_text(md_path, _markdown(record, title or f"Segmentation: {data}"))
    return {"json": json_path, "markdown": md_path, **{f"example_{i}": p for i, p in enumerate(pictures)}}


def _markdown(record: dict[str, Any], title: str) -> str:
    m = record["metrics"]
    lines = [
        f"# {title}",
        "",
        f"Model: {record['model'].get('source', record['model'])}; method: {record['settings']['method']}; "
        f"{m['samples']} samples; {record['date']}.",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(f"| {k} | {v:.4f} |" for k, v in m.items() if k != "samples"),
        "",
        "## Samples",
        "",
        "| image | phrase | IoU | predicted px | true px |",
        "| --- | --- | --- | --- | --- |",
    ]
    rows = record["samples"]
    lines += [
        f"| {r['image']} | {r['phrase']} | {r['iou']:.3f} | {r['pred_area']} | {r['gt_area']} |" for r in rows[:200]
    ]
    if len(rows) > 200:
        lines.append(f"| ... {len(rows) - 200} more in segmentation.json | | | | |")
    if record["examples"]:
        lines += ["", "## Examples (truth | prediction | heat map)", ""]
        lines += [f"![{p}]({p})" for p in record["examples"]]
    return "\n".join(lines) + "\n"
