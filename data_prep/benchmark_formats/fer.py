"""FER2013 (Kaggle ICML 2013 challenge) and FERPlus (Microsoft's re-labelling of it).

fer2013 — ROOT holds `fer2013.csv` (or `fer2013/fer2013.csv`) with columns emotion, pixels,
Usage (header required; column order free). `pixels` is 48*48 space-separated grayscale values.
Classes (emotion 0..6): angry, disgust, fear, happy, sad, surprise, neutral. Splits by Usage:
train = Training, val = PublicTest, test = PrivateTest (a row with another Usage, or too few
columns to have one, is rejected once, with the first split converted). Record id: fer<row:07d>, the 0-based
data row (blank lines are no rows), which is also the name FERPlus gives the image.

ferplus — ROOT holds `fer2013new.csv` (columns Usage, Image name, neutral, happiness, surprise,
sadness, anger, disgust, fear, contempt, unknown, NF: ten vote counts) and the original
`fer2013.csv`, row-aligned with it (same number of rows; pixels come from fer2013.csv).
Classes: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt. The label is
the FERPlus reference "majority" rule (microsoft/FERPlus, `_process_data`): votes of 1 are
dropped as outliers, then the top class must hold more than half of the remaining votes. Rows
with no such majority are rejected as no_majority; rows whose majority is unknown or NF, and
rows FERPlus left without an image name, are rejected as excluded_class. Splits by the Usage
of fer2013new.csv, as for fer2013. Record id: the image name without .png.

fer2013-folders — the image-folder repackaging: ROOT/train/<class>/*.png and
ROOT/test/<class>/*.png with class folders angry disgust fear happy neutral sad surprise
(any case); class order as fer2013. Record id: <split>/<class>/<file stem>.
"""

from __future__ import annotations

import math
import os

from data_prep.benchmark_formats import common
from emocap_jax.data import class_orders

FER2013_CLASSES = class_orders.FER2013
FERPLUS_CLASSES = class_orders.FERPLUS
FERPLUS_VOTE_COLUMNS = FERPLUS_CLASSES + ("unknown", "NF")
USAGE_OF_SPLIT = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
_SPLIT_OF_USAGE = {usage: split for split, usage in USAGE_OF_SPLIT.items()}


def _fer2013_csv(root: str, benchmark: str) -> str:
    path = common.first_existing([os.path.join(root, "fer2013.csv"),
                                  os.path.join(root, "fer2013", "fer2013.csv")])
    if path is None:
        raise common.LayoutError(f"{benchmark}: expected fer2013.csv (or fer2013/fer2013.csv) "
                                 f"under {root}")
    return path


def _fer2013_rows(path: str, benchmark: str) -> list[tuple[int, dict[str, str], str]]:
    """(1-based line number, row with lower-cased keys, "" or why the row is malformed) of every
    data row. Blank lines are not rows: they do not count towards the fer<row> ids (FERPlus's
    image names) nor the row alignment with fer2013new.csv."""
    rows = common.csv_rows(path, benchmark)
    header = [name.strip().lower() for name in next(rows, (0, []))[1]]
    missing = [c for c in ("emotion", "pixels", "usage") if c not in header]
    if missing:
        raise common.LayoutError(f"{benchmark}: {path} lacks columns {missing} "
                                 f"(header: {header})")
    return [(line_no, dict(zip(header, row)),
             f"line {line_no} of {path} has {len(row)} columns, expected {len(header)}"
             if len(row) < len(header) else "")
            for line_no, row in rows if not common.is_blank_row(row)]


def _own_rejection(rejection: common.Rejection, usage: str, split: str
                   ) -> common.Rejection | None:
    """The rejection as the split with this Usage lists it: itself in that split, nothing in the
    others, and once in all (splitless) when the Usage is none of the known ones."""
    if usage not in _SPLIT_OF_USAGE:
        return common.splitless(rejection)
    return rejection if _SPLIT_OF_USAGE[usage] == split else None


def _fer2013_split(root, split, fold, options) -> common.SplitListing:
    del fold, options
    path = _fer2013_csv(root, "fer2013")
    items: list[common.Entry | common.Rejection] = []
    for row_index, (line_no, row, problem) in enumerate(_fer2013_rows(path, "fer2013")):
        record_id = f"fer{row_index:07d}"
        usage = row.get("usage", "").strip()
        rejection = None
        if problem:
            rejection = common.reject(common.MALFORMED_LINE, problem, id=record_id, line=line_no)
        elif usage not in _SPLIT_OF_USAGE:
            rejection = common.reject(common.MALFORMED_LINE, f"Usage {usage!r} on line "
                                      f"{line_no} of {path} is none of "
                                      f"{sorted(_SPLIT_OF_USAGE)}", id=record_id, line=line_no)
        if rejection is not None:
            rejection = _own_rejection(rejection, usage, split)
            if rejection is not None:
                items.append(rejection)
            continue
        if _SPLIT_OF_USAGE[usage] != split:
            continue
        raw = row.get("emotion", "").strip()
        if not raw.lstrip("-").isdigit():
            items.append(common.reject(common.BAD_LABEL, f"emotion {raw!r} on line {line_no} "
                                       "is not an integer", id=record_id, line=line_no))
            continue
        emotion = int(raw)
        if not 0 <= emotion < len(FER2013_CLASSES):
            items.append(common.reject(common.LABEL_OUT_OF_RANGE, f"emotion {emotion} on line "
                                       f"{line_no} (expected 0..{len(FER2013_CLASSES) - 1})",
                                       id=record_id, line=line_no))
            continue
        items.append(common.Entry(id=record_id, label=FER2013_CLASSES[emotion],
                                  label_id=emotion, source=f"{path}:{line_no}",
                                  kind=common.PIXELS, line=line_no, pixels=row.get("pixels")))
    return common.SplitListing(classes=list(FER2013_CLASSES), items=items)


