"""Which frame goes to which actor next: pure bookkeeping, no Ray.

The driver loop (farm.driver) asks `next_for(actor)` whenever an actor is free and reports
`succeeded` / `failed`. Order: priority first; within a priority a chain's next frame goes
before independent stills (a chain can only use one actor at a time, so starting it late
sets the makespan); then submission order, then frame index. Failure policy after
Flamenco: an actor tries a frame at most once; a frame that failed on `max_frame_failures`
different actors fails its job; an actor that failed `max_actor_failures` frames of a job
gets no more of that job's work.

Stills rendered together (``FrameSpec.group``, images_per_call) are one task: the group's
lowest unfinished image stands for it (``group_lead``); the actor renders the whole group
(so each image's pixels do not depend on which of them were still to do) and the driver
reports the images it wrote with ``succeeded(task, indices)``.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from farm.plan import FrameSpec, Plan


@dataclass(frozen=True)
class Task:
    job: str
    frame: FrameSpec

    @property
    def model_key(self) -> str:
        return self.frame.render.models.key

    @property
    def name(self) -> str:
        return f"{self.job}/{self.frame.task_name}"


@dataclass
class Job:
    job_id: str
    plan: Plan
    priority: int
    order: int
    remaining: set[int]
    done: set[int] = field(default_factory=set)
    running: set[int] = field(default_factory=set)
    frame_failures: dict[int, dict[str, str]] = field(default_factory=dict)
    actor_failures: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    cancelled: bool = False

    @property
    def finished(self) -> bool:
        return not self.remaining and not self.running

    @property
    def state(self) -> str:
        if self.error:
            return "failed"
        if self.cancelled:
            return "cancelled"
        return "succeeded" if self.finished else "running"


class Scheduler:
    def __init__(self, max_frame_failures: int = 3, max_actor_failures: int = 3):
        self.max_frame_failures = max_frame_failures
        self.max_actor_failures = max_actor_failures
        self.jobs: dict[str, Job] = {}
        self._order = itertools.count()
        self._ready: list[tuple] = []  # heap of (priority key, job, index)
        self._queued: set[tuple[str, int]] = set()

    # -- jobs
    def add_job(self, job_id: str, plan: Plan, priority: int = 0, finished: set[int] | frozenset = frozenset(),
                only: set[int] | range | None = None) -> Job:
        """Schedule a plan's frames (or `only` some), skipping those already `finished`."""
        if job_id in self.jobs:
            raise ValueError(f"job {job_id} is already scheduled")
        wanted = {f.index for f in plan.frames} if only is None else set(only)
        job = Job(job_id, plan, priority, next(self._order), remaining=wanted - set(finished), done=set(finished))
        self.jobs[job_id] = job
        for frame in plan.frames:
            self._maybe_ready(job, frame)
        return job

    def cancel(self, job_id: str) -> None:
        job = self.jobs[job_id]
        job.cancelled = True
        job.remaining.clear()

    def fail(self, job_id: str, message: str) -> None:
        """End a job as failed: nothing more of it is started (its first error is kept)."""
        self._fail_job(self.jobs[job_id], message)

    def _fail_job(self, job: Job, message: str) -> None:
        job.error = job.error or message
        job.remaining.clear()

    # -- readiness
    @staticmethod
    def group_lead(job: Job, frame: FrameSpec) -> FrameSpec:
        """The frame that stands for ``frame``'s group: its lowest unfinished image (the
        frame itself when it renders alone or its group is done)."""
        unfinished = [i for i in frame.group if i in job.remaining]
        return job.plan.frames[min(unfinished)] if unfinished else frame

    def _maybe_ready(self, job: Job, frame: FrameSpec) -> None:
        frame = self.group_lead(job, frame)
        index = frame.index
        if index not in job.remaining or index in job.running or (job.job_id, index) in self._queued:
            return
        if frame.sources:  # composed by the driver, see composable()
            return
        if frame.group and any(i in job.running for i in frame.group):  # the group is being rendered
            return
        if frame.previous is not None and frame.previous not in job.done:
            return
        chain_first = 0 if frame.previous is not None or job.plan.is_animation else 1
        key = (-job.priority, chain_first, job.order, index)
        heapq.heappush(self._ready, (key, job.job_id, index))
        self._queued.add((job.job_id, index))

    def next_for(self, actor_id: str, model_key: str, incarnation: str | None = None) -> Task | None:
        """The best ready task this actor may run (its model set, not blocklisted, not tried).

        `incarnation` names this life of the actor: a restarted actor (models reloaded)
        may retry a frame its previous life crashed on; blocklisting counts per actor.
        """
        tried_as = incarnation or actor_id
        skipped = []
        chosen = None
        while self._ready:
            entry = heapq.heappop(self._ready)
            _, job_id, index = entry
            job = self.jobs[job_id]
            if index not in job.remaining or index in job.running:
                self._queued.discard((job_id, index))
                continue
            frame = job.plan.frames[index]
            if frame.render.models.key == model_key and self._may_try(job, index, actor_id, tried_as):
                self._queued.discard((job_id, index))
                job.running.add(index)
                chosen = Task(job_id, frame)
                break
            skipped.append(entry)
        for entry in skipped:
            heapq.heappush(self._ready, entry)
        return chosen

    def next_task(self) -> Task | None:
        """The best ready task, for any actor (a shared pool picks the actor later; see
        `exclusions`). It counts as running from now on."""
        while self._ready:
            _, job_id, index = heapq.heappop(self._ready)
            self._queued.discard((job_id, index))
            job = self.jobs[job_id]
            if index in job.remaining and index not in job.running:
                job.running.add(index)
                return Task(job_id, job.plan.frames[index])
        return None

    def exclusions(self, task: Task) -> tuple[frozenset[str], frozenset[str]]:
        """(actors blocklisted for the task's job, actor lives that already failed this frame)."""
        job = self.jobs[task.job]
        blocked = frozenset(a for a, n in job.actor_failures.items() if n >= self.max_actor_failures)
        return blocked, frozenset(job.frame_failures.get(task.frame.index, {}))

    def allowed(self, task: Task, actor_id: str, incarnation: str | None = None) -> bool:
        """Whether this actor (this life of it) may still run the task."""
        return self._may_try(self.jobs[task.job], task.frame.index, actor_id, incarnation or actor_id)

    def _may_try(self, job: Job, index: int, actor_id: str, life: str) -> bool:
        """The actor is not blocklisted for the job and this life of it has not failed the frame."""
        return (job.actor_failures.get(actor_id, 0) < self.max_actor_failures
                and life not in job.frame_failures.get(index, {}))

    def _fail_untriable(self, job: Job, frame: FrameSpec, detail: str) -> None:
        tried = "; ".join(f"{a}: {e}" for a, e in job.frame_failures.get(frame.index, {}).items())
        self._fail_job(job, f"{frame.task_name}: no actor left to try it ({tried or detail})")

    def unschedulable(self, task: Task, detail: str) -> None:
        """No actor may ever take this task (a shared pool said so): fail its job."""
        job = self.jobs[task.job]
        job.running.discard(task.frame.index)
        if not (job.cancelled or job.error):
            self._fail_untriable(job, task.frame, detail)

    def waiting_model_keys(self) -> set[str]:
        """Model sets that ready tasks need (for reloading idle actors)."""
        keys = set()
        for _, job_id, index in self._ready:
            job = self.jobs[job_id]
            if index in job.remaining and index not in job.running:
                keys.add(job.plan.frames[index].render.models.key)
        return keys

    def has_ready(self) -> bool:
        return any(index in self.jobs[job_id].remaining and index not in self.jobs[job_id].running
                   for _, job_id, index in self._ready) or any(
            all(s in job.done for s in job.plan.frames[i].sources)
            for job in self.jobs.values() for i in job.remaining if job.plan.frames[i].sources)

    # -- outcomes
    def succeeded(self, task: Task, indices=None) -> None:
        """The task's frame is done, or, for a group, the images in ``indices`` (those the
        driver wrote; a group image left unfinished is requeued)."""
        job = self.jobs[task.job]
        job.running.discard(task.frame.index)
        for index in (task.frame.index,) if indices is None else indices:
            job.remaining.discard(index)
            job.done.add(index)
            for following in job.plan.successors.get(index, ()):
                self._maybe_ready(job, job.plan.frames[following])
        if task.frame.group:
            self._maybe_ready(job, task.frame)

    def composable(self) -> list[Task]:
        """Seam frames whose two source renders are done (the driver blends them itself)."""
        ready = []
        for job in self.jobs.values():
            for index in sorted(job.remaining):
                frame = job.plan.frames[index]
                if frame.sources and index not in job.running and all(s in job.done for s in frame.sources):
                    job.running.add(index)
                    ready.append(Task(job.job_id, frame))
        return ready

    def failed(self, task: Task, actor_id: str, message: str, incarnation: str | None = None) -> None:
        """Record a failure; requeue the frame, or fail the job when the limits are reached."""
        job = self.jobs[task.job]
        index = task.frame.index
        job.running.discard(index)
        if job.cancelled or job.error:
            return
        tried = job.frame_failures.setdefault(index, {})
        tried[incarnation or actor_id] = message
        job.actor_failures[actor_id] = job.actor_failures.get(actor_id, 0) + 1
        if len(tried) >= self.max_frame_failures:
            actors = "; ".join(f"{actor}: {error}" for actor, error in tried.items())
            self._fail_job(job, f"{task.frame.task_name} failed on {len(tried)} actors ({actors})")
            return
        self._maybe_ready(job, task.frame)

    def abandoned(self, task: Task) -> None:
        """The task did not run (cancelled by us, stopping): put it back without blame."""
        job = self.jobs[task.job]
        job.running.discard(task.frame.index)
        self._maybe_ready(job, task.frame)

    def check_starvation(self, actors: dict[str, tuple[str, str]]) -> None:
        """Fail jobs whose remaining frames no live actor may take (all blocklisted/tried).

        `actors`: actor id -> (model key, current incarnation id)."""
        for job in self.jobs.values():
            if job.finished or job.error or job.running:
                continue
            for index in sorted(job.remaining):
                frame = job.plan.frames[index]
                if frame.sources or (frame.previous is not None and frame.previous not in job.done):
                    continue
                matching = [(a, life) for a, (key, life) in actors.items() if key == frame.render.models.key]
                if matching and not any(self._may_try(job, index, a, life) for a, life in matching):
                    self._fail_untriable(job, frame, "all actors blocklisted")
                    break

    @property
    def all_finished(self) -> bool:
        return all(job.finished for job in self.jobs.values())
