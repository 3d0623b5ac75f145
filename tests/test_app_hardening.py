"""The app and the CLI as an outsider probes them (issue 12): what a visitor may read, write, load or ask for.

Each test drives the app through `gradio_client` (or the CLI through a subprocess) with the request an attacker or a
careless user would send, and checks the answer: refused with a clear message, fast, telling nothing about the
server's files, and the server goes on serving.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

gradio_client = pytest.importorskip("gradio_client")
from app_harness import free_port  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402

from ui.app import build_app, close, create_state, launch  # noqa: E402
from vlm.synth import generate  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app over 9 scenes, with the allowed folders it gets from its flags and a secret file beside them."""
    tmp = tmp_path_factory.mktemp("hardening")
    shapes = tmp / "shapes"
    generate(shapes, 9, seed=5, image_size=64, progress=False)
    secret = tmp / "private"
    secret.mkdir()
    (secret / "secret.json").write_text(json.dumps(["TOPSECRET-42"]), encoding="utf-8")
    torch.manual_seed(0)
    state = create_state("vlm-tiny", images=[shapes / "images"], cache_dir=tmp / "cache", runs_dir=tmp / "runs",
                         device="cpu", progress=False)  # fmt: skip
    demo = build_app(state)
    url = launch(demo, state, port=free_port(), block=False, quiet=True)
    served = SimpleNamespace(state=state, url=url, client=Client(url, verbose=False), shapes=shapes, secret=secret)
    served.image = handle_file(shapes / "images" / "000001.png")
    yield served
    close(demo, state)


def refusal(client: Client, *args, api_name: str) -> str:
    """The message of the error the app answers with (the test fails if the call succeeds)."""
    with pytest.raises(Exception) as e:  # gradio_client raises AppError, a bare Exception subclass
        client.predict(*args, api_name=api_name)
    return str(e.value)


def still_serving(app) -> None:
    assert app.client.predict(api_name="/collection_info")["images"] == 9


# ---------------------------------------------------------------------------------------------------------------
# Item 1: the Classify templates field reads no file and formats nothing unbounded.


def test_a_template_naming_a_server_file_reads_nothing(app):
    secret = app.secret / "secret.json"
    message = refusal(app.client, app.image, "a, b", str(secret), 2, api_name="/classify")
    assert "TOPSECRET" not in message and "unknown template set" in message
    # An existing file and a missing one get the same answer: the field cannot probe the file system.
    answers = {
        path: refusal(app.client, app.image, "a, b", path, 2, api_name="/classify").replace(path, "PATH")
        for path in ("/etc/passwd", "/no/such/file", str(secret), str(app.secret / "missing.json"))
    }
    assert len(set(answers.values())) == 1, answers
    still_serving(app)


@pytest.mark.parametrize(
    "template",
    ["{c:>5000}", "{c!r}", "{c:{c}}", "a {c} " + "x" * 400, "{c}" * 4, "{c} {0}", "{c.__class__}", "{c[0]}"],
)
def test_templates_from_the_web_are_bounded(app, template):
    start = time.perf_counter()
    message = refusal(app.client, app.image, "a, b", template, 2, api_name="/classify")
    assert time.perf_counter() - start < 5
    assert re.search(r"bare \{c\}|characters long|at most 3|fields other than|malformed", message), message


def test_overlong_labels_are_refused_before_any_work(app):
    for labels, message in [("a, " + "x" * 5000, "longer than 300 characters"), ("a," * 400_000, "characters long")]:
        start = time.perf_counter()
        assert message in refusal(app.client, app.image, labels, "generic", 2, api_name="/classify")
        assert time.perf_counter() - start < 5


def test_a_literal_template_and_a_shipped_set_still_work(app):
    scores, _, notes = app.client.predict(app.image, "red circle, blue square", "an icon of a {c}", 2,
                                          api_name="/classify")  # fmt: skip
    assert len(scores["confidences"]) == 2 and "1 prompt templates" in notes
    scores, _, notes = app.client.predict(app.image, "red circle, blue square", "photo", 2, api_name="/classify")
    assert len(scores["confidences"]) == 2


