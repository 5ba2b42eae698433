"""Our sampler steps against guided-diffusion's own ddim_sample / plms_sample.

The conditioning gradient is a fixed tensor here (guidance itself is tested in
test_engine_render), so both sides see the same cond_fn and no randomness (eta 0).
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

from engine.guidance import ClipTarget, EngineCounters, Guidance, ImageRandomness  # noqa: E402
from engine.losses import spherical_distance_loss  # noqa: E402
from engine.models import ModelSet, diffusion_steps_for  # noqa: E402
from engine.render import Renderer  # noqa: E402
from engine.spec import CutSchedule, GuidanceSettings, ModelSetSpec, RenderSpec, SamplerSettings  # noqa: E402
from guided_diffusion.script_util import create_gaussian_diffusion  # noqa: E402  (after engine: warnings filtered)

STEPS = 8
MODELS = ModelSetSpec(diffusion_model="tiny", use_secondary_model=False, clip_models=("tiny-vit::random",))


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(ModelSet(MODELS, "cpu"))


@pytest.fixture(scope="module")
def library_diffusion(renderer):
    s = renderer.models.unet_settings
    return create_gaussian_diffusion(
        steps=diffusion_steps_for(STEPS),
        learn_sigma=s["learn_sigma"],
        noise_schedule=s["noise_schedule"],
        rescale_timesteps=s["rescale_timesteps"],
        timestep_respacing=f"ddim{STEPS}",
    )


class FixedGradient:
    """A stand-in for Guidance returning a fixed gradient (and checking its inputs)."""

    def __init__(self, grad: torch.Tensor) -> None:
        self.grad = grad
        self.slots: list[int] = []

    def __call__(self, x, x_in, slot):
        assert x.requires_grad and x_in.requires_grad
        self.slots.append(slot)
        return self.grad


def spec_for(mode: str, clip_denoised: bool, eta: float = 0.0) -> RenderSpec:
    return RenderSpec(
        width=64,
        height=64,
        sampler=SamplerSettings(mode=mode, steps=STEPS, skip_steps=0, eta=eta),
        guidance=GuidanceSettings(clip_denoised=clip_denoised),
        models=MODELS,
    )


@pytest.mark.parametrize("clip_denoised", [False, True])
def test_ddim_step_matches_guided_diffusion(renderer, library_diffusion, clip_denoised):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 64, 64, generator=gen)
    grad = torch.randn(1, 3, 64, 64, generator=gen) * 0.05
    schedule = renderer.models.schedule(STEPS)
    spec = spec_for("ddim", clip_denoised)
    for i in (STEPS - 1, 3, 0):
        ours_x, ours_pred = renderer._ddim_step(x, i, schedule, FixedGradient(grad), spec, [gen])
        t = torch.tensor([i])
        lib = library_diffusion.ddim_sample(
            renderer.models.unet, x, t, clip_denoised=clip_denoised, cond_fn=lambda *a, **k: grad, eta=0.0, model_kwargs={}
        )
        assert torch.allclose(ours_pred, lib["pred_xstart"], atol=1e-4, rtol=1e-4)
        assert torch.allclose(ours_x, lib["sample"], atol=1e-4, rtol=1e-4)


def test_plms_steps_match_guided_diffusion(renderer, library_diffusion):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 64, 64, generator=gen)
    grad = torch.randn(1, 3, 64, 64, generator=gen) * 0.05
    schedule = renderer.models.schedule(STEPS)
    spec = spec_for("plms", False)
    ours_x, lib_x, old_eps, old_out = x, x, [], None
    for i in (STEPS - 1, STEPS - 2, STEPS - 3):
        ours_x, ours_pred = renderer._plms_step(ours_x, i, schedule, FixedGradient(grad), spec, old_eps)
        old_out = library_diffusion.plms_sample(
            renderer.models.unet, lib_x, torch.tensor([i]), clip_denoised=False,
            cond_fn=lambda *a, **k: grad, order=2, old_out=old_out, model_kwargs={},
        )
        lib_x = old_out["sample"]
        assert torch.allclose(ours_pred, old_out["pred_xstart"], atol=1e-4, rtol=1e-4)
        assert torch.allclose(ours_x, lib_x, atol=1e-4, rtol=1e-4)


def test_sync_free_unet_forward_equals_the_library_forward(renderer):
    from guided_diffusion.unet import AttentionBlock

    from engine.unet import unet_forward

    unet = renderer.models.unet
    assert any(isinstance(m, AttentionBlock) for m in unet.modules())  # the fused path is exercised
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([875.0, 12.5])
    ours, library = unet_forward(unet, x, t), unet(x, t)
    assert torch.allclose(ours, library, atol=1e-5, rtol=1e-5)
    assert not torch.equal(ours, unet_forward(unet, x, t + 1.0))  # depends on the timestep


def _small_unet(new_attention_order: bool, use_checkpoint: bool):
    from guided_diffusion.unet import UNetModel

    torch.manual_seed(5)
    unet = UNetModel(image_size=32, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                     attention_resolutions=(2, 4), channel_mult=(1, 2, 2), num_head_channels=16,
                     use_scale_shift_norm=True, resblock_updown=True, use_checkpoint=use_checkpoint,
                     use_new_attention_order=new_attention_order)
    for p in unet.parameters():  # the library zero-initialises proj_out and out: randomise them
        if not p.any():
            torch.nn.init.normal_(p, std=0.05)
    return unet


@pytest.mark.parametrize("new_attention_order", [False, True])
@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_fused_attention_matches_the_library_values_and_gradients(new_attention_order, use_checkpoint):
    from engine.unet import unet_forward

    unet = _small_unet(new_attention_order, use_checkpoint)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([500.0, 20.0])
    grads = []
    for forward in (unet_forward, lambda m, a, b: m(a, b)):
        xg = x.clone().requires_grad_(True)
        out = forward(unet, xg, t)
        (out.square().mean()).backward()
        grads.append((out.detach(), xg.grad))
    (ours, ours_grad), (library, library_grad) = grads
    assert torch.allclose(ours, library, atol=1e-5, rtol=1e-5)
    assert torch.allclose(ours_grad, library_grad, atol=1e-6, rtol=1e-4)
    assert ours_grad.abs().sum() > 0


@pytest.mark.parametrize("new_attention_order", [False, True])
def test_fused_attention_runs_a_fused_kernel_forward_and_backward(new_attention_order):
    """Only SDPA's flash kernel allowed: a fall-back to the math kernel (which materialises
    the attention weights, e.g. for inputs without unit stride on the channels) raises."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from engine.unet import unet_forward

    unet = _small_unet(new_attention_order, use_checkpoint=False)
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        unet_forward(unet, x, torch.tensor([300.0])).square().mean().backward()
    assert x.grad.abs().sum() > 0


