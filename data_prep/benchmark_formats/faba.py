"""FABA-Bench (Li et al., "Facial Affective Behavior Analysis with Instruction Tuning", ECCV 2024):
the evaluation split of FABA-Instruct, emotion and action units, as its authors release it.

Layout (github.com/JackYFL/EmoLA, README "Downloading"; ROOT is the folder holding
FABAInstruct/, that folder itself, or its eval/ folder):

    FABAInstruct/eval/eval_emotion_anno.json   403 faces
    FABAInstruct/eval/eval_au_anno.json        325 faces
    FABAInstruct/eval/images/...               the faces (from AffectNet)
    FABAInstruct/eval/landmarks/...            landmark features (not read)

Each annotation file is a JSON list of {"source", "id", "image": "FABAInstruct/eval/images/
....jpg", "label", "gpt4" (the reference description), "landmark"}, read the way the authors'
emollava/eval/eval_FABA.py reads it:

- emotion: `label` is a class index 0..6 or a class name, in the order of that script's
  `emotions2num`: Happiness, Sadness, Surprise, Anger, Neutral, Disgust, Fear (names are
  matched case-insensitively; "happy", "sad", ... are accepted too);
- au: `label` lists the active AUs, "1, 2, 4" (that script's AUint2Labels; "AU1" and lists are
  accepted too). A face with an empty list has no active AU.

Image paths are relative to the folder holding FABAInstruct/ (the script's --data-dir); they are
also looked up relative to ROOT and to eval/. A missing image is rejected (image_not_found);
an entry without an image path, with an unreadable label or an unknown class is rejected too.

Splits: `emotion` (OUT/emotion/, the 7 classes in the order above; benchmark faba-emotion,
zero_shot) and `au` (OUT/au/; benchmark faba-au, au_detection). AU records carry every AU of
FABA's 20-AU vocabulary (eval_FABA.py's AUIndicesMap) as intensity 1.0 (active) or 0.0, plus
any other AU the label names; faba-au scores the 12 AUs that script selects. Record id: the
entry's `id` (else the image path without its extension). No subject groups.
"""

from __future__ import annotations

import json
import os
import re

from data_prep.benchmark_formats import common
from emocap_jax.data import class_orders, json_keys
from emocap_jax.evaluate import prompts

NAME = "faba-bench"
ANNOTATION_FILES = {"emotion": "eval_emotion_anno.json", "au": "eval_au_anno.json"}
EVAL_DIR = os.path.join("FABAInstruct", "eval")
# eval_FABA.py's emotions2num order; its AUIndicesMap for FABA (the annotation vocabulary) and
# `select_AUs` (scored). The evaluation registry reads the same table.
EMOTION_CLASSES = class_orders.FABA_EMOTIONS
AU_VOCABULARY = class_orders.FABA_AU_VOCABULARY
SCORED_AUS = class_orders.FABA_SCORED_AUS
_AU_TOKEN = re.compile(r"^(?:AU)?0*(\d+)$", re.IGNORECASE)


def _eval_dir(root: str, split: str) -> str:
    name = ANNOTATION_FILES[split]
    for base in (os.path.join(root, EVAL_DIR), os.path.join(root, "eval"), root):
        if os.path.isfile(os.path.join(base, name)):
            return base
    raise common.LayoutError(f"{NAME}: expected {EVAL_DIR}/{name} (or eval/{name}, or {name}) "
                             f"under {root}")


def _image_path(image: str, eval_dir: str, root: str) -> str:
    """The first existing file among the places `image` may be relative to; else the first."""
    data_dir = os.path.dirname(os.path.dirname(os.path.abspath(eval_dir)))
    prefix = EVAL_DIR.replace(os.sep, "/") + "/"
    candidates = [os.path.join(data_dir, image), os.path.join(root, image),
                  os.path.join(eval_dir, image)]
    if image.startswith(prefix):
        candidates.append(os.path.join(eval_dir, image[len(prefix):]))
    return common.first_existing(candidates) or candidates[0]


