"""Linear probe on frozen features: multinomial logistic regression (scikit-learn, L-BFGS), its
inverse regularisation C chosen on a validation split by UAR, then refit with that C.

The headline is UAR (mean per-class recall), so by default the fit is class-balanced (each class's
examples weighted by 1 / its frequency, scikit-learn's class_weight="balanced"): an unweighted fit
on FER2013 never predicted its rarest class (disgust, 1.5% of the faces) and its UAR trailed its
accuracy by 8 points. `balanced=False` fits unweighted (what WAR-first papers report).

Also the splits the probe needs: a validation carve-out of the training data, and the
subject-independent cross-validation folds of single-split benchmarks (CK+, JAFFE, the acted video
sets), where frames or clips of one person must never be on both sides.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Optional, Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from threadpoolctl import threadpool_limits

from emocap_jax.evaluate import metrics

# CLIP's linear-probe search spans 1e-6..1e6; features here are unit-norm, whose useful C lies
# well inside 1e-2..1e4 (a wider grid only adds fits).
DEFAULT_C_GRID = tuple(float(c) for c in 10.0 ** np.arange(-2, 5))
MAX_ITER = 1000


@dataclasses.dataclass
class ProbeFit:
    model: object          # sklearn LogisticRegression
    C: float
    validation_uar: dict   # C -> UAR on the validation split
    not_converged: int     # fits that hit MAX_ITER


class PartlyGrouped(ValueError):
    """Some records name a subject and others do not: subjects cannot be kept apart."""


def _subjects_to_keep_apart(groups) -> Optional[np.ndarray]:
    """The records' subjects when they must be kept apart, or None when there is nothing to keep
    apart: no groups given, every group blank, or a single subject."""
    if groups is None:
        return None
    groups = np.asarray(groups)
    empty = groups == ""
    if empty.all():
        return None
    # Dropping every group for a few blank ones would put one subject's frames on both sides of
    # a fold without a word; a benchmark with subjects needs them on every record.
    if empty.any():
        raise PartlyGrouped(f"{int(empty.sum())} of {len(groups)} records have no group "
                            "(subject) while the others have one: keeping subjects apart needs "
                            "a group on every record; fill in the missing ones in the "
                            "converted dataset")
    return groups if len(np.unique(groups)) > 1 else None


class TooFewForFolds(ValueError):
    """The data cannot fill the folds asked for; `most` is the most folds it can fill (below 2:
    none, it cannot be cross-validated)."""

    def __init__(self, message: str, most: int):
        super().__init__(message)
        self.most = most


def _too_few(problem: str, most: int) -> TooFewForFolds:
    advice = (f"use at most {most} folds" if most >= 2
              else "too few to cross-validate; train the probe on a separate split")
    return TooFewForFolds(f"{problem}; {advice}", most)


def _class_name(label: int, class_names: Optional[Sequence[str]]) -> str:
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return f"label {label}"


def cv_folds(labels, groups, num_folds: int, seed: int = 0,
             class_names: Optional[Sequence[str]] = None, group_word: str = "subjects"
             ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays of `num_folds` stratified folds; with groups (subjects), no group
    is split between train and test (scikit-learn's StratifiedGroupKFold). Data too small for the
    folds raises TooFewForFolds, naming each class (`class_names[label]`) and its count.
    `group_word` names what a group is in that message ("subjects", "distinct images")."""
    labels = np.asarray(labels)
    groups = _subjects_to_keep_apart(groups)
    if num_folds < 2:
        raise ValueError(f"cross-validation needs at least 2 folds, got {num_folds}")
    if groups is not None:
        num_groups = len(np.unique(groups))
        if num_groups < num_folds:
            raise _too_few(f"{num_groups} {group_word} cannot fill {num_folds} folds that keep "
                           f"them apart", num_groups)
    # scikit-learn refuses only when every class is smaller than the folds, saying "n_splits=10
    # cannot be greater than the number of members in each class" (no class, no count, no way
    # out); a few small classes are fine, their examples sit in some test folds only.
    values, counts = np.unique(labels, return_counts=True)
    if not len(counts) or counts.max() < num_folds:
        named = ", ".join(f"{_class_name(int(v), class_names)} {int(n)}"
                          for v, n in zip(values, counts))
        raise _too_few(f"{num_folds} stratified folds need a class with at least {num_folds} "
                       f"examples, but every class has fewer (examples per class: "
                       f"{named or 'none'})", int(counts.max()) if len(counts) else 0)
    if groups is not None:
        splitter = StratifiedGroupKFold(num_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(labels)), labels, groups)
    else:
        splitter = StratifiedKFold(num_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(labels)), labels)
    with warnings.catch_warnings():
        # "The least populated class has fewer members than n_splits": expected on tiny classes.
        warnings.simplefilter("ignore", UserWarning)
        return [(np.sort(a), np.sort(b)) for a, b in splits]


