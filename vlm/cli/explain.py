"""`vlm explain IMAGE TEXT --out heat.png`: where in the image the text matches (a heat map), and how well."""

from __future__ import annotations

import argparse
import json

from vlm.cli.options import add_model_options, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="why an image matches a text: a heat map of where it matches, and their cosine similarity",
        description="The heat map comes from training-free dense matching (ClearCLIP on ViTs, MaskCLIP on "
        "ResNets) with the same model; the similarity is the one search and classification rank by. As the app's "
        "'Why it matched' tab.",
    )
    p.add_argument("image", help="image file")
    p.add_argument("text", help="the text, e.g. 'a red circle'")
    p.add_argument("--out", default="heat.png", help="the image with the heat map over it (default: heat.png)")
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from vlm.atomic import atomic_write_with
    from vlm.segment import load_image
    from vlm.segment.absent import absent_threshold
    from vlm.segment.explain import explain

    image = load_image(args.image)  # a DataError names a bad file, before the model loads
    encoders = load_model(args)
    found = explain(encoders, image, args.text, absent_threshold(encoders))
    atomic_write_with(args.out, lambda tmp: found.picture.save(tmp, format="PNG"))
    summary = {
        "out": str(args.out),
        "text": args.text,
        "similarity": round(found.similarity, 6),
        "max_heat": round(found.peak, 4),
        "score": round(found.score, 4),  # the peak log-odds against the background prompts
        "presence": round(found.presence, 4),  # against background and colour/shape words, on a coarser pass
        "absent_threshold": round(found.absent.threshold, 4),
        "not_found": found.not_found,
        "share_above_half": round(float((found.heat >= 0.5).mean()), 4),
    }
    print(json.dumps(summary, indent=2))
