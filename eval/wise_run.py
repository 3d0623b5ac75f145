"""WiSE-FT of a finished fine-tune run: `vlm.wiseft`'s α sweep on the run's own two sets, cached in the run folder,
and the model at a chosen α exported beside it as an ordinary checkpoint. What the app's Train tab offers once a
fine-tune finishes, and `vlm wise-ft --run RUN`.

    sweep = sweep_run("runs/ft")          # every α scored on "your data" and "what it knew"; cached
    cached("runs/ft")                     # that sweep read back, or None: nothing is computed
    sweep.picked.alpha, sweep.at(0.3).scores, sweep.frontier
    path = export_run("runs/ft", 0.3)     # runs/ft/wise_ft/alpha-0.3/: `vlm.models.load` and open_clip load it

The two ends are the model the run started from (its config's model and pretrained) and the run's final/.
"Your data" is text->image R@5 on the pairs the run held out for validation (`vlm.train.validation_pairs`: the same
pairs its trainer scored); "what it knew" is the mean headline of the run's reference sets (`eval.reference`, the
`ref/score` the trainer logged). So α = 0 gives the run's step-0 reference score and α = 1 its last.

Cache (`<run>/wise_ft/`, `vlm.rundir`): wise_ft.json (`vlm.wiseft.to_dict` plus the labels and a key: the fine-tune's
weight fingerprint, the α, the rule, the reference sets), frontier.png, alpha-<α>/. A sweep whose key matches is read
back, not recomputed. A run that has not finished, was trained from scratch, or has no reference set is refused with
the reason before any model loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eval import reference
from vlm import checkpoint, finetune, wiseft
from vlm.atomic import atomic_write_bytes, atomic_write_json
from vlm.config import TrainConfig
from vlm.errors import ConfigError
from vlm.rundir import RunDir
from vlm.train import validation_pairs

YOUR_DATA = "your data"
WHAT_IT_KNEW = "what it knew"


@dataclasses.dataclass(frozen=True)
class RunSweep:
    """A run's α sweep: one `wiseft.Point` per α (scores "val" = your data, "reference" = what it knew)."""

    run: Path
    points: tuple[wiseft.Point, ...]
    picked: wiseft.Point
    rule: str
    labels: tuple[str, str]  # what "val" and "reference" measure, for people
    frontier: Path

    def at(self, alpha: float) -> wiseft.Point:
        """The point of the sweep at `alpha` (a slider's float is matched to 1e-6)."""
        alpha = wiseft.check_alpha(alpha)
        for p in self.points:
            if math.isclose(p.alpha, alpha, abs_tol=1e-6):
                return p
        raise ConfigError(f"α={alpha:g} was not scored; the sweep has {', '.join(f'{p.alpha:g}' for p in self.points)}")


@dataclasses.dataclass(frozen=True)
class _Run:
    dir: RunDir
    cfg: TrainConfig
    final: Path
    references: tuple[str, ...]


def _check(run: str | Path) -> _Run:
    """The run's folder, config, final model and reference sets, or `ConfigError` saying why WiSE-FT cannot use it."""
    rd = RunDir(run)
    if not rd.config.is_file():
        raise ConfigError(f"{rd.path} is not a training run folder (it has no config.json)")
    cfg = rd.read_config()
    if not rd.is_checkpoint(rd.final):
        status = rd.read_status()
        state = status.state if status is not None else "not started"
        raise ConfigError(
            f"the run in {rd.path} has no final model (it is {state}): WiSE-FT interpolates a finished fine-tune"
        )
    if not finetune.starts_from_weights(cfg):
        raise ConfigError(
            f"the run in {rd.path} trained {cfg.model.model} from scratch: there is no model it started from to "
            "interpolate with (WiSE-FT is for fine-tunes)"
        )
    refs = tuple(cfg.data.reference) or finetune.default_reference(cfg.model.model)
    if not refs:
        raise ConfigError(
            f"the run in {rd.path} was scored on no reference set, so nothing measures what the model knew: "
            "use `vlm wise-ft BASE FINETUNED --val ... --reference DATA` with a set of your own"
        )
    return _Run(rd, cfg, rd.final, refs)


def _key(r: _Run, alphas: Sequence[float], rule: str) -> dict[str, Any]:
    return {
        "finetuned_fingerprint": checkpoint.read_config(r.final).get("fingerprint"),
        "alphas": list(alphas),
        "rule": rule,
        "reference": list(r.references),
    }


