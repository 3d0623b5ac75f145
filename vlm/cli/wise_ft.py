"""`vlm wise-ft BASE FINETUNED`: weight-space ensembles of a model and its fine-tune (WiSE-FT), scored and exported.

Everything is checked before any model loads: the α values, the pick rule, both score sets (read in full), the
output folder. Then the two models load (refused when their architectures differ), every α is scored on both sets,
and OUT receives `wise_ft.json` (the sweep), `frontier.png` (your-data score against reference score, one point per
α) and `model/`, the picked α as a checkpoint folder (`vlm.checkpoint`; open_clip loads its `model.safetensors`).

`vlm wise-ft --run RUN` does the same for a finished fine-tune run of `vlm train` (`eval.wise_run`): the base is the
model it started from, the fine-tune its final/, your data the pairs it held out, the reference its reference sets;
everything goes into RUN/wise_ft/ (the picked α as alpha-<α>/), and a sweep already there is read back.
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
    p.add_argument("base", nargs="?", help="the model the fine-tune started from ('demo', a checkpoint folder, ...)")
    p.add_argument("finetuned", nargs="?", help="the fine-tuned checkpoint folder (e.g. runs/ft/final)")
    p.add_argument("--run", dest="run_dir", metavar="RUN", help="a finished fine-tune run of `vlm train` instead "
                   "of BASE FINETUNED --val --reference --out (its own sets; output in RUN/wise_ft/)")  # fmt: skip
    p.add_argument("--base-pretrained", metavar="TAG", help="pretrained tag or weights file when BASE is an open_clip "
                   "architecture (e.g. ViT-B-32 --base-pretrained laion2b_s34b_b79k)")  # fmt: skip
    p.add_argument("--val", metavar="DATA",
                   help="your data, held out: [zeroshot:|retrieval:]PATH (labelled images -> zero-shot top-1, "
                   "image-caption pairs -> text->image R@5)")  # fmt: skip
    p.add_argument("--reference", metavar="DATA",
                   help="what the base model knew, in the same form as --val")  # fmt: skip
    p.add_argument("--out", help="folder for wise_ft.json, frontier.png and model/ (the picked α)")
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
    if args.run_dir:
        return run_folder(args, alphas, opts.pick, model_opts.device)
    missing = [name for name, value in (("BASE", args.base), ("FINETUNED", args.finetuned), ("--val", args.val),
               ("--reference", args.reference), ("--out", args.out)) if not value]  # fmt: skip
    if missing:
        raise config.ConfigError(f"give {', '.join(missing)} (or --run RUN, a finished fine-tune run folder)")
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


def run_folder(args: argparse.Namespace, alphas: tuple[float, ...], rule: str, device: str | None) -> None:
    """`vlm wise-ft --run RUN`: the sweep of a finished fine-tune run, into RUN/wise_ft/."""
    from eval import wise_run
    from vlm import wiseft

    given = [name for name, value in (("BASE", args.base), ("--val", args.val), ("--reference", args.reference),
             ("--out", args.out)) if value]  # fmt: skip
    if given:
        raise config.ConfigError(f"--run takes the run's own models and sets: drop {', '.join(given)}")
    sweep = wise_run.sweep_run(args.run_dir, alphas, rule, device=device, batch_size=args.batch_size,
                               workers=args.workers, progress=print)  # fmt: skip
    print(f"your data = {sweep.labels[0]}; what it knew = {sweep.labels[1]}")
    print(wiseft.table(sweep.points, sweep.picked))
    path = wise_run.export_run(args.run_dir, sweep.picked.alpha, device=device, scores=sweep.picked.scores)
    print(f"picked α={sweep.picked.alpha:g} ({rule}); wrote {sweep.frontier.parent}/wise_ft.json, frontier.png, {path}")
