"""Test faces that are byte copies of training faces, for the protocols that fit on a training
split (linear probe, few-shot).

A probe can memorise a training face; scored again on the same bytes in the test split, it
inflates the number without measuring the features. Converted benchmarks do hold such copies
(FER2013's published split shares identical images between train and validation), so each run
counts them by the records' `image_digest` (16-byte BLAKE2b of the encoded images) and says so:
a warning, `train_test_copies` in the result and per fold, the summary line and the report's
Notes. It does not refuse: the published splits are what papers report on, and the count lets a
reader judge the number. Cross-validation folds that this project draws itself do keep copies
apart: by subject, or, where no record names one, by image digest (runner._fold_groups), so the
count there is that of copies filed under two subjects. Near copies (re-encoded, re-cropped) are
not found here; see `bench/split_overlap.py`.
"""
from __future__ import annotations

import warnings

import numpy as np


def train_test_copies(train_digests, test_digests) -> int:
    """How many test records have the same image digest as some training record."""
    train = {bytes(d) for d in np.asarray(train_digests, np.uint8)}
    return sum(bytes(d) in train for d in np.asarray(test_digests, np.uint8))


def warn_copies(count: int, num_test: int, what: str) -> None:
    """Warns when `count` of `num_test` test faces of `what` are copies of training faces."""
    if count:
        warnings.warn(f"{what}: {count} of {num_test} test faces are byte-identical copies of "
                      "training faces (same image digest); the probe may have memorised them, "
                      "which inflates the score", stacklevel=3)


def note(result: dict) -> str:
    """The report's line on copies for a result that counted them ("" if it did not)."""
    count = result.get("train_test_copies")
    if count is None:
        return ""
    head = f"{result['title']} {result['protocol']}: "
    if not count:
        return head + "no test face is a byte copy of a training face."
    return (head + f"{count} test faces are byte-identical copies of training faces (counted "
            "by image digest), which the probe may have memorised.")
