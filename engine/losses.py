"""The guidance losses of Disco Diffusion, as small pure functions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from engine.errors import InvalidSpec
from engine.spec import WEIGHT_SUM_EPSILON



def spherical_distance_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance (x2) between L2-normalised embeddings, broadcast."""
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    return (a - b).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    """L2 total variation per image (replicate-padded right and bottom edge)."""
    padded = F.pad(image, (0, 1, 0, 1), "replicate")
    dx = padded[..., :-1, 1:] - padded[..., :-1, :-1]
    dy = padded[..., 1:, :-1] - padded[..., :-1, :-1]
    return (dx**2 + dy**2).mean([1, 2, 3])


def range_loss(image: torch.Tensor) -> torch.Tensor:
    """Mean squared excess of values outside [-1, 1], per image."""
    return (image - image.clamp(-1, 1)).pow(2).mean([1, 2, 3])


def saturation_loss(image: torch.Tensor) -> torch.Tensor:
    """Mean absolute excess outside [-1, 1], per image (DD's sat loss, which DD takes over
    its batch of one)."""
    return (image - image.clamp(-1, 1)).abs().mean([1, 2, 3])


def normalised_weights(weights: Sequence[float]) -> list[float]:
    """Weights divided by the magnitude of their sum (signs kept); refuses a sum near 0."""
    total = float(sum(weights))
    if abs(total) < WEIGHT_SUM_EPSILON:
        raise InvalidSpec(
            f"prompt weights {list(weights)} sum to {total:g}; the sum must not be 0 "
            "(weights are divided by it): change a weight"
        )
    return [float(w) / abs(total) for w in weights]


def clamp_gradient(grad: torch.Tensor, clamp_max: float) -> torch.Tensor:
    """Scale each image's ``grad`` [N, ...] so that its RMS is at most ``clamp_max`` (zero
    stays zero)."""
    magnitude = grad.square().mean(list(range(1, grad.dim())), keepdim=True).sqrt()
    return grad * (magnitude.clamp(max=clamp_max) / magnitude.clamp(min=1e-30))
