"""Benchmark 4: GPU throughput at Disco Diffusion's defaults, full-size RANDOM-weight models.

    python -m bench.gpu                    # any machine with a CUDA GPU: unattended, no network
    python -m bench.gpu --cpu-dry-run      # the same code path with the tiny models on the CPU
                                           # (checks the script; its figures mean nothing)

Builds DD's default architectures with random weights (the 512x512 UNet layout, the
secondary model, ViT-B/32, ViT-B/16 and RN50: cost depends on the architecture, not the
weights; nothing is downloaded) and renders at DD's defaults (1280x768, cutn_batches 4,
DD's cut schedules), with the secondary model, then on the full-UNet path. For each:
seconds per step of the engine and of the DD-equivalent mode (``engine.benchmark``;
medians of interleaved runs), FLOPs per step (counted with torch's flop formulas on the
real run: matmuls, convolutions, attention, forward and backward), achieved TFLOP/s
and the fraction of the GPU's dense fp16/bf16 peak (looked up from the device name;
``--peak-tflops`` overrides), peak memory, UNet forwards / CLIP calls / host syncs per
step (including the syncs torch's CUDA sync debug mode reports) and kernel launches per step
(aten ops that run a kernel: each costs host time however small its tensors).

What an animation frame adds (section "animation", secondary model): the engine's seconds
per step with 2D/3D's and Video Input's cut augmentations against a still's, and RAFT's
seconds per pair of 1280x768 frames (random weights, fp32; torchvision's raft_large).

The largest size that fits in 16, 24 and 80 GiB: peak memory is measured at a few
sizes (5:3 like 1280x768), fitted as a + b*pixels + c*pixels^2 (attention makes memory
grow faster than the pixel count), and each budget's predicted largest size is then
rendered for two steps under ``torch.cuda.set_per_process_memory_fraction`` (the budget
less the CUDA context), stepping down until one fits or up while the next one fits (so a
size reported with "largest" true is the largest); budgets above the device's memory
are predictions only. A time budget (``--budget-seconds``) skips later stages rather
than overrunning; whatever was measured is written into bench/results/ (section "gpu").

On a machine without CUDA it prints that there is no CUDA device and exits with 0.
Needs torch, open_clip_torch, guided-diffusion-sdk, numpy and pillow (carry wheels to
an offline GPU machine); Ray is not needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

PEAK_DENSE_FP16_TFLOPS = (
    # (substring of torch.cuda.get_device_name, TFLOP/s dense fp16/bf16 tensor-core peak)
    ("H200", 989.4),
    ("H100 PCIe", 756.5),
    ("H100 NVL", 835.5),
    ("H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H800", 989.4),
    ("A100", 312.0),
)
BUDGETS_GIB = (16, 24, 80)
LOCKSTEP_IMAGES = (2, 4)
"""Images per call measured besides one (a still run's seeds rendered in lockstep)."""
MEMORY_TARGET_GIB = 16
SPEEDUP_TARGET = 3.0
PEAK_FRACTION_TARGET = 0.35
WHY_BELOW_PEAK = (
    "one image per UNet call: at batch 1 the step is bound by memory traffic and layout copies, not "
    "tensor-core math (cuDNN's NCHW/NHWC transposes around each convolution, the elementwise work "
    "between the convolutions, the cut resampling and augmentations; bench.gpu_profile breaks a step "
    "down), which torch.compile only partly fuses; the UNet's time per image falls to 0.69-0.77x at "
    "4 images per call (bench.gpu_profile's batching headroom), so a larger share needs several "
    "images per UNet call")
WHY_SECONDARY_SPEEDUP = (
    "on the secondary-model path DD's UNet already runs one forward without gradients, as the engine's "
    "does: the engine saves DD's per-cut-batch CLIP calls and host syncs, not UNet work; compile_unet "
    "(on for scenes of 4000+ sampler steps) fuses the UNet's elementwise work")
ASPECT = 768 / 1280


def peak_tflops(device_name: str) -> float | None:
    """Dense fp16/bf16 tensor-core peak of a GPU from its name (None when unknown)."""
    for key, value in PEAK_DENSE_FP16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def five_by_three(width: int) -> tuple[int, int]:
    """(width, height) at DD's 1280x768 aspect, both multiples of 64."""
    width = max(64, width // 64 * 64)
    return width, max(64, round(width * ASPECT / 64) * 64)


def candidate_sizes(max_width: int = 8192) -> list[tuple[int, int]]:
    return [five_by_three(w) for w in range(320, max_width + 1, 64)]


def fit_memory(points: list[tuple[int, int]]) -> tuple[float, float, float]:
    """(a, b, c) of bytes = a + b*pixels + c*pixels^2 from (pixels, bytes) points
    (a straight line with two points; c is never negative)."""
    import numpy as np

    if len(points) < 2:
        raise ValueError("need peak memory at two sizes or more to fit")
    pixels = np.array([p for p, _ in points], dtype=float)
    used = np.array([b for _, b in points], dtype=float)
    if len(points) >= 3:
        c, b, a = np.polyfit(pixels, used, 2)
        if c >= 0:
            return float(a), float(b), float(c)
    b, a = np.polyfit(pixels, used, 1)
    return float(a), float(b), 0.0


def predicted_bytes(fit: tuple[float, float, float], pixels: int) -> float:
    a, b, c = fit
    return a + b * pixels + c * pixels * pixels


def largest_size_within(fit: tuple[float, float, float], budget_bytes: float) -> tuple[int, int] | None:
    """The largest 5:3 size whose predicted peak memory is within the budget."""
    best = None
    for width, height in candidate_sizes():
        if predicted_bytes(fit, width * height) <= budget_bytes:
            best = (width, height)
    return best


def largest_fitting(fits, sizes: list, start: int, probes: int = 5) -> tuple[int | None, bool]:
    """(index of the largest of ``sizes`` that ``fits``, whether the next size up was seen to
    fail) searching from ``start`` (the prediction): down until one fits, or up while the next
    one fits; at most ``probes`` calls of ``fits``, which may also answer None (out of time:
    the search stops there)."""
    probed, answer = 1, fits(sizes[start])
    if answer is None:
        return None, False
    if answer:
        best = start
        while best + 1 < len(sizes) and probed < probes:
            probed += 1
            answer = fits(sizes[best + 1])
            if not answer:
                return best, answer is False
            best += 1
        return best, False
    for index in range(start - 1, -1, -1):
        if probed >= probes:
            break
        probed += 1
        answer = fits(sizes[index])
        if answer is None:
            break
        if answer:
            return index, True
    return None, False


@dataclasses.dataclass(frozen=True)
class GpuRun:
    preset: str = "dd"
    width: int = 1280
    height: int = 768
    cutn_batches: int = 4
    steps: int = 5
    repeats: int = 2
    memory_sizes: tuple[tuple[int, int], ...] = ((640, 384), (960, 576), (1280, 768), (1600, 960))
    budget_seconds: float = 540.0
    device: str = "cuda"
    compile_unet: bool = False
    animation_runs: int = 2
    """Runs per animation mode in ``animation_costs`` (median)."""
    raft_repeats: int = 3
    """Timed RAFT calls after its warm-up (median)."""
    paths: tuple[bool, ...] = (True, False)
    """The paths measured, by ``use_secondary_model``: with the secondary model, then the full UNet."""


PATHS = {"both": (True, False), "secondary": (True,), "full": (False,)}
"""``--path``: the ``use_secondary_model`` values measured."""

DRY_RUN = GpuRun(preset="tiny", width=64, height=64, cutn_batches=1, steps=2, repeats=1, memory_sizes=(),
                 budget_seconds=300.0, device="cpu", animation_runs=1, raft_repeats=1)
"""The CPU dry run: every stage once, as little as it takes (each run times one step)."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.ends = time.monotonic() + seconds

    def left(self) -> float:
        return self.ends - time.monotonic()


def _free(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(run: GpuRun, secondary: bool, peak: float | None, deadline: Deadline, log=print) -> dict[str, Any]:
    """Engine and DD-equivalent mode side by side at the run's size, with FLOPs."""
    from engine import benchmark as eb
    from engine.models import ModelSet
    from engine.render import Renderer

    models = eb.PRESETS[run.preset]["models"]
    if not secondary:
        models = eb.without_secondary(models)
    started = time.perf_counter()
    model_set = ModelSet(models, run.device, random_weights=run.preset != "tiny", compile_unet=run.compile_unet)
    load_seconds = time.perf_counter() - started
    renderer = Renderer(model_set)
    spec = eb.make_spec(models, run.width, run.height, steps=run.steps, cutn_batches=run.cutn_batches)
    log(f"-- gpu: {models.key} at {run.width}x{run.height} (models built in {load_seconds:.1f} s)")
    side = eb.compare(renderer, spec, repeats=run.repeats, count=True, flops=True,
                      on_run=lambda mode, s: log(f"   {mode}: {s:.3f} s/step"))
    result: dict[str, Any] = {"models": models.key, "secondary_model": secondary,
                              "size": f"{run.width}x{run.height}", "cutn_batches": run.cutn_batches,
                              "steps_per_run": run.steps, "runs": run.repeats,
                              "model_build_seconds": load_seconds, **side}
    for mode in ("engine", "dd_equivalent"):
        figures = side[mode]
        flops = figures["per_step"].get("flops")
        figures["tflop_per_step"] = flops / 1e12 if flops else None
        figures["achieved_tflops"] = flops / figures["seconds_per_step"] / 1e12 if flops else None
        figures["fraction_of_peak"] = figures["achieved_tflops"] / peak if (peak and flops) else None
    result["lockstep"] = lockstep(renderer, spec, result["engine"], side["dd_equivalent"]["seconds_per_step"],
                                  peak, deadline, log)
    result["_renderer"] = renderer
    result["_spec"] = spec
    return result


def lockstep(renderer, spec, engine: dict[str, Any], dd_seconds: float, peak: float | None,
             deadline: Deadline, log=print) -> list[dict[str, Any]]:
    """The engine rendering ``LOCKSTEP_IMAGES`` seeds of the spec together (``render_images``):
    seconds per step and per image-step, throughput against one image per call, achieved
    TFLOP/s (the one-image FLOPs per step times the images) and peak memory. A size that
    runs out of memory or time ends the list."""
    import statistics

    import torch

    from engine import benchmark as eb
    from engine.errors import EngineOutOfMemory

    rows: list[dict[str, Any]] = []
    device = renderer.models.device
    flops = engine["per_step"].get("flops")
    for images in LOCKSTEP_IMAGES:
        if deadline.left() < 30:
            rows.append({"images": images, "skipped": "time budget"})
            break
        try:
            eb.engine_step_seconds(renderer, eb.with_steps(spec, 2), images)  # warm-up
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = statistics.median(eb.engine_step_seconds(renderer, spec, images)[1:])
        except (torch.OutOfMemoryError, EngineOutOfMemory):
            _free(device)
            rows.append({"images": images, "out_of_memory": True})
            log(f"   {images} images per call: out of memory")
            break
        per_image = seconds / images
        row: dict[str, Any] = {
            "images": images, "seconds_per_step": seconds, "seconds_per_image_step": per_image,
            "throughput_vs_one_image": engine["seconds_per_step"] / per_image,
            "speedup_over_dd_equivalent": dd_seconds / per_image,
        }
        if flops:
            row["achieved_tflops"] = flops * images / seconds / 1e12
            row["fraction_of_peak"] = row["achieved_tflops"] / peak if peak else None
        if device.type == "cuda":
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        rows.append(row)
        log(f"   {images} images per call: {seconds:.3f} s/step, {per_image:.3f} s per image-step")
    return rows


ANIMATION_MODES = ("None", "2D", "Video Input")
"""Whose cut augmentations an animation's frames pay for (2D and 3D share DD's)."""
RAFT_FRAME_SIZE = (1280, 768)


def animation_costs(renderer, spec, deadline: Deadline, log=print, *, runs: int = 2,
                    raft_repeats: int = 3) -> dict[str, Any]:
    """What an animation frame adds to a still's step: the engine's seconds per step with
    each animation mode's cut augmentations (DD's MakeCutoutsDango: 2D/3D mirror and hue,
    Video Input a perspective warp) on the same models and spec, medians of ``runs`` runs;
    and RAFT (random weights, fp32, DD's 20 iterations) on one pair of frames at 1280x768
    (median of ``raft_repeats`` calls after a warm-up), as a Video Input frame with flow
    warp computes it once."""
    import statistics

    import numpy as np

    from engine import benchmark as eb
    from engine.spec import augmentations_for_mode

    device = renderer.models.device
    result: dict[str, Any] = {"engine_seconds_per_step": {}}
    for mode in ANIMATION_MODES:
        if deadline.left() < 30:
            result["engine_seconds_per_step"][mode] = "skipped: time budget"
            continue
        moded = dataclasses.replace(spec, guidance=dataclasses.replace(
            spec.guidance, augmentations=augmentations_for_mode(mode)))
        eb.engine_step_seconds(renderer, eb.with_steps(moded, 2))  # warm-up
        timed = [statistics.median(eb.engine_step_seconds(renderer, moded)[1:]) for _ in range(runs)]
        result["engine_seconds_per_step"][mode] = statistics.median(timed)
        log(f"   {mode} cut augmentations: {result['engine_seconds_per_step'][mode]:.3f} s/step")
    still = result["engine_seconds_per_step"].get("None")
    if isinstance(still, float):
        result["vs_still"] = {mode: seconds / still for mode, seconds in result["engine_seconds_per_step"].items()
                              if isinstance(seconds, float)}
    if deadline.left() < 30:
        result["raft"] = {"skipped": "time budget"}
        return result
    try:
        from animation.flow import RaftFlow

        raft = RaftFlow.random(seed=0, device=device)
        width, height = RAFT_FRAME_SIZE if device.type == "cuda" else (128, 128)
        frames = np.random.default_rng(0).integers(0, 256, (2, height, width, 3), dtype=np.uint8)
        raft(frames[0], frames[1])  # warm-up
        times = []
        for _ in range(raft_repeats):
            started = time.perf_counter()
            flow = raft(frames[0], frames[1])  # returns on the host: synchronised
            times.append(time.perf_counter() - started)
        result["raft"] = {"size": f"{width}x{height}", "iterations": raft.iterations, "dtype": "float32",
                          "seconds_per_pair": statistics.median(times), "flow_shape": list(flow.shape)}
        log(f"   RAFT at {width}x{height}: {result['raft']['seconds_per_pair']:.3f} s per pair")
        del raft
    except Exception as error:  # torchvision missing or RAFT failing: recorded, not raised
        result["raft"] = {"error": f"{type(error).__name__}: {error}"}
    _free(device)
    return result


def memory_fit(renderer, spec, run: GpuRun, deadline: Deadline, log=print) -> dict[str, Any]:
    """Largest sizes within BUDGETS_GIB (module doc: fit, then verify under a memory cap)."""
    import torch

    from engine import benchmark as eb
    from engine.errors import EngineOutOfMemory

    device = renderer.models.device
    if device.type != "cuda":
        return {"skipped": "no CUDA memory statistics on the CPU"}
    if device.index is None:  # set_per_process_memory_fraction needs an index
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    free, _ = torch.cuda.mem_get_info(device)
    context = max(0, total - free - torch.cuda.memory_reserved(device))

    def peak_at(width: int, height: int) -> int | None:
        _free(device)
        torch.cuda.reset_peak_memory_stats(device)
        sized = eb.with_steps(dataclasses.replace(spec, width=width, height=height), 2)
        try:
            renderer.render(sized)
        except EngineOutOfMemory:
            return None
        return torch.cuda.max_memory_reserved(device)

    points = []
    for width, height in run.memory_sizes:
        if deadline.left() < 30:
            break
        used = peak_at(width, height)
        if used is None:
            break
        points.append((width * height, used))
        log(f"   memory at {width}x{height}: {used / 2**30:.2f} GiB reserved")
    result: dict[str, Any] = {
        "method": ("peak reserved memory measured at the sizes below, fitted as a + b*pixels + c*pixels^2; each "
                   "budget's predicted largest 5:3 size rendered for 2 steps under "
                   "torch.cuda.set_per_process_memory_fraction((budget - CUDA context) / device memory), "
                   "then stepping down a size until one fits or up while the next one fits (64 px of width "
                   "a step, at most 5 renders); 'largest' says whether the next size up was seen to fail"),
        "device_memory_gib": total / 2**30,
        "cuda_context_gib": context / 2**30,
        "measured": [{"pixels": p, "reserved_gib": b / 2**30} for p, b in points],
    }
    if len(points) < 2:
        result["error"] = "fewer than two sizes measured: no fit"
        return result
    fit = fit_memory(points)
    result["fit_bytes"] = {"a": fit[0], "b_per_pixel": fit[1], "c_per_pixel2": fit[2]}
    budgets = {}
    sizes = candidate_sizes()
    try:
        for budget in BUDGETS_GIB:
            allowed = budget * 2**30 - context
            predicted = largest_size_within(fit, allowed)
            entry: dict[str, Any] = {"predicted": f"{predicted[0]}x{predicted[1]}" if predicted else None,
                                     "verified": None}
            if predicted and budget * 2**30 <= total and deadline.left() > 60:
                torch.cuda.set_per_process_memory_fraction(min(1.0, allowed / total), device)

                def fits(size: tuple[int, int]) -> bool | None:
                    return None if deadline.left() < 60 else peak_at(*size) is not None

                index, largest = largest_fitting(fits, sizes, sizes.index(predicted))
                torch.cuda.set_per_process_memory_fraction(1.0, device)
                if index is not None:
                    entry["verified"] = "{}x{}".format(*sizes[index])
                    entry["largest"] = largest
            elif predicted and budget * 2**30 > total:
                entry["note"] = f"above this device's {total / 2**30:.0f} GiB: prediction only"
            budgets[f"{budget}GiB"] = entry
            log(f"   largest size within {budget} GiB: predicted {entry['predicted']}, verified {entry['verified']}"
                + ("" if entry.get("largest", True) else " (larger sizes not tried)"))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    result["largest_size"] = budgets
    return result


def run_gpu(run: GpuRun, peak_override: float | None = None, log=print) -> dict[str, Any]:
    """Benchmark 4; returns its results section (errors of a stage are recorded, not raised)."""
    import torch

    from bench.common import rounded, target

    deadline = Deadline(run.budget_seconds)
    device = torch.device(run.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_override or (peak_tflops(name) if device.type == "cuda" else None)
    section: dict[str, Any] = {
        "device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
        "peak_dense_fp16_tflops": peak, "dry_run_on_cpu": device.type != "cuda",
        "precision": ("UNet and CLIP in fp16 on CUDA (guided-diffusion's convert_to_fp16, group norms in fp16 with "
                      "fp32 statistics from a reduction split across the GPU, contiguous layout), secondary model fp32"),
        "compile_unet": run.compile_unet,
        "configs": [], "targets": [],
    }
    for secondary in run.paths:
        if deadline.left() < 90:
            section["configs"].append({"secondary_model": secondary, "skipped": "time budget"})
            continue
        try:
            measured = measure(run, secondary, peak, deadline, log)
        except Exception as error:  # keep what was measured: record and go on
            section["configs"].append({"secondary_model": secondary, "error": f"{type(error).__name__}: {error}",
                                       "traceback": traceback.format_exc(limit=5)})
            _free(device)
            continue
        renderer, spec = measured.pop("_renderer"), measured.pop("_spec")
        if secondary and deadline.left() > 60:
            try:
                section["animation"] = animation_costs(renderer, spec, deadline, log, runs=run.animation_runs,
                                                       raft_repeats=run.raft_repeats)
            except Exception as error:
                section["animation"] = {"error": f"{type(error).__name__}: {error}"}
        if secondary or deadline.left() > 120:
            try:
                measured["memory"] = memory_fit(renderer, spec, run, deadline, log)
            except Exception as error:
                measured["memory"] = {"error": f"{type(error).__name__}: {error}"}
        section["configs"].append(measured)
        del renderer
        _free(device)
    for config in section["configs"]:
        if "engine" not in config:
            continue
        label = "secondary model" if config["secondary_model"] else "full UNet"
        checks = [target(f"{label}: speed-up over DD-equivalent", config["speedup"], SPEEDUP_TARGET, ">=",
                         why=WHY_SECONDARY_SPEEDUP if config["secondary_model"] else "")]
        if config["engine"].get("fraction_of_peak") is not None:
            checks.append(target(f"{label}: fraction of peak", config["engine"]["fraction_of_peak"],
                                 PEAK_FRACTION_TARGET, ">=", why=WHY_BELOW_PEAK))
        batched = [row for row in config.get("lockstep", []) if row.get("fraction_of_peak") is not None]
        if batched:
            best = max(batched, key=lambda row: row["fraction_of_peak"])
            checks.append(target(f"{label}: fraction of peak, {best['images']} images per call",
                                 best["fraction_of_peak"], PEAK_FRACTION_TARGET, ">=", why=WHY_BELOW_PEAK))
        if config["secondary_model"] and "peak_memory_gib" in config["engine"]:
            checks.append(target("DD defaults peak memory (GiB)", config["engine"]["peak_memory_gib"],
                                 MEMORY_TARGET_GIB, "<="))
        section["targets"] += checks
    section["budget_seconds"] = run.budget_seconds
    return rounded(section)


SUMMARY_HEADER = ["secondary", "engine s/step", "DD s/step", "speed-up", "engine TFLOP/s", "peak GiB",
                  "kernel ops/step (DD)"]


def summary_rows(section: dict) -> list[list]:
    """One row per configuration for the printed summary; a skipped or failed one says why."""
    rows = []
    for config in section["configs"]:
        if "engine" not in config:
            reason = config.get("skipped") or config.get("error") or "not measured"
            rows.append([config.get("secondary_model"), reason] + ["-"] * (len(SUMMARY_HEADER) - 2))
            continue
        e, d = config["engine"], config["dd_equivalent"]
        rows.append([config["secondary_model"], e["seconds_per_step"], d["seconds_per_step"], config["speedup"],
                     e["achieved_tflops"], e.get("peak_memory_gib", "-"),
                     f"{e['per_step'].get('kernel_ops', '-')} / {d['per_step'].get('kernel_ops', '-')}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machine", help="machine name in the results file name (default: short host name)")
    parser.add_argument("--out-dir", type=Path, help="where to write the results (default: bench/results)")
    parser.add_argument("--steps", type=int, default=GpuRun.steps)
    parser.add_argument("--repeats", type=int, default=GpuRun.repeats)
    parser.add_argument("--budget-seconds", type=float, default=GpuRun.budget_seconds,
                        help="stop starting new stages after this long (default %(default)s)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense fp16 peak, when its name is not known")
    parser.add_argument("--compile-unet", action="store_true",
                        help="torch.compile the UNet (the scene setting compile_unet; compilation is in the warm-up)")
    parser.add_argument("--path", choices=sorted(PATHS), default="both",
                        help="which sampling path: with the secondary model, the full UNet, or both (default)")
    parser.add_argument("--cpu-dry-run", action="store_true",
                        help="run the same code with the tiny models on the CPU (no meaningful figures)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from bench.common import environment, machine_name, print_table, results_path, today, torch_threads, update_results

    if args.steps < 3 or args.repeats < 1:
        print("bench.gpu: --steps must be at least 3 and --repeats at least 1", file=sys.stderr)
        return 2
    if args.cpu_dry_run:
        run = dataclasses.replace(DRY_RUN, budget_seconds=args.budget_seconds, paths=PATHS[args.path])
    elif not torch.cuda.is_available():
        print("bench.gpu: no CUDA device (torch.cuda.is_available() is false): nothing to measure here; "
              "run it on a machine with an NVIDIA GPU")
        return 0
    else:
        run = GpuRun(steps=args.steps, repeats=args.repeats, budget_seconds=args.budget_seconds,
                     compile_unet=args.compile_unet, paths=PATHS[args.path])
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about every random-weight model
    started = time.perf_counter()
    with torch_threads(1 if args.cpu_dry_run else None):
        section = run_gpu(run, args.peak_tflops)
    section["wall_seconds"] = round(time.perf_counter() - started, 1)
    machine = machine_name(args.machine)
    path = results_path(machine, today(), args.out_dir)
    header = {"date": today(), "machine": machine}
    if not path.exists():
        header["environment"] = environment()
    update_results(path, "gpu_dry_run" if args.cpu_dry_run else "gpu", section, header)
    print_table(f"GPU: {section['device']} (peak {section['peak_dense_fp16_tflops']} TFLOP/s)", SUMMARY_HEADER,
                summary_rows(section))
    batched_rows = [[config["secondary_model"], row["images"], row.get("seconds_per_step", "-"),
                     row.get("seconds_per_image_step", row.get("skipped") or "out of memory"),
                     row.get("throughput_vs_one_image", "-"), row.get("achieved_tflops", "-")]
                    for config in section["configs"] for row in config.get("lockstep", [])]
    if batched_rows:
        print_table("several images per call (render_images)",
                    ["secondary", "images", "s/step", "s/image-step", "throughput x", "TFLOP/s"], batched_rows)
    animation = section.get("animation", {})
    if "engine_seconds_per_step" in animation:
        raft = animation.get("raft", {})
        print_table("animation frames (secondary model): cut augmentations by mode, RAFT per frame pair",
                    ["mode", "engine s/step", "vs still"],
                    [[mode, seconds, animation.get("vs_still", {}).get(mode, "-")]
                     for mode, seconds in animation["engine_seconds_per_step"].items()]
                    + [[f"RAFT {raft.get('size', '')}", raft.get("seconds_per_pair", raft.get("error", "-")), "-"]])
    print(f"\nbench.gpu: results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
