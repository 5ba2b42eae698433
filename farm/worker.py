"""Rendering one planned frame: init image from motion/video, then the engine. No Ray here.

`FrameRenderer` holds one loaded model set (and, for 3D, the depth model) and turns a
`FrameSpec` plus the pixels it depends on into the frame's pixels. The Ray actor
(farm.actors) is a thin shell around it; tests and the benchmark call it directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from farm.plan import AnimationSettings, FrameSpec, saves_turbo_blend

TINY_RAFT_SEED = 20211029
"""With tiny models Video Input's RAFT has random weights from this seed (as the tiny models')."""


@dataclass(frozen=True)
class FrameInputs:
    """Pixels a frame depends on (all HxWx3 uint8, or None)."""

    previous: np.ndarray | None = None  # the frame the chain continues from
    reference: np.ndarray | None = None  # the chain's first frame (colour coherence)
    previous_motions: tuple = ()  # turbo: motions from `previous` up to this frame (else just its own)
    older: np.ndarray | None = None  # turbo: the diffused frame before `previous`
    older_motions: tuple = ()  # turbo: motions from `older` up to this frame
    init_image: np.ndarray | None = None  # the scene's init_image, at the frame size
    video_previous: np.ndarray | None = None  # video frame of the previous frame
    video_current: np.ndarray | None = None  # video frame of this frame
    image_prompts: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupResult:
    """Stills rendered together: pixels per image, in the group's order."""

    pixels: tuple[np.ndarray, ...]
    seconds: float
    steps: int


@dataclass(frozen=True)
class FrameResult:
    pixels: np.ndarray
    seconds: float
    steps: int
    init: np.ndarray | None = None  # the init image used (for inspection and tests)
    depth: np.ndarray | None = None  # 3D: depth of the frame this one was warped from
    chain: np.ndarray | None = None  # turbo: the new image later frames start from (pixels is blended)


