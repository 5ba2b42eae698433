"""Ray actors: RenderActor (one per GPU, models loaded once) and ProgressBoard.

Nothing per sampler step goes through Ray: an actor sends its step progress and preview
to the ProgressBoard at most a few times a second (fire-and-forget), and the driver reads
the board once per poll.
"""

from __future__ import annotations

import os
import socket
import time

import ray

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


class _RenderActor:
    """Holds one model set and renders frames; restarted (models reloaded) if it crashes."""

    def __init__(self, models, device: str | None, threads: int | None, board_name: str, label: str,
                 renderer_class=None):
        self.model_key = models.key
        self.node = os.environ.get("RAY_NODE_NAME") or socket.gethostname()
        self.label = label
        self._board = ray.get_actor(board_name)  # by name: constructor arguments stay small and inline
        gpu_ids = ray.get_gpu_ids()
        if device is None:
            import torch

            device = "cuda" if (gpu_ids and torch.cuda.is_available()) else "cpu"
        self.device = device
        self.renderer = (renderer_class or FrameRenderer)(models, device=device, threads=threads)

    def __repr__(self) -> str:
        return f"RenderActor({self.model_key} on {self.node}, {self.label})"

    def info(self) -> dict:
        return {"node": self.node, "device": str(self.device), "pid": os.getpid(), "label": self.label,
                "node_id": ray.get_runtime_context().get_node_id()}

    def render(self, job: str, frame, animation, inputs: FrameInputs):
        from farm.output import png_bytes

        context = ray.get_runtime_context()
        steps = frame.render.sampler.steps - frame.render.sampler.skip_steps
        last_sent = [0.0]
        preview_steps = set(frame.render.intermediate_steps)

        def on_intermediate(step: int, image) -> None:
            now = time.monotonic()
            if step in preview_steps and (now - last_sent[0] >= PROGRESS_INTERVAL_S or step == steps - 1):
                last_sent[0] = now
                self._board.update.remote(job, frame.index, step + 1, steps, repr(self), png_bytes(image))

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
                self._board.update.remote(job, frame.index, min(step_count[0], steps), steps, repr(self))
            return context.is_canceled()

        self._board.update.remote(job, frame.index, 0, steps, repr(self))
        result = self.renderer.render(frame, animation, inputs, on_intermediate=on_intermediate,
                                      should_stop=should_stop)
        stats = {"seconds": result.seconds, "actor": repr(self), "node": self.node,
                 "node_id": context.get_node_id(), "pid": os.getpid()}
        if animation.save_depth_maps and result.depth is not None:
            stats["depth"] = result.depth
        return result.pixels, stats


RenderActor = ray.remote(_RenderActor)
