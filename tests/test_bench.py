"""The benchmarks run in a tiny configuration and write well-formed results.

Nothing here checks speed: figures are the benchmarks' job (`make bench`). These tests
check that the code measures what it says (work counts of both modes, the scheduler's
lower bound, the simulated renderer's timing contract) and writes the results file.
"""

import json
import time

import numpy as np
import pytest

from bench import gpu, run as bench_run, scheduler
from bench.common import BenchError, machine_name, print_table, results_path, target, torch_threads, update_results
from bench.simulated import SimulatedRenderer, simulated_seconds, steps_run


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread in this process, as the benchmarks' CPU parts use: torch's default
    (a thread per core) with other processes on the cores makes the tiny renders here
    several times slower (threads waiting on each other), not faster."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    """`python -m bench.run --quick` (all three CPU parts), once for the module."""
    out = tmp_path_factory.mktemp("bench")
    assert bench_run.main(["--quick", "--machine", "test-box", "--out-dir", str(out)]) == 0
    files = list(out.glob("*.json"))
    assert len(files) == 1 and files[0].name.endswith("-test-box.json")
    return json.loads(files[0].read_text())


@pytest.mark.slow
def test_results_file_has_the_header_and_all_parts(quick_results):
    assert quick_results["machine"] == "test-box" and quick_results["quick"] is True
    assert quick_results["environment"]["cpu_count"] >= 1 and quick_results["environment"]["torch"]
    assert set(quick_results["sections"]) == {"engine", "farm", "scheduler"}
    for section in quick_results["sections"].values():
        assert section["wall_seconds"] > 0


@pytest.mark.slow
def test_engine_counts_work_of_both_modes(quick_results):
    cases = quick_results["sections"]["engine"]["cases"]
    assert [c["secondary_model"] for c in cases] == [True, False]
    for case in cases:
        engine, dd = case["engine"], case["dd_equivalent"]
        clips = list(engine["per_step"]["clip_image_calls"])
        batches = case["cutn_batches"]
        assert batches == 2 and len(clips) == 2
        assert engine["seconds_per_step"] > 0 and dd["seconds_per_step"] > 0
        assert case["ratio_engine_to_dd"] == pytest.approx(engine["seconds_per_step"] / dd["seconds_per_step"], rel=1e-3)
        # the engine: one UNet forward, one image-encoder call per CLIP model, no host sync
        assert engine["per_step"]["unet_forwards"] == 1
        assert engine["per_step"]["clip_image_calls"] == {name: 1 for name in clips}
        assert engine["per_step"]["host_syncs"] == 0
        # DD's structure: a CLIP call, a t.item() and a loss.item() per cut batch per model,
        # one NaN check read back per step
        assert dd["per_step"]["clip_image_calls"] == {name: batches for name in clips}
        assert dd["per_step"]["host_sync_kinds"]["item"] == 2 * batches * len(clips)
        assert dd["per_step"]["host_sync_kinds"]["__bool__"] == 1
        assert engine["per_step"]["cuts_encoded"] == dd["per_step"]["cuts_encoded"]
        # DD's per-cut-batch loop launches more kernels (tiny set: 1.6x / 2.1x at 2 cut
        # batches, with the secondary model / full UNet; 2.4x / 2.8x at DD's 4)
        assert 0 < 1.3 * engine["per_step"]["kernel_ops"] < dd["per_step"]["kernel_ops"]
        verdicts = {t["target"]: t for t in case["targets"]}
        assert verdicts["UNet forwards per step"]["met"] and verdicts["host syncs per step"]["met"]
    secondary, full = cases
    # the secondary path runs one no-grad UNet forward in both; DD's full path a second
    # forward with checkpointing (its checkpointed blocks run again in the backward)
    assert secondary["dd_equivalent"]["per_step"]["unet_forwards"] == 1
    assert full["dd_equivalent"]["per_step"]["unet_forwards"] == 2
    assert full["dd_equivalent"]["per_step"]["unet_block_evaluations"] == 3
    assert full["engine"]["per_step"]["unet_block_evaluations"] == 1
    assert "engine / DD-equivalent time (full UNet)" in {t["target"] for t in full["targets"]}
    assert full["components_seconds"]["unet_forward_backward"] > 0


@pytest.mark.slow
def test_farm_overhead_compares_the_same_frames(quick_results):
    farm = quick_results["sections"]["farm"]
    assert farm["frames"] == 2 and farm["direct_seconds_per_frame"] > 0 and farm["farm_seconds_per_frame"] > 0
    assert farm["overhead_per_frame"] == pytest.approx(farm["farm_runs"][0] / farm["direct_runs"][0] - 1, abs=1e-3)
    assert farm["overhead_ratio_of_medians"] == pytest.approx(
        farm["farm_seconds_per_frame"] / farm["direct_seconds_per_frame"] - 1, abs=1e-3)
    assert farm["startup"]["ray_init_to_first_actor_ready_seconds"] >= farm["startup"]["ray_init_seconds"] > 0
    assert farm["targets"][0]["limit"] == 0.05


@pytest.mark.slow
def test_scheduler_makespan_is_never_below_the_bound(quick_results):
    section = quick_results["sections"]["scheduler"]
    w = scheduler.QUICK
    assert section["bound_seconds"] == pytest.approx(
        max(section["total_work_seconds"] / w.gpus, section["longest_chain_seconds"]), abs=1e-3)
    assert section["makespan_over_bound"] >= 1.0  # sleeps cannot overlap beyond the GPUs or a chain
    assert section["actors"] == w.gpus
    assert section["frames"] == sum(job["frames"] for job in section["jobs"].values())
    segments = section["segment_mode"]
    assert segments["available"] and segments["segmented"]["chains"] == w.segments
    assert segments["bound_speedup"] > 1


def test_dd_equivalent_mode_draws_the_animation_modes_cut_augmentations(monkeypatch):
    # both modes of a Video Input comparison must pay for Video Input's augmentations
    from engine import benchmark as eb
    from engine.models import ModelSet
    from engine.render import Renderer
    from engine.spec import STILL_AUGMENTATIONS, VIDEO_AUGMENTATIONS

    drawn, real_augment = [], eb.augment

    def recording_augment(cuts, generator, augmentations=STILL_AUGMENTATIONS):
        drawn.append(augmentations)
        return real_augment(cuts, generator, augmentations)

    monkeypatch.setattr(eb, "augment", recording_augment)
    models = eb.without_secondary(eb.PRESETS["tiny"]["models"])
    spec = eb.make_spec(models, 64, 64, steps=2, cutn_batches=1, animation_mode="Video Input")
    assert spec.guidance.augmentations == VIDEO_AUGMENTATIONS
    renderer = Renderer(ModelSet(models, "cpu"))
    renderer.render(spec)  # the engine's render encodes the prompts the DD-equivalent mode reads
    assert len(eb.dd_style_step_seconds(renderer, spec)) == 2
    assert drawn and all(a == VIDEO_AUGMENTATIONS for a in drawn)


def test_lower_bound_counts_chains_and_segments():
    plans = scheduler.workload_plans(scheduler.QUICK)
    step = 0.5
    # QUICK: 20 steps, skip 2 for stills and chain starts, later frames skip 60% (12)
    first, later = 18 * step, 8 * step
    assert scheduler.critical_path(plans["animation-a"], step) == first + 5 * later
    assert scheduler.critical_path(plans["shots"], step) == first + 3 * later
    assert scheduler.critical_path(plans["segments"], step) == first + 3 * later
    assert scheduler.critical_path(plans["stills"], step) == first
    bound = scheduler.lower_bound(plans, 4, step)
    total = 12 * first + (first + 5 * later) + 2 * (first + 3 * later) * 2
    assert bound["total_work_seconds"] == total
    assert bound["bound_seconds"] == max(total / 4, first + 5 * later)
    with pytest.raises(ValueError):
        scheduler.lower_bound(plans, 0, step)


def test_simulated_renderer_sleeps_its_steps_and_polls_like_the_engine():
    plan = scheduler.workload_plans(scheduler.QUICK)["animation-a"]
    frame = plan.frames[1]
    renderer = SimulatedRenderer(frame.render.models, step_seconds=0.01)
    polls = []
    started = time.perf_counter()
    result = renderer.render(frame, plan.animation, None, should_stop=lambda: polls.append(1) and False)
    elapsed = time.perf_counter() - started
    assert steps_run(frame) == 8 and len(polls) == 8 and result.steps == 8
    assert elapsed >= simulated_seconds(frame, 0.01) and result.seconds >= 0.08
    assert result.pixels.dtype == np.uint8 and result.pixels.shape == (64, 64, 3)
    from engine.errors import RenderCancelled

    with pytest.raises(RenderCancelled):
        renderer.render(frame, plan.animation, None, should_stop=lambda: True)


def test_gpu_script_says_no_cuda_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu.main(["--out-dir", str(tmp_path)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_gpu_script_dry_run_counts_flops_on_the_cpu(tmp_path):
    assert gpu.main(["--cpu-dry-run", "--machine", "t", "--out-dir", str(tmp_path), "--peak-tflops", "1"]) == 0
    document = json.loads(next(tmp_path.glob("*-t.json")).read_text())
    section = document["sections"]["gpu_dry_run"]
    assert section["dry_run_on_cpu"] and len(section["configs"]) == 2
    secondary, full = section["configs"]
    for config in (secondary, full):
        assert config["engine"]["per_step"]["flops"] > 0 and config["engine"]["achieved_tflops"] > 0
        assert config["memory"] == {"skipped": "no CUDA memory statistics on the CPU"}
        # several seeds in lockstep: the same FLOPs per image, one call per step for all
        assert [row["images"] for row in config["lockstep"]] == list(gpu.LOCKSTEP_IMAGES)
        for row in config["lockstep"]:
            assert row["seconds_per_image_step"] == pytest.approx(row["seconds_per_step"] / row["images"], rel=1e-3)
            assert row["achieved_tflops"] > 0 and row["throughput_vs_one_image"] > 0
    # DD's full path: an extra forward and the checkpoint recompute cost FLOPs
    assert full["dd_equivalent"]["per_step"]["flops"] > 1.5 * full["engine"]["per_step"]["flops"]
    assert {t["target"] for t in section["targets"]} >= {"full UNet: speed-up over DD-equivalent"}
    assert any(t["target"].startswith("full UNet: fraction of peak, ") for t in section["targets"])
    # what an animation frame adds: each mode's cut augmentations, and RAFT on a pair of frames
    animation = section["animation"]
    assert set(animation["engine_seconds_per_step"]) == set(gpu.ANIMATION_MODES)
    assert all(seconds > 0 for seconds in animation["engine_seconds_per_step"].values())
    assert animation["vs_still"]["None"] == 1
    assert animation["raft"]["seconds_per_pair"] > 0 and animation["raft"]["flow_shape"] == [128, 128, 2]


def test_gpu_summary_table_prints_a_configuration_the_budget_skipped(capsys):
    """A run that ran out of time for the full-UNet path still prints its table (an H100 run crashed here)."""
    measured = {"secondary_model": True, "speedup": 3.03,
                "engine": {"seconds_per_step": 0.17, "achieved_tflops": 139.8, "peak_memory_gib": 7.7,
                           "per_step": {"kernel_ops": 3159}},
                "dd_equivalent": {"seconds_per_step": 0.52, "per_step": {"kernel_ops": 8445}}}
    section = {"configs": [measured, {"secondary_model": False, "skipped": "time budget"}]}
    rows = gpu.summary_rows(section)
    assert all(len(row) == len(gpu.SUMMARY_HEADER) for row in rows)
    assert rows[0][-1] == "3159 / 8445" and rows[1][:2] == [False, "time budget"]
    print_table("GPU", gpu.SUMMARY_HEADER, rows)
    assert "time budget" in capsys.readouterr().out


def test_gpu_script_measures_only_the_path_asked_for(monkeypatch):
    """`--path full` (the compiled full UNet alone, within one device call): one configuration."""
    import dataclasses

    asked = []

    def measure(run, secondary, *rest):
        asked.append(secondary)
        raise RuntimeError("not measured here")

    monkeypatch.setattr(gpu, "measure", measure)
    for path, expected in (("full", [False]), ("secondary", [True]), ("both", [True, False])):
        asked.clear()
        section = gpu.run_gpu(dataclasses.replace(gpu.DRY_RUN, paths=gpu.PATHS[path]), peak_override=1.0,
                              log=lambda *a: None)
        assert asked == expected
        assert [c["secondary_model"] for c in section["configs"]] == expected
        assert all(c["error"] == "RuntimeError: not measured here" for c in section["configs"])


def test_gpu_profile_times_its_variants_on_both_paths(tmp_path):
    from bench import gpu_profile

    assert gpu_profile.main(["--cpu-check", "--steps", "2", "--out-dir", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "gpu-variants.json").read_text())["variants"]
    cpu_variants = [v.name for v in gpu_profile.VARIANTS if not v.compile_unet]  # torch.compile: CUDA only
    assert [r["variant"] for r in rows] == cpu_variants + [name for name in cpu_variants if "secondary" not in name]
    assert {r["path"] for r in rows} == {"secondary model", "full UNet"}
    assert all(r["seconds_per_step"] > 0 for r in rows)
    headroom = json.loads((tmp_path / "gpu-variants.json").read_text())["batching_headroom"]
    assert [(r["mode"], r["images_per_call"]) for r in headroom] == [
        (mode, n) for mode in ("forward", "forward+backward") for n in (1, 2, 4)]
    assert all(r["seconds_per_image"] > 0 for r in headroom)
    assert [r["per_image_vs_one"] for r in headroom if r["images_per_call"] == 1] == [1.0, 1.0]
    layers = json.loads((tmp_path / "gpu-variants.json").read_text())["layer_backwards"]
    assert [r["layer"] for r in layers] == [
        "group norm, torch, contiguous", "group norm, per-channel sums, contiguous",
        "group norm, torch with NCHW copies, channels_last", "group norm, per-channel sums, channels_last",
        "avg pool 2x2, torch", "avg pool 2x2, block copy"]
    assert all(r["seconds"] > 0 for r in layers)
    breakdowns = json.loads((tmp_path / "gpu-variants.json").read_text())["step_breakdowns"]
    assert [b["path"] for b in breakdowns] == ["secondary model", "full UNet"]
    for row in breakdowns:  # the CPU check: aten ops for kernels, no peak to compare with
        assert row["kernel_ms_per_step"][gpu_profile.MATRIX_MATH] > 0 and row["step_seconds"] > 0
        assert row["tflop_per_step"] > 0 and row["fraction_of_peak"] is None
    assert breakdowns[1]["tflop_per_step"] > breakdowns[0]["tflop_per_step"]  # the UNet backward
    assert "kernel time per step by class" in (tmp_path / "gpu-profile.txt").read_text()


def test_gpu_profile_sorts_kernels_into_classes():
    from bench.gpu_profile import MATRIX_MATH, kernel_class

    names = {  # kernel names seen in H200 profiles, and aten ops (the CPU check)
        "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128": MATRIX_MATH,
        "void fft2d_r2c_32x32<float, false, 0u, false>(float2*, float const*)": MATRIX_MATH,
        "pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>": MATRIX_MATH,
        "aten::bmm": MATRIX_MATH,
        "aten::mkldnn_convolution": MATRIX_MATH,
        "void cudnn::engines_precompiled::nchwToNhwcKernel<__half, __half, float>": "layout transposes",
        "void at::native::(anonymous namespace)::ComputeInternalGradientsCUDAKernel<c10::Half>":
            "norms and reductions",
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<c10::Half>>": "norms and reductions",
        "void at::native::(anonymous namespace)::upsample_gen2d_aa_backward_out_frame<float>":
            "resampling and pooling",
        "void at::native::vectorized_elementwise_kernel<8, at::native::CUDAFunctor_add<c10::Half>>":
            "elementwise and copies",
        "void at::native::elementwise_kernel<128, 4, ConvertFunctor>": "elementwise and copies",
        "aten::normal_": "elementwise and copies",
        "aten::empty": "other",
    }
    assert {name: kernel_class(name) for name in names} == names


def test_gpu_profile_ceilings_follow_from_the_kernel_classes():
    from bench.gpu_profile import MATRIX_MATH, kernel_breakdown, peak_ceilings

    kernels = [("sm90_xmma_fprop", 300_000.0), ("void at::native::elementwise_kernel<...>", 450_000.0),
               ("sm90_xmma_dgrad", 300_000.0), ("nchwToNhwcKernel", 150_000.0)]
    class_ms = kernel_breakdown(kernels, steps=3)
    assert class_ms == {MATRIX_MATH: 200.0, "elementwise and copies": 150.0, "layout transposes": 50.0}
    assert list(class_ms) == [MATRIX_MATH, "elementwise and copies", "layout transposes"]  # largest first
    ceilings = peak_ceilings(40e12, class_ms, 1000.0, step_seconds=0.5)
    assert ceilings["kernel_seconds_per_step"] == 0.4 and ceilings["busy"] == 0.8
    assert ceilings["fraction_of_peak"] == 0.08  # 40 TFLOP in 0.5 s of a 1000 TFLOP/s GPU
    assert ceilings["fraction_without_idle_gaps"] == 0.1
    assert ceilings["ceiling_if_only_matrix_math_took_time"] == 0.2
    assert ceilings["ceiling_if_matrix_math_took_no_time"] == 0.2
    assert peak_ceilings(40e12, class_ms, None, 0.5)["fraction_of_peak"] is None


def test_gpu_peaks_memory_fit_and_sizes():
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.5
    assert gpu.peak_tflops("NVIDIA H200") == 989.4
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.peak_tflops("NVIDIA GeForce GTX 1080") is None
    assert gpu.five_by_three(1280) == (1280, 768) and gpu.five_by_three(1300) == (1280, 768)
    a, b, c = 2e9, 3000.0, 1e-4
    points = [(p, a + b * p + c * p * p) for p in (245760, 552960, 983040, 1536000)]
    fit = gpu.fit_memory(points)
    assert fit == pytest.approx((a, b, c), rel=1e-6)
    size = gpu.largest_size_within(fit, 16 * 2**30)
    w, h = size
    assert gpu.predicted_bytes(fit, w * h) <= 16 * 2**30
    bigger = gpu.candidate_sizes()[gpu.candidate_sizes().index(size) + 1]
    assert gpu.predicted_bytes(fit, bigger[0] * bigger[1]) > 16 * 2**30
    with pytest.raises(ValueError):
        gpu.fit_memory(points[:1])


def test_gpu_largest_size_search_walks_from_the_prediction():
    sizes = list(range(20))
    probed = []

    def fits_below(limit, out_of_time_after=99):
        def fits(size):
            probed.append(size)
            return None if len(probed) > out_of_time_after else size <= limit
        return fits

    assert gpu.largest_fitting(fits_below(12), sizes, 10) == (12, True)  # up while the next fits
    assert probed == [10, 11, 12, 13]
    probed.clear()
    assert gpu.largest_fitting(fits_below(7), sizes, 10) == (7, True)  # down until one fits
    assert probed == [10, 9, 8, 7]
    probed.clear()
    assert gpu.largest_fitting(fits_below(19), sizes, 10, probes=3) == (12, False)  # probes used up
    probed.clear()
    assert gpu.largest_fitting(fits_below(19), sizes, 17) == (19, False)  # the last size fits
    probed.clear()
    assert gpu.largest_fitting(fits_below(-1), sizes, 2) == (None, False)  # nothing fits
    probed.clear()
    assert gpu.largest_fitting(fits_below(19, out_of_time_after=2), sizes, 10) == (11, False)  # out of time
    probed.clear()
    assert gpu.largest_fitting(fits_below(19, out_of_time_after=0), sizes, 10) == (None, False)


def test_results_file_sections_and_names(tmp_path):
    path = results_path("box", "2026-01-02", tmp_path)
    assert path.name == "2026-01-02-box.json"
    update_results(path, "engine", {"x": 1}, {"machine": "box"})
    update_results(path, "gpu", {"y": 2}, {"machine": "box"})
    assert json.loads(path.read_text())["sections"] == {"engine": {"x": 1}, "gpu": {"y": 2}}
    assert machine_name("my.host name") == "my-host-name"
    with pytest.raises(BenchError):
        machine_name("...")
    assert target("ratio", 0.7, 0.6)["met"] is False and target("ratio", 0.5, 0.6)["met"] is True
    assert target("ratio", 0.7, 0.6, why="cuts")["why"] == "cuts" and "why" not in target("ratio", 0.5, 0.6, why="x")
    assert bench_run.main(["--only", "nope"]) == 2
