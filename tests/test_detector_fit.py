"""The detector's fitting maths against plain references: the outlier members' written-out gradients
against autograd, the shape statistics against a per-image float64 loop, and the statistics (class
means, shared precision, principal components) against numpy in float64."""

import numpy as np
import pytest
import torch

from densa.core.detector import COMPONENTS, SHRINK, fit_statistics, member_grads, shape_stats


def test_member_gradients_are_autograds():
    g = torch.Generator().manual_seed(1)
    params = [torch.randn(s, generator=g, dtype=torch.float64) for s in [(7, 5), (5,), (5,), ()]]
    xb = torch.randn(11, 7, generator=g, dtype=torch.float64)
    yb = (torch.rand(11, generator=g) > 0.5).double()
    got = member_grads(xb, yb, *params)
    w1, b1, w2, b2 = [p.clone().requires_grad_() for p in params]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(torch.relu(xb @ w1 + b1) @ w2 + b2, yb)
    for have, want in zip(got, torch.autograd.grad(loss, [w1, b1, w2, b2]), strict=True):
        assert have.shape == want.shape and torch.allclose(have, want, rtol=1e-10, atol=1e-12)


def reference_shape_stats(image: np.ndarray) -> list[float]:
    x = image.astype(np.float64)
    mass = x.sum() + 1e-6
    ys, xs = np.nonzero(x > 0.25)
    h = ys.max() - ys.min() + 1 if len(ys) else 0
    w = xs.max() - xs.min() + 1 if len(xs) else 0
    idx = np.arange(28)
    r, c = (x.sum(1) * idx).sum() / mass, (x.sum(0) * idx).sum() / mass
    sr = np.sqrt(max((x.sum(1) * idx**2).sum() / mass - r**2, 0))
    sc = np.sqrt(max((x.sum(0) * idx**2).sum() / mass - c**2, 0))
    return [np.log(mass), h, w, mass / max(h * w, 1), sr, sc]


def test_shape_statistics_match_a_per_image_reference():
    rng = np.random.default_rng(0)
    images = np.zeros((4, 28, 28), np.float32)
    images[0, 5:20, 10:13] = 1.0  # a bar
    images[1] = rng.random((28, 28)) * (rng.random((28, 28)) > 0.9)  # specks
    images[2, 14, 14] = 0.2  # too faint to count towards the extent
    got = shape_stats(images)
    assert got.shape == (4, 6) and got.dtype == np.float64
    for image, row in zip(images, got, strict=True):
        assert np.allclose(row, reference_shape_stats(image), rtol=1e-6, atol=1e-9)
    assert got[0][1:3].tolist() == [15, 3] and got[3][1:3].tolist() == [0, 0]


@pytest.mark.parametrize("empty_class", [False, True])
def test_statistics_match_numpy_in_float64(empty_class):
    rng = np.random.default_rng(1)
    feats = (rng.random((600, 16)) * rng.random(16) * 4).astype(np.float32)
    labels = rng.integers(0, 3 if empty_class else 4, 600)
    # pixels with a clearly falling spectrum, so the leading components are well defined
    basis = np.linalg.qr(rng.standard_normal((784, 8)))[0].T
    weights = rng.standard_normal((600, 8)) * (8.0 / np.arange(1, 9))
    pixels = (weights @ basis + 0.01 * rng.standard_normal((600, 784)) + 0.5).astype(np.float32)
    pixels = pixels.reshape(600, 28, 28)
    got = fit_statistics(feats, labels, pixels, 4)
    f = feats.astype(np.float64)
    means = np.stack([f[labels == c].mean(0) if (labels == c).any() else f.mean(0) for c in range(4)])
    assert np.allclose(got["means"], means, rtol=1e-5, atol=1e-6)
    centred = f - means[labels]
    cov = centred.T @ centred / (len(f) - 1)
    cov[np.diag_indices(16)] += SHRINK * np.trace(cov) / 16
    assert np.allclose(got["precision"], np.linalg.inv(cov), rtol=1e-3, atol=1e-4)
    x = pixels.reshape(600, -1).astype(np.float64)
    assert np.allclose(got["pixel_mean"], x.mean(0), atol=1e-6)
    z = x - x.mean(0)
    top = np.linalg.eigh(z.T @ z)[1][:, ::-1][:, :COMPONENTS].T
    # the same subspace: each component is (up to sign) a combination of the exact leading ones
    overlap = np.abs(got["components"] @ top.T)
    assert got["components"].shape == (COMPONENTS, 784)
    assert np.allclose(np.linalg.svd(overlap[:8, :8], compute_uv=False), 1, atol=1e-3)
