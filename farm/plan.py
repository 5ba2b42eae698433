"""Resolution: one pure function from a validated Scene to per-image / per-frame specs.

`resolve(scene)` -> `Plan`. Every `FrameSpec` holds all a frame needs (prompts with
weights, guidance, cut schedules, motion, init source, seed) and is hashable. A frame's
`Plan.frame_hashes` entry (its own `settings_hash`, the contents of the input files it
reads, and for a frame made from others how they are carried into it and their hashes)
decides whether a finished frame can be reused on resume. The farm, the local runner
and `farm plan` all use this function.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from animation.motion import Motion
from animation.turbo import is_diffused_frame
from engine.spec import (
    STILL_AUGMENTATIONS,
    CutSchedule,
    GuidanceSettings,
    ModelSetSpec,
    RenderSpec,
    SamplerSettings,
    augmentations_for_mode,
)
from farm.cutschedule import format_cut_schedule
from farm.scene import Problem, Scene, SceneInvalid

SEED_MODULUS = 2**32


@dataclass(frozen=True)
class InitSource:
    """Where a frame's init image comes from."""

    kind: str = "noise"  # noise | image | previous | video
    path: str | None = None  # the init image file (kind "image")
    video_frame: int | None = None  # index into the extracted video frames (kind "video")
    flow_from_previous: bool = False  # video: warp the previous output by the video's flow


@dataclass(frozen=True)
class FrameSpec:
    """One unit of work: a still image or an animation frame."""

    index: int
    kind: str  # "image" | "frame"
    render: RenderSpec
    motion: Motion = Motion()
    init: InitSource = InitSource()
    shot: int = 0
    previous: int | None = None  # the frame this one starts from (animations)
    diffuse: bool = True  # False: a turbo in-between frame (blended, not diffused)
    sources: tuple[int, ...] = ()  # segment seams: composed from these two renders, not rendered
    blend: float = 0.0  # segment seams: weight of the second source
    of_frame: int | None = None  # kind "segment": the real frame this render stands for
    group: tuple[int, ...] = ()  # stills rendered together (images_per_call): fixed by index

    @property
    def task_name(self) -> str:
        if self.kind == "segment":
            return f"segment-{self.index:06d}-frame-{self.of_frame:06d}"
        return f"{self.kind}-{self.index:06d}"

    @property
    def settings_hash(self) -> str:
        """Stable hash of everything that decides this frame's pixels. ``compile_unet`` is
        left out: it says how the UNet runs, and with ``auto`` it follows the scene's length,
        so adding images to a scene must not make its finished ones stale; so are the
        steps whose previews are kept (``display_rate``, ``intermediate_saves``) and the
        init file's path (its contents count, in `Plan.frame_hashes`)."""
        models = dataclasses.replace(self.render.models, compile_unet=False)
        hashed = _plain(dataclasses.replace(self, render=dataclasses.replace(self.render, models=models)))
        del hashed["render"]["intermediate_steps"]
        if hashed["init"]["path"]:  # where the init file lies is not what it holds: Plan.frame_hashes
            hashed["init"]["path"] = "file"  # adds its contents (a cluster job's copy moves every run)
        if not hashed["group"]:  # rendered alone: the hash of builds before images_per_call
            del hashed["group"]
        if self.render.guidance.augmentations == STILL_AUGMENTATIONS:  # stills: as before the modes had their own
            del hashed["render"]["guidance"]["augmentations"]
        if self.render.guidance.fuzzy_prompt:  # since 2026-11-26 without the clean embedding, as DD
            hashed["fuzzy"] = "noisy copies only"
        return hashlib.sha256(_canonical_json(hashed).encode()).hexdigest()


def saves_turbo_blend(frame: FrameSpec, animation: "AnimationSettings") -> bool:
    """A turbo frame that is diffused and made from another: written out blended with the
    frame it started from (``animation.turbo.turbo_saved_frame``), its chain image kept apart."""
    return (animation.turbo_mode and animation.mode in ("2D", "3D") and frame.diffuse
            and frame.previous is not None)


@dataclass(frozen=True)
class FrameDependencies:
    """Finished frames (by index) a frame is made from; see Plan.dependencies."""

    previous: int | None = None
    previous_motions: tuple[Motion, ...] = ()
    older: int | None = None
    older_motions: tuple[Motion, ...] = ()
    reference: int | None = None  # the shot's first frame (colour coherence)

    @property
    def indices(self) -> set[int]:
        return {i for i in (self.previous, self.older, self.reference) if i is not None}


