"""Benchmark 3: the scheduler's makespan on a mixed workload, with SIMULATED renders.

8 GPUs are declared to a local Ray on this CPU machine (``ray.init(num_gpus=8)``) and the
farm's own ``RenderSession`` runs 8 actors (one GPU each) whose renderer is
``bench.simulated.SimulatedRenderer``: a frame sleeps ``steps run x step_seconds`` (DD's
defaults: 250 steps, skip 10 for stills and shot starts, frames_skip_steps 60%, so 240
or 100 steps a frame). The workload mixes 200 stills, two 100-frame 2D animations, a
100-frame scene cut into 4 shots and a 100-frame scene asking for 4 parallel segments.

The makespan (first dispatch to the last frame written) is compared with the lower
bound max(total work / GPUs, longest chain); a chain is the frames of one shot, which
must render one after another. Actor start-up and the finishing work after the last
frame (videos, contact sheet) are reported apart. Ray's per-task overhead (the time a
frame spends in the farm beyond its simulated work) is reported too: it matters
relative to the task length, which the per-step cost sets.
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
from bench.simulated import simulated_renderer, simulated_seconds

MAKESPAN_TARGET = 1.10

SCENE_HEAD = """\
name: {name}
diffusion_model: tiny
clip_models: ["tiny-vit::random"]
width_height: [64, 64]
seed: 7
steps: {steps}
skip_steps: {skip_steps}
frames_skip_steps: "{frames_skip}"
display_rate: 50
text_prompts: {{0: ["a lighthouse in a storm, oil painting"]}}
"""


@dataclasses.dataclass(frozen=True)
class Workload:
    stills: int = 200
    animations: int = 2
    animation_frames: int = 100
    shot_frames: int = 100
    shots: int = 4
    segment_frames: int = 100
    segments: int = 4
    steps: int = 250
    skip_steps: int = 10
    frames_skip: str = "60%"
    segment_overlap: int = 0
    gpus: int = 8
    step_seconds: float = 0.005
    long_frames: int = 100
    segment_step_seconds: float = 0.002
    """Per-step cost of the one-long-animation comparison (shorter, to keep it quick)."""


QUICK = Workload(stills=12, animations=1, animation_frames=6, shot_frames=8, shots=2, segment_frames=8, segments=2,
                 steps=20, skip_steps=2, gpus=2, step_seconds=0.002, long_frames=8, segment_step_seconds=0.002)
"""A tiny workload for tests (2 declared GPUs: fewer actors to start, each a process
importing torch; still one actor per segment)."""


def scene_texts(w: Workload) -> dict[str, str]:
    """The workload's scenes, by name."""
    head = dict(steps=w.steps, skip_steps=w.skip_steps, frames_skip=w.frames_skip)
    scenes = {"stills": SCENE_HEAD.format(name="stills", **head) + f"animation_mode: \"None\"\nn_batches: {w.stills}\n"}
    for k in range(w.animations):
        name = f"animation-{chr(ord('a') + k)}"
        scenes[name] = SCENE_HEAD.format(name=name, **head) + (
            f"animation_mode: 2D\nmax_frames: {w.animation_frames}\nzoom: \"0: (1.02)\"\n")
    starts = [w.shot_frames * k // w.shots for k in range(1, w.shots)]
    scenes["shots"] = SCENE_HEAD.format(name="shots", **head) + (
        f"animation_mode: 2D\nmax_frames: {w.shot_frames}\ncuts: {starts}\nangle: \"0: (0.5)\"\n")
    scenes["segments"] = SCENE_HEAD.format(name="segments", **head) + (
        f"animation_mode: 2D\nmax_frames: {w.segment_frames}\nparallel_segments: {w.segments}\n"
        f"segment_overlap: {w.segment_overlap}\ntranslation_x: \"0: (2)\"\n")
    return scenes


def workload_plans(w: Workload) -> dict[str, Any]:
    from farm.plan import resolve
    from farm.scene import parse_scene

    return {name: resolve(parse_scene(text, source=f"<{name}>")) for name, text in scene_texts(w).items()}


def frame_work(frame, step_seconds: float) -> float:
    """Simulated seconds an actor spends on a frame (a segment seam is composed by the
    driver from two renders: no actor work)."""
    return 0.0 if frame.sources else simulated_seconds(frame, step_seconds)


def critical_path(plan, step_seconds: float) -> float:
    """The longest chain of a plan: the most work along frames that wait for each other
    (a frame waits for its ``previous`` frame and a seam for its ``sources``)."""
    frames = plan.frames
    finish: dict[int, float] = {}
    for frame in frames:
        stack = [frame.index]
        while stack:  # iterative depth-first: chains can be long
            index = stack[-1]
            if index in finish:
                stack.pop()
                continue
            current = frames[index]
            waits_for = [i for i in ((current.previous,) if current.previous is not None else ()) + current.sources]
            pending = [i for i in waits_for if i not in finish]
            if pending:
                stack.extend(pending)
                continue
            finish[index] = frame_work(current, step_seconds) + max((finish[i] for i in waits_for), default=0.0)
            stack.pop()
    return max(finish.values(), default=0.0)


def lower_bound(plans: dict[str, Any], gpus: int, step_seconds: float) -> dict[str, float]:
    """max(total work / gpus, longest chain), with its two terms."""
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus}")
    total = sum(frame_work(f, step_seconds) for plan in plans.values() for f in plan.frames)
    longest = max((critical_path(plan, step_seconds) for plan in plans.values()), default=0.0)
    return {"total_work_seconds": total, "work_per_gpu_seconds": total / gpus,
            "longest_chain_seconds": longest, "bound_seconds": max(total / gpus, longest)}