def test_guidance_uses_dd_cut_slots(renderer):
    schedule = renderer.models.schedule(STEPS)
    fixed = FixedGradient(torch.zeros(1, 3, 64, 64))
    x = torch.randn(1, 3, 64, 64)
    renderer._ddim_step(x, STEPS - 1, schedule, fixed, spec_for("ddim", False), [torch.Generator()])
    # steps 8 -> 1000 diffusion steps, stride 125: first t = 875 -> slot 1000 - 876.
    assert fixed.slots == [124]


def test_guidance_gradient_equals_dd_per_batch_accumulation(renderer):
    """One call over all cut batches == DD's per-batch gradients divided by cutn_batches."""
    clip = renderer.models.clips["tiny-vit::random"]
    targets = [ClipTarget(clip, clip.encode_texts(["a", "b"])[None], torch.tensor([[0.75, 0.25]]))]
    settings = GuidanceSettings(cutn_batches=3, clip_guidance_scale=1000, clamp_grad=False, skip_augs=True,
                                tv_scale=10, sat_scale=5, range_scale=0)
    cuts = CutSchedule(overview=(2,) * 1000, innercut=(3,) * 1000)
    counters = EngineCounters(clip_image_calls={clip.name: 0}, clip_text_calls={clip.name: 0}, cuts_encoded={clip.name: 0})
    guidance = Guidance(settings, cuts, targets, counters,
                        [ImageRandomness(random.Random(4), torch.Generator().manual_seed(4))])
    x = torch.randn(1, 3, 64, 64) * 0.5
    with torch.enable_grad():
        xg = x.clone().requires_grad_()
        x_in = torch.tanh(xg) * 1.2  # any differentiable map x -> x_in
        ours = guidance(xg, x_in, 0)
    assert counters.clip_image_calls[clip.name] == 1

    from engine.cutouts import make_cutouts
    from engine.losses import saturation_loss, tv_loss

    rng = random.Random(4)
    with torch.enable_grad():
        xg = x.clone().requires_grad_()
        x_in = torch.tanh(xg) * 1.2
        x_in_grad = torch.zeros_like(x_in)
        for _ in range(3):
            batch = make_cutouts(x_in.add(1).div(2), clip.input_size, 2, 3, 1.0, 0.2, 1, rng)
            dists = spherical_distance_loss(clip.encode_image(batch)[:, None], targets[0].embeddings)
            losses = dists.view(5, 1, 2).mul(targets[0].weights).sum(2).mean(0)
            x_in_grad += torch.autograd.grad(losses.sum() * 1000, x_in)[0] / 3
        other = tv_loss(x_in).sum() * 10 + saturation_loss(x_in).sum() * 5
        x_in_grad += torch.autograd.grad(other, x_in)[0]
        reference = -torch.autograd.grad(x_in, xg, x_in_grad)[0]
    assert torch.allclose(ours, reference, atol=1e-5, rtol=1e-4)