# ---------------------------------------------------------------------------------------------------------------
# Item 5: one server-path rule, and bounded numbers, for every field that reaches the file system or a loop.


def same_answers(app, api_name: str, make_args, paths: list[str]) -> str:
    """The app's messages for each path, with the path itself blanked out; asserts they are all the same."""
    answers = {}
    for path in paths:
        message = refusal(app.client, *make_args(path), api_name=api_name)
        answers[path] = re.sub(r"'.*?'", "PATH", message, count=1)  # the path as typed (escaped, shortened)
    assert len(set(answers.values())) == 1, answers
    return next(iter(answers.values()))


def test_paths_outside_the_allowed_folders_get_one_answer_whether_or_not_they_exist(app):
    outside = ["/etc", "/no/such/folder", str(app.secret), "/etc\x00/x", str(app.shapes / "missing"), "/" + "a" * 5000]
    message = same_answers(app, "/add_folder", lambda p: (p,), outside)
    assert "outside the folders this app may read" in message and "--allow-dir" in message
    args = (None, "vlm-tiny (from scratch, 32 px)", 1, 0, 8, 1e-3, 0)
    same_answers(app, "/train_start", lambda p: (p, *args), ["/etc/passwd", str(app.secret / "secret.json"), "/nope"])
    same_answers(app, "/segment", lambda p: (app.image, "a", "learned decoder", p, 0.5), ["/etc", "/nope"])
    still_serving(app)


def test_the_launch_folder_is_not_readable_from_the_web(app):
    here = Path(__file__).resolve().parent  # inside the folder the tests (and the app) started from
    message = refusal(app.client, str(here), api_name="/add_folder")
    assert "outside the folders this app may read" in message
    assert app.client.predict(api_name="/collection_info")["images"] == 9


def test_model_fields_take_names_ids_or_allowed_folders_only(app):
    message = same_answers(app, "/model_switch", lambda p: (p, ""), ["/etc", "/no/such/model", str(app.secret), "./x"])
    assert "model folder" in message
    same_answers(app, "/model_switch", lambda p: ("vlm-tiny", p), ["/etc/passwd", "/no/such.bin", "../../x.pt"])
    args = (1, 0, 8, 1e-3, 0)
    same_answers(app, "/train_start", lambda p: (str(app.shapes / "pairs.csv"), None, p, *args), ["/etc", "/nope/m"])
    assert "outside the folders" in refusal(app.client, "hf-hub:../../etc", "", api_name="/model_switch")
    assert app.client.predict(api_name="/model_info")["model"] == "vlm-tiny"


APP_IMAGE = object()  # stands for the app fixture's image in the parametrisation below


def test_a_duplicate_search_over_merely_similar_images_is_refused(app):
    # A low threshold would keep ~N^2 pairs in memory (indexing/duplicates.py): the web allows 0.8 and above.
    message = refusal(app.client, 0.01, api_name="/find_duplicates")
    assert re.search("duplicate threshold must be (a finite number )?between|Value .* is less than", message), message


def test_search_filters_from_the_web_are_bounded(app):
    long = "2024-01-01" + " " * 10 + "x" * 5000
    for args in [("a red circle", 5, "", "", long, ""), ("a red circle", 5, "x" * 5000, "", "", "")]:
        message = refusal(app.client, *args, api_name="/search_text")
        assert "characters long; keep it under" in message, message
    assert app.client.predict(api_name="/collection_info")["images"] == 9


@pytest.mark.parametrize(
    ("api_name", "make_args", "what"),
    [
        ("/search_similar", lambda v: (v, 5, "", ""), "the image id"),
        ("/explain_result", lambda v: (v, "a red circle"), "the image id"),
        ("/search_text", lambda v: ("a red circle", v, "", ""), "the number of results k"),
        ("/search_text", lambda v: ("a red circle", 5, "", "", "", "", "relevance", "", v), "smallest width in px"),
        ("/search_image", lambda v: (APP_IMAGE, 5, "", "", "", "", "date", "", 0, 0, v), "smallest file size in MB"),
        ("/classify", lambda v: (APP_IMAGE, "a, b", "generic", v), "top k"),
        ("/segment", lambda v: (APP_IMAGE, "a", "training-free (dense)", "", v), "the mask threshold"),
        ("/find_duplicates", lambda v: (v,), "duplicate threshold"),
    ],
)
@pytest.mark.parametrize("value", [10**30, -1, 2.5e300, 2**63])
def test_numbers_from_the_web_are_bounded(app, api_name, make_args, what, value):
    args = tuple(app.image if a is APP_IMAGE else a for a in make_args(value))
    start = time.perf_counter()
    message = refusal(app.client, *args, api_name=api_name)
    # Sliders are range-checked by Gradio itself ("Value 7 is greater than maximum value 0.95"); ids and NaN by us.
    assert re.search(f"{what} must be (a finite number )?between|Value .* is (greater|less) than", message), message
    assert time.perf_counter() - start < 5


def test_the_relevance_cut_off_from_the_web_is_a_cosine(app):
    for value in (2, -5, 10**30):
        message = refusal(app.client, "a red circle", 5, "", "", "", "", "date", "", None, None, None, value,
                          api_name="/search_text")  # fmt: skip
        expected = "relevance cut-off must be (a finite number )?between|Value .* is (greater|less) than"
        assert re.search(expected, message), message


