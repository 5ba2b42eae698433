"""Ray actors: RenderActor (one per GPU, models loaded once) and ProgressBoard.

Nothing per sampler step goes through Ray: an actor sends its step progress and preview
to the ProgressBoard at most a few times a second (fire-and-forget), and the driver reads
the board once per poll. A driver's board lives as long as the driver: actors of the
cluster's shared pool (farm.pool), which serve several drivers, get the board with each
frame and stop a frame whose board has died (its driver is gone).
"""

from __future__ import annotations

import os
import socket
import time

import ray
from ray.exceptions import ActorDiedError

from farm.metrics import farm_metrics
from farm.worker import FrameInputs, FrameRenderer

PROGRESS_INTERVAL_S = 0.5


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Latest step (and preview PNG) per running frame, written by actors, read by the driver."""

    def __init__(self):
        self._progress: dict[tuple[str, int], dict] = {}
        self._previews: dict[tuple[str, int], bytes] = {}

    def update(self, job: str, index: int, step: int, steps: int, actor: str, preview: bytes | None = None):
        self._progress[(job, index)] = {"step": step, "steps": steps, "actor": actor, "at": time.time()}
        if preview is not None:
            self._previews[(job, index)] = preview

    def clear(self, job: str, index: int):
        self._progress.pop((job, index), None)

    def snapshot(self) -> tuple[dict, dict]:
        previews, self._previews = self._previews, {}
        return dict(self._progress), previews

    def alive(self) -> bool:
        """Answers while the driver that owns the board lives (the shared pool asks)."""
        return True


class ModelLoadError(RuntimeError):
    """The actor's models failed to load (the message says why); every frame it is given fails."""


class _RenderActor:
    """Holds one model set and renders frames; restarted (models reloaded) if it crashes."""

    def __init__(self, models, device: str | None, threads: int | None, board_name: str | None, label: str,
                 renderer_class=None):
        """`board_name`: the owning driver's ProgressBoard; None for a shared pool's actor
        (each `render` call then brings its driver's board)."""
        self.model_key = models.key
        self.node = os.environ.get("RAY_NODE_NAME") or socket.gethostname()
        self.label = label
        # by name: constructor arguments stay small and inline
        self._board = ray.get_actor(board_name) if board_name is not None else None
        gpu_ids = ray.get_gpu_ids()
        if device is None:
            import torch

            device = "cuda" if (gpu_ids and torch.cuda.is_available()) else "cpu"
        self.device = device
        self.renderer = None
        self.load_error: str | None = None
        try:
            self.renderer = (renderer_class or FrameRenderer)(models, device=device, threads=threads)
        except Exception as error:  # a missing or damaged checkpoint: one line per frame, not a dead actor's traceback
            self.load_error = f"{type(error).__name__}: {' '.join(str(error).split())[:400]}"
        self.abandoned: list[dict] = []  # frames stopped because their driver died (the pool reports them)

    def __repr__(self) -> str:
        return f"RenderActor({self.model_key} on {self.node}, {self.label})"

    def info(self) -> dict:
        return {"node": self.node, "device": str(self.device), "pid": os.getpid(), "label": self.label,
                "node_id": ray.get_runtime_context().get_node_id(), "abandoned": list(self.abandoned),
                "niceness": os.nice(0)}

    def render(self, job: str, frame, animation, inputs: FrameInputs, board=None):
        """One frame. `board`: the calling driver's ProgressBoard (shared pool actors); the
        frame stops at the next progress report after that board died (driver gone)."""
        return self._render(job, frame, animation, inputs, board)

    def render_group(self, job: str, frame, frames, animation, inputs: FrameInputs, board=None):
        """Stills rendered together (``frames``: the whole group, ``frame``: the one that
        stands for it in progress reports); returns (pixels per image, stats)."""
        return self._render(job, frame, animation, inputs, board, group=tuple(frames))

    def _render(self, job: str, frame, animation, inputs: FrameInputs, board=None, group=None):
        from farm.output import png_bytes

        if self.load_error is not None:
            raise ModelLoadError(f"the models could not be loaded: {self.load_error}")

        context = ray.get_runtime_context()
        steps = frame.render.sampler.steps - frame.render.sampler.skip_steps
        last_sent = [0.0]
        preview_steps = set(frame.render.intermediate_steps)
        watch_caller = board is not None
        board = board if board is not None else self._board
        last_report = [None]  # the previous update's ObjectRef (only watched for a caller's board)

        def report(*args) -> None:
            if board is None:
                return
            ref = board.update.remote(job, frame.index, *args)
            if watch_caller:
                last_report[0] = ref

        def caller_gone() -> bool:
            """The previous report failed because the caller's board died: no one awaits this frame."""
            ref = last_report[0]
            if ref is None or not ray.wait([ref], timeout=0)[0]:
                return False
            last_report[0] = None
            try:
                ray.get(ref)
            except ActorDiedError:
                return True
            except Exception:  # an unavailable board (restarting) is not a dead driver
                return False
            return False

        def on_intermediate(step: int, image) -> None:
            now = time.monotonic()
            if step in preview_steps and (now - last_sent[0] >= PROGRESS_INTERVAL_S or step == steps - 1):
                last_sent[0] = now
                report(step + 1, steps, repr(self), png_bytes(image))

        step_count = [0]
        step_seconds = farm_metrics()["step_seconds"]
        tags = {"actor": self.label}
        last_step = [time.monotonic()]

        def should_stop() -> bool:  # the engine asks once per sampler step
            step_count[0] += 1
            now = time.monotonic()
            step_seconds.observe(now - last_step[0], tags)
            last_step[0] = now
            if now - last_sent[0] >= PROGRESS_INTERVAL_S:
                last_sent[0] = now
                if watch_caller and caller_gone():
                    self.abandoned.append({"job": job, "frame": frame.index, "step": step_count[0], "steps": steps})
                    print(f"{self.label}: stopped frame {frame.index} of {job} at step {step_count[0]}/{steps}: "
                          "its driver is gone")
                    return True
                report(min(step_count[0], steps), steps, repr(self))
            return context.is_canceled()

        report(0, steps, repr(self))
        if group is not None:
            result = self.renderer.render_group(group, animation, inputs, on_intermediate=on_intermediate,
                                                should_stop=should_stop, preview=group.index(frame))
        else:
            result = self.renderer.render(frame, animation, inputs, on_intermediate=on_intermediate,
                                          should_stop=should_stop)
        stats = {"seconds": result.seconds, "actor": repr(self), "node": self.node,
                 "node_id": context.get_node_id(), "pid": os.getpid()}
        if group is None and animation.save_depth_maps and result.depth is not None:  # stills have no depth
            stats["depth"] = result.depth
        if group is None and result.chain is not None:  # turbo: pixels is blended, later frames start from this
            stats["chain"] = result.chain
        return result.pixels, stats


RenderActor = ray.remote(_RenderActor)
