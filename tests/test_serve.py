"""`vlm serve` and `python app.py`: the same options, turned into the same `ui.app` calls."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import ui.app
from vlm import cli
from vlm.errors import ModelError

ROOT = Path(__file__).resolve().parents[1]


def _app_module():
    spec = importlib.util.spec_from_file_location("app_entry", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def calls(monkeypatch):
    """Replace the app's four steps by recorders: what each entry point would have done, without serving."""
    log = []
    monkeypatch.setattr(ui.app, "create_state", lambda *a, **k: log.append(("create_state", a, k)) or "state")
    monkeypatch.setattr(ui.app, "build_app", lambda s, **k: log.append(("build_app", s, k)) or "blocks")
    monkeypatch.setattr(ui.app, "launch", lambda d, s, **k: log.append(("launch", d, s, k)))
    monkeypatch.setattr(ui.app, "close", lambda d, s: log.append(("close", d, s)))
    return log


ARGS = ["--model", "runs/x/final", "--images", "a", "--images", "b", "--auth", "ann:pw:with:colons", "--port", "0",
        "--max-megapixels", "2", "--concurrency", "3", "--allow-dir", "data"]  # fmt: skip


def test_vlm_serve_and_app_py_make_the_same_calls(calls):
    assert cli.main(["serve", *ARGS]) == 0
    from_cli = list(calls)
    calls.clear()
    assert _app_module().main(ARGS) == 0
    assert calls == from_cli
    (_, args, kwargs), build, launch, close = from_cli
    assert args == ("runs/x/final", None)
    assert kwargs["images"] == ["a", "b"] and kwargs["allowed_dirs"] == ["data"] and kwargs["collection"] is None
    assert kwargs["limits"].max_pixels == 2_000_000 and kwargs["limits"].max_upload_mb == 20.0
    assert build == ("build_app", "state", {"concurrency": 3})
    assert launch == ("launch", "blocks", "state", {"host": "127.0.0.1", "port": 0, "share": False,
                                                    "auth": ("ann", "pw:with:colons")})  # fmt: skip
    assert close == ("close", "blocks", "state")


def test_a_model_that_cannot_load_is_a_clear_error_before_serving(calls, monkeypatch, capsys):
    def refuse(*a, **k):
        raise ModelError("no model named 'nope'")

    monkeypatch.setattr(ui.app, "create_state", refuse)
    assert cli.main(["serve", "--model", "nope"]) == 2
    assert "vlm serve: error: no model named 'nope'" in capsys.readouterr().err
    assert _app_module().main(["--model", "nope"]) == 2
    assert "app: error: no model named 'nope'" in capsys.readouterr().err
    assert calls == []  # nothing was built or launched


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--auth", "nocolon"], "--auth takes USER:PASS"), (["--port", "70000"], "--port must be 0..65535"),
     (["--concurrency", "0"], "must be positive"), (["--max-upload-mb", "-1"], "must be positive")],
)  # fmt: skip
def test_bad_options_are_refused_by_both(calls, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        _app_module().main(flags)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert calls == []
