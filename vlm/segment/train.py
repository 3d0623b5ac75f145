"""`vlm train-seg`: train the segmentation decoder on (image, phrase, mask) data over a frozen encoder.

`DecoderTask` is a task of the shared training loop (`vlm.training.Loop`), so the run is `vlm train`'s: the step
sampler (data order a pure function of (seed, epoch)), warm-up + cosine schedule, AdamW without decay on biases and
norms, metrics.jsonl (+ TensorBoard), status.json and the stop file (`vlm.rundir`), tqdm progress, step checkpoints
written atomically and pruned, the save on Ctrl-C, and exact resume (`--resume` continues from the newest checkpoint
and refuses one made with other settings, data or encoder). A checkpoint is a decoder directory (`decoder.py`):
config.json, decoder.safetensors, train_state.pt (read with weights_only=True). The run ends with
`<output_dir>/final`.

Loss: binary cross-entropy on every pixel plus `dice_weight` x soft Dice (CLIPSeg trains with BCE alone; Dice
helps small objects, which are most of the synthetic shapes).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vlm import distributed, models
from vlm.config import ModelOptions, OptimConfig, RunConfig, run_default
from vlm.errors import ConfigError
from vlm.segment import decoder as dec
from vlm.segment.api import Pixels
from vlm.segment.data import SegDataset, SegSample, read_segmentation, split_by_image
from vlm.training import RESUME_FREE_FIELDS, Loop, Task, TrainResult, adamw, scheduler

LOG = logging.getLogger(__name__)

# Scores the held-out samples with the decoder (in eval mode), e.g. `eval.segmentation.validate_decoder`: passed by
# the caller, since `eval` is a layer above the trainer.
ValidateDecoder = Callable[[models.Encoders, Sequence[SegSample], dec.SegDecoder], dict[str, float]]

SegTrainResult = TrainResult


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclasses.dataclass
class SegDataConfig:
    train_data: str | None = dataclasses.field(
        default=None, metadata=_help("phrases.csv (path,mask_path,phrase), a mask folder, or a COCO/RefCOCO JSON")
    )
    val_data: str | None = dataclasses.field(default=None, metadata=_help("separate validation data"))
    data_format: Literal["auto", "csv", "folder", "coco"] = "auto"
    data_root: str | None = dataclasses.field(default=None, metadata=_help("image paths are relative to this"))
    split: str | None = dataclasses.field(default=None, metadata=_help("RefCOCO-style refs: keep this split only"))
    val_fraction: float = dataclasses.field(default=0.1, metadata=_help("share of images held out for validation"))
    val_limit: int = dataclasses.field(default=400, metadata=_help("validation samples scored (0 = all)"))
    workers: int = dataclasses.field(default=2, metadata=_help("DataLoader worker processes"))

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name in ("workers", "val_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass
class DecoderConfig:
    layers: tuple[int, ...] = dataclasses.field(
        default=(),
        metadata=_help(
            "encoder layers read (0-based): ViT blocks, or ResNet stages 0-3 (layer1-layer4); empty = the tower's "
            "default (ViT: 3 evenly spaced blocks; ResNet: 1 2 3)"
        ),
    )
    width: int = dataclasses.field(default=64, metadata=_help("decoder width (CLIPSeg: 64)"))
    heads: int = 4
    input_size: int | None = dataclasses.field(
        default=None, metadata=_help("encoder input side in pixels; none = the model's own")
    )


def _seg_optim() -> OptimConfig:
    # The decoder's own recipe, whatever OptimConfig's defaults for contrastive training are: CLIPSeg's peak lr,
    # 100 warm-up steps, torch's AdamW betas and eps (what the decoder trainer used before the shared loop).
    return OptimConfig(lr=1e-3, weight_decay=1e-4, warmup_steps=100, beta2=0.999, eps=1e-8)


@dataclasses.dataclass
class SegTrainConfig(RunConfig):
    """`vlm train-seg`: the run settings every trainer has (`RunConfig`), the frozen encoder (`ModelOptions`), the
    data, the decoder and the optimizer (`OptimConfig`, with the decoder's defaults)."""

    output_dir: str = run_default("output_dir", "runs/train-seg")
    batch_size: int = run_default("batch_size", 32)
    tensorboard: bool = run_default("tensorboard", False)
    dice_weight: float = dataclasses.field(default=1.0, metadata=_help("weight of the soft Dice term (0 = BCE only)"))
    cache_activations: bool = dataclasses.field(
        default=False,
        metadata=_help(
            "keep each image's frozen-encoder activations in memory (float16) after first use: several times "
            "faster on CPU, at layers x tokens x width x 2 bytes per image"
        ),
    )
    encoder: ModelOptions = dataclasses.field(default_factory=ModelOptions)
    data: SegDataConfig = dataclasses.field(default_factory=SegDataConfig)
    decoder: DecoderConfig = dataclasses.field(default_factory=DecoderConfig)
    optim: OptimConfig = dataclasses.field(default_factory=_seg_optim)


def seg_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """(B, S, S) logits and (B, S, S) targets in [0, 1] -> BCE (mean over pixels) + dice_weight * soft Dice loss
    (mean over samples; +1 smoothing so that empty masks give a finite loss)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    if not dice_weight:
        return bce
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce + dice_weight * dice.mean()


class DecoderTask(Task):
    """A segmentation decoder trained over a frozen encoder, from a `SegTrainConfig`."""

    name = "train-seg"
    items = "samples"
    # output_dir: a run directory may be moved or copied, then resumed.
    resume_free = RESUME_FREE_FIELDS | {"val_limit", "output_dir", "cache_activations", "device"}

    def __init__(self, cfg: SegTrainConfig, *, validate: ValidateDecoder | None = None):
        super().__init__(cfg)
        self.validator = validate
        self.out = Path(cfg.output_dir)
        self.accum_steps = cfg.optim.accum_steps
        self.workers = cfg.data.workers

    def setup(self) -> distributed.DistInfo:
        cfg = self.cfg
        if cfg.batch_size % cfg.optim.accum_steps:
            raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by accum_steps {cfg.optim.accum_steps}")
        device = torch.device(cfg.encoder.device) if cfg.encoder.device else models.default_device()
        return distributed.DistInfo(rank=0, local_rank=0, world_size=1, device=device)

    def build_model(self) -> None:
        cfg, enc = self.cfg, self.cfg.encoder
        torch.manual_seed(cfg.seed)  # an encoder built without weights is then the same in a resumed run
        self.encoders = models.load(enc.model, enc.pretrained, device=self.dist.device, precision=enc.precision)
        self.encoders.model.requires_grad_(False).eval()
        self.device = self.encoders.device
        self.encoder_source = (enc.model, enc.pretrained)
        if self.encoders.source.endswith("(randomly initialised)"):
            # Nothing else could rebuild these random weights: keep them beside the run, so the decoder stays usable.
            path = self.out / "encoder"
            if not path.is_dir():
                models.save(
                    self.encoders, path, provenance={"note": f"random encoder of a train-seg run, seed {cfg.seed}"}
                )
            self.encoder_source = (str(path), None)
        d = cfg.decoder
        spec = dec.make_spec(
            self.encoders, layers=d.layers or None, width=d.width, heads=d.heads, input_size=d.input_size
        )
        torch.manual_seed(cfg.seed)
        self.decoder = dec.SegDecoder(spec).to(self.device)
        self.cache: dict[int, list[torch.Tensor]] = {}  # image index -> activations (see cache_activations)
        n = sum(p.numel() for p in self.decoder.parameters())
        LOG.info("decoder on %s: blocks %s, input %d px, %s parameters", self.encoders.source, spec.layers,
                 spec.input_size, f"{n:,}")  # fmt: skip

    def _read(self, source: str) -> list[SegSample]:
        d = self.cfg.data
        return read_segmentation(source, format=d.data_format, root=d.data_root, split=d.split).samples

    def build_data(self) -> None:
        d = self.cfg.data
        if not d.train_data:
            raise ConfigError("no training data: pass --train-data (phrases.csv, a mask folder or a COCO JSON)")
        samples = self._read(d.train_data)
        if d.val_data:
            self.train_items, self.val_items = samples, self._read(d.val_data)
        else:
            self.train_items, self.val_items = split_by_image(samples, d.val_fraction, self.cfg.seed)
        if d.val_limit:
            self.val_items = self.val_items[: d.val_limit]
        phrases = sorted({s.phrase for s in self.train_items})
        self.phrase_index = {p: i for i, p in enumerate(phrases)}
        self.text = torch.cat([self.encoders.encode_text(phrases[i : i + 256]) for i in range(0, len(phrases), 256)])
        size = self.decoder.spec.input_size
        self.dataset = SegDataset(self.train_items, self.phrase_index, size, Pixels.of(self.encoders))
        LOG.info("%d phrases in the training samples", len(phrases))

    def build_optimizer(self) -> None:
        self.optimizer = adamw(self.decoder, self.cfg.optim)
        self.scheduler = scheduler(self.optimizer, self.cfg.optim, self.total_steps)

    def start_training(self) -> None:
        self.decoder.train()

    # -- the step -------------------------------------------------------------------------------------------

    def _activations(self, pixels: torch.Tensor, images: torch.Tensor) -> list[torch.Tensor]:
        """The frozen encoder's activations for a batch, from the cache where present (then computed once)."""
        visual, layers = self.encoders.model.visual, self.decoder.spec.layers
        if not self.cfg.cache_activations:
            with self.encoders.autocast():
                return dec.encoder_activations(visual, pixels, layers, self.decoder.spec.patch_size)[0]
        keys = images.tolist()
        missing = sorted({i for i, k in enumerate(keys) if k not in self.cache}, key=keys.__getitem__)
        if missing:
            with self.encoders.autocast():
                fresh, _ = dec.encoder_activations(visual, pixels[missing], layers, self.decoder.spec.patch_size)
            for j, i in enumerate(missing):
                self.cache.setdefault(keys[i], [a[j].to("cpu", torch.float16) for a in fresh])
        return [torch.stack([self.cache[k][n] for k in keys]).to(self.device).float() for n in range(len(layers))]

    def step(self, micro_batches: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        total = torch.zeros((), device=self.device)
        for pixels, target, phrase, images in micro_batches:
            pixels, target = pixels.to(self.device, non_blocking=True), target.to(self.device, non_blocking=True)
            acts = self._activations(pixels, images)
            patch = self.decoder.spec.patch_size
            logits = self.decoder(acts, (pixels.shape[-2] // patch, pixels.shape[-1] // patch),
                                  self.text[phrase.to(self.device)])  # fmt: skip
            # Equal micro-batches: their mean loss is the whole batch's (BCE and Dice are means over samples).
            loss = seg_loss(logits, target, self.cfg.dice_weight) / len(micro_batches)
            loss.backward()
            total += loss.detach()
        if self.cfg.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.decoder.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return total

    @property
    def can_validate(self) -> bool:
        return self.validator is not None

    def validate(self) -> dict[str, float]:
        self.decoder.eval()
        try:
            return self.validator(self.encoders, self.val_items, self.decoder)
        finally:
            self.decoder.train()

    # -- checkpoints ----------------------------------------------------------------------------------------

    def is_checkpoint(self, path: Path) -> bool:
        return dec.is_decoder_dir(path)

    def optimizer_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def save(self, path: Path, *, provenance: dict[str, Any], train_state: dict[str, Any] | None) -> Path:
        record = dec.encoder_record(self.encoders, *self.encoder_source)
        return dec.save_decoder(path, self.decoder, record, provenance=provenance, train_state=train_state)

    def resume_differences(self, path: Path) -> list[str]:
        if dec.read_decoder_config(path)["encoder"]["fingerprint"] != self.encoders.fingerprint:
            return ["the encoder's weights differ from the checkpoint's"]
        return []

    def load_state(self, path: Path, state: dict[str, Any]) -> None:
        self.decoder.load_state_dict(load_file(str(path / dec.WEIGHTS_NAME), device=str(self.device)), strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def provenance(self) -> dict[str, Any]:
        return {
            "train_data": self.cfg.data.train_data,
            "train_samples": len(self.train_items),
            "val_samples": len(self.val_items),
        }


def train_decoder(
    cfg: SegTrainConfig, *, progress: bool = True, validate: ValidateDecoder | None = None
) -> TrainResult:
    """Train (or resume) a segmentation decoder according to `cfg`.

    `validate(encoders, val_samples, decoder) -> metrics` scores the held-out samples (the CLI passes
    `eval.segmentation.validate_decoder`); without it they are held out but not scored.
    """
    return Loop(DecoderTask(cfg, validate=validate), progress=progress).run()
