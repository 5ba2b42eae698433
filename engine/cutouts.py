"""Cutouts: the crops of the predicted image that CLIP looks at (DD's "Dango" cuts).

Per cut batch (DD's ``MakeCutoutsDango``):
- ``overview`` whole-image cuts: the image zero-padded to a square and resized to the
  CLIP input size; with 1-4 overview cuts they are the plain cut, its grayscale, its
  mirror and the grayscale mirror (in that order); with more, plain copies.
- ``innercut`` zoomed crops: side ``int(r ** ic_pow * (max - min) + min)`` with r
  uniform in [0, 1), ``max`` the short image side and ``min`` min(short side, cut
  size), at a uniform random offset; crop ``i`` is grayscale when
  ``i <= int(icgray_p * innercut)`` (so the first one always is, as in DD).
- then, unless ``skip_augs``, augmentations (``engine.spec.CutAugmentations``; DD picks
  them by animation mode): for stills mirror (p 0.5), noise, rotation of up to 10
  degrees with up to 5% translation, noise, grayscale (p 0.1), noise and a colour jitter
  (brightness, contrast, saturation 0.1, hue 0.1); 2D/3D animation the same with mirror
  p 0.4 and hue 0.3; Video Input a nearest-neighbour rotation of up to 15 degrees with
  10% translation, a perspective warp (0.4, p 0.7), grayscale p 0.15 and no jitter.

Differences from DD, on purpose: augmentation parameters are drawn per cut (DD's
torchvision transforms drew one set for the whole batch), all cuts of all cut
batches are built at once (one CLIP call), and resizing is torch's antialiased
bicubic instead of ResizeRight's. Crop geometry comes from a host ``random.Random``
(python ints, no device sync); per-cut random values from a ``torch.Generator``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.spec import STILL_AUGMENTATIONS, CutAugmentations

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


def grayscale3(images: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of [N,3,H,W] images, repeated on 3 channels."""
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    luma = GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b
    return luma.expand(-1, 3, -1, -1)


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bicubic resize to size x size."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


def pad_to_square(images: torch.Tensor) -> torch.Tensor:
    """Zero-pad the short side (centred, DD's arithmetic) so the image is square-ish."""
    height, width = images.shape[-2:]
    short = min(height, width)
    pad_w = (height - short) // 2  # tall images get width padding
    pad_h = (width - short) // 2  # wide images get height padding
    return F.pad(images, (pad_w, pad_w, pad_h, pad_h))


def inner_cut_sizes_and_offsets(
    height: int, width: int, cut_size: int, count: int, ic_pow: float, rng: random.Random
) -> list[tuple[int, int, int]]:
    """(side, x, y) of ``count`` inner crops (python ints)."""
    max_size = min(width, height)
    min_size = min(width, height, cut_size)
    cuts = []
    for _ in range(count):
        side = int(rng.random() ** ic_pow * (max_size - min_size) + min_size)
        x = rng.randrange(0, width - side + 1)
        y = rng.randrange(0, height - side + 1)
        cuts.append((side, x, y))
    return cuts


def overview_cuts(images01: torch.Tensor, cut_size: int, count: int) -> list[torch.Tensor]:
    """DD's overview cuts of [1,3,H,W] images in [0, 1]."""
    if count <= 0:
        return []
    base = resize_square(pad_to_square(images01), cut_size)
    if count > 4:
        return [base] * count
    variants = [base, grayscale3(base), base.flip(-1), grayscale3(base.flip(-1))]
    return variants[:count]


def make_cutouts(
    images01: torch.Tensor,
    cut_size: int,
    overview: int,
    innercut: int,
    ic_pow: float,
    icgray_p: float,
    batches: int,
    rng: random.Random,
) -> torch.Tensor:
    """All cuts of ``batches`` cut batches, [batches*(overview+innercut), 3, S, S]."""
    height, width = images01.shape[-2:]
    overview_set = overview_cuts(images01, cut_size, overview)
    gray_until = int(icgray_p * innercut)
    pieces: list[torch.Tensor] = []
    for _ in range(batches):
        pieces.extend(overview_set)
        geometry = inner_cut_sizes_and_offsets(height, width, cut_size, innercut, ic_pow, rng)
        for i, (side, x, y) in enumerate(geometry):
            crop = images01[:, :, y : y + side, x : x + side]
            if i <= gray_until:
                crop = grayscale3(crop)
            pieces.append(resize_square(crop, cut_size))
    return torch.cat(pieces)


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device, dtype=torch.float32):
    return torch.rand(n, generator=generator, device=device, dtype=dtype) * (high - low) + low


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values[:, None, None, None]


