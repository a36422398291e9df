"""Classification metrics as the FER literature reports them.

UAR (unweighted average recall) is the mean of per-class recalls, so rare classes count as much as
frequent ones; WAR (weighted average recall) is plain accuracy. Classes absent from the labels are
left out of UAR (their recall is undefined), and say so in `per_class_recall` as NaN.
"""
from __future__ import annotations

import numpy as np


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    labels = np.asarray(labels, np.int64)
    predictions = np.asarray(predictions, np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ")
    for name, x in (("labels", labels), ("predictions", predictions)):
        if x.size and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"{name} outside [0, {num_classes}): min {x.min()}, max {x.max()}")
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, predictions), 1)
    return cm


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def uar(cm: np.ndarray) -> float:
    return float(np.nanmean(per_class_recall(cm)))


def war(cm: np.ndarray) -> float:
    return float(np.trace(cm) / max(cm.sum(), 1))


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the labels or the predictions."""
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    present = (tp + fp + fn) > 0
    f1 = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    return float(f1[present].mean()) if present.any() else 0.0


def classification_report(labels, predictions, class_names) -> dict:
    cm = confusion_matrix(labels, predictions, len(class_names))
    recalls = per_class_recall(cm)
    return {
        "num_examples": int(cm.sum()),
        "uar": uar(cm), "war": war(cm), "macro_f1": macro_f1(cm),
        "per_class_recall": {c: (None if np.isnan(r) else float(r))
                             for c, r in zip(class_names, recalls)},
        "classes": list(class_names),
        "confusion_matrix": cm.tolist(),
    }
