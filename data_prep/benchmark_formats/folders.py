"""Benchmarks distributed as one folder per class: generic imagefolder, SFEW 2.0, CK+48, AFEW.

imagefolder — ROOT/<class>/**/<image>. Class order: sorted folder names, or the order given by
`--classes` (then folders not listed are rejected, one rejection per folder). One split, "all".
Record id: <class>/<path below it without extension>.

sfew — SFEW 2.0: ROOT/Train/<Class>/*.png and ROOT/Val/<Class>/*.png (lower-case train/ val/
also accepted; when the class folders sit one level deeper, e.g. Train/Train_Aligned_Faces/,
that folder is used). Classes (folder names, any case): angry disgust fear happy neutral sad
surprise. The SFEW test set has no public labels, so splits are train and val.

ckplus48 — CK+48: ROOT/<class>/S<subject>_<sequence>_<frame>.png with classes anger contempt
disgust fear happy sadness surprise; group = S<subject> (split by subject: frames of one
sequence are near-duplicates). One split, "all". A file name without the subject pattern is
rejected (bad_file_name), since it cannot be kept on the right side of a subject split.

afew — AFEW 7.0: ROOT/Train_AFEW/<Class>/*.avi and ROOT/Val_AFEW/<Class>/*.avi, classes
Angry Disgust Fear Happy Neutral Sad Surprise; K frames are sampled per clip. Other folders
(e.g. AlignedFaces_LBPTOP_Points) are rejected as one item each.
"""

from __future__ import annotations

import os
import re

from data_prep.benchmark_formats import common
from emocap_jax.data import class_orders

SFEW_CLASSES = class_orders.SFEW
CKPLUS48_CLASSES = class_orders.CKPLUS48
AFEW_CLASSES = class_orders.AFEW
_CK_NAME = re.compile(r"^(S\d+)_(\d+)_(\d+)$")


def _imagefolder_split(root, split, fold, options: common.ReaderOptions
                       ) -> common.SplitListing:
    del split, fold
    if not os.path.isdir(root):
        raise common.LayoutError(f"imagefolder: expected a directory of class folders at {root}")
    folders = common.subdirectories(root)
    if options.classes is not None:
        classes = list(options.classes)
        if len(set(classes)) != len(classes):
            raise ValueError(f"imagefolder: --classes {classes} has duplicates")
        known = set(classes)
        lookup = lambda folder: folder if folder in known else None  # noqa: E731
    else:
        classes = sorted(f for f in folders if common.is_unicode(f))  # others: bad_file_name
        lookup = lambda folder: folder  # noqa: E731
    if not folders:
        raise common.LayoutError(f"imagefolder: expected <class>/<image> folders under {root}, "
                                 "found no subfolder")
    items = common.scan_class_folders(root, root, classes, lookup)
    missing = [c for c in classes if c not in folders]
    return common.SplitListing(classes=classes, items=items,
                               info={"classes_without_folder": missing} if missing else {})


def _class_root(split_dir: str, lookup) -> str:
    """split_dir, or its only subfolder when the class folders sit one level deeper."""
    folders = common.subdirectories(split_dir)
    if any(lookup(f) for f in folders):
        return split_dir
    nested = [os.path.join(split_dir, f) for f in folders]
    for candidate in nested:
        if any(lookup(f) for f in common.subdirectories(candidate)):
            return candidate
    return split_dir


def _sfew_split(root, split, fold, options) -> common.SplitListing:
    del fold, options
    names = {"train": ("Train", "train"), "val": ("Val", "val")}[split]
    split_dir = common.first_existing((os.path.join(root, n) for n in names), is_dir=True)
    if split_dir is None:
        raise common.LayoutError(f"sfew: expected {names[0]}/<Class>/*.png under {root}")
    lookup = common.case_insensitive_lookup(SFEW_CLASSES)
    class_root = _class_root(split_dir, lookup)
    items = common.scan_class_folders(class_root, root, SFEW_CLASSES, lookup)
    return common.SplitListing(classes=list(SFEW_CLASSES), items=items)


def ck_subject(file_name: str) -> str | common.Rejection:
    match = _CK_NAME.match(os.path.splitext(file_name)[0])
    if match is None:
        return common.reject(common.BAD_FILE_NAME, f"{file_name} is not named "
                             "S<subject>_<sequence>_<frame>.png")
    return match.group(1)


def _ckplus48_split(root, split, fold, options) -> common.SplitListing:
    del split, fold, options
    lookup = common.case_insensitive_lookup(CKPLUS48_CLASSES)
    if not os.path.isdir(root) or not any(lookup(f) for f in common.subdirectories(root)):
        raise common.LayoutError(f"ckplus48: expected class folders {list(CKPLUS48_CLASSES)} "
                                 f"under {root}")
    items = common.scan_class_folders(root, root, CKPLUS48_CLASSES, lookup, group_of=ck_subject)
    return common.SplitListing(classes=list(CKPLUS48_CLASSES), items=items)


def _afew_split(root, split, fold, options) -> common.SplitListing:
    del fold, options
    name = {"train": "Train_AFEW", "val": "Val_AFEW"}[split]
    split_dir = common.require_dir(os.path.join(root, name), "afew", f"{name}/<Class>/*.avi",
                                   root)
    items = common.scan_class_folders(split_dir, root, AFEW_CLASSES,
                                      common.case_insensitive_lookup(AFEW_CLASSES),
                                      kind=common.VIDEO)
    return common.SplitListing(classes=list(AFEW_CLASSES), items=items)


# This module's readers, by their layout's name in emocap_jax.evaluate.registry.LAYOUTS.
READERS: dict[str, common.Reader] = {
    "imagefolder": _imagefolder_split, "sfew": _sfew_split, "ckplus48": _ckplus48_split,
    "afew": _afew_split}
