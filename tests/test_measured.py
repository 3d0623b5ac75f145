"""vlm.measured: figures measured once per set of weights are read back from disk (no measuring), and a bad, stale
or foreign file is measured again instead of crashing; vlm.calibration keeps Classify's threshold there."""

import json
import threading

import numpy as np
import pytest

from vlm import calibration, measured

FP = "2e8a087393b745e5"


class Counter:
    def __init__(self, value):
        self.calls, self.value = 0, value

    def __call__(self):
        self.calls += 1
        return dict(self.value)


def test_a_second_remember_reads_the_file_and_measures_nothing(tmp_path):
    first = Counter({"threshold": 0.25, "how": "by hand"})
    assert measured.remember("thing", 1, FP, first, dict, root=tmp_path) == {"threshold": 0.25, "how": "by hand"}
    again = Counter({"threshold": 9.0})
    assert measured.remember("thing", 1, FP, again, dict, root=tmp_path) == {"threshold": 0.25, "how": "by hand"}
    assert (first.calls, again.calls) == (1, 0)
    (path,) = tmp_path.iterdir()
    assert path == measured.path_for("thing", FP, root=tmp_path) and path.name == f"thing-{FP}.json"
    record = json.loads(path.read_text())
    assert record["fingerprint"] == FP and record["version"] == 1 and record["value"]["threshold"] == 0.25
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_callers_asking_at_once_measure_once(tmp_path):
    """The app's background warm-up and a visitor's first request may ask for the same figure together."""
    started, release, calls, answers = threading.Event(), threading.Event(), [], []

    def slow_measure():
        calls.append(1)
        started.set()
        release.wait(10)
        return {"threshold": 0.5}

    def ask():
        answers.append(measured.remember("thing", 1, FP, slow_measure, dict, root=tmp_path))

    first, second = threading.Thread(target=ask), threading.Thread(target=ask)
    first.start()
    assert started.wait(10)
    second.start()
    second.join(0.3)  # time for the second caller to reach the file while the first is still measuring
    release.set()
    first.join(10)
    second.join(10)
    assert len(calls) == 1 and answers == [{"threshold": 0.5}] * 2


@pytest.mark.parametrize(
    "content",
    [b"", b'{"kind": "thing", "vers', b"\xff\xfe\x00garbage", b"[1, 2]", b'{"value": 3}'],
    ids=["empty", "cut", "binary", "list", "not-a-record"],
)
def test_a_corrupt_file_is_measured_again_and_replaced(tmp_path, content):
    path = measured.path_for("thing", FP, root=tmp_path)
    path.write_bytes(content)
    count = Counter({"threshold": 0.5})
    assert measured.remember("thing", 1, FP, count, dict, root=tmp_path) == {"threshold": 0.5}
    assert count.calls == 1 and json.loads(path.read_text())["value"] == {"threshold": 0.5}


def test_a_value_the_caller_cannot_use_is_measured_again(tmp_path):
    measured.save("thing", 1, FP, {"wrong": 1}, root=tmp_path)
    count = Counter({"threshold": 0.5})
    assert measured.remember("thing", 1, FP, count, lambda v: float(v["threshold"]), root=tmp_path) == 0.5
    assert count.calls == 1 and measured.load("thing", 1, FP, root=tmp_path) == {"threshold": 0.5}


def test_other_version_weights_or_extra_are_measured_again(tmp_path):
    measured.save("thing", 1, FP, {"x": 1}, {"method": "dense"}, root=tmp_path)
    assert measured.load("thing", 1, FP, {"method": "dense"}, root=tmp_path) == {"x": 1}
    assert measured.load("thing", 2, FP, {"method": "dense"}, root=tmp_path) is None  # measured otherwise
    assert measured.load("thing", 1, FP, {"method": "decoder"}, root=tmp_path) is None  # another file
    assert measured.load("thing", 1, "0" * 16, {"method": "dense"}, root=tmp_path) is None
    assert measured.load("other", 1, FP, {"method": "dense"}, root=tmp_path) is None
    # A file copied under another weights' name is not believed: the record names its own weights.
    src = measured.path_for("thing", FP, {"method": "dense"}, root=tmp_path)
    dst = measured.path_for("thing", "1" * 16, {"method": "dense"}, root=tmp_path)
    dst.write_bytes(src.read_bytes())
    assert measured.load("thing", 1, "1" * 16, {"method": "dense"}, root=tmp_path) is None


@pytest.mark.parametrize(
    ("kind", "fingerprint"),
    [("thing", "../../etc/passwd"), ("thing", "a cat"), ("thing", "ABCDEF0123456789"), ("../x", FP), ("", FP)],
)
def test_names_come_from_fingerprints_and_constants_only(tmp_path, kind, fingerprint):
    with pytest.raises(ValueError, match="measured"):
        measured.path_for(kind, fingerprint, root=tmp_path)
    assert measured.path_for("thing", f"{FP}-int8", {"method": "../../x"}, root=tmp_path).parent == tmp_path


def test_an_unwritable_folder_costs_a_measurement_not_an_answer(tmp_path):
    (tmp_path / "file").write_text("a file where the folder should be")  # unwritable even for root
    count = Counter({"threshold": 0.5})
    assert measured.remember("thing", 1, FP, count, dict, root=tmp_path / "file") == {"threshold": 0.5}
    assert measured.remember("thing", 1, FP, count, dict, root=tmp_path / "file") == {"threshold": 0.5}
    assert count.calls == 2


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(measured.ENV, str(tmp_path / "m"))
    assert measured.cache_dir() == tmp_path / "m"
    monkeypatch.delenv(measured.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert measured.cache_dir() == tmp_path / "xdg" / "vlm" / "measured"


def test_reference_fit_after_a_restart_reads_its_file_and_runs_no_model(tiny_encoders, monkeypatch, tmp_path):
    monkeypatch.setenv(measured.ENV, str(tmp_path))
    monkeypatch.setattr(calibration, "_CACHE", {})
    runs = []
    real = calibration.embed_images
    monkeypatch.setattr(calibration, "embed_images", lambda *a, **k: runs.append(1) or real(*a, **k))
    first = calibration.reference_fit(tiny_encoders)
    (path,) = tmp_path.iterdir()  # one file, named by the kind and the weights' fingerprint
    assert runs and path.name.startswith(f"{calibration.MEASUREMENT}-{tiny_encoders.fingerprint}")
    monkeypatch.setattr(calibration, "_CACHE", {})  # a fresh process: nothing in memory
    runs.clear()
    second = calibration.reference_fit(tiny_encoders)
    assert runs == []
    assert second is not first and second.how == first.how and second.fingerprint == tiny_encoders.fingerprint
    for a, b in zip(first.domains, second.domains, strict=True):
        assert np.array_equal(a.matched, b.matched) and a.threshold == b.threshold and a.vocabulary == b.vocabulary
    # A corrupt file: measured again (the model runs), same figures, file repaired.
    path.write_text("{not json")
    monkeypatch.setattr(calibration, "_CACHE", {})
    third = calibration.reference_fit(tiny_encoders)
    assert runs and np.allclose(third.domains[0].matched, first.domains[0].matched, atol=1e-6)
    assert json.loads(path.read_text())["version"] == calibration.MEASUREMENT_VERSION
