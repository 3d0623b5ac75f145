import json
import time

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlm import checkpoint, models
from vlm.errors import CheckpointError, ModelError


def _image(seed=0, size=(45, 37)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8))


def test_encoders_give_normalised_float32_features(tiny_encoders):
    enc = tiny_encoders
    images = torch.stack([enc.preprocess(_image(i)) for i in range(3)])
    img = enc.encode_image(images)
    txt = enc.encode_text(["a red circle", "a blue square"])
    assert img.shape == (3, enc.embed_dim) and txt.shape == (2, enc.embed_dim)
    assert img.dtype == txt.dtype == torch.float32
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    # Same numbers as open_clip's own forward on the same module.
    with torch.no_grad():
        ref = F.normalize(enc.model.encode_image(images), dim=-1)
        ref_txt = F.normalize(
            enc.model.encode_text(open_clip.get_tokenizer("vlm-tiny")(["a red circle", "a blue square"])), dim=-1
        )
    torch.testing.assert_close(img, ref)
    torch.testing.assert_close(txt, ref_txt)
    assert enc.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # CLIP's initial temperature


def test_encoding_leaves_the_model_in_the_mode_it_found():
    torch.manual_seed(0)
    enc = models.load("vlm-tiny", device="cpu")  # its own copy: the modes are changed here
    side = enc.image_size if isinstance(enc.image_size, int) else enc.image_size[0]
    images, texts = torch.rand(2, 3, side, side), ["a red circle", "a blue square"]
    reference = enc.encode_image(images), enc.encode_text(texts)  # loaded in eval mode
    enc.model.train()
    enc.model.visual.eval()  # mixed modes, as a trainer with a frozen tower may have them
    modes = {name: m.training for name, m in enc.model.named_modules()}
    for _ in range(2):
        torch.testing.assert_close(enc.encode_image(images), reference[0])  # in eval mode: no dropout
        torch.testing.assert_close(enc.encode_text(texts), reference[1])
        assert {name: m.training for name, m in enc.model.named_modules()} == modes
    with models.evaluating(enc.model):
        assert not any(m.training for m in enc.model.modules())
    assert {name: m.training for name, m in enc.model.named_modules()} == modes


def test_image_and_text_encoders_are_modules(tiny_encoders):
    enc = tiny_encoders
    x = enc.preprocess(_image()).unsqueeze(0)
    tokens = enc.tokenize(["a cat"])
    with torch.no_grad():
        torch.testing.assert_close(F.normalize(enc.image_encoder(x), dim=-1), enc.encode_image(x))
        torch.testing.assert_close(F.normalize(enc.text_encoder(tokens), dim=-1), enc.encode_text(tokens))


def test_checkpoint_loads_in_open_clip_unchanged(tiny_encoders, tmp_path):
    enc = tiny_encoders
    path = models.save(enc, tmp_path / "ck", provenance={"note": "test"})
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "open_clip_config.json"]
    x = torch.stack([enc.preprocess(_image(i)) for i in range(2)])
    texts = ["a small green star", "two shapes"]
    ours = models.load(str(path), device="cpu")
    assert ours.fingerprint == enc.fingerprint
    assert ours.provenance == {"note": "test"}
    torch.testing.assert_close(ours.encode_image(x), enc.encode_image(x))
    # open_clip itself, by registered name + weights file, and through its local-dir schema.
    m, _, _ = open_clip.create_model_and_transforms("vlm-tiny", pretrained=str(path / "model.safetensors"))
    m2, _, _ = open_clip.create_model_and_transforms(f"local-dir:{path}")
    tok = open_clip.get_tokenizer(f"local-dir:{path}")
    with torch.no_grad():
        for model in (m, m2):
            model.eval()
            torch.testing.assert_close(F.normalize(model.encode_image(x), dim=-1), enc.encode_image(x))
            torch.testing.assert_close(F.normalize(model.encode_text(tok(texts)), dim=-1), enc.encode_text(texts))


def test_fp16_storage_round_trips_its_fingerprint(tiny_encoders, tmp_path):
    path = models.save(tiny_encoders, tmp_path / "half", weights_dtype=torch.float16)
    record = json.loads((path / "config.json").read_text())
    loaded = models.load(str(path), device="cpu")
    assert loaded.fingerprint == record["fingerprint"] != tiny_encoders.fingerprint
    x = tiny_encoders.preprocess(_image()).unsqueeze(0)
    torch.testing.assert_close(loaded.encode_image(x), tiny_encoders.encode_image(x), atol=2e-3, rtol=0)


def test_pretrained_weights_file_and_dir(tiny_encoders, tmp_path):
    state = {k: v.clone() for k, v in tiny_encoders.model.state_dict().items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    from_pt = models.load("vlm-tiny", str(tmp_path / "w.pt"), device="cpu")
    assert from_pt.fingerprint == tiny_encoders.fingerprint
    ck = models.save(tiny_encoders, tmp_path / "ck")
    assert models.load("vlm-tiny", str(ck), device="cpu").fingerprint == tiny_encoders.fingerprint


def test_untrusted_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {"x": Evil()}}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="cannot load"):
        models.load("vlm-tiny", str(tmp_path / "evil.pt"), device="cpu")


