"""Knowing when not to answer: a one-class detector of images unlike the digits a model was trained on.

`fit_detector(model, images, labels)` (densa.fit_detector; `densa train` runs it after training) measures
how far an image lies from the training digits in three ways that fail on different inputs: the
class-conditional Mahalanobis distance (shared covariance) of the features the model's last layer sees,
the residual of the 28x28 pixels outside the digits' principal components, and the Mahalanobis distance
of six shape statistics (ink mass, height, width, fill, spread). Each is scaled by its spread on the
fitting digits and the largest is the image's score; the threshold is the QUANTILE of the scores of
held-out digits (no non-digit is ever seen), so `score(...) > 1` means "stranger than 99.5% of real
digits". The arrays travel as base64 float32 in the model file's metadata (JSON under "detector"), so
.safetensors and .onnx files carry the same detector. No torch at module level: ONNX scores with numpy.
"""

from __future__ import annotations

import base64
import json

import numpy as np

from .errors import DensaError

FORMAT = "densa.detector.v1"
QUANTILE = 0.995  # a held-out digit scores above the threshold this rarely
COMPONENTS = 50  # principal components of the digits' pixels kept by the input-space part
FIT_IMAGES = 10_000  # training images the statistics are estimated on (a fixed random subset)
CALIBRATE_IMAGES = (
    5_000  # digits the threshold is set on (val split if there is one, else other training images)
)
SHRINK = 1e-3  # ridge added to the covariance's diagonal, as a share of its mean variance
UNSURE = 0.5  # an answer needs at least this probability; below it the model is "not sure"
MAX_FEATURES = 65536
PARTS = ("mahalanobis", "residual", "shape")
ARRAYS = ("means", "precision", "pixel_mean", "components", "shape_mean", "shape_precision")


class DetectorError(DensaError):
    pass


