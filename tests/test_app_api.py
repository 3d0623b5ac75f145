"""The web app through its API (`gradio_client`), served in-process on a free loopback port.

Models are tiny and randomly initialised (only plumbing is tested here); values are compared with computations made
directly with open_clip's model (prompt ensembling, cosine, softmax, brute-force top-k), not with the app's code.
"""

from __future__ import annotations

import json
import re
import struct
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")
from app_harness import free_port  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

from ui.app import build_app, close, create_state, launch  # noqa: E402
from ui.state import Limits  # noqa: E402
from vlm import templates  # noqa: E402
from vlm.synth import generate  # noqa: E402

# Gradio's queue calls pandas APIs that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")

SCENES = 23  # a collection size that is not a multiple of anything the app batches by


def serve(state, **kwargs) -> SimpleNamespace:
    demo = build_app(state)
    url = launch(demo, state, port=free_port(), block=False, quiet=True, **kwargs)
    return SimpleNamespace(demo=demo, state=state, url=url)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("app-data") / "shapes"
    generate(out, SCENES, seed=3, image_size=64, progress=False)
    return out


@pytest.fixture(scope="module")
def app(shapes, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app")
    torch.manual_seed(0)
    state = create_state(
        "vlm-tiny",
        images=[shapes / "images"],
        cache_dir=tmp / "cache",
        runs_dir=tmp / "runs",
        allowed_dirs=[shapes],
        device="cpu",
        progress=False,
    )
    served = serve(state)
    served.client = Client(served.url, verbose=False)
    served.shapes = shapes
    yield served
    close(served.demo, state)


# ---------------------------------------------------------------------------------------------------------------
# Independent references, computed with open_clip's model directly.


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


@torch.no_grad()
def reference_image_embeddings(encoders, paths: list[Path]) -> np.ndarray:
    pixels = torch.stack([encoders.preprocess(Image.open(p).convert("RGB")) for p in paths])
    return _normalize(encoders.model.encode_image(pixels)).numpy()


@torch.no_grad()
def reference_text_embedding(texts: list[str], encoders) -> torch.Tensor:
    return _normalize(encoders.model.encode_text(open_clip.get_tokenizer("vlm-tiny")(texts)))


@torch.no_grad()
def reference_probs(encoders, image: Path, labels: list[str], template_set: str) -> np.ndarray:
    rows = []
    for label in labels:
        prompts = [t.format(c=label) for t in templates.load(template_set)]
        rows.append(_normalize(reference_text_embedding(prompts, encoders).mean(dim=0)))
    weights = torch.stack(rows)  # (C, D)
    img = torch.from_numpy(reference_image_embeddings(encoders, [image]))  # (1, D)
    scale = encoders.model.logit_scale.exp().clamp(max=100)
    return (scale * img @ weights.T).softmax(dim=1)[0].numpy()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels but holds no image data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------------------------------------------
# Each endpoint.


def test_every_function_is_a_named_endpoint(app):
    names = set(app.client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    expected = {"classify", "search_text", "search_image", "search_similar", "explain_result", "add_folder",
                "collection_info", "explain", "segment", "train_start", "train_status", "train_stop", "train_use",
                "model_switch", "model_info", "model_stop"}  # fmt: skip
    assert {f"/{n}" for n in expected} <= names


def test_classify_matches_prompt_ensembling_by_hand(app):
    image = app.shapes / "images" / "000004.png"
    labels = ["red circle", "blue square", "green triangle", "yellow star"]
    scores, chart, notes = app.client.predict(
        handle_file(image), ", ".join(labels) + ", Red Circle", "generic", 3, api_name="/classify"
    )
    want = reference_probs(app.state.active.encoders, image, labels, "generic")
    got = {c["label"]: c["confidence"] for c in scores["confidences"]}
    assert list(got) == [labels[i] for i in np.argsort(-want)[:3]]  # top 3, most probable first
    np.testing.assert_allclose([got[label] for label in got], np.sort(want)[::-1][:3], atol=1e-5)
    assert [row[0] for row in chart["data"]] == list(got)
    assert "1 duplicate" in notes  # "Red Circle" repeats "red circle" (CLIP's tokenizer lower-cases)


def test_search_text_equals_brute_force(app):
    paths = sorted((app.shapes / "images").glob("*.png"))
    query, k = "a small red circle at the top", 7
    gallery, table, status, *_ = app.client.predict(query, k, "", "", api_name="/search_text")
    encoders = app.state.active.encoders
    scores = reference_image_embeddings(encoders, paths) @ reference_text_embedding([query], encoders).numpy()[0]
    order = np.argsort(-scores)
    assert [row["file"] for row in table] == [paths[i].name for i in order[:k]]
    np.testing.assert_allclose([row["score"] for row in table], scores[order[:k]], atol=1e-4)
    assert len(gallery) == k and all(Path(item["image"]).is_file() for item in gallery)
    assert f"of {SCENES:,} images" in status


def test_search_by_image_and_by_result(app):
    example = app.shapes / "images" / "000011.png"
    _, table, *_ = app.client.predict(handle_file(example), 5, "", "", api_name="/search_image")
    assert table[0]["file"] == example.name and table[0]["score"] == pytest.approx(1.0, abs=1e-4)
    _, again, *_ = app.client.predict(table[0]["id"], 5, "", "", api_name="/search_similar")
    assert [r["id"] for r in again] == [r["id"] for r in table]  # by id = by the same pixels
    _, filtered, *_ = app.client.predict(handle_file(example), 5, "", "00001", api_name="/search_image")
    assert filtered and all("00001" in r["file"] for r in filtered)


def test_explain_gives_a_heat_map_and_the_cosine(app):
    image = app.shapes / "images" / "000002.png"
    picture, info = app.client.predict(handle_file(image), "a blue square", api_name="/explain")
    encoders = app.state.active.encoders
    text = reference_text_embedding(["a blue square"], encoders)[0].numpy()
    cosine = float(reference_image_embeddings(encoders, [image])[0] @ text)
    assert f"cosine similarity {cosine:.3f}" in info
    assert min(Image.open(picture).size) >= 256  # 64 px scenes are enlarged for the screen
    _, table, *_ = app.client.predict("a blue square", 1, "", "", api_name="/search_text")
    picture, info = app.client.predict(table[0]["id"], "a blue square", api_name="/explain_result")
    assert Path(picture).is_file() and "a blue square" in info


def test_segment_gives_one_mask_colour_and_heat_map_per_phrase(app):
    image = app.shapes / "images" / "000005.png"
    overlay, heat, summary = app.client.predict(
        handle_file(image), "a red circle\na blue square, the background", "training-free (dense)", "", 0.5,
        api_name="/segment",
    )  # fmt: skip
    assert Image.open(overlay).size == (256, 256)
    assert [h["caption"] for h in heat] == ["a red circle", "a blue square", "the background"]
    assert summary.count("% of the image") + summary.count("not found in this image") == 3
    assert "threshold" in summary and "synthetic scenes" in summary  # the threshold and how it was measured


def test_model_and_collection_info(app):
    info = app.client.predict(api_name="/model_info")
    encoders = app.state.active.encoders
    assert info["fingerprint"] == encoders.fingerprint and info["demo"] is False
    assert info["collection"]["images"] == SCENES
    coll = app.client.predict(api_name="/collection_info")
    assert coll["images"] == SCENES and coll["model"] == encoders.source


def test_add_folder_adds_only_new_images(app, tmp_path):
    before = app.client.predict(api_name="/collection_info")["images"]
    message = app.client.predict(str(app.shapes / "images"), api_name="/add_folder")
    assert "added 0 image(s)" in message and f"{SCENES} already present" in message
    assert app.client.predict(api_name="/collection_info")["images"] == before


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a clear message, and the server goes on serving.


def bad_files(tmp: Path) -> dict[str, Path]:
    (tmp / "notes.png").write_text("not an image at all", encoding="utf-8")
    Image.new("1", (7100, 7100)).save(tmp / "big.png")  # 50.4 megapixels, a few kB on disk
    (tmp / "bomb.png").write_bytes(png_header_only(60_000, 60_000))
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp / "whole.png")
    (tmp / "truncated.png").write_bytes((tmp / "whole.png").read_bytes()[:3000])
    return {k: tmp / f"{k}.png" for k in ("notes", "big", "bomb", "truncated")}


BAD_UPLOADS = {
    "notes": "is not an image this app can read",
    "big": "50.4 megapixels, above this app's limit of 25.0 megapixels",
    "bomb": "refused",
    "truncated": "could not be decoded",
}


@pytest.mark.parametrize("kind", list(BAD_UPLOADS))
def test_bad_uploads_are_refused_in_every_tab(app, tmp_path, kind):
    path = bad_files(tmp_path)[kind]
    calls = [
        ("/classify", (handle_file(path), "a, b", "generic", 3)),
        ("/search_image", (handle_file(path), 5, "", "")),
        ("/explain", (handle_file(path), "a red circle")),
        ("/segment", (handle_file(path), "a red circle", "training-free (dense)", "", 0.5)),
    ]
    for name, args in calls:
        with pytest.raises(Exception, match=re.escape(BAD_UPLOADS[kind])):
            app.client.predict(*args, api_name=name)
    assert app.client.predict(api_name="/collection_info")["images"] == SCENES  # still serving


def test_bad_text_inputs_get_clear_messages(app):
    image = handle_file(app.shapes / "images" / "000001.png")
    cases = [
        ("/classify", (None, "a, b", "generic", 3), "no image given"),
        ("/classify", (image, " , \n ,", "generic", 3), "no usable labels"),
        ("/classify", (image, ", ".join(f"label {i}" for i in range(5000)), "generic", 3), "5,000 labels given"),
        ("/classify", (image, "a, b", "no-such-set", 3), "unknown template set"),
        ("/search_text", ("   ", 5, "", ""), "no search text given"),
        ("/search_image", (None, 5, "", ""), "no image given"),
        ("/search_similar", (10**6, 5, "", ""), "no image with id 1000000"),
        ("/explain", (image, ""), "no text given"),
        ("/segment", (image, "\n \n", "training-free (dense)", "", 0.5), "no phrases given"),
        ("/segment", (image, "\n".join(f"p{i}" for i in range(40)), "training-free (dense)", "", 0.5), "at most 12"),
        ("/segment", (image, "a", "learned decoder", "/", 0.5), "outside the folders this app may read"),
        ("/add_folder", ("/etc",), "outside the folders this app may read"),
        ("/add_folder", ("",), "no folder given"),
        ("/train_start", ("/etc/passwd", None, "vlm-tiny (from scratch, 32 px)", 1, 0, 8, 1e-3, 0), "outside the"),
        ("/train_stop", (), "no training run is in progress"),
        ("/train_use", (), "checkpoint"),
        ("/model_switch", ("no-such-model", ""), "unknown model 'no-such-model'"),
    ]
    for name, args, message in cases:
        with pytest.raises(Exception, match=message):
            app.client.predict(*args, api_name=name)
    assert app.client.predict(api_name="/model_info")["model"] == "vlm-tiny"  # nothing changed


def test_a_dataset_whose_rows_are_all_broken_is_refused_before_training(app):
    bad = app.shapes / "broken.csv"
    bad.write_text("path,caption\nmissing1.png,a cat\nimages/000001.png,\n", encoding="utf-8")
    with pytest.raises(Exception, match=r"no usable|usable pair"):
        app.client.predict(str(bad), None, "vlm-tiny (from scratch, 32 px)", 1, 0, 8, 1e-3, 0, api_name="/train_start")
    assert app.client.predict(api_name="/train_status")[0] == "No training run yet."


def test_nothing_on_disk_is_served_by_path(app):
    targets = ["/etc/passwd", str(app.shapes / "images" / "000001.png"), str(Path(__file__).resolve())]
    for target in targets:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{app.url}gradio_api/file={target}", timeout=10)
        assert e.value.code == 403


# ---------------------------------------------------------------------------------------------------------------
# Other apps: an empty collection, size limits and a password; training.


@pytest.fixture()
def empty_app(tmp_path):
    (tmp_path / "empty").mkdir()
    torch.manual_seed(1)
    state = create_state("vlm-tiny", images=[tmp_path / "empty"], cache_dir=tmp_path / "cache",
                         runs_dir=tmp_path / "runs", limits=Limits(max_upload_mb=0.05), device="cpu",
                         progress=False)  # fmt: skip
    served = serve(state, auth=("alice", "secret"))
    yield served
    close(served.demo, state)


def test_empty_collection_password_and_upload_limit(empty_app, tmp_path):
    with pytest.raises(Exception):  # noqa: B017 (gradio_client raises a bare ValueError for a refused login)
        Client(empty_app.url, verbose=False)
    client = Client(empty_app.url, auth=("alice", "secret"), verbose=False)
    with pytest.raises(Exception, match="The collection is empty"):
        client.predict("a red circle", 5, "", "", api_name="/search_text")
    big = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(big)  # ~120 kB
    with pytest.raises(Exception, match=r"(?i)size|large|exceed"):
        client.predict(handle_file(big), "a, b", "generic", 2, api_name="/classify")
    assert client.predict(api_name="/collection_info")["images"] == 0


def wait_for_step(client: Client, step: int, timeout: float = 90.0) -> str:
    """The status line once the run has logged `step` (the line says "step N / TOTAL")."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = client.predict(api_name="/train_status")[0]
        found = re.search(r"step ([\d,]+) /", text)
        if found and int(found.group(1).replace(",", "")) >= step:
            return text
        time.sleep(0.5)
    raise AssertionError(f"the run did not reach step {step} in {timeout} s: {text}")


def test_training_with_broken_rows_can_be_stopped_and_used(shapes, tmp_path):
    data = tmp_path / "data"
    generate(data, 40, seed=5, image_size=32, progress=False)
    rows = (data / "pairs.csv").read_text(encoding="utf-8").splitlines()
    rows += ["images/missing.png,a lost picture", "images/000001.png,", '"unclosed,quote']
    (data / "pairs.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    torch.manual_seed(2)
    state = create_state("vlm-tiny", images=[shapes / "images"], cache_dir=tmp_path / "cache",
                         runs_dir=tmp_path / "runs", allowed_dirs=[data], device="cpu", progress=False)  # fmt: skip
    served = serve(state)
    try:
        client = Client(served.url, verbose=False)
        before = client.predict(api_name="/model_info")["fingerprint"]
        line, _timer = client.predict(str(data / "pairs.csv"), None, "the active model (fine-tune)", 1, 5000, 8,
                                      1e-3, 0, api_name="/train_start")  # fmt: skip
        assert "bad row(s) will be skipped" in line
        wait_for_step(client, 2)
        text, loss, _recall, _ = client.predict(api_name="/train_stop")
        assert text.startswith("**stopped**") and "Checkpoint:" in text
        assert "bad row(s) were skipped" in text
        assert len(loss["data"]) >= 2 and all(np.isfinite(v) for _, v in loss["data"])
        details, banner = client.predict(api_name="/train_use")
        info = client.predict(api_name="/model_info")
        assert info["fingerprint"] != before and "checkpoint" in info["source"]
        assert info["collection"]["images"] == SCENES  # re-embedded with the new weights
        assert info["fingerprint"] in details and "collection of 23 images" in banner
        bad = [json.loads(line) for line in (Path(text.split("`")[-2]) / "bad_rows.jsonl").read_text().splitlines()]
        assert {b["reason"] for b in bad} >= {"missing file", "empty caption"}
    finally:
        close(served.demo, state)


# ---------------------------------------------------------------------------------------------------------------
# Where the collection lives: one per model, rebuilt when the weights change; the demo's images made once.


def distinct_images(paths: list[Path]) -> int:
    """Images with different pixels, compared as arrays (the collection adds an image only once)."""
    seen = set()
    for p in paths:
        rgb = np.asarray(Image.open(p).convert("RGBA").convert("RGB"))
        seen.add((rgb.shape, rgb.tobytes()))
    return len(seen)


@pytest.fixture()
def small_demo(tmp_path, monkeypatch):
    """The demo's recipe on 12 scenes, the first 15 Twemoji images and the first 6 shipped icons."""
    import indexing.library
    import vlm.demo

    for name, count in (("TWEMOJI", 15), ("ICONS", 6)):
        src, copy = getattr(vlm.demo, name), tmp_path / name.lower()
        lines = (src / "pairs.csv").read_text(encoding="utf-8").splitlines()[: count + 1]
        for line in lines[1:]:
            path = line.split(",")[0]
            (copy / path).parent.mkdir(parents=True, exist_ok=True)
            (copy / path).write_bytes((src / path).read_bytes())
        (copy / "pairs.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (copy / "ATTRIBUTION.md").write_text("its licence\n", encoding="utf-8")
        monkeypatch.setattr(vlm.demo, name, copy)
    monkeypatch.setattr(indexing.library, "DEMO_COLLECTION_SCENES", 12)
    return tmp_path / "cache"


def test_demo_collection_per_model_reopened_and_pruned(small_demo):
    from indexing.library import Library
    from vlm import models

    lib = Library.choose(images=[], collection=None, cache_dir=small_demo)
    assert lib.kind == "demo"
    encoders = []
    for seed in range(4):
        torch.manual_seed(seed)
        encoders.append(models.load("vlm-tiny", device="cpu"))
    coll = lib.open_for(encoders[0], progress=False)
    home = small_demo / "demo-collection"
    files = [p for d in ("shapes", "twemoji", "icons") for p in sorted((home / d / "images").rglob("*.png"))]
    assert len(files) == 12 + 15 + 6
    assert coll.stats().count == distinct_images(files)
    version = coll.stats().version
    coll.close()
    again = lib.open_for(encoders[0], progress=False)  # the same weights: reopened, nothing embedded again
    assert again.stats().version == version and again.root == coll.root
    again.close()
    for enc in encoders[1:]:
        lib.open_for(enc, progress=False).close()
    kept = sorted(p.name for p in home.glob("collection-*"))
    assert kept == sorted(f"collection-{e.fingerprint[:16]}" for e in encoders[1:])  # the oldest one was pruned


def test_folders_added_from_the_app_follow_to_another_model(shapes, tmp_path):
    from indexing.library import Library
    from vlm import models

    extra = tmp_path / "extra"
    generate(extra, 5, seed=9, image_size=32, progress=False)
    lib = Library.choose(images=[shapes / "images"], collection=tmp_path / "home", cache_dir=tmp_path / "cache")
    assert lib.kind == "folders" and lib.home == (tmp_path / "home").resolve()
    torch.manual_seed(0)
    first = models.load("vlm-tiny", device="cpu")
    coll = lib.open_for(first, progress=False)
    result = lib.add_folder(coll, extra / "images", progress=False)
    assert result.added == 5 and coll.stats().count == SCENES + 5
    coll.close()
    torch.manual_seed(1)
    second = lib.open_for(models.load("vlm-tiny", device="cpu"), progress=False)
    assert second.stats().count == SCENES + 5 and second.root != coll.root
    second.close()
    with pytest.raises(Exception, match="not a folder"):
        Library.choose(images=[extra / "pairs.csv"], collection=None, cache_dir=tmp_path / "cache")


def test_result_files_are_named_by_content_and_pruned(tmp_path, monkeypatch):
    import os

    import ui.files
    from ui.files import ResultFiles

    files = ResultFiles(tmp_path / "images")
    red, blue = Image.new("RGB", (5, 3), "red"), Image.new("RGB", (5, 3), "blue")
    first, again, other = files.image(red), files.image(red.copy()), files.image(blue)
    assert first == again != other
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(red))  # written whole, decodes back
    os.utime(other, (0, 0))  # not used for decades
    monkeypatch.setattr(ui.files, "PRUNE_EVERY_S", 0.0)
    files.image(Image.new("RGB", (2, 2), "green"))
    assert Path(first).is_file() and not Path(other).exists()


def test_uploaded_datasets_are_unpacked_safely_and_checked(shapes, tmp_path):
    import zipfile

    from ui.train_data import check_dataset, unpack_upload

    good = tmp_path / "pairs.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.write(shapes / "pairs.csv", "mydata/pairs.csv")
        for p in sorted((shapes / "images").glob("*.png")):
            zf.write(p, f"mydata/images/{p.name}")
    source = unpack_upload(good, tmp_path / "unpacked", 2**26)
    assert source == tmp_path / "unpacked" / "mydata" / "pairs.csv"
    dataset = check_dataset(source, None, batch_size=8)
    assert dataset.pairs == SCENES and not dataset.bad
    with pytest.raises(Exception, match="too few for a batch of 64"):
        check_dataset(source, None, batch_size=64)
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(Exception, match="outside the dataset folder"):
        unpack_upload(evil, tmp_path / "evil", 2**26)
    assert not (tmp_path / "outside.txt").exists()
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(Exception, match=r"upload a \.zip"):
        unpack_upload(tmp_path / "notes.txt", tmp_path / "notes", 2**26)


def test_an_open_clip_name_offline_gets_the_loaders_advice(app):
    from vlm import models

    if models.hub_reachable():
        pytest.skip("the Hugging Face Hub is reachable: the switch would download ViT-B-32's weights")
    with pytest.raises(Exception, match="cannot be reached"):
        app.client.predict("ViT-B-32", "laion2b_s34b_b79k", api_name="/model_switch")
    assert app.client.predict(api_name="/model_info")["model"] == "vlm-tiny"  # the active model is unchanged


# ---------------------------------------------------------------------------------------------------------------
# Issue 15: one record of what the server is doing; no silent random weights.


def test_server_status_names_the_model_that_answers_and_its_random_weights(app):
    status = app.client.predict(api_name="/server_status")
    enc = app.state.active.encoders
    assert status["model"]["fingerprint"] == enc.fingerprint
    assert app.client.predict(api_name="/model_info")["fingerprint"] == enc.fingerprint
    assert status["model"]["random_weights"] is True  # vlm-tiny built without weights
    assert status["collection"]["images"] == SCENES
    assert status["run"]["state"] in ("idle", "finished", "stopped", "failed")
    assert status["switching_to"] is None


def test_an_architecture_without_weights_is_refused_unless_from_scratch_is_chosen(app):
    with pytest.raises(Exception, match=r"ViT-B-32 has no weights given.*laion2b_s34b_b79k.*train from scratch"):
        app.client.predict("ViT-B-32", "", api_name="/model_switch")
    with pytest.raises(Exception, match=r"random weights .* is for an architecture name"):
        app.client.predict("demo", "random weights (train from scratch)", api_name="/model_switch")
    assert app.client.predict(api_name="/model_info")["model"] == "vlm-tiny"  # nothing changed


def test_loading_a_model_estimates_the_embedding_and_waits_for_a_yes(app):
    library, active = app.state.library, app.state.active
    assert library.embed_plan(active.encoders, SCENES).images == 0  # its collection exists: nothing to embed
    text, *_ = app.client.predict("vlm-small", "random weights (train from scratch)", api_name="/model_plan")
    assert re.search(rf"embedding {SCENES} images with this model takes about \d+ s here \(\d\.\d{{3}} s per", text)
    assert app.client.predict(api_name="/model_info")["model"] == "vlm-tiny"  # nothing switched before a yes
    assert app.client.predict(api_name="/model_cancel").startswith("Cancelled: nothing was embedded")
    assert app.client.predict(api_name="/model_stop") == "No embedding is under way."  # (tests/test_index_stop.py)
    assert app.client.predict(api_name="/model_info")["model"] == "vlm-tiny"


def test_the_api_pages_example_files_are_local_not_web_urls(app):
    with urllib.request.urlopen(f"{app.url}gradio_api/info", timeout=30) as r:
        info = json.load(r)
    images = [p["example_input"] for e in info["named_endpoints"].values() for p in e["parameters"]
              if isinstance(p.get("example_input"), dict) and "path" in p["example_input"]]  # fmt: skip
    assert len(images) >= 4  # classify, search by image, why it matched, segment
    assert all("://" not in json.dumps(x) for x in images), images
    assert {x["path"] for x in images} == {"my_image.png", "my_pairs.zip"}
