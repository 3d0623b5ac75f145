"""vlm.flops: the FLOP count of a training pass against a hand count, the peak table, MFU, and the trainer's log."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vlm import flops
from vlm.train import ClipForward


class TinyClip(nn.Module):
    """Image: flatten (3x4x4 = 48) -> Linear(48, 8) -> Linear(8, 6). Text: Embedding(10, 8) -> mean -> Linear(8, 6)."""

    def __init__(self):
        super().__init__()
        self.img1, self.img2 = nn.Linear(48, 8), nn.Linear(8, 6)
        self.emb, self.txt = nn.Embedding(10, 8), nn.Linear(8, 6)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.logit_bias = None

    def encode_image(self, x):
        return self.img2(self.img1(x.flatten(1)))

    def encode_text(self, t):
        return self.txt(self.emb(t).mean(1))


def test_flops_per_sample_equals_the_hand_count():
    # A matrix product (b, n) @ (n, m) costs 2 b n m FLOPs. Forward: 2(48*8 + 8*6 + 8*6). Backward: each layer's
    # weight gradient costs its forward again; input gradients only where the input needs one: img2 and txt (their
    # inputs come from trained layers), not img1 (its input is the data).
    forward_flops = 2 * (48 * 8 + 8 * 6 + 8 * 6)
    backward_flops = 2 * (48 * 8 + 8 * 6 + 8 * 6) + 2 * (8 * 6 + 8 * 6)
    model = TinyClip()
    images, tokens = torch.randn(5, 3, 4, 4), torch.randint(0, 10, (5, 7))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    got = flops.flops_per_sample(ClipForward(model), images, tokens)
    assert got == forward_flops + backward_flops
    assert all(p.grad is None for p in model.parameters())  # leaves nothing behind
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert torch.equal(rng, torch.get_rng_state())
    assert model.training


def test_peak_table_and_mfu(monkeypatch):
    assert flops.peak_flops(torch.device("cpu"), "amp_bf16") is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert flops.peak_flops(torch.device("cuda", 0), "amp_bf16") == pytest.approx(756e12)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert flops.peak_flops(torch.device("cuda", 0), "amp") == pytest.approx(989.4e12)
    before = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = True
        assert flops.peak_flops(torch.device("cuda", 0), "fp32") == pytest.approx(494.7e12)
        torch.backends.cuda.matmul.allow_tf32 = False
        assert flops.peak_flops(torch.device("cuda", 0), "fp32") == pytest.approx(66.9e12)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert flops.peak_flops(torch.device("cuda", 0), "amp_bf16") is None
    assert flops.mfu(1e9, 300.0, 1e12, processes=2) == pytest.approx(0.15)


def test_trainer_logs_mfu_with_a_given_peak(tmp_path):
    from tests.test_train import make_cfg
    from vlm.synth import generate
    from vlm.train import train

    generate(tmp_path / "data", scenes=40, seed=0, image_size=48, progress=False)
    cfg = make_cfg(tmp_path, tmp_path / "data", steps=2, peak_tflops=0.5, data={"val_fraction": 0.0})
    train(cfg, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/mfu" in r]
    assert len(rows) == 2
    from vlm import models

    torch.manual_seed(0)
    encoders = models.load("vlm-tiny", device="cpu")
    size = encoders.image_size if isinstance(encoders.image_size, int) else encoders.image_size[0]
    per_sample = flops.flops_per_sample(
        ClipForward(encoders.model), torch.zeros(1, 3, size, size), torch.zeros(1, encoders.context_length).long()
    )
    assert per_sample > 1e6
    for r in rows:
        assert r["train/mfu"] == pytest.approx(per_sample * r["train/samples_per_s"] / 0.5e12, rel=1e-6)
