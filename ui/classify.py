"""The Classify tab: an image and any labels give zero-shot probabilities (`vlm.zeroshot`), shown as a label
widget and a bar chart; clicking a label shows where it matches (`ui.explain`). API: `classify`."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import gradio as gr
import pandas as pd
import torch
from PIL import Image

from ui.errors import shown
from ui.examples import image_examples
from ui.inputs import checked_int, checked_labels, image_input, require_image
from ui.outputs import picture
from ui.state import AppState
from vlm import demo
from vlm import templates as template_sets
from vlm.calibration import WEAK_FIT, reference_fit
from vlm.segment import explain
from vlm.segment.absent import absent_threshold
from vlm.zeroshot import ZeroShotClassifier, build_classifier, embed_images, top_k

LOG = logging.getLogger(__name__)

EXAMPLE_LABELS = "red circle, blue square, green triangle, yellow star, grinning face, cat face, pizza"


def example_labels(state: AppState) -> str:
    """The labels the tab starts with: for the demo model, those its card measured it gets right
    (`vlm.demo.describe`); otherwise `EXAMPLE_LABELS`."""
    active = state.active
    labels = demo.describe(active.encoders.provenance).labels if active.is_demo else ()
    return ", ".join(labels) or EXAMPLE_LABELS


def classify(
    state: AppState, image: Image.Image | None, labels: str, templates: str | None, k: int
) -> tuple[dict[str, float], pd.DataFrame, str]:
    """Top-k labels with their probabilities (a softmax over all the labels), as a {label: p} dict, a table
    (label, probability) for the chart, and notes for people."""
    image = require_image(image)
    clean = checked_labels(labels, state.limits.max_labels)
    encoders = state.active.encoders
    clf = build_classifier(encoders, clean.labels, templates or None, cache=state.classifiers, template_files=False)
    if len(clf.labels) == 1:
        embedding = embed_images(encoders, [image])
        scores, table, note = _one_label(clf, embedding)
        return scores, table, note + fit_notes(encoders, clf, embedding, clf.labels)
    k = max(1, min(int(k), len(clf.labels)))
    embedding = embed_images(encoders, [image])
    best = top_k(clf.probs(embedding), clf.labels, k)[0]
    scores = dict(zip(best.labels, best.probs, strict=True))
    table = pd.DataFrame({"label": list(best.labels), "probability": list(best.probs)})
    notes = [f"{len(clf.labels)} labels × {len(clf.templates)} prompt templates; model {encoders.source}."]
    notes.append(fit_notes(encoders, clf, embedding, best.labels))
    if clean.duplicates or clean.empty:
        notes.append(f"Dropped {len(clean.duplicates)} duplicate and {clean.empty} empty label(s).")
    if clf.truncated:
        notes.append(f"{len(clf.truncated)} label(s) were too long for the text encoder and were cut.")
    notes.append("Click a label to see where it matches in the image.")
    return scores, table, " ".join(notes)


def fit_notes(encoders, clf: ZeroShotClassifier, embedding: torch.Tensor, shown: Sequence[str]) -> str:
    """The calibrated similarity beside the softmax (`vlm.calibration`): each shown label's cosine, the threshold of
    its domain and its fit, and "none of the labels fits well" when no label reaches its domain's threshold."""
    cal = reference_fit(encoders)
    cosines = dict(zip(clf.labels, clf.similarity(embedding)[0].tolist(), strict=True))
    rows = [
        f"| {label} | {cosines[label]:.3f} | {cal.threshold(label):.3f} | {cal.fit(cosines[label], label):.0%} |"
        for label in shown
    ]
    fitting = [label for label, cos in cosines.items() if cal.fits(cos, label)]
    top = max(cosines, key=cosines.get)
    if fitting:
        best = max(fitting, key=lambda label: cal.fit(cosines[label], label))
        fit = cal.fit(cosines[best], best)
        others = "" if len(fitting) == 1 else f"; {len(fitting)} labels reach theirs"
        verdict = (
            f"The best label fits: '{best}' (cosine {cosines[best]:.3f} ≥ its threshold {cal.threshold(best):.3f}"
            f"{others})."
            if fit >= WEAK_FIT
            else f"The best label fits only weakly: '{best}' (cosine {cosines[best]:.3f}, above its threshold "
            f"{cal.threshold(best):.3f} but below {1 - fit:.0%} of the true matches on the reference data{others}); "
            f"an image of something this model does not know can score as much."
        )
    else:
        verdict = (
            f"**None of the labels fits well**: no label reaches this model's threshold for it (the best cosine, "
            f"{cosines[top]:.3f} for '{top}', is below {cal.threshold(top):.3f}); the percentages above only compare "
            f"these labels with each other."
        )
    per_domain = ", measured per domain of the reference data" if len(cal.domains) > 1 else ""
    return (
        f"\n\n{verdict}\n\n| label | cosine | threshold | fit |\n| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n\n"
        f"*Fit*: the share of true matches on the model's reference data with a lower cosine; the threshold is the "
        f"{cal.quantile:.0%} quantile of those true matches{per_domain} ({cal.how}).\n\n"
    )


