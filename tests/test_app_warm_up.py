"""The served app measures the active model's Classify and Segment thresholds in the background after a switch, so
the first visitor's answer does not wait for them; the measurements land where a request would look for them."""

import torch

from ui.app import create_state
from vlm import calibration, measured
from vlm.segment import absent
from vlm.synth import generate


def test_a_warm_state_measures_both_thresholds_in_the_background(tmp_path, monkeypatch):
    monkeypatch.setenv(measured.ENV, str(tmp_path / "measured"))
    generate(tmp_path / "shapes", 4, seed=3, image_size=32, progress=False)
    torch.manual_seed(20261205)  # weights no other test measures (a figure already in memory is not measured again)
    state = create_state("vlm-tiny", images=[tmp_path / "shapes" / "images"], cache_dir=tmp_path / "cache",
                         runs_dir=tmp_path / "runs", device="cpu", progress=False, warm_up=True)  # fmt: skip
    try:
        assert state.warming is not None, "no warm-up started"
        state.warming.join(300)
        assert not state.warming.is_alive()
        fingerprint = state.active.encoders.fingerprint
        kept = sorted(p.name for p in (tmp_path / "measured").iterdir())
        assert any(n.startswith(f"{calibration.MEASUREMENT}-{fingerprint}") for n in kept), kept
        assert any(n.startswith(f"{absent.MEASUREMENT}-{fingerprint}") for n in kept), kept
        # and what a request then asks for is what was measured, read without measuring again
        monkeypatch.setattr(absent, "calibrate_absent", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
        assert absent.absent_threshold(state.active.encoders).fingerprint == fingerprint
    finally:
        state.close()


def test_a_state_built_without_warm_up_measures_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(measured.ENV, str(tmp_path / "measured"))
    generate(tmp_path / "shapes", 2, seed=4, image_size=32, progress=False)
    state = create_state("vlm-tiny", images=[tmp_path / "shapes" / "images"], cache_dir=tmp_path / "cache",
                         runs_dir=tmp_path / "runs", device="cpu", progress=False)  # fmt: skip
    try:
        assert state.warming is None
        assert not (tmp_path / "measured").exists()
    finally:
        state.close()
