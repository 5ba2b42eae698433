"""The secondary model: a small U-Net predicting v from x_t in cosine-schedule time.

Architecture of v-diffusion's "SecondaryDiffusionImageNet2" (the 55 MB
secondary_model_imagenet_2.pth that Disco Diffusion uses), written for this project:
an input of 3 image channels plus 16 Fourier time features, two 3x3 conv+ReLU blocks
per level, five nested skip levels (average-pool down, bilinear up, concatenated
skips) and a final 3x3 conv to v. Its state-dict keys and shapes match the public
checkpoint exactly (49 tensors; see tests/data/secondary-model-keys.txt).

Given v at time t (alpha = cos(t*pi/2), sigma = sin(t*pi/2)):
``pred = x*alpha - v*sigma`` and ``eps = x*sigma + v*alpha``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

FULL_BASE_CHANNELS = 64
"""Base width of the published checkpoint; channel multipliers 1, 2, 2, 4, 4, 8."""

CHANNEL_MULTIPLIERS = (1, 2, 2, 4, 4, 8)
FOURIER_FEATURES = 16


def alpha_sigma_to_t(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Cosine-schedule time in [0, 1] of a (signal, noise) scale pair."""
    return torch.atan2(sigma, alpha) * 2 / math.pi


def alpha_sigma_to_t_float(alpha: float, sigma: float) -> float:
    """Same as ``alpha_sigma_to_t`` on python floats (no device round trip)."""
    return math.atan2(sigma, alpha) * 2 / math.pi


def t_to_alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha, sigma) of cosine-schedule time t."""
    return torch.cos(t * math.pi / 2), torch.sin(t * math.pi / 2)


@dataclass
class SecondaryOutput:
    """What the secondary model predicts: v, the clean image and the noise."""

    v: torch.Tensor
    pred: torch.Tensor
    eps: torch.Tensor


class FourierTimeFeatures(nn.Module):
    """Random Fourier features of a scalar time: cos and sin of 2*pi*t*w."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        if out_features % 2:
            raise ValueError("out_features must be even")
        self.weight = nn.Parameter(torch.randn(out_features // 2, in_features))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * t @ self.weight.T
        return torch.cat([angles.cos(), angles.sin()], dim=-1)


def _conv_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True))


class _ConcatSkip(nn.Module):
    """Runs ``main`` and concatenates its output with the untouched input."""

    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.main(x), x], dim=1)


def _level(widths: list[int], down: nn.Module, up: nn.Module) -> _ConcatSkip:
    """One resolution level: down, 2 convs, the deeper level (or the bottom), convs, up.

    ``widths[0]`` is the width of the level above (the input), ``widths[1]`` this level's.
    """
    outer, inner = widths[0], widths[1]
    if len(widths) == 2:  # bottom: four convs, back to the outer width
        return _ConcatSkip(
            down,
            _conv_relu(outer, inner),
            _conv_relu(inner, inner),
            _conv_relu(inner, inner),
            _conv_relu(inner, outer),
            up,
        )
    return _ConcatSkip(
        down,
        _conv_relu(outer, inner),
        _conv_relu(inner, inner),
        _level(widths[1:], down, up),
        _conv_relu(inner * 2, inner),
        _conv_relu(inner, outer),
        up,
    )


class SecondaryDiffusionModel(nn.Module):
    """v-prediction U-Net of the published secondary model (or a narrower test copy)."""

    def __init__(self, base_channels: int = FULL_BASE_CHANNELS) -> None:
        super().__init__()
        widths = [base_channels * m for m in CHANNEL_MULTIPLIERS]
        self.timestep_embed = FourierTimeFeatures(1, FOURIER_FEATURES)
        down = nn.AvgPool2d(2)
        up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.net = nn.Sequential(
            _conv_relu(3 + FOURIER_FEATURES, widths[0]),
            _conv_relu(widths[0], widths[0]),
            _level(widths, down, up),
            _conv_relu(widths[0] * 2, widths[0]),
            nn.Conv2d(widths[0], 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> SecondaryOutput:
        """x: noisy image [N,3,H,W] (H, W multiples of 32); t: cosine time [N]."""
        features = self.timestep_embed(t[:, None].to(x.dtype))
        planes = features[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        v = self.net(torch.cat([x, planes], dim=1))
        alpha, sigma = t_to_alpha_sigma(t.to(x.dtype))
        alpha, sigma = alpha[:, None, None, None], sigma[:, None, None, None]
        return SecondaryOutput(v=v, pred=x * alpha - v * sigma, eps=x * sigma + v * alpha)