def test_group_norms_in_the_input_dtype_match_the_library_fp32_round_trip():
    from guided_diffusion.nn import GroupNorm32

    from engine.unet import group_norm_in_input_dtype, set_group_norm_precision, uses_input_dtype_group_norms, \
        unet_forward

    norm = GroupNorm32(8, 32)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 32, 6, 6, generator=torch.Generator().manual_seed(4)) * 3 + 1
    assert torch.equal(group_norm_in_input_dtype(norm, x), norm(x))
    low = x.bfloat16()  # a half type the CPU runs: the library goes through fp32, ours stays in bf16
    ours, library = group_norm_in_input_dtype(norm, low), norm(low)
    assert ours.dtype == library.dtype == torch.bfloat16
    assert torch.allclose(ours.float(), library.float(), atol=0.05, rtol=0.02)

    unet = _small_unet(new_attention_order=False, use_checkpoint=False)
    t = torch.tensor([300.0, 40.0])
    xs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    expected = unet(xs, t)
    assert set_group_norm_precision(unet, True) > 10 and uses_input_dtype_group_norms(unet)
    assert torch.allclose(unet_forward(unet, xs, t), expected, atol=1e-5, rtol=1e-5)
    set_group_norm_precision(unet, False)
    assert not uses_input_dtype_group_norms(unet)
    assert torch.equal(unet(xs, t), expected)


def test_split_statistics_group_norm_equals_torch_values_and_gradients():
    """GroupNormSplitStatistics (std_mean statistics, torch's group-norm backward) is
    F.group_norm: values and the gradients of input, weight and bias, in float64."""

    from engine.unet import GroupNormSplitStatistics

    gen = torch.Generator().manual_seed(8)
    for shape, groups in (((1, 64, 8, 12), 32), ((2, 32, 5, 7), 8), ((1, 16, 40), 4)):
        x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 3 + 1.5
        weight = torch.randn(shape[1], generator=gen, dtype=torch.float64)
        bias = torch.randn(shape[1], generator=gen, dtype=torch.float64)
        upstream = torch.randn(*shape, generator=gen, dtype=torch.float64)
        results = []
        def torch_group_norm(x, weight, bias, groups, eps):
            return F.group_norm(x, groups, weight, bias, eps)

        for norm in (torch_group_norm, GroupNormSplitStatistics.apply):
            inputs = [t.clone().requires_grad_(True) for t in (x, weight, bias)]
            out = norm(*inputs, groups, 1e-5)
            results.append([out.detach(), *torch.autograd.grad((out * upstream).sum(), inputs)])
        for ours, reference in zip(*results):
            assert torch.allclose(ours, reference, atol=1e-12, rtol=1e-12)
    small = [torch.randn(*s, generator=gen, dtype=torch.float64, requires_grad=True) for s in ((1, 8, 3, 3), (8,), (8,))]
    assert torch.autograd.gradcheck(lambda x, w, b: GroupNormSplitStatistics.apply(x, w, b, 4, 1e-5), small)
    half = torch.randn(1, 64, 16, 16, generator=gen).bfloat16() * 40  # fp32 statistics for half inputs
    w, b = torch.randn(64, generator=gen).bfloat16(), torch.randn(64, generator=gen).bfloat16()
    reference = F.group_norm(half.float(), 32, w.float(), b.float(), 1e-5)
    ours = GroupNormSplitStatistics.apply(half, w, b, 32, 1e-5)
    assert ours.dtype == torch.bfloat16
    torch_half_error = (F.group_norm(half, 32, w, b, 1e-5).float() - reference).abs().max()
    assert (ours.float() - reference).abs().max() <= 2 * torch_half_error