def test_wrong_weights_report_the_keys(tiny_encoders, tmp_path):
    state = {k: v for k, v in tiny_encoders.model.state_dict().items() if not k.startswith("visual.transformer")}
    state["surprise"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ModelError) as e:
        models.load("vlm-tiny", str(tmp_path / "partial.pt"), device="cpu")
    assert "visual.transformer.resblocks.0" in str(e.value) and "surprise" in str(e.value)


@pytest.mark.parametrize(
    "model, pretrained, message",
    [
        ("no-such-model", None, "unknown model 'no-such-model'. "),
        ("ViT-B32", None, "Did you mean ViT-B-32"),
        ("vlm-tiny", "no-such-tag", "unknown pretrained tag 'no-such-tag' for vlm-tiny"),
        ("ViT-B-32", "laion2b_s34b_b7", "laion2b_s34b_b79k"),  # the error lists the valid tags
        ("vlm-tiny", "/nowhere/weights.bin", "pretrained weights file not found: /nowhere/weights.bin"),
        ("/nowhere/checkpoint", None, "model path not found"),
    ],
)
def test_bad_model_names_are_explained(model, pretrained, message):
    with pytest.raises(ModelError) as e:
        models.load(model, pretrained, device="cpu")
    assert message in str(e.value)


def test_offline_missing_weights_fail_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(ModelError) as e:
        models.load("RN50", "openai", device="cpu", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 30
    assert "cannot be reached" in str(e.value) and "--pretrained /path/to/" in str(e.value)


def test_a_bogus_name_gets_a_short_answer_and_hf_hub_offline_says_offline(monkeypatch, tmp_path):
    with pytest.raises(ModelError) as e:
        models.load("no-such-model", device="cpu")
    assert len(str(e.value)) < 300 and "ViT-B-32" in str(e.value)  # not the ~170 names
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelError, match="cannot be reached"):  # was "model path not found" (the "/" in the id)
        models.load("hf-hub:timm/no-such-repo-for-tests", device="cpu", cache_dir=str(tmp_path))


def test_checkpoint_dir_rejects_pretrained_and_missing_demo(tiny_encoders, tmp_path, monkeypatch):
    ck = models.save(tiny_encoders, tmp_path / "ck")
    with pytest.raises(ModelError, match="drop --pretrained"):
        models.load(str(ck), "laion2b_s34b_b79k")
    monkeypatch.setattr(models, "DEMO_CHECKPOINT", tmp_path / "absent")
    with pytest.raises(ModelError, match="demo model is missing"):
        models.load("demo")


def test_precision_rules():
    cpu = torch.device("cpu")
    assert models.resolve_precision("auto", cpu) == "fp32"
    with pytest.raises(ModelError, match="needs a CUDA device"):
        models.resolve_precision("amp", cpu)
    with pytest.raises(ModelError, match="unknown precision"):
        models.resolve_precision("fp8", cpu)


def test_read_config_errors(tmp_path, tiny_encoders):
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.read_config(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        checkpoint.read_config(tmp_path / "empty")
    ck = models.save(tiny_encoders, tmp_path / "ck")
    record = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**record, "format_version": 99}))
    with pytest.raises(CheckpointError, match="newer version"):
        checkpoint.read_config(ck)
    (ck / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        checkpoint.read_config(ck)
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        checkpoint.load_train_state(ck)


def test_pure_bf16_encodes_float32_input_like_the_fp32_model(tiny_encoders):
    # Pure bf16 weights take a float32 batch (what preprocessing makes): the input is cast to the weights' dtype,
    # as open_clip does; uncast, the first convolution raises "Input type (float) and bias type (BFloat16)".
    torch.manual_seed(0)
    bf16 = models.load("vlm-tiny", device="cpu", precision="bf16")
    bf16.model.load_state_dict({k: v.to(torch.bfloat16) for k, v in tiny_encoders.model.state_dict().items()})
    assert bf16.input_dtype == torch.bfloat16 and tiny_encoders.input_dtype == torch.float32
    images = torch.randn(3, 3, *_size(tiny_encoders))
    got = bf16.encode_image(images)
    want = tiny_encoders.encode_image(images)
    assert got.dtype == torch.float32
    assert F.cosine_similarity(got, want).min() > 0.98  # bf16 keeps about 3 significant digits


def _size(encoders) -> tuple[int, int]:
    size = encoders.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def test_random_weights_are_flagged_and_tags_listed(tiny_encoders, tmp_path):
    assert tiny_encoders.random_weights and tiny_encoders.describe()["random_weights"]
    saved = models.save(tiny_encoders, tmp_path / "ckpt")
    assert not models.load(str(saved), device="cpu").random_weights  # a checkpoint carries weights
    weights = tmp_path / "ckpt" / checkpoint.WEIGHTS_NAME
    assert not models.load("vlm-tiny", str(weights), device="cpu").random_weights  # a weights file given
    assert models.pretrained_tags("ViT-B-32") == open_clip.list_pretrained_tags_by_model("ViT-B-32")
    assert "laion2b_s34b_b79k" in models.pretrained_tags("ViT-B-32")
    assert models.pretrained_tags("vlm-tiny") == []  # an architecture with no published weights
    assert models.pretrained_tags("demo") is None and models.pretrained_tags(str(saved)) is None
