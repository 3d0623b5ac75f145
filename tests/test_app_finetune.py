"""The Train tab's fine-tune path through `gradio_client` (issue 14): the active demo model is fine-tuned with the
fine-tune recipe (never the from-scratch lr), the effective values are shown, and the run scores what the model
knew before its first step, beside the user's own validation."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

gradio_client = pytest.importorskip("gradio_client")
from app_harness import free_port  # noqa: E402
from gradio_client import Client  # noqa: E402

from ui import wise  # noqa: E402
from ui.app import build_app, close, create_state, launch  # noqa: E402
from ui.state import Limits  # noqa: E402
from ui.train import curves  # noqa: E402
from vlm import checkpoint, demo, finetune  # noqa: E402
from vlm.rundir import RunDir  # noqa: E402
from vlm.synth import generate  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")

FINE = "the active model (fine-tune)"
TINY = "vlm-tiny (from scratch, 32 px)"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("app-finetune")
    generate(tmp / "shapes", 24, seed=4, image_size=64, progress=False)
    torch.manual_seed(0)
    state = create_state("demo", images=[tmp / "shapes" / "images"], cache_dir=tmp / "cache", runs_dir=tmp / "runs",
                         limits=Limits(max_train_steps=50, max_train_minutes=5.0), allowed_dirs=[tmp], device="cpu",
                         progress=False)  # fmt: skip
    served = build_app(state)
    url = launch(served, state, port=free_port(), block=False, quiet=True)
    yield state, Client(url, verbose=False, httpx_kwargs={"timeout": 120}), tmp  # a busy machine answers late
    close(served, state)


@pytest.fixture(scope="module")
def fine_tuned(app):
    """A short fine-tune of the active demo model started through the API with the learning rate left empty (0),
    waited for: (what the start said, its run folder, its status)."""
    state, client, tmp = app
    said = client.predict(str(tmp / "shapes" / "pairs.csv"), None, FINE, 1, 3, 4, 0, 0, False,
                          api_name="/train_start")[0]  # fmt: skip
    run = RunDir(Path(re.search(r"Run folder: `([^`]+)`", said).group(1)))
    deadline = time.monotonic() + 240
    while state.trainer.status().running and time.monotonic() < deadline:
        time.sleep(0.5)
    return said, run, state.trainer.status()


def test_fine_tune_of_the_active_model_uses_the_fine_tune_recipe_and_scores_what_it_knew(app, fine_tuned):
    _, client, _ = app
    lr, line = client.predict(FINE, api_name="/train_recipe")
    assert lr == finetune.FINE_TUNE.lr and "Fine-tune recipe" in line and "reference-shapes" in line
    scratch_lr, scratch_line = client.predict(TINY, api_name="/train_recipe")
    assert scratch_lr == finetune.FROM_SCRATCH.lr and "From scratch" in scratch_line
    # The request left the learning rate empty (0): the run gets the recipe's, not the old 5e-4.
    said, run, status = fine_tuned
    assert "Fine-tune defaults: lr 1e-05" in said and "reference" in said
    cfg = run.read_config()
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.model.update_norm_stats) == (1e-5, 0.1, False)
    assert cfg.data.reference == demo.REFERENCE and cfg.data.keep_data is None  # replay unticked
    assert status.state == "finished", status
    rows = [json.loads(x) for x in run.metrics.read_text().splitlines()]
    assert rows[0]["step"] == 0 and "ref/score" in rows[0]  # before step 1
    _, recall = curves(status)
    assert {"what it knew", "your data: mean recall"} <= set(recall["metric"])


def test_wise_ft_after_the_fine_tune_scores_each_alpha_and_uses_the_chosen_one(app, fine_tuned, monkeypatch):
    state, client, _ = app
    _, run, status = fine_tuned
    assert status.state == "finished", status
    with pytest.raises(Exception, match="not scored yet"):  # the slider never starts a sweep
        client.predict(0.5, api_name="/train_wise_at")
    monkeypatch.setattr(wise, "ALPHAS", "0,0.5,1")  # three α keep the test short; the panel's grid is 0,0.1,...,1
    picture, alpha, line = client.predict(api_name="/train_wise_sweep")
    rows = [json.loads(x) for x in run.metrics.read_text().splitlines()]
    refs = [r["ref/score"] for r in rows if "ref/score" in r]
    record = json.loads((run.wise_ft / "wise_ft.json").read_text())
    ends = {p["alpha"]: p for p in record["points"]}
    # The two ends are the model it started from and the fine-tune, as the trainer scored them during the run.
    assert ends[0.0]["reference"] == pytest.approx(refs[0], abs=1e-6)
    assert ends[1.0]["reference"] == pytest.approx(refs[-1], abs=1e-6)
    assert alpha == record["picked_alpha"] and f"α = {alpha:g}" in line and "what it knew" in line
    assert Path(picture).is_file()
    at_one = client.predict(1.0, api_name="/train_wise_at")
    assert f"what it knew **{ends[1.0]['reference']:.3f}**" in at_one
    used, _ = client.predict(0.5, api_name="/train_wise_use")
    exported = run.wise_ft / "alpha-0.5"
    assert "Using α = 0.5" in used and str(exported) in used
    assert state.active.choice.model == str(exported)
    assert checkpoint.read_config(exported)["provenance"]["wise_ft"]["alpha"] == 0.5
    with pytest.raises(Exception, match=r"greater than maximum|between 0"):  # refused by Gradio or by us
        client.predict(1.5, api_name="/train_wise_use")


def test_the_demo_apps_api_keeps_its_documented_names(app):
    """The demo model's card gives the Search tab clickable examples, whose click runs `search_text` in an event of
    its own. Registered first, that event took the name "search_text": the public endpoint became "/search_text_1"
    and a client's "/search_text" reached the examples' event, which fills no defaults (ui/README.md's call failed)."""
    state, client, _ = app
    assert demo.describe(state.active.encoders.provenance).queries  # the examples this is about are there
    named = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/classify", "/search_text", "/search_image", "/explain", "/segment"} <= named
    assert not [name for name in named if re.search(r"_\d+$", name)], named  # none renamed by a clash
    gallery, table, *_ = client.predict("a red circle", 3, "", "", api_name="/search_text")  # the README's call
    assert len(table) == 3 and len(gallery) == 3
