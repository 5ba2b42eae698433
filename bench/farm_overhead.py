"""Benchmark 2: the farm's overhead per frame.

The same frames (one still scene, tiny models) are rendered (a) by ``farm.worker.
FrameRenderer`` called directly, in a fresh process, and (b) through the farm: a
``RenderSession`` with one actor on an embedded local Ray (``farm.submit.start_local_ray``,
as ``farm submit`` without ``--address``), which also writes the PNGs, the manifest, the
status file and the contact sheet. Both render in a new process with the same torch
thread count and are warmed up with one frame first (a farm session renders a one-frame
job before the timed job; its actor keeps its models). Fresh processes on both sides
matter on the CPU: a process whose heap is already large (say, after other benchmarks)
renders measurably faster than a new one, which pays page faults for its first large
tensors. Runs come in pairs, direct first in one pair and farm first in the next (the
VM's speed drifts by several percent over minutes, so a fixed order would bias the
ratio), with Ray up throughout, so background load hits both; the overhead is the median
of the per-pair ratios (the ratio of the two medians is reported too). Cluster start-up
(``ray.init`` to the first actor ready) and actor start-up are reported apart.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import median, print_table, rounded, target

OVERHEAD_TARGET = 0.05

SCENE = """\
name: farm-overhead
diffusion_model: tiny
use_secondary_model: true
clip_models: ["tiny-vit::random", "tiny-rn::random"]
width_height: [{width}, {height}]
seed: 11
steps: {steps}
skip_steps: 0
cutn_batches: {cutn_batches}
init_scale: 0
display_rate: 5
text_prompts: {{0: ["a lighthouse in a storm, oil painting:3", "yellow color scheme:1"]}}
animation_mode: "None"
n_batches: {frames}
"""


@dataclasses.dataclass(frozen=True)
class OverheadCase:
    """The full case: 4 pairs of runs of 2 frames of 8 steps (about 5 s a frame on a 2-core
    VM), about 3.7 minutes in all, a quarter of it the runs' start-ups (a fresh process
    loading the models, 10 s; an actor starting, 13 s). The driver's and Ray's own time
    (0.04 s a frame at 3 frames a job) is about 1% of such a frame: the overhead figure is
    mostly the actor's render against the direct one."""

    frames: int = 2
    steps: int = 8
    width: int = 128
    height: int = 128
    cutn_batches: int = 2
    repeats: int = 4  # an even number: as many pairs direct-first as farm-first
    threads: int = 1


QUICK = OverheadCase(frames=2, steps=2, width=64, height=64, cutn_batches=1, repeats=1)


def scene_plan(case: OverheadCase):
    from farm.plan import resolve
    from farm.scene import parse_scene

    text = SCENE.format(width=case.width, height=case.height, steps=case.steps, cutn_batches=case.cutn_batches,
                        frames=case.frames)
    return resolve(parse_scene(text))


def direct_seconds(renderer, plan) -> list[float]:
    """Seconds per frame, FrameRenderer called in this process."""
    from farm.worker import FrameInputs

    seconds = []
    for frame in plan.frames:
        started = time.perf_counter()
        renderer.render(frame, plan.animation, FrameInputs())
        seconds.append(time.perf_counter() - started)
    return seconds


def direct_process(case: OverheadCase) -> dict[str, Any]:
    """In a fresh process (as an actor is): load the models, render one warm-up frame,
    then the frames; returns the load time and the seconds of each frame."""
    os.environ["OMP_NUM_THREADS"] = str(case.threads)  # as Ray sets it for a one-CPU actor
    from farm.worker import FrameRenderer

    plan = scene_plan(case)
    started = time.perf_counter()
    renderer = FrameRenderer(plan.frames[0].render.models, device="cpu", threads=case.threads)
    load = time.perf_counter() - started
    direct_seconds(renderer, dataclasses.replace(plan, frames=plan.frames[:1]))
    return {"load_seconds": load, "frame_seconds": direct_seconds(renderer, plan)}