@dataclass(frozen=True)
class AnimationSettings:
    """Scene-wide animation and video settings (not per frame)."""

    mode: str = "None"
    fps: float = 12.0
    border_mode: str = "wrap"
    padding_mode: str = "border"
    sampling_mode: str = "bicubic"
    camera_model: str = "dd"
    midas_depth_model: str = "dpt_large"
    midas_weight: float = 0.3
    near_plane: float = 200.0
    far_plane: float = 10000.0
    fov: float = 40.0
    color_coherence: str = "none"
    save_depth_maps: bool = False
    turbo_mode: bool = False
    turbo_steps: int = 3
    turbo_preroll: int = 10
    video_init_path: str | None = None
    extract_nth_frame: int = 2
    video_init_flow_blend: float = 0.999
    video_init_check_consistency: bool = False
    video_flow_model: str = "raft"
    video_init_blend_mode: str = "optical flow"
    video_crf: int = 17
    video_format: str = "mp4"
    video_blend: float = 0.0
    parallel_segments: int = 1
    segment_overlap: int = 0


CARRY_SETTINGS = {
    "2D": ("border_mode",),
    "3D": ("padding_mode", "sampling_mode", "camera_model", "midas_depth_model", "near_plane", "far_plane", "fov"),
    "Video Input": ("video_init_flow_blend", "video_init_check_consistency", "video_flow_model"),
}
"""Per animation mode, the scene-wide settings that decide how finished frames are carried
into the next one (warp, depth, flow): with the mode and color_coherence, part of the hash
of every frame made from another. Settings another mode uses are left out (changing
video_flow_model must not re-render a 2D animation)."""


@dataclass(frozen=True)
class Plan:
    name: str
    seed: int
    animation: AnimationSettings
    frames: tuple[FrameSpec, ...]
    input_digests: tuple[tuple[str, str], ...] = ()
    """(path as the scene gives it, sha256 of the file) of each input file: init image,
    image prompts, input video. Empty when the caller did not read them (then frame hashes
    cover the paths only)."""

    @property
    def is_animation(self) -> bool:
        return self.animation.mode != "None"

    def dependencies(self, frame: FrameSpec) -> "FrameDependencies":
        """Which finished frames this frame starts from, and the motions carrying them here.

        Normally the previous frame, moved by this frame's motion. In turbo mode the
        chain continues from the last diffused frame moved through every frame since, and a
        skipped frame also needs the diffused frame before that (DD's older chain)."""
        if frame.previous is None:
            return FrameDependencies()
        reference = self._shot_start(frame)
        if not self.animation.turbo_mode:
            return FrameDependencies(frame.previous, (frame.motion,), None, (), reference)
        diffused = []  # walk back to the last two diffused frames of this shot (a few frames)
        index = frame.index - 1
        while index >= reference and len(diffused) < 2:
            if self.frames[index].diffuse:
                diffused.append(index)
            index -= 1
        newer = diffused[0]
        older = diffused[1] if len(diffused) > 1 and not frame.diffuse else None
        motions = [f.motion for f in self.frames[newer + 1:frame.index + 1]]
        older_motions = [f.motion for f in self.frames[older + 1:frame.index + 1]] if older is not None else []
        return FrameDependencies(newer, tuple(motions), older, tuple(older_motions), reference)

    def _shot_start(self, frame: FrameSpec) -> int:
        """The first frame of this frame's chain."""
        return self.shot_starts[frame.shot]

    def input_files(self, frame: FrameSpec) -> list[str]:
        """The input files (as the scene names them) this frame reads."""
        files = [prompt.text for prompt in frame.render.image_prompts]
        if frame.init.kind == "image" and frame.init.path:
            files.append(frame.init.path)
        if frame.init.kind == "video" and self.animation.video_init_path:
            files.append(self.animation.video_init_path)
        return sorted(set(files))

    @functools.cached_property
    def frame_hashes(self) -> dict[int, str]:
        """Frame index -> the hash of everything that decides its pixels: its own settings
        (`settings_hash`), the contents of the input files it reads, and for a frame made
        from finished frames (previous, turbo's older one, the colour reference, segment
        seams) the carry settings and their hashes, recursively. So a resume re-renders a
        frame whose init file changed, and every frame made from a re-rendered one. A frame
        made from nothing that reads no file keeps its `settings_hash`."""
        digests = dict(self.input_digests)
        carried_by = ("mode", "color_coherence", *CARRY_SETTINGS.get(self.animation.mode, ()))
        carry = {name: getattr(self.animation, name) for name in carried_by}
        by_index = {frame.index: frame for frame in self.frames}
        hashes: dict[int, str] = {}
        for start in self.frames:  # depth first without recursion: chains are long
            pending = [start.index]
            while pending:
                index = pending[-1]
                if index in hashes:
                    pending.pop()
                    continue
                frame = by_index[index]
                sources = sorted((self.dependencies(frame).indices | set(frame.sources)) - {index})
                missing = [source for source in sources if source not in hashes]
                if missing:
                    pending.extend(missing)
                    continue
                pending.pop()
                files = self.input_files(frame)
                if not sources and not files:
                    hashes[index] = frame.settings_hash
                    continue
                made_of = {"frame": frame.settings_hash,
                           "inputs": [digests.get(name, name) for name in files],
                           "carried_by": carry if sources else None,
                           "from": [hashes[source] for source in sources]}
                if saves_turbo_blend(frame, self.animation):
                    made_of["saved"] = "turbo blend"
                hashes[index] = hashlib.sha256(_canonical_json(made_of).encode()).hexdigest()
        return hashes

    @functools.cached_property
    def shots(self) -> dict[int, list[FrameSpec]]:
        chains: dict[int, list[FrameSpec]] = {}
        for frame in self.frames:
            chains.setdefault(frame.shot, []).append(frame)
        return chains

    @functools.cached_property
    def shot_starts(self) -> dict[int, int]:
        """The first frame of each chain (the one that starts from noise or an init image)."""
        return {shot: next(f.index for f in chain if f.previous is None and not f.sources)
                for shot, chain in self.shots.items()}

    @functools.cached_property
    def successors(self) -> dict[int, list[int]]:
        """Frame -> the frames that start from it, or are composed from it."""
        following: dict[int, list[int]] = {}
        for frame in self.frames:
            for source in ((frame.previous,) if frame.previous is not None else ()) + frame.sources:
                following.setdefault(source, []).append(frame.index)
        return following

    @property
    def output_frames(self) -> list[FrameSpec]:
        """The frames that make the film (not the extra segment renders)."""
        return [f for f in self.frames if f.kind != "segment"]

    @functools.cached_property
    def output_indices(self) -> frozenset[int]:
        """Indices of `output_frames` (what progress counts: segment renders are not frames)."""
        return frozenset(f.index for f in self.output_frames)


