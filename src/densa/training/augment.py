"""Augmentation beyond whole-pixel shifts: small random rotations and zooms of each training image.

The training loop calls `random_affine` on a batch of uint8 images (B, 28, 28) when `--rotate` or
`--scale` is set; each image gets its own angle and zoom factor from the run's seeded generator, and
is resampled bilinearly about its centre (what leaves the frame is lost, what enters is black).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def affine_params(n: int, rotate: float, scale: float, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Each image's angle in radians, uniform in [-rotate, rotate] degrees, and zoom in [1-scale, 1+scale]."""
    u = torch.rand(2, n, generator=g, dtype=torch.float64) * 2 - 1  # both in [-1, 1)
    return u[0] * math.radians(rotate), 1 + u[1] * scale


def random_affine(images: torch.Tensor, rotate: float, scale: float, g: torch.Generator) -> torch.Tensor:
    """Rotate each uint8 image (B, 28, 28) by up to +-`rotate` degrees and zoom it by a factor in
    [1 - `scale`, 1 + `scale`] about its centre; returns uint8 images of the same shape."""
    return affine(images, *affine_params(len(images), rotate, scale, g))


def affine(images: torch.Tensor, angle: torch.Tensor, zoom: torch.Tensor) -> torch.Tensor:
    """Image i (uint8, B x 28 x 28) turned by angle[i] radians (clockwise as displayed: rows
    running down) and magnified zoom[i] times about its centre, resampled bilinearly; uint8 out."""
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    zero = torch.zeros_like(cos)
    # affine_grid maps each output pixel (x right, y down) to the input point it samples: the inverse motion
    theta = torch.stack([torch.stack([cos, sin, zero], 1), torch.stack([-sin, cos, zero], 1)], 1)
    x = images.unsqueeze(1).float()
    grid = F.affine_grid(theta.float().to(images.device), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(1).round_().clamp_(0, 255).to(torch.uint8)
