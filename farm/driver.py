"""The Ray driver loop: model-holding actors, bounded in-flight work, retries, outputs.

A `RenderSession` runs one or more jobs (plans, each with its output folder) on a pool of
RenderActors: its own, or slots leased from the cluster's shared pool that separately
submitted jobs share (farm.pool). It hands ready frames to free actors (farm.scheduler
decides which), waits with `ray.wait`, writes each finished frame at once (atomically,
plus a manifest line), retries failures on other actors, and finishes with the video or
contact sheet.
Finished frames survive anything: on resume they are verified by hash and kept.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError

from farm.actors import ProgressBoard
from farm.metrics import farm_metrics
from farm.output import (DISK_FULL_ERRORS, MANIFEST, PERSISTENT_WRITE_ERRORS, ManifestEntry, OutputFolder,
                         OutputWriteError, utc_now)
from farm.plan import Plan, plan_record
from farm.pool import OwnedActors, PoolConfig, PooledActors, Slot
from farm.scheduler import Scheduler, Task
from farm.storage import OutsideOutput
from farm.worker import FrameInputs


@dataclass
class JobInputs:
    """Pixels from the scene's input files, loaded once by the driver."""

    init_image: np.ndarray | None = None
    image_prompts: dict[str, np.ndarray] = field(default_factory=dict)
    video_frames_dir: Path | None = None  # every nth frame of the input video, numbered 0, 1, ...

    def video_frame(self, number: int, every_nth: int, size: tuple[int, int]) -> np.ndarray:
        """Frame `number` of the input video (a multiple of `every_nth`: only those were extracted)."""
        from farm.inputs import load_image

        return load_image(self.video_frames_dir / f"{number // every_nth:06d}.png", size)


@dataclass
class RenderJob:
    job_id: str
    plan: Plan
    out: OutputFolder
    inputs: JobInputs = field(default_factory=JobInputs)
    priority: int = 0
    started_at: str = field(default_factory=utc_now)
    started_clock: float = field(default_factory=time.monotonic)
    reused: int = 0
    finished_at_start: frozenset[int] = frozenset()  # frames verified on disk when the job was added
    damaged_at_start: tuple[int, ...] = ()  # frames recorded as finished whose file was missing or damaged
    frame_seconds: list[float] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)  # failed attempts, for status.json
    last_status_write: float = 0.0
    disk_full: int = 0  # frame writes that found the output's disk full
    finished: bool = False  # its outcome (video and all) is in status.json


def one_line(error: BaseException) -> str:
    """The last meaningful line of an exception (Ray wraps remote tracebacks)."""
    if isinstance(error, RayTaskError) and error.cause is not None:
        error = error.cause
    text = str(error).strip().splitlines()
    message = text[-1] if text else type(error).__name__
    return f"{type(error).__name__}: {message}"[:500]


def _write_reason(error: Exception) -> str:
    """Why a frame could not be written, in a few words (an OSError's strerror)."""
    return str(error.strerror if isinstance(error, OSError) and error.strerror else error)