def direct_run(case: OverheadCase) -> dict[str, Any]:
    """``direct_process`` in a spawned child process."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(direct_process, (case,))


def farm_run(plan, out_dir: Path, case: OverheadCase) -> dict[str, Any]:
    """One RenderSession with one actor: start the actor (models load), render a warm-up
    job of one frame, then time a job of all the frames."""
    import ray

    from farm.driver import RenderJob, RenderSession
    from farm.output import OutputFolder

    done_at: list[float] = []

    def on_update(session) -> None:
        while len(done_at) < len(session.completed):
            done_at.append(time.perf_counter())

    started = time.perf_counter()
    session = RenderSession(actors=1, cpus_per_actor=1.0, device="cpu", threads=case.threads, on_update=on_update)
    try:
        warm_plan = dataclasses.replace(plan, frames=plan.frames[:1])
        session.add(RenderJob("warm-up", warm_plan, OutputFolder(out_dir / "warm-up")))
        session.start_actors()  # start the actor pool now, to time its start-up apart
        ray.get([slot.handle.info.remote() for slot in session.slots.values()])
        actor_ready = time.perf_counter()
        session.run()
        job = session.add(RenderJob(plan.name, plan, OutputFolder(out_dir / "frames")))
        done_before = len(done_at)
        timed_start = time.perf_counter()
        results = session.run()
        finished = time.perf_counter()
    finally:
        session.shutdown()
    if results.get(plan.name) != "succeeded":
        raise RuntimeError(f"farm run did not succeed: {results}")
    actor_seconds = [e.seconds for e in job.out.manifest()]
    last = done_at[-1] if len(done_at) > done_before else finished
    return {
        "actor_start_seconds": actor_ready - started,
        "run_seconds": finished - timed_start,
        "to_last_frame_seconds": last - timed_start,
        "actor_render_seconds": actor_seconds,
    }


def run(case: OverheadCase | None = None, log=print) -> dict[str, Any]:
    """Benchmark 2; returns its results section."""
    import ray

    from farm.submit import start_local_ray

    case = case or OverheadCase()
    plan = scene_plan(case)
    frames = len(plan.frames)
    work = Path(tempfile.mkdtemp(prefix="bench-farm-"))
    ray_files = None
    try:
        log(f"-- farm overhead: {frames} stills, {case.steps} steps, {case.width}x{case.height}, "
            f"{case.threads} torch thread(s), {case.repeats} runs each")
        cluster_started = time.perf_counter()
        ray_files = start_local_ray(num_cpus=2, dashboard=False).temp_dir
        ray_ready = time.perf_counter()
        direct_runs, direct_loads, farm_runs = [], [], []

        def run_direct(k: int) -> None:
            direct = direct_run(case)
            direct_runs.append(sum(direct["frame_seconds"]) / frames)
            direct_loads.append(direct["load_seconds"])
            log(f"   direct: {direct_runs[-1]:.3f} s/frame")

        def run_farm(k: int) -> None:
            farm = farm_run(plan, work / f"farm-{k}", case)
            farm["seconds_per_frame"] = farm["run_seconds"] / frames
            farm_runs.append(farm)
            log(f"   farm:   {farm['seconds_per_frame']:.3f} s/frame (actor start {farm['actor_start_seconds']:.1f} s)")

        for k in range(case.repeats):
            # pairs alternate their order (direct first, then farm first, ...): the machine's
            # speed drifts over minutes, and a fixed order would charge the drift to one side
            for run_side in ((run_direct, run_farm) if k % 2 == 0 else (run_farm, run_direct)):
                run_side(k)
        startup = {"ray_init_seconds": ray_ready - cluster_started,
                   "ray_init_to_first_actor_ready_seconds": ray_ready - cluster_started
                   + farm_runs[0]["actor_start_seconds"]}
        direct_load = median(direct_loads)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        if ray_files:
            shutil.rmtree(ray_files, ignore_errors=True)
    direct_median = median(direct_runs)
    farm_median = median(f["seconds_per_frame"] for f in farm_runs)
    # each pair's two runs are about half a minute apart, in alternating order: the median of
    # the paired ratios is robust to load and speed drifting over the benchmark
    paired = [f["seconds_per_frame"] / d - 1 for f, d in zip(farm_runs, direct_runs)]
    overhead = median(paired)
    actor_render = median(sum(f["actor_render_seconds"]) / frames for f in farm_runs)
    result = {
        "frames": frames,
        "scene": {"steps": case.steps, "size": f"{case.width}x{case.height}", "cutn_batches": case.cutn_batches,
                  "models": plan.frames[0].render.models.key},
        "torch_threads": case.threads,
        "runs": case.repeats,
        "direct_seconds_per_frame": direct_median,
        "direct_runs": direct_runs,
        "direct_model_load_seconds": direct_load,
        "farm_seconds_per_frame": farm_median,
        "farm_runs": [f["seconds_per_frame"] for f in farm_runs],
        "farm_to_last_frame_seconds_per_frame": median(f["to_last_frame_seconds"] / frames for f in farm_runs),
        "farm_actor_render_seconds_per_frame": actor_render,
        "farm_driver_and_ray_seconds_per_frame": farm_median - actor_render,
        "overhead_per_frame": overhead,
        "overhead_paired_runs": paired,
        "overhead_ratio_of_medians": farm_median / direct_median - 1,
        "actor_start_seconds": median(f["actor_start_seconds"] for f in farm_runs),
        "startup": startup,
        "targets": [target("farm time per frame over direct", overhead, OVERHEAD_TARGET)],
        "notes": ("farm = RenderSession.run() wall time per frame after the actor is ready: rendering in the "
                  "actor plus Ray calls, the driver's PNG/manifest/status writes and the contact sheet; "
                  "actor render = the engine time measured inside the actor"),
    }
    print_table("Farm overhead (per frame)", ["path", "s/frame", "vs direct"], [
        ["direct FrameRenderer", direct_median, "-"],
        ["farm (RenderSession, 1 actor)", farm_median, f"{overhead * 100:+.1f}% (median of paired runs)"],
        ["  of which rendering in the actor", actor_render, f"{(actor_render / direct_median - 1) * 100:+.1f}%"],
        ["cluster start-up (ray.init to first actor ready)", startup["ray_init_to_first_actor_ready_seconds"], ""],
    ])
    return rounded(result)
