"""The Train tab as an outsider drives it (issues 12, 13 and 15): through `gradio_client`, with the trainer as the
subprocess it really is. Two uploads at once each train on their own data; a zip bomb is refused and removed; the
step cap holds; a Stop right after Start stops; progress, errors and "Use this model" work with the trainer's output
silenced (nothing is read from its log); a restarted app picks up a live run and can stop it; a killed app takes
its trainer with it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

gradio_client = pytest.importorskip("gradio_client")
from app_harness import free_port  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

from ui.app import build_app, close, create_state, launch  # noqa: E402
from ui.state import Limits  # noqa: E402
from vlm.rundir import RunDir, process_alive  # noqa: E402
from vlm.synth import generate  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")

ROOT = Path(__file__).resolve().parents[1]
TINY = "vlm-tiny (from scratch, 32 px)"
CAP = 400  # --max-train-steps of the app under test
LIMITS = Limits(max_upload_mb=1.0, max_train_steps=CAP, max_train_minutes=5.0)


def make_zip(data: Path, out: Path) -> Path:
    with zipfile.ZipFile(out, "w") as zf:
        zf.write(data / "pairs.csv", "pairs.csv")
        for p in sorted((data / "images").glob("*.png")):
            zf.write(p, f"images/{p.name}")
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("app-train")
    w = SimpleNamespace(tmp=tmp, images=tmp / "shapes" / "images", runs=tmp / "runs")
    generate(tmp / "shapes", 9, seed=5, image_size=32, progress=False)
    for name, scenes in (("a", 20), ("b", 12), ("c", 40)):
        generate(tmp / name, scenes, seed=scenes, image_size=32, progress=False)
    w.zip_a, w.zip_b = make_zip(tmp / "a", tmp / "a.zip"), make_zip(tmp / "b", tmp / "b.zip")
    return w


def serve(world, runs: Path, cache: str) -> SimpleNamespace:
    torch.manual_seed(0)
    state = create_state("vlm-tiny", images=[world.images], cache_dir=world.tmp / cache, runs_dir=runs,
                         limits=LIMITS, allowed_dirs=[world.tmp], device="cpu", progress=False)  # fmt: skip
    demo = build_app(state)
    url = launch(demo, state, port=free_port(), block=False, quiet=True)
    return SimpleNamespace(state=state, demo=demo, url=url, client=Client(url, verbose=False))


@pytest.fixture(scope="module")
def app(world):
    served = serve(world, world.runs, "cache")
    yield served
    close(served.demo, served.state)


def start(client: Client, data: str, upload=None, steps: int = CAP, epochs: int = 1, batch: int = 4) -> str:
    return client.predict(data, upload, TINY, epochs, steps, batch, 1e-3, 0, api_name="/train_start")[0]


def status(client: Client) -> str:
    return client.predict(api_name="/train_status")[0]


def wait_for(client: Client, pattern: str, timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = status(client)
        if re.search(pattern, text):
            return text
        time.sleep(0.3)
    raise AssertionError(f"no {pattern!r} in the status after {timeout} s: {text}")


def run_folder(text: str) -> Path:
    return Path(re.search(r"Run folder: `([^`]+)`", text).group(1))


def refusal(client: Client, *args, api_name: str) -> str:
    with pytest.raises(Exception) as e:  # gradio_client raises AppError, a bare Exception subclass
        client.predict(*args, api_name=api_name)
    return str(e.value)


def stop(client: Client) -> str:
    text = client.predict(api_name="/train_stop")[0]
    assert text.startswith("**stopped**"), text
    return text


def test_two_uploads_at_once_each_train_on_their_own_data(app, world):
    before = set(world.runs.glob("*"))
    jobs = [app.client.submit("", handle_file(z), TINY, 1, CAP, 4, 1e-3, 0, api_name="/train_start")
            for z in (world.zip_a, world.zip_b)]  # fmt: skip
    answers = []
    for job in jobs:
        try:
            answers.append(job.result()[0])
        except Exception as e:  # gradio_client raises AppError, a bare Exception subclass
            answers.append(e)
    started = [a for a in answers if isinstance(a, str)]
    refused = [a for a in answers if not isinstance(a, str)]
    assert len(started) == 1 and "already in progress" in str(refused[0]), answers
    mine = 20 if answers[0] is started[0] else 12
    assert started[0].startswith(f"Started: {mine} usable pairs")
    assert len(set(world.runs.glob("*")) - before) == 1  # the refused upload left nothing behind
    text = wait_for(app.client, r"training pairs")
    assert f"{mine - round(mine / 10)} training pairs, {round(mine / 10)} held out" in text
    cfg = RunDir(run_folder(text)).read_config()
    assert Path(cfg.data.train_data).is_relative_to(run_folder(text) / "upload")
    stop(app.client)
    other = world.zip_b if mine == 20 else world.zip_a
    line = start(app.client, "", handle_file(other))
    assert line.startswith(f"Started: {32 - mine} usable pairs")
    text = wait_for(app.client, r"training pairs")
    assert f"{32 - mine - round((32 - mine) / 10)} training pairs" in text
    stop(app.client)


def test_stop_right_after_start_stops_the_run(app, world):
    start(app.client, str(world.tmp / "c" / "pairs.csv"))
    text = stop(app.client)  # queued right behind the start: the trainer is still importing torch
    assert not re.search(rf"step {CAP} / {CAP}", text) and "Stopped on request." in text
    assert RunDir(run_folder(text)).read_status().state == "stopped"


def test_a_zip_bomb_is_refused_and_removed(app, world):
    bomb = world.tmp / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pairs.csv", "image,caption\n")
        zf.writestr("images/zeros.png", b"\0" * (3 * 2**20))  # 3 MB of zeros: a few kB zipped
    assert bomb.stat().st_size < 2**20 / 10
    before = sorted(world.runs.rglob("*"))
    message = refusal(app.client, "", handle_file(bomb), TINY, 1, 10, 4, 1e-3, 0, api_name="/train_start")
    assert "unpacks to more than 1 MB" in message
    assert sorted(world.runs.rglob("*")) == before  # nothing of it stays on disk
    assert not list(world.tmp.rglob("zeros.png"))


def test_steps_are_capped_by_the_server_owner(app, world):
    data = str(world.tmp / "c" / "pairs.csv")
    assert f"at most {CAP:,} steps" in refusal(app.client, data, None, TINY, 1, 10**6, 4, 1e-3, 0,
                                               api_name="/train_start")  # fmt: skip
    assert f"at most {CAP:,} steps" in refusal(app.client, data, None, TINY, 10**5, 0, 4, 1e-3, 0,
                                               api_name="/train_start")  # fmt: skip


def test_progress_errors_and_use_need_nothing_from_the_trainers_output(app, world, monkeypatch):
    quiet = world.tmp / "quiet"
    quiet.mkdir(exist_ok=True)
    # Every Python the app starts from now on writes nothing: no log line, no progress bar, no "error:" line.
    (quiet / "sitecustomize.py").write_text(
        "import os\nfd = os.open(os.devnull, os.O_WRONLY)\nos.dup2(fd, 1)\nos.dup2(fd, 2)\n", encoding="utf-8"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(quiet), os.environ.get("PYTHONPATH")])))
    broken = world.tmp / "broken"
    broken.mkdir(exist_ok=True)
    rows = ["image,caption"]
    for i in range(12):  # image files the pre-check accepts (it does not decode) and the trainer cannot read
        (broken / f"{i}.png").write_bytes(b"not a png")
        rows.append(f"{i}.png,shape {i}")
    (broken / "pairs.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    start(app.client, str(broken / "pairs.csv"))
    text = wait_for(app.client, r"^\*\*failed\*\*")
    assert "Error: no usable pairs: read 0 pairs from" in text and "not an image" in text
    assert RunDir(run_folder(text)).log.stat().st_size == 0

    before = app.client.predict(api_name="/model_info")["fingerprint"]
    start(app.client, str(world.tmp / "c" / "pairs.csv"), steps=3)
    text = wait_for(app.client, r"^\*\*finished\*\*")
    assert "step 3 / 3" in text and "Checkpoint:" in text
    assert RunDir(run_folder(text)).log.stat().st_size == 0
    app.client.predict(api_name="/train_use")
    info = app.client.predict(api_name="/model_info")
    assert info["fingerprint"] != before and "checkpoint" in info["source"]


def test_a_restarted_app_picks_up_the_live_run_and_can_stop_it(app, world):
    start(app.client, str(world.tmp / "c" / "pairs.csv"))
    wait_for(app.client, r"step [1-9]")
    again = serve(world, world.runs, "cache-2")  # the same runs folder, as after a restart of the server
    try:
        assert re.match(r"\*\*(training|stopping)\*\* — step", status(again.client))
        message = refusal(again.client, str(world.tmp / "c" / "pairs.csv"), None, TINY, 1, 10, 4, 1e-3, 0,
                          api_name="/train_start")  # fmt: skip
        assert "already in progress" in message
        text = stop(again.client)
        assert "Checkpoint:" in text and "Stopped on request." in text  # it saved the step it had reached
    finally:
        close(again.demo, again.state)
    assert status(app.client).startswith("**stopped**")


def test_a_killed_app_takes_its_trainer_along(world):
    runs, port = world.tmp / "runs-killed", free_port()
    cmd = [sys.executable, str(ROOT / "app.py"), "--model", "vlm-tiny", "--images", str(world.images),
           "--cache-dir", str(world.tmp / "cache-3"), "--runs-dir", str(runs), "--allow-dir", str(world.tmp),
           "--port", str(port), "--device", "cpu", "--max-train-steps", str(CAP)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(cmd, env=env, cwd=world.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:  # not serving yet
                assert server.poll() is None and time.monotonic() < deadline, "the app did not start"
                time.sleep(0.5)
        start(client, str(world.tmp / "c" / "pairs.csv"))
        text = wait_for(client, r"step [1-9]")
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    run = RunDir(run_folder(text))
    trainer = run.read_process()
    deadline = time.monotonic() + 30
    while trainer.alive():
        assert time.monotonic() < deadline, "the trainer outlived the app"
        time.sleep(0.2)
    assert not process_alive(trainer.pid, trainer.start_ticks)
    assert run.read_status().state == "stopped" and run.usable_checkpoint() is not None
    again = serve(world, runs, "cache-4")  # restarted: it shows the run the killed app left
    try:
        text = status(again.client)
        assert text.startswith("**stopped**") and "Checkpoint:" in text
    finally:
        close(again.demo, again.state)


def test_uploads_are_removed_after_the_retention_time(tmp_path):
    from ui.jobs import TrainRunner

    old, recent = RunDir(tmp_path / "train-old"), RunDir(tmp_path / "train-recent")
    for run in (old, recent):
        (run.upload / "images").mkdir(parents=True)
        (run.upload / "pairs.csv").write_text("image,caption\n", encoding="utf-8")
        run.write_status("finished", step=3, total=3)
    two_days_ago = time.time() - 48 * 3600
    for path in (old.upload, old.status_file):
        os.utime(path, (two_days_ago, two_days_ago))
    TrainRunner(tmp_path, upload_retention_s=24 * 3600)  # on start, and before every run
    assert not old.upload.exists() and old.status_file.is_file()  # the run's record stays, its data goes
    assert (recent.upload / "pairs.csv").is_file()
