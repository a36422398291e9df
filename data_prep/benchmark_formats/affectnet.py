"""AffectNet, 7 and 8 expression classes, from either common distribution.

Folder form (the widely shared cropped release), ROOT holding:

    train_set/images/<n>.jpg        train_set/annotations/<n>_exp.npy  (+ _val/_aro/_lnd, unused)
    val_set/images/<n>.jpg          val_set/annotations/<n>_exp.npy

CSV form (the owners' original release), ROOT holding:

    training.csv, validation.csv    (also accepted under Manually_Annotated_file_lists/)
        columns subDirectory_filePath, face_x, face_y, face_width, face_height,
        facial_landmarks, expression, valence, arousal (a header row is optional)
    Manually_Annotated_Images/<subDirectory_filePath>   (or Manually_Annotated/Manually_
        Annotated_Images/, or ROOT itself); the image is stored as is, not cropped to the box

Splits: train (train_set / training.csv) and val (val_set / validation.csv; AffectNet's test
set is not public, papers report on val). Expression ids: 0 neutral, 1 happy, 2 sad,
3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt; label_id equals the id. affectnet-7 drops
contempt (rejected as excluded_class). Ids 8 (none), 9 (uncertain), 10 (non-face) and any other
value are rejected as label_out_of_range. In the folder form an image without its _exp.npy and
an annotation without its image are both rejected; of several images with one stem (1.jpg,
1.png) the first by name is used and the others are rejected as duplicate_id.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from data_prep.benchmark_formats import common
from emocap_jax.data import class_orders

EXPRESSIONS = class_orders.AFFECTNET_EXPRESSIONS
NON_EMOTION_IDS = {8: "none", 9: "uncertain", 10: "non-face"}
_FOLDER_SETS = {"train": "train_set", "val": "val_set"}
_CSV_FILES = {"train": "training.csv", "val": "validation.csv"}
_CSV_DIRS = ("", "Manually_Annotated_file_lists")
_IMAGE_DIRS = ("Manually_Annotated_Images",
               os.path.join("Manually_Annotated", "Manually_Annotated_Images"))


def _classify(expression: int, classes: tuple[str, ...], benchmark: str, record_id: str,
              where: str, line: int | None) -> common.Rejection | None:
    if 0 <= expression < len(classes):
        return None
    if expression < len(EXPRESSIONS):
        return common.reject(common.EXCLUDED_CLASS, f"expression {expression} "
                             f"({EXPRESSIONS[expression]}) in {where} is not one of "
                             f"{benchmark}'s classes", id=record_id, line=line)
    meaning = NON_EMOTION_IDS.get(expression)
    return common.reject(common.LABEL_OUT_OF_RANGE, f"expression {expression}"
                         f"{f' ({meaning})' if meaning else ''} in {where} is not an emotion "
                         f"class (expected 0..{len(classes) - 1})", id=record_id, line=line)


def _read_expression(path: str) -> int:
    value = np.load(path, allow_pickle=False)
    # The shared release stores the id as a 0-d string array ('1'); accept whole numbers too
    # (3, 3.0), but not 3.5.
    return common.whole_number(np.asarray(value).reshape(-1)[0].item())


def _folder_split(root: str, split: str, classes: tuple[str, ...], benchmark: str
                  ) -> list[common.Entry | common.Rejection]:
    set_dir = os.path.join(root, _FOLDER_SETS[split])
    images_dir = common.require_dir(os.path.join(set_dir, "images"), benchmark,
                                    f"{_FOLDER_SETS[split]}/images/", root)
    notes_dir = common.require_dir(os.path.join(set_dir, "annotations"), benchmark,
                                   f"{_FOLDER_SETS[split]}/annotations/", root)
    # One image per stem: when several share it (1.jpg, 1.png) the first in natural order of
    # the file name is used and the others are rejected, whatever order os.listdir gives.
    images: dict[str, str] = {}
    extra_images: dict[str, list[str]] = {}
    for f in sorted(os.listdir(images_dir), key=common.natural_key):
        stem, extension = os.path.splitext(f)
        if extension.lower() in common.IMAGE_EXTENSIONS:
            if stem in images:
                extra_images.setdefault(stem, []).append(os.path.join(images_dir, f))
            else:
                images[stem] = os.path.join(images_dir, f)
    notes = {f[:-len("_exp.npy")]: os.path.join(notes_dir, f)
             for f in os.listdir(notes_dir) if f.endswith("_exp.npy")}
    items: list[common.Entry | common.Rejection] = []
    for stem in sorted(images.keys() | notes.keys(), key=common.natural_key):
        record_id = f"{_FOLDER_SETS[split]}/{stem}"
        for extra in extra_images.get(stem, []):
            items.append(common.reject(common.DUPLICATE_ID, f"{extra} has the stem of "
                                       f"{images[stem]}, which is used for {record_id}",
                                       id=record_id))
        if stem not in notes:
            items.append(common.reject(common.MISSING_ANNOTATION, f"{images[stem]} has no "
                                       f"{stem}_exp.npy in {notes_dir}", id=record_id))
            continue
        if stem not in images:
            items.append(common.reject(common.IMAGE_NOT_FOUND, f"{notes[stem]} has no image "
                                       f"{stem}.jpg in {images_dir}", id=record_id))
            continue
        try:
            expression = _read_expression(notes[stem])
        except (OSError, ValueError, IndexError) as e:
            items.append(common.reject(common.BAD_LABEL, f"{notes[stem]} does not hold an "
                                       f"integer expression id ({e})", id=record_id))
            continue
        rejection = _classify(expression, classes, benchmark, record_id, notes[stem], None)
        items.append(rejection or common.Entry(
            id=record_id, label=classes[expression], label_id=expression, source=images[stem]))
    return items


def _csv_split(root: str, split: str, classes: tuple[str, ...], benchmark: str
               ) -> list[common.Entry | common.Rejection]:
    name = _CSV_FILES[split]
    csv_path = common.first_existing(os.path.join(root, d, name) for d in _CSV_DIRS)
    if csv_path is None:
        raise common.LayoutError(f"{benchmark}: expected {name} (or "
                                 f"Manually_Annotated_file_lists/{name}) under {root}")
    image_root = common.first_existing((os.path.join(root, d) for d in _IMAGE_DIRS),
                                       is_dir=True) or root
    items: list[common.Entry | common.Rejection] = []
    path_col, expression_col = 0, 6
    for line_no, row in common.csv_rows(csv_path, benchmark):
        if not row or not any(cell.strip() for cell in row):
            continue
        if line_no == 1 and row[0].strip() == "subDirectory_filePath":
            header = [cell.strip() for cell in row]
            if "expression" not in header:
                raise common.LayoutError(f"{benchmark}: {csv_path} has no 'expression' "
                                         f"column (columns: {header})")
            expression_col = header.index("expression")
            continue
        if len(row) <= max(path_col, expression_col):
            items.append(common.reject(common.MALFORMED_LINE, f"line {line_no} of "
                                       f"{csv_path} has {len(row)} columns", line=line_no))
            continue
        rel_path = row[path_col].strip()
        if not rel_path:
            items.append(common.reject(common.MALFORMED_LINE, f"line {line_no} of "
                                       f"{csv_path} has no image path", line=line_no))
            continue
        record_id = os.path.splitext(rel_path)[0]
        try:
            expression = common.whole_number(row[expression_col])
        except ValueError as e:
            items.append(common.reject(common.BAD_LABEL, f"expression on line {line_no} "
                                       f"of {csv_path}: {e}", id=record_id, line=line_no))
            continue
        where = f"line {line_no} of {name}"
        rejection = _classify(expression, classes, benchmark, record_id, where, line_no)
        items.append(rejection or common.Entry(
            id=record_id, label=classes[expression], label_id=expression,
            source=os.path.join(image_root, rel_path), line=line_no))
    return items


def _list_split(num_classes: int, root: str, split: str, fold: int | None,
                options: common.ReaderOptions) -> common.SplitListing:
    del fold, options
    benchmark = f"affectnet-{num_classes}"
    classes = EXPRESSIONS[:num_classes]
    if os.path.isdir(os.path.join(root, "train_set")) or \
            os.path.isdir(os.path.join(root, "val_set")):
        items, form = _folder_split(root, split, classes, benchmark), "folders"
    elif any(os.path.isfile(os.path.join(root, d, n))
             for d in _CSV_DIRS for n in _CSV_FILES.values()):
        items, form = _csv_split(root, split, classes, benchmark), "csv"
    else:
        raise common.LayoutError(
            f"{benchmark}: expected train_set/images + train_set/annotations (and val_set/...) "
            f"or training.csv / validation.csv under {root}")
    return common.SplitListing(classes=list(classes), items=items, info={"layout_form": form})


# This module's readers, by their layout's name in emocap_jax.evaluate.registry.LAYOUTS.
READERS: dict[str, common.Reader] = {
    f"affectnet-{n}": functools.partial(_list_split, n) for n in (7, 8)}