# --------------------------------------------------------------------------- helpers


def _series(scene: Scene, name: str, n: int) -> np.ndarray:
    return scene[name].values(n, fps=scene["fps"], interpolation=scene["interpolation"])


def _int_series(scene: Scene, name: str, n: int) -> np.ndarray:
    return np.trunc(_series(scene, name, n)).astype(np.int64)


def _frames_skip_series(spec: tuple, steps: np.ndarray, scene: Scene) -> np.ndarray:
    """skip_steps of frames after a chain's first: DD's "60%" of that frame's steps (floor),
    a keyframe schedule, or a number."""
    kind, value = spec
    if kind == "percent":
        return np.floor(steps * value / 100.0 + 1e-9).astype(np.int64)
    if kind == "keyframes":
        return np.trunc(value.values(len(steps), fps=scene["fps"], interpolation=scene["interpolation"])).astype(np.int64)
    return np.full(len(steps), int(value), dtype=np.int64)


def intermediate_steps(display_rate: int, saves: int | tuple[int, ...], steps: int, skip: int) -> tuple[int, ...]:
    """Sampler step indices (0-based over the steps run) whose previews are kept.

    As DD's sampling loop (its j counts the steps run, from 0): display_rate N: every N-th
    step and the last; intermediate_saves N: every (steps run - 1) // (N + 1)-th step after
    the first (DD's steps_per_checkpoint: N saves, sometimes one more); a list: those j.
    """
    run = max(steps - skip, 0)
    chosen: set[int] = set()
    if display_rate > 0 and run:
        chosen.update(range(0, run, display_rate))
        chosen.add(run - 1)
    if isinstance(saves, tuple):
        chosen.update(j for j in saves if 0 <= j < run)
    elif saves > 0 and (every := (run - 1) // (saves + 1)) > 0:
        chosen.update(range(every, run, every))
    return tuple(sorted(chosen))


def _video_overrides(scene: Scene) -> dict[str, str]:
    """In Video Input mode DD's video_init_* settings replace the plain ones."""
    if scene["animation_mode"] != "Video Input":
        return {}
    names = ("steps", "clip_guidance_scale", "tv_scale", "range_scale", "sat_scale",
             "cutn_batches", "skip_steps", "frames_scale", "frames_skip_steps")
    return {name: f"video_init_{name}" for name in names}


def frame_count(scene: Scene, video_frames: int | None = None) -> int:
    """Images (stills) or frames (animations) the scene renders."""
    mode = scene["animation_mode"]
    if mode == "None":
        return scene["n_batches"]
    if mode == "Video Input" and video_frames is not None:
        return min(scene["max_frames"], math.ceil(video_frames / scene["extract_nth_frame"]))
    return scene["max_frames"]


# --------------------------------------------------------------------------- resolve


def resolve(scene: Scene, video_frames: int | None = None, input_digests: dict[str, str] | None = None) -> Plan:
    """Scene -> Plan (pure: same scene, same plan). ``video_frames``: the frames the input
    video gave; ``input_digests``: input file (as the scene names it) -> its contents' hash."""
    mode = scene["animation_mode"]
    count = frame_count(scene, video_frames)
    series_len = count if mode != "None" else 1
    override = _video_overrides(scene)

    def source(name: str) -> str:
        return override.get(name, name)

    floats = {name: _series(scene, source(name), series_len) for name in (
        "clip_guidance_scale", "tv_scale", "range_scale", "sat_scale", "init_scale",
        "eta", "clamp_max", "rand_mag", "frames_scale")}
    ints = {name: _int_series(scene, source(name), series_len) for name in ("steps", "skip_steps", "cutn_batches")}
    motion = {name: _series(scene, name, series_len) for name in (
        "angle", "zoom", "translation_x", "translation_y", "translation_z",
        "rotation_3d_x", "rotation_3d_y", "rotation_3d_z")}
    frames_skip = _frames_skip_series(scene[source("frames_skip_steps")], ints["steps"], scene)

    models = ModelSetSpec(
        diffusion_model=scene["diffusion_model"],
        use_secondary_model=scene["use_secondary_model"],
        clip_models=tuple(scene["clip_models"]),
        custom_model_path=scene["custom_path"],
        custom_model_settings=tuple(sorted((k, v) for k, v in scene["custom_model_settings"].items())),
        use_checkpoint=scene["use_checkpoint"],
        compile_unet=scene["compile_unet"] is True,
    )
    cuts = CutSchedule(
        overview=tuple(int(round(v)) for v in scene["cut_overview"]),
        innercut=tuple(int(round(v)) for v in scene["cut_innercut"]),
        ic_pow=tuple(scene["cut_ic_pow"]),
        icgray_p=tuple(scene["cut_icgray_p"]),
    )
    width, height = scene["width_height"]
    shot_starts = (0, *scene["cuts"]) if mode != "None" else (0,)
    seed = scene["seed"]
    turbo = scene["turbo_mode"] and mode in ("2D", "3D")
    augmentations = augmentations_for_mode(mode)  # DD's cut augmentations differ by mode
    text_prompts = scene["text_prompts"]
    if scene["prompt_crossfade"]:
        text_prompts = dataclasses.replace(text_prompts, crossfade=scene["prompt_crossfade"])

    def build(index: int, shot: int, first_of_shot: bool) -> FrameSpec:
        """The spec of image/frame `index`, as the first frame of its chain or not."""
        k = index if mode != "None" else 0
        steps = int(ints["steps"][k])
        if mode == "Video Input":
            # as DD: video_init_frames_scale on every frame, frame 0 too; video_init_skip_steps on
            # frame 0 only with flow warp (without it, frame 0 skips as the others do)
            init_scale = float(floats["frames_scale"][k])
            skips_as_first = first_of_shot and scene["video_init_flow_warp"]
        else:
            init_scale = float(floats["init_scale"][k] if first_of_shot else floats["frames_scale"][k])
            skips_as_first = first_of_shot
        skip_setting = source("skip_steps" if skips_as_first else "frames_skip_steps")
        skip = int(ints["skip_steps"][k] if skips_as_first else frames_skip[k])
        if mode == "Video Input":
            init = InitSource("video", video_frame=index * scene["extract_nth_frame"],
                              flow_from_previous=not first_of_shot and scene["video_init_flow_warp"])
        elif not first_of_shot:
            init = InitSource("previous")
        elif scene["init_image"]:
            init = InitSource("image", path=scene["init_image"])
        else:
            init = InitSource("noise")
        if not 0 <= skip < steps:
            raise SceneInvalid([Problem(scene.source, None, skip_setting,
                                        f"frame {index} would skip {skip} of its {steps} steps; skip fewer than "
                                        "steps (DD stops: you can't skip more steps than your total steps)")])
        if mode == "Video Input":  # DD adds 1 to the seed before every video frame, frame 0 too
            frame_seed = seed if scene["video_init_seed_continuity"] else (seed + index + 1) % SEED_MODULUS
        else:
            frame_seed = (seed + index) % SEED_MODULUS
        render = RenderSpec(
            width=width,
            height=height,
            seed=frame_seed,
            text_prompts=text_prompts.at(k),
            image_prompts=scene["image_prompts"].at(k),
            guidance=GuidanceSettings(
                clip_guidance_scale=float(floats["clip_guidance_scale"][k]),
                tv_scale=float(floats["tv_scale"][k]),
                range_scale=float(floats["range_scale"][k]),
                sat_scale=float(floats["sat_scale"][k]),
                init_scale=init_scale,
                cutn_batches=int(ints["cutn_batches"][k]),
                skip_augs=scene["skip_augs"],
                clamp_grad=scene["clamp_grad"],
                clamp_max=float(floats["clamp_max"][k]),
                clip_denoised=scene["clip_denoised"],
                fuzzy_prompt=scene["fuzzy_prompt"],
                rand_mag=float(floats["rand_mag"][k]),
                augmentations=augmentations,
            ),
            sampler=SamplerSettings(
                mode=scene["diffusion_sampling_mode"],
                steps=steps,
                skip_steps=skip,
                eta=float(floats["eta"][k]),
                perlin_init=scene["perlin_init"],
                perlin_mode=scene["perlin_mode"],
                use_horizontal_symmetry=scene["use_horizontal_symmetry"],
                use_vertical_symmetry=scene["use_vertical_symmetry"],
                transformation_percent=tuple(scene["transformation_percent"]),
            ),
            cuts=cuts,
            models=models,
            intermediate_steps=intermediate_steps(scene["display_rate"], scene["intermediate_saves"], steps, skip),
        )
        group = ()
        per_call = scene["images_per_call"]
        if mode == "None" and per_call > 1:
            first = index // per_call * per_call
            group = tuple(range(first, min(first + per_call, count)))
        diffuse = True
        if turbo and not first_of_shot:
            diffuse = is_diffused_frame(index, scene["turbo_steps"], scene["turbo_preroll"])
        return FrameSpec(
            index=index,
            kind="frame" if mode != "None" else "image",
            render=render,
            motion=Motion(**{name: float(values[k]) for name, values in motion.items()}) if mode != "None" else Motion(),
            init=init,
            shot=shot,
            previous=None if first_of_shot else index - 1,
            diffuse=diffuse,
            group=group,
        )

    frames = []
    shot = 0
    for index in range(count):
        if mode != "None" and shot + 1 < len(shot_starts) and index == shot_starts[shot + 1]:
            shot += 1
        frames.append(build(index, shot, mode == "None" or index == shot_starts[shot]))
    if mode != "None" and scene["parallel_segments"] > 1:
        frames = split_into_segments(frames, scene["parallel_segments"], scene["segment_overlap"], build)
    if scene["compile_unet"] == "auto" and compile_pays_off(frames):
        compiled = dataclasses.replace(models, compile_unet=True)
        frames = [dataclasses.replace(f, render=dataclasses.replace(f.render, models=compiled)) for f in frames]
    return Plan(scene["name"], seed, _animation_settings(scene), tuple(frames),
                tuple(sorted((input_digests or {}).items())))


AUTO_COMPILE_MIN_STEPS = 4000
"""`compile_unet: auto` compiles from this many sampler steps on. H200, DD defaults
(bench/results/2026-11-26-h200*.json): with the secondary model 0.217 s/step eager (split
group-norm statistics), 0.160 compiled after about 95 s of compilation; on the full-UNet
path (forward and backward compiled) 0.293 against 0.208 s/step after 119 s. One actor
breaks even after 1400-1700 steps (about 6-7 images of 250 steps; 840-920 before the eager
UNet got the split statistics); 4000 leaves room for two or three actors each compiling once."""


def sampler_steps(frames) -> int:
    """Sampler steps the frames run (turbo in-betweens and segment seams run none)."""
    return sum(f.render.sampler.steps - f.render.sampler.skip_steps for f in frames if f.diffuse and not f.sources)


def compile_pays_off(frames) -> bool:
    """`compile_unet: auto`: a scene long enough to repay each actor's compilation."""
    return sampler_steps(frames) >= AUTO_COMPILE_MIN_STEPS


def segment_bounds(start: int, stop: int, segments: int) -> list[int]:
    """Where each of `segments` equal parts of frames start..stop-1 begins (and stop)."""
    length = stop - start
    return [start + (length * k) // segments for k in range(segments)] + [stop]


def split_into_segments(frames: list[FrameSpec], segments: int, overlap: int, build) -> list[FrameSpec]:
    """Segment mode: each shot becomes `segments` chains rendered in parallel.

    Segment k (k >= 1) starts `overlap` frames before its first frame b_k, as a fresh
    chain (noise or init image). In that overlap both neighbours render the same frames
    as extra "segment" frames (indices after the real ones, files in segments/); the real
    frame there is composed by the driver: the previous segment's render cross-faded into
    the new one's (weight rising to the new segment). Frame b_k continues the new chain.
    """
    out = list(frames)
    chains = {}
    for frame in frames:
        chains.setdefault(frame.shot, []).append(frame.index)
    next_index = len(frames)
    next_chain = max(chains) + 1
    for shot, indices in sorted(chains.items()):
        bounds = segment_bounds(indices[0], indices[-1] + 1, segments)
        for k in range(1, segments):
            start = bounds[k]
            chain_id = next_chain
            next_chain += 1
            overlap_frames = list(range(max(start - overlap, bounds[k - 1] + 1), start))
            tail_previous = overlap_frames[0] - 1 if overlap_frames else None
            lead_previous = None
            for position, i in enumerate(overlap_frames):
                tail = dataclasses.replace(out[i], index=next_index, kind="segment", previous=tail_previous,
                                           of_frame=i)
                lead_spec = build(i, chain_id, lead_previous is None)
                lead = dataclasses.replace(lead_spec, index=next_index + 1, kind="segment",
                                           previous=lead_previous, of_frame=i)
                weight = (position + 1) / (len(overlap_frames) + 1)
                out[i] = dataclasses.replace(out[i], previous=None, sources=(tail.index, lead.index), blend=weight)
                out.extend([tail, lead])
                tail_previous, lead_previous = tail.index, lead.index
                next_index += 2
            for i in range(start, bounds[k + 1]):
                out[i] = dataclasses.replace(out[i], shot=chain_id)
            if lead_previous is None:  # no overlap: a hard cut at the segment start
                out[start] = build(start, chain_id, True)
            else:
                out[start] = dataclasses.replace(out[start], previous=lead_previous)
    return out


def _animation_settings(scene: Scene) -> AnimationSettings:
    names = {f.name for f in dataclasses.fields(AnimationSettings)} - {"mode"}
    return AnimationSettings(mode=scene["animation_mode"], **{name: scene[name] for name in names})


# --------------------------------------------------------------------------- output


def _plain(value):
    """Dataclasses and tuples -> JSON-friendly values (cut schedules as DD strings)."""
    if isinstance(value, CutSchedule):
        return dict(_plain_cut_schedule(value))
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return value
    return value


@functools.lru_cache(maxsize=64)
def _plain_cut_schedule(schedule: CutSchedule) -> tuple[tuple[str, str], ...]:
    """A cut schedule as DD strings (every frame of a scene has the same one: formatted once)."""
    return tuple((f.name, format_cut_schedule(getattr(schedule, f.name))) for f in dataclasses.fields(schedule))


def _canonical_json(value) -> str:
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), default=str)


def frame_record(plan: Plan, frame: FrameSpec) -> dict:
    """A frame as a JSON-friendly dict (for plan.json and `farm plan --json`); its
    "settings_hash" is the plan's frame hash (what a resume compares)."""
    record = _plain(frame)
    record["settings_hash"] = plan.frame_hashes[frame.index]
    return record


def plan_record(plan: Plan, frames: Iterable[FrameSpec] | None = None) -> dict:
    return {
        "name": plan.name,
        "seed": plan.seed,
        "animation": _plain(plan.animation),
        "frames": [frame_record(plan, f) for f in (plan.frames if frames is None else frames)],
    }
