"""LoRA through peft: only adapters train, the merged export loads in plain open_clip and matches the unmerged
forward, the adapter reloads onto its base, and targets that cannot work are refused before anything changes."""

from __future__ import annotations

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from vlm import checkpoint, lora, models
from vlm.config import LoraOptions
from vlm.errors import CheckpointError, ConfigError
from vlm.loss import ClipLoss


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """vlm-tiny with LoRA r=4 on both towers after three SGD steps of the contrastive loss."""
    torch.manual_seed(0)
    enc = models.load("vlm-tiny", device="cpu", precision="fp32")
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    handle = lora.apply(enc, LoraOptions(lora_rank=4))
    params = [p for p in enc.model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 32, generator=g)
    tokens = enc.tokenize(["a red circle", "a blue star", "a green square", "a white cross"])
    enc.model.train()
    for _ in range(3):
        img, txt, scale = enc.model(images, tokens)[:3]
        loss = ClipLoss()(img, txt, scale)
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.model.eval()
    return enc, handle, before, tmp_path_factory.mktemp("lora")


def test_only_the_adapters_train(trained):
    enc, handle, before, _ = trained
    counts = handle.counts()
    assert 0 < counts["trainable"] < counts["total"] / 10
    after = {k.replace(".base_layer", ""): v for k, v in enc.model.state_dict().items() if ".lora_" not in k}
    assert after.keys() == before.keys()
    for key, value in before.items():
        if ".attn.in_proj_" in key or ".attn.out_proj." in key:
            # peft's MultiheadAttention adds the update before each call and subtracts it after: round-off only
            torch.testing.assert_close(after[key], value, rtol=0, atol=1e-6)
        else:
            assert torch.equal(after[key], value), key
    assert any(v.abs().sum() > 0 for k, v in handle.adapter_state().items() if "lora_B" in k)
    assert any(".attn" in t for t in handle.targets) and any(t.startswith("visual.") for t in handle.targets)


