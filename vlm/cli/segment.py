"""`vlm segment IMAGE PHRASE [PHRASE ...] --out overlay.png`: a mask per phrase, drawn over the image.

The options shared with `vlm eval segmentation` (model, method, decoder, threshold, background, tiling) are defined
here once: `add_segment_options`, `load_encoders_and_decoder` and `segment_kwargs`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vlm.cli.options import add_model_options, model_given, model_options


def add_segment_options(p: argparse.ArgumentParser) -> None:
    add_model_options(p)  # --model: default the decoder's own encoder (for --method decoder), else demo
    p.add_argument("--method", choices=["dense", "decoder"], default="dense", help="training-free or learned decoder")
    p.add_argument("--decoder", help="decoder directory written by `vlm train-seg` (its final/ folder)")
    p.add_argument("--threshold", type=float, default=0.5, help="heat at or above which a pixel is in (default 0.5)")
    p.add_argument("--exclusive", action="store_true", help="each pixel in at most one phrase's mask")
    p.add_argument("--background", nargs="*", help="competing prompts of the dense method (default: a built-in set)")
    p.add_argument("--template", action="append", help="prompt template with {} (repeatable; default: the phrase)")
    p.add_argument("--window", type=int, help="dense: sliding-window side in pixels (default: the model's input)")
    p.add_argument("--stride", type=int, help="dense: window stride (default: window / 2)")
    p.add_argument("--short-side", type=int, help="dense: resize the image's short side to this (default: 2 x window)")
    p.add_argument("--logit-scale", type=float, help="dense: softmax temperature (default: the model's own)")


def load_encoders_and_decoder(args: argparse.Namespace):
    """The encoder named by --model (or the decoder's own), and the decoder for --method decoder."""
    from vlm.errors import ConfigError
    from vlm.models import load
    from vlm.segment.decoder import load_decoder, read_decoder_config

    opts = model_options(args)
    model, pretrained = opts.model, opts.pretrained
    if args.method == "decoder":
        if not args.decoder:
            raise ConfigError("--method decoder needs --decoder DIR (a decoder trained with `vlm train-seg`)")
        if not model_given(args):
            record = read_decoder_config(args.decoder)["encoder"]
            model, pretrained = record["model"], record.get("pretrained")
    encoders = load(model, pretrained, device=opts.device, precision=opts.precision)
    decoder = load_decoder(args.decoder, encoders) if args.method == "decoder" else None
    return encoders, decoder


def segment_kwargs(args: argparse.Namespace, decoder: Any) -> dict[str, Any]:
    from vlm.segment import BACKGROUND_PROMPTS, DenseConfig

    kwargs: dict[str, Any] = {"threshold": args.threshold, "exclusive": args.exclusive}
    if args.method == "decoder":
        return {**kwargs, "decoder": decoder}
    cfg = DenseConfig(window=args.window, stride=args.stride, short_side=args.short_side)
    kwargs |= {"dense_config": cfg, "logit_scale": args.logit_scale}
    kwargs["background"] = tuple(args.background) if args.background is not None else BACKGROUND_PROMPTS
    if args.template:
        kwargs["templates"] = tuple(args.template)
    return kwargs


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment an image by text phrases: one mask per phrase, drawn over the image",
        description="Masks at the image's own resolution: training-free (ClearCLIP) on any ViT, or a decoder "
        "trained with `vlm train-seg`.",
    )
    p.add_argument("image", help="image file")
    p.add_argument("phrases", nargs="+", help="one or more phrases, e.g. 'the red circle'")
    p.add_argument("--out", default="overlay.png", help="overlay PNG to write (default: overlay.png)")
    p.add_argument("--masks-dir", help="also write each mask (0/255 PNG) and heat map here")
    add_segment_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from vlm.atomic import atomic_write_with
    from vlm.segment import heatmap_image, load_image, segment
    from vlm.segment.data import slug

    encoders, decoder = load_encoders_and_decoder(args)
    image = load_image(args.image)
    result = segment(encoders, image, args.phrases, method=args.method, **segment_kwargs(args, decoder))
    picture = result.overlay(image)
    atomic_write_with(args.out, lambda tmp: picture.save(tmp, format="PNG"))
    summary: dict[str, Any] = {"overlay": str(args.out), "method": result.method, "phrases": []}
    for i, phrase in enumerate(result.phrases):
        entry = {
            "phrase": phrase,
            "mask_fraction": round(float(result.masks[i].mean()), 4),
            "max_heat": round(float(result.heatmaps[i].max()), 4),
            "truncated": result.truncated[i],
        }
        if args.masks_dir:
            from PIL import Image

            stem = Path(args.masks_dir) / f"{i:02d}_{slug(phrase)}"
            mask = Image.fromarray(result.masks[i].astype("uint8") * 255)
            heat = heatmap_image(result.heatmaps[i])
            atomic_write_with(f"{stem}_mask.png", lambda tmp, m=mask: m.save(tmp, format="PNG"))
            atomic_write_with(f"{stem}_heat.png", lambda tmp, h=heat: h.save(tmp, format="PNG"))
            entry["mask"] = f"{stem}_mask.png"
        summary["phrases"].append(entry)
    print(json.dumps(summary, indent=2))
