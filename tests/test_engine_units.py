"""Engine building blocks: losses, secondary model, cutouts, perlin, schedule, validation."""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import random
import re
import subprocess
import sys

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

from engine import losses  # noqa: E402
from engine.cutouts import (  # noqa: E402
    GRAY,
    apply_augmentation,
    augment,
    clamp01,
    draw_augmentation,
    grayscale3,
    image_prompt_cutouts,
    inner_cut_sizes_and_offsets,
    make_cutouts,
    merged_noise_matrices,
    mix_channels,
    overview_cuts,
    pad_to_square,
)
from engine.errors import EngineError, InvalidSpec  # noqa: E402
from engine.models import diffusion_steps_for, schedule_from_diffusion  # noqa: E402
from engine.perlin import autocontrast_8bit, perlin_init_image  # noqa: E402
from engine.render import image_to_tensor, symmetrize, symmetry_step_indices, to_uint8, validate_spec  # noqa: E402
from engine.secondary import (  # noqa: E402
    SecondaryDiffusionModel,
    alpha_sigma_to_t,
    alpha_sigma_to_t_float,
    t_to_alpha_sigma,
)
from engine.spec import CutSchedule, GuidanceSettings, RenderSpec, SamplerSettings  # noqa: E402

KEYS_FILE = pathlib.Path(__file__).parent / "data" / "secondary-model-keys.txt"


def reference_secondary_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in KEYS_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split(" ", 1)
        shapes[key] = tuple(int(v) for v in re.findall(r"\d+", shape))
    return shapes


# -- secondary model ---------------------------------------------------------------------

def test_secondary_model_state_dict_matches_published_checkpoint_keys_and_shapes():
    reference = reference_secondary_shapes()
    assert len(reference) == 49
    model = SecondaryDiffusionModel()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == reference
    assert sum(math.prod(s) for s in ours.values()) == 13841547


def test_secondary_model_loads_a_random_state_dict_of_the_reference_shapes_and_predicts():
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=gen) * 0.02 for k, shape in reference_secondary_shapes().items()}
    model = SecondaryDiffusionModel()
    model.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=gen)
    t = torch.tensor([0.3, 0.9])
    out = model(x, t)
    assert out.v.shape == out.pred.shape == out.eps.shape == x.shape
    alpha, sigma = t_to_alpha_sigma(t)
    # pred and eps are the v-parameterisation's reconstructions of x.
    recon = out.pred * alpha[:, None, None, None] + out.eps * sigma[:, None, None, None]
    assert torch.allclose(recon, x, atol=1e-5)


def test_alpha_sigma_time_round_trip_and_float_version():
    t = torch.tensor([0.0, 0.25, 0.5, 0.99])
    alpha, sigma = t_to_alpha_sigma(t)
    assert torch.allclose(alpha_sigma_to_t(alpha, sigma), t, atol=1e-6)
    assert alpha_sigma_to_t_float(0.6, 0.8) == pytest.approx(float(alpha_sigma_to_t(torch.tensor(0.6), torch.tensor(0.8))))


# -- losses ------------------------------------------------------------------------------

def test_spherical_distance_loss_values():
    a = torch.tensor([[1.0, 0.0]])
    assert losses.spherical_distance_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    b = torch.tensor([[0.0, 3.0]])  # orthogonal; scale does not matter
    assert losses.spherical_distance_loss(a, b).item() == pytest.approx(2 * (math.pi / 4) ** 2, rel=1e-5)
    c = torch.tensor([[-2.0, 0.0]])  # opposite
    assert losses.spherical_distance_loss(a, c).item() == pytest.approx(2 * (math.pi / 2) ** 2, rel=1e-5)


