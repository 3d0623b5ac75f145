"""WiSE-FT: exact end points, the average by hand, open_clip loading the export, the pick rules and the bad inputs."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlm import checkpoint, models, wiseft
from vlm.cli import main
from vlm.errors import ConfigError, ModelError


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    """A base checkpoint and a 'fine-tune' of it (every float weight moved by seeded noise), both vlm-tiny."""
    root = tmp_path_factory.mktemp("wise")
    torch.manual_seed(1)
    enc = models.load("vlm-tiny", device="cpu")
    base = models.save(enc, root / "base")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in enc.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    ft = models.save(enc, root / "ft")
    return base, ft


def _weights(path):
    return load_file(str(path / checkpoint.WEIGHTS_NAME))


def test_end_points_are_exact_and_the_middle_is_the_average(two_models, tmp_path):
    base, ft = two_models
    pair = wiseft.WiseFT.load(str(base), str(ft), device="cpu")
    a, b = _weights(base), _weights(ft)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the two models differ
    for alpha, expected in ((0.0, a), (1.0, b)):
        got = _weights(pair.export(alpha, tmp_path / f"a{alpha}"))
        assert got.keys() == expected.keys()
        assert all(torch.equal(got[k], expected[k]) for k in got), alpha
    half = _weights(pair.export(0.5, tmp_path / "half"))
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(half[k].double(), (a[k].double() + b[k].double()) / 2, rtol=2**-23, atol=0)
        else:
            assert torch.equal(half[k], b[k])  # integer buffers: the nearer side (0.5 rounds to the fine-tune)
    record = checkpoint.read_config(tmp_path / "half")
    assert record["provenance"]["wise_ft"]["alpha"] == 0.5


def test_export_loads_in_plain_open_clip_with_the_same_embeddings(two_models, tmp_path):
    base, ft = two_models
    pair = wiseft.WiseFT.load(str(base), str(ft), device="cpu")
    out = pair.export(0.3, tmp_path / "m")
    models.register_model_configs()
    clip, _, _ = open_clip.create_model_and_transforms("vlm-tiny", pretrained=str(out / checkpoint.WEIGHTS_NAME))
    clip.eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = pair.at(0.3).encode_image(images, normalize=False)
    with torch.no_grad():
        theirs = clip.encode_image(images)
    torch.testing.assert_close(ours, theirs)
    assert models.load(str(out), device="cpu").fingerprint == pair.at(0.3).fingerprint


def test_alphas_parse_and_out_of_range_is_refused():
    assert wiseft.parse_alphas("0,0.1,...,1") == tuple(round(0.1 * i, 10) for i in range(11))
    assert wiseft.parse_alphas("1, 0.5,0.5") == (0.5, 1.0)
    assert wiseft.parse_alphas("0,0.3,...,1") == (0.0, 0.3, 0.6, 0.9, 1.0)
    for bad in ("1.5", "-0.1", "0,nan", "a", "0,...,1", ""):
        with pytest.raises(ConfigError):
            wiseft.parse_alphas(bad)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        wiseft.interpolate({}, {}, 1.01)


def test_pick_rules():
    pts = [wiseft.Point(a, {"val": v, "reference": r}) for a, v, r in
           ((0.0, 0.1, 0.9), (0.5, 0.6, 0.7), (0.7, 0.7, 0.5), (1.0, 0.8, 0.1))]  # fmt: skip
    assert wiseft.pick(pts, "best-sum").alpha == 0.5  # 1.3 beats 1.2, 1.0, 0.9
    assert wiseft.pick(pts, "min-reference=0.5").alpha == 0.7
    assert wiseft.pick(pts, "min-reference=0.8").alpha == 0.0
    with pytest.raises(ConfigError, match="no α keeps"):
        wiseft.pick(pts, "min-reference=0.95")
    for bad in ("best", "min-reference=x"):
        with pytest.raises(ConfigError):
            wiseft.check_pick_rule(bad)


def test_two_architectures_are_refused(two_models, tmp_path):
    base, _ = two_models
    other = models.save(models.load("vlm-rn", device="cpu"), tmp_path / "rn")
    with pytest.raises(ModelError, match="not of one architecture"):
        wiseft.WiseFT.load(str(base), str(other), device="cpu")
    a = {"w": torch.zeros(2, 3)}
    with pytest.raises(ModelError, match="other shapes"):
        wiseft.interpolate(a, {"w": torch.zeros(3, 2)}, 0.5)


def _labelled(root, n=4):
    """Two colour classes as class folders; `n` images each."""
    rng = np.random.default_rng(0)
    for name, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = np.clip(np.array(colour) + rng.integers(-20, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _pairs(root, n=6):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True)
    rows = ["image,caption"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append(f"{i}.png,picture number {i}")
    (root / "pairs.csv").write_text("\n".join(rows) + "\n")
    return root / "pairs.csv"


def test_cli_sweeps_draws_and_exports(two_models, tmp_path, capsys):
    from eval.datasets import read_labelled
    from eval.retrieval import evaluate_pairs
    from eval.zeroshot import evaluate_zeroshot
    from vlm.data import read_pairs

    base, ft = two_models
    val, ref = _labelled(tmp_path / "val"), _pairs(tmp_path / "ref")
    out = tmp_path / "out"
    code = main(["wise-ft", str(base), str(ft), "--val", str(val), "--reference", f"retrieval:{ref}",
                 "--alphas", "0,0.5,1", "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert code == 0
    record = json.loads((out / "wise_ft.json").read_text())
    assert [p["alpha"] for p in record["points"]] == [0.0, 0.5, 1.0]
    # The fine-tune's scores are those of the fine-tune scored directly by the evaluators.
    enc = models.load(str(ft), device="cpu")
    point = record["points"][2]
    assert point["val"] == evaluate_zeroshot(enc, read_labelled(val, workers=1)).metrics["acc1"]
    assert (
        point["reference"]
        == evaluate_pairs(enc, read_pairs(ref, progress=False).pairs, ks=(5,))["image_retrieval_recall@5"]
    )
    picked = max(record["points"], key=lambda p: (p["val"] + p["reference"], -p["alpha"]))
    assert record["picked_alpha"] == picked["alpha"]
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert checkpoint.read_config(out / "model")["provenance"]["wise_ft"]["alpha"] == picked["alpha"]
    assert "← picked" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [(["--alphas", "0,1.2"], "within [0, 1]"), (["--pick", "best"], "unknown --pick"),
     (["--val", "zeroshot:/no/such/dir"], "does not exist")],
)  # fmt: skip
def test_cli_bad_input_fails_before_any_work(two_models, tmp_path, capsys, extra, message):
    base, ft = two_models
    val = _labelled(tmp_path / "val")
    out = tmp_path / "out"
    args = ["wise-ft", str(base), str(ft), "--reference", str(val), "--out", str(out), *extra]
    args += [] if "--val" in extra else ["--val", str(val)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
