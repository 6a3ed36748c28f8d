"""Knowing when not to answer: a detector of images unlike the digits a model was trained on.

`fit_detector(model, images, labels)` (densa.fit_detector; `densa train` runs it after training) measures
how far an image lies from the training digits in four ways that fail on different inputs: the
class-conditional Mahalanobis distance (shared covariance) of the features the model's last layer sees,
the residual of the 28x28 pixels outside the digits' principal components, the Mahalanobis distance of
six shape statistics (ink mass, height, width, fill, spread), and a small network (one hidden layer)
trained to tell the training digits from generated things that are not digits (core.outliers: letters,
scribbles, lines, dots, shapes), on the features, the three distances and the shape statistics. Each is
scaled by its spread on the fitting digits and the largest is the image's score; the threshold is the
QUANTILE of the scores of held-out digits (the counter-examples never set it), so `score(...) > 1`
means "stranger than 99% of real digits". The arrays travel as base64 float32 in the model file's
metadata (JSON under "detector"), so .safetensors and .onnx files carry the same detector. No torch at
module level: ONNX scores with numpy.
"""

from __future__ import annotations

import base64
import json

import numpy as np

from .errors import DensaError

FORMAT = "densa.detector.v2"
FORMATS = ("densa.detector.v1", FORMAT)  # v1: no outlier network (files from densa before it had one)
QUANTILE = 0.99  # a held-out digit scores above the threshold this rarely
DISTANCE_QUANTILE = 0.995  # the distances' own scale: their largest at this quantile of held-out digits
COMPONENTS = 50  # principal components of the digits' pixels kept by the input-space part
FIT_IMAGES = 10_000  # training images the statistics are estimated on (a fixed random subset)
CALIBRATE_IMAGES = (
    5_000  # digits the threshold is set on (val split if there is one, else other training images)
)
SHRINK = 1e-3  # ridge added to the covariance's diagonal, as a share of its mean variance
UNSURE = 0.5  # an answer needs at least this probability; below it the model is "not sure"
MAX_FEATURES = 65536
PARTS = ("mahalanobis", "residual", "shape")  # the distances; "outlier" is the network's part
ARRAYS = ("means", "precision", "pixel_mean", "components", "shape_mean", "shape_precision")
NET_ARRAYS = ("feature_mean", "feature_scale", "stat_mean", "stat_scale", "w1", "b1", "w2", "b2")
OUTLIERS = 8000  # generated counter-examples the network learns from (core.outliers; cached)
HIDDEN = 128  # hidden units of each member of the network
MEMBERS = 3  # networks trained from different starts and averaged (one network of MEMBERS * HIDDEN units)
NET_STEPS, NET_BATCH, NET_LR = 300, 512, 6e-3


class DetectorError(DensaError):
    pass