def test_tv_range_and_saturation_losses():
    flat = torch.full((2, 3, 8, 8), 0.3)
    assert torch.equal(losses.tv_loss(flat), torch.zeros(2))
    ramp = torch.arange(8.0).repeat(1, 3, 8, 1)  # +1 per column
    # 7 of 8 columns differ by 1 (the replicate-padded edge does not).
    assert losses.tv_loss(ramp).item() == pytest.approx(7 / 8)
    inside = torch.rand(1, 3, 4, 4) * 2 - 1
    assert losses.range_loss(inside).item() == 0
    assert losses.saturation_loss(inside).item() == 0
    outside = torch.full((1, 3, 4, 4), 1.5)
    assert losses.range_loss(outside).item() == pytest.approx(0.25)
    assert losses.saturation_loss(outside).item() == pytest.approx(0.5)
    both = torch.cat([inside, outside])  # per image, as tv and range
    assert losses.saturation_loss(both).tolist() == pytest.approx([0.0, 0.5])


def test_weights_are_divided_by_the_magnitude_of_their_sum():
    assert losses.normalised_weights([1, 3]) == [0.25, 0.75]
    assert losses.normalised_weights([2, -1]) == [2.0, -1.0]
    assert losses.normalised_weights([-2.0]) == [-1.0]  # sign kept: push away
    with pytest.raises(InvalidSpec, match="sum to 0"):
        losses.normalised_weights([1.0, -1.0])
    assert issubclass(InvalidSpec, EngineError) and issubclass(EngineError, ValueError)


def test_clamp_gradient_limits_rms_and_keeps_zero():
    grad = torch.randn(1, 3, 16, 16) * 5
    clamped = losses.clamp_gradient(grad, 0.05)
    assert clamped.square().mean().sqrt().item() == pytest.approx(0.05, rel=1e-4)
    assert torch.allclose(clamped / clamped.norm(), grad / grad.norm(), atol=1e-6)
    small = torch.full((1, 3, 4, 4), 0.01)
    assert torch.allclose(losses.clamp_gradient(small, 0.05), small)
    assert torch.equal(losses.clamp_gradient(torch.zeros(1, 3, 4, 4), 0.05), torch.zeros(1, 3, 4, 4))
    small = torch.full((1, 3, 16, 16), 0.01)
    pair = losses.clamp_gradient(torch.cat([grad, small]), 0.05)  # each image on its own
    assert torch.allclose(pair[:1], clamped) and torch.allclose(pair[1:], small)


# -- schedule ----------------------------------------------------------------------------

def test_dd_diffusion_length_and_cut_slots_match_guided_diffusion():
    from guided_diffusion.script_util import create_gaussian_diffusion

    assert diffusion_steps_for(250) == 1000
    assert diffusion_steps_for(7) == 994
    assert diffusion_steps_for(1500) == 1500
    diffusion = create_gaussian_diffusion(
        steps=diffusion_steps_for(250), learn_sigma=True, rescale_timesteps=True, timestep_respacing="ddim250"
    )
    schedule = schedule_from_diffusion(diffusion)
    assert schedule.num_steps == 250
    assert schedule.model_times[-1] == 996.0
    # DD: t_int = int(t) + 1, slot = 1000 - t_int.
    assert schedule.cut_slots[-1] == 3
    assert schedule.cut_slots[0] == 999
    assert schedule.alphas_cumprod == tuple(float(a) for a in diffusion.alphas_cumprod)
    i = 100
    assert schedule.sqrt_recipm1_alpha_bar(i) == pytest.approx(float(diffusion.sqrt_recipm1_alphas_cumprod[i]))
    assert schedule.sqrt_one_minus_alpha_bar(i) == pytest.approx(float(diffusion.sqrt_one_minus_alphas_cumprod[i]))


# -- cutouts -----------------------------------------------------------------------------

def test_pad_to_square_pads_the_short_side():
    wide = torch.ones(1, 3, 64, 128)
    padded = pad_to_square(wide)
    assert padded.shape == (1, 3, 128, 128)
    assert padded[0, :, :32].abs().sum() == 0 and padded[0, :, 32:96].min() == 1
    tall = torch.ones(1, 3, 128, 64)
    assert pad_to_square(tall).shape == (1, 3, 128, 128)


