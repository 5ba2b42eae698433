"""Where a sampler step's time goes on a CUDA GPU, at Disco Diffusion's defaults.

    python -m bench.gpu_profile [--out-dir DIR] [--steps 3]

A diagnostic companion of ``bench.gpu`` (same full-size random-weight models, same
spec): for the secondary-model and full-UNet paths it profiles a few engine steps with
``torch.profiler`` and prints (and writes to ``gpu-profile.txt``) the device time of the
engine's labelled stages (``unet_forward``, ``secondary_forward``, ``cutouts``,
``augment``, ``clip_image:*``, ``clip_backward:*``, ``backward_to_x``: the
``record_function`` ranges in engine/render.py and engine/guidance.py), the busiest
kernels, and the step's kernel time by class (``KERNEL_CLASSES``: tensor-core matrix
math, or memory-bound layout transposes, norms, resampling, elementwise work) with what
that allows (``peak_ceilings``): the fraction of the GPU's peak with no idle gaps, if only
the matrix math took time, and if only the rest did; the measured target of 35% of peak
is read against these (JSON ``step_breakdowns``). Then it times the step
under a few switches (``VARIANTS``: layouts, norm precision, fused CLIP layers, cuDNN
autotuning, torch.compile) so their effect is measured on the same machine in the same
run, and measures the batching headroom: the UNet's time per image when it runs 1, 2 or
4 images per call (forward only, and forward + backward), which says what rendering
several images per UNet call could gain. First of all it times the backward passes the
engine replaces (group norm, 2x2 average pooling) alone against torch's, at the UNet's
shapes at 1280x768 (``layer_backward_timings``). No figures are targets here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import NamedTuple


def _stage_rows(events) -> list[tuple[str, float, float, int]]:
    labels = ("unet_forward", "secondary_forward", "cutouts", "augment", "clip_image", "clip_backward",
              "backward_to_x")
    rows = []
    for event in events:
        if event.key.startswith(labels):
            device_us = getattr(event, "device_time_total", None)
            if device_us is None:
                device_us = getattr(event, "cuda_time_total", 0.0)
            rows.append((event.key, device_us / 1000.0, event.cpu_time_total / 1000.0, event.count))
    return sorted(rows, key=lambda row: -row[1])


MATRIX_MATH = "matrix and convolution math"
KERNEL_CLASSES = (
    ("layout transposes", re.compile(r"nchwtonhwc|nhwctonchw|transpose", re.I)),
    (MATRIX_MATH, re.compile(r"gemm|xmma|cutlass|wmma|tensorop|flash|fmha|conv(?!ert)|fft|cublas|cask|wgrad|dgrad|"
                             r"fprop|sm\d\d_|aten::(b|add|baddb)?mm$|aten::linear$|scaled_dot_product", re.I)),
    ("norms and reductions", re.compile(r"norm(?!al)|welford|moments|internalgradients|reduce|std_mean|var_mean|softmax|"
                                        r"triton_(red|per)_|aten::(sum|mean)$", re.I)),
    ("resampling and pooling", re.compile(r"upsample|grid_sampler|pool|interpolate", re.I)),
    ("elementwise and copies", re.compile(r"elementwise|copy|fill|cat|index|where|memcpy|memset|triton_poi_|"
                                          r"aten::(add|mul|sub|div|addcmul|clamp|hardtanh|relu|silu|gelu|threshold|where|normal|uniform|neg|"
                                          r"exp|rsqrt|pow|cos|sin)\w*$", re.I)),
)
"""Kernel (or, on the CPU, aten op) names by what limits them: tensor-core math, or memory
traffic of one of four kinds; the first class whose pattern matches wins, else "other"."""


def kernel_class(name: str) -> str:
    for label, pattern in KERNEL_CLASSES:
        if pattern.search(name):
            return label
    return "other"


def kernel_breakdown(kernels, steps: int) -> dict[str, float]:
    """Device milliseconds per step of each kernel class, from (name, total microseconds)
    pairs of a profile of ``steps`` steps; largest first."""
    per_class: dict[str, float] = {}
    for name, micros in kernels:
        label = kernel_class(name)
        per_class[label] = per_class.get(label, 0.0) + micros / 1000.0 / steps
    return {label: round(ms, 2) for label, ms in sorted(per_class.items(), key=lambda item: -item[1])}


def peak_ceilings(flops_per_step: float, class_ms: dict[str, float], peak_tflops: float | None,
                  step_seconds: float) -> dict[str, float | None]:
    """What the kernel breakdown allows: the measured fraction of peak, the fraction with
    the same kernels and no idle gaps, and two ceilings: if every kernel but the matrix
    math took no time (the matrix kernels' own efficiency) and if the matrix math took no
    time (the memory-bound kernels alone)."""
    kernel_s = sum(class_ms.values()) / 1000.0
    matrix_s = class_ms.get(MATRIX_MATH, 0.0) / 1000.0
    peak = peak_tflops * 1e12 if peak_tflops else None

    def fraction(seconds: float) -> float | None:
        return round(flops_per_step / seconds / peak, 4) if (peak and seconds > 0) else None

    return {
        "tflop_per_step": round(flops_per_step / 1e12, 3),
        "step_seconds": round(step_seconds, 4),
        "kernel_seconds_per_step": round(kernel_s, 4),
        "busy": round(kernel_s / step_seconds, 3) if step_seconds > 0 else None,
        "fraction_of_peak": fraction(step_seconds),
        "fraction_without_idle_gaps": fraction(kernel_s),
        "ceiling_if_only_matrix_math_took_time": fraction(matrix_s),
        "ceiling_if_matrix_math_took_no_time": fraction(kernel_s - matrix_s),
    }


def device_kernels(events) -> list[tuple[str, float]]:
    """(name, self device microseconds) of the CUDA kernels in profiler events (not the
    ``record_function`` ranges, which the profiler also lists on the device)."""
    return [(e.key, e.self_device_time_total) for e in events
            if str(getattr(e, "device_type", "")).endswith("CUDA") and not getattr(e, "is_user_annotation", False)
            and e.self_device_time_total > 0]


def cpu_ops(events) -> list[tuple[str, float]]:
    """(name, self CPU microseconds) of the aten ops in profiler events (the CPU check's
    stand-in for kernels)."""
    return [(e.key, e.self_cpu_time_total) for e in events if e.key.startswith("aten::")]


class Variant(NamedTuple):
    name: str
    unet_channels_last: bool = False
    half_group_norms: bool = True  # group norms in the input dtype (engine.unet)
    split_norm_statistics: bool = True  # engine.unet.GroupNormSplitStatistics (eager UNet)
    compile_unet: bool = False
    clip_channels_last: bool = False  # ResNet CLIPs
    fuse_clip_layers: bool = False  # engine.clip_layers
    cudnn_benchmark: bool = False  # torch.backends.cudnn.benchmark (autotuned convolutions)
    block_average_pools: bool = True  # engine.pooling.BlockAverage (torch's avg_pool2d backward when off)
    half_secondary: bool = False  # the secondary model in fp16 (bfloat16 in the CPU check); DD runs it in fp32


VARIANTS = (
    Variant("default: contiguous, input-dtype norms, split statistics, block pools"),
    Variant("native group-norm statistics", split_norm_statistics=False),
    Variant("torch's avg-pool backward", block_average_pools=False),
    Variant("secondary model in fp16", half_secondary=True),
    Variant("CLIP layers fused (folded norms, patch matmul)", fuse_clip_layers=True),
    Variant("ResNet CLIP channels_last", clip_channels_last=True),
    Variant("UNet channels_last", unet_channels_last=True),
    Variant("library fp32 norms", half_group_norms=False),
    Variant("cuDNN autotuning (cudnn.benchmark)", cudnn_benchmark=True),
    Variant("torch.compile", compile_unet=True),
)


GROUP_NORM_SHAPES = ((1, 128, 768, 1280), (1, 256, 384, 640), (1, 512, 96, 160))
"""The 512 UNet's group-norm inputs at DD's 1280x768: its largest, a middle and a small level."""
POOL_SHAPES = ((1, 128, 768, 1280), (1, 256, 384, 640))
"""Its first two down-sampling inputs."""


def layer_backward_timings(device: str, log, group_norm_shapes=GROUP_NORM_SHAPES, pool_shapes=POOL_SHAPES,
                           repeats: int = 5) -> list[dict]:
    """The backward passes the engine replaces, timed alone against torch's (median of
    ``repeats`` after a warm-up, fp16 on CUDA): group norm (32 groups; torch's
    ``native_group_norm_backward`` on contiguous tensors, and with the NCHW copies a
    channels_last input needs, against ``group_norm_input_gradients`` in both layouts) and
    2x2 average pooling (torch's ``avg_pool2d_backward`` against ``spread_blocks``)."""
    import torch

    from engine.pooling import spread_blocks
    from engine.unet import group_norm_input_gradients

    dtype = torch.float16 if device == "cuda" else torch.float32
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    channels_last = torch.channels_last

    def timed(work) -> float:
        work()
        sync()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            work()
            sync()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    rows = []
    for shape in group_norm_shapes:
        n, c = shape[:2]
        x = torch.randn(shape, device=device, dtype=dtype)
        dy = torch.randn(shape, device=device, dtype=dtype)
        weight = torch.randn(c, device=device, dtype=dtype)
        std, mean = torch.std_mean(x.view(n, 32, -1).float(), dim=2, correction=0)
        rstd = (std.square() + 1e-5).rsqrt()
        x_cl, dy_cl = x.contiguous(memory_format=channels_last), dy.contiguous(memory_format=channels_last)
        spatial = x[0, 0].numel()

        def torch_backward(x=x, dy=dy):
            return torch.ops.aten.native_group_norm_backward(dy, x, mean.to(dtype), rstd.to(dtype), weight,
                                                             n, c, spatial, 32, [True, True, True])

        def torch_with_copies():
            return torch_backward(x_cl.contiguous(), dy_cl.contiguous())[0].contiguous(memory_format=channels_last)

        cases = (("group norm, torch, contiguous", torch_backward),
                 ("group norm, per-channel sums, contiguous",
                  lambda: group_norm_input_gradients(dy, x, mean, rstd, weight)),
                 ("group norm, torch with NCHW copies, channels_last", torch_with_copies),
                 ("group norm, per-channel sums, channels_last",
                  lambda: group_norm_input_gradients(dy_cl, x_cl, mean, rstd, weight)))
        for name, work in cases:
            rows.append({"layer": name, "shape": list(shape), "seconds": round(timed(work), 6)})
            log(f"  backward | {name:52s} {str(list(shape)):22s} {rows[-1]['seconds'] * 1000:8.3f} ms")
        del x, dy, x_cl, dy_cl
    for shape in pool_shapes:
        x = torch.randn(shape, device=device, dtype=dtype)
        grad = torch.randn(*shape[:2], shape[2] // 2, shape[3] // 2, device=device, dtype=dtype)
        cases = (("avg pool 2x2, torch", lambda: torch.ops.aten.avg_pool2d_backward(
                      grad, x, [2, 2], [2, 2], [0, 0], False, True, None)),
                 ("avg pool 2x2, block copy", lambda: spread_blocks(grad, 2)))
        for name, work in cases:
            rows.append({"layer": name, "shape": list(shape), "seconds": round(timed(work), 6)})
            log(f"  backward | {name:52s} {str(list(shape)):22s} {rows[-1]['seconds'] * 1000:8.3f} ms")
        del x, grad
    if device == "cuda":
        torch.cuda.empty_cache()
    return rows


def batching_headroom(unet, height: int, width: int, log, batches: tuple[int, ...] = (1, 2, 4),
                      repeats: int = 3) -> list[dict]:
    """The UNet's seconds per image at ``batches`` images per call (median of ``repeats``
    after a warm-up), forward without gradients and forward + backward to the input (the
    full-UNet path's work). A batch that runs out of memory ends that mode's rows."""
    import torch

    from engine.unet import unet_forward

    device = next(unet.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def forward(x, t):
        with torch.no_grad():
            unet_forward(unet, x, t)

    def forward_backward(x, t):
        with torch.enable_grad():
            x = x.requires_grad_()
            out = unet_forward(unet, x, t)
            torch.autograd.grad(out[:, :3].float().sum(), x)

    rows = []
    for mode, work in (("forward", forward), ("forward+backward", forward_backward)):
        for batch in batches:
            x = torch.randn(batch, 3, height, width, device=device)
            t = torch.full((batch,), 500.0, device=device)
            try:
                work(x, t)  # warm-up
                sync()
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    work(x, t)
                    sync()
                    times.append(time.perf_counter() - started)
            except torch.OutOfMemoryError:
                log(f"  UNet {mode} x{batch}: out of memory")
                rows.append({"mode": mode, "images_per_call": batch, "out_of_memory": True})
                break
            finally:
                del x
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            per_image = statistics.median(times) / batch
            rows.append({"mode": mode, "images_per_call": batch, "seconds_per_image": round(per_image, 4)})
            log(f"  UNet {mode} x{batch}: {per_image:.4f} s per image")
    for row in rows:
        base = next((r for r in rows if r["mode"] == row["mode"] and r["images_per_call"] == 1), None)
        if base and "seconds_per_image" in row and "seconds_per_image" in base:
            row["per_image_vs_one"] = round(row["seconds_per_image"] / base["seconds_per_image"], 3)
    return rows


def step_breakdown(renderer, spec, kernels, steps: int, label: str, peak_tflops: float | None, log) -> dict:
    """A profiled step's kernel time by class (``kernel_breakdown``) and what it allows
    (``peak_ceilings``), with the step's FLOPs counted on a two-step render and its
    seconds timed without the profiler."""
    from engine import benchmark as eb

    with eb.OpCounter() as counter:
        renderer.render(eb.with_steps(spec, 2))  # its set-up's FLOPs (prompt encoding) are negligible
    step_seconds = statistics.median(eb.engine_step_seconds(renderer, spec)[1:])
    class_ms = kernel_breakdown(kernels, steps)
    ceilings = peak_ceilings(counter.flops / 2, class_ms, peak_tflops, step_seconds)
    log(f"{label}: kernel time per step by class (ms), of a {step_seconds * 1000:.0f} ms step:")
    for name, ms in class_ms.items():
        log(f"  {name:32s} {ms:8.1f}")
    log("  " + ", ".join(f"{key} {value}" for key, value in ceilings.items()))
    return {"path": label, "kernel_ms_per_step": class_ms, **ceilings}


def profile_config(secondary: bool, steps: int, log, preset: str = "dd", device: str = "cuda",
                   tables: bool = True, variants: bool = True, on_result=lambda rows: None,
                   on_headroom=None, skip_compile: bool = False, on_breakdown=lambda row: None,
                   peak_tflops: float | None = None) -> list[dict]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from engine import benchmark as eb
    from engine.models import ModelSet
    from engine.render import Renderer

    models = eb.PRESETS[preset]["models"]
    if not secondary:
        models = eb.without_secondary(models)
    renderer = Renderer(ModelSet(models, device, random_weights=preset != "tiny"))
    # the tiny models (the CPU check): one cut batch, 16 cuts per model a step instead of 64
    size, cutn_batches = ((1280, 768), 4) if preset == "dd" else ((64, 64), 1)
    spec = eb.make_spec(models, *size, steps=steps, cutn_batches=cutn_batches)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    label = "secondary model" if secondary else "full UNet"
    renderer.render(eb.with_steps(spec, 2))  # warm-up
    sync()
    if tables:
        started = time.perf_counter()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as prof:
            renderer.render(spec)
            sync()
        wall_ms = (time.perf_counter() - started) * 1000
        events = prof.key_averages()
        kernels = device_kernels(events) if device == "cuda" else cpu_ops(events)
        busy_ms = sum(micros for _, micros in kernels) / 1000.0
        what = "GPU kernels" if device == "cuda" else "CPU aten ops"
        log(f"\n=== {label}: {steps} steps profiled, wall {wall_ms:.0f} ms (profiler on), "
            f"{what} {busy_ms:.0f} ms")
        log("stage (device ms and CPU ms over all steps, count):")
        for key, ms, cpu_ms, count in _stage_rows(events):
            log(f"  {key:40s} device {ms:9.1f} ms  cpu {cpu_ms:9.1f} ms  x{count}")
        log("busiest kernels / ops by self device time:")
        log(events.table(sort_by="self_device_time_total", row_limit=25, max_name_column_width=70))
        on_breakdown(step_breakdown(renderer, spec, kernels, steps, label, peak_tflops, log))
    if on_headroom is not None:
        log(f"batching headroom at {size[0]}x{size[1]}:")
        on_headroom(batching_headroom(renderer.models.unet, size[1], size[0], log,
                                      repeats=3 if device == "cuda" else 1))
    results = []
    if variants:
        timed = eb.with_steps(spec, max(steps, 4) if device == "cuda" else steps)  # the CPU check: fewer
        for variant in VARIANTS:
            if variant.compile_unet and (device != "cuda" or skip_compile):
                continue
            if variant.half_secondary and not secondary:
                continue
            name = variant.name
            renderer.models.configure_unet(channels_last=variant.unet_channels_last and device == "cuda",
                                           half_group_norms=variant.half_group_norms,
                                           compile_unet=variant.compile_unet,
                                           split_norm_statistics=variant.split_norm_statistics)
            renderer.models.configure_clips(channels_last=variant.clip_channels_last,
                                            fused=variant.fuse_clip_layers)
            renderer.models.configure_pools(block_average=variant.block_average_pools)
            if secondary:
                half = torch.float16 if device == "cuda" else torch.bfloat16
                renderer.models.configure_secondary(half if variant.half_secondary else torch.float32)
            torch.backends.cudnn.benchmark = variant.cudnn_benchmark
            started = time.perf_counter()
            renderer.render(eb.with_steps(spec, 2))  # warm-up (and compilation)
            sync()
            warm_up = time.perf_counter() - started
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = statistics.median(eb.engine_step_seconds(renderer, timed)[1:])
            peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
            results.append({"path": label, "variant": name, "seconds_per_step": round(seconds, 4),
                            "warm_up_seconds": round(warm_up, 1),
                            "peak_memory_gib": round(peak, 2) if peak is not None else None})
            on_result(results)  # written as measured: a time limit keeps what was done
            log(f"  {label} | {name:48s}: {seconds:.3f} s/step (warm-up {warm_up:.1f} s"
                + (f", peak {peak:.2f} GiB)" if peak is not None else ")"))
        torch.backends.cudnn.benchmark = False
    del renderer
    if device == "cuda":
        torch.cuda.empty_cache()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cpu-check", action="store_true",
                        help="tiny models on the CPU, one torch thread, one cut batch: checks the script only")
    parser.add_argument("--no-tables", action="store_true", help="skip the profiler tables, time the variants only")
    parser.add_argument("--skip-compile", action="store_true",
                        help="leave out the torch.compile variant (1-2 minutes of compilation per path)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    import torch

    from bench.common import torch_threads

    if not torch.cuda.is_available() and not args.cpu_check:
        print("bench.gpu_profile: no CUDA device; nothing to profile here")
        return 0
    logging.getLogger().setLevel(logging.ERROR)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    preset, device = ("tiny", "cpu") if args.cpu_check else ("dd", "cuda")
    with torch_threads(1 if device == "cpu" else None):
        return _profile(args, preset, device, log, lines)


def _profile(args, preset: str, device: str, log, lines: list[str]) -> int:
    import torch

    log(f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'} torch {torch.__version__}")
    done: list[dict] = []
    headroom: list[dict] = []
    breakdowns: list[dict] = []
    log("backward passes the engine replaces, alone:")
    if device == "cuda":
        layers = layer_backward_timings(device, log)
    else:
        layers = layer_backward_timings(device, log, ((1, 64, 24, 40),), ((1, 32, 24, 40),), repeats=2)

    def write(rows: list[dict]) -> None:
        (args.out_dir / "gpu-profile.txt").write_text("\n".join(lines) + "\n")
        (args.out_dir / "gpu-variants.json").write_text(json.dumps(
            {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
             "size": "1280x768" if device == "cuda" else "64x64", "variants": done + rows,
             "batching_headroom": headroom, "layer_backwards": layers, "step_breakdowns": breakdowns},
            indent=1) + "\n")

    def record_headroom(rows: list[dict]) -> None:
        headroom.extend(rows)
        write([])

    def record_breakdown(row: dict) -> None:
        breakdowns.append(row)
        write([])

    from bench.gpu import peak_tflops

    peak = peak_tflops(torch.cuda.get_device_name()) if device == "cuda" else None

    for secondary in (True, False):
        done += profile_config(secondary, args.steps, log, preset, device, tables=not args.no_tables,
                               on_result=write, on_headroom=record_headroom if secondary else None,
                               skip_compile=args.skip_compile, on_breakdown=record_breakdown, peak_tflops=peak)
    write([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
