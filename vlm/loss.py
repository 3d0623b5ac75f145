"""Contrastive image-text losses: CLIP's symmetric InfoNCE and SigLIP's sigmoid loss, single- or multi-process.

Both losses take UNNORMALISED features of shape (B, D) in any dtype, L2-normalise them themselves and compute the
logits in float32 (float64 stays float64), with autocast switched off: under bf16/fp16 autocast a (B, N) logit matmul
would otherwise lose the small differences the softmax depends on.

Temperature. `logit_scale` is the already-exponentiated scale, e.g. `model.logit_scale.exp()`. As in CLIP (Radford et
al. 2021) and open_clip, the learnable parameter is stored as a log, initialised to `LOGIT_SCALE_INIT` = log(1/0.07),
and the trainer clamps it at `LOGIT_SCALE_MAX` = ln(100) after each optimiser step. The losses never clamp.

Several processes. With `world_size > 1` every rank holds B rows of the global batch of N = world_size * B pairs, and
every rank must hold the same B (the trainer drops the last incomplete batch). Features are gathered across ranks:
- `ClipLoss(local_loss=False)`: every rank computes the full (N, N) loss, so every rank's loss equals the global loss.
- `ClipLoss(local_loss=True)`: each rank computes its B rows against all N columns, in both directions, with labels
  `arange(B) + rank * B`; memory is (B, N) instead of (N, N). A rank's loss is not the global loss; the mean of the
  ranks' losses is.
- `SigLipLoss`: each rank's B images against all N texts; again the mean over ranks is the global loss.
With `gather_with_grad=True`, and DDP averaging gradients, the parameter gradients equal those of one process on the
whole batch (tests/test_loss.py checks this with two gloo processes). See `gather_features` for the other case.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vlm.errors import ConfigError, DataError

# CLIP's temperature: log scale initialised to log(1/0.07), clamped at ln(100) = 4.6052 ("as in the original paper").
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)
# SigLIP's initialisation (Zhai et al. 2023): log scale log(10), bias -10, so that the many negatives
# start with a small loss.
SIGLIP_LOGIT_SCALE_INIT = math.log(10.0)
SIGLIP_LOGIT_BIAS_INIT = -10.0


def gather_features(
    image_features: Tensor,
    text_features: Tensor,
    *,
    local_loss: bool,
    gather_with_grad: bool,
    rank: int,
    world_size: int,
) -> tuple[Tensor, Tensor]:
    """All ranks' features, concatenated in rank order.

    Parameters
    ----------
    image_features, text_features : (B, D) tensors, this rank's rows (the same B on every rank).
    local_loss : whether the caller uses local rows against global columns. Only checked: local loss needs
        `gather_with_grad=True`, else each rank misses the gradient that the other ranks' rows send to its own.
    gather_with_grad : gather with `torch.distributed.nn.functional.all_gather`, whose backward sums every rank's
        gradient for each shard; with DDP's averaging, the result is the full-batch gradient. Without it, only this
        rank's own rows carry a gradient (see `_all_gather`), and the towers' gradients come out `world_size` times
        smaller than the full-batch ones (the logit scale's do not), which Adam mostly, but not exactly, absorbs.
    rank, world_size : this process's place in the default process group.

    Returns
    -------
    (all_image_features, all_text_features) : (world_size * B, D) each; the inputs themselves when world_size is 1.
    """
    _check_layout(local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank, world_size=world_size)
    if world_size == 1:
        return image_features, text_features
    _check_process_group(rank=rank, world_size=world_size)
    return (
        _all_gather(image_features, with_grad=gather_with_grad, rank=rank, world_size=world_size),
        _all_gather(text_features, with_grad=gather_with_grad, rank=rank, world_size=world_size),
    )


class ClipLoss(nn.Module):
    """Symmetric InfoNCE over cosine logits (CLIP): the mean of image→text and text→image cross-entropy.

    `forward(image_features, text_features, logit_scale, logit_bias=None)` returns a scalar (the signature is
    `SigLipLoss`'s, so a trainer calls either the same way; InfoNCE has no bias and ignores it): with logits
    `z = s * normalize(I) @ normalize(T).T` and labels `arange`, the loss is `(CE(z, labels) + CE(z.T, labels)) / 2`.
    See the module docstring for the multi-process modes.
    """

    def __init__(
        self,
        *,
        local_loss: bool = False,
        gather_with_grad: bool = True,
        rank: int = 0,
        world_size: int = 1,
        cache_labels: bool = True,
    ) -> None:
        super().__init__()
        _check_layout(local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank, world_size=world_size)
        self.local_loss = local_loss
        self.gather_with_grad = gather_with_grad
        self.rank = rank
        self.world_size = world_size
        self.cache_labels = cache_labels
        self._labels: dict[tuple[torch.device, int], Tensor] = {}

    def logits(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor) -> tuple[Tensor, Tensor]:
        """Scaled cosine logits in float32 (or float64).

        Returns
        -------
        (logits_per_image, logits_per_text) : (R, C) each, where R = C = B on one process, R = C = N = world_size * B
        in global mode, and R = B, C = N in local-loss mode (this rank's rows against every rank's columns).
        """
        with _autocast_off(image_features.device):
            image, text = _normalised_pair(image_features, text_features)  # (B, D) each
            scale = logit_scale.to(image.dtype)
            if self.world_size == 1:
                per_image = scale * image @ text.T  # (B, B)
                return per_image, per_image.T
            all_image, all_text = gather_features(
                image,
                text,
                local_loss=self.local_loss,
                gather_with_grad=self.gather_with_grad,
                rank=self.rank,
                world_size=self.world_size,
            )  # (N, D) each
            if self.local_loss:
                return scale * image @ all_text.T, scale * text @ all_image.T  # (B, N) each
            per_image = scale * all_image @ all_text.T  # (N, N)
            return per_image, per_image.T

    def forward(
        self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor, logit_bias: Tensor | None = None
    ) -> Tensor:
        """Scalar loss. `logit_scale` is the exponentiated scale (a 0-d tensor, differentiable); `logit_bias` is not
        used (a SigLIP model's bias stays fixed under InfoNCE)."""
        with _autocast_off(image_features.device):
            per_image, per_text = self.logits(image_features, text_features, logit_scale)
            labels = self._ground_truth(per_image.shape[0], per_image.device)
            return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2

    def _ground_truth(self, num_rows: int, device: torch.device) -> Tensor:
        """Row i's positive is column i, offset by this rank's first row when rows are local and columns global."""
        labels = self._labels.get((device, num_rows))
        if labels is None:
            offset = self.rank * num_rows if self.local_loss and self.world_size > 1 else 0
            labels = torch.arange(offset, offset + num_rows, device=device, dtype=torch.long)
            if self.cache_labels:
                self._labels[(device, num_rows)] = labels
        return labels


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss (SigLIP, Zhai et al. 2023, arXiv:2303.15343).

    With logits `z = s * normalize(I) @ normalize(T).T + b` and labels `y = 2 * eye - 1` (+1 for a matching pair,
    -1 otherwise), the loss is `-sum(logsigmoid(y * z)) / B`. `logit_scale` (exponentiated) and `logit_bias` are
    0-d tensors; the paper initialises them to exp(`SIGLIP_LOGIT_SCALE_INIT`) = 10 and `SIGLIP_LOGIT_BIAS_INIT` = -10.
    """

    def __init__(self, *, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        _check_layout(local_loss=False, gather_with_grad=True, rank=rank, world_size=world_size)
        self.rank = rank
        self.world_size = world_size

    def forward(
        self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor, logit_bias: Tensor | None = None
    ) -> Tensor:
        """Scalar loss: this rank's B images against all N texts, divided by B. `logit_bias` is required."""
        if logit_bias is None:
            raise ConfigError("the SigLIP loss needs a logit bias; the model has none (train with --loss siglip)")
        with _autocast_off(image_features.device):
            image, text = _normalised_pair(image_features, text_features)  # (B, D) each
            batch = image.shape[0]
            if self.world_size > 1:
                # open_clip passes text shards round a ring of neighbours (`dist_impl="bidir"`) so that a rank never
                # holds all N texts. Gathering them at once, with gradient, sums over the same (local image, any text)
                # pairs, so value and gradients are equal; it costs (B, N) logits instead of (B, B) at a time.
                _check_process_group(rank=self.rank, world_size=self.world_size)
                text = _all_gather(text, with_grad=True, rank=self.rank, world_size=self.world_size)  # (N, D)
            logits = logit_scale.to(image.dtype) * image @ text.T + logit_bias.to(image.dtype)  # (B, N)
            labels = torch.full_like(logits, -1.0)
            labels.diagonal(offset=self.rank * batch if self.world_size > 1 else 0).fill_(1.0)  # this rank's block
            return -F.logsigmoid(labels * logits).sum() / batch


def _normalised_pair(image_features: Tensor, text_features: Tensor) -> tuple[Tensor, Tensor]:
    """Both feature sets L2-normalised in at least float32 (normalising bf16 rows in bf16 loses ~3 digits)."""
    if image_features.ndim != 2 or image_features.shape != text_features.shape:
        raise DataError(
            "image and text features must both be (batch, dim) with the same shape, got "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(image_features.dtype, text_features.dtype), torch.float32)
    return F.normalize(image_features.to(dtype), dim=-1), F.normalize(text_features.to(dtype), dim=-1)


def _all_gather(features: Tensor, *, with_grad: bool, rank: int, world_size: int) -> Tensor:
    """(B, D) on each rank -> (world_size * B, D), in rank order."""
    if with_grad:
        # Imported here: torch.distributed.nn is absent from builds without distributed support.
        from torch.distributed.nn.functional import all_gather

        with warnings.catch_warnings():
            # Deprecated in favour of a private API (_functional_collectives) whose backward we would have to
            # trust blindly; this one is what open_clip uses and what the 2-process tests verify.
            warnings.simplefilter("ignore", FutureWarning)
            return torch.cat(all_gather(features), dim=0)
    shards = [torch.empty_like(features) for _ in range(world_size)]
    dist.all_gather(shards, features.detach().contiguous())
    # dist.all_gather writes into plain buffers outside autograd, so no gathered shard has a gradient, this rank's own
    # copy included. Putting the local tensor back in its slot keeps this rank's rows differentiable; without it the
    # towers would get no gradient at all (only the logit scale would).
    shards[rank] = features
    return torch.cat(shards, dim=0)


def _check_layout(*, local_loss: bool, gather_with_grad: bool, rank: int, world_size: int) -> None:
    if world_size < 1:
        raise ConfigError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank must be in [0, {world_size}) for world_size={world_size}, got {rank}")
    # open_clip accepts this combination, but then each rank's gradient lacks what the other ranks' rows send to its
    # own features, so it is not the gradient of any global loss. Refused on one process too, so that a config fails
    # before the multi-GPU run it was written for.
    if local_loss and not gather_with_grad:
        raise ConfigError(
            "local_loss=True needs gather_with_grad=True (without it each rank misses part of its gradient); "
            "set gather_with_grad=True, or local_loss=False"
        )


def _check_process_group(*, rank: int, world_size: int) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise ConfigError(
            f"the loss was built for world_size={world_size}, but no torch.distributed process group is initialised; "
            "initialise one first (vlm.distributed.init, under torchrun) or use world_size=1"
        )
    if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
        raise ConfigError(
            f"the loss was built for rank {rank} of {world_size}, but the process group says rank "
            f"{dist.get_rank()} of {dist.get_world_size()}; pass the process group's rank and world size"
        )


@contextlib.contextmanager
def _autocast_off(device: torch.device) -> Iterator[None]:
    """Switch autocast off, so the logit matmul runs in the features' (float32) dtype."""
    if torch.amp.is_autocast_available(device.type):
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    else:
        yield
