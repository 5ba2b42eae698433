"""Benchmark 1: the engine on the CPU against the DD-equivalent mode (same models, spec, seed).

Two model sets, each with the secondary model and on the full-UNet path:
- ``tiny``: the built-in tiny random test models (64 px-trained UNet, tiny secondary,
  tiny ViT + tiny ResNet CLIPs) at 128x64;
- ``mid``: DD's defaults scaled down: the real 512 UNet layout (attention at 32/16/8
  px, 2 res blocks, scale-shift norm, resblock up/down) at 128 px with 32 channels
  (DD: 512 px, 256 channels; 6.6 M parameters) rendering 320x192 (DD: 1280x768 - the
  same 3.75x the UNet's native area, so the same 3840 attention tokens at the finest
  attention level), the full-size secondary model and one small ViT (4 layers, width
  256, 112 px input, 16 px patches; DD: ViT-B/32, ViT-B/16 and RN50 at 224 px). CLIP
  and cut work is then about 15% of the engine's full-UNet step on this CPU; at DD's
  defaults it is about 20% of the step's FLOPs (7.3 of 37.5 TFLOP).
All weights are random (cost depends on the architecture, not the weights). DD's
default guidance (cutn_batches 4, cut schedules 12+4 / 4+12: 64 cuts per model per step).
One more tiny full-UNet case takes Video Input's cut augmentations (DD's MakeCutoutsDango
by animation mode: Video Input adds a perspective warp and a nearest-neighbour rotation;
2D/3D add only a mirror and a hue shift, which cost next to nothing), in both modes.

Per configuration: seconds per step of both modes (median of 3-4 interleaved runs, the
first step of each run left out), their ratio, the work per step (``engine.benchmark``'s
counts: UNet forwards, CLIP calls per model, host syncs, aten ops that run a kernel) and, on the full-UNet path,
the cost of the parts in isolation to explain the ratio.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import median, print_table, rounded, target, torch_threads
from engine import benchmark as eb
from engine.cutouts import augment, make_cutouts
from engine.models import ModelSet
from engine.render import Renderer
from engine.spec import ModelSetSpec, RenderSpec

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
MID_CLIP = "bench-vit-small::random"
"""A small ViT of CLIP's layout (bench/model_configs) with random weights."""
DD_UNET = "512x512_diffusion_uncond_finetune_008100"
MID_UNET_SETTINGS = (("image_size", 128), ("num_channels", 32), ("num_head_channels", 32))
RATIO_TARGET = 0.6


@dataclasses.dataclass(frozen=True)
class EngineCase:
    """One side-by-side measurement."""

    label: str
    model_set: str  # "tiny" | "mid"
    secondary: bool
    width: int
    height: int
    steps: int
    repeats: int
    cutn_batches: int = 4
    count_size: tuple[int, int] | None = None
    """Size of the renders that count work per step (counts do not depend on it)."""
    animation_mode: str = "None"
    """Whose cut augmentations (DD's by animation mode): stills', 2D/3D's or Video Input's."""


def full_cases() -> list[EngineCase]:
    """The figures of `make bench`: about 8 of its 14 minutes on a 2-core VM (tiny cases
    40-60 s each, mid secondary about 110 s, mid full UNet about 240 s). Each run times
    all its steps but the first: 4 for the tiny cases, 1-2 for the mid ones, whose steps
    take 5-12 s each."""
    return [
        EngineCase("tiny, secondary model", "tiny", True, 128, 64, steps=5, repeats=4),
        EngineCase("tiny, full UNet", "tiny", False, 128, 64, steps=5, repeats=4),
        EngineCase("tiny, full UNet, Video Input cuts", "tiny", False, 128, 64, steps=5, repeats=3,
                   animation_mode="Video Input"),
        EngineCase("mid, secondary model", "mid", True, 320, 192, steps=2, repeats=3, count_size=(64, 64)),
        EngineCase("mid, full UNet", "mid", False, 320, 192, steps=3, repeats=3, count_size=(64, 64)),
    ]


