"""A SIMULATED renderer, for the scheduler benchmark and scheduler tests only.

``SimulatedRenderer`` stands in for ``farm.worker.FrameRenderer`` inside the farm's
actors (``RenderSession(renderer_class=...)``): it loads no model and computes nothing.
A frame takes ``steps run x step_seconds`` of wall time (slept, in step-sized pieces,
polling ``should_stop`` once per step as the engine does) and returns a small flat
uint8 image at the frame's size. Turbo in-between frames (``diffuse`` false) take no
time. It exists to measure the farm's scheduling (makespan, chains, Ray overhead)
without GPUs; it never produces art.
"""

from __future__ import annotations

import functools
import time
from typing import Callable

import numpy as np

from farm.plan import AnimationSettings, FrameSpec
from farm.worker import FrameInputs, FrameResult


def steps_run(frame: FrameSpec) -> int:
    """Sampler steps a frame runs (0 for a turbo in-between frame)."""
    if not frame.diffuse:
        return 0
    return frame.render.sampler.steps - frame.render.sampler.skip_steps


def simulated_seconds(frame: FrameSpec, step_seconds: float) -> float:
    """The wall time the simulation spends on a frame."""
    return steps_run(frame) * step_seconds


class SimulatedRenderer:
    """SIMULATION of FrameRenderer: sleeps ``steps run x step_seconds`` per frame."""

    def __init__(self, models, device=None, threads: int | None = None, *, step_seconds: float = 0.01):
        if step_seconds < 0:
            raise ValueError(f"step_seconds must be >= 0, got {step_seconds}")
        self.models = models
        self.step_seconds = step_seconds

    def render(self, frame: FrameSpec, animation: AnimationSettings, inputs: FrameInputs,
               on_intermediate: Callable[[int, np.ndarray], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> FrameResult:
        from engine.errors import RenderCancelled

        started = time.perf_counter()
        steps = steps_run(frame)
        for step in range(steps):
            if should_stop is not None and should_stop():
                raise RenderCancelled(f"simulated render cancelled before step {step} of {steps}")
            # sleep to the step's deadline, so the overshoot of sleep does not accumulate
            delay = started + (step + 1) * self.step_seconds - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        pixels = np.full((frame.render.height, frame.render.width, 3), frame.index % 256, dtype=np.uint8)
        return FrameResult(pixels, time.perf_counter() - started, steps)


def simulated_renderer(step_seconds: float) -> Callable[..., SimulatedRenderer]:
    """The renderer_class to give RenderSession: SimulatedRenderer with this step cost."""
    return functools.partial(SimulatedRenderer, step_seconds=step_seconds)
