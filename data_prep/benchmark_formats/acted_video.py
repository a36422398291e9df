"""Acted (lab) video benchmarks: CREMA-D, RAVDESS, eNTERFACE'05. One split, "all"; group = actor.

crema-d — ROOT/VideoFlash/<actor>_<sentence>_<emotion>_<level>.flv, e.g. 1001_DFA_ANG_XX.flv;
  emotion codes ANG DIS FEA HAP NEU SAD -> classes anger disgust fear happy neutral sad (the
  owners' order). group = actor (1001). Record id: file stem.

ravdess — ROOT/Actor_XX/MM-VV-EE-II-SS-RR-AA.mp4 (Actor_XX folders may sit one level deeper, as
  the per-actor zips unpack them). EE 01..08 = neutral calm happy sad angry fearful disgust
  surprised. Modality MM: 01 audio-video and 02 video-only hold the same frames, so each
  recording is kept once, preferring 02; its 01 twin is rejected as duplicate_video. 03
  (audio-only) is rejected. Speech (VV 01) and song (VV 02) are both kept. group = Actor_AA.

enterface05 — ROOT/subject <N>/<emotion>/sentence <M>/*.avi (subject 6 has no sentence
  folders; any depth below the emotion folder is accepted). Emotion folders: anger disgust
  fear happiness sadness surprise. group = "subject <N>". Record id: path below ROOT without
  extension.
"""

from __future__ import annotations

import os
import re

from data_prep.benchmark_formats import common
from emocap_jax.data import class_orders

CREMA_CODES = class_orders.CREMA_CODES
CREMA_CLASSES = class_orders.CREMA
RAVDESS_CLASSES = class_orders.RAVDESS
ENTERFACE_CLASSES = class_orders.ENTERFACE
_CREMA_NAME = re.compile(r"^(\d+)_([A-Z]+)_([A-Z]{3})_([A-Z]+)$")
_RAVDESS_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_SUBJECT_DIR = re.compile(r"^subject\s*(\d+)$", re.IGNORECASE)


def _crema_split(root, split, fold, options) -> common.SplitListing:
    del split, fold, options
    video_dir = common.require_dir(os.path.join(root, "VideoFlash"), "crema-d",
                                   "VideoFlash/<actor>_<sentence>_<emotion>_<level>.flv", root)
    class_ids = {name: i for i, name in enumerate(CREMA_CLASSES)}
    items: list[common.Entry | common.Rejection] = []
    for path in common.files_under(video_dir):
        stem, ext = os.path.splitext(os.path.basename(path))
        if ext.lower() != ".flv":
            continue
        match = _CREMA_NAME.match(stem)
        if match is None:
            items.append(common.reject(common.BAD_FILE_NAME, f"{path} is not named "
                                       "<actor>_<sentence>_<emotion>_<level>.flv", id=stem))
            continue
        code = match.group(3)
        if code not in CREMA_CODES:
            items.append(common.reject(common.UNKNOWN_CLASS, f"emotion code {code} of {path} "
                                       f"is none of {list(CREMA_CODES)}", id=stem))
            continue
        label = CREMA_CODES[code]
        items.append(common.Entry(id=stem, label=label, label_id=class_ids[label], source=path,
                                  kind=common.VIDEO, group=match.group(1)))
    if not items:
        raise common.LayoutError(f"crema-d: expected *.flv files in {video_dir}, found none")
    return common.SplitListing(classes=list(CREMA_CLASSES), items=items)


def _ravdess_split(root, split, fold, options) -> common.SplitListing:
    del split, fold, options
    videos = [p for p in common.files_under(root)
              if os.path.splitext(p)[1].lower() == ".mp4"
              and os.path.basename(os.path.dirname(p)).startswith("Actor_")]
    if not videos:
        raise common.LayoutError(f"ravdess: expected Actor_XX/MM-VV-EE-II-SS-RR-AA.mp4 under "
                                 f"{root}, found none")
    parsed: dict[str, tuple[str, re.Match]] = {}
    items: list[common.Entry | common.Rejection] = []
    for path in videos:
        stem = os.path.splitext(os.path.basename(path))[0]
        match = _RAVDESS_NAME.match(stem)
        if match is None:
            items.append(common.reject(common.BAD_FILE_NAME, f"{path} is not named "
                                       "MM-VV-EE-II-SS-RR-AA.mp4", id=stem))
            continue
        parsed[stem] = (path, match)
    for stem, (path, match) in parsed.items():
        modality, emotion = match.group(1), int(match.group(3))
        if modality not in ("01", "02"):
            items.append(common.reject(common.NOT_A_VIDEO_FILE, f"{path}: modality {modality} "
                                       "is not 01 (audio-video) or 02 (video-only)", id=stem))
            continue
        twin = "02" + stem[2:]
        if modality == "01" and twin in parsed:
            items.append(common.reject(common.DUPLICATE_VIDEO, f"{path} shows the same "
                                       f"recording as the video-only {twin}.mp4", id=stem))
            continue
        if not 1 <= emotion <= len(RAVDESS_CLASSES):
            items.append(common.reject(common.LABEL_OUT_OF_RANGE, f"emotion {emotion:02d} of "
                                       f"{path} (expected 01..08)", id=stem))
            continue
        items.append(common.Entry(id=stem, label=RAVDESS_CLASSES[emotion - 1],
                                  label_id=emotion - 1, source=path, kind=common.VIDEO,
                                  group=f"Actor_{match.group(7)}"))
    items.sort(key=lambda item: common.natural_key(item.id or ""))
    return common.SplitListing(classes=list(RAVDESS_CLASSES), items=items)


def _enterface_split(root, split, fold, options) -> common.SplitListing:
    del split, fold, options
    subjects = [d for d in common.subdirectories(root) if _SUBJECT_DIR.match(d)] \
        if os.path.isdir(root) else []
    if not subjects:
        raise common.LayoutError(f"enterface05: expected 'subject <N>/<emotion>/sentence <M>/"
                                 f"*.avi' folders under {root}, found none")
    lookup = common.case_insensitive_lookup(ENTERFACE_CLASSES)
    items: list[common.Entry | common.Rejection] = []
    for subject in subjects:
        group = f"subject {int(_SUBJECT_DIR.match(subject).group(1))}"
        items.extend(common.scan_class_folders(
            os.path.join(root, subject), root, ENTERFACE_CLASSES, lookup, kind=common.VIDEO,
            group_of=lambda _, group=group: group))
    return common.SplitListing(classes=list(ENTERFACE_CLASSES), items=items)


# This module's readers, by their layout's name in emocap_jax.evaluate.registry.LAYOUTS.
READERS: dict[str, common.Reader] = {
    "crema-d": _crema_split, "ravdess": _ravdess_split, "enterface05": _enterface_split}