def affine_grids(angles_deg: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor,
                 mirror: torch.Tensor | None = None) -> torch.Tensor:
    """[N,2,3] ``affine_grid`` matrices: rotate about the centre, shift (in fractions of
    the side) and, where ``mirror`` is True, mirror the input first."""
    radians = angles_deg * (math.pi / 180.0)
    cos, sin = radians.cos(), radians.sin()
    flip = torch.ones_like(cos) if mirror is None else 1.0 - 2.0 * mirror.to(cos.dtype)
    return torch.stack(
        [
            torch.stack([cos * flip, -sin * flip, 2 * shift_x * flip], dim=1),  # mirror: x of the source negated
            torch.stack([sin, cos, 2 * shift_y], dim=1),
        ],
        dim=1,
    )


def rotate_translate(images: torch.Tensor, angles_deg: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor,
                     mirror: torch.Tensor | None = None, mode: str = "bilinear") -> torch.Tensor:
    """Rotate each image about its centre and shift it (shifts in fractions of the side),
    mirrored first where ``mirror`` is True; one resampling (``mode``), zeros outside."""
    theta = affine_grids(angles_deg, shift_x, shift_y, mirror).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)


# Colour operations as per-image 3x3 matrices acting on RGB.
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
YIQ_TO_RGB = ((1.0, 0.956, 0.621), (1.0, -0.272, -0.647), (1.0, -1.106, 1.703))
IDENTITY = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
GRAY = (GRAY_WEIGHTS,) * 3  # every output channel is grayscale3's luma