class RenderSession:
    """Runs render jobs on `actors` RenderActors (one per GPU, or CPU actors)."""

    dashboard_url: str | None = None
    """The Ray dashboard of this render (embedded local Ray), written into status.json."""
    cluster_job_id: str | None = None
    """In a cluster job: its Ray job id (farm status/logs/cancel take it), status.json's job_id."""

    def __init__(self, actors: int = 1, *, gpus_per_actor: float = 0.0, cpus_per_actor: float = 1.0,
                 device: str | None = None, threads: int | None = None, stall_seconds: float = 600.0,
                 poll_seconds: float = 0.25, max_restarts: int = 3,
                 on_update: Callable[["RenderSession"], None] | None = None, renderer_class=None,
                 pool: str | None = None, pool_config: PoolConfig | None = None):
        """`renderer_class` replaces farm.worker.FrameRenderer inside the actors (the
        scheduler benchmark's simulated renderer); it takes (models, device, threads).
        `pool`: lease actors from the cluster's shared pool of that name (farm.pool,
        for separately submitted jobs) instead of starting our own; the actor settings
        (or `pool_config`) apply if this session is the one that creates it."""
        self.stall_seconds = stall_seconds
        self.poll_seconds = poll_seconds
        self.on_update = on_update
        self.scheduler = Scheduler()
        self.jobs: dict[str, RenderJob] = {}
        self.slots: dict[str, Slot] = {}  # actors we may start frames on (own ones, or leased)
        self.inflight: dict[object, tuple[Task, str, float]] = {}
        self._write_failures = 0
        self.progress: dict[tuple[str, int], dict] = {}
        self._pixels: dict[tuple[str, int], np.ndarray] = {}
        self._on_disk: dict[str, dict[int, object]] = {}  # per job: manifest entries by index, read on a miss
        self._model_specs: dict[str, object] = {}
        self.completed: list[tuple[str, int, str]] = []  # (job, frame, actor) in finishing order
        self.actor_nodes: dict[str, str] = {}  # actor label -> Ray node id it last rendered on
        self.actor_pids: dict[str, int] = {}  # actor label -> worker process id
        # The progress board lives on the driver's node (it must not die with a worker node).
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        self._board_name = f"disco-farm-progress-{os.urandom(6).hex()}"
        self._board = ProgressBoard.options(
            name=self._board_name, max_restarts=-1,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()
        config = pool_config or PoolConfig(size=actors, gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor,
                                           device=device, threads=threads, max_restarts=max_restarts,
                                           renderer_class=renderer_class)
        self.source = (OwnedActors(self, config, self._board_name) if pool is None
                       else PooledActors(self, config, name=pool))

    # ------------------------------------------------------------------ jobs
    def add(self, job: RenderJob, only: set[int] | range | None = None) -> RenderJob:
        """Schedule a job (all its frames, or `only` these; earlier chain frames must be on disk)."""
        for key in [key for key in self._pixels if key[0] == job.job_id]:  # a job added again starts afresh
            del self._pixels[key]
        try:
            self._prepare(job, only)
        except (ValueError, OSError) as error:  # OutputDamaged, OutsideOutput, OutputWriteError
            self._write_failed_start(job, error)
            raise
        self.jobs[job.job_id] = job
        for frame in job.plan.frames:
            self._model_specs.setdefault(frame.render.models.key, frame.render.models)
        self.scheduler.add_job(job.job_id, job.plan, job.priority, set(job.finished_at_start), only)
        self._write_status(job, force=True)
        return job

    def _prepare(self, job: RenderJob, only: set[int] | range | None) -> None:
        """The output folder checked, plan.json written, the manifest reduced to the frames
        kept (`job.finished_at_start`); out-of-date videos removed."""
        hashes = job.plan.frame_hashes
        job.out.prepare()  # OutputDamaged: a file where frames/ belongs, ... (before anything renders)
        what = "plan.json"
        try:
            job.out.write_json(what, plan_record(job.plan))
            entries = job.out.manifest()
            finished = job.out.finished(hashes, entries)
            self._on_disk[job.job_id] = dict(finished)  # what later frames may start from, read once
            recorded = {entry.index: entry for entry in entries}
            keep = dict(finished)
            if only is not None:  # frames outside --frames stay recorded as they are
                wanted = set(only)
                keep.update({i: e for i, e in recorded.items() if i not in finished and i not in wanted})
            if any(i in hashes and i not in finished for i in recorded):  # frames to be replaced: the video
                what = "video"  # and contact sheet made of them are out of date
                for name in ("video.mp4", "video.webm", "video.gif", "contact_sheet.png", "preview.mp4"):
                    job.out.store.remove([name])  # one by one: a missing one must not stop the others
            what = MANIFEST
            job.out.compact_manifest(keep)
        except OSError as error:  # nothing renders yet; a full disk, say
            raise OutputWriteError(error, f"{job.job_id}: {job.out.write_problem(what, error)}; finished frames "
                                          f"are kept: submit again with --out {job.out.root} to resume") from None
        job.reused = len(finished)
        job.finished_at_start = frozenset(finished)
        damaged = {e.index for e in entries if hashes.get(e.index) == e.settings_hash} - set(finished)
        job.damaged_at_start = tuple(sorted(damaged if only is None else damaged & set(only)))  # rendered again

    def _write_failed_start(self, job: RenderJob, error: Exception) -> None:
        """status.json of an earlier run ("succeeded") must not outlive a resume that could
        not start: say "failed" and why, best effort, where a render's plan.json is (never
        into a folder of the user's own files)."""
        if not job.out.holds_render():
            return
        now = utc_now()
        with contextlib.suppress(Exception):  # a status.json linked out of the folder, ...
            job.out.write_status({
                **self._job_fields(job), "state": "failed", "done": 0, "reused": 0, "failed": 0,
                "failed_attempts": 0, "updated_at": now, "finished_at": now, "eta_seconds": None, "current": [],
                "errors": [], "error": str(error)})

    def cancel(self, job_id: str) -> None:
        self.scheduler.cancel(job_id)
        self.source.cancel(job_id)
        for ref, (task, _, _) in list(self.inflight.items()):
            if task.job == job_id:
                ray.cancel(ref)

    # ------------------------------------------------------------------ actors
    def start_actors(self) -> None:
        """Own actors: start them, reload idle ones for missing model sets. Pooled: join
        the pool, withdraw requests of ended jobs (farm.pool). `run` does this itself;
        call it first to have the actors' start-up over before the frames (benchmarks)."""
        self.source.prepare()

    # ------------------------------------------------------------------ dispatch
    def _frame_pixels(self, job: RenderJob, index: int) -> np.ndarray:
        key = (job.job_id, index)
        if key not in self._pixels:
            entry = self._on_disk.get(job.job_id, {}).get(index)
            if entry is None:  # read the manifest once per miss of a frame written since
                self._on_disk[job.job_id] = {e.index: e for e in job.out.manifest()}
                entry = self._on_disk[job.job_id].get(index)
            if entry is None:
                raise RuntimeError(f"{job.job_id}: frame {index} is neither in memory nor on disk")
            self._pixels[key] = job.out.load_source(entry)
        return self._pixels[key]

    def _inputs_for(self, job: RenderJob, task: Task) -> FrameInputs:
        frame = task.frame
        needs = job.plan.dependencies(frame)
        pixels = {i: self._frame_pixels(job, i) for i in needs.indices}
        video_previous = video_current = None
        if frame.init.kind == "video" and job.inputs.video_frames_dir is not None:
            size, nth = (frame.render.width, frame.render.height), job.plan.animation.extract_nth_frame
            video_current = job.inputs.video_frame(frame.init.video_frame, nth, size)
            if frame.previous is not None:
                video_previous = job.inputs.video_frame(job.plan.frames[frame.previous].init.video_frame, nth, size)
        prompts = {p.text: job.inputs.image_prompts[p.text] for p in frame.render.image_prompts
                   if p.text in job.inputs.image_prompts}
        return FrameInputs(
            previous=pixels.get(needs.previous), reference=pixels.get(needs.reference),
            init_image=job.inputs.init_image, video_previous=video_previous, video_current=video_current,
            image_prompts=prompts, previous_motions=needs.previous_motions,
            older=pixels.get(needs.older), older_motions=needs.older_motions)

    def _dispatch(self) -> None:
        # a shared pool's actors serve several drivers: each frame brings this driver's board
        board = (self._board,) if self.source.board_per_call else ()
        for task, slot in self.source.assign():
            job = self.jobs[task.job]
            inputs = self._inputs_for(job, task)
            if task.frame.group:  # stills rendered together: the whole group, always
                group = tuple(job.plan.frames[i] for i in task.frame.group)
                ref = slot.handle.render_group.options(name=task.name).remote(
                    task.job, task.frame, group, job.plan.animation, inputs, *board)
            else:
                ref = slot.handle.render.options(name=task.name).remote(task.job, task.frame, job.plan.animation,
                                                                        inputs, *board)
            slot.busy = ref
            self.inflight[ref] = (task, slot.label, time.monotonic())
            self.progress[(task.job, task.frame.index)] = {"step": 0, "steps": task.frame.render.sampler.steps
                                                           - task.frame.render.sampler.skip_steps,
                                                           "at": None, "actor": slot.label}

    # ------------------------------------------------------------------ results
    def _collect(self, ref) -> None:
        task, label, started = self.inflight.pop(ref)
        slot = self.slots.get(label)
        if slot is not None and slot.busy is ref:
            slot.busy = None
        job = self.jobs[task.job]
        self.progress.pop((task.job, task.frame.index), None)
        self._board.clear.remote(task.job, task.frame.index)
        try:
            pixels, stats = ray.get(ref)
        except TaskCancelledError:
            self._call_ended(slot)
            self.scheduler.abandoned(task)
            return
        except RayActorError as error:
            life = slot.incarnation if slot is not None else label
            message = (f"{label}'s process stopped while rendering {task.frame.task_name} (killed, crashed or out of "
                       f"memory: {type(error).__name__}); the frame is tried again")
            self.scheduler.failed(task, label, message, life)
            self._call_ended(slot, crashed=True)
            self._record_error(job, task, label, message)
            return
        except RayTaskError as error:
            self.scheduler.failed(task, label, one_line(error), slot.incarnation if slot is not None else label)
            self._call_ended(slot)
            self._record_error(job, task, label, one_line(error))
            return
        self._call_ended(slot)
        state = self.scheduler.jobs[task.job]
        if state.cancelled:
            return
        if task.frame.group:  # the group's images; those finished before (a resume) stay as they are
            results = [(job.plan.frames[i], image) for i, image in zip(task.frame.group, pixels)
                       if i in state.remaining]
        else:
            results = [(task.frame, pixels)]
        elapsed = time.monotonic() - started
        written = []
        for frame, image in results:
            try:
                self._write_frame(job, frame, image, stats)
            except (OSError, OutsideOutput) as error:  # a full disk, say: nothing half-written stays; retry
                self._write_failures += 1
                message = f"could not write {frame.task_name}: {_write_reason(error)}"
                if written:
                    self.scheduler.succeeded(task, written)
                fatal = str(error) if isinstance(error, OutsideOutput) else self._fatal_write_error(job, frame, error)
                if fatal:  # rendering it again cannot help: the job fails now, once
                    self.scheduler.fail(task.job, fatal)
                self.scheduler.failed(task, "output", message, f"write#{self._write_failures}")
                self._record_error(job, task, "output", message)
                return
            written.append(frame.index)
            job.frame_seconds.append(elapsed / len(results))
            self.completed.append((task.job, frame.index, label))
            if job.plan.is_animation:  # what later frames start from (a turbo frame's chain image)
                chain = stats.get("chain")
                self._pixels[(task.job, frame.index)] = np.array(image if chain is None else chain, copy=True)
        metrics = farm_metrics()
        metrics["frames_done"].inc(len(written), {"scene": job.plan.name})
        metrics["busy_seconds"].inc(max(stats["seconds"], 0.0), {"actor": label})
        self.actor_nodes[label] = stats.get("node_id")
        self.actor_pids[label] = stats.get("pid")
        if job.plan.is_animation:
            self._forget_old_pixels(job)
        self.scheduler.succeeded(task, written if task.frame.group else None)
        self._write_status(job)

    @staticmethod
    def _fatal_write_error(job: RenderJob, frame, error: OSError) -> str | None:
        """The job's error when a failed frame write should end the job rather than render
        the frame again: a problem that stays (a file where frames/ belongs, a read-only
        disk, no permission) at once; a full disk the second time (once may be a passing
        peak). None: retry the frame as any failed attempt."""
        relative = OutputFolder.frame_file(frame.kind, frame.index)
        if error.errno in DISK_FULL_ERRORS:
            job.disk_full += 1
            return job.out.write_problem(relative, error) if job.disk_full > 1 else None
        if error.errno in PERSISTENT_WRITE_ERRORS:
            return job.out.write_problem(relative, error)
        return None

    def _write_frame(self, job: RenderJob, frame, pixels: np.ndarray, stats: dict) -> None:
        """The frame's PNG (atomically), its chain image when sent (turbo), and its manifest
        line last; its depth map when sent."""
        chain = stats.get("chain")
        chain_digest = job.out.write_chain(frame.index, chain) if chain is not None else ""
        relative, digest = job.out.write_frame(frame.kind, frame.index, pixels)
        entry = ManifestEntry(
            index=frame.index, kind=frame.kind, file=relative, sha256=digest,
            settings_hash=job.plan.frame_hashes[frame.index], seed=frame.render.seed, actor=stats["actor"],
            node=stats["node"], seconds=round(stats["seconds"], 3), finished_at=utc_now(),
            chain_sha256=chain_digest)
        job.out.append_manifest(entry)
        if job.job_id in self._on_disk:  # a frame rendered again replaces its older line
            self._on_disk[job.job_id][frame.index] = entry
        if stats.get("depth") is not None:
            job.out.write_depth(frame.index, stats["depth"])

    def _compose_seams(self) -> None:
        """Segment mode: blend each seam frame from its two renders as soon as both exist."""
        from animation.turbo import blend_chains

        for task in self.scheduler.composable():
            job = self.jobs[task.job]
            frame = task.frame
            first, second = (self._frame_pixels(job, source) for source in frame.sources)
            pixels = blend_chains(first, second, frame.blend)
            try:
                self._write_frame(job, frame, pixels, {"actor": "driver (seam blend)", "node": "", "seconds": 0.0})
            except (OSError, OutsideOutput) as error:  # the driver blends it: no actor to retry on; the job fails
                message = (str(error) if isinstance(error, OutsideOutput)
                           else job.out.write_problem(OutputFolder.frame_file(frame.kind, frame.index), error))
                self.scheduler.fail(task.job, message)
                self.scheduler.failed(task, "output", message)
                self._record_error(job, task, "output", f"could not write {frame.task_name}: {_write_reason(error)}")
                continue
            self.completed.append((task.job, frame.index, "driver"))
            self.scheduler.succeeded(task)

    def _forget_old_pixels(self, job: RenderJob) -> None:
        """Drop pixels no unfinished frame starts from (shot starts stay); anything dropped
        that is needed after all (turbo anchors, resume) is read back from disk."""
        state = self.scheduler.jobs[job.job_id]
        starts = set(job.plan.shot_starts.values())
        for key in [k for k in self._pixels if k[0] == job.job_id]:
            if key[1] not in starts and all(s in state.done for s in job.plan.successors.get(key[1], ())):
                del self._pixels[key]

    def _record_error(self, job: RenderJob, task: Task, label: str, message: str) -> None:
        farm_metrics()["frames_failed"].inc(1, {"scene": job.plan.name})
        job.errors.append({"index": task.frame.index, "actor": label, "message": message})
        self._write_status(job, force=True)

    def _call_ended(self, slot: Slot | None, crashed: bool = False) -> None:
        """A render call ended: own actors are pinged after a crash (Ray restarts them,
        reloading models; a permanently dead one is replaced); a leased one goes back to
        the pool with this driver's next request."""
        if slot is not None:
            self.source.ended(slot, crashed)

    # ------------------------------------------------------------------ watching
    def _poll_progress(self) -> None:
        try:
            progress, previews = ray.get(self._board.snapshot.remote(), timeout=10)
        except (RayActorError, ray.exceptions.GetTimeoutError):
            return  # progress is best effort; frames and their outputs do not depend on it
        for (job_id, index), record in progress.items():
            if (job_id, index) in self.progress:
                self.progress[(job_id, index)].update(record)
        for (job_id, index), png in previews.items():
            job = self.jobs.get(job_id)
            if job is not None:
                try:
                    job.out.write_preview(index, png)
                except OSError:
                    pass  # previews are best effort too (a full disk fails the job at its next frame)

    def _check_stalls(self) -> None:
        now = time.time()
        for ref, (task, label, _) in list(self.inflight.items()):
            record = self.progress.get((task.job, task.frame.index))
            # the clock starts when the actor reports it began the frame (not while it loads models)
            if record and record.get("at") and now - record["at"] > self.stall_seconds:
                slot = self.slots.get(label)
                if slot is not None:
                    record["at"] = now
                    ray.kill(slot.handle, no_restart=False)

    def eta_seconds(self, job: RenderJob) -> float | None:
        state = self.scheduler.jobs[job.job_id]
        if not job.frame_seconds:
            return None
        per_frame = sum(job.frame_seconds[-20:]) / len(job.frame_seconds[-20:])
        parallel = 1 if job.plan.is_animation and len(job.plan.shots) == 1 else max(1, len(self.slots))
        return round(per_frame * math.ceil((len(state.remaining) + len(state.running)) / parallel), 1)

    def status(self, job: RenderJob) -> dict:
        state = self.scheduler.jobs[job.job_id]
        current = [{"index": index, "step": r.get("step", 0), "steps": r.get("steps", 0)}
                   for (job_id, index), r in sorted(self.progress.items()) if job_id == job.job_id]
        return {
            **self._job_fields(job), "state": state.state if state.finished or state.error else "running",
            "done": len(job.plan.output_indices & state.done), "reused": job.reused,
            "failed": len({error["index"] for error in job.errors} - state.done), "failed_attempts": len(job.errors),
            "updated_at": utc_now(), "finished_at": utc_now() if state.finished else None,
            "eta_seconds": self.eta_seconds(job), "current": current, "errors": job.errors[-20:], "error": state.error,
        }

    def _job_fields(self, job: RenderJob) -> dict:
        """status.json's fields that do not change while the job runs."""
        return {"name": job.plan.name, "kind": "frame" if job.plan.is_animation else "image",
                "total": len(job.plan.output_indices), "started_at": job.started_at, "video": None,
                "job_id": self.cluster_job_id or job.job_id, "dashboard_url": self.dashboard_url}

    def _write_status(self, job: RenderJob, force: bool = False, extra: dict | None = None) -> None:
        now = time.monotonic()
        if not force and now - job.last_status_write < 0.5:
            return
        job.last_status_write = now
        # best effort: status.json says how it goes, the frames and manifest are what count
        job.out.write_status({**self.status(job), **(extra or {})})

    # ------------------------------------------------------------------ main loop
    def run(self) -> dict[str, str]:
        """Render every added job; returns job id -> final state."""
        try:
            while not self.scheduler.all_finished:
                self._compose_seams()
                if self.scheduler.all_finished:
                    break
                self.start_actors()
                self._dispatch()
                waiting = self.source.waitables()  # pinged restarted actors, or requests to the pool
                if not self.inflight and not waiting:
                    self.scheduler.check_starvation(self.source.live_actors())
                    if not self.scheduler.has_ready() and not self.scheduler.all_finished:
                        for job_id, job_state in self.scheduler.jobs.items():
                            if not job_state.finished:
                                self.scheduler.fail(job_id, "no frame can start (dependency lost)")
                    continue
                ready, _ = ray.wait([*self.inflight, *waiting], num_returns=1, timeout=self.poll_seconds)
                for ref in ready:
                    if ref in self.inflight:
                        self._collect(ref)
                    else:
                        self.source.answered(ref)
                self._cancel_failed_jobs()
                self._poll_progress()
                self._check_stalls()
                for job in self.jobs.values():
                    self._write_status(job)
                    state = self.scheduler.jobs[job.job_id]
                    farm_metrics()["queue_depth"].set(len(state.remaining) + len(state.running), {"scene": job.plan.name})
                if self.on_update:
                    self.on_update(self)
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C; SIGTERM (`farm cancel`: Ray stops the job)
            for ref in list(self.inflight):
                ray.cancel(ref)
            self.mark_cancelled()
            raise
        results = {}
        try:
            self.source.flush()  # leased actors go back before the videos are made
            for job in self.jobs.values():
                results[job.job_id] = self._finish(job)
        except (KeyboardInterrupt, SystemExit):  # while a video was made: its frames are all kept
            self.mark_cancelled()
            raise
        if self.on_update:
            self.on_update(self)
        return results

    def mark_cancelled(self) -> None:
        """status.json of every job not finished yet (video and all) says cancelled: the
        render was interrupted."""
        for job in self.jobs.values():
            if not job.finished:
                for key in [key for key in self.progress if key[0] == job.job_id]:
                    del self.progress[key]  # nothing renders any more
                with contextlib.suppress(OSError):
                    job.out.fold_manifest()  # a URI's manifest.d/ into manifest.jsonl, as a job's end does
                self._write_status(job, force=True, extra={"state": "cancelled", "error": "interrupted",
                                                           "eta_seconds": None, "finished_at": utc_now()})

    def _cancel_failed_jobs(self) -> None:
        for ref, (task, _, _) in list(self.inflight.items()):
            state = self.scheduler.jobs[task.job]
            if state.error or state.cancelled:
                ray.cancel(ref)

    def _finish(self, job: RenderJob) -> str:
        state = self.scheduler.jobs[job.job_id]
        extra: dict = {}
        from animation.video import VideoError

        entries = job.out.finished({f.index: job.plan.frame_hashes[f.index] for f in job.plan.output_frames})
        what = MANIFEST
        try:
            if state.state == "succeeded" and len(entries) == len(job.plan.output_frames):
                if job.plan.is_animation:
                    what = f"video.{job.plan.animation.video_format}"
                    extra["video"] = make_video(job.out, job.plan, entries, inputs=job.inputs)
                else:
                    what = "contact_sheet.png"
                    job.out.contact_sheet(list(entries.values()))
                    extra["contact_sheet"] = "contact_sheet.png"
            what = MANIFEST
            job.out.fold_manifest()  # a URI's manifest.d/ objects into manifest.jsonl
        except OSError as error:  # a full disk, say: the job fails, its frames are kept (submit again)
            self.scheduler.fail(job.job_id, job.out.write_problem(what, error))
        except VideoError as error:
            self.scheduler.fail(job.job_id, f"could not make {what}: {' '.join(str(error).split())}")
        self._write_status(job, force=True, extra=extra)
        job.finished = True
        return state.state

    def shutdown(self) -> None:
        """Own actors are stopped; leased ones go back to the pool (frames in flight cancelled)."""
        self.source.shutdown()
        ray.kill(self._board)


def make_video(out: OutputFolder, plan: Plan, entries: dict, name: str | None = None,
               inputs: JobInputs | None = None) -> str:
    """Stitch finished frames (frame 0 included, index order) into the scene's video format.
    video_blend mixes each frame with the one before: linearly, or in Video Input as
    video_init_blend_mode says (none; linear; optical flow: the frame before moved along the
    input video's motion first, DD's create-video blend)."""
    from animation.video import stitch

    settings = plan.animation
    codec = {"mp4": "h264", "webm": "webm", "gif": "gif"}[settings.video_format]
    name = name or f"video.{settings.video_format}"
    indices = sorted(entries)
    blend, blend_pair = min(settings.video_blend, 0.99), None
    video_mode = settings.video_init_blend_mode if settings.mode == "Video Input" else "linear"
    if video_mode == "none":
        blend = 0.0
    elif video_mode == "optical flow" and blend and inputs is not None and inputs.video_frames_dir is not None:
        from animation.flow import flow_blend_frames

        def blend_pair(previous, current, position):
            before, now = (plan.frames[indices[p]] for p in (position - 1, position))
            size = (now.render.width, now.render.height)
            return flow_blend_frames(previous, current,
                                     inputs.video_frame(before.init.video_frame, settings.extract_nth_frame, size),
                                     inputs.video_frame(now.init.video_frame, settings.extract_nth_frame, size),
                                     blend, use_mask=settings.video_init_check_consistency)
    # ffmpeg needs local files: a URI's frames are copied to a temporary folder, the video uploaded
    with out.local_files([entries[i].file for i in indices]) as frames, out.local_target(name) as target:
        stitch(frames, target, fps=settings.fps, crf=settings.video_crf, codec=codec, blend=blend,
               blend_pair=blend_pair)
    return name