class Detector:
    """Scores images by how unlike the training digits they are; > 1 is beyond the calibrated threshold.

    .arrays: "means" (classes, d) and "precision" (d, d) of the last layer's input features; "pixel_mean"
    (784,) and "components" (k, 784) of the digits' pixels; "shape_mean" (6,) and "shape_precision" (6, 6)
    of their shape_stats; and, for the outlier network (absent in v1 files), its input scaling
    ("feature_mean", "feature_scale" (d,), "stat_mean", "stat_scale" (6,)) and weights ("w1" (d + 9,
    HIDDEN), "b1", "w2" (HIDDEN, 1), "b2"). .scales: each part's (median, spread) on the fitting digits.
    .threshold: the QUANTILE of the held-out digits' combined score. .info: what it was fitted on.
    """

    def __init__(self, arrays: dict, scales: dict, threshold: float, info: dict | None = None):
        self.arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
        # what every scoring call needs, computed once: the arrays in float64 and each class's m'Pm
        self._wide = {k: self.arrays[k].astype(np.float64) for k in ARRAYS}
        means, precision = self._wide["means"], self._wide["precision"]
        self._mpm = ((means @ precision) * means).sum(1)
        self.scales = {k: (float(a), float(b)) for k, (a, b) in scales.items()}
        self.threshold = float(threshold)
        self.info = dict(info or {})

    @property
    def has_net(self) -> bool:
        return "w1" in self.arrays

    def __repr__(self) -> str:
        d = self.arrays["means"].shape
        parts = f"{d[1]} features x {d[0]} classes, pixel residual, shape" + (", outlier net" * self.has_net)
        return f"Detector({parts}; threshold {self.threshold:.3g})"

    def parts(self, features: np.ndarray, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Each part's raw score, {name: (N,)}, for (N, d) features and (N, 28, 28) pixels in [0, 1]."""
        parts, stats = self.distances(features, pixels)
        if self.has_net and "outlier" in self.scales:
            parts["outlier"] = self.net_logit(net_input(self.arrays, features, parts, stats, self.scales))
        return parts

    def distances(self, features, pixels) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """({name in PARTS: (N,) float64}, shape_stats (N, 6)). The products in float32, the sums that
        can cancel in float64."""
        a = self.arrays
        f = np.asarray(features, dtype=np.float32)
        fp = f @ a["precision"]
        # (f - m)' P (f - m) = f'Pf - 2 f'Pm + m'Pm, for every class at once: (N, classes)
        fpf = np.einsum("nd,nd->n", fp, f, dtype=np.float64)
        d2 = fpf[:, None] - 2 * (fp @ a["means"].T).astype(np.float64) + self._mpm[None]
        z = np.asarray(pixels, dtype=np.float32).reshape(len(f), -1) - a["pixel_mean"]
        # |z - z V'V|^2 = |z|^2 - |z V'|^2 (V's rows are orthonormal), without a second (N, 784) array
        zz = np.einsum("nd,nd->n", z, z, dtype=np.float64)
        zv = (z @ a["components"].T).astype(np.float64)
        residual = np.maximum(zz - (zv**2).sum(1), 0)
        stats = shape_stats(pixels)
        s = stats - self._wide["shape_mean"]
        shape = ((s @ self._wide["shape_precision"]) * s).sum(1)
        return {"mahalanobis": np.maximum(d2.min(1), 0), "residual": residual, "shape": shape}, stats

    def net_logit(self, x: np.ndarray) -> np.ndarray:
        """The outlier network's logit (N,) for its inputs (N, d + 9): above 0 it thinks "not a digit"."""
        a = self.arrays
        h = np.maximum(x.astype(np.float32) @ a["w1"] + a["b1"], 0)
        return (h @ a["w2"] + a["b2"])[:, 0].astype(np.float64)

    def raw(self, features, pixels) -> np.ndarray:
        """The largest of the parts, each scaled to (score - median) / spread of the fitting digits."""
        return _largest(self.parts(features, pixels), self.scales)

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
            fmt = d.get("format") if isinstance(d, dict) else None
            if isinstance(fmt, str) and fmt.startswith("densa.detector.") and fmt not in FORMATS:
                raise DetectorError(
                    f"{file}: its detector ({fmt}) was written by a newer densa; upgrade densa to use it"
                )
            ok = isinstance(d, dict) and d.get("format") in FORMATS
            v2 = ok and d["format"] == FORMAT
            arrays = {k: _array(d["arrays"][k]) for k in ARRAYS + NET_ARRAYS * v2}
            scales = {k: d["scales"][k] for k in PARTS + ("outlier",) * v2}
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
        ok = ok and (not v2 or _net_fits(arrays, dim))
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
    in these long before its pixels are. Only the row and column sums (accumulated in float64) and
    maxima are taken from the images: no copy of them is made."""
    x = np.asarray(pixels, dtype=np.float32).reshape(-1, 28, 28)
    row_sums, col_sums = x.sum(2, dtype=np.float64), x.sum(1, dtype=np.float64)
    mass = row_sums.sum(1) + 1e-6
    rows, cols = x.max(2) > 0.25, x.max(1) > 0.25
    idx = np.arange(28)

    def extent(m):
        first, last = m.argmax(1), 27 - m[:, ::-1].argmax(1)
        return np.where(m.any(1), last - first + 1, 0)

    h, w = extent(rows), extent(cols)
    r = row_sums @ idx / mass
    c = col_sums @ idx / mass
    sr = np.sqrt(np.maximum(row_sums @ idx**2 / mass - r**2, 0))
    sc = np.sqrt(np.maximum(col_sums @ idx**2 / mass - c**2, 0))
    fill = mass / np.maximum(h * w, 1)
    return np.stack([np.log(mass), h, w, fill, sr, sc], axis=1)


def net_input(arrays: dict, features, parts: dict, stats, scales: dict) -> np.ndarray:
    """The outlier network's input (N, d + 9) float32: the standardised features, log(1 + each scaled
    distance) (floored), and the standardised shape statistics."""
    f = (np.asarray(features, np.float32) - arrays["feature_mean"]) / arrays["feature_scale"]
    dist = np.stack([(parts[k] - m) / s for k, (m, s) in ((k, scales[k]) for k in PARTS)], 1)
    st = (stats - arrays["stat_mean"]) / arrays["stat_scale"]
    return np.concatenate([f, np.log1p(np.maximum(dist, -0.9)), st], 1).astype(np.float32)


def _net_fits(a: dict, dim: int) -> bool:
    h = a["w1"].shape[1] if a["w1"].ndim == 2 else 0
    shapes = {
        "feature_mean": (dim,), "feature_scale": (dim,), "stat_mean": (6,), "stat_scale": (6,),
        "w1": (dim + 9, h), "b1": (h,), "w2": (h, 1), "b2": (1,),
    }  # fmt: skip
    return h > 0 and all(a[k].shape == v for k, v in shapes.items()) and (a["feature_scale"] > 0).all()


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


def _gram(t) -> np.ndarray:
    """t.T @ t as float64, multiplied by torch in float32 (t: an (N, d) float32 tensor whose rows are
    centred, so float32 is plenty): a fraction of a second where numpy's float64 product took seconds."""
    return (t.T @ t).double().numpy()


