"""Few-shot classification: a linear probe trained on k examples per class, k in {1, 2, 4, 8, 16},
averaged over seeds.

For each (k, seed): k support examples per class are drawn from the training pool, a separate
validation set of min(k, 4) per class is drawn from what remains to choose C (as CoOp's few-shot
linear probe does), and the final model is trained on the k support examples only, so the
labelled budget is exactly k per class. Given the training records' subjects, the validation
draw leaves out every subject of the support set: C chosen on other photos of the people the
probe was fitted on favours weak regularisation (`validation_by_subject` in each run). Classes with
fewer than k training examples use all they have; when nothing is left for validation,
scikit-learn's default C = 1 is used and the run says so (`C_chosen_on_validation` False).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from emocap_jax.evaluate import metrics
from emocap_jax.evaluate.linear_probe import DEFAULT_C_GRID, fit_probe

DEFAULT_SHOTS = (1, 2, 4, 8, 16)
DEFAULT_SEEDS = (0, 1, 2)
MAX_VALIDATION_SHOTS = 4
DEFAULT_C = 1.0


def sample_shots(labels, k: int, seed: int, exclude=None) -> np.ndarray:
    """Sorted indices of up to k examples of every class present in `labels`, drawn without
    replacement by a generator seeded with (seed, k); indices in `exclude` are never drawn."""
    if k < 1:
        raise ValueError(f"shots must be >= 1, got {k}")
    labels = np.asarray(labels)
    available = np.ones(len(labels), bool)
    if exclude is not None:
        available[np.asarray(exclude, np.int64)] = False
    rng = np.random.default_rng([seed, k])
    chosen = []
    for c in np.unique(labels):
        pool = np.flatnonzero((labels == c) & available)
        if len(pool):
            chosen.append(rng.choice(pool, size=min(k, len(pool)), replace=False))
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros((0,), np.int64)


def few_shot(train_x, train_y, test_x, test_y, class_names: Sequence[str],
             shots: Sequence[int] = DEFAULT_SHOTS, seeds: Sequence[int] = DEFAULT_SEEDS,
             c_grid: Sequence[float] = DEFAULT_C_GRID, balanced: bool = True,
             train_groups=None) -> dict:
    """{"shots": {k: {"uar": {mean, std}, "war": {...}, "macro_f1": {...}, "runs": [...]}}}.
    balanced: fit class-balanced (a support set is balanced already, except for classes with
    fewer than k examples). train_groups: the training records' subjects ("" or None: none); the
    validation draw takes no record of a subject in the support set."""
    train_x, test_x = np.asarray(train_x), np.asarray(test_x)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    num_classes = len(class_names)
    groups = None
    if train_groups is not None:
        groups = np.asarray(train_groups).astype(str)
        if not (groups != "").any():
            groups = None
    out = {}
    for k in shots:
        runs = []
        for seed in seeds:
            support = sample_shots(train_y, k, seed)
            exclude = support
            if groups is not None:
                # A record without a subject is nobody's other photo: it stays drawable.
                seen = np.setdiff1d(groups[support], [""])
                exclude = np.union1d(support, np.flatnonzero(np.isin(groups, seen)))
            val = sample_shots(train_y, min(k, MAX_VALIDATION_SHOTS), seed + 10_000,
                               exclude=exclude)
            has_val = len(val) > 0
            # Without a validation split the single default C is "chosen" on the support set.
            probe = fit_probe(train_x[support], train_y[support],
                              train_x[val if has_val else support],
                              train_y[val if has_val else support], num_classes,
                              c_grid if has_val else (DEFAULT_C,), refit_on_validation=False,
                              balanced=balanced)
            cm = metrics.confusion_matrix(test_y, probe.model.predict(test_x), num_classes)
            runs.append({"seed": int(seed), "C": probe.C, "num_support": int(len(support)),
                         "balanced": bool(balanced),
                         "C_chosen_on_validation": has_val,
                         "validation_by_subject": groups is not None,
                         "uar": metrics.uar(cm), "war": metrics.war(cm),
                         "macro_f1": metrics.macro_f1(cm), "confusion_matrix": cm.tolist()})
        out[int(k)] = {name: metrics.summarize_folds([r[name] for r in runs])
                       for name in ("uar", "war", "macro_f1")}
        out[int(k)]["runs"] = runs
    return {"shots": out, "classes": list(class_names), "num_test": int(len(test_y))}
