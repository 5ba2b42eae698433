"""Per-step speed of the renderer, against Disco Diffusion's own loop structure.

    python -m engine.benchmark --preset dd --steps 10           # on a GPU
    python -m engine.benchmark --preset tiny --steps 3          # anywhere

``dd`` builds DD's default architectures (512 UNet, secondary model, ViT-B-32,
ViT-B-16, RN50) with RANDOM weights (no downloads; the pictures are noise) at
1280x768, cutn_batches 4. ``--baseline`` also times DD's structure on the same
models: guided-diffusion's sampling loop calling a DD-style cond_fn (a second, grad
UNet forward on the full path, one CLIP call and one backward per cut batch, and a
``.item()`` per batch). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from engine.cutouts import augment, make_cutouts
from engine.losses import clamp_gradient, saturation_loss, spherical_distance_loss, tv_loss
from engine.models import ModelSet, diffusion_steps_for
from engine.render import Renderer
from engine.secondary import alpha_sigma_to_t_float
from engine.spec import GuidanceSettings, ModelSetSpec, RenderSpec, SamplerSettings, WeightedPrompt

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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dd_style_seconds_per_step(renderer: Renderer, spec: RenderSpec) -> float:
    """Time DD v5.7's loop structure with the same models and settings (see module doc)."""
    from guided_diffusion.script_util import create_gaussian_diffusion

    ms, g = renderer.models, spec.guidance
    s = ms.unet_settings
    steps = spec.sampler.steps
    diffusion = create_gaussian_diffusion(
        steps=diffusion_steps_for(steps), learn_sigma=s["learn_sigma"], noise_schedule=s["noise_schedule"],
        rescale_timesteps=s["rescale_timesteps"], timestep_respacing=f"ddim{steps}",
    )
    targets = renderer._targets(spec, {}, torch.Generator(device=ms.device).manual_seed(0))
    rng, gen = random.Random(0), torch.Generator(device=ms.device).manual_seed(0)
    state = {"cur_t": diffusion.num_timesteps - 1}
    loss_values = []

    def cond_fn(x, t, y=None):
        cur_t = state["cur_t"]
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            fac = float(diffusion.sqrt_one_minus_alphas_cumprod[cur_t])
            if ms.secondary is not None:
                cosine = alpha_sigma_to_t_float(float(diffusion.sqrt_alphas_cumprod[cur_t]), fac)
                out = ms.secondary(x, torch.full((1,), cosine, device=x.device)).pred
            else:
                my_t = torch.ones([1], device=x.device, dtype=torch.long) * cur_t
                out = diffusion.p_mean_variance(ms.unet, x, my_t, clip_denoised=False)["pred_xstart"]
            x_in = out * fac + x * (1 - fac)
            x_in_grad = torch.zeros_like(x_in)
            t_int = int(t.item()) + 1
            overview, inner, ic_pow, gray_p = spec.cuts.at(1000 - t_int)
            for target in targets:
                for _ in range(g.cutn_batches):
                    cuts = make_cutouts(x_in.add(1).div(2), target.clip.input_size, overview, inner, ic_pow, gray_p, 1, rng)
                    cuts = augment(cuts, gen)
                    dists = spherical_distance_loss(target.clip.encode_image(cuts)[:, None], target.embeddings[None])
                    losses = dists.mul(target.weights).sum(1).mean()
                    loss_values.append(losses.item())
                    x_in_grad += torch.autograd.grad(losses * g.clip_guidance_scale, x_in)[0] / g.cutn_batches
            loss = tv_loss(x_in).sum() * g.tv_scale + saturation_loss(x_in) * g.sat_scale
            x_in_grad += torch.autograd.grad(loss, x_in)[0]
            grad = -torch.autograd.grad(x_in, x, x_in_grad)[0]
        return clamp_gradient(grad, g.clamp_max) if g.clamp_grad else grad

    shape = (1, 3, spec.height, spec.width)
    samples = diffusion.ddim_sample_loop_progressive(
        ms.unet, shape, clip_denoised=g.clip_denoised, model_kwargs={}, cond_fn=cond_fn, progress=False,
        skip_timesteps=0, eta=spec.sampler.eta, noise=torch.randn(shape, device=ms.device),
    )
    times = []
    _sync(ms.device)
    started = time.perf_counter()
    for _ in samples:
        _sync(ms.device)
        now = time.perf_counter()
        times.append(now - started)
        started = now
        state["cur_t"] -= 1
    warm = times[1:] or times
    return sum(warm) / len(warm)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--cutn-batches", type=int, default=4)
    parser.add_argument("--mode", choices=("ddim", "plms"), default="ddim")
    parser.add_argument("--no-secondary", action="store_true", help="full UNet guidance path")
    parser.add_argument("--device")
    parser.add_argument("--check-syncs", action="store_true", help="raise on a host-device sync in a step")
    parser.add_argument("--baseline", action="store_true", help="also time DD's loop structure")
    args = parser.parse_args(argv)

    preset = PRESETS[args.preset]
    models: ModelSetSpec = preset["models"]
    if args.no_secondary:
        models = ModelSetSpec(**{**models.__dict__, "use_secondary_model": False})
    started = time.perf_counter()
    model_set = ModelSet(models, args.device, random_weights=args.preset != "tiny")
    load_seconds = time.perf_counter() - started
    renderer = Renderer(model_set, check_syncs=args.check_syncs)
    spec = RenderSpec(
        width=args.width or preset["width"],
        height=args.height or preset["height"],
        seed=1,
        text_prompts=(WeightedPrompt("a lighthouse in a storm, oil painting", 1.0),),
        guidance=GuidanceSettings(cutn_batches=args.cutn_batches),
        sampler=SamplerSettings(mode=args.mode, steps=args.steps, skip_steps=0),
        models=models,
    )
    device = model_set.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    renderer.render(dataclass_replace_steps(spec, 2))  # warm-up (kernels, cudnn autotune)
    renderer.render(spec)
    c = renderer.counters
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "size": f"{spec.width}x{spec.height}",
        "mode": args.mode,
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
        result["dd_style_seconds_per_step"] = round(dd_style_seconds_per_step(renderer, spec), 4)
        result["speedup"] = round(result["dd_style_seconds_per_step"] / max(c.seconds_per_step, 1e-9), 2)
    print(json.dumps(result))
    return result


def dataclass_replace_steps(spec: RenderSpec, steps: int) -> RenderSpec:
    import dataclasses

    return dataclasses.replace(spec, sampler=dataclasses.replace(spec.sampler, steps=steps))


if __name__ == "__main__":
    main()
