"""Per-class metrics and the confusion matrix against scikit-learn; calibration against its definition."""

import numpy as np
import pytest
from sklearn.metrics import classification_report
from sklearn.metrics import confusion_matrix as sk_confusion

from densa.core.metrics import calibration, class_table, confusion_matrix, format_confusion, format_table

CLASSES = [f"c{i}" for i in range(6)]


def assert_like_sklearn(labels, preds, classes):
    k = len(classes)
    cm = confusion_matrix(labels, preds, k)
    assert np.array_equal(cm, sk_confusion(labels, preds, labels=range(k)))
    ours = class_table(cm, classes)
    ref = classification_report(
        labels, preds, labels=range(k), target_names=classes, output_dict=True, zero_division=0
    )
    for row in ours["per_class"]:
        r = ref[row["class"]]
        assert row["support"] == r["support"]
        for key, sk_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert row[key] == pytest.approx(r[sk_key], abs=1e-12), (row, r)
    for name, sk_name in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
        for key, sk_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert ours[name][key] == pytest.approx(ref[sk_name][sk_key], abs=1e-12)
        assert ours[name]["support"] == ref[sk_name]["support"] == len(labels)
    assert ours["accuracy"] == pytest.approx(np.mean(np.asarray(labels) == np.asarray(preds)), abs=1e-12)
    return ours


def test_random_predictions_match_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 500)
    preds = np.where(rng.random(500) < 0.6, labels, rng.integers(0, 6, 500))
    ours = assert_like_sklearn(labels, preds, CLASSES)
    assert 0.5 < ours["accuracy"] < 0.8


def test_empty_classes_match_sklearn_zero_division():
    # class 4 is never predicted (precision 0/0), class 5 never occurs (recall 0/0)
    labels = np.array([0, 0, 1, 1, 2, 3, 4, 4, 4, 2])
    preds = np.array([0, 1, 1, 1, 2, 3, 0, 2, 3, 5])
    ours = assert_like_sklearn(labels, preds, CLASSES)
    assert ours["per_class"][4] == {"class": "c4", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    assert ours["per_class"][5]["support"] == 0 and ours["per_class"][5]["precision"] == 0.0


def brute_force_ece(conf, correct, bins):
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [i for i, c in enumerate(conf) if (lo < c <= hi) or (b == 0 and c == 0)]
        if inside:
            acc = sum(correct[i] for i in inside) / len(inside)
            mean = sum(conf[i] for i in inside) / len(inside)
            total += len(inside) / len(conf) * abs(acc - mean)
    return total


def test_calibration_matches_its_definition():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.1, 1.0, 2000)
    conf[:5] = [1.0, 0.5, 0.2, 1 / 15, 0.1]  # on bin edges
    correct = rng.random(2000) < conf**2  # over-confident on purpose
    cal = calibration(conf, correct, bins=15)
    assert cal["ece"] == pytest.approx(brute_force_ece(conf, correct, 15), abs=1e-12)
    assert sum(b["count"] for b in cal["bins"]) == 2000
    assert cal["ece"] > 0.1
    assert calibration(np.full(10, 0.8), np.arange(10) < 5)["ece"] == pytest.approx(0.3)
    assert calibration(np.ones(10), np.ones(10, dtype=bool))["ece"] == 0.0


def test_text_tables_read_back():
    labels = np.array([0, 0, 1, 1, 2, 3, 4, 4, 4, 2])
    preds = np.array([0, 1, 1, 1, 2, 3, 0, 2, 3, 5])
    cm = confusion_matrix(labels, preds, 6)
    text = format_confusion(cm, ["zero", "one", "two", "3", "4", "5"])
    rows = text.splitlines()[2:]
    assert rows[0].split()[:2] == ["0", "zero"] and rows[3].split()[0] == "3"
    back = np.array([[int(v) for v in row.split()[-6:]] for row in rows])
    assert np.array_equal(back, cm)
    table = format_table(class_table(cm, CLASSES)).splitlines()
    assert table[0].split() == ["class", "precision", "recall", "f1-score", "support"]
    assert table[5].split() == ["c4", "0.0000", "0.0000", "0.0000", "3"]
    assert table[-3].split() == ["accuracy", "0.5000", "10"]