def _one_label(clf: ZeroShotClassifier, image_embedding: torch.Tensor) -> tuple[dict[str, float], pd.DataFrame, str]:
    """A softmax over one label is always 1, so one label is answered with its cosine similarity to the image
    (the image against the label's averaged prompt embedding), and a note saying so."""
    label = clf.labels[0]
    cosine = float(image_embedding[0] @ clf.weights[0].to(image_embedding))
    note = (
        f"Only one label: a probability over one label is always 100 %, so this shows the cosine similarity "
        f"between the image and '{label}' instead: {cosine:.3f}; below, whether it reaches this model's threshold "
        f"for it. Add labels to choose between them."
    )
    return {label: cosine}, pd.DataFrame({"label": [label], "probability": [max(cosine, 0.0)]}), note


def build(state: AppState) -> None:
    @shown
    def classify_image(image: Image.Image | None, labels: str, templates: str | None, top_k: float):
        return classify(state, image, labels, templates, checked_int(top_k, "top k", 1, state.limits.max_labels))

    with gr.Row():
        with gr.Column() as examples_column:
            image = image_input(state.limits.max_pixels, label="Image", elem_id="classify-image")
            labels = gr.Textbox(
                label="Labels (comma or newline separated)",
                value=example_labels(state),
                lines=3,
                max_lines=12,
                elem_id="classify-labels",
            )
            with gr.Row():
                templates = gr.Dropdown(
                    choices=template_sets.available(),
                    value="generic",
                    allow_custom_value=True,
                    label="Prompt templates (a set, or your own with {c})",
                )
                k = gr.Slider(1, 20, value=5, step=1, label="Top k")
            button = gr.Button("Classify", variant="primary", elem_id="classify-button")
            tries = image_examples(state)
        with gr.Column():
            scores = gr.Label(label="Top labels", elem_id="classify-scores")
            chart = gr.BarPlot(x="label", y="probability", y_lim=[0, 1], sort="-y", label="Probabilities", height=240)
            notes = gr.Markdown(elem_id="classify-notes")
            why = picture("Why it matched (click a label)", elem_id="classify-why")
            why_info = gr.Markdown(elem_id="classify-why-info")

    if tries:
        with examples_column:
            gr.Examples(
                [[path, ", ".join(ex.labels), "generic", 5] for path, ex in tries],
                [image, labels, templates, k],
                [scores, chart, notes],
                fn=classify_image,
                run_on_click=True,
                label="Try one: a click classifies it (images and labels the demo model knows, from its card)",
                visible_columns=[0, 1],
                elem_id="classify-examples",
                api_visibility="private",
            )

    @shown
    def explain_label(image: Image.Image | None, evt: gr.SelectData):
        image = require_image(image)
        label = str(evt.value)
        encoders = state.active.encoders
        found = explain.explain(encoders, image, label, absent_threshold(encoders))
        return state.files.image(found.picture), found.describe(label)

    gr.on(
        [button.click, labels.submit],
        classify_image,
        [image, labels, templates, k],
        [scores, chart, notes],
        api_name="classify",
    )
    scores.select(explain_label, [image], [why, why_info], api_visibility="private")
    # A new image: the old answers (and a click on an old label, which would explain the new image) go. On a
    # person's upload or clear only: an example's image comes with its own answer, which a clear could overwrite.
    gr.on([image.upload, image.clear], lambda: (None, None, "", None, ""), None, [scores, chart, notes, why, why_info],
          api_visibility="private", show_progress="hidden")  # fmt: skip
