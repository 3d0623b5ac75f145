"""Input plumbing shared by every reader of image data on disk, one concern a module.

    images.py      image file extensions, `ImageRef` (a lazily opened image), decoding with its limits, `to_rgb`
    paths.py       `RootedPaths`: the one check that a path named by a data file stays inside its root
    tables.py      CSV/TSV/JSONL text: opening, header rows, choosing a column (`pick_column`)
    hf.py          Hugging Face datasets: loading a save_to_disk folder, local files or a hub name
    webdataset.py  WebDataset shards: brace patterns, listing shards, grouping tar members by sample key
    rows.py        `BadRow` and the one bad-row summary; caption cleaning
    split.py       the one deterministic train/validation split

The readers themselves keep only what is specific to their format: `vlm.data` (image-caption pairs),
`eval.datasets` (labelled images), `vlm.segment.data` (image, phrase, mask) and `indexing.sources` (collection input).
"""
