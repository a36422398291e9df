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


def binary_f1(labels, predictions) -> float:
    """F1 of the positive class (0 when there are no true and no predicted positives, as
    scikit-learn's f1_score with zero_division=0)."""
    labels = np.asarray(labels, bool)
    predictions = np.asarray(predictions, bool)
    tp = np.sum(labels & predictions)
    denominator = 2 * tp + np.sum(~labels & predictions) + np.sum(labels & ~predictions)
    return float(2 * tp / denominator) if denominator else 0.0


def multilabel_report(labels, predictions, names) -> dict:
    """Per-label F1, precision, recall, balanced accuracy and positives for [N, L] boolean
    labels and predictions; `mean_f1` averages F1 over the labels (macro F1, the AU-detection
    convention)."""
    labels = np.asarray(labels, bool)
    predictions = np.asarray(predictions, bool)
    if labels.shape != predictions.shape or labels.ndim != 2 or labels.shape[1] != len(names):
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} must both be "
                         f"[N, {len(names)}]")
    per_label = {}
    for j, name in enumerate(names):
        y, p = labels[:, j], predictions[:, j]
        tp = int(np.sum(y & p))
        positives, predicted = int(y.sum()), int(p.sum())
        negatives = len(y) - positives
        recall = tp / positives if positives else None
        specificity = int(np.sum(~y & ~p)) / negatives if negatives else None
        recalls = [r for r in (recall, specificity) if r is not None]
        per_label[name] = {
            "f1": binary_f1(y, p),
            "precision": tp / predicted if predicted else 0.0,
            "recall": recall,
            "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
            "positives": positives,
        }
    f1s = [v["f1"] for v in per_label.values()]
    balanced = [v["balanced_accuracy"] for v in per_label.values()
                if v["balanced_accuracy"] is not None]
    return {
        "num_examples": int(labels.shape[0]),
        "mean_f1": float(np.mean(f1s)) if f1s else 0.0,
        "mean_balanced_accuracy": float(np.mean(balanced)) if balanced else None,
        "per_label": per_label,
    }


def recall_at_k(scores, positives, ks=(1, 5, 10)) -> dict:
    """Retrieval recall: the fraction of queries (rows of `scores` [Q, G]) with at least one
    positive gallery item among their k highest scores. `positives` is a boolean [Q, G] matrix.
    Ties are broken in favour of the lower gallery index, deterministically."""
    scores = np.asarray(scores, np.float64)
    positives = np.asarray(positives, bool)
    if scores.shape != positives.shape:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} differ")
    if not positives.any(axis=1).all():
        raise ValueError("every query needs at least one positive gallery item")
    # Rank of the best positive: how many gallery items score strictly higher, or equal with a
    # lower index (stable descending order).
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked_positive = np.take_along_axis(positives, order, axis=1)
    first = np.argmax(ranked_positive, axis=1)
    return {f"R@{k}": float(np.mean(first < k)) for k in ks}


def summarize_folds(values) -> dict:
    """Mean and (population) standard deviation of per-fold values."""
    values = np.asarray([v for v in values if v is not None], np.float64)
    if values.size == 0:
        return {"mean": None, "std": None, "num_folds": 0}
    return {"mean": float(values.mean()), "std": float(values.std()),
            "num_folds": int(values.size)}
