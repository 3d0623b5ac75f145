"""`vlm wise-ft BASE FINETUNED`: weight-space ensembles of a model and its fine-tune (WiSE-FT), scored and exported.

Everything is checked before any model loads: the α values, the pick rule, both score sets (read in full), the
output folder. Then the two models load (refused when their architectures differ), every α is scored on both sets,
and OUT receives `wise_ft.json` (the sweep), `frontier.png` (your-data score against reference score, one point per
α) and `model/`, the picked α as a checkpoint folder (`vlm.checkpoint`; open_clip loads its `model.safetensors`).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from vlm import config

DEFAULT_ALPHAS = "0,0.1,...,1"  # as vlm.wiseft.DEFAULT_ALPHAS (not imported here: it loads torch)


@dataclasses.dataclass
class WiseFTOptions:
    """The sweep's flags (`vlm wise-ft`); the models and the sets are the command's own arguments."""

    alphas: str = dataclasses.field(
        default=DEFAULT_ALPHAS, metadata={"help": "α values in [0, 1]: '0,0.3,0.5' or a run 'first,second,...,last'"}
    )
    pick: str = dataclasses.field(
        default="best-sum",
        metadata={"help": "best-sum (highest your-data + reference score) or min-reference=X (best your-data score "
                  "with the reference score at least X)"},
    )  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "wise-ft",
        help="interpolate a fine-tune with its base model (WiSE-FT): score each α, draw the frontier, export one",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("base", help="the model the fine-tune started from ('demo', a checkpoint folder, ...)")
    p.add_argument("finetuned", help="the fine-tuned checkpoint folder (e.g. runs/ft/final)")
    p.add_argument("--base-pretrained", metavar="TAG", help="pretrained tag or weights file when BASE is an open_clip "
                   "architecture (e.g. ViT-B-32 --base-pretrained laion2b_s34b_b79k)")  # fmt: skip
    p.add_argument("--val", required=True, metavar="DATA",
                   help="your data, held out: [zeroshot:|retrieval:]PATH (labelled images -> zero-shot top-1, "
                   "image-caption pairs -> text->image R@5)")  # fmt: skip
    p.add_argument("--reference", required=True, metavar="DATA",
                   help="what the base model knew, in the same form as --val")  # fmt: skip
    p.add_argument("--out", required=True, help="folder for wise_ft.json, frontier.png and model/ (the picked α)")
    config.add_arguments(p, WiseFTOptions)
    config.add_arguments(p, config.ModelOptions, exclude=("model", "pretrained"))
    p.add_argument("--templates", help="zero-shot template set, JSON file or one template with {c} (default: generic)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default: 0)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from eval.scorers import read_score_set
    from vlm import wiseft
    from vlm.atomic import atomic_write_bytes, atomic_write_json
    from vlm.templates import resolve

    given = config.overrides_from_args(args)  # both dataclasses' flags share one namespace
    opts, model_opts = (
        config.from_dict(cls, {k: v for k, v in given.items() if k in {f.name for f in dataclasses.fields(cls)}})
        for cls in (WiseFTOptions, config.ModelOptions)
    )
    alphas = wiseft.parse_alphas(opts.alphas)
    wiseft.check_pick_rule(opts.pick)
    templates = resolve(args.templates)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise config.ConfigError(f"--out {out} is a file, not a folder")
    sets = {
        "val": read_score_set(args.val, templates=templates, batch_size=args.batch_size, workers=args.workers),
        "reference": read_score_set(args.reference, templates=templates, batch_size=args.batch_size,
                                    workers=args.workers),
    }  # fmt: skip
    for name, s in sets.items():
        print(f"{name}: {s.describe()}")
    pair = wiseft.WiseFT.load(args.base, args.finetuned, base_pretrained=args.base_pretrained,
                              device=model_opts.device, precision=model_opts.precision)  # fmt: skip
    points = pair.sweep(alphas, {name: s.score for name, s in sets.items()}, progress=print)
    chosen = wiseft.pick(points, opts.pick)
    print(wiseft.table(points, chosen))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "wise_ft.json", wiseft.to_dict(points, chosen, pair.names, opts.pick))
    png = wiseft.frontier_png(
        points, chosen, labels=(f"your data: {sets['val'].metric}", f"reference: {sets['reference'].metric}")
    )
    atomic_write_bytes(out / "frontier.png", png)
    model_dir = pair.export(chosen.alpha, out / "model", scores=chosen.scores)
    print(f"picked α={chosen.alpha:g} ({opts.pick}); wrote {out / 'wise_ft.json'}, {out / 'frontier.png'}, {model_dir}")
