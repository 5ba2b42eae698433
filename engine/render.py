"""The CLIP-guided diffusion renderer: one ``RenderSpec`` in, one uint8 image out.

The sampler loop is ours (guided-diffusion supplies the UNet and the noise schedule),
so that each step costs exactly one UNet forward, one secondary-model forward when
that model is used, and one image-encoder call per CLIP model, without host-device
syncs (every per-step coefficient is a python float; all randomness comes from a
``torch.Generator`` on the device and a host ``random.Random`` for crop geometry).
Its update rules are guided-diffusion's (``ddim_sample`` with ``condition_score``,
and ``plms_sample`` of order 2) and are tested against the library.

DD semantics kept: ``ddim{steps}`` respacing of ``(1000 // steps) * steps`` diffusion
steps; skip_steps re-noises the init (or a zero image) to the first step run; the
guided image blends prediction and x_t; cut schedules indexed by ``1000 - t``; the
returned image is the last step's (unconditioned) prediction of x0, quantised by
truncation; symmetry mirrors x_t at ``transformation_percent`` of the run (also for
PLMS, which DD lacks).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.profiler import record_function

from engine.cutouts import image_prompt_cutouts
from engine.errors import (
    EngineError,
    EngineOutOfMemory,
    InvalidSpec,
    MissingImagePrompt,
    ModelMismatch,
    RenderCancelled,
)
from engine.guidance import ClipTarget, EngineCounters, Guidance, ImageRandomness
from engine.losses import normalised_weights
from engine.models import DiffusionSchedule, ModelSet
from engine.perlin import PERLIN_MODES, perlin_init_image
from engine.secondary import alpha_sigma_to_t_float
from engine.spec import CUT_SLOTS, RenderSpec
from engine.syncs import sync_check
from engine.unet import unet_forward

__all__ = ["Renderer", "RenderCancelled", "EngineCounters", "validate_spec", "to_uint8", "check_renderable_together",
           "image_prompt_size"]

IMAGE_PROMPT_CUTS = 16
"""Cuts per image prompt (DD's ``cutn`` for image prompts); each gets weight/16."""
FUZZY_COPIES = 25
"""Noisy copies added per text prompt with fuzzy_prompt (as DD)."""

ImageLike = Any
"""numpy HxWx3 (uint8, or float32 on the 0-255 scale), PIL.Image, or a float tensor
[3,H,W] / [1,3,H,W] in [0, 1]."""


def validate_spec(spec: RenderSpec) -> None:
    """Raise InvalidSpec (one line) for values the engine cannot render."""
    if spec.width <= 0 or spec.height <= 0 or spec.width % 64 or spec.height % 64:
        raise InvalidSpec(
            f"width_height {spec.width}x{spec.height} must be positive multiples of 64 "
            f"(e.g. {max(64, spec.width // 64 * 64)}x{max(64, spec.height // 64 * 64)})"
        )
    sampler = spec.sampler
    if sampler.mode not in ("ddim", "plms"):
        raise InvalidSpec(f"diffusion_sampling_mode must be 'ddim' or 'plms', got {sampler.mode!r}")
    if sampler.steps < 2:  # guided-diffusion's "ddim1" respacing of 1000 steps does not exist
        raise InvalidSpec(f"steps must be at least 2, got {sampler.steps}")
    if not 0 <= sampler.skip_steps < sampler.steps:
        raise InvalidSpec(f"skip_steps must be in 0..steps-1 ({sampler.steps - 1}), got {sampler.skip_steps}")
    if sampler.mode == "plms" and sampler.steps - sampler.skip_steps < 2:
        raise InvalidSpec("plms needs at least 2 steps to run (steps - skip_steps >= 2)")
    if sampler.perlin_mode not in PERLIN_MODES:
        raise InvalidSpec(f"perlin_mode must be one of {', '.join(PERLIN_MODES)}, got {sampler.perlin_mode!r}")
    if not 0 <= sampler.eta:
        raise InvalidSpec(f"eta must be >= 0, got {sampler.eta}")
    for p in sampler.transformation_percent:
        if not 0 <= p <= 1:
            raise InvalidSpec(f"transformation_percent values must be in [0, 1], got {p}")
    g = spec.guidance
    if g.cutn_batches < 1:
        raise InvalidSpec(f"cutn_batches must be at least 1, got {g.cutn_batches}")
    if g.clamp_grad and g.clamp_max <= 0:
        raise InvalidSpec(f"clamp_max must be > 0, got {g.clamp_max}")
    for name in ("overview", "innercut", "ic_pow", "icgray_p"):
        values = getattr(spec.cuts, name)
        if len(values) != CUT_SLOTS:
            raise InvalidSpec(f"cut_{name} must have exactly {CUT_SLOTS} entries, got {len(values)}")
    if min(spec.cuts.overview) < 0 or min(spec.cuts.innercut) < 0:
        raise InvalidSpec("cut_overview and cut_innercut must not be negative")
    for prompt in (*spec.text_prompts, *spec.image_prompts):
        if not np.isfinite(prompt.weight):
            raise InvalidSpec(f"prompt {prompt.text!r} has a non-finite weight {prompt.weight}")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[1,3,H,W] in [-1, 1] -> HxWx3 uint8 (truncating, as DD's PIL conversion)."""
    pixels = image[0].float().add(1).div(2).clamp(0, 1).mul(255).to(torch.uint8)
    return pixels.permute(1, 2, 0).contiguous().cpu().numpy()


def image_to_tensor(image: ImageLike, width: int | None, height: int | None, what: str) -> torch.Tensor:
    """An image as a [1,3,H,W] float tensor in [0, 1] on the CPU, resized (Lanczos) when
    width/height are given and differ."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        tensor = image.detach().float().cpu()
        if tensor.dim() == 3:
            tensor = tensor[None]
        if tensor.dim() != 4 or tensor.shape[:2] != (1, 3):
            raise EngineError(f"{what} tensor must be [3,H,W] or [1,3,H,W], got {tuple(image.shape)}")
        if width is not None and tuple(tensor.shape[-2:]) != (height, width):
            array = (tensor[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            image = Image.fromarray(array)
        else:
            return tensor.clamp(0, 1)
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise EngineError(f"{what} array must be HxWx3, got shape {array.shape}")
        if array.dtype in (np.float32, np.float64):  # the animation package's 0-255 floats
            rgb = np.clip(array[..., :3], 0, 255).astype(np.float32)
            if width is None or rgb.shape[:2] == (height, width):
                return torch.from_numpy(rgb / 255.0).permute(2, 0, 1)[None].contiguous()
            array = np.round(rgb).astype(np.uint8)
        if array.dtype != np.uint8:
            raise EngineError(f"{what} array must be uint8 or float (0-255), got {array.dtype}")
        image = Image.fromarray(np.ascontiguousarray(array[..., :3]))
    if not isinstance(image, Image.Image):
        raise EngineError(f"{what} must be a numpy uint8 HxWx3 array, a PIL image or a tensor")
    image = image.convert("RGB")
    if width is not None and image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None]


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.numpy().tobytes()).hexdigest()[:32]


def check_renderable_together(specs: Sequence[RenderSpec]) -> None:
    """Images rendered in lockstep share every setting but the seed (InvalidSpec otherwise)."""
    if not specs:
        raise InvalidSpec("no images to render")
    first = dataclasses.replace(specs[0], seed=0)
    for spec in specs[1:]:
        if dataclasses.replace(spec, seed=0) != first:
            raise InvalidSpec("images rendered together must differ only in their seed")


def stack_targets(per_image: Sequence[Sequence[ClipTarget]]) -> list[ClipTarget]:
    """Per-image prompt targets ([P, D] embeddings, [P] weights per CLIP model) as one
    ClipTarget per model with a leading image dimension."""
    return [
        ClipTarget(models[0].clip, torch.stack([t.embeddings for t in models]), torch.stack([t.weights for t in models]))
        for models in zip(*per_image)
    ]


def per_image_noise(shape: tuple[int, ...], generators: Sequence[torch.Generator], device) -> torch.Tensor:
    """Gaussian noise [len(generators), *shape[1:]], each image's from its own generator
    (so an image's noise does not depend on the images rendered with it)."""
    one = (1,) + tuple(shape[1:])
    return torch.cat([torch.randn(one, generator=gen, device=device) for gen in generators])


def symmetrize(x: torch.Tensor, horizontal: bool, vertical: bool) -> torch.Tensor:
    """Mirror the left half onto the right (horizontal) and/or the top onto the bottom."""
    if horizontal:
        w = x.shape[-1]
        x = torch.cat([x[..., : w // 2], x[..., : w // 2].flip(-1)], dim=-1)
    if vertical:
        h = x.shape[-2]
        x = torch.cat([x[..., : h // 2, :], x[..., : h // 2, :].flip(-2)], dim=-2)
    return x


def symmetry_step_indices(steps_run: int, percents: tuple[float, ...]) -> set[int]:
    """Respaced timestep indices at which x_t is mirrored (guided-diffusion's rule)."""
    return {int(steps_run * (1 - p)) for p in percents}


def out_of_memory_message(spec: RenderSpec, images: int = 1) -> str:
    """One line naming the settings that set the memory use of a render (of ``images``
    images rendered together)."""
    g, m = spec.guidance, spec.models
    advice = "lower width_height or cutn_batches, or use fewer/smaller CLIP models"
    if images > 1:
        advice = "lower images_per_call, " + advice
    if not m.use_secondary_model:
        advice += ", or set use_secondary_model true"
        if not m.use_checkpoint:  # the full-UNet path keeps the UNet's activations for its backward
            advice += " or use_checkpoint true"
    what = f"{images} images of {spec.width}x{spec.height} together" if images > 1 else f"{spec.width}x{spec.height}"
    return (
        f"out of GPU memory rendering {what} with cutn_batches={g.cutn_batches}, "
        f"{len(m.clip_models)} CLIP model(s) ({', '.join(m.clip_models)}), "
        f"use_secondary_model={m.use_secondary_model}: {advice}"
    )


IMAGE_PROMPT_LONG_SIDE = 4
"""An image prompt's long side is at most this many times the frame's long side."""


def image_prompt_size(width: int, height: int, frame_width: int, frame_height: int) -> tuple[int, int] | None:
    """(width, height) to resize an image prompt to, or None to keep it. DD's rule: the short
    side becomes min(frame width, frame height, its own short side), keeping the aspect; then
    the long side is capped at IMAGE_PROMPT_LONG_SIDE x the frame's long side (a thin image
    would otherwise make huge padded tensors in ``image_prompt_cutouts``); sides >= 1 px."""
    short, long = min(width, height), max(width, height)
    scale = min(frame_width, frame_height, short) / short
    cap = IMAGE_PROMPT_LONG_SIDE * max(frame_width, frame_height)
    if long * scale > cap:
        scale = cap / long
    if scale == 1:
        return None
    return max(1, round(width * scale)), max(1, round(height * scale))


class Renderer:
    """Renders RenderSpecs with one loaded ``ModelSet``.

    ``max_cuts_per_clip_call`` splits a CLIP model's cuts into several image-encoder
    calls (a memory budget for very large cut counts); None = one call per model per step.
    ``check_syncs`` makes a host-device synchronisation inside a sampler step raise
    (``engine.syncs.sync_check``: torch's sync debug mode on CUDA; on the CPU the host reads
    and uploads that would sync on a GPU), for benchmarks and tests.
    """

    def __init__(
        self, model_set: ModelSet, *, max_cuts_per_clip_call: int | None = None, check_syncs: bool = False
    ) -> None:
        if max_cuts_per_clip_call is not None and max_cuts_per_clip_call < 1:
            raise EngineError("max_cuts_per_clip_call must be >= 1 or None")
        self.models = model_set
        self.max_cuts_per_clip_call = max_cuts_per_clip_call
        self.check_syncs = check_syncs
        self.counters = EngineCounters()

    # -- public ------------------------------------------------------------------------
    def render(
        self,
        spec: RenderSpec,
        init: ImageLike | None = None,
        image_prompt_images: Mapping[str, ImageLike] | None = None,
        on_intermediate: Callable[[int, np.ndarray], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Render ``spec``; returns an HxWx3 uint8 array.

        ``init``: init image (resized to the spec size if needed); ``image_prompt_images``:
        pixels of each image prompt keyed by its ``WeightedPrompt.text``;
        ``on_intermediate(step_index, image)`` at ``spec.intermediate_steps``;
        ``should_stop()`` polled before each step (True raises RenderCancelled).
        """
        callback = None if on_intermediate is None else (lambda _image, step, pixels: on_intermediate(step, pixels))
        return self.render_images([spec], [init], image_prompt_images, callback, should_stop)[0]

    def render_images(
        self,
        specs: Sequence[RenderSpec],
        inits: Sequence[ImageLike | None] | None = None,
        image_prompt_images: Mapping[str, ImageLike] | None = None,
        on_intermediate: Callable[[int, int, np.ndarray], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[np.ndarray]:
        """Render several images in lockstep: per step one UNet call and one image-encoder
        call per CLIP model for all of them (a GPU runs the UNet faster per image).

        The specs must differ only in their seed (a still run's images). Each image keeps
        its own random streams and losses, so it is the picture ``render`` gives for its
        spec, up to the rounding of kernels that ran on a batch. ``inits``: one init image
        (or None) per image, all given or none; ``on_intermediate(image_index, step_index,
        image)``; otherwise as ``render``.
        """
        check_renderable_together(specs)
        spec = specs[0]
        validate_spec(spec)
        if spec.models != self.models.spec:
            raise ModelMismatch(
                f"spec needs models {spec.models.key!r} but this renderer holds {self.models.spec.key!r}"
            )
        inits = list(inits) if inits is not None else [None] * len(specs)
        if len(inits) != len(specs):
            raise EngineError(f"{len(specs)} images but {len(inits)} init images")
        if any(i is None for i in inits) and not all(i is None for i in inits):
            raise InvalidSpec("images rendered together need an init image each, or none")
        names = list(self.models.clips)
        self.counters = EngineCounters(
            clip_image_calls={n: 0 for n in names},
            clip_text_calls={n: 0 for n in names},
            cuts_encoded={n: 0 for n in names},
        )
        try:
            with torch.no_grad():
                return self._render(list(specs), inits, image_prompt_images or {}, on_intermediate, should_stop)
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise EngineOutOfMemory(out_of_memory_message(spec, len(specs))) from None

    # -- setup -------------------------------------------------------------------------
    def _targets(
        self, spec: RenderSpec, image_prompt_images: Mapping[str, ImageLike], generator: torch.Generator
    ) -> list[ClipTarget]:
        """Prompt embeddings and normalised weights per CLIP model (embeddings cached)."""
        g = spec.guidance
        if not spec.text_prompts and not spec.image_prompts:
            return []
        prompt_pixels: dict[str, torch.Tensor] = {}
        for prompt in spec.image_prompts:
            if prompt.text not in image_prompt_images:
                raise MissingImagePrompt(f"image prompt {prompt.text!r} has no pixels in image_prompt_images")
            if prompt.text not in prompt_pixels:
                prompt_pixels[prompt.text] = self._image_prompt_pixels(image_prompt_images[prompt.text], spec)
        device = self.models.device
        targets = []
        for clip in self.models.clips.values():
            embeddings: list[torch.Tensor] = []
            weights: list[float] = []
            texts = [p.text for p in spec.text_prompts]
            if texts:
                text_embeds = self._text_embeddings(clip, texts)
                for prompt, embed in zip(spec.text_prompts, text_embeds):
                    if not g.fuzzy_prompt:
                        embeddings.append(embed[None])
                        weights.append(prompt.weight)
                        continue
                    for _ in range(FUZZY_COPIES):  # as DD: the noisy copies stand in for the prompt
                        noise = torch.randn(embed.shape, generator=generator, device=device)
                        embeddings.append((embed + noise * g.rand_mag).clamp(0, 1)[None])
                        weights.append(prompt.weight)
            for prompt in spec.image_prompts:
                embeds = self._image_prompt_embeddings(clip, prompt.text, prompt_pixels[prompt.text], g.skip_augs)
                embeddings.append(embeds)
                weights.extend([prompt.weight / embeds.shape[0]] * embeds.shape[0])
            targets.append(
                ClipTarget(
                    clip=clip,
                    embeddings=torch.cat(embeddings),
                    weights=torch.tensor(normalised_weights(weights), dtype=torch.float32).to(device),
                )
            )
        return targets

    def _text_embeddings(self, clip, texts: list[str]) -> list[torch.Tensor]:
        cache = self.models.text_embedding_cache
        missing = [t for t in dict.fromkeys(texts) if (clip.name, t) not in cache]
        if missing:
            encoded = clip.encode_texts(missing)
            self.counters.clip_text_calls[clip.name] += 1
            for text, embed in zip(missing, encoded):
                cache[(clip.name, text)] = embed
        return [cache[(clip.name, t)] for t in texts]

    def _image_prompt_pixels(self, image: ImageLike, spec: RenderSpec) -> torch.Tensor:
        """The prompt image resized as ``image_prompt_size`` says (DD's rule, long side capped)."""
        from PIL import Image

        tensor = image_to_tensor(image, None, None, "image prompt")
        h, w = tensor.shape[-2:]
        size = image_prompt_size(w, h, spec.width, spec.height)
        if size is not None:
            array = (tensor[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            resized = Image.fromarray(array).resize(size, Image.LANCZOS)
            tensor = image_to_tensor(resized, None, None, "image prompt")
        return tensor

    def _image_prompt_embeddings(self, clip, key: str, pixels: torch.Tensor, skip_augs: bool) -> torch.Tensor:
        digest = _digest(pixels)
        cache_key = (clip.name, key, digest, skip_augs)
        cache = self.models.image_prompt_cache
        if cache_key not in cache:
            device = self.models.device
            seed = int(digest[:15], 16)
            rng = random.Random(seed)
            generator = torch.Generator(device=device).manual_seed(seed)
            cuts = image_prompt_cutouts(
                pixels.to(device), clip.input_size, IMAGE_PROMPT_CUTS, skip_augs, rng, generator
            )
            cache[cache_key] = clip.encode_image(cuts)
            self.counters.clip_image_calls[clip.name] += 1
        return cache[cache_key]

    def _init_image(self, spec: RenderSpec, init: ImageLike | None, generator: torch.Generator) -> torch.Tensor | None:
        device = self.models.device
        if spec.sampler.perlin_init:  # DD: perlin replaces the init image
            return perlin_init_image(spec.sampler.perlin_mode, spec.height, spec.width, generator, device)
        if init is None:
            return None
        return image_to_tensor(init, spec.width, spec.height, "init image").to(device).mul(2).sub(1)

    # -- sampling ----------------------------------------------------------------------
    def _unet(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The UNet's output for x at timesteps (the compiled forward when the set has one)."""
        compiled = self.models.compiled_unet_forward
        if compiled is not None:
            try:
                return compiled(x, timesteps)
            except torch.OutOfMemoryError:
                raise
            except Exception as error:  # the compiler failed: render on without it
                self.models.drop_compiled_unet(error)
        return unet_forward(self.models.unet, x, timesteps)

    def _guided_prediction(
        self, x: torch.Tensor, i: int, schedule: DiffusionSchedule, guidance: Guidance, spec: RenderSpec
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(eps_cond, pred_x0_cond, pred_x0) at respaced index i (condition_score)."""
        ms = self.models
        n = x.shape[0]
        sqrt_recip = schedule.sqrt_recip_alpha_bar(i)
        sqrt_recipm1 = schedule.sqrt_recipm1_alpha_bar(i)
        fac = schedule.sqrt_one_minus_alpha_bar(i)
        timesteps = torch.full((n,), schedule.model_times[i], dtype=torch.float32, device=x.device)
        unet_input = x.contiguous(memory_format=torch.channels_last) if ms.channels_last else x
        slot = schedule.cut_slots[i]
        if ms.secondary is not None:
            with record_function("unet_forward"):
                model_out = self._unet(unet_input, timesteps)
            self.counters.unet_forwards += 1
            pred_raw = sqrt_recip * x - sqrt_recipm1 * model_out[:, :3].float()
            with torch.enable_grad():
                xg = x.detach().requires_grad_()
                cosine_t = alpha_sigma_to_t_float(schedule.sqrt_alpha_bar(i), fac)
                t_sec = torch.full((n,), cosine_t, dtype=torch.float32, device=x.device)
                sec_in = xg.contiguous(memory_format=torch.channels_last) if ms.channels_last else xg
                with record_function("secondary_forward"):
                    sec_pred = ms.secondary(sec_in.to(ms.secondary_dtype), t_sec).pred.to(xg.dtype)
                self.counters.secondary_forwards += 1
                x_in = sec_pred * fac + xg * (1 - fac)
                grad = guidance(xg, x_in, slot)
        else:
            with torch.enable_grad():
                xg = x.detach().requires_grad_()
                unet_in = xg.contiguous(memory_format=torch.channels_last) if ms.channels_last else xg
                with record_function("unet_forward"):
                    model_out = self._unet(unet_in, timesteps)
                self.counters.unet_forwards += 1
                pred_grad = sqrt_recip * xg - sqrt_recipm1 * model_out[:, :3].float()
                x_in = pred_grad * fac + xg * (1 - fac)
                grad = guidance(xg, x_in, slot)
            pred_raw = pred_grad.detach()
        pred = pred_raw.clamp(-1, 1) if spec.guidance.clip_denoised else pred_raw
        eps = (sqrt_recip * x - pred) / sqrt_recipm1
        eps_cond = eps - fac * grad.float()
        pred_cond = sqrt_recip * x - sqrt_recipm1 * eps_cond
        return eps_cond, pred_cond, pred

    def _render(
        self,
        specs: list[RenderSpec],
        inits: list[ImageLike | None],
        image_prompt_images: Mapping[str, ImageLike],
        on_intermediate: Callable[[int, int, np.ndarray], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> list[np.ndarray]:
        started = time.perf_counter()
        ms = self.models
        device = ms.device
        spec = specs[0]
        randomness = []
        for image_spec in specs:
            seed = image_spec.seed % (2**63)
            randomness.append(ImageRandomness(random.Random(seed), torch.Generator(device=device).manual_seed(seed)))
        generators = [r.generator for r in randomness]
        sampler = spec.sampler
        schedule = ms.schedule(sampler.steps)
        targets = stack_targets(
            [self._targets(image_spec, image_prompt_images, gen) for image_spec, gen in zip(specs, generators)])
        init_images = [self._init_image(spec, init, gen) for init, gen in zip(inits, generators)]
        init_image = None if init_images[0] is None else torch.cat(init_images)
        perceptual = ms.lpips() if (init_image is not None and spec.guidance.init_scale) else None
        guidance = Guidance(
            spec.guidance,
            spec.cuts,
            targets,
            self.counters,
            randomness,
            init_image=init_image,
            perceptual=perceptual,
            max_cuts_per_clip_call=self.max_cuts_per_clip_call,
        )
        shape = (1, 3, spec.height, spec.width)
        indices = list(range(schedule.num_steps - sampler.skip_steps))[::-1]
        noise = per_image_noise(shape, generators, device)
        start = init_image
        if start is None and sampler.skip_steps:
            start = torch.zeros_like(noise)
        if start is not None:
            i0 = indices[0]
            x = schedule.sqrt_alpha_bar(i0) * start + schedule.sqrt_one_minus_alpha_bar(i0) * noise
        else:
            x = noise
        symmetric = sampler.use_horizontal_symmetry or sampler.use_vertical_symmetry
        mirror_at = symmetry_step_indices(len(indices), sampler.transformation_percent) if symmetric else set()
        wanted = set(spec.intermediate_steps) if on_intermediate is not None else set()
        self.counters.setup_seconds = time.perf_counter() - started
        loop_started = time.perf_counter()
        old_eps: list[torch.Tensor] = []
        pred = x
        for k, i in enumerate(indices):
            if should_stop is not None and should_stop():
                raise RenderCancelled(f"render cancelled before step {k} of {len(indices)}")
            with sync_check(self.check_syncs, device):
                if i in mirror_at:
                    x = symmetrize(x, sampler.use_horizontal_symmetry, sampler.use_vertical_symmetry)
                if sampler.mode == "ddim":
                    x, pred = self._ddim_step(x, i, schedule, guidance, spec, generators)
                else:
                    x, pred = self._plms_step(x, i, schedule, guidance, spec, old_eps)
            self.counters.steps += 1
            if k in wanted:
                for b in range(len(specs)):
                    on_intermediate(b, k, to_uint8(pred[b : b + 1]))
        images = [to_uint8(pred[b : b + 1]) for b in range(len(specs))]
        self.counters.sampling_seconds = time.perf_counter() - loop_started
        return images

    def _ddim_step(self, x, i, schedule, guidance, spec, generators: Sequence[torch.Generator]):
        """guided-diffusion's ddim_sample with condition_score; returns (x_prev, pred_x0).
        ``generators``: one per image, for eta's noise."""
        eps, pred_cond, pred = self._guided_prediction(x, i, schedule, guidance, spec)
        alpha_bar = schedule.alphas_cumprod[i]
        alpha_bar_prev = schedule.alphas_cumprod_prev[i]
        eta = spec.sampler.eta
        sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar)) ** 0.5 * (1 - alpha_bar / alpha_bar_prev) ** 0.5
        x_prev = pred_cond * alpha_bar_prev**0.5 + max(1 - alpha_bar_prev - sigma**2, 0.0) ** 0.5 * eps
        if i > 0 and sigma > 0:
            x_prev = x_prev + sigma * per_image_noise(x.shape, generators, x.device)
        return x_prev, pred

    def _plms_step(self, x, i, schedule, guidance, spec, old_eps: list[torch.Tensor]):
        """guided-diffusion's plms_sample (order 2, a pseudo improved Euler first step)."""
        eps, pred_cond, pred = self._guided_prediction(x, i, schedule, guidance, spec)
        alpha_bar_prev = schedule.alphas_cumprod_prev[i]
        sqrt_prev, sqrt_one_minus_prev = alpha_bar_prev**0.5, (1 - alpha_bar_prev) ** 0.5
        if not old_eps:
            mean = pred_cond * sqrt_prev + sqrt_one_minus_prev * eps
            eps_2, _, _ = self._guided_prediction(mean, i - 1, schedule, guidance, spec)
            eps_prime = (eps + eps_2) / 2
        else:
            eps_prime = (3 * eps - old_eps[-1]) / 2
        old_eps.append(eps)
        if len(old_eps) > 1:
            old_eps.pop(0)
        pred_prime = schedule.sqrt_recip_alpha_bar(i) * x - schedule.sqrt_recipm1_alpha_bar(i) * eps_prime
        x_prev = pred_prime * sqrt_prev + sqrt_one_minus_prev * eps_prime
        if i == 0:
            x_prev = pred_cond
        return x_prev, pred
