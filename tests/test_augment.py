"""Rotations and zooms (densa.training.augment) against exact oracles, and their use in a training run."""

import math

import pytest
import torch

import densa
from densa.training.augment import affine, affine_params, random_affine


def _ones(n, v=1.0):
    return torch.full((n,), v, dtype=torch.float64)


def test_identity_and_quarter_turns_are_exact():
    x = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    assert torch.equal(affine(x, _ones(4, 0.0), _ones(4)), x)
    # a quarter turn maps pixel centres onto pixel centres: the same as rot90 (clockwise as displayed)
    assert torch.equal(affine(x, _ones(4, math.pi / 2), _ones(4)), torch.rot90(x, -1, (1, 2)))
    assert torch.equal(affine(x, _ones(4, -math.pi / 2), _ones(4)), torch.rot90(x, 1, (1, 2)))
    assert torch.equal(affine(x, _ones(4, math.pi), _ones(4)), x.flip(1, 2))


def test_zoom_grows_and_shrinks_about_the_centre():
    x = torch.zeros(1, 28, 28, dtype=torch.uint8)
    x[0, 12:16, 12:16] = 255  # a 4 x 4 square at the centre
    big = affine(x, _ones(1, 0.0), _ones(1, 2.0))
    small = affine(x, _ones(1, 0.0), _ones(1, 0.5))
    total = x.float().sum().item()
    assert big.float().sum().item() == pytest.approx(4 * total, rel=0.02)  # area x 2^2
    assert small.float().sum().item() == pytest.approx(total / 4, rel=0.02)
    for img in (big, small):
        rows, cols = img[0].float().sum(1), img[0].float().sum(0)
        centre = torch.arange(28.0)
        assert ((rows @ centre) / rows.sum()).item() == pytest.approx(13.5)  # the centre stays where it was
        assert ((cols @ centre) / cols.sum()).item() == pytest.approx(13.5)


def test_random_affine_draws_each_image_its_own_seeded_motion():
    x = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    out = random_affine(x, 10.0, 0.1, torch.Generator().manual_seed(5))
    angle, zoom = affine_params(64, 10.0, 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(out, affine(x, angle, zoom)) and out.dtype == torch.uint8
    assert angle.abs().max() <= math.radians(10) and (zoom - 1).abs().max() <= 0.1
    assert angle.std() > math.radians(3) and len(set(angle.tolist())) == 64
    assert torch.equal(random_affine(x, 0.0, 0.0, torch.Generator()), x)


def test_training_with_rotations_is_seeded_and_checked(synth):
    ds = densa.load_dataset("synth")
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = densa.MLP([784, 16, 10])
        densa.train(model, ds.train_images, ds.train_labels, epochs=1, rotate=8.0, scale=0.1)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])
    torch.manual_seed(0)
    plain = densa.MLP([784, 16, 10])
    densa.train(plain, ds.train_images, ds.train_labels, epochs=1)
    assert not torch.equal(runs[0], torch.cat([p.detach().flatten() for p in plain.parameters()]))
    with pytest.raises(densa.DensaError, match=r"rotate must be a number of degrees in \[0, 45\]"):
        densa.TrainConfig(rotate=90)
    with pytest.raises(densa.DensaError, match=r"scale must be a number in \[0, 0.5\]"):
        densa.TrainConfig(scale=-0.1)