def quick_cases() -> list[EngineCase]:
    """A tiny configuration for tests (seconds, not meaningful figures): two steps a run,
    one of them timed; two cut batches, so DD's per-cut-batch loop shows in the counts."""
    return [
        EngineCase("tiny, secondary model", "tiny", True, 64, 64, steps=2, repeats=1, cutn_batches=2),
        EngineCase("tiny, full UNet", "tiny", False, 64, 64, steps=2, repeats=1, cutn_batches=2),
    ]


def register_bench_clip_configs() -> None:
    import open_clip

    if "bench-vit-small" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def model_set_spec(name: str, secondary: bool) -> ModelSetSpec:
    if name == "tiny":
        return dataclasses.replace(eb.PRESETS["tiny"]["models"], use_secondary_model=secondary)
    if name == "mid":
        register_bench_clip_configs()
        return ModelSetSpec(diffusion_model=DD_UNET, use_secondary_model=secondary, clip_models=(MID_CLIP,),
                            custom_model_settings=MID_UNET_SETTINGS)
    raise ValueError(f"unknown model set {name!r} (tiny or mid)")


def load_model_set(name: str, secondary: bool) -> ModelSet:
    quiet_open_clip()
    return ModelSet(model_set_spec(name, secondary), "cpu", random_weights=name != "tiny")


def quiet_open_clip() -> None:
    """open_clip logs a warning for every randomly initialised model; expected here."""
    import logging

    logging.getLogger().setLevel(logging.ERROR)


def parameters_millions(module: torch.nn.Module | None) -> float | None:
    if module is None:
        return None
    return round(sum(p.numel() for p in module.parameters()) / 1e6, 2)


def _timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return median(times)


def component_seconds(model_set: ModelSet, spec: RenderSpec) -> dict[str, Any]:
    """The parts of a full-UNet step timed alone: UNet forward without grad, forward plus
    the backward to the input, cut making + augmentation, and CLIP forward+backward of
    all cuts of one step, per model."""
    from engine.unet import unet_forward

    unet = model_set.unet
    x = torch.randn(1, 3, spec.height, spec.width)
    timesteps = torch.full((1,), 500.0)

    def forward():
        with torch.no_grad():
            unet_forward(unet, x, timesteps)

    def forward_backward():
        xg = x.clone().requires_grad_()
        out = unet_forward(unet, xg, timesteps)
        torch.autograd.grad(out[:, :3].sum(), xg)

    g = spec.guidance
    overview, inner, ic_pow, gray = spec.cuts.at(0)
    parts: dict[str, Any] = {
        "unet_forward": _timed(forward),
        "unet_forward_backward": _timed(forward_backward),
        "cutouts_per_model": {},
        "clip_forward_backward": {},
    }
    for name, clip in model_set.clips.items():
        image = x.clone().requires_grad_()

        def cuts_only():
            cuts = make_cutouts(image.add(1).div(2), clip.input_size, overview, inner, ic_pow, gray,
                                   g.cutn_batches, random.Random(0))
            return augment(cuts, torch.Generator().manual_seed(0), g.augmentations)

        cuts = cuts_only().detach().requires_grad_()

        def encode():
            torch.autograd.grad(clip.encode_image(cuts).sum(), cuts)

        parts["cutouts_per_model"][name] = _timed(cuts_only)
        parts["clip_forward_backward"][name] = _timed(encode)
    unet_f, unet_fb = parts["unet_forward"], parts["unet_forward_backward"]
    clip_and_cuts = sum(parts["cutouts_per_model"].values()) + sum(parts["clip_forward_backward"].values())
    # The engine: one grad forward + backward. DD: a no-grad forward, a checkpointed grad
    # forward (no activations kept) and a backward that recomputes the forward.
    parts["unet_only_ratio_estimate"] = unet_fb / (unet_f + unet_f + unet_fb)
    parts["ratio_estimate"] = (unet_fb + clip_and_cuts) / (2 * unet_f + unet_fb + clip_and_cuts)
    parts["clip_and_cuts_share_of_engine_step"] = clip_and_cuts / (unet_fb + clip_and_cuts)
    return parts


