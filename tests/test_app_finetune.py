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

from ui.app import build_app, close, create_state, launch  # noqa: E402
from ui.state import Limits  # noqa: E402
from ui.train import curves  # noqa: E402
from vlm import demo, finetune  # noqa: E402
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


def test_fine_tune_of_the_active_model_uses_the_fine_tune_recipe_and_scores_what_it_knew(app):
    state, client, tmp = app
    lr, line = client.predict(FINE, api_name="/train_recipe")
    assert lr == finetune.FINE_TUNE.lr and "Fine-tune recipe" in line and "reference-shapes" in line
    scratch_lr, scratch_line = client.predict(TINY, api_name="/train_recipe")
    assert scratch_lr == finetune.FROM_SCRATCH.lr and "From scratch" in scratch_line
    # The request leaves the learning rate empty (0): the run gets the recipe's, not the old 5e-4.
    said = client.predict(str(tmp / "shapes" / "pairs.csv"), None, FINE, 1, 3, 4, 0, 0, False,
                          api_name="/train_start")[0]  # fmt: skip
    assert "Fine-tune defaults: lr 1e-05" in said and "reference" in said
    run = RunDir(Path(re.search(r"Run folder: `([^`]+)`", said).group(1)))
    cfg = run.read_config()
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.model.update_norm_stats) == (1e-5, 0.1, False)
    assert cfg.data.reference == demo.REFERENCE and cfg.data.keep_data is None  # replay unticked
    deadline = time.monotonic() + 240
    while state.trainer.status().running and time.monotonic() < deadline:
        time.sleep(0.5)
    status = state.trainer.status()
    assert status.state == "finished", status
    rows = [json.loads(x) for x in run.metrics.read_text().splitlines()]
    assert rows[0]["step"] == 0 and "ref/score" in rows[0]  # before step 1
    _, recall = curves(status)
    assert {"what it knew", "your data: mean recall"} <= set(recall["metric"])
