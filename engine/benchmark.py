"""Per-step speed and work of the renderer, against Disco Diffusion's own loop structure.

    python -m engine.benchmark --preset dd --steps 10 --baseline      # on a GPU
    python -m engine.benchmark --preset tiny --steps 3 --baseline     # anywhere

``dd`` builds DD's default architectures (512 UNet, secondary model, ViT-B-32,
ViT-B-16, RN50) with RANDOM weights (no downloads; the pictures are noise) at
1280x768, cutn_batches 4. ``--baseline`` also runs the DD-equivalent mode on the same
models, settings and seed: guided-diffusion's sampling loop calling a cond_fn written as
DD v5.7's (on the full-UNet path a no-grad UNet forward plus a grad forward; one CLIP
call, one backward and two ``.item()`` per cut batch per model; a NaN check read back
per step; gradient checkpointing on and DD's ``requires_grad`` on the attention
parameters). Prints one JSON object.

Work per step is measured the same way for both modes (``WorkCounter``): forward hooks
count UNet forwards, evaluations of one UNet block (forwards plus checkpoint
recomputes), secondary forwards and image-encoder calls per CLIP model; a
``TorchFunctionMode`` counts the host syncs a step makes structurally: device-to-host
reads (``.item()``, ``bool()``, ``float()``, ``.tolist()``, ``.cpu()``...) and tensors
built or written from host data (``torch.tensor``, ``t[i] = 0.5``: blocking uploads on
CUDA; ``engine.syncs``). The
counts are per-step differences between a short and a longer render, so set-up and
the final image read-back are not included. On CUDA the syncs torch's sync debug mode
reports are counted as well (``cuda_syncs``). ``OpCounter`` counts the aten ops that run a
kernel (``kernel_ops``: on a GPU each costs a launch, so they measure host overhead) and,
on request, FLOPs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from engine.cutouts import augment, make_cutouts
from engine.losses import clamp_gradient, range_loss, saturation_loss, spherical_distance_loss, tv_loss
from engine.models import ModelSet, diffusion_steps_for
from engine.render import Renderer
from engine.secondary import alpha_sigma_to_t
from engine.spec import (
    GuidanceSettings,
    ModelSetSpec,
    RenderSpec,
    SamplerSettings,
    WeightedPrompt,
    augmentations_for_mode,
)
from engine.syncs import host_access
from engine.unet import set_group_norm_precision, uses_input_dtype_group_norms, uses_split_norm_statistics

PRESETS = {
    "dd": dict(
        models=ModelSetSpec(),
        width=1280,
        height=768,
    ),
    "tiny": dict(
        models=ModelSetSpec(diffusion_model="tiny", clip_models=("tiny-vit::random", "tiny-rn::random")),
        width=128,
        height=64,
    ),
}

PROMPT = "a lighthouse in a storm, oil painting"



def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- specs


def make_spec(models: ModelSetSpec, width: int, height: int, *, steps: int, cutn_batches: int = 4,
              mode: str = "ddim", seed: int = 1, animation_mode: str = "None") -> RenderSpec:
    """DD's default guidance and cut schedules, one text prompt, no init, no skipped steps;
    the cut augmentations DD uses in ``animation_mode``."""
    return RenderSpec(
        width=width,
        height=height,
        seed=seed,
        text_prompts=(WeightedPrompt(PROMPT, 1.0),),
        guidance=GuidanceSettings(cutn_batches=cutn_batches, augmentations=augmentations_for_mode(animation_mode)),
        sampler=SamplerSettings(mode=mode, steps=steps, skip_steps=0),
        models=models,
    )


def with_steps(spec: RenderSpec, steps: int) -> RenderSpec:
    return dataclasses.replace(spec, sampler=dataclasses.replace(spec.sampler, steps=steps))


def without_secondary(models: ModelSetSpec) -> ModelSetSpec:
    return dataclasses.replace(models, use_secondary_model=False)


# --------------------------------------------------------------------------- counting


class HostSyncCounter(TorchFunctionMode):
    """Counts host reads and host-data uploads made through torch's python API."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()
        self.uploads: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kind = host_access(func, args)
        if kind is not None:
            (self.reads if kind == "read" else self.uploads)[getattr(func, "__name__", "")] += 1
        return func(*args, **(kwargs or {}))