def _top_vectors(gram: np.ndarray, k: int, iterations: int = 8) -> np.ndarray:
    """The k leading eigenvectors (k, n) of a symmetric positive semi-definite matrix: subspace
    iteration on k + 10 vectors from a fixed start, then the exact eigenvectors of the small projected
    matrix (numpy's full eigh of a 784 x 784 matrix took seconds on two cores; this takes milliseconds)."""
    n = len(gram)
    q = np.linalg.qr(np.random.default_rng(0).standard_normal((n, min(k + 10, n))))[0]
    for _ in range(iterations):
        q = np.linalg.qr(gram @ q)[0]
    values, small = np.linalg.eigh(q.T @ gram @ q)  # ascending
    return (q @ small[:, ::-1][:, :k]).T


def fit_statistics(feats: np.ndarray, labels: np.ndarray, pixels: np.ndarray, classes: int) -> dict:
    """The detector's arrays from the fitting digits: class means, shared precision, pixel PCA. The
    big products run in torch float32 on the (N, d) arrays as they are (one centred copy each); only
    the small results are float64."""
    import torch

    f = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32))
    lab = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    onehot = torch.nn.functional.one_hot(lab, classes).to(f.dtype)
    counts = onehot.sum(0, dtype=torch.float64)
    overall = f.sum(0, dtype=torch.float64) / max(len(f), 1)
    sums = (onehot.T @ f).double()
    means = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], overall).numpy()
    cov = _gram(f - torch.from_numpy(means.astype(np.float32))[lab]) / max(len(f) - 1, 1)
    d = cov.shape[0]
    cov[np.diag_indices(d)] += SHRINK * max(np.trace(cov) / d, 1e-12)
    precision = np.linalg.inv(cov)
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32).reshape(len(pixels), -1))
    pixel_mean = x.sum(0, dtype=torch.float64).numpy() / max(len(x), 1)
    vt = _top_vectors(_gram(x - torch.from_numpy(pixel_mean.astype(np.float32))), COMPONENTS)
    stats = shape_stats(pixels)
    shape_mean = stats.mean(0)
    shape_cov = np.cov(stats - shape_mean, rowvar=False)
    shape_cov[np.diag_indices(6)] += 1e-3 * np.diag(shape_cov).mean() + 1e-9
    return {
        "means": means,
        "precision": precision,
        "pixel_mean": pixel_mean,
        "components": vt,
        "shape_mean": shape_mean,
        "shape_precision": np.linalg.inv(shape_cov),
    }