def test_overview_cuts_follow_dd_variants():
    image = torch.rand(1, 3, 64, 96)
    four = overview_cuts(image, 32, 4)
    assert len(four) == 4
    assert torch.allclose(four[1], grayscale3(four[0]))
    assert torch.allclose(four[2], four[0].flip(-1))
    assert torch.allclose(four[3], grayscale3(four[0].flip(-1)))
    many = overview_cuts(image, 32, 6)
    assert len(many) == 6 and all(torch.equal(c, many[0]) for c in many)
    assert overview_cuts(image, 32, 0) == []


def test_inner_cut_sizes_follow_ic_pow_and_stay_inside():
    rng = random.Random(1)
    cuts = inner_cut_sizes_and_offsets(100, 160, 32, 200, 1.0, rng)
    for side, x, y in cuts:
        assert 32 <= side <= 100 and 0 <= x <= 160 - side and 0 <= y <= 100 - side
    small = inner_cut_sizes_and_offsets(100, 160, 32, 200, 8.0, random.Random(1))
    # A higher ic_pow makes smaller (more zoomed) cuts.
    assert sum(s for s, _, _ in small) < sum(s for s, _, _ in cuts)


def test_make_cutouts_counts_shapes_grayscale_and_determinism():
    image = torch.rand(1, 3, 64, 128)
    cuts = make_cutouts(image, 24, overview=2, innercut=3, ic_pow=1.0, icgray_p=0.0, batches=2, rng=random.Random(5))
    assert cuts.shape == (2 * 5, 3, 24, 24)
    # In each batch the first inner cut is gray (DD's i <= int(p*n) rule), the next not.
    for start in (0, 5):
        first_inner, second_inner = cuts[start + 2], cuts[start + 3]
        assert torch.allclose(first_inner[0], first_inner[1]) and torch.allclose(first_inner[1], first_inner[2])
        assert not torch.allclose(second_inner[0], second_inner[1])
    again = make_cutouts(image, 24, 2, 3, 1.0, 0.0, 2, random.Random(5))
    assert torch.equal(cuts, again)
    other = make_cutouts(image, 24, 2, 3, 1.0, 0.0, 2, random.Random(6))
    assert not torch.equal(cuts, other)


