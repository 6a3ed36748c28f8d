"""Per-class metrics, the confusion matrix and calibration, from labels and predictions (numpy).

`assess(model, images, labels, classes)` runs the model once and returns everything `densa evaluate`
and `densa report` show: loss, accuracy, the per-class table (precision, recall, F1, support, as in
scikit-learn's classification_report), the confusion matrix (rows: true class, columns: predicted) and
the reliability bins with the expected calibration error. format_table / format_confusion print them.
"""

from __future__ import annotations

import numpy as np

ECE_BINS = 15  # equal-width confidence bins over [0, 1], as in Guo et al. 2017


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: cm[t, p] = images of true class t predicted as p."""
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    flat = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (scikit-learn's zero_division=0)."""
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def class_table(cm: np.ndarray, classes) -> dict:
    """Per-class precision, recall, F1 and support from a confusion matrix, plus accuracy and averages."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    rows = [
        {"class": str(c), "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(classes, precision, recall, f1, support)
    ]
    n = int(support.sum())
    weights = support / max(n, 1)

    def average(w):
        return {
            "precision": float(np.sum(w * precision)),
            "recall": float(np.sum(w * recall)),
            "f1": float(np.sum(w * f1)),
            "support": n,
        }

    return {
        "per_class": rows,
        "accuracy": float(tp.sum() / max(n, 1)),
        "macro_avg": average(np.full(len(rows), 1 / max(len(rows), 1))),
        "weighted_avg": average(weights),
    }


def calibration(confidence, correct, bins: int = ECE_BINS) -> dict:
    """Reliability bins of the top-class confidence and the expected calibration error.

    ECE = sum over bins of (images in bin / all images) * |accuracy in bin - mean confidence in bin|,
    with bins (lo, hi] of equal width (the first also takes 0).
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    correct_sum = np.bincount(which, weights=correct, minlength=bins)
    mean_conf, acc = _ratio(conf_sum, count), _ratio(correct_sum, count)
    n = max(len(confidence), 1)
    ece = float(np.sum(count / n * np.abs(acc - mean_conf)))
    return {
        "ece": ece,
        "bins": [
            {"lo": float(lo), "hi": float(hi), "count": int(c), "confidence": float(m), "accuracy": float(a)}
            for lo, hi, c, m, a in zip(edges[:-1], edges[1:], count, mean_conf, acc)
        ],
    }


def assess_logits(logits, labels, classes) -> dict:
    """Loss, accuracy, class table, confusion matrix and calibration of (N, K) logits vs (N,) labels.

    Loss and accuracy come from core.evaluate.score, like every other score densa prints. Also returns
    the numpy arrays the report draws from: "probs" (N, K), "preds" (N,), "labels" (N,).
    """
    from .evaluate import score, softmax

    y = np.asarray(labels, dtype=np.int64)
    z = np.asarray(logits, dtype=np.float32).reshape(len(y), len(classes))
    probs = softmax(z)
    preds = z.argmax(axis=1)
    cm = confusion_matrix(y, preds, len(classes))
    return {
        **score(z, y),
        **class_table(cm, classes),
        "classes": [str(c) for c in classes],
        "confusion": cm.tolist(),
        "calibration": calibration(probs.max(axis=1, initial=0.0), preds == y),
        "probs": probs,
        "preds": preds,
        "labels": y,
    }


def assess(model, images, labels, classes, batch_size: int = 2000) -> dict:
    """Run a torch `model` once over a split and assess its logits (see assess_logits)."""
    from .evaluate import logits_of

    return assess_logits(logits_of(model, images, batch_size).numpy(), labels.cpu().numpy(), classes)


# --------------------------------------------------------------------------- text tables


def format_table(result: dict) -> str:
    """scikit-learn's classification_report layout: one row per class, then accuracy and averages."""
    names = [r["class"] for r in result["per_class"]] + ["weighted avg"]
    w = max(len(s) for s in names)
    head = f"{'class':<{w}}  {'precision':>9}  {'recall':>9}  {'f1-score':>9}  {'support':>8}"

    def row(name, r):
        return f"{name:<{w}}  {r['precision']:>9.4f}  {r['recall']:>9.4f}  {r['f1']:>9.4f}  {r['support']:>8}"

    lines = [head, *(row(r["class"], r) for r in result["per_class"]), ""]
    n = result["macro_avg"]["support"]
    lines.append(f"{'accuracy':<{w}}  {'':>9}  {'':>9}  {result['accuracy']:>9.4f}  {n:>8}")
    lines.append(row("macro avg", result["macro_avg"]))
    lines.append(row("weighted avg", result["weighted_avg"]))
    return "\n".join(lines)


def format_confusion(cm, classes) -> str:
    """The confusion matrix as text: rows are true classes (index and name), columns predicted indices."""
    cm = np.asarray(cm)
    k = len(classes)
    labels = [f"{i} {c}" if str(c) != str(i) else str(i) for i, c in enumerate(classes)]
    corner = "true \\ pred"
    w = max(len(corner), *(len(s) for s in labels))
    cw = max(len(str(int(cm.max()))) if cm.size else 1, len(str(k - 1)), 3)
    lines = [
        "confusion matrix (rows: true class, columns: predicted class)",
        f"{corner:<{w}} " + " ".join(f"{j:>{cw}}" for j in range(k)),
    ]
    for label, counts in zip(labels, cm):
        lines.append(f"{label:<{w}} " + " ".join(f"{int(v):>{cw}}" for v in counts))
    return "\n".join(lines)