def fit_detector(model, images, labels, calibration=None, seed: int = 0) -> Detector:
    """Fit the detector for a trained densa MLP or CNN.

    `images`, `labels`: training digits (uint8 (N, 28, 28) and (N,)); FIT_IMAGES of them (a fixed random
    subset for `seed`) give the statistics and the network's digits; OUTLIERS generated non-digits
    (core.outliers, cached in densa's user cache) its counter-examples. `calibration`: held-out digits
    (the val split) whose QUANTILE sets the threshold; without it, CALIBRATE_IMAGES other training images
    do (info says which).
    """
    import torch

    from .outliers import cached_outliers

    labels = np.asarray(torch.as_tensor(labels).cpu())
    n = len(labels)
    order = np.random.default_rng(seed).permutation(n)
    held = 0 if calibration is not None else min(CALIBRATE_IMAGES, n // 4)  # kept out of the fit
    fit_idx = np.sort(order[held : held + FIT_IMAGES])
    pixels = np.asarray(torch.as_tensor(images)[torch.as_tensor(fit_idx)].cpu())
    feats, logits = features_and_logits(model, pixels)
    unit = _unit(pixels)
    stats = fit_statistics(feats, labels[fit_idx], unit, logits.shape[1])
    probe = Detector(stats, dict.fromkeys(PARTS, (0, 1)), 1.0)
    digits = (feats, *probe.distances(feats, unit))
    scales = {k: _scale(v) for k, v in digits[1].items()}
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
    held_out = (cal_feats, *probe.distances(cal_feats, _unit(cal)))
    # the three distances on one footing with the network: their largest over its DISTANCE_QUANTILE on
    # the held-out digits
    base = float(np.quantile(_largest(held_out[1], scales), DISTANCE_QUANTILE))
    scales = {k: (m, s * max(base, 1e-6)) for k, (m, s) in scales.items()}
    others = cached_outliers(OUTLIERS)
    other_feats, _ = features_and_logits(model, others)
    negatives = (other_feats, *probe.distances(other_feats, _unit(others)))
    stats.update(fit_net(scales, digits, negatives, seed))
    probe = Detector(stats, scales, 1.0)
    scales["outlier"] = _scale(probe.net_logit(net_input(stats, *digits, scales)))
    cal_parts = {**held_out[1], "outlier": probe.net_logit(net_input(stats, *held_out, scales))}
    threshold = float(np.quantile(_largest(cal_parts, scales), QUANTILE))
    info = {
        "method": "max(mahalanobis distance of the last layer's input, pixel residual outside "
        f"{COMPONENTS} principal components, mahalanobis distance of 6 shape statistics, {MEMBERS} averaged "
        f"{HIDDEN}-unit networks telling digits from {len(others)} generated non-digits)",
        "fitted_on": f"{len(fit_idx)} training images",
        "calibrated_on": f"{len(cal)} {source}",
        "quantile": QUANTILE,
        "seed": seed,
    }
    return Detector(stats, scales, max(threshold, 1e-6), info)


def _scale(v: np.ndarray) -> tuple[float, float]:
    """(median, 99th percentile - median) of a part's scores on the fitting digits."""
    med = float(np.median(v))
    return med, float(np.quantile(v, 0.99) - med) or 1.0


def _unit(pixels: np.ndarray) -> np.ndarray:
    return np.asarray(pixels, dtype=np.float32) / np.float32(255)


def _largest(parts: dict, scales: dict) -> np.ndarray:
    return np.maximum.reduce([(parts[k] - m) / s for k, (m, s) in scales.items()])


def _train_members(x, y, seed: int) -> list:
    """[(w1 (n, HIDDEN), b1, w2 (HIDDEN,), b2 ()) for each of MEMBERS networks] of HIDDEN ReLU units and
    a logit, each from its own random start and on its own random batches, trained by binary
    cross-entropy. The gradients are written out (member_grads, no autograd); one call of torch's
    fused Adam kernel (as densa's optimisers) updates all the members."""
    import torch

    n = x.shape[1]
    gens = [torch.Generator().manual_seed(seed * MEMBERS + k) for k in range(MEMBERS)]  # one stream each
    members = [
        [torch.randn(n, HIDDEN, generator=g) / n**0.5, torch.zeros(HIDDEN)]
        + [torch.randn(HIDDEN, 1, generator=g)[:, 0] / HIDDEN**0.5, torch.zeros(())]
        for g in gens
    ]
    params = [p for member in members for p in member]
    m, v = [torch.zeros_like(p) for p in params], [torch.zeros_like(p) for p in params]
    steps = [torch.zeros(()) for _ in params]
    xb = torch.empty(NET_BATCH, n)
    for _ in range(NET_STEPS):
        grads = []
        for member, g in zip(members, gens):
            i = torch.randint(len(x), (NET_BATCH,), generator=g)
            grads += member_grads(torch.index_select(x, 0, i, out=xb), y[i], *member)
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params, grads, m, v, [], steps, lr=NET_LR, beta1=0.9, beta2=0.999,
            weight_decay=1e-4, eps=1e-8, amsgrad=False, maximize=False,
        )  # fmt: skip
    return members


