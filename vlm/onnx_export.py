"""Export a model's image and text towers to ONNX, for fast CPU embedding through ONNX Runtime (`vlm.onnx_runtime`).

    folder = export(load("runs/x/final"), default_folder("runs/x/final"))   # runs/x/final/onnx/
    vlm export onnx runs/x/final                                          # the same from the command line

The folder holds `image.onnx` ((B, 3, H, W) float32 normalised pixels -> (B, D) unnormalised features), `text.onnx`
((B, context) int64 token ids -> (B, D)), both with a dynamic batch axis, optionally `image.int8.onnx` and
`text.int8.onnx` (dynamic int8 quantisation of the weights), and `onnx.json`: the fingerprint of the weights that were
exported, the model's sizes, and how closely the export reproduced PyTorch on a check batch. Embeddings of the fp32
files are the model's own (the export is refused unless every check vector has cosine >= `MIN_COSINE` with PyTorch's),
so they keep the model's fingerprint; int8 files compute something slightly different and get a fingerprint of their
own (`int8_fingerprint`), so a collection never mixes the two silently.

The folder is written whole beside its destination and moved into place (`vlm.atomic.atomic_dir`): a failed export
leaves the previous one, or nothing. "Next to the model" (`default_folder`) is `onnx/` inside a checkpoint folder and
`<weights stem>-onnx/` beside a weights file; models named by architecture or hub id have no such place (pass --out
and --onnx).

Exporting uses PyTorch's TorchScript-based exporter (`dynamo=False`), which needs only the `onnx` package; the
torch.export-based one would also need `onnxscript`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlm.atomic import atomic_dir, atomic_write_json
from vlm.errors import ModelError
from vlm.models import Encoders, TextEncoder, evaluating

MANIFEST_NAME = "onnx.json"
FORMAT = "vlm-onnx"
VERSION = 1
FILES = {"image": "image.onnx", "text": "text.onnx"}
INT8_FILES = {"image": "image.int8.onnx", "text": "text.int8.onnx"}
MIN_COSINE = 0.9999  # each check vector against PyTorch's; below it the export is refused
OPSET = 17
CHECK_TEXTS = ("a photo of a dog", "a red circle next to a blue square", "")


def int8_fingerprint(fingerprint: str) -> str:
    """The identity of int8-quantised embeddings of the model with weights `fingerprint`."""
    return f"{fingerprint}-int8"


def default_folder(model: str, pretrained: str | None = None) -> Path | None:
    """Where the export of this model lives "next to the model", or None when the model has no folder of its own."""
    if not model:  # not loaded by `vlm.models.load` (Encoders.loaded_from's default)
        return None
    if model == "demo":
        from vlm.models import DEMO_CHECKPOINT

        return DEMO_CHECKPOINT / "onnx"
    if model.startswith("local-dir:"):
        model = model[len("local-dir:") :]
    path = Path(model).expanduser()
    if path.is_dir():
        return path / "onnx"
    if pretrained and Path(pretrained).expanduser().is_file():
        weights = Path(pretrained).expanduser()
        return weights.with_name(f"{weights.stem}-onnx")
    return None


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The export's `onnx.json`; `ModelError` naming the folder when it is missing or unreadable."""
    path = Path(folder) / MANIFEST_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelError(f"{folder} holds no ONNX export ({MANIFEST_NAME} is missing)") from e
    except (OSError, ValueError) as e:
        raise ModelError(f"unreadable {path} ({e}); export the model again (vlm export onnx)") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("version") != VERSION:
        raise ModelError(f"{path} is not a {FORMAT} v{VERSION} manifest; export the model again (vlm export onnx)")
    return record


def check_batch(encoders: Encoders, batch: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, tokens): the inputs an export is checked on. Pixels look like preprocessed images (standard normal)."""
    size = encoders.image_size
    h, w = (size, size) if isinstance(size, int) else size
    pixels = torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))
    return pixels, encoders.tokenize(CHECK_TEXTS)


def export(encoders: Encoders, out: str | Path, *, quantize: bool = False, opset: int = OPSET) -> Path:
    """Write the ONNX export of `encoders` to the folder `out` (replacing an earlier export there); returns it.

    Raises `ModelError` when `out` cannot be written, is a folder that is not an export, or when the exported graph
    does not reproduce PyTorch (cosine < `MIN_COSINE` on the check batch)."""
    from vlm.onnx_runtime import open_session, run_session

    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file())):
        raise ModelError(f"{out} exists and is not an ONNX export; choose an empty or new folder for --out")
    model = encoders.model
    if encoders.device.type != "cpu" or any(p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float().cpu()  # the encoders keep their own device and precision
    pixels, tokens = check_batch(encoders)
    towers: dict[str, tuple[nn.Module, torch.Tensor, str]] = {
        "image": (model.visual, pixels, "pixels"),
        "text": (TextEncoder(model), tokens, "tokens"),
    }
    checked: dict[str, float] = {}
    try:
        with evaluating(model), atomic_dir(out) as tmp:
            for tower, (module, example, input_name) in towers.items():
                path = tmp / FILES[tower]
                _export_tower(module, example, input_name, path, opset)
                with torch.no_grad():
                    want = module(example).float().numpy()
                got = run_session(open_session(path, threads=1), example.numpy())
                checked[f"{tower}_min_cosine"] = _min_cosine(want, got)
                if checked[f"{tower}_min_cosine"] < MIN_COSINE:
                    raise ModelError(
                        f"the exported {tower} tower does not reproduce PyTorch (cosine "
                        f"{checked[f'{tower}_min_cosine']:.6f} < {MIN_COSINE}); the model uses an operation the "
                        f"ONNX exporter translates differently. Keep --runtime torch for it"
                    )
                if quantize:
                    _quantize(path, tmp / INT8_FILES[tower])
                    got8 = run_session(open_session(tmp / INT8_FILES[tower], threads=1), example.numpy())
                    checked[f"{tower}_int8_min_cosine"] = _min_cosine(want, got8)
            atomic_write_json(tmp / MANIFEST_NAME, _manifest(encoders, opset, checked, quantize))
    except OSError as e:
        raise ModelError(f"cannot write the ONNX export to {out}: {e.strerror or e}") from e
    return out


def _export_tower(module: nn.Module, example: torch.Tensor, input_name: str, path: Path, opset: int) -> None:
    # Traced with gradients on: under no_grad nn.MultiheadAttention takes its fused fast path, which has no ONNX op.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[input_name],
            output_names=["features"],
            dynamic_axes={input_name: {0: "batch"}, "features": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )


def _quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # it logs a "consider pre-processing" hint on the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    for leftover in dst.parent.glob("*-opt.onnx"):  # older onnxruntime versions leave a pre-processed copy
        os.unlink(leftover)


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float(np.min(np.sum(a * b, axis=1)))


def _manifest(encoders: Encoders, opset: int, checked: dict[str, float], quantize: bool) -> dict[str, Any]:
    import onnx

    size = encoders.image_size
    return {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": encoders.fingerprint,
        "int8_fingerprint": int8_fingerprint(encoders.fingerprint) if quantize else None,
        "model_name": encoders.model_name,
        "source": encoders.source,
        "embed_dim": encoders.embed_dim,
        "image_size": [size, size] if isinstance(size, int) else list(size),
        "context_length": encoders.context_length,
        "files": dict(FILES),
        "int8_files": dict(INT8_FILES) if quantize else None,
        "checked": {k: round(v, 7) for k, v in checked.items()},
        "opset": opset,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }
