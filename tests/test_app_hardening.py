"""The app and the CLI as an outsider probes them (issue 12): what a visitor may read, write, load or ask for.

Each test drives the app through `gradio_client` (or the CLI through a subprocess) with the request an attacker or a
careless user would send, and checks the answer: refused with a clear message, fast, telling nothing about the
server's files, and the server goes on serving.
"""

from __future__ import annotations

import json
import re
import socket
import time
from types import SimpleNamespace

import pytest
import torch

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from ui.app import build_app, close, create_state, launch  # noqa: E402
from vlm.synth import generate  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword is deprecated")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def test_a_literal_template_and_a_shipped_set_still_work(app):
    scores, _, notes = app.client.predict(app.image, "red circle, blue square", "an icon of a {c}", 2,
                                          api_name="/classify")  # fmt: skip
    assert len(scores["confidences"]) == 2 and "1 prompt templates" in notes
    scores, _, notes = app.client.predict(app.image, "red circle, blue square", "photo", 2, api_name="/classify")
    assert len(scores["confidences"]) == 2