class Detector:
    """Scores images by how unlike the training digits they are; > 1 is beyond the calibrated threshold.

    .arrays: "means" (classes, d) and "precision" (d, d) of the last layer's input features; "pixel_mean"
    (784,) and "components" (k, 784) of the digits' pixels; "shape_mean" (6,) and "shape_precision" (6, 6)
    of their shape_stats. .scales: each part's (median, spread) on the fitting digits. .threshold: the
    QUANTILE of the held-out digits' combined score. .info: what it was fitted on (for people to read).
    """

    def __init__(self, arrays: dict, scales: dict, threshold: float, info: dict | None = None):
        self.arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
        # what every scoring call needs, computed once: the arrays in float64 and each class's m'Pm
        self._wide = {k: v.astype(np.float64) for k, v in self.arrays.items()}
        means, precision = self._wide["means"], self._wide["precision"]
        self._mpm = ((means @ precision) * means).sum(1)
        self.scales = {k: (float(a), float(b)) for k, (a, b) in scales.items()}
        self.threshold = float(threshold)
        self.info = dict(info or {})

    def __repr__(self) -> str:
        d = self.arrays["means"].shape
        parts = f"{d[1]} features x {d[0]} classes, pixel residual, shape"
        return f"Detector({parts}; threshold {self.threshold:.3g})"

    def parts(self, features: np.ndarray, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Each part's raw score, {name in PARTS: (N,)}, for (N, d) features and (N, 28, 28) pixels in
        [0, 1]."""
        a = self._wide
        f = np.asarray(features, dtype=np.float64)
        fp = f @ a["precision"]
        # (f - m)' P (f - m) = f'Pf - 2 f'Pm + m'Pm, for every class at once: (N, classes)
        d2 = (fp * f).sum(1)[:, None] - 2 * fp @ a["means"].T + self._mpm[None]
        z = np.asarray(pixels, dtype=np.float64).reshape(len(f), -1) - self.arrays["pixel_mean"]
        v = a["components"]
        # |z - z V'V|^2 = |z|^2 - |z V'|^2 (V's rows are orthonormal), without a second (N, 784) array
        residual = np.maximum((z * z).sum(1) - ((z @ v.T) ** 2).sum(1), 0)
        s = shape_stats(pixels) - self.arrays["shape_mean"]
        shape = ((s @ a["shape_precision"]) * s).sum(1)
        return {"mahalanobis": np.maximum(d2.min(1), 0), "residual": residual, "shape": shape}

    def raw(self, features, pixels) -> np.ndarray:
        """The larger of the parts, each scaled to (score - median) / spread of the fitting digits."""
        parts = self.parts(features, pixels)
        return np.maximum.reduce([(parts[k] - m) / s for k, (m, s) in self.scales.items()])

    def score(self, features, pixels) -> np.ndarray:
        """(N,) float64: how unlike the training digits each image is; above 1 it is refused."""
        return self.raw(features, pixels) / self.threshold

    # ----------------------------------------------------------------------- in a model file

    def to_json(self) -> str:
        arrays = {
            k: {"shape": list(v.shape), "float32": base64.b64encode(v.tobytes()).decode()}
            for k, v in self.arrays.items()
        }
        scales = {k: list(v) for k, v in self.scales.items()}
        return json.dumps(
            {
                "format": FORMAT,
                "threshold": self.threshold,
                "scales": scales,
                "info": self.info,
                "arrays": arrays,
            }
        )

    @classmethod
    def from_json(
        cls, text: str, file="the model file", features: int | None = None, classes: int | None = None
    ):
        """The detector a model file carries, every field checked (a damaged one is refused, not guessed)."""
        try:
            d = json.loads(text)
            ok = isinstance(d, dict) and d.get("format") == FORMAT
            arrays = {k: _array(d["arrays"][k]) for k in ARRAYS}
            scales = {k: d["scales"][k] for k in PARTS}
            threshold = d["threshold"]
        except (ValueError, KeyError, TypeError) as e:
            raise DetectorError(
                f"{file}: its detector metadata is damaged ({e}); retrain or export it again"
            ) from None
        k, dim = arrays["means"].shape if arrays["means"].ndim == 2 else (0, 0)
        ok = ok and 0 < dim <= MAX_FEATURES and arrays["precision"].shape == (dim, dim)
        ok = ok and arrays["pixel_mean"].shape == (784,) and arrays["components"].ndim == 2
        ok = ok and arrays["components"].shape[1] == 784 and arrays["components"].shape[0] <= 784
        ok = ok and arrays["shape_mean"].shape == (6,) and arrays["shape_precision"].shape == (6, 6)
        ok = ok and (features is None or dim == features) and (classes is None or k == classes)
        ok = ok and all(np.isfinite(a).all() for a in arrays.values())
        ok = ok and all(_pair(v) for v in scales.values()) and _finite(threshold) and threshold > 0
        if not ok:
            raise DetectorError(
                f"{file}: its detector does not fit the model (shapes or values are wrong); the file is "
                "damaged: retrain or export it again"
            )
        return cls(arrays, scales, threshold, d.get("info") if isinstance(d.get("info"), dict) else {})


def shape_stats(pixels: np.ndarray) -> np.ndarray:
    """(N, 28, 28) in [0, 1] -> (N, 6) float64: ink mass, the ink's height and width, how much of its
    box it fills, and its spread along rows and columns. A line, a dot or a smudge is unlike any digit
    in these long before its pixels are."""
    x = np.asarray(pixels, dtype=np.float64).reshape(-1, 28, 28)
    mass = x.sum((1, 2)) + 1e-6
    on = x > 0.25
    rows, cols = on.any(2), on.any(1)
    idx = np.arange(28)

    def extent(m):
        first, last = m.argmax(1), 27 - m[:, ::-1].argmax(1)
        return np.where(m.any(1), last - first + 1, 0)

    h, w = extent(rows), extent(cols)
    r = x.sum(2) @ idx / mass
    c = x.sum(1) @ idx / mass
    sr = np.sqrt(np.maximum(x.sum(2) @ idx**2 / mass - r**2, 0))
    sc = np.sqrt(np.maximum(x.sum(1) @ idx**2 / mass - c**2, 0))
    fill = mass / np.maximum(h * w, 1)
    return np.stack([np.log(mass), h, w, fill, sr, sc], axis=1)


def _array(entry) -> np.ndarray:
    shape = [int(n) for n in entry["shape"]]
    a = np.frombuffer(base64.b64decode(entry["float32"], validate=True), dtype=np.float32)
    return a.reshape(shape)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _pair(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(map(_finite, v)) and v[1] > 0


# --------------------------------------------------------------------------- fitting (torch)


def features_and_logits(model, images, batch_size: int = 2000):
    """(features the last layer sees (N, d) float32, logits (N, classes) float32) of densa's MLP or CNN."""
    import torch

    from .evaluate import scale_images

    x = scale_images(torch.as_tensor(images))
    was_training = model.training
    model.eval()
    feats, logits = [], []
    try:
        device = next(model.parameters()).device
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                f = model.body(x[i : i + batch_size].to(device))
                feats.append(f.float().cpu())
                logits.append(model.last(f).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def _gram(a: np.ndarray) -> np.ndarray:
    """a.T @ a as float64, multiplied by torch in float32: the rows are centred, so float32 is plenty, and
    it takes a fraction of a second where numpy's float64 product took seconds (10,000 x 784)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return (t.T @ t).double().numpy()


def fit_statistics(feats: np.ndarray, labels: np.ndarray, pixels: np.ndarray, classes: int) -> dict:
    """The detector's arrays from the fitting digits: class means, shared precision, pixel PCA."""
    f = feats.astype(np.float64)
    means = np.stack([f[labels == c].mean(0) if (labels == c).any() else f.mean(0) for c in range(classes)])
    cov = _gram(f - means[labels]) / max(len(f) - 1, 1)
    d = cov.shape[0]
    cov[np.diag_indices(d)] += SHRINK * max(np.trace(cov) / d, 1e-12)
    precision = np.linalg.inv(cov)
    x = pixels.reshape(len(pixels), -1)
    pixel_mean = x.mean(0, dtype=np.float64)
    _, vectors = np.linalg.eigh(_gram(x - pixel_mean))  # ascending eigenvalues
    vt = vectors[:, ::-1].T
    stats = shape_stats(pixels)
    shape_mean = stats.mean(0)
    shape_cov = np.cov(stats - shape_mean, rowvar=False)
    shape_cov[np.diag_indices(6)] += 1e-3 * np.diag(shape_cov).mean() + 1e-9
    return {
        "means": means,
        "precision": precision,
        "pixel_mean": pixel_mean,
        "components": vt[:COMPONENTS],
        "shape_mean": shape_mean,
        "shape_precision": np.linalg.inv(shape_cov),
    }


def fit_detector(model, images, labels, calibration=None, seed: int = 0) -> Detector:
    """Fit the detector for a trained densa MLP or CNN.

    `images`, `labels`: training digits (uint8 (N, 28, 28) and (N,)); FIT_IMAGES of them (a fixed random
    subset for `seed`) give the statistics. `calibration`: held-out digits (the val split) whose
    QUANTILE sets the threshold; without it, CALIBRATE_IMAGES other training images do (info says which).
    """
    import torch

    labels = np.asarray(torch.as_tensor(labels).cpu())
    n = len(labels)
    order = np.random.default_rng(seed).permutation(n)
    held = 0 if calibration is not None else min(CALIBRATE_IMAGES, n // 4)  # kept out of the fit
    fit_idx = np.sort(order[held : held + FIT_IMAGES])
    pixels = np.asarray(torch.as_tensor(images)[torch.as_tensor(fit_idx)].cpu())
    feats, logits = features_and_logits(model, pixels)
    stats = fit_statistics(feats, labels[fit_idx], pixels / 255.0, logits.shape[1])
    probe = Detector(stats, dict.fromkeys(PARTS, (0, 1)), 1.0)
    parts = probe.parts(feats, pixels / 255.0)
    scales = {
        k: (float(np.median(v)), float(np.quantile(v, 0.99) - np.median(v)) or 1.0) for k, v in parts.items()
    }
    if calibration is not None:
        cal_images, source = calibration, "val split"
    else:
        cal_idx = np.sort(order[:held])
        cal_images, source = (
            torch.as_tensor(images)[torch.as_tensor(cal_idx)],
            "training images not used for the fit",
        )
    cal = np.asarray(torch.as_tensor(cal_images).cpu())[:CALIBRATE_IMAGES]
    cal_feats, _ = features_and_logits(model, cal)
    probe = Detector(stats, scales, 1.0)
    threshold = float(np.quantile(probe.raw(cal_feats, cal / 255.0), QUANTILE))
    info = {
        "method": "max(mahalanobis distance of the last layer's input, pixel residual outside "
        f"{COMPONENTS} principal components, mahalanobis distance of 6 shape statistics)",
        "fitted_on": f"{len(fit_idx)} training images",
        "calibrated_on": f"{len(cal)} {source}",
        "quantile": QUANTILE,
        "seed": seed,
    }
    return Detector(stats, scales, max(threshold, 1e-6), info)
