"""Text search over the synthetic shapes with a model that knows colours: "a red shape" returns red scenes first.

One test teaches a fresh vlm-tiny the colour words in 150 small steps; the others run on the shipped demo model
(skipped, with the reason, where `vlm/demo_model` is missing).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from indexing.collection import Collection
from indexing.embed import EmbedConfig
from vlm import checkpoint, models
from vlm.synth import COLOURS, LABELS, generate

FAST = EmbedConfig(batch_size=32, workers=0, shard_size=64)


def colour_precision(coll: Collection, scenes: dict[str, set[str]], colours: list[str], k: int) -> dict[str, float]:
    """Share of the top k results that contain an object of the queried colour, per colour."""
    out = {}
    for colour in colours:
        hits = coll.search_text(f"a {colour} shape", k=k)
        out[colour] = sum(colour in scenes[r.path] for r in hits.records[0]) / k
    return out


def scene_colours(data: Path) -> dict[str, set[str]]:
    lines = (data / "scenes.jsonl").read_text().splitlines()
    return {s["path"]: {o["colour"] for o in s["objects"]} for s in map(json.loads, lines)}


def train_colours(encoders, data: Path, steps: int) -> None:
    """150 small steps teaching colour words to a fresh vlm-tiny: each image is classified among the prompts
    "a {colour} shape" (CLIP's image-to-text cross-entropy with a soft target over the scene's colours). Training
    on fixed prompts avoids the duplicate captions that make a contrastive batch contradict itself."""
    scenes = [json.loads(line) for line in (data / "scenes.jsonl").read_text().splitlines()]
    pixels = torch.stack([encoders.preprocess(Image.open(data / s["path"]).convert("RGB")) for s in scenes])
    target = torch.tensor([[float(c in {o["colour"] for o in s["objects"]}) for c in COLOURS] for s in scenes])
    target /= target.sum(1, keepdim=True)
    tokens = encoders.tokenize([f"a {c} shape" for c in COLOURS])
    model = encoders.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randperm(len(scenes), generator=generator)[:64]
        image = F.normalize(model.encode_image(pixels[batch]), dim=-1)  # (64, D)
        text = F.normalize(model.encode_text(tokens), dim=-1)  # (8, D)
        loss = F.cross_entropy(model.logit_scale.exp() * image @ text.T, target[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def test_text_queries_return_scenes_of_the_colour_asked_for(tmp_path):
    data = tmp_path / "data"
    generate(data, scenes=240, seed=11, image_size=32, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses time to a second thread on 2 shared cores
    try:
        torch.manual_seed(0)
        encoders = models.load("vlm-tiny", device="cpu")
        train_colours(encoders, data, steps=150)
        coll = Collection.create(tmp_path / "c", encoders, root=data)
        coll.add(data / "images", embed=FAST, progress=False)
        scenes = scene_colours(data)
        precision = colour_precision(coll, scenes, list(COLOURS), k=10)
    finally:
        torch.set_num_threads(threads)
    chance = {c: sum(c in s for s in scenes.values()) / len(scenes) for c in COLOURS}  # a random ranking's
    assert np.mean(list(precision.values())) >= 0.8, (precision, chance)
    assert all(precision[c] >= chance[c] + 0.3 for c in COLOURS), (precision, chance)


@pytest.fixture(scope="module")
def demo_collection(tmp_path_factory) -> tuple[Collection, Path]:
    if not checkpoint.is_checkpoint_dir(models.DEMO_CHECKPOINT):
        pytest.skip(f"the demo model is not built yet ({models.DEMO_CHECKPOINT} is missing; `make demo` makes it)")
    tmp = tmp_path_factory.mktemp("demo-colour")
    generate(tmp / "data", scenes=300, seed=99, image_size=64, progress=False)
    coll = Collection.create(tmp / "c", "demo", root=tmp / "data", device="cpu")
    coll.add(tmp / "data" / "images", embed=FAST, progress=False)
    return coll, tmp / "data"


def test_demo_model_text_queries_return_scenes_of_the_colour_asked_for(demo_collection):
    coll, data = demo_collection
    precision = colour_precision(coll, scene_colours(data), ["red", "green", "blue", "yellow", "purple"], k=10)
    assert min(precision.values()) >= 0.8, precision


def test_demo_model_text_queries_name_colour_and_shape(demo_collection):
    """The issue's example ("a red circle" -> a scene with a red circle first), then all 48 "colour shape" queries:
    the first hit holds the object named in most of them, and the top 5 hold it far more often than chance (the
    share of scenes that contain it)."""
    coll, data = demo_collection
    scenes = {s["path"]: s["objects"] for s in map(json.loads, (data / "scenes.jsonl").read_text().splitlines())}

    def holds(path: str, colour: str, shape: str) -> bool:
        return any(o["colour"] == colour and o["shape"] == shape for o in scenes[path])

    assert holds(coll.search_text("a red circle", k=1).records[0][0].path, "red", "circle")
    first, top5, chance = [], [], []
    for label in LABELS:
        colour, shape = label.split(" ")
        hits = [holds(r.path, colour, shape) for r in coll.search_text(f"a {label}", k=5).records[0]]
        first.append(hits[0])
        top5.append(np.mean(hits))
        chance.append(np.mean([holds(p, colour, shape) for p in scenes]))
    assert np.mean(first) >= 0.7, np.mean(first)
    assert np.mean(top5) >= 5 * np.mean(chance), (np.mean(top5), np.mean(chance))