def ferplus_majority(votes: list[float]) -> int | None:
    """Index into FERPLUS_VOTE_COLUMNS of the majority class, or None without a majority.

    The FERPlus reference rule: single votes are outliers and dropped; the top count must then
    exceed half of the remaining votes.
    """
    kept = [v if v > 1.0 else 0.0 for v in votes]
    top = max(kept)
    if top > 0.5 * sum(kept):
        return kept.index(top)
    return None


def _ferplus_split(root, split, fold, options) -> common.SplitListing:
    del fold, options
    new_path = common.require_file(os.path.join(root, "fer2013new.csv"), "ferplus",
                                   "fer2013new.csv", root)
    pixel_rows = _fer2013_rows(_fer2013_csv(root, "ferplus"), "ferplus")
    rows = common.csv_rows(new_path, "ferplus")
    next(rows, None)
    label_rows = [(line_no, row) for line_no, row in rows if not common.is_blank_row(row)]
    if len(label_rows) != len(pixel_rows):
        raise common.LayoutError(
            f"ferplus: {new_path} has {len(label_rows)} data rows but fer2013.csv has "
            f"{len(pixel_rows)}; the two files must be row-aligned")
    items: list[common.Entry | common.Rejection] = []
    for row_index, ((line_no, row), (_, pixel_row, _)) in enumerate(zip(label_rows, pixel_rows)):
        fallback_id = f"fer{row_index:07d}"
        usage = row[0].strip() if row else ""
        rejection = None
        if len(row) < 2 + len(FERPLUS_VOTE_COLUMNS):
            rejection = common.reject(common.MALFORMED_LINE, f"line {line_no} of {new_path} "
                                      f"has {len(row)} columns, expected "
                                      f"{2 + len(FERPLUS_VOTE_COLUMNS)}", id=fallback_id,
                                      line=line_no)
        elif usage not in _SPLIT_OF_USAGE:
            rejection = common.reject(common.MALFORMED_LINE, f"Usage {usage!r} on line "
                                      f"{line_no} of {new_path}", line=line_no,
                                      id=os.path.splitext(row[1].strip())[0] or fallback_id)
        if rejection is not None:
            rejection = _own_rejection(rejection, usage, split)
            if rejection is not None:
                items.append(rejection)
            continue
        if _SPLIT_OF_USAGE[usage] != split:
            continue
        image_name = row[1].strip()
        record_id = os.path.splitext(image_name)[0] or fallback_id
        if not image_name:
            items.append(common.reject(common.EXCLUDED_CLASS, f"line {line_no} of {new_path} "
                                       "has no image name (FERPlus dropped this image)",
                                       id=record_id, line=line_no))
            continue
        try:
            votes = [float(v) for v in row[2:2 + len(FERPLUS_VOTE_COLUMNS)]]
        except ValueError:
            items.append(common.reject(common.BAD_LABEL, f"vote counts on line {line_no} of "
                                       f"{new_path} are not numbers", id=record_id,
                                       line=line_no))
            continue
        if not all(math.isfinite(v) for v in votes):
            items.append(common.reject(common.BAD_LABEL, f"vote counts {votes} on line "
                                       f"{line_no} of {new_path} are not all finite",
                                       id=record_id, line=line_no))
            continue
        winner = ferplus_majority(votes)
        if winner is None:
            items.append(common.reject(common.NO_MAJORITY, f"votes {votes} on line {line_no} "
                                       "have no majority after dropping single votes",
                                       id=record_id, line=line_no))
            continue
        if winner >= len(FERPLUS_CLASSES):
            items.append(common.reject(common.EXCLUDED_CLASS, f"majority vote on line {line_no}"
                                       f" is {FERPLUS_VOTE_COLUMNS[winner]}", id=record_id,
                                       line=line_no))
            continue
        items.append(common.Entry(id=record_id, label=FERPLUS_CLASSES[winner], label_id=winner,
                                  source=f"{new_path}:{line_no}", kind=common.PIXELS,
                                  line=line_no, pixels=pixel_row.get("pixels")))
    return common.SplitListing(classes=list(FERPLUS_CLASSES), items=items)


def _fer_folders_split(root, split, fold, options) -> common.SplitListing:
    del fold, options
    split_dir = common.require_dir(os.path.join(root, split), "fer2013-folders",
                                   f"{split}/<class>/*.png", root)
    items = common.scan_class_folders(
        split_dir, root, FER2013_CLASSES, common.case_insensitive_lookup(FER2013_CLASSES))
    return common.SplitListing(classes=list(FER2013_CLASSES), items=items)


# This module's readers, by their layout's name in emocap_jax.evaluate.registry.LAYOUTS.
READERS: dict[str, common.Reader] = {
    "fer2013": _fer2013_split, "ferplus": _ferplus_split, "fer2013-folders": _fer_folders_split}