@functools.lru_cache(maxsize=32)
def constant_matrix(rows: tuple[tuple[float, ...], ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A constant matrix made on ``device`` by fills (``torch.tensor``, and even ``out[i, j] =
    value``, copy from the host: a sync inside a sampler step); made once per device and dtype."""
    out = torch.empty(len(rows), len(rows[0]), device=device, dtype=dtype)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            out[i, j].fill_(value)
    return out


def saturation_matrices(factors: torch.Tensor) -> torch.Tensor:
    """[N,3,3]: blend with the luma by ``factors`` (1 keeps the colour, 0 is gray)."""
    f = factors[:, None, None]
    eye = constant_matrix(IDENTITY, factors.device, factors.dtype)
    return f * eye + (1 - f) * constant_matrix(GRAY, factors.device, factors.dtype)


def hue_matrices(turns: torch.Tensor) -> torch.Tensor:
    """[N,3,3]: hue shifted by ``turns`` of a circle (a rotation of the YIQ chroma plane)."""
    angle = turns * (2 * math.pi)
    cos, sin = angle.cos(), angle.sin()
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    rotation = torch.stack(
        [torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1), torch.stack([zero, sin, cos], 1)], 1
    )
    to_yiq = constant_matrix(RGB_TO_YIQ, turns.device, turns.dtype)
    to_rgb = constant_matrix(YIQ_TO_RGB, turns.device, turns.dtype)
    return to_rgb @ rotation @ to_yiq


def mix_channels(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Apply a [N,3,3] colour matrix to each of the [N,3,H,W] images (one batched matmul;
    ``bmm`` itself: einsum's backward took 2.5x as long on the CPU)."""
    n, channels = images.shape[:2]
    return torch.bmm(matrices.to(images.dtype), images.reshape(n, channels, -1)).view(images.shape)


def mix_two(images: torch.Tensor, matrices: torch.Tensor, others: torch.Tensor, other_matrices: torch.Tensor
            ) -> torch.Tensor:
    """``mix_channels(images, matrices) + mix_channels(others, other_matrices)`` in two
    batched matmuls (the second accumulates into the first)."""
    n, channels = images.shape[:2]
    mixed = mix_channels(images, matrices).view(n, channels, -1)
    both = torch.baddbmm(mixed, other_matrices.to(images.dtype), others.reshape(n, channels, -1))
    return both.view(images.shape)


def clamp01(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1]; the gradient passes strictly inside, 0 at the bounds (as torch
    2.14's ``clamp`` gives; tested) in one fused pass backward (``hardtanh``; ``clamp`` takes four)."""
    return F.hardtanh(x, 0.0, 1.0)


def _merged_noise_factors() -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
    """Lower-triangular L (colour cuts, gray cuts) with L L^T the covariance of ``M n1 + n2``
    for unit noises n1, n2 and M the identity or the gray matrix: I + M M^T."""
    gray = torch.tensor(GRAY, dtype=torch.float64)
    factors = [torch.linalg.cholesky(torch.eye(3, dtype=torch.float64) + m @ m.T) for m in (torch.eye(3), gray)]
    return tuple(tuple(tuple(float(v) for v in row) for row in f) for f in factors)


COLOUR_NOISE, GRAY_NOISE = _merged_noise_factors()


def merged_noise_matrices(gray: torch.Tensor) -> torch.Tensor:
    """[N,3,3]: per cut, the channel mix that turns unit noise into DD's noise before the
    (optional) grayscale plus the noise after it, in distribution (``M n1 + n2``)."""
    colour = constant_matrix(COLOUR_NOISE, gray.device, torch.float32)
    grayed = constant_matrix(GRAY_NOISE, gray.device, torch.float32)
    return torch.where(gray[:, None, None], grayed, colour)


@dataclass(frozen=True)
class CutAugmentation:
    """The random parameters of DD's cut augmentations, one value per cut ([N] tensors),
    and two unit-variance noise images ([2,N,3,S,S]): the noise before the rotation, and
    one that ``merged_noise_matrices`` turns into the two noises around the grayscale."""

    mirror: torch.Tensor
    angles_deg: torch.Tensor
    shift_x: torch.Tensor
    shift_y: torch.Tensor
    gray: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue_turns: torch.Tensor
    noise: torch.Tensor
    noise_scale: float
    nearest: bool = False  # nearest-neighbour rotation (DD's Video Input)
    colour: bool = True  # brightness/contrast/saturation/hue jitter
    corners: torch.Tensor | None = None  # perspective: [N,4,2] target corners
    perspective: torch.Tensor | None = None  # [N] which cuts are warped
    perspective_noise: torch.Tensor | None = None  # [N,3,S,S] noise after the warp


def draw_augmentation(
    cuts_shape: tuple[int, ...],
    generator: torch.Generator,
    device,
    dtype=torch.float32,
    augmentations: CutAugmentations = STILL_AUGMENTATIONS,
    **overrides: float,
) -> CutAugmentation:
    """Draw the parameters of DD's augmentations for cuts of ``cuts_shape``: one value per
    cut for each of ``augmentations`` (fields of it may be given as keywords too)."""
    a = dataclasses.replace(augmentations, **overrides) if overrides else augmentations
    n, side = cuts_shape[0], cuts_shape[-1]
    max_shift = a.translate * side
    drawn = dict(
        mirror=torch.rand(n, generator=generator, device=device) < a.flip_p,
        angles_deg=_uniform(n, -a.degrees, a.degrees, generator, device),
        shift_x=torch.round(_uniform(n, -max_shift, max_shift, generator, device)) / side,
        shift_y=torch.round(_uniform(n, -max_shift, max_shift, generator, device)) / side,
        gray=torch.rand(n, generator=generator, device=device) < a.gray_p,
        brightness=_uniform(n, 1 - a.jitter, 1 + a.jitter, generator, device),
        contrast=_uniform(n, 1 - a.jitter, 1 + a.jitter, generator, device),
        saturation=_uniform(n, 1 - a.jitter, 1 + a.jitter, generator, device),
        hue_turns=_uniform(n, -a.hue, a.hue, generator, device),
        noise=torch.randn((2, *cuts_shape), generator=generator, device=device, dtype=dtype),
    )
    if a.perspective_p > 0:  # drawn after the others: the other modes' streams stay as they were
        drawn.update(corners=perspective_corners(n, a.perspective, generator, device),
                     perspective=torch.rand(n, generator=generator, device=device) < a.perspective_p,
                     perspective_noise=torch.randn(cuts_shape, generator=generator, device=device, dtype=dtype))
    return CutAugmentation(**drawn, noise_scale=a.noise, nearest=a.nearest, colour=bool(a.jitter or a.hue))


IMAGE_CORNERS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))
"""An image's corners in grid_sample's normalised coordinates: top-left, top-right,
bottom-right, bottom-left."""


def perspective_corners(n: int, distortion: float, generator: torch.Generator, device) -> torch.Tensor:
    """[N,4,2] corners (normalised, top-left, top-right, bottom-right, bottom-left), each
    moved towards the centre by up to ``distortion`` of the half side in x and y
    (torchvision's RandomPerspective)."""
    base = constant_matrix(IMAGE_CORNERS, torch.device(device), torch.float32)
    amount = torch.rand(n, 4, 2, generator=generator, device=device) * distortion
    return base - base * amount


def apply_augmentation(cuts: torch.Tensor, a: CutAugmentation) -> torch.Tensor:
    """DD's order: mirror, noise, rotate+shift, noise, [perspective, noise,] grayscale,
    noise, then the colour jitter (brightness, contrast, saturation, hue; each clamped to
    [0, 1]). Fewer passes, same distribution: the mirror is folded into the rotation's
    sampling grid (mirroring the noise with the image), the grayscale and brightness are
    one per-cut 3x3 matrix, the noises around the grayscale are one noise image mixed by
    ``merged_noise_matrices`` (scaled by the brightness with the image), the other colour
    steps are 3x3 matrices too (skipped where there is no jitter: DD's Video Input)."""
    dtype = cuts.dtype
    x = torch.add(cuts, a.noise[0], alpha=a.noise_scale)
    x = rotate_translate(x, a.angles_deg, a.shift_x, a.shift_y, a.mirror, mode="nearest" if a.nearest else "bilinear")
    if a.corners is not None:
        x = torch.add(x, a.perspective_noise, alpha=a.noise_scale)
        x = torch.where(_per_image(a.perspective), perspective_warp(x, a.corners), x)
    gray = constant_matrix(GRAY, cuts.device, a.saturation.dtype)
    eye = constant_matrix(IDENTITY, cuts.device, a.saturation.dtype)
    brightness = a.brightness[:, None, None]
    image_mix = torch.where(a.gray[:, None, None], gray, eye) * brightness
    noise_mix = merged_noise_matrices(a.gray) * (brightness * a.noise_scale)
    x = mix_two(x, image_mix, a.noise[1], noise_mix)
    if not a.colour:
        return x
    x = clamp01(x)
    mean_luma = x.mean(dim=(2, 3)) @ gray[0].to(dtype)
    contrast = a.contrast.to(dtype)
    x = clamp01(torch.addcmul(_per_image((1 - contrast) * mean_luma), x, _per_image(contrast)))
    x = clamp01(mix_channels(x, saturation_matrices(a.saturation)))
    return clamp01(mix_channels(x, hue_matrices(a.hue_turns)))


def augment(cuts: torch.Tensor, generator: torch.Generator, augmentations: CutAugmentations = STILL_AUGMENTATIONS,
            **overrides: float) -> torch.Tensor:
    """DD's cut augmentations with parameters drawn per cut (differentiable)."""
    params = draw_augmentation(tuple(cuts.shape), generator, cuts.device, cuts.dtype, augmentations, **overrides)
    return apply_augmentation(cuts, params)


def perspective_warp(images: torch.Tensor, corners: torch.Tensor) -> torch.Tensor:
    """Warp each image so its corners move to ``corners`` ([N,4,2], normalised -1..1,
    order top-left, top-right, bottom-right, bottom-left); zeros outside."""
    n = images.shape[0]
    src = constant_matrix(IMAGE_CORNERS, images.device, torch.float32).expand(n, 4, 2)
    # Solve the homography mapping output (warped) coords back to input coords.
    rows = []
    rhs = []
    for k in range(4):
        u, v = corners[:, k, 0], corners[:, k, 1]
        x, y = src[:, k, 0], src[:, k, 1]
        zeros, ones = torch.zeros_like(u), torch.ones_like(u)
        rows.append(torch.stack([u, v, ones, zeros, zeros, zeros, -u * x, -v * x], dim=1))
        rows.append(torch.stack([zeros, zeros, zeros, u, v, ones, -u * y, -v * y], dim=1))
        rhs.extend([x, y])
    a = torch.stack(rows, dim=1)
    b = torch.stack(rhs, dim=1)
    h = torch.linalg.solve_ex(a, b)[0]  # solve_ex: no host sync to check for singular systems
    h = torch.cat([h, torch.ones(n, 1, device=images.device)], dim=1).view(n, 3, 3)
    height, width = images.shape[-2:]
    ys = (torch.arange(height, device=images.device, dtype=torch.float32) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=images.device, dtype=torch.float32) + 0.5) / width * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).view(1, -1, 3)
    mapped = points @ h.transpose(1, 2)
    grid = (mapped[..., :2] / mapped[..., 2:3]).view(n, height, width, 2)
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def image_prompt_cutouts(
    image01: torch.Tensor,
    cut_size: int,
    cutn: int,
    skip_augs: bool,
    rng: random.Random,
    generator: torch.Generator,
) -> torch.Tensor:
    """DD's image-prompt cuts (``MakeCutouts``): the image padded by a quarter of its
    height; the last quarter of the cuts whole, the others random squares of side
    ~N(0.8, 0.3) of the short side; then (unless skip_augs) mirror, rotation of up to
    15 degrees and 10% shift, a perspective warp (p 0.7, distortion 0.4), grayscale
    (p 0.15) and noise. Input and output in [0, 1] (DD fed [-1, 1] here; a DD bug)."""
    pad = image01.shape[2] // 4
    padded = F.pad(image01, (pad, pad, pad, pad))
    height, width = padded.shape[-2:]
    max_size = min(width, height)
    pieces = []
    for ch in range(cutn):
        if ch > cutn - cutn // 4:
            crop = padded
        else:
            factor = min(max(rng.gauss(0.8, 0.3), cut_size / max_size), 1.0)
            side = int(max_size * factor)
            x = rng.randrange(0, abs(width - side + 1))
            y = rng.randrange(0, abs(height - side + 1))
            crop = padded[:, :, y : y + side, x : x + side]
        pieces.append(F.interpolate(crop, size=(cut_size, cut_size), mode="bicubic", antialias=True, align_corners=False))
    cuts = torch.cat(pieces).clamp(0, 1)
    if skip_augs:
        return cuts
    n, device = cuts.shape[0], cuts.device

    def add_noise(x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn(x.shape, generator=generator, device=device) * 0.01

    mirror = torch.rand(n, generator=generator, device=device) < 0.5
    x = add_noise(cuts)
    angles = _uniform(n, -15.0, 15.0, generator, device)
    shift_x = torch.round(_uniform(n, -0.1 * cut_size, 0.1 * cut_size, generator, device)) / cut_size
    shift_y = torch.round(_uniform(n, -0.1 * cut_size, 0.1 * cut_size, generator, device)) / cut_size
    x = add_noise(rotate_translate(x, angles, shift_x, shift_y, mirror))
    corners = perspective_corners(n, 0.4, generator, device)
    apply = _per_image(torch.rand(n, generator=generator, device=device) < 0.7)
    x = add_noise(torch.where(apply, perspective_warp(x, corners), x))
    gray = _per_image(torch.rand(n, generator=generator, device=device) < 0.15)
    x = add_noise(torch.where(gray, grayscale3(x), x))
    return x
