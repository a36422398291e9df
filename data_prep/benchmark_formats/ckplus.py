"""CK+ (extended Cohn-Kanade) original sequences, last-frames protocol; and JAFFE.

ckplus — ROOT holds the owners' two folders:

    cohn-kanade-images/S005/001/S005_001_00000001.png ... S005_001_00000011.png
    Emotion/S005/001/S005_001_00000011_emotion.txt      one float, e.g. "3.0000000e+00"

CK+ codes: 0 neutral, 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise.
Only the 327 sequences with an Emotion file are labelled; for each, the last 3 frames (by frame
number) get the sequence's label. Sequences without an Emotion file are not benchmark entries
(their number is recorded in metadata.json as unlabelled_sequences). Classes: anger contempt
disgust fear happy sadness surprise (CK+ order, the same as CK+48's); with `--with-neutral`
the first frame of each labelled sequence longer than 3 frames is added as "neutral" and
neutral becomes class 0, so label_id equals the CK+ code. Codes outside 1..7 are rejected.
group = subject (S005); record id = frame file stem.

jaffe — ROOT (searched recursively) holds the 213 `*.tiff` files named
<identity>.<code><index>.<image number>.tiff, e.g. KA.AN1.39.tiff; codes AN DI FE HA NE SA SU.
JAFFE defines no numeric order, so classes follow the codes alphabetically: anger disgust fear
happiness neutral sadness surprise. group = identity (KA); record id = file stem. Files not
matching the pattern or with an unknown code are rejected.
"""

from __future__ import annotations

import os
import re

from data_prep.benchmark_formats import common
from emocap_jax.data import class_orders

CK_CODES = class_orders.CK_CODES
CK_EMOTIONS = class_orders.CK_EMOTIONS
LAST_FRAMES = 3
JAFFE_CODES = class_orders.JAFFE_CODES
JAFFE_CLASSES = class_orders.JAFFE
_JAFFE_NAME = re.compile(r"^([A-Za-z]+)\.([A-Za-z]{2})(\d+)\.(\d+)$")


def _sequence_frames(seq_dir: str) -> list[str]:
    return sorted((f for f in os.listdir(seq_dir)
                   if os.path.splitext(f)[1].lower() in common.IMAGE_EXTENSIONS
                   and not f.startswith(".")), key=common.natural_key)


def _ckplus_split(root, split, fold, options: common.ReaderOptions) -> common.SplitListing:
    del split, fold
    images_root = common.require_dir(os.path.join(root, "cohn-kanade-images"), "ckplus",
                                     "cohn-kanade-images/S<subject>/<seq>/*.png", root)
    emotion_root = common.require_dir(os.path.join(root, "Emotion"), "ckplus",
                                      "Emotion/S<subject>/<seq>/*_emotion.txt", root)
    classes = list(CK_CODES if options.with_neutral else CK_EMOTIONS)
    offset = 0 if options.with_neutral else 1
    items: list[common.Entry | common.Rejection] = []
    labelled = set()
    for subject in common.subdirectories(emotion_root):
        for sequence in common.subdirectories(os.path.join(emotion_root, subject)):
            seq_key = f"{subject}_{sequence}"
            label_files = sorted(f for f in os.listdir(os.path.join(emotion_root, subject,
                                                                    sequence))
                                 if f.endswith("_emotion.txt"))
            if not label_files:
                continue
            labelled.add((subject, sequence))
            label_path = os.path.join(emotion_root, subject, sequence, label_files[0])
            for extra in label_files[1:]:
                items.append(common.reject(common.DUPLICATE_ID, f"{extra} is a second label "
                                           f"file for sequence {seq_key} (using "
                                           f"{label_files[0]})", id=seq_key))
            try:
                with open(label_path, encoding="utf-8") as f:
                    code = common.whole_number(f.read().split()[0])
            except (OSError, ValueError, IndexError) as e:
                items.append(common.reject(common.BAD_LABEL, f"{label_path} does not hold an "
                                           f"emotion code ({e})", id=seq_key))
                continue
            if not 1 <= code <= 7:
                items.append(common.reject(common.LABEL_OUT_OF_RANGE, f"{label_path} holds "
                                           f"{code}, expected an emotion code 1..7",
                                           id=seq_key))
                continue
            seq_dir = os.path.join(images_root, subject, sequence)
            frames = _sequence_frames(seq_dir) if os.path.isdir(seq_dir) else []
            if not frames:
                items.append(common.reject(common.IMAGE_NOT_FOUND, f"{label_path} labels "
                                           f"sequence {seq_key} but {seq_dir} holds no "
                                           "frames", id=seq_key))
                continue
            if options.with_neutral and len(frames) > LAST_FRAMES:
                first = frames[0]
                items.append(common.Entry(
                    id=os.path.splitext(first)[0], label="neutral", label_id=0,
                    source=os.path.join(seq_dir, first), group=subject))
            for frame in frames[-LAST_FRAMES:]:
                items.append(common.Entry(
                    id=os.path.splitext(frame)[0], label=CK_CODES[code],
                    label_id=code - offset, source=os.path.join(seq_dir, frame), group=subject))
    all_sequences = {(s, q) for s in common.subdirectories(images_root)
                     for q in common.subdirectories(os.path.join(images_root, s))}
    return common.SplitListing(classes=classes, items=items, info={
        "labelled_sequences": len(labelled),
        "unlabelled_sequences": len(all_sequences - labelled),
        "frames_per_sequence": LAST_FRAMES, "with_neutral": options.with_neutral})


def _jaffe_split(root, split, fold, options) -> common.SplitListing:
    del split, fold, options
    if not os.path.isdir(root):
        raise common.LayoutError(f"jaffe: expected a directory of *.tiff files at {root}")
    files = [p for p in common.files_under(root)
             if os.path.splitext(p)[1].lower() in (".tiff", ".tif")]
    if not files:
        raise common.LayoutError(f"jaffe: expected *.tiff files named like KA.AN1.39.tiff "
                                 f"under {root}, found none")
    class_ids = {name: i for i, name in enumerate(JAFFE_CLASSES)}
    items: list[common.Entry | common.Rejection] = []
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        match = _JAFFE_NAME.match(stem)
        if match is None:
            items.append(common.reject(common.BAD_FILE_NAME, f"{path} is not named "
                                       "<identity>.<code><index>.<number>.tiff", id=stem))
            continue
        identity, code = match.group(1), match.group(2).upper()
        if code not in JAFFE_CODES:
            items.append(common.reject(common.UNKNOWN_CLASS, f"expression code {code} of "
                                       f"{path} is none of {sorted(JAFFE_CODES)}", id=stem))
            continue
        label = JAFFE_CODES[code]
        items.append(common.Entry(id=stem, label=label, label_id=class_ids[label], source=path,
                                  group=identity))
    return common.SplitListing(classes=list(JAFFE_CLASSES), items=items)


# This module's readers, by their layout's name in emocap_jax.evaluate.registry.LAYOUTS.
READERS: dict[str, common.Reader] = {"ckplus": _ckplus_split, "jaffe": _jaffe_split}
