"""vlm.calibration: the cosine of images with their own label, its quantile as the "none fits" threshold, and the fit
as the empirical distribution of true matches; compared with a hand computation through open_clip's model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlm import templates
from vlm.calibration import calibrate, reference_images
from vlm.synth import LABELS


@torch.no_grad()
def hand_cosines(encoders, images, labels):
    model = encoders.model.eval()
    pixels = torch.stack([encoders.preprocess(im) for im in images])
    img = F.normalize(model.encode_image(pixels), dim=-1)
    rows = []
    for label in labels:
        prompts = [t.format(c=label) for t in templates.load("generic")]
        rows.append(F.normalize(F.normalize(model.encode_text(encoders.tokenize(prompts)), dim=-1).mean(0), dim=-1))
    return (img @ torch.stack(rows).T).numpy()


def test_threshold_and_fit_follow_the_true_matches(tiny_encoders):
    images, ids = reference_images(seeds=1, size=32)
    assert len(images) == len(LABELS) and ids == list(range(len(LABELS)))
    cal = calibrate(tiny_encoders, images, ids, list(LABELS), quantile=0.25)
    matched = np.sort(hand_cosines(tiny_encoders, images, LABELS)[np.arange(len(ids)), ids])
    assert np.allclose(cal.matched, matched, atol=1e-5)
    assert cal.threshold == pytest.approx(np.quantile(matched, 0.25), abs=1e-5)
    assert cal.fit(matched[0] - 1) == 0.0 and cal.fit(matched[-1] + 1) == 1.0
    for x in (matched[:-1] + matched[1:]) / 2:  # between true matches: the share below, by hand
        assert cal.fit(x) == pytest.approx(np.mean(matched < x), abs=1.5 / len(matched))
    assert cal.fits(cal.threshold) and not cal.fits(cal.threshold - 1e-4)
    assert "25% quantile" in cal.how and f"{len(images)} reference images" in cal.how
