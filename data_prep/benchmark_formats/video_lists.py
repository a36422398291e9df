"""In-the-wild video benchmarks with official label lists: DFEW, FERV39k, MAFW (single, compound).

Each clip becomes one record of K uniformly sampled frames (`--frames`). A clip listed in a
label file whose frames/video cannot be found is rejected (video_not_found) naming the paths
tried.

dfew — ROOT holds
    EmoLabel_DataSplit/train(single-labeled)/set_<k>.csv, .../test(single-labeled)/set_<k>.csv
        header video_name,label; label 1..7 = happy sad neutral angry surprise disgust fear
    clips, first found wins: Clip/clip_224x224/<00001>/ (frame folder),
        Clip/clip_224x224_16f/<00001>/, Clip/clip_224x224/<00001>.mp4, Clip/original/<00001>.avi
        (or .mp4); numeric video names are zero-padded to 5 digits.
  5 folds, each with train and test: output OUT/fold<k>/<split>. Record id: the 5-digit name.

ferv39k — ROOT holds
    4_setups/All_scenes/train_All.csv and test_All.csv (also accepted: 0_7_LabelClassSplit/ or
        ROOT itself); lines "<Scene>/<Class>/<clip> <Class>" (a first line of column names such as
        "path label" is skipped; any other first line is data)
    2_ClipsforFaceCrop/<Scene>/<Class>/<clip>/*.jpg    frame folders
  Classes: angry disgust fear happy neutral sad surprise. Splits train and test. Record id: the
  clip path from the list.

mafw — ROOT holds
    Train & Test Set/single/no_caption/set_<k>/train.txt and test.txt, lines "00025.mp4 anger"
    data/clips/00025.mp4 (preferred) or data/frames/00025/ (frame folder)
  Classes (11): anger disgust fear happiness neutral sadness surprise contempt anxiety
  helplessness disappointment. 5 folds x train/test. Record id: clip stem (00025).

mafw-compound — the compound lists Train & Test Set/compound/no_caption/set_<k>/{train,test}.txt,
  lines "00002.mp4 anger_disgust" (single labels also occur). The class set is every label
  found in all compound lists under ROOT, each "_"-separated part being one of the 11 MAFW
  classes; ordered by number of parts, then by the parts' MAFW class indices (so the single
  classes come first in MAFW order). Parts outside the 11 classes are rejected. The
  with_caption lists are not read (their captions are not part of this benchmark).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from data_prep.benchmark_formats import common
from emocap_jax.data import class_orders

DFEW_CLASSES = class_orders.DFEW
FERV39K_CLASSES = class_orders.FERV39K
MAFW_CLASSES = class_orders.MAFW
FOLDS = class_orders.VIDEO_FOLDS
MAFW_LISTS = "Train & Test Set"
_DFEW_LIST_DIRS = {"train": "train(single-labeled)", "test": "test(single-labeled)"}
_FERV_LIST_DIRS = (os.path.join("4_setups", "All_scenes"), "0_7_LabelClassSplit", "")
_LIST_LINE = re.compile(r"^(.*?)[\s,]+(\S+)$")
_HEADER_WORDS = frozenset({"label", "labels", "class", "classes", "emotion", "emotions",
                           "expression", "expressions", "category"})


def _clip_source(candidates: list[tuple[str, str]]) -> tuple[str, str] | None:
    for kind, path in candidates:
        if (kind == common.FRAMES and os.path.isdir(path)) or \
                (kind == common.VIDEO and os.path.isfile(path)):
            return kind, path
    return None


def _clip_entry(record_id: str, label: str, label_id: int, candidates: list[tuple[str, str]],
                line: int) -> common.Entry | common.Rejection:
    found = _clip_source(candidates)
    if found is None:
        tried = ", ".join(path for _, path in candidates)
        return common.reject(common.VIDEO_NOT_FOUND, f"clip {record_id} (line {line}) not "
                             f"found; tried {tried}", id=record_id, line=line)
    kind, path = found
    return common.Entry(id=record_id, label=label, label_id=label_id, source=path, kind=kind,
                        line=line)


def _check_fold(benchmark: str, fold: int | None) -> int:
    if fold not in FOLDS:
        raise ValueError(f"{benchmark}: fold must be one of {list(FOLDS)}, got {fold}")
    return fold


def _dfew_split(root, split, fold, options) -> common.SplitListing:
    del options
    fold = _check_fold("dfew", fold)
    rel = os.path.join("EmoLabel_DataSplit", _DFEW_LIST_DIRS[split], f"set_{fold}.csv")
    list_path = common.require_file(os.path.join(root, rel), "dfew", rel, root)
    clip_root = os.path.join(root, "Clip")
    items: list[common.Entry | common.Rejection] = []
    rows = common.csv_rows(list_path, "dfew")
    header = [c.strip().lower() for c in next(rows, (0, []))[1]]
    if header[:2] != ["video_name", "label"]:
        raise common.LayoutError(f"dfew: {list_path} should start with the header "
                                 f"video_name,label (found {header})")
    for line, row in rows:
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) < 2:
            items.append(common.reject(common.MALFORMED_LINE, f"line {line} of {rel}: "
                                       f"{row}", line=line))
            continue
        name = row[0].strip()
        if not name:
            items.append(common.reject(common.MALFORMED_LINE, f"line {line} of {rel} has no "
                                       "video_name", line=line))
            continue
        record_id = f"{int(name):05d}" if name.isdigit() else name
        try:
            label = common.whole_number(row[1])
        except ValueError as e:
            items.append(common.reject(common.BAD_LABEL, f"label on line {line} of {rel}: "
                                       f"{e}", id=record_id, line=line))
            continue
        if not 1 <= label <= len(DFEW_CLASSES):
            items.append(common.reject(common.LABEL_OUT_OF_RANGE, f"label {label} on line "
                                       f"{line} of {rel} (expected 1..7)", id=record_id,
                                       line=line))
            continue
        items.append(_clip_entry(record_id, DFEW_CLASSES[label - 1], label - 1, [
            (common.FRAMES, os.path.join(clip_root, "clip_224x224", record_id)),
            (common.FRAMES, os.path.join(clip_root, "clip_224x224_16f", record_id)),
            (common.VIDEO, os.path.join(clip_root, "clip_224x224", f"{record_id}.mp4")),
            (common.VIDEO, os.path.join(clip_root, "original", f"{record_id}.avi")),
            (common.VIDEO, os.path.join(clip_root, "original", f"{record_id}.mp4")),
        ], line))
    return common.SplitListing(classes=list(DFEW_CLASSES), items=items)


def _is_header(text: str, lookup: Callable[[str], str | None]) -> bool:
    """Whether the first line of a list names its columns ("path label", "video,emotion_class"):
    no field is a class and the last one names the label column. Any other first line is data
    (a clip with an unknown class is rejected as such, not skipped as a header)."""
    fields = [f for f in re.split(r"[\s,]+", text) if f]
    if not fields or any(lookup(f) for f in fields):
        return False
    return any(part in _HEADER_WORDS for part in re.split(r"[_\-]", fields[-1].lower()))


def _ferv39k_split(root, split, fold, options) -> common.SplitListing:
    del fold, options
    name = f"{split}_All.csv"
    list_path = common.first_existing(os.path.join(root, d, name) for d in _FERV_LIST_DIRS)
    if list_path is None:
        raise common.LayoutError(f"ferv39k: expected 4_setups/All_scenes/{name} (or "
                                 f"0_7_LabelClassSplit/{name}) under {root}")
    frames_root = common.require_dir(os.path.join(root, "2_ClipsforFaceCrop"), "ferv39k",
                                     "2_ClipsforFaceCrop/<Scene>/<Class>/<clip>/", root)
    lookup = common.case_insensitive_lookup(FERV39K_CLASSES)
    items: list[common.Entry | common.Rejection] = []
    for index, (line, text) in enumerate(common.iter_text_lines(list_path)):
        if isinstance(text, common.Rejection):
            items.append(text)
            continue
        if index == 0 and _is_header(text, lookup):
            continue
        match = _LIST_LINE.match(text)
        label = lookup(match.group(2)) if match else None
        if match is None:
            items.append(common.reject(common.MALFORMED_LINE, f"line {line} of {list_path}: "
                                       f"{text!r}", line=line))
            continue
        clip = match.group(1).strip().strip("/")
        if not clip:
            items.append(common.reject(common.MALFORMED_LINE, f"line {line} of {list_path}: "
                                       f"{text!r} has no clip path", line=line))
            continue
        if label is None:
            items.append(common.reject(common.UNKNOWN_CLASS, f"label {match.group(2)!r} on line"
                                       f" {line} of {list_path} is none of "
                                       f"{list(FERV39K_CLASSES)}", id=clip, line=line))
            continue
        items.append(_clip_entry(clip, label, FERV39K_CLASSES.index(label), [
            (common.FRAMES, os.path.join(frames_root, *clip.split("/")))], line))
    return common.SplitListing(classes=list(FERV39K_CLASSES), items=items)


def _mafw_entries(root: str, list_path: str, classes: list[str],
                  label_of: Callable[[str], str | None]) -> list[common.Entry | common.Rejection]:
    class_ids = {name: i for i, name in enumerate(classes)}
    items: list[common.Entry | common.Rejection] = []
    for line, text in common.iter_text_lines(list_path):
        if isinstance(text, common.Rejection):
            items.append(text)
            continue
        parts = text.split()
        if len(parts) < 2:
            items.append(common.reject(common.MALFORMED_LINE, f"line {line} of {list_path}: "
                                       f"{text!r}", line=line))
            continue
        clip, raw_label = parts[0], parts[1]
        stem = os.path.splitext(clip)[0]
        label = label_of(raw_label)
        if label is None:
            items.append(common.reject(common.UNKNOWN_CLASS, f"label {raw_label!r} on line "
                                       f"{line} of {list_path} is not a MAFW class", id=stem,
                                       line=line))
            continue
        clip_file = clip if os.path.splitext(clip)[1] else f"{clip}.mp4"
        items.append(_clip_entry(stem, label, class_ids[label], [
            (common.VIDEO, os.path.join(root, "data", "clips", clip_file)),
            (common.FRAMES, os.path.join(root, "data", "frames", stem)),
        ], line))
    return items


def _mafw_list(root: str, variant: str, fold: int, split: str, benchmark: str) -> str:
    rel = os.path.join(MAFW_LISTS, variant, "no_caption", f"set_{fold}", f"{split}.txt")
    return common.require_file(os.path.join(root, rel), benchmark, rel, root)


def _mafw_split(root, split, fold, options) -> common.SplitListing:
    del options
    fold = _check_fold("mafw", fold)
    list_path = _mafw_list(root, "single", fold, split, "mafw")
    items = _mafw_entries(root, list_path, list(MAFW_CLASSES),
                          common.case_insensitive_lookup(MAFW_CLASSES))
    return common.SplitListing(classes=list(MAFW_CLASSES), items=items)


def _compound_parts(label: str) -> tuple[int, ...] | None:
    parts = label.strip().lower().split("_")
    if not all(p in MAFW_CLASSES for p in parts):
        return None
    return tuple(MAFW_CLASSES.index(p) for p in parts)


def mafw_compound_classes(root: str) -> list[str]:
    """Every valid label in all compound lists under root, in the documented order."""
    lists_dir = os.path.join(root, MAFW_LISTS, "compound", "no_caption")
    labels = set()
    for set_dir in common.subdirectories(lists_dir):
        for split in ("train", "test"):
            path = os.path.join(lists_dir, set_dir, f"{split}.txt")
            if os.path.isfile(path):
                for _, text in common.iter_text_lines(path):
                    parts = text.split() if isinstance(text, str) else []
                    if len(parts) >= 2 and _compound_parts(parts[1]) is not None:
                        labels.add(parts[1].strip().lower())
    return sorted(labels, key=lambda name: (len(name.split("_")), _compound_parts(name)))


def _mafw_compound_split(root, split, fold, options) -> common.SplitListing:
    del options
    fold = _check_fold("mafw-compound", fold)
    list_path = _mafw_list(root, "compound", fold, split, "mafw-compound")
    classes = mafw_compound_classes(root)
    known = set(classes)
    items = _mafw_entries(root, list_path, classes,
                          lambda raw: raw.strip().lower() if raw.strip().lower() in known
                          else None)
    return common.SplitListing(classes=classes, items=items)


# This module's readers, by their layout's name in emocap_jax.evaluate.registry.LAYOUTS.
READERS: dict[str, common.Reader] = {
    "dfew": _dfew_split, "ferv39k": _ferv39k_split, "mafw": _mafw_split,
    "mafw-compound": _mafw_compound_split}