NO_KERNEL_OPS = frozenset({
    "aten::detach", "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty",
    "aten::new_empty_strided", "aten::lift_fresh", "aten::_unsafe_view", "aten::resize_", "aten::set_",
    "aten::record_stream",
})
"""aten ops below autograd that allocate or relabel memory without running a kernel (views
are recognised from their schema)."""


def runs_a_kernel(func) -> bool:
    """Whether an aten op reaching a dispatch mode computes or copies data (a kernel launch
    on a GPU), rather than making a view, allocating, returning no tensor (``promote_types``)
    or marking a profiler range."""
    return (func.namespace == "aten" and not func.is_view
            and func._overloadpacket._qualified_op_name not in NO_KERNEL_OPS
            and any(_holds_tensors(ret.type) for ret in func._schema.returns))


def _holds_tensors(schema_type) -> bool:
    if isinstance(schema_type, (torch.ListType, torch.OptionalType)):
        return _holds_tensors(schema_type.getElementType())
    return isinstance(schema_type, torch.TensorType)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that run a kernel (``runs_a_kernel``: on a GPU each is a launch,
    a few microseconds of host time however small its tensors) and, with ``flops``, the
    FLOPs of the ops torch's flop counter knows (matmuls, convolutions, attention, forward
    and backward), without its module tracking, which breaks ``autograd.grad``."""

    def __init__(self, flops: bool = True) -> None:
        super().__init__()
        from torch.utils.flop_counter import flop_registry

        self.registry = flop_registry if flops else {}
        self.flops = 0
        self.kernel_ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if runs_a_kernel(func):
            self.kernel_ops += 1
        formula = self.registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


def _first_resblock(unet: torch.nn.Module) -> torch.nn.Module | None:
    for module in unet.modules():
        if type(module).__name__ == "ResBlock" and hasattr(module, "_forward"):
            return module
    return None


class WorkCounter:
    """Counts the work done on a ``ModelSet`` while active (see the module doc)."""

    def __init__(self, model_set: ModelSet, *, host_syncs: bool = True, flops: bool = False) -> None:
        self.model_set = model_set
        self.host_syncs = host_syncs
        self.flops = flops
        self.unet_forwards = 0
        self.unet_block_evaluations = 0
        self.secondary_forwards = 0
        self.clip_image_calls = {name: 0 for name in model_set.clips}
        self.cuts_encoded = {name: 0 for name in model_set.clips}
        self._handles: list[Any] = []
        self._block: torch.nn.Module | None = None
        self._mode: HostSyncCounter | None = None
        self._op_mode: OpCounter | None = None
        self._caught_cm: Any = None
        self._caught: list = []
        self._previous_sync_mode = 0
        self.cuda_syncs: int | None = None

    def __enter__(self) -> "WorkCounter":
        ms = self.model_set

        def count_unet(*_):
            self.unet_forwards += 1

        self._handles.append(ms.unet.time_embed.register_forward_hook(count_unet))
        if ms.secondary is not None:
            def count_secondary(*_):
                self.secondary_forwards += 1

            self._handles.append(ms.secondary.register_forward_hook(count_secondary))
        for name, clip in ms.clips.items():
            def count_clip(module, inputs, output, name=name):
                self.clip_image_calls[name] += 1
                self.cuts_encoded[name] += int(inputs[0].shape[0])

            self._handles.append(clip.model.visual.register_forward_hook(count_clip))
        block = _first_resblock(ms.unet)
        if block is not None:
            original = block._forward

            def counted(*args, **kwargs):
                self.unet_block_evaluations += 1
                return original(*args, **kwargs)

            block._forward = counted  # instance attribute: checkpoint recomputes call it too
            self._block = block
        if self.host_syncs:
            self._mode = HostSyncCounter()
            self._mode.__enter__()
            if ms.device.type == "cuda":  # the real syncs too, from torch's sync debug mode
                self._caught_cm = warnings.catch_warnings(record=True)
                self._caught = self._caught_cm.__enter__()
                warnings.simplefilter("always")
                self._previous_sync_mode = torch.cuda.get_sync_debug_mode()
                torch.cuda.set_sync_debug_mode("warn")
        self._op_mode = OpCounter(flops=self.flops)
        self._op_mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._op_mode is not None:
            self._op_mode.__exit__(*exc)
        if self._mode is not None:
            self._mode.__exit__(*exc)
        if self._caught_cm is not None:
            torch.cuda.set_sync_debug_mode(self._previous_sync_mode)
            self.cuda_syncs = sum(1 for w in self._caught if "synchroniz" in str(w.message))
            self._caught_cm.__exit__(*exc)
            self._caught_cm = None
        for handle in self._handles:
            handle.remove()
        if self._block is not None:
            del self._block._forward

    def totals(self) -> dict[str, Any]:
        reads = self._mode.reads if self._mode else Counter()
        uploads = self._mode.uploads if self._mode else Counter()
        totals = {
            "unet_forwards": self.unet_forwards,
            "unet_block_evaluations": self.unet_block_evaluations,
            "secondary_forwards": self.secondary_forwards,
            "clip_image_calls": dict(self.clip_image_calls),
            "cuts_encoded": dict(self.cuts_encoded),
            "host_reads": sum(reads.values()),
            "host_uploads": sum(uploads.values()),
            "host_syncs": sum(reads.values()) + sum(uploads.values()),
            "host_sync_kinds": dict(reads + uploads),
        }
        if self._op_mode is not None:
            totals["kernel_ops"] = self._op_mode.kernel_ops
            if self.flops:
                totals["flops"] = self._op_mode.flops
        if self.cuda_syncs is not None:
            totals["cuda_syncs"] = self.cuda_syncs
        return totals


def _per_step(short: dict, long: dict, steps: int) -> dict[str, Any]:
    """(long - short) / steps for every count (dicts per model included)."""
    out: dict[str, Any] = {}
    for key, value in long.items():
        if isinstance(value, dict):
            out[key] = {k: round((v - short.get(key, {}).get(k, 0)) / steps, 3) for k, v in value.items()}
            out[key] = {k: v for k, v in out[key].items() if v}
        else:
            out[key] = round((value - short[key]) / steps, 3)
    return out


def work_per_step(run: Callable[[RenderSpec], Any], model_set: ModelSet, spec: RenderSpec,
                  short_steps: int = 2, long_steps: int = 3, *, host_syncs: bool = True,
                  flops: bool = False) -> dict[str, Any]:
    """Counts per sampler step of ``run`` (the engine or the DD-equivalent mode): the
    difference between renders of ``short_steps`` and ``long_steps`` steps."""
    for steps in (short_steps, long_steps):  # set-up caches (schedules, prompt embeddings)
        model_set.schedule(steps)
    run(with_steps(spec, short_steps))
    totals = []
    for steps in (short_steps, long_steps):
        with WorkCounter(model_set, host_syncs=host_syncs, flops=flops) as counter:
            run(with_steps(spec, steps))
        totals.append(counter.totals())
    return _per_step(totals[0], totals[1], long_steps - short_steps)


# --------------------------------------------------------------------------- the engine


def engine_step_seconds(renderer: Renderer, spec: RenderSpec, images: int = 1) -> list[float]:
    """Wall seconds of each sampler step of one engine render (from the per-step poll);
    ``images`` > 1 renders that many seeds of ``spec`` in lockstep (``render_images``)."""
    device = renderer.models.device
    marks: list[float] = []

    def mark() -> bool:
        _sync(device)
        marks.append(time.perf_counter())
        return False

    renderer.render_images([dataclasses.replace(spec, seed=spec.seed + k) for k in range(images)], should_stop=mark)
    _sync(device)
    marks.append(time.perf_counter())
    return [b - a for a, b in zip(marks, marks[1:])]


# --------------------------------------------------------------------------- DD's structure


@contextlib.contextmanager
def dd_model_state(model_set: ModelSet) -> Iterator[None]:
    """The UNet as DD v5.7 sets it up: gradient checkpointing on, ``requires_grad`` on
    parameters named qkv/norm/proj, default memory format, the library's fp32 group
    norms. Restored on exit."""
    unet = model_set.unet
    flagged = [m for m in unet.modules() if hasattr(m, "use_checkpoint")]
    previous_flags = [m.use_checkpoint for m in flagged]
    chosen = [p for n, p in unet.named_parameters() if "qkv" in n or "norm" in n or "proj" in n]
    previous_grads = [p.requires_grad for p in chosen]
    channels_last = bool(getattr(model_set, "channels_last", False))
    half_norms, split_statistics = uses_input_dtype_group_norms(unet), uses_split_norm_statistics(unet)
    try:
        set_group_norm_precision(unet, False)  # the library's GroupNorm32, as DD runs it
        for module in flagged:
            module.use_checkpoint = True
        for param in chosen:
            param.requires_grad_(True)
        if channels_last:
            unet.to(memory_format=torch.contiguous_format)
            if model_set.secondary is not None:
                model_set.secondary.to(memory_format=torch.contiguous_format)
        yield
    finally:
        set_group_norm_precision(unet, half_norms, split_statistics)
        for module, flag in zip(flagged, previous_flags):
            module.use_checkpoint = flag
        for param, flag in zip(chosen, previous_grads):
            param.requires_grad_(flag)
        if channels_last:
            unet.to(memory_format=torch.channels_last)
            if model_set.secondary is not None:
                model_set.secondary.to(memory_format=torch.channels_last)


def dd_style_step_seconds(renderer: Renderer, spec: RenderSpec, *, timed: bool = True) -> list[float]:
    """Wall seconds of each step of DD v5.7's loop on ``renderer``'s models (module doc);
    ``timed`` false leaves out the device syncs the timing needs (for counting syncs)."""
    from guided_diffusion.script_util import create_gaussian_diffusion

    ms, g = renderer.models, spec.guidance
    s = ms.unet_settings
    steps, skip = spec.sampler.steps, spec.sampler.skip_steps
    diffusion = create_gaussian_diffusion(
        steps=diffusion_steps_for(steps), learn_sigma=s["learn_sigma"], noise_schedule=s["noise_schedule"],
        rescale_timesteps=s["rescale_timesteps"], timestep_respacing=f"ddim{steps}",
    )
    device = ms.device
    targets = renderer._targets(spec, {}, torch.Generator(device=device).manual_seed(spec.seed))
    rng, gen = random.Random(spec.seed), torch.Generator(device=device).manual_seed(spec.seed)
    state = {"cur_t": diffusion.num_timesteps - skip - 1}
    loss_values = []

    def cond_fn(x, t, y=None):
        cur_t = state["cur_t"]
        n = x.shape[0]
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            fac = diffusion.sqrt_one_minus_alphas_cumprod[cur_t]
            if ms.secondary is not None:
                alpha = torch.tensor(diffusion.sqrt_alphas_cumprod[cur_t], device=device, dtype=torch.float32)
                sigma = torch.tensor(diffusion.sqrt_one_minus_alphas_cumprod[cur_t], device=device,
                                     dtype=torch.float32)
                cosine_t = alpha_sigma_to_t(alpha, sigma)
                out = ms.secondary(x, cosine_t[None].repeat([n])).pred
                pred = out
            else:
                my_t = torch.ones([n], device=device, dtype=torch.long) * cur_t
                out = diffusion.p_mean_variance(ms.unet, x, my_t, clip_denoised=False, model_kwargs={})
                pred = out["pred_xstart"]
            x_in = pred * fac + x * (1 - fac)
            x_in_grad = torch.zeros_like(x_in)
            for target in targets:
                for _ in range(g.cutn_batches):
                    t_int = int(t.item()) + 1
                    overview, inner, ic_pow, gray_p = spec.cuts.at(1000 - t_int)
                    cuts = make_cutouts(x_in.add(1).div(2), target.clip.input_size, overview, inner, ic_pow,
                                        gray_p, 1, rng)
                    if not g.skip_augs:
                        cuts = augment(cuts, gen, g.augmentations)
                    embeds = target.clip.encode_image(cuts)
                    dists = spherical_distance_loss(embeds[:, None], target.embeddings[None])
                    losses = dists.mul(target.weights).sum(1).mean()
                    loss_values.append(losses.sum().item())
                    x_in_grad += torch.autograd.grad(losses.sum() * g.clip_guidance_scale, x_in)[0] / g.cutn_batches
            tv_losses = tv_loss(x_in)
            range_losses = range_loss(pred)
            sat_losses = saturation_loss(x_in)
            loss = tv_losses.sum() * g.tv_scale + range_losses.sum() * g.range_scale + sat_losses.sum() * g.sat_scale
            x_in_grad += torch.autograd.grad(loss, x_in)[0]
            if torch.isnan(x_in_grad).any() == False:  # noqa: E712 (DD's read-back, kept)
                grad = -torch.autograd.grad(x_in, x, x_in_grad)[0]
                nan = False
            else:
                grad, nan = torch.zeros_like(x), True
        if g.clamp_grad and not nan:
            return clamp_gradient(grad, g.clamp_max)
        return grad

    shape = (1, 3, spec.height, spec.width)
    devices = [device.index or 0] if device.type == "cuda" else []
    times = []
    with warnings.catch_warnings(), dd_model_state(ms), torch.random.fork_rng(devices=devices):
        warnings.simplefilter("ignore", FutureWarning)  # guided_diffusion's torch.cuda.amp decorators
        torch.manual_seed(spec.seed)
        noise = torch.randn(shape, generator=torch.Generator(device=device).manual_seed(spec.seed), device=device)
        if spec.sampler.mode == "plms":
            samples = diffusion.plms_sample_loop_progressive(
                ms.unet, shape, clip_denoised=g.clip_denoised, model_kwargs={}, cond_fn=cond_fn, progress=False,
                skip_timesteps=skip, noise=noise, order=2,
            )
        else:
            samples = diffusion.ddim_sample_loop_progressive(
                ms.unet, shape, clip_denoised=g.clip_denoised, model_kwargs={}, cond_fn=cond_fn, progress=False,
                skip_timesteps=skip, eta=spec.sampler.eta, noise=noise,
            )
        if timed:
            _sync(device)
        started = time.perf_counter()
        for _ in samples:
            if timed:
                _sync(device)
            now = time.perf_counter()
            times.append(now - started)
            started = now
            state["cur_t"] -= 1
    return times


def dd_style_seconds_per_step(renderer: Renderer, spec: RenderSpec) -> float:
    """Mean seconds per step of the DD-equivalent mode (first step left out as warm-up)."""
    times = dd_style_step_seconds(renderer, spec)
    warm = times[1:] or times
    return sum(warm) / len(warm)


# --------------------------------------------------------------------------- side by side


def warm_mean(step_seconds: list[float]) -> float:
    """Mean seconds per step without the first step (allocations, autotuning)."""
    warm = step_seconds[1:] or step_seconds
    return sum(warm) / len(warm)


def compare(renderer: Renderer, spec: RenderSpec, *, repeats: int = 3, count: bool = True,
            count_spec: RenderSpec | None = None, flops: bool = False,
            on_run: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    """Engine and DD-equivalent mode on the same models, spec and seed, runs interleaved
    (engine first, then DD-equivalent first, and so on).

    Each run renders ``spec`` once; its figure is the mean step time without the first
    step; the result holds the medians over ``repeats`` runs, the per-run ratios and,
    with ``count``, the work per step of both modes (``work_per_step``, on ``count_spec``
    when given: the counts do not depend on the image size, FLOPs do).
    """
    device = renderer.models.device
    run_engine = lambda s: renderer.render(s)  # noqa: E731
    run_dd = lambda s: dd_style_step_seconds(renderer, s, timed=False)  # noqa: E731
    warm_up = with_steps(spec, 2)
    run_engine(warm_up)
    run_dd(warm_up)
    engine_runs, dd_runs = [], []
    peaks = {"engine": 0, "dd_equivalent": 0}
    modes = (("engine", engine_runs, engine_step_seconds), ("dd_equivalent", dd_runs, dd_style_step_seconds))
    for k in range(repeats):
        # alternate which mode runs first, so that a drift in machine speed favours neither
        for name, runs, timer in (modes if k % 2 == 0 else modes[::-1]):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            runs.append(warm_mean(timer(renderer, spec)))
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))
            if on_run:
                on_run(name, runs[-1])
    counters = renderer.counters
    ratios = [e / d for e, d in zip(engine_runs, dd_runs)]
    result: dict[str, Any] = {
        "engine": {
            "seconds_per_step": statistics.median(engine_runs),
            "runs": [round(v, 4) for v in engine_runs],
            "engine_counters_per_step": {
                "unet_forwards": counters.unet_forwards / max(counters.steps, 1),
                "secondary_forwards": counters.secondary_forwards / max(counters.steps, 1),
                "clip_image_calls": {k: v / max(counters.steps, 1) for k, v in counters.clip_image_calls.items()},
            },
        },
        "dd_equivalent": {
            "seconds_per_step": statistics.median(dd_runs),
            "runs": [round(v, 4) for v in dd_runs],
        },
        "ratio_engine_to_dd": statistics.median(engine_runs) / statistics.median(dd_runs),
        "ratio_runs": [round(r, 3) for r in ratios],
        "speedup": statistics.median(dd_runs) / statistics.median(engine_runs),
    }
    if device.type == "cuda":
        result["engine"]["peak_memory_gib"] = round(peaks["engine"] / 2**30, 2)
        result["dd_equivalent"]["peak_memory_gib"] = round(peaks["dd_equivalent"] / 2**30, 2)
    if count:
        counted = count_spec or spec
        for name, run in (("engine", run_engine), ("dd_equivalent", run_dd)):
            try:
                result[name]["per_step"] = work_per_step(run, renderer.models, counted, flops=flops)
            except Exception as error:  # an op the flop formulas cannot take: count without FLOPs
                if not flops:
                    raise
                result[name]["flops_error"] = f"{type(error).__name__}: {error}"
                result[name]["per_step"] = work_per_step(run, renderer.models, counted)
        result["counted_at"] = f"{counted.width}x{counted.height}"
    return result


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--cutn-batches", type=int, default=4)
    parser.add_argument("--mode", choices=("ddim", "plms"), default="ddim")
    parser.add_argument("--no-secondary", action="store_true", help="full UNet guidance path")
    parser.add_argument("--animation-mode", choices=("None", "2D", "3D", "Video Input"), default="None",
                        help="cut augmentations of this animation mode (DD's MakeCutoutsDango)")
    parser.add_argument("--device")
    parser.add_argument("--check-syncs", action="store_true", help="raise on a host-device sync in a step")
    parser.add_argument("--baseline", action="store_true", help="also run the DD-equivalent mode")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each mode (medians reported)")
    parser.add_argument("--count", action="store_true", help="with --baseline: work per step of both modes")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    models: ModelSetSpec = preset["models"]
    if args.no_secondary:
        models = without_secondary(models)
    started = time.perf_counter()
    model_set = ModelSet(models, args.device, random_weights=args.preset != "tiny")
    load_seconds = time.perf_counter() - started
    renderer = Renderer(model_set, check_syncs=args.check_syncs)
    spec = make_spec(models, args.width or preset["width"], args.height or preset["height"],
                     steps=args.steps, cutn_batches=args.cutn_batches, mode=args.mode,
                     animation_mode=args.animation_mode)
    device = model_set.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    renderer.render(with_steps(spec, 2))  # warm-up (kernels, cudnn autotune)
    renderer.render(spec)
    c = renderer.counters
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "size": f"{spec.width}x{spec.height}",
        "mode": args.mode,
        "animation_mode": args.animation_mode,
        "secondary": models.use_secondary_model,
        "cutn_batches": args.cutn_batches,
        "steps": c.steps,
        "load_seconds": round(load_seconds, 2),
        "seconds_per_step": round(c.seconds_per_step, 4),
        "unet_forwards": c.unet_forwards,
        "secondary_forwards": c.secondary_forwards,
        "clip_image_calls": c.clip_image_calls,
        "cuts_encoded": c.cuts_encoded,
        "syncs_checked": bool(args.check_syncs and device.type == "cuda"),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if args.baseline:
        side = compare(renderer, spec, repeats=max(1, args.repeats), count=args.count)
        result["seconds_per_step"] = round(side["engine"]["seconds_per_step"], 4)
        result["dd_style_seconds_per_step"] = round(side["dd_equivalent"]["seconds_per_step"], 4)
        result["speedup"] = round(side["speedup"], 2)
        result["ratio_engine_to_dd"] = round(side["ratio_engine_to_dd"], 3)
        if args.count:
            result["engine_per_step"] = side["engine"]["per_step"]
            result["dd_style_per_step"] = side["dd_equivalent"]["per_step"]
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