# ---------------------------------------------------------------------------------------------------------------
# Item 6: a damaged checkpoint gets a message, through the CLI and the Model tab, never a traceback.


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """`vlm ARGV...` as a user runs it: the exit code, stdout and stderr."""
    from vlm.cli import main

    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> dict[str, Path]:
    """Checkpoint folders and weights files damaged the ways a download, a disk or a user damages them."""
    import shutil

    from vlm import models

    tmp = tmp_path_factory.mktemp("damaged")
    torch.manual_seed(0)
    good = models.save(models.load("vlm-tiny", device="cpu"), tmp / "good")
    out = {}

    def copy(name: str) -> Path:
        out[name] = shutil.copytree(good, tmp / name)
        return out[name]

    (copy("non-utf8 config.json") / "config.json").write_bytes(b'{"format": "vlm-checkpoint", "x": "\xff\xfe"}')
    weights = (good / "model.safetensors").read_bytes()
    (copy("truncated weights") / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (copy("empty weights") / "model.safetensors").write_bytes(b"")
    torch.save({"visual.proj": torch.zeros(1)}, copy("stray .bin beside the weights") / "open_clip_pytorch_model.bin")
    (copy("no weights") / "model.safetensors").unlink()
    (tmp / "notes.txt").write_text("not weights", encoding="utf-8")
    out["--pretrained a text file"] = tmp / "notes.txt"
    out["--pretrained a config file"] = good / "config.json"
    (tmp / "empty.bin").write_bytes(b"")
    out["--pretrained an empty file"] = tmp / "empty.bin"
    torch.save([1, 2, 3], tmp / "list.pt")
    out["--pretrained a list"] = tmp / "list.pt"
    return out


DAMAGE = {
    "non-utf8 config.json": "not valid JSON in UTF-8",
    "truncated weights": "may be truncated",
    "empty weights": "may be truncated",
    "stray .bin beside the weights": "holds 2 weights files",
    "no weights": "has no weights file",
    "--pretrained a text file": "may be truncated, not a checkpoint",
    "--pretrained a config file": "may be truncated, not a checkpoint",
    "--pretrained an empty file": "may be truncated, not a checkpoint",
    "--pretrained a list": "may be truncated, not a checkpoint",
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_checkpoints_get_a_message_from_the_cli(damaged, capsys, kind):
    argv = ["vlm-tiny", "--pretrained", str(damaged[kind])] if kind.startswith("--") else [str(damaged[kind])]
    code, _, err = run_cli(capsys, "info", *argv)
    assert code == 2 and DAMAGE[kind] in err and "Traceback" not in err, err


def test_a_damaged_checkpoint_in_the_model_tab_leaves_the_model_as_it_was(app, damaged):
    import shutil

    folder = shutil.copytree(damaged["truncated weights"], app.state.runs_dir / "damaged")
    assert "may be truncated" in refusal(app.client, str(folder), "", api_name="/model_switch")
    assert app.client.predict(api_name="/model_info")["model"] == "vlm-tiny"
    still_serving(app)


# ---------------------------------------------------------------------------------------------------------------
# Item 7: no meaningless 100 % with exit code 0.


def test_one_class_evaluation_is_refused_and_a_dataset_root_is_read_through_its_labels(app, capsys, tmp_path):
    one = tmp_path / "one-class" / "circle"
    one.mkdir(parents=True)
    for src in sorted((app.shapes / "images").glob("*.png"))[:3]:
        (one / src.name).write_bytes(src.read_bytes())
    code, _, err = run_cli(capsys, "eval", "zeroshot", str(one.parent), "--model", "vlm-tiny", "--workers", "0")
    assert code == 2 and "1 class ['circle']" in err and "accuracy means nothing" in err
    # The synth dataset's root holds images/ and labels.csv: read as a folder it would be one class, "images".
    code, out, err = run_cli(capsys, "eval", "zeroshot", str(app.shapes), "--model", "vlm-tiny", "--workers", "0",
                             "--json")  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    labels = (app.shapes / "labels.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert report["data"].endswith("labels.csv") and report["images"] == len(labels)
    assert len(report["classes"]) == len({row.split(",")[1] for row in labels}) > 1


def test_classifying_with_one_label_exits_2_on_the_cli(app, capsys):
    image = str(app.shapes / "images" / "000001.png")
    code, out, err = run_cli(capsys, "classify", image, "--labels", "red circle, , Red Circle", "--model", "vlm-tiny")
    assert code == 2 and "one label given" in err and "100" not in out


def test_one_label_in_the_app_answers_the_cosine_with_a_note(app):
    scores, _, notes = app.client.predict(app.image, "red circle", "plain", 1, api_name="/classify")
    image = handle_file(app.shapes / "images" / "000001.png")
    _, info = app.client.predict(image, "red circle", api_name="/explain")  # the same cosine, another route
    cosine = float(re.search(r"cosine similarity (-?\d+\.\d+)", info).group(1))
    assert scores["label"] == "red circle" and "cosine similarity" in notes and "always 100 %" in notes
    assert scores["confidences"][0]["confidence"] == pytest.approx(cosine, abs=1e-3)
    # and whether it reaches the model's calibrated threshold (vlm.calibration), with the figures it rests on
    assert re.search(r"\| red circle \| -?\d\.\d{3} \| -?\d\.\d{3} \| \d+% \|", notes)
    assert "fits" in notes and "quantile of those true matches" in notes


# ---------------------------------------------------------------------------------------------------------------
# Item 8: messages that say what happened.


def test_a_large_photo_is_told_its_size_not_that_it_is_corrupt(app, tmp_path):
    from PIL import Image

    for side in (6000, 11000):  # 36 and 121 megapixels, a few kB on disk; PIL warns above 89 MP
        path = tmp_path / f"{side}.png"
        Image.new("1", (side, side)).save(path)
        message = refusal(app.client, handle_file(path), "a, b", "generic", 2, api_name="/classify")
        assert f"{side * side / 1e6:.1f} megapixels, above this app's limit" in message
        assert "truncated" not in message and "corrupt" not in message


LOCK_HOLDER = """
import os, sys, time
from pathlib import Path
from indexing import versions
versions.lock(Path(sys.argv[1]))
if os.fork() == 0:  # stands in for a DataLoader worker: it shares the lock until it notices its parent died
    time.sleep(2.0)
    os._exit(0)
print("locked", flush=True)
time.sleep(120)
"""


def test_after_a_killed_writer_the_next_one_waits_for_its_workers_and_goes_on(app, capsys, tmp_path):
    import signal
    import subprocess
    import sys

    from vlm import models

    model = models.save(app.state.active.encoders, tmp_path / "model")  # fixed weights: `index add` reloads them
    coll = tmp_path / "coll"
    code, _, err = run_cli(capsys, "index", "build", str(coll), str(app.shapes / "images"), "--model", str(model),
                           "--workers", "0")  # fmt: skip
    assert code == 0, err
    writer = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(coll)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "locked"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    start = time.perf_counter()
    code, _, err = run_cli(capsys, "index", "add", str(coll), str(app.shapes / "images"), "--workers", "0")
    assert code == 0 and "being changed by another writer" not in err, err
    assert 1.0 < time.perf_counter() - start < 30  # it waited for the orphan, not more


# ---------------------------------------------------------------------------------------------------------------
# The same classes everywhere: repeated flags, CSV quirks, file names with control characters.


@pytest.mark.parametrize(
    "argv",
    [
        ["classify", "x.png", "--labels", "a, b", "--model", "ViT-B-32", "--model", "demo"],
        ["index", "search", "coll", "--text", "a", "-k", "5", "-k", "50"],
        ["train", "--lr", "1e-3", "--lr", "1e-1"],
        ["eval", "zeroshot", "data", "--templates", "plain", "--templates", "generic"],
    ],
)
def test_a_repeated_flag_is_refused_not_silently_replaced(capsys, argv):
    from vlm.cli import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "was given twice" in capsys.readouterr().err


def test_csv_quirks_are_read_or_reported(app, capsys, tmp_path):
    from vlm import models

    (tmp_path / "img").mkdir()
    for src in sorted((app.shapes / "images").glob("*.png"))[:7]:
        (tmp_path / "img" / src.name).write_bytes(src.read_bytes())
    images = [f"img/{p.name}" for p in sorted((tmp_path / "img").glob("*.png"))]  # relative to the lists
    rows = [f"{p},caption {i}" for i, p in enumerate(images[:4])]
    # A byte-order mark, Windows line ends and blank lines before the header: read as if they were not there.
    (tmp_path / "quirky.csv").write_bytes(b"\xef\xbb\xbf\r\n\r\n" + "\r\n".join(["path,caption", *rows]).encode())
    # A quote left open swallows every row after it: reported as a malformed row, not read as one long caption.
    (tmp_path / "open-quote.csv").write_text("path,caption\n" + f'{images[5]},"never closed\n{images[6]},x\n')
    (tmp_path / "twice.csv").write_text("path,path,caption\n" + f"{images[0]},{images[1]},x\n")
    model = models.save(app.state.active.encoders, tmp_path / "model")
    build = ["index", "build", str(tmp_path / "coll"), "--model", str(model), "--workers", "0"]
    code, out, err = run_cli(capsys, *build[:3], str(tmp_path / "quirky.csv"), *build[3:])
    assert code == 0 and "added 4 image(s)" in out, (out, err)
    code, out, err = run_cli(capsys, "index", "add", str(tmp_path / "coll"), str(tmp_path / "open-quote.csv"),
                             "--workers", "0")  # fmt: skip
    assert code == 0 and "malformed row" in out and "added 0 image(s)" in out, (out, err)
    code, _, err = run_cli(capsys, "index", "add", str(tmp_path / "coll"), str(tmp_path / "twice.csv"))
    assert code == 2 and "more than once" in err


def test_file_names_with_control_characters_are_escaped_in_the_terminal(app, capsys, tmp_path):
    from vlm import models

    folder = tmp_path / "photos"
    folder.mkdir()
    evil = "clear\x1b[2J\x1b]0;pwned\x07\nforged line \u202etxt.png"
    (folder / evil).write_bytes((app.shapes / "images" / "000001.png").read_bytes())
    model = models.save(app.state.active.encoders, tmp_path / "model")
    code, _, err = run_cli(capsys, "index", "build", str(tmp_path / "coll"), str(folder), "--model", str(model),
                           "--workers", "0")  # fmt: skip
    assert code == 0, err
    code, out, _ = run_cli(capsys, "index", "search", str(tmp_path / "coll"), "--text", "a red circle", "-k", "1")
    assert code == 0 and "\\x1b[2J" in out and "\\n" in out and "\\u202e" in out
    assert not any(c in out for c in "\x1b\x07\u202e") and out.count("\n") == 1