def test_split_statistics_group_norm_forward_launches_ten_kernels_for_half_inputs():
    """Each kernel is a launch at batch 1, where the statistics are tiny: the forward of a
    half input takes ten (torch's std_mean, the fp32 1/std, scale and shift as one fp32
    tensor, one cast, the normalising addcmul, the saved 1/std), in both layouts; 17
    before scale and shift shared one tensor and widened the weights inside the kernels."""
    from engine.benchmark import OpCounter
    from engine.unet import GroupNormSplitStatistics

    weight, bias = torch.randn(64).bfloat16(), torch.randn(64).bfloat16()
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(1, 64, 8, 12).bfloat16().contiguous(memory_format=layout).requires_grad_(True)
        with OpCounter(flops=False) as counter:
            out = GroupNormSplitStatistics.apply(x, weight, bias, 32, 1e-5)
        assert counter.kernel_ops == 10
        assert out.is_contiguous(memory_format=layout)


def test_op_counter_counts_kernels_not_views_or_allocations():
    from engine.benchmark import OpCounter

    x = torch.randn(4, 6, requires_grad=True)
    with OpCounter() as counter:
        y = (x + 1).view(-1).t().sum()  # add, sum (view and t are views)
        torch.empty(3)
        (grad,) = torch.autograd.grad(y, x)  # ones_like (the seed); the backward's expand is a view
        z = torch.randn(8, 8) @ torch.randn(8, 8)  # randn twice, mm
    assert counter.kernel_ops == 6 and counter.flops == 2 * 8 * 8 * 8
    assert torch.equal(grad, torch.ones(4, 6)) and z.shape == (8, 8)


