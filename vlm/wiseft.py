"""WiSE-FT: weight-space ensembles of a model and its fine-tune (Wortsman et al., CVPR 2022).

θ(α) = (1 − α)·θ_base + α·θ_finetuned, for every floating-point weight of two models of one architecture. α = 0 is
the base model, α = 1 the fine-tune, and the α in between usually keep much of what the base knew while keeping
much of what the fine-tune learned. Sweep α, score each point on two sets (the user's own data and a "what it
knew" reference set), pick one, and export it as an ordinary checkpoint that open_clip loads:

    pair = WiseFT.load("demo", "runs/ft/final")                  # refuses two different architectures
    points = pair.sweep(parse_alphas("0,0.1,...,1"), {"val": score_mine, "reference": score_known})
    chosen = pick(points, "best-sum")                            # or "min-reference=0.9"
    pair.export(chosen.alpha, "runs/ft/wise/model", scores=chosen.scores)
    (Path("frontier.png")).write_bytes(frontier_png(points, chosen))

The scorers are passed in (`Callable[[Encoders], float]`, higher is better): this module is in `vlm`, below `eval`.
Integer buffers (BatchNorm's `num_batches_tracked`) are not averaged: they come from the nearer end point.
`vlm wise-ft` is the command line (`vlm/cli/wise_ft.py`), and the app offers the same after a fine-tune.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vlm import models
from vlm.errors import ConfigError, ModelError
from vlm.fingerprint import state_fingerprint

LOG = logging.getLogger(__name__)

DEFAULT_ALPHAS = "0,0.1,...,1"
Scorer = Callable[[models.Encoders], float]


@dataclasses.dataclass(frozen=True)
class Point:
    """One α of a sweep and its scores by name ("val", "reference", ...)."""

    alpha: float
    scores: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.scores.values())


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ConfigError(f"α must be within [0, 1] (0 = the base model, 1 = the fine-tune), got {alpha!r}")
    return alpha


def parse_alphas(text: str | Sequence[float]) -> tuple[float, ...]:
    """'0,0.25,1' or an arithmetic run '0,0.1,...,1' (two values, '...', the last) -> sorted unique α in [0, 1]."""
    if not isinstance(text, str):
        values = [check_alpha(a) for a in text]
    else:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if "..." in parts:
            i = parts.index("...")
            if i != 2 or len(parts) != 4:
                raise ConfigError(f"alphas {text!r}: write a run as 'first,second,...,last' (e.g. 0,0.1,...,1)")
            first, second, last = (_number(parts[j], text) for j in (0, 1, 3))
            step = second - first
            if step <= 0 or last < first:
                raise ConfigError(f"alphas {text!r}: a run must increase (first < second <= last)")
            n = math.floor((last - first) / step + 1e-9)
            values = [round(first + k * step, 10) for k in range(n + 1)]
            if not math.isclose(values[-1], last, abs_tol=1e-9):
                values.append(last)
        else:
            values = [_number(p, text) for p in parts]
        values = [check_alpha(a) for a in values]
    if not values:
        raise ConfigError("give at least one α")
    return tuple(sorted(set(values)))


def _number(text: str, whole: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"alphas {whole!r}: {text!r} is not a number") from None


def interpolate(
    base: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """(1 − α)·base + α·finetuned for floating-point tensors (computed in float32 or wider, returned in the base
    tensor's dtype); α = 0 and α = 1 return exact copies of one side; other tensors come from the nearer side."""
    alpha = check_alpha(alpha)
    check_same_layout(base, finetuned)
    out = {}
    for key, a in base.items():
        b = finetuned[key]
        if alpha == 0.0 or (not a.is_floating_point() and alpha < 0.5):
            out[key] = a.clone()
        elif alpha == 1.0 or not a.is_floating_point():
            out[key] = b.to(a.dtype).clone()
        else:
            wide = torch.promote_types(a.dtype, torch.float32)
            out[key] = ((1.0 - alpha) * a.to(wide) + alpha * b.to(wide)).to(a.dtype)
    return out


def check_same_layout(base: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor]) -> None:
    """Refuse two state dicts that are not of one architecture, naming what differs."""
    only_base = sorted(set(base) - set(finetuned))
    only_ft = sorted(set(finetuned) - set(base))
    shapes = [f"{k}: {tuple(base[k].shape)} vs {tuple(finetuned[k].shape)}"
              for k in base if k in finetuned and base[k].shape != finetuned[k].shape]  # fmt: skip
    problems = []
    if only_base:
        problems.append(f"{len(only_base)} weight(s) only in the base ({', '.join(only_base[:3])}, ...)")
    if only_ft:
        problems.append(f"{len(only_ft)} weight(s) only in the fine-tune ({', '.join(only_ft[:3])}, ...)")
    if shapes:
        problems.append(f"{len(shapes)} of other shapes ({'; '.join(shapes[:3])})")
    if problems:
        raise ModelError(
            "the two models are not of one architecture, so their weights cannot be averaged: " + "; ".join(problems)
        )


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class WiseFT:
    """A base model and its fine-tune, checked to be of one architecture, and one working model that takes the
    weights of any α (so a sweep holds three copies of the weights, not one per α)."""

    def __init__(self, base: models.Encoders, finetuned: models.Encoders, *, names: tuple[str, str] = ("", "")):
        if base.model_cfg != finetuned.model_cfg:
            diff = sorted(k for k in set(base.model_cfg) | set(finetuned.model_cfg)
                          if base.model_cfg.get(k) != finetuned.model_cfg.get(k))  # fmt: skip
            raise ModelError(
                f"the two models are not of one architecture ({base.model_name} vs {finetuned.model_name}; their "
                f"configs differ in {diff}), so their weights cannot be averaged. Give a fine-tune of the base model"
            )
        self.base_state = _cpu_state(base.model)
        self.finetuned_state = _cpu_state(finetuned.model)
        check_same_layout(self.base_state, self.finetuned_state)
        self.encoders = base
        self.names = (names[0] or base.source, names[1] or finetuned.source)
        self.alpha: float | None = 0.0

    @classmethod
    def load(
        cls,
        base: str,
        finetuned: str,
        *,
        base_pretrained: str | None = None,
        device: str | None = None,
        precision: str = "auto",
    ) -> WiseFT:
        """Load both models (names as `vlm.models.load` takes them: `base` + `base_pretrained` for an open_clip
        architecture and tag such as ViT-B-32 + laion2b_s34b_b79k); the weights are averaged in float32."""
        if precision in ("fp16", "bf16"):
            raise ModelError(f"weights are averaged in float32: use --precision auto, amp or amp_bf16, not {precision}")
        first = models.load(base, base_pretrained, device=device, precision=precision)
        second = models.load(finetuned, device="cpu", precision="fp32")
        return cls(first, second, names=(first.source, finetuned))

    def at(self, alpha: float) -> models.Encoders:
        """The working model with the weights of `alpha` (the same object each call, its weights replaced)."""
        state = interpolate(self.base_state, self.finetuned_state, alpha)
        self.encoders.model.load_state_dict(state)
        self.encoders.fingerprint = state_fingerprint(state)
        self.alpha = alpha
        return self.encoders

    def sweep(
        self, alphas: Sequence[float], scorers: Mapping[str, Scorer], *, progress: Callable[[str], None] | None = None
    ) -> list[Point]:
        """Score every α with every scorer (higher is better)."""
        alphas = parse_alphas(alphas)
        if not scorers:
            raise ConfigError("give at least one set to score the α on")
        points = []
        for alpha in alphas:
            encoders = self.at(alpha)
            scores = {name: float(score(encoders)) for name, score in scorers.items()}
            points.append(Point(alpha, scores))
            if progress is not None:
                progress(f"α={alpha:g}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        return points

    def export(
        self,
        alpha: float,
        path: str | Path,
        *,
        scores: Mapping[str, float] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the α model as a checkpoint directory (`vlm.checkpoint`): open_clip loads its `model.safetensors`
        with `create_model_and_transforms(name, pretrained=file)`, and `vlm.models.load(path)` loads the folder.
        Its provenance records `wise_ft`: base, fine-tune, α, scores and `extra`."""
        encoders = self.at(check_alpha(alpha))
        made = {"base": self.names[0], "finetuned": self.names[1], "alpha": alpha, "scores": dict(scores or {})}
        provenance = {"wise_ft": {**made, **(extra or {})}}
        return models.save(encoders, path, provenance=provenance)


def pick(points: Sequence[Point], rule: str = "best-sum", *, val: str = "val", reference: str = "reference") -> Point:
    """The α a rule chooses: 'best-sum' (highest val + reference; ties to the smaller α, nearer the base) or
    'min-reference=X' (the best val among the α whose reference score is at least X)."""
    if not points:
        raise ConfigError("no α was scored")
    rule = rule.strip()
    if rule == "best-sum":
        return max(points, key=lambda p: (round(p.total, 12), -p.alpha))
    if rule.startswith("min-reference="):
        try:
            floor = float(rule.split("=", 1)[1])
        except ValueError:
            raise ConfigError(f"--pick {rule!r}: the threshold is not a number (e.g. min-reference=0.9)") from None
        if any(reference not in p.scores or val not in p.scores for p in points):
            raise ConfigError(f"--pick {rule!r} needs both a {val!r} and a {reference!r} score")
        keep = [p for p in points if p.scores[reference] >= floor]
        if not keep:
            best = max(points, key=lambda p: p.scores[reference])
            raise ConfigError(
                f"no α keeps the reference score at {floor:g} or more (the best is {best.scores[reference]:.4f} at "
                f"α={best.alpha:g}); lower the threshold or include α=0"
            )
        return max(keep, key=lambda p: (p.scores[val], -p.alpha))
    raise ConfigError(f"unknown --pick rule {rule!r}: use best-sum or min-reference=X")


def check_pick_rule(rule: str) -> None:
    """Refuse a malformed rule before any model loads."""
    dummy = [Point(0.0, {"val": 0.0, "reference": 0.0})]
    try:
        pick(dummy, rule)
    except ConfigError as e:
        if "no α keeps" not in str(e):
            raise


def table(points: Sequence[Point], chosen: Point | None = None) -> str:
    """A Markdown table of the sweep; the chosen row is marked."""
    names = list(points[0].scores) if points else []
    lines = ["| α | " + " | ".join(names) + " | sum | |", "|---" * (len(names) + 3) + "|"]
    for p in points:
        mark = "← picked" if chosen is not None and p.alpha == chosen.alpha else ""
        cells = " | ".join(f"{p.scores[n]:.4f}" for n in names)
        lines.append(f"| {p.alpha:g} | {cells} | {p.total:.4f} | {mark} |")
    return "\n".join(lines)


def frontier_png(
    points: Sequence[Point],
    chosen: Point | None = None,
    *,
    val: str = "val",
    reference: str = "reference",
    labels: tuple[str, str] = ("your data", "what it knew (reference)"),
    title: str = "WiSE-FT frontier",
) -> bytes:
    """The frontier as PNG bytes: x = `val` score, y = `reference` score, one point per α (labelled), the base
    (α=0) and the fine-tune (α=1) marked, and the chosen α circled."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.5), dpi=110)
    ax = fig.add_subplot()
    xs = [p.scores[val] for p in points]
    ys = [p.scores[reference] for p in points]
    ax.plot(xs, ys, "-o", color="tab:blue", markersize=4, label="α sweep")
    for p, x, y in zip(points, xs, ys, strict=True):
        ax.annotate(f"{p.alpha:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ends = {0.0: ("s", "tab:green", "base (α=0)"), 1.0: ("D", "tab:red", "fine-tune (α=1)")}
    for p, x, y in zip(points, xs, ys, strict=True):
        if p.alpha in ends:
            marker, colour, label = ends[p.alpha]
            ax.plot([x], [y], marker, color=colour, markersize=9, label=label)
    if chosen is not None:
        ax.plot([chosen.scores[val]], [chosen.scores[reference]], "o", markersize=14, markerfacecolor="none",
                markeredgecolor="black", label=f"picked (α={chosen.alpha:g})")  # fmt: skip
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def to_dict(points: Sequence[Point], chosen: Point | None, names: tuple[str, str], rule: str) -> dict[str, Any]:
    """A JSON-ready record of a sweep."""
    return {
        "base": names[0],
        "finetuned": names[1],
        "rule": rule,
        "picked_alpha": chosen.alpha if chosen is not None else None,
        "points": [{"alpha": p.alpha, **p.scores} for p in points],
    }