def _emotion(label) -> tuple[int, str] | str:
    """(class index, class name) of an emotion label, or why it is unusable."""
    if isinstance(label, bool):
        return f"{common.BAD_LABEL}: label {label!r} is neither a class index nor a class name"
    if isinstance(label, int) or (isinstance(label, str) and label.strip().isdigit()):
        index = int(label)
        if not 0 <= index < len(EMOTION_CLASSES):
            return f"{common.LABEL_OUT_OF_RANGE}: label {index} (expected 0..6)"
        return index, EMOTION_CLASSES[index]
    if isinstance(label, str) and label.strip():
        name = prompts.canonical(label)
        if name in EMOTION_CLASSES:
            return EMOTION_CLASSES.index(name), name
        return f"{common.UNKNOWN_CLASS}: label {label!r} is none of {list(EMOTION_CLASSES)}"
    return f"{common.BAD_LABEL}: label {label!r} is neither a class index nor a class name"


def _action_units(label) -> tuple[tuple[str, float], ...] | str:
    """(("AU1", 1.0), ..., ("AU43", 0.0)) for the vocabulary plus any other AU named, or why
    the label is unusable."""
    if isinstance(label, list):
        tokens = [str(t).strip() for t in label]
    elif isinstance(label, (str, int)) and not isinstance(label, bool):
        tokens = [t for t in re.split(r"[,;\s]+", str(label).strip()) if t]
    else:
        return f"{common.BAD_LABEL}: label {label!r} is not a list of action units"
    active = []
    for token in tokens:
        match = _AU_TOKEN.match(token)
        if match is None:
            return f"{common.BAD_LABEL}: {token!r} in label {label!r} is not an action unit"
        active.append(int(match.group(1)))
    codes = list(AU_VOCABULARY) + sorted(set(active) - set(AU_VOCABULARY))
    return tuple((f"AU{c}", 1.0 if c in active else 0.0) for c in codes)


def _list_split(root: str, split: str, fold: int | None,
                options: common.ReaderOptions) -> common.SplitListing:
    del fold, options
    eval_dir = _eval_dir(root, split)
    path = os.path.join(eval_dir, ANNOTATION_FILES[split])
    try:
        annotations = json_keys.loads(common.read_text(path, NAME))
    except json.JSONDecodeError as e:
        raise common.LayoutError(f"{NAME}: {path} is not JSON ({e.msg} at line {e.lineno})"
                                 ) from None
    if not isinstance(annotations, list):
        raise common.LayoutError(f"{NAME}: {path} holds a {type(annotations).__name__}, "
                                 "expected a list of annotations")
    name = ANNOTATION_FILES[split]
    classes = list(EMOTION_CLASSES) if split == "emotion" else []
    items: list[common.Entry | common.Rejection] = []
    for i, entry in enumerate(annotations):
        where = f"{name}[{i}]"
        if not isinstance(entry, dict):
            items.append(common.reject(common.MALFORMED_ENTRY, f"{where} is "
                                       f"{type(entry).__name__}, not an object", id=where))
            continue
        repeated = json_keys.repeated_key(entry)
        if repeated:
            items.append(common.reject(common.DUPLICATE_KEY, f"{where}: {repeated}", id=where))
            continue
        image = entry.get("image")
        if not isinstance(image, str) or not image.strip():
            items.append(common.reject(common.MALFORMED_ENTRY, f"{where} has no 'image' path",
                                       id=str(entry.get("id") or where)))
            continue
        image = image.strip()
        record_id = entry.get("id")
        if not isinstance(record_id, str) or not record_id.strip():
            record_id = os.path.splitext(image)[0]
        record_id = record_id.strip()
        if "label" not in entry:
            items.append(common.reject(common.MALFORMED_ENTRY, f"{where} has no 'label'",
                                       id=record_id))
            continue
        source = _image_path(image, eval_dir, root)
        if split == "emotion":
            parsed = _emotion(entry["label"])
            if isinstance(parsed, str):
                code, detail = parsed.split(": ", 1)
                items.append(common.reject(code, f"{where}: {detail}", id=record_id))
                continue
            label_id, label = parsed
            items.append(common.Entry(id=record_id, label=label, label_id=label_id,
                                      source=source))
        else:
            aus = _action_units(entry["label"])
            if isinstance(aus, str):
                code, detail = aus.split(": ", 1)
                items.append(common.reject(code, f"{where}: {detail}", id=record_id))
                continue
            items.append(common.Entry(id=record_id, label="", label_id=-1, source=source,
                                      aus=aus))
    return common.SplitListing(classes=classes, items=items,
                               info={"annotations": path, "task": split})


# This module's readers, by their layout's name in emocap_jax.evaluate.registry.LAYOUTS.
READERS: dict[str, common.Reader] = {NAME: _list_split}