def validation_split(labels, groups=None, fraction: float = 0.2, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: about `fraction` of the data held out, stratified, and by
    group when groups are given."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must lie in (0, 1), got {fraction}")
    num_folds = max(2, int(round(1 / fraction)))
    groups = _subjects_to_keep_apart(groups)
    # Small training sets (a CV fold of a small benchmark): hold out one of fewer, larger parts
    # rather than fail; the validation split only picks C.
    num_folds = min(num_folds, int(np.bincount(np.unique(labels, return_inverse=True)[1]).max()))
    if groups is not None:
        num_folds = min(num_folds, len(np.unique(groups)))
    if num_folds < 2:
        raise ValueError(f"{len(labels)} training examples are too few to hold out a validation "
                         "split for choosing C")
    return cv_folds(labels, groups, num_folds, seed)[0]


def fit_probe(train_x, train_y, val_x, val_y, num_classes: int,
              c_grid: Sequence[float] = DEFAULT_C_GRID, refit_on_validation: bool = True,
              balanced: bool = True) -> ProbeFit:
    """Fits one model per C on the training split, keeps the C with the best validation UAR
    (ties: the smaller C, i.e. the stronger regularisation) and refits with it on train +
    validation (or on train alone with refit_on_validation=False, for few-shot budgets).
    balanced: weight each class by 1 / its frequency in the data being fitted."""
    train_x, val_x = np.asarray(train_x, np.float64), np.asarray(val_x, np.float64)
    train_y, val_y = np.asarray(train_y), np.asarray(val_y)
    if len(np.unique(train_y)) < 2:
        raise ValueError("the probe's training split holds fewer than 2 classes")
    if len(val_y) == 0:
        raise ValueError("the validation split is empty: C cannot be chosen")
    not_converged = 0

    def fit(x, y, c):
        nonlocal not_converged
        # L-BFGS works on vectors of a few thousand numbers: multi-threaded BLAS only contends
        # with JAX's threads there (16 fits of a small probe: 6 s instead of 1 s on 2 cores).
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(1, "blas"):
            warnings.simplefilter("always", ConvergenceWarning)
            model = LogisticRegression(C=c, max_iter=MAX_ITER,
                                       class_weight="balanced" if balanced else None).fit(x, y)
        not_converged += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        return model

    scores = {}
    for c in sorted(c_grid):
        predictions = fit(train_x, train_y, c).predict(val_x)
        scores[float(c)] = metrics.uar(metrics.confusion_matrix(val_y, predictions, num_classes))
    best = max(scores, key=lambda c: (scores[c], -c))
    if refit_on_validation:
        x, y = np.concatenate([train_x, val_x]), np.concatenate([train_y, val_y])
    else:
        x, y = train_x, train_y
    return ProbeFit(fit(x, y, best), best, scores, not_converged)


def linear_probe(train_x, train_y, test_x, test_y, class_names: Sequence[str],
                 train_groups=None, val_fraction: float = 0.2,
                 c_grid: Sequence[float] = DEFAULT_C_GRID, seed: int = 0,
                 balanced: bool = True) -> dict:
    """Probe trained on (train_x, train_y), C chosen on a validation carve-out of it, evaluated on
    the test split: a classification report plus the chosen C, whether the fit was
    class-balanced, whether the carve-out kept subjects apart, and the test predictions.

    train_groups: the training records' subjects; with them no subject has records on both
    sides of the carve-out (else C is chosen on faces of people the fit has seen, which favours
    weak regularisation). Records partly without a subject raise PartlyGrouped."""
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    by_subject = _subjects_to_keep_apart(train_groups) is not None
    fit_idx, val_idx = validation_split(train_y, train_groups, val_fraction, seed)
    train_x = np.asarray(train_x)
    probe = fit_probe(train_x[fit_idx], train_y[fit_idx], train_x[val_idx], train_y[val_idx],
                      len(class_names), c_grid, balanced=balanced)
    predictions = probe.model.predict(np.asarray(test_x, np.float64))
    report = metrics.classification_report(test_y, predictions, list(class_names))
    report.update(C=probe.C, balanced=bool(balanced), validation_uar=probe.validation_uar,
                  not_converged=probe.not_converged, num_train=int(len(train_y)),
                  validation_by_subject=by_subject)
    report["predictions"] = predictions.astype(int).tolist()
    return report