def chain_count(plan) -> int:
    return len(plan.shots) if plan.is_animation else len(plan.frames)


class Completions:
    """on_update callback of a RenderSession: when each (job, frame) was seen finished."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, int], float] = {}
        self.seen = 0

    def __call__(self, session) -> None:
        now = time.perf_counter()
        for job_id, index, _ in session.completed[self.seen:]:
            self.at[(job_id, index)] = now
        self.seen = len(session.completed)

    def last(self, job_ids) -> float:
        return max(t for (job_id, _), t in self.at.items() if job_id in job_ids)


def task_overheads(session, jobs: dict[str, Any], plans: dict[str, Any], step_seconds: float):
    """(driver-observed seconds - simulated seconds, simulated seconds) per actor task."""
    pairs = []
    for name, job in jobs.items():
        order = [index for job_id, index, label in session.completed if job_id == name and label != "driver"]
        for index, seconds in zip(order, job.frame_seconds):
            simulated = simulated_seconds(plans[name].frames[index], step_seconds)
            pairs.append((seconds - simulated, simulated))
    return pairs


def long_animation_text(w: Workload, segments: int) -> str:
    head = dict(steps=w.steps, skip_steps=w.skip_steps, frames_skip=w.frames_skip)
    return SCENE_HEAD.format(name=f"long-{segments}", **head) + (
        f"animation_mode: 2D\nmax_frames: {w.long_frames}\nparallel_segments: {segments}\n"
        f"segment_overlap: {w.segment_overlap}\nzoom: \"0: (1.02)\"\n")


def segment_speedup(w: Workload, log=print) -> dict[str, Any]:
    """One long animation alone on the GPUs: one chain, then in ``w.segments`` segments."""
    from farm.driver import RenderJob, RenderSession
    from farm.output import OutputFolder
    from farm.plan import resolve
    from farm.scene import parse_scene

    import ray

    step = w.segment_step_seconds
    plans = {k: resolve(parse_scene(long_animation_text(w, k), source=f"<long-{k}>")) for k in (1, w.segments)}
    work = Path(tempfile.mkdtemp(prefix="bench-segments-"))
    completions = Completions()
    runs = {}
    session = RenderSession(actors=w.gpus, gpus_per_actor=1.0, cpus_per_actor=1.0, device="cpu",
                            renderer_class=simulated_renderer(step), on_update=completions)
    try:
        for k, plan in plans.items():
            name = plan.name
            session.add(RenderJob(name, plan, OutputFolder(work / name)))
            if k == 1:
                session.start_actors()
                ray.get([slot.handle.info.remote() for slot in session.slots.values()])
            started = time.perf_counter()
            results = session.run()
            if results.get(name) != "succeeded":
                raise RuntimeError(f"{name} did not succeed: {results}")
            bound = lower_bound({name: plan}, w.gpus, step)
            measured = completions.last({name}) - started
            runs[k] = {"chains": chain_count(plan), "frames_rendered": sum(1 for f in plan.frames if not f.sources),
                       "longest_chain_seconds": bound["longest_chain_seconds"],
                       "bound_seconds": bound["bound_seconds"], "seconds": measured}
            log(f"   long animation, {k} segment(s): {measured:.2f} s (bound {bound['bound_seconds']:.2f} s)")
    finally:
        session.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    one, many = runs[1], runs[w.segments]
    return {"available": True, "frames": w.long_frames, "segments": w.segments, "segment_overlap": w.segment_overlap,
            "step_seconds": step, "one_chain": one, "segmented": many,
            "speedup": one["seconds"] / many["seconds"],
            "bound_speedup": one["bound_seconds"] / many["bound_seconds"]}


def run(workload: Workload | None = None, log=print) -> dict[str, Any]:
    """Benchmark 3; returns its results section."""
    import ray

    from farm.driver import RenderJob, RenderSession
    from farm.output import OutputFolder

    w = workload or Workload()
    plans = workload_plans(w)
    bound = lower_bound(plans, w.gpus, w.step_seconds)
    frames = sum(len(p.frames) for p in plans.values())
    log(f"-- scheduler: {frames} frames in {len(plans)} scenes, {w.gpus} declared GPUs, "
        f"{w.step_seconds * 1000:g} ms per simulated step; bound {bound['bound_seconds']:.1f} s")
    work = Path(tempfile.mkdtemp(prefix="bench-scheduler-"))
    completions = Completions()
    try:
        cluster_started = time.perf_counter()
        ray.init(num_gpus=w.gpus, num_cpus=w.gpus, include_dashboard=False, _temp_dir=str(work / "ray"),
                 configure_logging=False, log_to_driver=False,
                 runtime_env={"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}})
        ray_ready = time.perf_counter()
        session = RenderSession(actors=w.gpus, gpus_per_actor=1.0, cpus_per_actor=1.0, device="cpu",
                                renderer_class=simulated_renderer(w.step_seconds), on_update=completions)
        try:
            jobs = {name: session.add(RenderJob(name, plan, OutputFolder(work / name)))
                    for name, plan in plans.items()}
            session.start_actors()  # start the pool before the clock starts
            ray.get([slot.handle.info.remote() for slot in session.slots.values()])
            actors_ready = time.perf_counter()
            results = session.run()
            finished = time.perf_counter()
            actors = len(session.slots)
            overheads = task_overheads(session, jobs, plans, w.step_seconds)
        finally:
            session.shutdown()
        failed = {name: state for name, state in results.items() if state != "succeeded"}
        if failed:
            raise RuntimeError(f"scheduler benchmark jobs did not succeed: {failed}")
        last_frame = completions.last(set(plans))
        makespan = last_frame - actors_ready
        log(f"   mixed workload: makespan {makespan:.2f} s, bound {bound['bound_seconds']:.2f} s")
        segments = segment_speedup(w, log)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    per_job = {name: {"frames": len(plan.frames), "chains": chain_count(plan),
                      "work_seconds": sum(frame_work(f, w.step_seconds) for f in plan.frames),
                      "longest_chain_seconds": critical_path(plan, w.step_seconds),
                      "finished_after_seconds": completions.last({name}) - actors_ready}
               for name, plan in plans.items()}
    ratio = makespan / bound["bound_seconds"]
    task_overhead = [o for o, _ in overheads]
    mean_task = sum(t for _, t in overheads) / len(overheads)
    result = {
        "workload": dataclasses.asdict(w),
        "frames": frames,
        "actors": actors,
        **bound,
        "makespan_seconds": makespan,
        "makespan_over_bound": ratio,
        "utilisation": bound["total_work_seconds"] / (makespan * w.gpus),
        "ray_init_seconds": ray_ready - cluster_started,
        "actors_start_seconds": actors_ready - ray_ready,
        "finishing_seconds_after_last_frame": finished - last_frame,
        "per_task_overhead_seconds": {"median": median(task_overhead),
                                      "mean": sum(task_overhead) / len(task_overhead), "max": max(task_overhead)},
        "mean_task_seconds": mean_task,
        "overhead_share_of_mean_task": median(task_overhead) / mean_task if mean_task else None,
        "jobs": per_job,
        "segment_mode": segments,
        "targets": [target("makespan / lower bound", ratio, MAKESPAN_TARGET)],
        "notes": ("SIMULATED renders (bench.simulated.SimulatedRenderer: a sleep of steps x step_seconds); "
                  "makespan = all actors ready to the last frame written by the driver; finishing (videos, "
                  "contact sheet) after that is reported apart"),
    }
    one, many = segments["one_chain"], segments["segmented"]
    print_table(f"Scheduler (simulated renders, {w.gpus} declared GPUs)", ["figure", "value"], [
        ["makespan (s)", makespan],
        ["lower bound (s) = max(work/GPUs, longest chain)",
         f"{bound['bound_seconds']:.2f} = max({bound['work_per_gpu_seconds']:.2f}, {bound['longest_chain_seconds']:.2f})"],
        ["makespan / bound", ratio],
        ["median per-task overhead (ms)", median(task_overhead) * 1000],
        ["mean task (s)", mean_task],
        [f"one {w.long_frames}-frame animation: one chain (s)", one["seconds"]],
        [f"  in {w.segments} segments (s)", many["seconds"]],
        ["  segment mode speed-up", segments["speedup"]],
    ])
    return rounded(result)
