"""A prediction's decision: the answer, or "not sure", or "not a digit", with a reason in plain words.

`decide(probs, scores, ...)` turns a batch of probabilities and the detector's scores (core.detector;
None for a model file written before densa fitted one) into Decision objects. Each has a status:
"answer" (the best class is the answer), "not_sure" (it looks like a digit, but no class reaches
UNSURE probability) or "unknown" (it is stranger than the calibrated share of real digits: not a digit
at all). `score` folds both rules into one number, refused above 1, which is what an ROC curve needs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.detector import UNSURE

STATUSES = ("answer", "not_sure", "unknown")
NOUNS = {"mnist": "digit", "fashion-mnist": "piece of clothing", "kmnist": "character"}
NO_DETECTOR = (
    "{file} has no detector (it was written before densa fitted one): only low confidence is refused, "
    "and things that are not {a} may get confident answers; train it again to add one"
)


@dataclass(frozen=True)
class Decision:
    """What densa says about one image.

    status: "answer", "not_sure" or "unknown"; accepted: status == "answer"; answer: the class name when
    accepted, else None; label: what to show ("7", "not sure", "not a digit"); reason: why, in plain
    words; best_guess and probability: the most probable class and its probability (always given);
    score: max(detector score, (1 - probability) / (1 - UNSURE)), refused above 1; detector_score: the
    detector's alone (None without one); method: "detector" or "confidence only" (an older model file).
    """

    status: str
    answer: str | None
    label: str
    reason: str
    best_guess: str
    probability: float
    score: float
    detector_score: float | None
    method: str

    @property
    def accepted(self) -> bool:
        return self.status == "answer"

    def to_dict(self) -> dict:
        return {**asdict(self), "accepted": self.accepted}


def noun(dataset: str, classes) -> str:
    """What the model's classes are called: 'digit' for MNIST-style 0..9."""
    if dataset in NOUNS:
        return NOUNS[dataset]
    return "digit" if list(classes) == [str(i) for i in range(10)] else "known class"


def article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def decide(probs: np.ndarray, scores: np.ndarray | None, classes, dataset: str = "mnist") -> list[Decision]:
    """(N, classes) probabilities and (N,) detector scores (or None) -> one Decision per image."""
    probs = np.asarray(probs, dtype=np.float64)
    thing = article(noun(dataset, classes))
    best = probs.argmax(axis=1) if len(probs) else np.empty(0, np.int64)
    out = []
    for i, k in enumerate(best):
        p = float(probs[i, k])
        unsure = (1 - p) / (1 - UNSURE)
        det = None if scores is None else float(scores[i])
        guess = f"best guess {classes[k]}, {p:.0%}"
        if det is not None and det > 1:
            status, reason = "unknown", f"that doesn't look like {thing} — {guess}"
        elif p < UNSURE:
            status, reason = "not_sure", f"not sure: it could be more than one thing — {guess}"
        else:
            status, reason = "answer", f"{classes[k]}, {p:.0%}"
        label = {"answer": str(classes[k]), "not_sure": "not sure", "unknown": f"not {thing}"}[status]
        out.append(
            Decision(
                status=status,
                answer=str(classes[k]) if status == "answer" else None,
                label=label,
                reason=reason,
                best_guess=str(classes[k]),
                probability=p,
                score=max(unsure, det if det is not None else -np.inf),
                detector_score=det,
                method="detector" if det is not None else "confidence only",
            )
        )
    return out