def test_split_statistics_group_norm_keeps_channels_last_with_its_own_backward():
    """channels_last input: statistics without a copy; output and input gradient keep the
    layout; the backward (``group_norm_input_gradients``, per-channel sums, no NCHW copies)
    equals torch's in float64 for input, weight and bias, passes gradcheck, and in float16
    is about as close to an exact reference as torch's own float16 backward (its products
    dy * x are rounded to float16 before the fp32 sums: 1.1-1.7x torch's error)."""
    from engine.unet import GroupNormSplitStatistics

    gen = torch.Generator().manual_seed(11)

    def both(x, weight, bias, upstream, groups, dtype=torch.float64):
        results = []
        for norm in (lambda x, w, b: F.group_norm(x.contiguous(), groups, w, b, 1e-5),
                     lambda x, w, b: GroupNormSplitStatistics.apply(x, w, b, groups, 1e-5)):
            inputs = [x.to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_(True),
                      weight.to(dtype).requires_grad_(True), bias.to(dtype).requires_grad_(True)]
            out = norm(*inputs)
            results.append([out.detach(), *torch.autograd.grad(out, inputs, upstream.to(dtype))])
        return results

    for shape, groups in (((2, 32, 6, 10), 8), ((1, 64, 5, 7), 32)):
        x = torch.randn(*shape, generator=gen, dtype=torch.float64) * 3 + 1.5
        weight, bias = torch.randn(shape[1], generator=gen, dtype=torch.float64), torch.randn(shape[1], generator=gen, dtype=torch.float64)
        upstream = torch.randn(*shape, generator=gen, dtype=torch.float64)
        reference, ours = both(x, weight, bias, upstream, groups)
        assert ours[0].is_contiguous(memory_format=torch.channels_last) and not ours[0].is_contiguous()
        assert ours[1].is_contiguous(memory_format=torch.channels_last)
        for mine, theirs in zip(ours, reference):
            assert torch.allclose(mine, theirs, atol=1e-12, rtol=1e-12)
    small = [torch.randn(2, 8, 3, 3, generator=gen, dtype=torch.float64).contiguous(memory_format=torch.channels_last),
             torch.randn(8, generator=gen, dtype=torch.float64), torch.randn(8, generator=gen, dtype=torch.float64)]
    assert torch.autograd.gradcheck(lambda x, w, b: GroupNormSplitStatistics.apply(x, w, b, 4, 1e-5),
                                    [t.requires_grad_(True) for t in small])
    x = torch.randn(1, 64, 32, 48, generator=gen) * 4 + 2
    weight, bias, upstream = torch.randn(64, generator=gen), torch.randn(64, generator=gen), torch.randn(x.shape, generator=gen)
    exact = both(x, weight, bias, upstream, 32)[0]
    torch_half, ours_half = both(x, weight, bias, upstream, 32, torch.float16)
    for mine, theirs, truth in zip(ours_half[1:], torch_half[1:], exact[1:]):  # gradients (values: above)
        assert (mine.double() - truth).abs().max() <= 2 * (theirs.double() - truth).abs().max()


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_unet_with_split_statistics_norms_equals_the_library(channels_last, monkeypatch):
    """channels_last: the backward of every norm over image-shaped activations is
    group_norm_input_gradients (counted)."""
    import engine.unet as engine_unet
    from engine.unet import set_group_norm_precision, unet_forward, uses_split_norm_statistics

    layout_keeping = []
    original = engine_unet.group_norm_input_gradients
    monkeypatch.setattr(engine_unet, "group_norm_input_gradients",
                        lambda *args: layout_keeping.append(1) or original(*args))
    unet = _small_unet(new_attention_order=False, use_checkpoint=False)
    t = torch.tensor([300.0, 40.0])
    xs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    outputs = []
    for split in (False, True):
        set_group_norm_precision(unet, True, split_statistics=split)
        assert uses_split_norm_statistics(unet) == split
        layout = torch.channels_last if (split and channels_last) else torch.contiguous_format
        unet.to(memory_format=layout)
        xg = xs.clone().requires_grad_(True)
        out = unet_forward(unet, xg.contiguous(memory_format=layout), t)
        outputs.append((out.detach(), torch.autograd.grad(out.square().mean(), xg)[0]))
    (plain, plain_grad), (split, split_grad) = outputs
    from guided_diffusion.unet import AttentionBlock

    attention_norms = sum(isinstance(m, AttentionBlock) for m in unet.modules())  # on [N, C, T] tokens
    image_norms = sum(isinstance(m, torch.nn.GroupNorm) for m in unet.modules()) - attention_norms
    assert len(layout_keeping) == (image_norms if channels_last else 0) and image_norms > attention_norms > 0
    assert torch.allclose(split, plain, atol=1e-5, rtol=1e-5)
    assert torch.allclose(split_grad, plain_grad, atol=1e-7, rtol=1e-4) and split_grad.abs().sum() > 0


def test_split_statistics_are_for_the_eager_unet_only():
    """A compiled UNet keeps torch.compile's own group-norm reductions."""
    from engine.unet import uses_split_norm_statistics

    model_set = ModelSet(MODELS, "cpu")
    model_set.configure_unet(channels_last=False, half_group_norms=True, compile_unet=False,
                             split_norm_statistics=True)
    assert uses_split_norm_statistics(model_set.unet)
    model_set.configure_unet(channels_last=False, half_group_norms=True, compile_unet=True)
    assert not uses_split_norm_statistics(model_set.unet) and model_set.split_norm_statistics
    with pytest.warns(RuntimeWarning, match="compile_unet: torch.compile failed"):
        model_set.drop_compiled_unet(RuntimeError("no compiler"))  # eager again: split statistics back
    assert uses_split_norm_statistics(model_set.unet)


def test_compile_unet_is_a_cuda_only_option():
    import dataclasses

    cpu_set = ModelSet(dataclasses.replace(MODELS, compile_unet=True), "cpu")
    assert not cpu_set.compile_unet and cpu_set.compiled_unet_forward is None
    assert not cpu_set.channels_last and not cpu_set.half_group_norms  # fp32 on the CPU: library norms