def frame_init(frame: FrameSpec, animation: AnimationSettings, inputs: FrameInputs,
               depth_of: Callable[[np.ndarray], np.ndarray] | None = None,
               flow: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> np.ndarray | None:
    """The init image of a frame: None (noise), the init image, the warped previous frame
    (2D / 3D), or the video frame / flow-warped previous output (Video Input; ``flow``
    estimates the video's motion, OpenCV's DIS when not given)."""
    kind = frame.init.kind
    if kind == "noise":
        return None
    if kind == "image":
        return inputs.init_image
    if kind == "video":
        if frame.init.flow_from_previous and inputs.previous is not None and inputs.video_previous is not None:
            from animation.flow import flow_init, optical_flow

            init = flow_init(inputs.previous, inputs.video_previous, inputs.video_current,
                             blend=animation.video_init_flow_blend,
                             use_mask=animation.video_init_check_consistency, flow=flow or optical_flow)
        else:
            init = inputs.video_current
        return init
    if kind != "previous":
        raise ValueError(f"unknown init source {kind!r}")
    if inputs.previous is None:
        raise ValueError(f"{frame.task_name} needs the previous frame's pixels")
    warped = carry_forward(inputs.previous, inputs.previous_motions or (frame.motion,), animation, depth_of)
    if not frame.diffuse and inputs.older is not None:
        from animation.turbo import turbo_blend

        older = carry_forward(inputs.older, inputs.older_motions, animation, depth_of)
        warped = turbo_blend(older, warped, frame.index, animation.turbo_steps)
    if animation.color_coherence != "none" and inputs.reference is not None:
        from animation.colour import match_colours

        warped = match_colours(warped, inputs.reference, animation.color_coherence)
    return warped


def depth_source(name: str) -> str:
    """DD's depth model name -> a local folder in the model cache, or the transformers hub id."""
    from engine.catalogue import models_dir

    hub = {"dpt_large": "Intel/dpt-large", "dpt-large": "Intel/dpt-large"}.get(name, name)
    local = models_dir() / hub.split("/")[-1]
    return str(local) if local.is_dir() else hub


def carry_forward(image: np.ndarray, motions, animation: AnimationSettings,
                  depth_of: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    """Warp an image through one frame's camera motion after another (2D or 3D)."""
    for motion in motions:
        if animation.mode == "3D":
            from animation.warp3d import warp_3d

            if depth_of is None:
                raise ValueError("3D motion needs a depth model")
            image = warp_3d(image, depth_of(image), motion, near_plane=animation.near_plane,
                            far_plane=animation.far_plane, fov=animation.fov,
                            padding_mode=animation.padding_mode, sampling_mode=animation.sampling_mode,
                            camera=animation.camera_model)
        else:
            from animation.warp2d import warp_2d

            # DD's 2D warp samples bilinearly; sampling_mode is a 3D setting in DD.
            image = warp_2d(image, motion, border=animation.border_mode, sampling="bilinear")
    return image


class FrameRenderer:
    """One model set, loaded once, rendering many frames."""

    def __init__(self, models, device=None, threads: int | None = None):
        import torch

        from engine.host_memory import keep_freed_host_memory
        from engine.models import load_model_set
        from engine.render import Renderer

        if threads:
            torch.set_num_threads(threads)
        self.model_set = load_model_set(models, device)
        if self.model_set.device.type == "cpu":  # a render process: reuse freed host memory
            keep_freed_host_memory()
        self.renderer = Renderer(self.model_set)
        self._depth = None
        self._raft = None

    def flow_model(self, name: str):
        """Video Input's flow estimator: OpenCV's DIS, or RAFT (loaded on first use; with
        tiny models a random one, seeded like them)."""
        from animation.flow import RaftFlow, optical_flow

        if name == "dis":
            return optical_flow
        if self._raft is None:
            if self.model_set.spec.diffusion_model == "tiny":
                self._raft = RaftFlow.random(seed=TINY_RAFT_SEED, device=self.model_set.device)
            else:
                from engine.catalogue import RAFT, ModelError, cached_path
                from engine.errors import ModelFileMissing

                try:
                    path = cached_path(RAFT.name)
                except ModelError as error:  # the submit checks first; a worker node may still lack it
                    raise ModelFileMissing(str(error)) from None
                self._raft = RaftFlow.from_file(path, device=self.model_set.device)
        return self._raft

    def depth_model(self, name: str):
        """The depth model, loaded on first 3D use: the tiny random one with tiny models."""
        if self._depth is None:
            from animation.depth import DepthModel

            if name == "tiny" or self.model_set.spec.diffusion_model == "tiny":
                self._depth = DepthModel.tiny(device=self.model_set.device)
            else:
                self._depth = DepthModel.load(depth_source(name), device=self.model_set.device)
        return self._depth

    def render(self, frame: FrameSpec, animation: AnimationSettings, inputs: FrameInputs,
               on_intermediate: Callable[[int, np.ndarray], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> FrameResult:
        started = time.perf_counter()
        depth_of = None
        depths: list[np.ndarray] = []
        if animation.mode == "3D":
            model = self.depth_model(animation.midas_depth_model)

            def depth_of(image: np.ndarray) -> np.ndarray:
                depths.append(model.predict(image))
                return depths[-1]
        flow = (self.flow_model(animation.video_flow_model)
                if frame.init.kind == "video" and frame.init.flow_from_previous else None)
        init = frame_init(frame, animation, inputs, depth_of, flow)
        # the depth of the last warp of the chain this frame continues (turbo warps the
        # older chain after it)
        newer_warps = len(inputs.previous_motions or (frame.motion,))
        depth = depths[min(newer_warps, len(depths)) - 1] if depths else None
        if not frame.diffuse:
            return FrameResult(init, time.perf_counter() - started, 0, init, depth)
        pixels = self.renderer.render(frame.render, init=init, image_prompt_images=inputs.image_prompts,
                                      on_intermediate=on_intermediate, should_stop=should_stop)
        steps = frame.render.sampler.steps - frame.render.sampler.skip_steps
        chain = None
        if saves_turbo_blend(frame, animation) and init is not None:
            from animation.turbo import turbo_saved_frame

            chain, pixels = pixels, turbo_saved_frame(pixels, init, animation.turbo_steps)
        return FrameResult(pixels, time.perf_counter() - started, steps, init, depth, chain)

    def render_group(self, frames: tuple[FrameSpec, ...], animation: AnimationSettings, inputs: FrameInputs,
                     on_intermediate: Callable[[int, np.ndarray], None] | None = None,
                     should_stop: Callable[[], bool] | None = None, preview: int = 0) -> GroupResult:
        """Stills of one group (``FrameSpec.group``) in lockstep (``Renderer.render_images``);
        ``on_intermediate`` sees the previews of ``frames[preview]``."""
        started = time.perf_counter()
        inits = [frame_init(frame, animation, inputs) for frame in frames]
        callback = None
        if on_intermediate is not None:
            def callback(image_index: int, step: int, image: np.ndarray) -> None:
                if image_index == preview:
                    on_intermediate(step, image)
        pixels = self.renderer.render_images([frame.render for frame in frames], inits, inputs.image_prompts,
                                             on_intermediate=callback, should_stop=should_stop)
        sampler = frames[0].render.sampler
        return GroupResult(tuple(pixels), time.perf_counter() - started, sampler.steps - sampler.skip_steps)