def _load_pair(r: _Run, device: str | None) -> wiseft.WiseFT:
    return wiseft.WiseFT.load(r.cfg.model.model, str(r.final), base_pretrained=r.cfg.model.pretrained, device=device)


def cached(
    run: str | Path, alphas: str | Sequence[float] = wiseft.DEFAULT_ALPHAS, rule: str = "best-sum"
) -> RunSweep | None:
    """The sweep already in the run folder for these α and rule, else None (nothing is computed)."""
    r = _check(run)
    return _read(r, _key(r, wiseft.parse_alphas(alphas), rule))


def _read(r: _Run, key: dict[str, Any]) -> RunSweep | None:
    record, png = r.dir.wise_ft / "wise_ft.json", r.dir.wise_ft / "frontier.png"
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("key") != key or not png.is_file():
        return None
    points = tuple(wiseft.Point(p["alpha"], {"val": p["val"], "reference": p["reference"]}) for p in data["points"])
    picked = next(p for p in points if p.alpha == data["picked_alpha"])
    return RunSweep(r.dir.path, points, picked, data["rule"], tuple(data["labels"]), png)


def sweep_run(
    run: str | Path,
    alphas: str | Sequence[float] = wiseft.DEFAULT_ALPHAS,
    rule: str = "best-sum",
    *,
    device: str | None = None,
    batch_size: int = 256,
    workers: int = 0,
    progress: Callable[[str], None] | None = None,
) -> RunSweep:
    """Score every α of the run on your data and what it knew (or read the cached sweep), pick one by `rule`
    (`vlm.wiseft.pick`), and write wise_ft.json and frontier.png into `<run>/wise_ft/`."""
    r = _check(run)
    alphas = wiseft.parse_alphas(alphas)
    wiseft.check_pick_rule(rule)
    key = _key(r, alphas, rule)
    found = _read(r, key)
    if found is not None:
        return found
    pairs = validation_pairs(r.cfg)
    if len(pairs) < 2:
        raise ConfigError(f"the run in {r.dir.path} held out {len(pairs)} validation pair(s): too few to score")
    val_set = reference.ReferenceSet(YOUR_DATA, "retrieval", pairs, r.cfg.data.val_data or r.cfg.data.train_data)
    known = reference.load(r.references)
    scorers = {
        "val": lambda enc: reference.headline(val_set, enc, batch_size=batch_size, workers=workers),
        "reference": lambda enc: known(enc, batch_size=batch_size, workers=workers)["score"],
    }
    labels = (
        f"{YOUR_DATA}: text→image R@5 on the {len(pairs):,} held-out pairs",
        f"{WHAT_IT_KNEW}: {', '.join(s.name for s in known.sets)}",
    )
    pair = _load_pair(r, device)
    points = pair.sweep(alphas, scorers, progress=progress)
    picked = wiseft.pick(points, rule)
    out = r.dir.wise_ft
    out.mkdir(parents=True, exist_ok=True)
    png = out / "frontier.png"
    atomic_write_bytes(png, wiseft.frontier_png(points, picked, labels=labels, title="WiSE-FT of this fine-tune"))
    record = wiseft.to_dict(points, picked, pair.names, rule)
    atomic_write_json(out / "wise_ft.json", {**record, "labels": list(labels), "key": key})
    return RunSweep(r.dir.path, tuple(points), picked, rule, labels, png)


def export_run(
    run: str | Path, alpha: float, *, device: str | None = None, scores: dict[str, float] | None = None
) -> Path:
    """The model at `alpha` as a checkpoint folder `<run>/wise_ft/alpha-<α>/` (written once; a later call with the
    same α and the same fine-tune returns it)."""
    r = _check(run)
    alpha = round(wiseft.check_alpha(alpha), 6)  # a slider's 0.30000000000000004 is α 0.3
    target = r.dir.wise_ft / f"alpha-{alpha:g}"
    fingerprint = checkpoint.read_config(r.final).get("fingerprint")
    if r.dir.is_checkpoint(target):
        made = checkpoint.read_config(target).get("provenance", {}).get("wise_ft", {})
        if made.get("alpha") == alpha and made.get("finetuned_fingerprint") == fingerprint:
            return target
    pair = _load_pair(r, device)
    return pair.export(alpha, target, scores=scores, extra={"finetuned_fingerprint": fingerprint})