def member_grads(xb, yb, w1, b1, w2, b2) -> list:
    """The gradients [w1, b1, w2, b2] of one member's mean binary cross-entropy on the batch xb (B, n)
    with targets yb (B,)."""
    import torch

    h = torch.addmm(b1, xb, w1).relu_()
    dz = (torch.sigmoid(h @ w2 + b2) - yb) / len(xb)  # d(mean binary cross-entropy)/d(logit)
    dh = torch.outer(dz, w2).mul_(h > 0)
    return [xb.T @ dh, dh.sum(0), dz @ h, dz.sum()]


def fit_net(scales: dict, digits, others, seed: int) -> dict:
    """The outlier network's arrays: MEMBERS averaged networks of HIDDEN ReLU units and one logit,
    trained (Adam, NET_STEPS steps of NET_BATCH, binary cross-entropy) to say 1 for `others` and 0 for
    `digits`, each (features, distances, shape stats). Its own torch generators: the global random state
    is left as it was."""
    import torch

    feats, _, stat_values = digits
    scaling = {
        "feature_mean": feats.mean(0),
        "feature_scale": feats.std(0) + 1e-3,
        "stat_mean": stat_values.mean(0),
        "stat_scale": stat_values.std(0) + 1e-6,
    }
    scaling = {k: v.astype(np.float32) for k, v in scaling.items()}
    x = torch.from_numpy(
        np.concatenate([net_input(scaling, *digits, scales), net_input(scaling, *others, scales)])
    )
    y = torch.cat([torch.zeros(len(feats)), torch.ones(len(others[0]))])
    members = _train_members(x, y, seed)
    # the members' mean logit is one network: their hidden units side by side, each output weight / MEMBERS
    net = {
        "w1": torch.cat([w1 for w1, _, _, _ in members], 1),
        "b1": torch.cat([b1 for _, b1, _, _ in members]),
        "w2": torch.cat([w2 for _, _, w2, _ in members])[:, None] / MEMBERS,
        "b2": sum(b2 for _, _, _, b2 in members).reshape(1) / MEMBERS,
    }
    return {**scaling, **{k: t.numpy() for k, t in net.items()}}
