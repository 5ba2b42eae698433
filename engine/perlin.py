"""Perlin-noise init images (DD's ``perlin_init`` with modes mixed / color / gray).

DD sums octaves of gradient noise (amplitude 0.5 * 1.5**-k) on a 4096 px (12 octaves
from 1 cell) and a 1024 px (8 octaves from 4 cells) grid, resizes to the image size,
quantises to 8 bits, stretches each channel to the full range (PIL autocontrast) and
averages the two layers. Here each octave is evaluated at no more samples than the
output needs and the field is resized with antialiasing, so octaves finer than the output
are averaged away: cheap on the CPU, smooth. DD's resize (``TF.resize`` on a tensor, with
the torchvision of its day) did not antialias, so in DD those fine octaves aliased into a
faint grain (about +-3% before the autocontrast); that grain is deliberately left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PERLIN_MODES = ("mixed", "color", "gray")


def _fade(t: torch.Tensor) -> torch.Tensor:
    return 3 * t**2 - 2 * t**3


def gradient_noise(cells: int, samples: int, generator: torch.Generator, device) -> torch.Tensor:
    """One octave: ``cells`` x ``cells`` gradient-noise cells, ``samples`` points per cell
    side, as a [cells*samples, cells*samples] field (zero at the lattice points)."""
    grads = torch.randn(2, cells + 1, cells + 1, 1, 1, generator=generator, device=device)
    gx, gy = grads[0], grads[1]
    xs = torch.linspace(0, 1, samples + 1, device=device)[:-1, None]
    ys = torch.linspace(0, 1, samples + 1, device=device)[None, :-1]
    wx = 1 - _fade(xs)
    wy = 1 - _fade(ys)
    dots = wx * wy * (gx[:-1, :-1] * xs + gy[:-1, :-1] * ys)
    dots = dots + (1 - wx) * wy * (-gx[1:, :-1] * (1 - xs) + gy[1:, :-1] * ys)
    dots = dots + wx * (1 - wy) * (gx[:-1, 1:] * xs - gy[:-1, 1:] * (1 - ys))
    dots = dots + (1 - wx) * (1 - wy) * (-gx[1:, 1:] * (1 - xs) - gy[1:, 1:] * (1 - ys))
    return dots.permute(0, 2, 1, 3).reshape(cells * samples, cells * samples)


def octave_noise(
    amplitudes: list[float],
    base_cells: int,
    channels: int,
    height: int,
    width: int,
    generator: torch.Generator,
    device,
) -> torch.Tensor:
    """0.5 + sum of octaves (cells doubling each octave), resized to [channels, H, W]."""
    full_resolution = base_cells * 2 ** len(amplitudes)
    needed = 2 * max(height, width)
    out = torch.full((channels, height, width), 0.5, device=device)
    for channel in range(channels):
        cells = base_cells
        for amplitude in amplitudes:
            samples_full = full_resolution // cells
            reduce = max(1, full_resolution // max(needed, 1))
            samples = samples_full // reduce
            # Draw the gradients even for skipped octaves: same random stream either way.
            if samples >= 2:
                field = gradient_noise(cells, samples, generator, device)
                resized = F.interpolate(
                    field[None, None], size=(height, width), mode="bilinear", antialias=True, align_corners=False
                )[0, 0]
                out[channel] += resized * amplitude
            else:
                torch.randn(2, cells + 1, cells + 1, 1, 1, generator=generator, device=device)
            cells *= 2
    return out


def autocontrast_8bit(image01: torch.Tensor) -> torch.Tensor:
    """Quantise to 8 bits (truncating, as PIL conversion) and stretch each channel to 0..255."""
    q = torch.floor(image01.clamp(0, 1) * 255)
    lo = q.amin(dim=(-2, -1), keepdim=True)
    hi = q.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    scale = 255.0 / span.clamp(min=1)
    stretched = torch.floor(q * scale - lo * scale).clamp(0, 255)
    return torch.where(span > 0, stretched, q) / 255.0


def perlin_layer(
    amplitudes: list[float], base_cells: int, grayscale: bool, height: int, width: int, generator, device
) -> torch.Tensor:
    channels = 1 if grayscale else 3
    noise = octave_noise(amplitudes, base_cells, channels, height, width, generator, device)
    return autocontrast_8bit(noise).expand(3, -1, -1)


def perlin_init_image(
    mode: str, height: int, width: int, generator: torch.Generator, device
) -> torch.Tensor:
    """DD's Perlin init, [1, 3, H, W] in [-1, 1]."""
    if mode not in PERLIN_MODES:
        raise ValueError(f"perlin_mode must be one of {PERLIN_MODES}, got {mode!r}")
    coarse = [1.5**-i * 0.5 for i in range(12)]
    fine = [1.5**-i * 0.5 for i in range(8)]
    first_gray = mode == "gray"
    second_gray = mode != "color"
    first = perlin_layer(coarse, 1, first_gray, height, width, generator, device)
    second = perlin_layer(fine, 4, second_gray, height, width, generator, device)
    return ((first + second) / 2).mul(2).sub(1)[None]
