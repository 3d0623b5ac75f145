"""vlm.query: parsing text/image terms with weights and signs, and the combination against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlm.query import QueryError, Term, combine, parse


def test_parse_terms_weights_and_signs(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (32, 32), "red").save(photo)
    assert parse(f'"a beach" + 0.5*{photo} - "people"') == [
        Term(1.0, "text", "a beach"),
        Term(0.5, "image", str(photo)),
        Term(-1.0, "text", "people"),
    ]
    assert parse("golden retriever - 2*'fruit'") == [Term(1.0, "text", "golden retriever"), Term(-2.0, "text", "fruit")]
    assert parse("a t-shirt") == [Term(1.0, "text", "a t-shirt")]  # a hyphen without spaces is not a minus


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ('"a beach" + missing.jpg', "query image not found: missing.jpg"),
        ('"a beach" + ', "empty term at the end"),
        ('"a beach" + - "x"', "empty term before term 3"),
        ('"" + x', "empty quoted term"),
        ("   ", "empty query"),
        ("abc*x", "cannot read the weight"),
    ],
)
def test_bad_queries_name_the_problem(query, message):
    with pytest.raises(QueryError, match=message.replace("(", r"\(")):
        parse(query)


def test_combination_equals_a_hand_computation(tmp_path, tiny_encoders):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(photo)
    got = combine(tiny_encoders, parse(f'"a beach" + 0.5*{photo} - "people"'))
    with torch.no_grad():
        beach, people = tiny_encoders.model.encode_text(tiny_encoders.tokenizer(["a beach", "people"])).double().numpy()
        image = tiny_encoders.model.encode_image(tiny_encoders.preprocess(Image.open(photo).convert("RGB"))[None])
    image = image.double().numpy()[0]
    unit = [v / np.sqrt((v * v).sum()) for v in (beach, image, people)]
    expected = unit[0] + 0.5 * unit[1] - unit[2]
    expected /= np.sqrt((expected * expected).sum())
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(QueryError, match="cancel out"):
        combine(tiny_encoders, parse('"x" - "x"'))
