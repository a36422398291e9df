"""RAF-DB (Real-world Affective Faces), basic and compound subsets, as the owners distribute it.

Layout (ROOT is the folder holding `basic/` and/or `compound/`):

    basic/EmoLabel/list_patition_label.txt     "train_00001.jpg 5" per line (labels 1..7)
    basic/Image/aligned/train_00001_aligned.jpg   100x100 aligned faces (preferred), or
    basic/Image/original/train_00001.jpg          the original photos when aligned/ is absent
    compound/EmoLabel/list_patition_label.txt  "train_0001.jpg 3" per line (labels 1..11)
    compound/Image/aligned/train_0001_aligned.jpg  (or compound/Image/original/)

The split is the file-name prefix (train_ / test_); a line without one is rejected once, with
the first split converted. Label k maps to classes[k - 1]:
basic: surprise, fear, disgust, happiness, sadness, anger, neutral;
compound: happily surprised, happily disgusted, sadly fearful, sadly angry, sadly surprised,
sadly disgusted, fearfully angry, fearfully surprised, angrily surprised, angrily disgusted,
disgustedly surprised. When aligned/ exists every image is taken from it (a missing aligned
file is rejected, never silently replaced by the original photo). No subject groups.
"""

from __future__ import annotations

import functools
import os

from data_prep.benchmark_formats import common
from emocap_jax.data import class_orders

BASIC_CLASSES = class_orders.RAFDB_BASIC
COMPOUND_CLASSES = class_orders.RAFDB_COMPOUND
LABEL_FILE = "EmoLabel/list_patition_label.txt"  # sic: the owners' spelling


def _list_split(subset: str, classes: tuple[str, ...], benchmark: str, root: str, split: str,
                fold: int | None, options: common.ReaderOptions) -> common.SplitListing:
    del fold, options
    label_path = common.require_file(os.path.join(root, subset, LABEL_FILE), benchmark,
                                     f"{subset}/{LABEL_FILE}", root)
    image_root = os.path.join(root, subset, "Image")
    aligned = os.path.isdir(os.path.join(image_root, "aligned"))
    if not aligned:
        common.require_dir(os.path.join(image_root, "original"), benchmark,
                           f"{subset}/Image/aligned/ or {subset}/Image/original/", root)
    where = f"{subset}/{LABEL_FILE}"
    items: list[common.Entry | common.Rejection] = []
    for line_no, text in common.iter_text_lines(label_path):
        if isinstance(text, common.Rejection):
            items.append(common.splitless(text))
            continue
        parts = text.split()
        stem = os.path.splitext(parts[0])[0]
        line_split = next((s for s in ("train", "test") if stem.startswith(f"{s}_")), None)
        if line_split is not None and line_split != split:
            continue
        if len(parts) != 2:
            rejection = common.reject(common.MALFORMED_LINE, f"line {line_no} of {where} is "
                                      f"{text!r}, expected '<image name> <label>'",
                                      line=line_no)
            items.append(rejection if line_split else common.splitless(rejection))
            continue
        name, raw_label = parts
        if line_split is None:
            items.append(common.splitless(common.reject(
                common.MALFORMED_LINE, f"{name} on line {line_no} of {where} starts with "
                "neither train_ nor test_", id=stem, line=line_no)))
            continue
        try:
            label = int(raw_label)
        except ValueError:
            items.append(common.reject(common.BAD_LABEL, f"label {raw_label!r} on line "
                                       f"{line_no} of {where} is not an integer",
                                       id=stem, line=line_no))
            continue
        if not 1 <= label <= len(classes):
            items.append(common.reject(common.LABEL_OUT_OF_RANGE, f"label {label} on line "
                                       f"{line_no} of {where} (expected 1..{len(classes)})",
                                       id=stem, line=line_no))
            continue
        image = (os.path.join(image_root, "aligned", f"{stem}_aligned.jpg") if aligned
                 else os.path.join(image_root, "original", name))
        items.append(common.Entry(id=stem, label=classes[label - 1], label_id=label - 1,
                                  source=image, line=line_no))
    return common.SplitListing(classes=list(classes), items=items,
                               info={"image_variant": "aligned" if aligned else "original"})


# This module's readers, by their layout's name in emocap_jax.evaluate.registry.LAYOUTS.
READERS: dict[str, common.Reader] = {
    "rafdb": functools.partial(_list_split, "basic", BASIC_CLASSES, "rafdb"),
    "rafdb-compound": functools.partial(_list_split, "compound", COMPOUND_CLASSES,
                                        "rafdb-compound"),
}