def test_a_failing_compiled_unet_falls_back_to_the_eager_one():
    """If torch.compile fails (no compiler, an unsupported op), the render goes on uncompiled,
    with one warning, and gives the eager render's pixels."""
    import dataclasses

    models = dataclasses.replace(MODELS, use_secondary_model=True)
    renderer = Renderer(ModelSet(models, "cpu"))
    spec = dataclasses.replace(spec_for("ddim", False), models=models)
    eager = renderer.render(spec)
    calls = []

    def broken_compiler_output(x, timesteps):
        calls.append(x.shape)
        raise RuntimeError("backend compiler failed\ndetails")

    renderer.models.compiled_unet_forward, renderer.models.compile_unet = broken_compiler_output, True
    with pytest.warns(RuntimeWarning, match="compile_unet: torch.compile failed \\(RuntimeError: backend compiler failed\\)"):
        fallen_back = renderer.render(spec)
    assert len(calls) == 1 and renderer.models.compiled_unet_forward is None and not renderer.models.compile_unet
    assert np.array_equal(fallen_back, eager)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_block_average_equals_avg_pool_values_and_gradients_exactly(dtype, k, channels_last):
    from engine.pooling import block_average

    x = torch.randn(2, 6, 8 * k, 4 * k, generator=torch.Generator().manual_seed(k), dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(2, 6, 8, 4, generator=torch.Generator().manual_seed(9), dtype=dtype)
    results = []
    for pool in (lambda t: F.avg_pool2d(t, k), lambda t: block_average(t, k)):
        xg = x.clone().requires_grad_(True)
        out = pool(xg)
        results.append((out.detach(), torch.autograd.grad(out, xg, upstream)[0]))
    (ref, ref_grad), (ours, ours_grad) = results
    assert torch.equal(ours, ref) and torch.equal(ours_grad, ref_grad)
    assert ours_grad.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_block_average_falls_back_to_avg_pool_for_sizes_not_a_multiple_of_k():
    from engine.pooling import BlockAverage, block_average

    x = torch.randn(1, 3, 7, 6, requires_grad=True)
    out = block_average(x, 2)
    assert out.shape == (1, 3, 3, 3) and out.grad_fn.name() != BlockAverage.__name__ + "Backward"
    assert torch.equal(out, F.avg_pool2d(x, 2))


def test_block_pools_replace_only_whole_block_avg_pools_and_switch_back():
    from engine.pooling import BlockAveragePool, block_pool_size, set_block_average_pools

    model = torch.nn.Sequential(torch.nn.AvgPool2d(2), torch.nn.AvgPool2d(3, stride=1),
                                torch.nn.Sequential(torch.nn.AvgPool2d((2, 2), stride=(2, 2))),
                                torch.nn.AvgPool2d(2, padding=1), torch.nn.AvgPool2d(2, ceil_mode=True))
    assert [block_pool_size(m) for m in (model[0], model[1], model[2][0], model[3], model[4])] == [2, None, 2, None, None]
    assert set_block_average_pools(model) == 2
    assert isinstance(model[0], BlockAveragePool) and isinstance(model[2][0], BlockAveragePool)
    assert type(model[1]) is torch.nn.AvgPool2d and type(model[3]) is torch.nn.AvgPool2d
    assert set_block_average_pools(model, enabled=False) == 2
    assert type(model[0]) is torch.nn.AvgPool2d and block_pool_size(model[2][0]) == 2


def test_loaded_models_pool_with_block_averages_and_render_the_same_pixels():
    """The UNet (resblock up/down), the secondary model and the ResNet CLIP all pool through
    BlockAverage, and the pixels are those of torch's avg_pool2d (forward and backward equal)."""
    from engine.pooling import BlockAveragePool, block_pool_size

    model_set = ModelSet(ModelSetSpec(diffusion_model="tiny", use_secondary_model=True,
                                      clip_models=("tiny-rn::random",)), "cpu")
    models = [model_set.unet, model_set.secondary, *(c.model.visual for c in model_set.clips.values())]

    def pools(ours: bool) -> list[int]:
        """Per model, how many pools are BlockAveragePool (ours) or block-shaped nn.AvgPool2d."""
        return [sum(isinstance(m, BlockAveragePool) if ours else block_pool_size(m) is not None
                    for m in model.modules()) for model in models]

    assert all(pools(ours=True)) and not any(pools(ours=False))
    spec = RenderSpec(models=model_set.spec, width=64, height=64, seed=5,
                      sampler=SamplerSettings(steps=4, skip_steps=0), guidance=GuidanceSettings(cutn_batches=1))
    ours = Renderer(model_set).render(spec)
    model_set.configure_pools(block_average=False)
    assert not any(pools(ours=True)) and all(pools(ours=False))
    assert np.array_equal(ours, Renderer(model_set).render(spec))
