"""The engine on a CUDA GPU: fp16, channels_last, fused attention, no syncs in a step.

These run only where torch sees a CUDA device (CI has none; run them on a GPU machine:
``python -m pytest tests/test_engine_cuda.py``). Their CPU counterparts are in
test_engine_render and test_engine_parity.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

from engine.models import ModelSet  # noqa: E402
from engine.render import Renderer  # noqa: E402
from engine.spec import GuidanceSettings, SamplerSettings  # noqa: E402
from tests.test_engine_render import FULL_UNET, WITH_SECONDARY, make_spec  # noqa: E402


@pytest.fixture(scope="module")
def cuda_full() -> Renderer:
    return Renderer(ModelSet(FULL_UNET, "cuda"), check_syncs=True)


@pytest.fixture(scope="module")
def cuda_secondary() -> Renderer:
    return Renderer(ModelSet(WITH_SECONDARY, "cuda"), check_syncs=True)


def test_cuda_models_are_fp16_contiguous_by_default_and_channels_last_on_request(cuda_full):
    unet = cuda_full.models.unet
    assert unet.dtype == torch.float16
    conv = unet.input_blocks[0][0]
    assert conv.weight.dtype == torch.float16
    assert not cuda_full.models.channels_last and conv.weight.is_contiguous()
    channels_last = Renderer(ModelSet(FULL_UNET, "cuda", channels_last=True), check_syncs=True)
    assert channels_last.models.unet.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert channels_last.render(make_spec()).std() > 0


@pytest.mark.parametrize("mode", ["ddim", "plms"])
def test_cuda_full_unet_render_has_no_sync_in_a_step(cuda_full, mode):
    # check_syncs: torch's sync debug mode raises on any host-device sync inside a step
    spec = make_spec(sampler=SamplerSettings(steps=6, skip_steps=0, mode=mode),
                     guidance=GuidanceSettings(cutn_batches=2))
    image = cuda_full.render(spec)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert image.std() > 0


def test_cuda_secondary_model_render_has_no_sync_in_a_step(cuda_secondary):
    image = cuda_secondary.render(make_spec(models=WITH_SECONDARY))
    assert image.shape == (64, 64, 3) and image.std() > 0


def test_cuda_guidance_changes_the_image(cuda_full):
    spec = make_spec()
    guided = cuda_full.render(spec)
    unguided = cuda_full.render(dataclasses.replace(
        spec, guidance=dataclasses.replace(spec.guidance, clip_guidance_scale=0)))
    assert not np.array_equal(guided, unguided)


def test_cuda_same_seed_gives_the_same_pixels(cuda_full):
    spec = make_spec(seed=21)
    assert np.array_equal(cuda_full.render(spec), cuda_full.render(spec))


def test_cuda_fused_attention_matches_the_library_in_fp16(cuda_full):
    from engine.unet import unet_forward

    unet = cuda_full.models.unet
    x = torch.randn(2, 3, 64, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    t = torch.tensor([875.0, 12.5], device="cuda")
    with torch.no_grad():
        ours, library = unet_forward(unet, x, t).float(), unet(x, t).float()
    assert (ours - library).abs().max() < 2e-2 * library.abs().max()


def test_cuda_attention_runs_fused_kernels_forward_and_backward(cuda_full):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from engine.unet import unet_forward

    x = torch.randn(1, 3, 64, 64, device="cuda", requires_grad=True)
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(fused):  # no math kernel: a fall-back raises
        unet_forward(cuda_full.models.unet, x, torch.tensor([500.0], device="cuda")).float().square().mean().backward()
    assert x.grad.abs().sum() > 0


def test_cuda_input_dtype_group_norms_match_the_library_norms(cuda_full):
    from engine.unet import (set_group_norm_precision, unet_forward, uses_input_dtype_group_norms,
                             uses_split_norm_statistics)

    unet = cuda_full.models.unet
    assert cuda_full.models.half_group_norms and uses_input_dtype_group_norms(unet)
    assert cuda_full.models.split_norm_statistics and uses_split_norm_statistics(unet)  # the CUDA default
    x = torch.randn(1, 3, 64, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    t = torch.tensor([400.0], device="cuda")
    with torch.no_grad():
        fast = unet_forward(unet, x, t).float()
        set_group_norm_precision(unet, False)
        try:
            library = unet_forward(unet, x, t).float()
        finally:
            set_group_norm_precision(unet, True, split_statistics=True)
    assert (fast - library).abs().max() < 2e-2 * library.abs().max()


@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_split_statistics_group_norm_matches_torch_at_dd_size(channels_last):
    """fp16 [1, 128, 384, 640] (a 512 UNet norm at 1280x768, halved): values and input
    gradients as close to an fp32 reference as torch's own fp16 group norm; channels_last
    through the layout-keeping backward (group_norm_input_gradients)."""
    import torch.nn.functional as F

    from engine.unet import GroupNormSplitStatistics

    gen = torch.Generator("cuda").manual_seed(4)
    x = (torch.randn(1, 128, 384, 640, device="cuda", generator=gen) * 4 + 2).half()
    weight = torch.randn(128, device="cuda", generator=gen).half()
    bias = torch.randn(128, device="cuda", generator=gen).half()
    upstream = torch.randn(x.shape, device="cuda", generator=gen).half()

    def run(norm, dtype):
        xg = x.to(dtype).requires_grad_(True)
        out = norm(xg, weight.to(dtype), bias.to(dtype))
        return out.detach().float(), torch.autograd.grad(out, xg, upstream.to(dtype))[0].float()

    reference = run(lambda a, w, b: F.group_norm(a, 32, w, b, 1e-5), torch.float32)
    torch_half = run(lambda a, w, b: F.group_norm(a, 32, w, b, 1e-5), torch.float16)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    split = run(lambda a, w, b: GroupNormSplitStatistics.apply(a.contiguous(memory_format=layout), w, b, 32, 1e-5),
                torch.float16)
    for ours, theirs, exact in zip(split, torch_half, reference):
        assert (ours - exact).abs().max() <= 2 * (theirs - exact).abs().max() + 1e-3


@pytest.mark.parametrize("channels_last", [False, True])
def test_cuda_block_average_equals_avg_pool_in_fp16_at_dd_size(channels_last):
    """fp16 [1, 128, 768, 1280] (the 512 UNet's first down-sampling at 1280x768): the same
    values and input gradients as torch's avg_pool2d, bit for bit."""
    import torch.nn.functional as F

    from engine.pooling import block_average

    gen = torch.Generator("cuda").manual_seed(5)
    x = torch.randn(1, 128, 768, 1280, device="cuda", generator=gen).half()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(1, 128, 384, 640, device="cuda", generator=gen).half()
    results = []
    for pool in (lambda t: F.avg_pool2d(t, 2), lambda t: block_average(t, 2)):
        xg = x.clone().requires_grad_(True)
        out = pool(xg)
        results.append((out.detach(), torch.autograd.grad(out, xg, upstream)[0]))
    (ref, ref_grad), (ours, ours_grad) = results
    assert torch.equal(ours, ref) and torch.equal(ours_grad, ref_grad)


@pytest.mark.parametrize("secondary", [True, False], ids=["secondary model", "full UNet"])
def test_cuda_compiled_unet_renders_like_the_eager_one(cuda_full, cuda_secondary, secondary):
    models = WITH_SECONDARY if secondary else FULL_UNET
    eager = cuda_secondary if secondary else cuda_full
    compiled = Renderer(ModelSet(dataclasses.replace(models, compile_unet=True), "cuda"))
    assert compiled.models.compiled_unet_forward is not None
    spec = make_spec(seed=9, models=models)
    eager_image = eager.render(spec).astype(np.int16)
    compiled_image = compiled.render(dataclasses.replace(spec, models=compiled.models.spec)).astype(np.int16)
    assert compiled.models.compiled_unet_forward is not None  # it compiled: no fall-back to eager
    other_seed = eager.render(dataclasses.replace(spec, seed=10)).astype(np.int16)
    # fp16 kernels differ in rounding; the picture must stay far closer than another seed's
    assert np.abs(eager_image - compiled_image).mean() < 0.25 * np.abs(eager_image - other_seed).mean()


@pytest.mark.parametrize("mode", ["2D", "Video Input"])
def test_cuda_animation_cut_augmentations_have_no_sync_in_a_step(cuda_full, mode):
    # Video Input's perspective warp solves its homographies on the GPU (linalg.solve_ex)
    from engine.spec import STILL_AUGMENTATIONS, augmentations_for_mode

    augmentations = augmentations_for_mode(mode)
    spec = make_spec(seed=5, guidance=GuidanceSettings(cutn_batches=2, augmentations=augmentations))
    image = cuda_full.render(spec)  # check_syncs: raises on a host-device sync in a step
    assert image.shape == (64, 64, 3) and image.std() > 0
    still = cuda_full.render(make_spec(seed=5, guidance=GuidanceSettings(cutn_batches=2,
                                                                         augmentations=STILL_AUGMENTATIONS)))
    assert not np.array_equal(image, still)


def test_cuda_raft_flow_matches_the_cpu_flow():
    """Video Input's RAFT on the actor's GPU: the flow comes back on the host at the
    frame's size, as the CPU computes it (fp32; TF32 off for the comparison)."""
    from animation.flow import RaftFlow
    from tests.test_flow import texture

    a, b = texture(90, 150, seed=1), texture(90, 150, seed=2)
    cpu_flow = RaftFlow.random(seed=3)(a, b)
    raft = RaftFlow.random(seed=3, device="cuda")
    assert next(raft.model.parameters()).device.type == "cuda"
    allowed = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        gpu_flow = raft(a, b)
    finally:
        torch.backends.cudnn.allow_tf32 = allowed
    assert gpu_flow.shape == (90, 150, 2) and gpu_flow.dtype == np.float32 and np.isfinite(gpu_flow).all()
    assert np.abs(gpu_flow - cpu_flow).mean() <= 0.01 * np.abs(cpu_flow).mean() + 1e-4
