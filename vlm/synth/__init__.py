"""The seeded synthetic "shapes" world: images, captions, per-object masks, referring phrases and class labels.

It is the project's offline demo data, the training-test fixture, and the referring-segmentation and zero-shot
fixture. A scene holds 1-4 non-overlapping coloured shapes on a plain, gradient or noisy background:

    generate("runs/shapes", scenes=6000, seed=0)       # the dataset on disk (layout below)
    render_scene(np.random.default_rng(0))             # one scene in memory: (image, masks, spec)
    single_object_scene("star", "red", seed=1)         # one red star, for zero-shot checks

Scene i is drawn from its own generator, `SeedSequence(seed, spawn_key=(i,))`, so it does not depend on how many
scenes are generated, and the same (scenes, seed, image_size) gives byte-identical files.

Layout written by `generate` (paths in the CSVs are relative to the dataset folder):
    images/000000.png       RGB, image_size x image_size
    masks/000000_0.png      one per object: single channel, 0/255, the object's pixels
    pairs.csv               path,caption                      (several captions per scene)
    phrases.csv             path,mask_path,phrase,shape,colour,size,position   (one row per object)
    labels.csv              path,label,label_id               (single-object scenes; label "red circle")
    scenes.jsonl            the full spec of each scene
    README.md               what the set is, how it was made, the vocabulary and the columns

Positions are the cells of a 3 x 3 grid over the canvas, named "top left", "top", "top right", "left", "centre",
"right", "bottom left", "bottom", "bottom right" (by the object's centre). In a referring phrase "on the left" means
any cell of the left column, "at the top" any cell of the top row, "in the top left" that one cell, and "in the
centre" the centre cell.

Modules: `world` (vocabulary, geometry, specs), `language` (referring phrases, captions), `scenes` (sampling and
rendering), `dataset` (`generate`: the files on disk). Their public names are importable from `vlm.synth`.
"""

from vlm.synth.dataset import PARALLEL_MIN_SCENES, PHRASE_ATTRIBUTES, README_TITLE, SynthSummary, generate
from vlm.synth.language import CAPTIONS_PER_SCENE, TOKEN_BUDGET, approx_tokens, captions, referring_phrases
from vlm.synth.scenes import (
    object_mask,
    position_word,
    render_scene,
    sample_scene,
    scene_rng,
    single_object_scene,
)
from vlm.synth.world import (
    COLOUR_RGB,
    COLOURS,
    LABELS,
    POSITION_PHRASE,
    POSITIONS,
    SHAPES,
    SIZES,
    Background,
    ObjectSpec,
    RenderedScene,
    SceneSpec,
)

__all__ = [
    "CAPTIONS_PER_SCENE",
    "COLOURS",
    "COLOUR_RGB",
    "LABELS",
    "PARALLEL_MIN_SCENES",
    "PHRASE_ATTRIBUTES",
    "POSITIONS",
    "POSITION_PHRASE",
    "README_TITLE",
    "SHAPES",
    "SIZES",
    "TOKEN_BUDGET",
    "Background",
    "ObjectSpec",
    "RenderedScene",
    "SceneSpec",
    "SynthSummary",
    "approx_tokens",
    "captions",
    "generate",
    "object_mask",
    "position_word",
    "referring_phrases",
    "render_scene",
    "sample_scene",
    "scene_rng",
    "single_object_scene",
]
