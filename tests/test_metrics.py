"""Metrics against scikit-learn and hand-computed values."""
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, confusion_matrix as sk_confusion, f1_score

from emocap_jax.evaluate import metrics


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 200)
    preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, 5, 200))
    cm = metrics.confusion_matrix(labels, preds, 5)
    np.testing.assert_array_equal(cm, sk_confusion(labels, preds, labels=range(5)))
    assert metrics.uar(cm) == pytest.approx(balanced_accuracy_score(labels, preds))
    assert metrics.war(cm) == pytest.approx(np.mean(labels == preds))
    assert metrics.macro_f1(cm) == pytest.approx(f1_score(labels, preds, average="macro"))


def test_hand_computed_case_with_absent_class():
    # Class 2 never occurs in the labels: its recall is undefined and left out of UAR.
    labels = [0, 0, 0, 1]
    preds = [0, 0, 1, 1]
    report = metrics.classification_report(labels, preds, ["a", "b", "c"])
    assert report["per_class_recall"] == {"a": pytest.approx(2 / 3), "b": 1.0, "c": None}
    assert report["uar"] == pytest.approx((2 / 3 + 1) / 2)
    assert report["war"] == pytest.approx(0.75)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="labels outside"):
        metrics.confusion_matrix([3], [0], 3)
