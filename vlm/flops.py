"""Model FLOPs utilisation (MFU): the FLOPs a training step needs, over what the device could do in that time.

    flops_per_sample(forward, images, tokens)   forward + backward FLOPs of one sample, counted by torch's
                                                `FlopCounterMode` on a real pass (matrix products, convolutions,
                                                attention), so any open_clip architecture is counted as it runs
    peak_flops(device, precision)               the device's dense peak for that precision, from the vendor
                                                datasheets below; None where unknown (pass --peak-tflops)

MFU = flops_per_sample x samples/s / (peak x processes), as PaLM defines it: the model's FLOPs, not the hardware's,
so recomputation (gradient checkpointing, the no-grad pass of contrastive accumulation) lowers it, honestly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) TFLOP/s from the vendors' datasheets: 16-bit tensor cores (bf16 = fp16), TF32 tensor cores,
# plain fp32. The H200 SXM has the H100 SXM's arithmetic. First match of the name wins, so "H100 PCIe" comes first.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H100 PCIe", {"16bit": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 NVL", {"16bit": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("H200", {"16bit": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H100", {"16bit": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("A100", {"16bit": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"16bit": 362.1, "tf32": 183.0, "fp32": 91.6}),
    ("A10G", {"16bit": 70.0, "tf32": 35.0, "fp32": 31.2}),
    ("L4", {"16bit": 121.0, "tf32": 60.0, "fp32": 30.3}),
]


def arithmetic(precision: str) -> str:
    """Which peak a training precision runs at: 16-bit tensor cores, TF32 (fp32 matmuls with TF32 allowed) or fp32."""
    if precision in ("amp", "amp_bf16", "fp16", "bf16"):
        return "16bit"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"


def peak_flops(device: torch.device, precision: str) -> float | None:
    """Dense peak FLOP/s of one `device` at `precision`; None for a CPU or a GPU not in `PEAK_TFLOPS`."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS:
        if key in name:
            return peaks[arithmetic(precision)] * 1e12
    return None


def flops_per_sample(forward: nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> float:
    """Forward + backward FLOPs per sample of `forward(images, tokens)` (a batch of one or more), as trained.

    The pass runs in eval mode (BatchNorm statistics stay as they are; the FLOPs are the same) under a forked RNG
    (the training stream is not advanced), and leaves no gradients behind."""
    was_training = forward.training
    params = [p for p in forward.parameters() if p.requires_grad]
    devices = [images.device] if images.device.type == "cuda" else []
    forward.eval()
    try:
        with torch.random.fork_rng(devices=devices), FlopCounterMode(display=False) as counter:
            outputs = forward(images, tokens)
            total = sum(o.float().sum() for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad)
            if isinstance(total, torch.Tensor):
                total.backward()
    finally:
        forward.train(was_training)
        for p in params:
            p.grad = None
    return counter.get_total_flops() / images.shape[0]


def mfu(flops_per_sample: float, samples_per_s: float, peak: float, processes: int = 1) -> float:
    """The fraction of `processes` devices' peak that `samples_per_s` (over all processes) achieves."""
    return flops_per_sample * samples_per_s / (peak * processes)