def test_augment_is_per_cut_deterministic_differentiable_and_in_range():
    cuts = torch.rand(8, 3, 32, 32, requires_grad=True)
    a = augment(cuts, torch.Generator().manual_seed(3))
    b = augment(cuts, torch.Generator().manual_seed(3))
    c = augment(cuts, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == cuts.shape and a.min() >= 0 and a.max() <= 1
    a.sum().backward()
    assert cuts.grad is not None and cuts.grad.abs().sum() > 0
    same = torch.rand(1, 3, 32, 32).expand(8, -1, -1, -1)
    out = augment(same, torch.Generator().manual_seed(3))
    # Parameters are drawn per cut: identical inputs come out different.
    assert not torch.allclose(out[0], out[1], atol=1e-2)


def test_cut_augmentations_follow_the_animation_mode_as_dd():
    """DD's MakeCutoutsDango: stills mirror p 0.5 and hue 0.1; 2D/3D mirror p 0.4, hue 0.3
    (same random draws otherwise); Video Input a nearest-neighbour affine, a perspective
    warp on about 70% of the cuts, grayscale p 0.15 and no colour jitter."""
    from engine.spec import ANIMATION_AUGMENTATIONS, VIDEO_AUGMENTATIONS, augmentations_for_mode

    assert augmentations_for_mode("None").flip_p == 0.5 and augmentations_for_mode("None").hue == 0.1
    assert augmentations_for_mode("2D") == augmentations_for_mode("3D") == ANIMATION_AUGMENTATIONS
    assert (ANIMATION_AUGMENTATIONS.flip_p, ANIMATION_AUGMENTATIONS.hue) == (0.4, 0.3)
    assert augmentations_for_mode("Video Input") == VIDEO_AUGMENTATIONS
    shape = (400, 3, 16, 16)
    still = draw_augmentation(shape, torch.Generator().manual_seed(1), "cpu")
    anim = draw_augmentation(shape, torch.Generator().manual_seed(1), "cpu", augmentations=ANIMATION_AUGMENTATIONS)
    assert torch.equal(still.angles_deg, anim.angles_deg) and torch.equal(still.noise, anim.noise)
    assert anim.hue_turns.abs().max() > 0.2 >= still.hue_turns.abs().max()
    assert anim.mirror.sum() < still.mirror.sum() and still.corners is None
    video = draw_augmentation(shape, torch.Generator().manual_seed(1), "cpu", augmentations=VIDEO_AUGMENTATIONS)
    assert video.angles_deg.abs().max() > 12 and video.nearest and not video.colour
    assert 0.6 < video.perspective.float().mean() < 0.8 and 0.1 < video.gray.float().mean() < 0.2
    # nearest-neighbour rotation, no jitter: with noise, grayscale and perspective off, every
    # output pixel is an input pixel or the zero fill
    cuts = torch.rand(16, 3, 16, 16)
    plain = dataclasses.replace(VIDEO_AUGMENTATIONS, noise=0.0, gray_p=0.0, perspective_p=0.0)
    out = augment(cuts, torch.Generator().manual_seed(2), plain)
    values = set(cuts.flatten().tolist()) | {0.0}
    assert set(out.flatten().tolist()) <= values
    # the perspective warp moves pixels: cuts that were warped differ from the unwarped ones
    warped = dataclasses.replace(plain, perspective_p=1.0, degrees=0.0, translate=0.0, flip_p=0.0)
    out = augment(cuts, torch.Generator().manual_seed(2), warped)
    assert (out - cuts).abs().amax(dim=(1, 2, 3)).min() > 0.05
    assert out.shape == cuts.shape


def _augment_step_by_step(cuts, a, noises):
    """DD's augmentations one operation at a time (as DD's torchvision transforms do them),
    with the three unit ``noises``, the first mirrored as the folded mirror implies: the
    reference for the fast path."""
    import torch.nn.functional as F

    sigma = a.noise_scale
    mirror = a.mirror[:, None, None, None]
    x = cuts + noises[0] * sigma
    x = torch.where(mirror, x.flip(-1), x)
    radians = a.angles_deg * math.pi / 180
    theta = torch.stack([torch.stack([radians.cos(), -radians.sin(), 2 * a.shift_x], 1),
                         torch.stack([radians.sin(), radians.cos(), 2 * a.shift_y], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x + noises[1] * sigma
    x = torch.where(a.gray[:, None, None, None], grayscale3(x), x)
    x = x + noises[2] * sigma
    x = (x * a.brightness[:, None, None, None]).clamp(0, 1)
    luma = grayscale3(x)[:, :1].mean(dim=(1, 2, 3), keepdim=True)
    c = a.contrast[:, None, None, None]
    x = (c * x + (1 - c) * luma).clamp(0, 1)
    s = a.saturation[:, None, None, None]
    x = (s * x + (1 - s) * grayscale3(x)).clamp(0, 1)
    y = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]  # hue: rotate the YIQ chroma plane
    i = 0.596 * x[:, 0] - 0.274 * x[:, 1] - 0.322 * x[:, 2]
    q = 0.211 * x[:, 0] - 0.523 * x[:, 1] + 0.312 * x[:, 2]
    angle = a.hue_turns[:, None, None] * 2 * math.pi
    i, q = i * angle.cos() - q * angle.sin(), i * angle.sin() + q * angle.cos()
    rgb = [y + 0.956 * i + 0.621 * q, y - 0.272 * i - 0.647 * q, y - 1.106 * i + 1.703 * q]
    return torch.stack(rgb, dim=1).clamp(0, 1)


def test_fast_augmentation_equals_the_step_by_step_one():
    cuts = torch.rand(32, 3, 24, 24, dtype=torch.float64)
    params = draw_augmentation(tuple(cuts.shape), torch.Generator().manual_seed(7), "cpu", torch.float64,
                               gray_p=0.5, jitter=0.4, hue=0.3, noise=0.05)
    params = type(params)(**{k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
                             for k, v in vars(params).items()})
    assert params.mirror.any() and not params.mirror.all() and params.gray.any() and not params.gray.all()
    # The fast path's second noise image, mixed per cut, stands for DD's two noises around
    # the grayscale: as the step-by-step noises that is n1 = 0, n2 = L z.
    merged = mix_channels(params.noise[1], merged_noise_matrices(params.gray).double())
    noises = (params.noise[0], torch.zeros_like(cuts), merged)
    fast, reference = apply_augmentation(cuts, params), _augment_step_by_step(cuts, params, noises)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-9)
    # gradients too (where no clamp is active they flow back through every step)
    one = cuts.clone().requires_grad_()
    two = cuts.clone().requires_grad_()
    weights = torch.rand_like(cuts)
    (apply_augmentation(one, params) * weights).sum().backward()
    (_augment_step_by_step(two, params, noises) * weights).sum().backward()
    torch.testing.assert_close(one.grad, two.grad, rtol=0, atol=1e-9)


def test_merged_noise_has_the_covariance_of_dds_two_noises():
    """M n1 + n2 (M: identity, or every channel the luma) is Gaussian with covariance
    I + M M^T; the merged noise L z has L L^T equal to it, so the same distribution."""
    gray = torch.tensor([False, True])
    factors = merged_noise_matrices(gray).double()
    for factor, m in zip(factors, (torch.eye(3, dtype=torch.float64), torch.tensor(GRAY, dtype=torch.float64))):
        torch.testing.assert_close(factor @ factor.T, torch.eye(3, dtype=torch.float64) + m @ m.T, atol=1e-6, rtol=0)
    # and empirically, against drawing the two noises
    generator = torch.Generator().manual_seed(5)
    n1, n2, z = (torch.randn(3, 200_000, generator=generator, dtype=torch.float64) for _ in range(3))
    two_noises = torch.tensor(GRAY, dtype=torch.float64) @ n1 + n2
    torch.testing.assert_close(torch.cov(factors[1] @ z), torch.cov(two_noises), atol=0.02, rtol=0)


def test_clamp01_clamps_and_passes_the_gradient_strictly_inside():
    x = torch.tensor([-0.5, -0.0, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    y = x.detach().clone().requires_grad_()
    ours, torchs = clamp01(x), y.clamp(0, 1)
    assert torch.equal(ours, torchs)
    weights = torch.arange(1.0, 7.0)
    (ours * weights).sum().backward()
    (torchs * weights).sum().backward()
    assert x.grad.tolist() == [0, 0, 0, 4, 0, 0] and torch.equal(x.grad, y.grad)


def test_image_prompt_cutouts_shape_and_determinism():
    image = torch.rand(1, 3, 48, 80)
    one = image_prompt_cutouts(image, 32, 16, False, random.Random(2), torch.Generator().manual_seed(2))
    two = image_prompt_cutouts(image, 32, 16, False, random.Random(2), torch.Generator().manual_seed(2))
    assert one.shape == (16, 3, 32, 32) and torch.equal(one, two)
    plain = image_prompt_cutouts(image, 32, 16, True, random.Random(2), torch.Generator().manual_seed(2))
    # The last quarter (ch > 12) is the whole padded image.
    assert torch.equal(plain[13], plain[15])


# -- perlin ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["mixed", "color", "gray"])
def test_perlin_init_shape_range_and_determinism(mode):
    one = perlin_init_image(mode, 64, 128, torch.Generator().manual_seed(1), "cpu")
    two = perlin_init_image(mode, 64, 128, torch.Generator().manual_seed(1), "cpu")
    other = perlin_init_image(mode, 64, 128, torch.Generator().manual_seed(2), "cpu")
    assert one.shape == (1, 3, 64, 128)
    assert torch.equal(one, two) and not torch.equal(one, other)
    assert one.min() >= -1 and one.max() <= 1
    assert one.std() > 0.05  # not flat
    if mode == "gray":
        assert torch.equal(one[0, 0], one[0, 1]) and torch.equal(one[0, 1], one[0, 2])
    if mode == "color":
        assert not torch.equal(one[0, 0], one[0, 1])


def test_autocontrast_stretches_each_channel_to_full_range():
    image = torch.stack([torch.linspace(0.2, 0.6, 100).view(10, 10), torch.full((10, 10), 0.5), torch.rand(10, 10)])
    out = autocontrast_8bit(image)
    assert out[0].min() == 0 and out[0].max() == 1
    assert torch.all(out[1] == math.floor(0.5 * 255) / 255)  # flat channel unchanged


# -- symmetry and validation -------------------------------------------------------------

def test_symmetrize_mirrors_halves():
    x = torch.randn(1, 3, 8, 12)
    h = symmetrize(x, True, False)
    assert torch.equal(h, h.flip(-1)) and torch.equal(h[..., :6], x[..., :6])
    v = symmetrize(x, False, True)
    assert torch.equal(v, v.flip(-2))
    both = symmetrize(x, True, True)
    assert torch.equal(both, both.flip(-1)) and torch.equal(both, both.flip(-2))
    assert symmetry_step_indices(240, (0.09,)) == {218}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"width": 100}, "multiples of 64"),
        ({"height": 0}, "multiples of 64"),
        ({"sampler": SamplerSettings(mode="euler")}, "ddim"),
        ({"sampler": SamplerSettings(steps=1, skip_steps=0)}, "steps must be at least 2"),
        ({"sampler": SamplerSettings(steps=10, skip_steps=10)}, "skip_steps"),
        ({"sampler": SamplerSettings(mode="plms", steps=10, skip_steps=9)}, "plms"),
        ({"sampler": SamplerSettings(perlin_mode="plaid")}, "perlin_mode"),
        ({"guidance": GuidanceSettings(cutn_batches=0)}, "cutn_batches"),
        ({"cuts": CutSchedule(overview=(4,) * 999)}, "1000 entries"),
    ],
)
def test_validate_spec_rejects_bad_values_with_a_clear_message(changes, message):
    spec = RenderSpec(**{"width": 64, "height": 64, **changes})
    with pytest.raises(InvalidSpec, match=message):
        validate_spec(spec)