def test_merged_export_loads_in_open_clip_and_matches_the_unmerged_model(trained):
    enc, handle, before, tmp = trained
    out = lora.export_merged(handle, tmp / "merged")
    models.register_model_configs()
    clip, _, _ = open_clip.create_model_and_transforms("vlm-tiny", pretrained=str(out / checkpoint.WEIGHTS_NAME))
    clip.eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    tokens = enc.tokenize(["a red circle", "two stars", "nothing"])
    with torch.no_grad():
        theirs = clip.encode_image(images), clip.encode_text(tokens)
        base = open_clip.create_model("vlm-tiny")
        base.load_state_dict(before)
        base.eval()
        original = base.encode_image(images)
    ours = enc.encode_image(images, normalize=False), enc.encode_text(tokens, normalize=False)
    torch.testing.assert_close(theirs[0], ours[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(theirs[1], ours[1], rtol=1e-4, atol=1e-5)
    assert (original - ours[0]).abs().max() > 1e-3  # the adapters did change the model
    assert checkpoint.read_config(out)["provenance"]["lora"]["rank"] == 4


def test_adapter_reloads_onto_its_base_only(trained):
    enc, handle, before, tmp = trained
    folder = lora.save_adapter(handle, tmp / "adapter")
    assert (folder / lora.ADAPTER_WEIGHTS).stat().st_size < 0.2 * sum(v.numel() * 4 for v in before.values())
    base = models.load("vlm-tiny", device="cpu", precision="fp32")
    base.model.load_state_dict(before)
    base.fingerprint = models.weights_fingerprint(base.model)
    reloaded = lora.load_adapter(base, folder)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(reloaded.encoders.encode_image(images), enc.encode_image(images))
    other = models.load("vlm-tiny", device="cpu")  # fresh random weights: another base
    with pytest.raises(CheckpointError, match="trained on weights"):
        lora.load_adapter(other, folder)


@pytest.mark.parametrize(
    "targets, towers, message",
    [(("no_such_layer",), "both", "no module of that name"), (("out_proj",), "text", "never calls"),
     (("ln_1",), "both", "LayerNorm"), (("c_fc",), "image", None)],
)  # fmt: skip
def test_targets_are_checked_before_anything_changes(tiny_encoders, targets, towers, message):
    keys = list(tiny_encoders.model.state_dict())
    opts = LoraOptions(lora_rank=2, lora_towers=towers, lora_targets=targets)
    if message is None:
        found = lora.resolve_targets(tiny_encoders, opts)
        assert found and all(t.startswith("visual.") and t.endswith("mlp.c_fc") for t in found)
    else:
        with pytest.raises(ConfigError, match=message):
            lora.apply(tiny_encoders, opts)
    assert list(tiny_encoders.model.state_dict()) == keys  # nothing was wrapped


def test_resnet_attention_pool_projections_are_refused_by_name():
    enc = models.load("demo", device="cpu")
    with pytest.raises(ConfigError, match=r"never calls visual\.attnpool\.q_proj"):
        lora.resolve_targets(enc, LoraOptions(lora_rank=2, lora_towers="image", lora_targets=("attnpool.q_proj",)))
    default = lora.resolve_targets(enc, LoraOptions(lora_rank=2, lora_towers="image"))
    assert "visual.layer1.0.conv2" in default and not any("attnpool" in t for t in default)


def test_trainer_with_lora_saves_merged_and_adapter_and_resumes(tmp_path):
    import shutil

    from vlm.config import TrainConfig, from_dict, to_dict
    from vlm.synth import generate
    from vlm.train import train

    data = tmp_path / "data"
    generate(data, scenes=32, seed=3, image_size=32, progress=False)

    def cfg(out, **extra):
        return from_dict(TrainConfig, {
            "output_dir": str(out), "batch_size": 8, "steps": 4, "seed": 1, "save_every": 2, "keep_last": 5,
            "val_every": 0, "log_every": 1, "tensorboard": False, "model": {"model": "vlm-tiny"},
            "data": {"train_data": str(data / "pairs.csv"), "workers": 0, "val_fraction": 0.0},
            "optim": {"warmup_steps": 1, "lr": 1e-2}, "lora": {"lora_rank": 2, "lora_towers": "text"}, **extra,
        })  # fmt: skip

    bad = {**to_dict(cfg(tmp_path / "bad")), "lora": {"lora_rank": 2, "lora_targets": ["nope"]}}
    with pytest.raises(ConfigError, match="no module of that name"):
        train(from_dict(TrainConfig, bad), progress=False)
    assert checkpoint.latest(tmp_path / "bad") is None
    result = train(cfg(tmp_path / "a"), progress=False)
    final = result.final_checkpoint
    assert (final / lora.ADAPTER_DIR / lora.ADAPTER_WEIGHTS).is_file()
    models.register_model_configs()
    clip, _, _ = open_clip.create_model_and_transforms("vlm-tiny", pretrained=str(final / checkpoint.WEIGHTS_NAME))
    step2 = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000002" / checkpoint.WEIGHTS_NAME))
    trained = clip.state_dict()  # LoRA on the text tower only: the image tower stays as it was, the text one moves
    assert all(torch.equal(v, step2[k]) for k, v in trained.items() if k.startswith("visual."))
    assert any(not torch.equal(v, step2[k]) for k, v in trained.items() if k.startswith("transformer."))
    # Resume from step 2 (the later checkpoints removed): the adapter is read back, the run ends where it did.
    a = load_file(str(final / checkpoint.WEIGHTS_NAME))
    shutil.rmtree(tmp_path / "a" / "checkpoints" / "step_00000004")
    shutil.rmtree(final)
    resumed = train(cfg(tmp_path / "a", resume=True), progress=False)
    b = load_file(str(resumed.final_checkpoint / checkpoint.WEIGHTS_NAME))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