def run_case(case: EngineCase, log=print) -> dict[str, Any]:
    started = time.perf_counter()
    model_set = load_model_set(case.model_set, case.secondary)
    renderer = Renderer(model_set)
    spec = eb.make_spec(model_set.spec, case.width, case.height, steps=case.steps, cutn_batches=case.cutn_batches,
                        animation_mode=case.animation_mode)
    count_spec = None
    if case.count_size:
        count_spec = dataclasses.replace(spec, width=case.count_size[0], height=case.count_size[1])
    side = eb.compare(renderer, spec, repeats=case.repeats, count_spec=count_spec,
                      on_run=lambda mode, s: log(f"   {case.label}: {mode} {s:.3f} s/step"))
    clips = list(model_set.clips)
    engine_work, dd_work = side["engine"]["per_step"], side["dd_equivalent"]["per_step"]
    result: dict[str, Any] = {
        "label": case.label,
        "model_set": case.model_set,
        "models": model_set.spec.key,
        "parameters_millions": {
            "unet": parameters_millions(model_set.unet),
            "secondary": parameters_millions(model_set.secondary),
            **{name: parameters_millions(c.model.visual) for name, c in model_set.clips.items()},
        },
        "size": f"{case.width}x{case.height}",
        "animation_mode": case.animation_mode,
        "secondary_model": case.secondary,
        "cutn_batches": case.cutn_batches,
        "steps_per_run": case.steps,
        "runs": case.repeats,
        **side,
    }
    checks = [
        target("UNet forwards per step", engine_work["unet_forwards"], 1, "=="),
        target("host syncs per step", engine_work["host_syncs"], 0, "=="),
    ]
    checks += [target(f"CLIP image-encoder calls per step ({name})", engine_work["clip_image_calls"].get(name, 0),
                      1, "==") for name in clips]
    if not case.secondary:
        parts = result["components_seconds"] = component_seconds(model_set, spec)
        why = (f"the engine's UNet work is {parts['unet_only_ratio_estimate']:.2f} of DD's, but CLIP, cut and "
               f"augmentation work, the same in both modes, is {parts['clip_and_cuts_share_of_engine_step']:.0%} "
               "of the engine's step at this size")
        checks.append(target("engine / DD-equivalent time (full UNet)", side["ratio_engine_to_dd"], RATIO_TARGET,
                             why=why))
    result["targets"] = checks
    result["dd_equivalent_work_note"] = (
        f"DD-equivalent per step: {dd_work['unet_forwards']:g} UNet forwards, "
        f"{dd_work['unet_block_evaluations']:g} evaluations of a checkpointed block, "
        f"{', '.join(f'{v:g}' for v in dd_work['clip_image_calls'].values())} CLIP calls per model, "
        f"{dd_work['host_syncs']:g} host syncs, {dd_work['kernel_ops']:g} kernel ops (engine: "
        f"{engine_work['kernel_ops']:g})")
    result["wall_seconds"] = time.perf_counter() - started
    return rounded(result)


def run(cases: list[EngineCase] | None = None, threads: int = 1, log=print) -> dict[str, Any]:
    """Benchmark 1; returns its results section."""
    results = []
    with torch_threads(threads):
        for case in cases or full_cases():
            log(f"-- engine: {case.label} ({case.width}x{case.height}, {case.steps} steps x {case.repeats} runs)")
            results.append(run_case(case, log))
    summarise(results)
    return {"torch_threads": threads, "device": "cpu", "cases": results}


def summarise(results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        work, dd = r["engine"]["per_step"], r["dd_equivalent"]["per_step"]
        calls = "/".join(f"{v:g}" for v in work["clip_image_calls"].values())
        dd_calls = "/".join(f"{v:g}" for v in dd["clip_image_calls"].values())
        rows.append([r["label"], r["size"], r["engine"]["seconds_per_step"], r["dd_equivalent"]["seconds_per_step"],
                     r["ratio_engine_to_dd"], f"{work['unet_forwards']:g} / {dd['unet_forwards']:g}",
                     f"{calls} / {dd_calls}", f"{work['host_syncs']:g} / {dd['host_syncs']:g}",
                     f"{work['kernel_ops']:g} / {dd['kernel_ops']:g}"])
    print_table("Engine on CPU vs DD-equivalent (engine / DD)",
                ["case", "size", "engine s/step", "DD s/step", "ratio", "UNet fwd/step", "CLIP calls/step",
                 "host syncs/step", "kernel ops/step"], rows)