def test_images_in_every_accepted_form_become_the_same_tensor():
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    reference = image_to_tensor(pixels, 24, 16, "init image")
    assert reference.shape == (1, 3, 16, 24) and reference.max() <= 1
    assert torch.equal(image_to_tensor(Image.fromarray(pixels), 24, 16, "init image"), reference)
    assert torch.allclose(image_to_tensor(pixels.astype(np.float32), 24, 16, "init image"), reference)
    assert torch.equal(image_to_tensor(reference[0], 24, 16, "init image"), reference)
    assert image_to_tensor(pixels, 48, 32, "init image").shape == (1, 3, 32, 48)  # resized (Lanczos)
    with pytest.raises(EngineError, match="init image"):
        image_to_tensor(pixels.astype(np.int64), 24, 16, "init image")
    with pytest.raises(EngineError, match="HxWx3"):
        image_to_tensor(np.zeros((4, 4, 5), np.uint8), 4, 4, "init image")
    # [-1, 1] tensors back to uint8 by truncation, as DD's PIL conversion.
    assert to_uint8(reference * 2 - 1).dtype == np.uint8
    assert np.abs(to_uint8(reference * 2 - 1).astype(int) - pixels).max() <= 1


FAULTS_SCRIPT = """
import resource, sys
import torch
if sys.argv[1] == "reuse":
    from engine.host_memory import keep_freed_host_memory
    assert keep_freed_host_memory()
for _ in range(5):  # warm-up: the heap settles after a few rounds
    torch.ones(10_000_000).sum()  # 40 MB: above glibc's largest dynamic mmap threshold (32 MB)
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(10_000_000).sum()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults))  # the steady state: one round in five once faulted afresh under a parallel test run
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_keeping_freed_host_memory_stops_page_faults_on_fresh_tensors():
    """Without it each fresh 40 MB tensor page-faults on first touch (about 10,000 faults);
    with it the freed memory is reused (a fresh process each, as the setting is process-wide)."""
    faults = {}
    for mode in ("default", "reuse"):
        result = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True,
                                timeout=120, cwd=pathlib.Path(__file__).resolve().parents[1])
        assert result.returncode == 0, result.stderr[-2000:]
        faults[mode] = int(result.stdout.split()[-1])
    assert faults["default"] > 5000 and faults["reuse"] < 100, faults
