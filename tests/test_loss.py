"""vlm.loss against independent references: hand-written formulas (NumPy, float64), open_clip's own losses, finite
differences, and one process on the whole batch versus two gloo processes under DDP."""

from __future__ import annotations

import math
import re
import socket
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vlm.errors import ConfigError, DataError
from vlm.loss import LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, ClipLoss, SigLipLoss, gather_features


def _open_clip_loss():
    # Imported here, not at the top: the spawned DDP workers import this module and need not pay open_clip's import.
    import open_clip.loss

    return open_clip.loss


def _features(n: int, d: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (3.0 * torch.randn(n, d, generator=gen, dtype=torch.float64)).to(dtype)  # unnormalised on purpose


def _pair(n: int, d: int = 16, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    image = _features(n, d, seed=n, dtype=dtype)
    # Texts correlated with their images, so that the loss is neither trivial nor saturated.
    text = (image.double() + 2 * _features(n, d, seed=100 + n, dtype=torch.float64)).to(dtype)
    return image.requires_grad_(), text.requires_grad_()


# ---------------------------------------------------------------- hand formulas (NumPy, float64)


def _np_normalise(x: torch.Tensor) -> np.ndarray:
    x = x.detach().double().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _hand_infonce(image: torch.Tensor, text: torch.Tensor, scale: float) -> float:
    """(CE(image→text) + CE(text→image)) / 2 with an explicit log-sum-exp per row."""
    logits = scale * _np_normalise(image) @ _np_normalise(text).T

    def cross_entropy(rows: np.ndarray) -> float:
        total = 0.0
        for k, row in enumerate(rows):
            top = row.max()
            total += top + math.log(np.exp(row - top).sum()) - row[k]
        return total / len(rows)

    return (cross_entropy(logits) + cross_entropy(logits.T)) / 2


def _hand_siglip(image: torch.Tensor, text: torch.Tensor, scale: float, bias: float) -> float:
    """Zhai et al. 2023, eq. 1: -1/B sum_ij log sigmoid(y_ij z_ij), y = +1 on the diagonal, -1 elsewhere."""
    z = scale * _np_normalise(image) @ _np_normalise(text).T + bias
    y = 2 * np.eye(len(z)) - 1
    return float(np.logaddexp(0.0, -y * z).sum() / len(z))  # log(1 + exp(-yz)) = -log sigmoid(yz)


# ---------------------------------------------------------------- single process: values


@pytest.mark.parametrize("n", [2, 7, 13])
@pytest.mark.parametrize("scale", [1.0, 1 / 0.07, 100.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_clip_loss_equals_hand_formula(n, scale, dtype):
    image, text = _pair(n, dtype=dtype)
    loss = ClipLoss()(image, text, torch.tensor(scale))
    assert loss.shape == ()
    assert loss.item() == pytest.approx(_hand_infonce(image, text, scale), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("n", [2, 7, 13])
@pytest.mark.parametrize("scale, bias", [(10.0, -10.0), (3.0, 0.5)])
def test_siglip_loss_equals_hand_formula(n, scale, bias):
    image, text = _pair(n)
    loss = SigLipLoss()(image, text, torch.tensor(scale), torch.tensor(bias))
    assert loss.shape == ()
    assert loss.item() == pytest.approx(_hand_siglip(image, text, scale, bias), rel=1e-5)


@pytest.mark.parametrize("cache_labels", [True, False])
def test_changing_batch_size_keeps_labels_right(cache_labels):
    loss_fn = ClipLoss(cache_labels=cache_labels)
    for n in (7, 13, 7, 5):  # a short last batch, then back
        image, text = _pair(n)
        assert loss_fn(image, text, torch.tensor(20.0)).item() == pytest.approx(
            _hand_infonce(image, text, 20.0), rel=1e-5
        )


def test_logits_are_float32_scaled_cosines_and_transposes():
    image, text = _pair(7, dtype=torch.bfloat16)
    per_image, per_text = ClipLoss().logits(image, text, torch.tensor(2.0))
    expected = 2.0 * _np_normalise(image) @ _np_normalise(text).T
    assert per_image.dtype == per_text.dtype == torch.float32
    np.testing.assert_allclose(per_image.detach().numpy(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(per_text, per_image.T)


def test_logits_stay_float32_under_autocast():
    image, text = _pair(13)
    scale = torch.tensor(1 / 0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (image @ text.T).dtype == torch.bfloat16  # autocast would truncate a plain logit matmul
        per_image, _ = ClipLoss().logits(image, text, scale)
        clip = ClipLoss()(image, text, scale)
        siglip = SigLipLoss()(image, text, torch.tensor(10.0), torch.tensor(-10.0))
    assert per_image.dtype == torch.float32
    assert clip.item() == pytest.approx(_hand_infonce(image, text, 1 / 0.07), rel=1e-5)
    assert siglip.item() == pytest.approx(_hand_siglip(image, text, 10.0, -10.0), rel=1e-5)


# ---------------------------------------------------------------- single process: against open_clip, with gradients


def _grads(loss: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("n", [7, 13])
def test_clip_loss_and_gradients_equal_open_clip(n):
    image, text = _pair(n)
    log_scale = torch.tensor(LOGIT_SCALE_INIT, requires_grad=True)
    inputs = (image, text, log_scale)

    ours = ClipLoss()(image, text, log_scale.exp())
    # open_clip expects normalised features; normalising the same leaves makes the gradients comparable.
    theirs = _open_clip_loss().ClipLoss()(F.normalize(image, dim=-1), F.normalize(text, dim=-1), log_scale.exp())

    torch.testing.assert_close(ours, theirs)
    for ours_grad, theirs_grad in zip(_grads(ours, inputs), _grads(theirs, inputs), strict=True):
        assert ours_grad.abs().max() > 0
        torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("n", [7, 13])
def test_siglip_loss_and_gradients_equal_open_clip(n):
    image, text = _pair(n)
    log_scale = torch.tensor(math.log(10.0), requires_grad=True)
    bias = torch.tensor(-4.0, requires_grad=True)
    inputs = (image, text, log_scale, bias)

    ours = SigLipLoss()(image, text, log_scale.exp(), bias)
    theirs = _open_clip_loss().SigLipLoss()(
        F.normalize(image, dim=-1), F.normalize(text, dim=-1), log_scale.exp(), bias
    )

    torch.testing.assert_close(ours, theirs)
    for ours_grad, theirs_grad in zip(_grads(ours, inputs), _grads(theirs, inputs), strict=True):
        assert ours_grad.abs().max() > 0
        torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    """bf16/fp16 features are upcast exactly, so the loss is the float32 loss of the same values; open_clip, which
    normalises and multiplies in the input dtype, agrees only loosely."""
    image, text = _pair(13, dtype=dtype)
    log_scale = torch.tensor(LOGIT_SCALE_INIT, requires_grad=True)
    inputs = (image, text, log_scale)

    ours = ClipLoss()(image, text, log_scale.exp())
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(_hand_infonce(image, text, 1 / 0.07), rel=1e-5)

    wide_image, wide_text = (x.detach().float().requires_grad_() for x in (image, text))
    wide_inputs = (wide_image, wide_text, log_scale)
    wide = ClipLoss()(wide_image, wide_text, log_scale.exp())
    ours_grads, wide_grads = _grads(ours, inputs), _grads(wide, wide_inputs)
    assert ours_grads[0].dtype == dtype
    for ours_grad, wide_grad in zip(ours_grads, wide_grads, strict=True):
        torch.testing.assert_close(ours_grad.float(), wide_grad, rtol=1e-2, atol=1e-3)  # only the final cast differs

    theirs = _open_clip_loss().ClipLoss()(F.normalize(image, dim=-1), F.normalize(text, dim=-1), log_scale.exp())
    assert theirs.float().item() == pytest.approx(ours.item(), rel=5e-2, abs=5e-2)


def test_gradients_match_finite_differences():
    image, text = (x.detach().double().requires_grad_() for x in _pair(5, d=4))
    log_scale = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-1.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, t, s: ClipLoss()(i, t, s.exp()), (image, text, log_scale))
    assert torch.autograd.gradcheck(lambda i, t, s, b: SigLipLoss()(i, t, s.exp(), b), (image, text, log_scale, bias))


# ---------------------------------------------------------------- errors and conventions


def test_temperature_constants_follow_clip():
    assert math.exp(LOGIT_SCALE_INIT) == pytest.approx(1 / 0.07)
    assert abs(LOGIT_SCALE_MAX - 4.6052) < 1e-4  # open_clip_train's clamp, ln(100)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"local_loss": True, "gather_with_grad": False}, "gather_with_grad=True"),
        ({"rank": 2, "world_size": 2}, "rank must be in [0, 2)"),
        ({"rank": -1, "world_size": 2}, "rank must be in [0, 2)"),
        ({"world_size": 0}, "world_size must be >= 1"),
    ],
)
def test_clip_loss_rejects_invalid_layouts(kwargs, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        ClipLoss(**kwargs)


def test_siglip_loss_rejects_invalid_layouts():
    with pytest.raises(ConfigError, match="rank must be in"):
        SigLipLoss(rank=3, world_size=2)


NO_GROUP = re.escape("no torch.distributed process group is initialised")


def test_several_processes_without_a_process_group_is_a_clear_error():
    assert not dist.is_initialized()
    image, text = _pair(4)
    with pytest.raises(ConfigError, match=NO_GROUP):
        ClipLoss(rank=1, world_size=2)(image, text, torch.tensor(10.0))
    with pytest.raises(ConfigError, match=NO_GROUP):
        SigLipLoss(rank=0, world_size=2)(image, text, torch.tensor(10.0), torch.tensor(-10.0))
    with pytest.raises(ConfigError, match=NO_GROUP):
        gather_features(image, text, local_loss=False, gather_with_grad=True, rank=0, world_size=2)


def test_gather_features_on_one_process_is_the_identity():
    image, text = _pair(3)
    gathered = gather_features(image, text, local_loss=False, gather_with_grad=True, rank=0, world_size=1)
    assert gathered[0] is image and gathered[1] is text


@pytest.mark.parametrize("shapes", [((7, 16), (6, 16)), ((7, 16), (7, 8)), ((16,), (16,))])
@pytest.mark.parametrize("loss_fn", [ClipLoss(), SigLipLoss()], ids=["clip", "siglip"])
def test_mismatched_features_are_a_data_error(shapes, loss_fn):
    image, text = torch.randn(*shapes[0]), torch.randn(*shapes[1])
    extra = (torch.tensor(-10.0),) if isinstance(loss_fn, SigLipLoss) else ()
    with pytest.raises(DataError, match="same shape"):
        loss_fn(image, text, torch.tensor(10.0), *extra)


def test_both_losses_take_one_signature():
    """A trainer calls either loss as loss(image, text, scale, bias): InfoNCE ignores the bias, SigLIP needs it."""
    image, text, scale, bias = torch.randn(5, 8), torch.randn(5, 8), torch.tensor(10.0), torch.tensor(-10.0)
    torch.testing.assert_close(ClipLoss()(image, text, scale, bias), ClipLoss()(image, text, scale))
    torch.testing.assert_close(
        SigLipLoss()(image, text, scale, bias), SigLipLoss()(image, text, scale, logit_bias=bias)
    )
    with pytest.raises(ConfigError, match="logit bias"):
        SigLipLoss()(image, text, scale)


# ---------------------------------------------------------------- two gloo processes under DDP versus one process

WORLD = 2
LOCAL_BATCH = 5  # global batch 10
IN_DIM, EMB_DIM = 6, 4
# name -> (loss kind, local_loss, gather_with_grad)
CASES = {
    "clip_global": ("clip", False, True),
    "clip_local": ("clip", True, True),
    "clip_global_no_grad_gather": ("clip", False, False),
    "siglip": ("siglip", False, True),
}


class _Towers(nn.Module):
    """A two-tower "model": linear image and text projections, a log logit scale and, for SigLIP, a bias."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same weights in every process
        self.image = nn.Linear(IN_DIM, EMB_DIM)
        self.text = nn.Linear(IN_DIM, EMB_DIM)
        self.log_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT if kind == "clip" else math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-1.0)) if kind == "siglip" else None

    def forward(self, x_image: torch.Tensor, x_text: torch.Tensor) -> tuple[torch.Tensor, ...]:
        extra = (self.bias,) if self.bias is not None else ()
        return self.image(x_image), self.text(x_text), self.log_scale.exp(), *extra


def _global_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    x_image = torch.randn(WORLD * LOCAL_BATCH, IN_DIM, generator=gen)
    x_text = x_image + 0.5 * torch.randn(WORLD * LOCAL_BATCH, IN_DIM, generator=gen)
    return x_image, x_text


def _make_loss(kind: str, local_loss: bool, gather_with_grad: bool, rank: int, world_size: int) -> nn.Module:
    if kind == "siglip":
        return SigLipLoss(rank=rank, world_size=world_size)
    return ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank, world_size=world_size)


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=timedelta(seconds=60)
    )
    try:
        x_image, x_text = _global_inputs()
        rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
        results: dict = {}
        for name, (kind, local_loss, gather_with_grad) in CASES.items():
            model = DistributedDataParallel(_Towers(kind))
            loss = _make_loss(kind, local_loss, gather_with_grad, rank, world_size)(*model(x_image[rows], x_text[rows]))
            loss.backward()  # DDP averages the parameter gradients over the ranks
            grads = {key: p.grad.clone() for key, p in model.module.named_parameters()}
            results[name] = {"loss": loss.detach().clone(), "grads": grads}
        try:  # a loss built for the other rank: refused before any collective, so nothing hangs
            ClipLoss(rank=1 - rank, world_size=world_size)(x_image[rows], x_text[rows], torch.tensor(1.0))
            results["wrong_rank_error"] = ""
        except ConfigError as exc:
            results["wrong_rank_error"] = str(exc)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        # Teardown in step: one clone run lost a worker to SIGABRT ("terminate called without an active exception")
        # here. Drop the last DDP wrapper (its reducer holds the group), then let neither rank close its gloo pairs
        # while the other may still use them.
        del model
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict]:
    """Every case run once in two spawned gloo processes; one dict per rank."""
    out_dir = tmp_path_factory.mktemp("ddp")
    context = mp.start_processes(
        _ddp_worker, args=(WORLD, _free_port(), str(out_dir)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 90
    while not context.join(timeout=1):  # re-raises a worker's exception with its traceback
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the two DDP worker processes did not finish within 90 s")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _single_process(kind: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Loss and gradients of one process on the whole batch, and the per-pair loss terms to split into rank blocks."""
    model = _Towers(kind)
    outputs = model(*_global_inputs())
    loss = (SigLipLoss() if kind == "siglip" else ClipLoss())(*outputs)
    loss.backward()
    with torch.no_grad():
        image, text = (F.normalize(x, dim=-1) for x in outputs[:2])
        logits = outputs[2] * image @ text.T  # (N, N)
        if kind == "siglip":
            logits = logits + outputs[3]
    return loss.detach(), {key: p.grad for key, p in model.named_parameters()}, logits


def _block(rank: int) -> slice:
    return slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)


def _check_ranks_agree(ddp_results: list[dict], name: str) -> dict[str, torch.Tensor]:
    """After DDP's all-reduce every rank holds the same gradient; returns rank 0's."""
    for key, grad in ddp_results[0][name]["grads"].items():
        torch.testing.assert_close(ddp_results[1][name]["grads"][key], grad)
    return ddp_results[0][name]["grads"]


@pytest.mark.parametrize("name", ["clip_global", "clip_local", "siglip"])
def test_ddp_gradients_equal_one_process_on_the_global_batch(ddp_results, name):
    kind = CASES[name][0]
    _, full_grads, _ = _single_process(kind)
    grads = _check_ranks_agree(ddp_results, name)
    assert grads.keys() == full_grads.keys()
    for key, full_grad in full_grads.items():
        assert full_grad.abs().max() > 0, key
        torch.testing.assert_close(grads[key], full_grad, rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")


def test_ddp_global_clip_loss_is_the_global_loss_on_every_rank(ddp_results):
    full_loss, _, _ = _single_process("clip")
    for rank in range(WORLD):
        torch.testing.assert_close(ddp_results[rank]["clip_global"]["loss"], full_loss)


def test_ddp_local_clip_loss_is_its_rows_and_averages_to_the_global_loss(ddp_results):
    """With local loss, rank r's loss is the symmetric InfoNCE of its own rows (images and texts) against all columns;
    it is not the global loss, but the mean over ranks is."""
    full_loss, _, logits = _single_process("clip")
    losses = [ddp_results[rank]["clip_local"]["loss"] for rank in range(WORLD)]
    for rank, loss in enumerate(losses):
        labels = torch.arange(LOCAL_BATCH) + rank * LOCAL_BATCH
        own_rows = (F.cross_entropy(logits[_block(rank)], labels) + F.cross_entropy(logits.T[_block(rank)], labels)) / 2
        torch.testing.assert_close(loss, own_rows)
    assert not math.isclose(losses[0].item(), losses[1].item(), rel_tol=1e-3)  # the check above is not vacuous
    torch.testing.assert_close(torch.stack(losses).mean(), full_loss)


def test_ddp_siglip_loss_is_its_rows_and_averages_to_the_global_loss(ddp_results):
    full_loss, _, logits = _single_process("siglip")
    labels = 2 * torch.eye(WORLD * LOCAL_BATCH) - 1
    terms = -F.logsigmoid(labels * logits)  # (N, N), one term per (image, text) pair
    losses = [ddp_results[rank]["siglip"]["loss"] for rank in range(WORLD)]
    for rank, loss in enumerate(losses):
        torch.testing.assert_close(loss, terms[_block(rank)].sum() / LOCAL_BATCH)
    torch.testing.assert_close(torch.stack(losses).mean(), full_loss)


def test_ddp_without_gradient_gather_shrinks_tower_gradients_by_world_size(ddp_results):
    """gather_with_grad=False (open_clip's default): each rank back-propagates through its own rows only, so DDP's
    average gives the towers 1/world_size of the full-batch gradient, while the logit scale, computed in full on
    every rank, gets the exact one. The loss value itself is still the global loss."""
    full_loss, full_grads, _ = _single_process("clip")
    grads = _check_ranks_agree(ddp_results, "clip_global_no_grad_gather")
    for rank in range(WORLD):
        torch.testing.assert_close(ddp_results[rank]["clip_global_no_grad_gather"]["loss"], full_loss)
    for key, full_grad in full_grads.items():
        expected = full_grad if key == "log_scale" else full_grad / WORLD
        torch.testing.assert_close(grads[key], expected, rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")


def test_ddp_loss_built_for_another_rank_is_refused(ddp_results):
    for rank in range(WORLD):
        assert f"built for rank {1 - rank} of {WORLD}" in ddp_results[rank]["wrong_rank_error"]
        assert f"process group says rank {rank} of {WORLD}" in ddp_results[rank]["wrong_rank_error"]
