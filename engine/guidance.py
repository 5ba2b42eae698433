"""The conditioning gradient (DD's ``cond_fn``) as a small object.

For the guided image ``x_in`` (the predicted clean image blended with x_t as DD does:
``pred * sqrt(1 - alpha_bar) + x_t * (1 - sqrt(1 - alpha_bar))``):
- per CLIP model, all cuts of all cut batches are encoded in one call, and the loss is
  the mean over cuts of the weighted sum over prompts of the spherical distance,
  times ``clip_guidance_scale`` (== DD's per-batch gradients divided by cutn_batches);
- tv loss of x_in, saturation loss of x_in, and the LPIPS distance of x_in to the init
  image times ``init_scale`` (DD's range loss contributes nothing: see RANGE_LOSS_IS_INERT);
- the gradient of all that w.r.t. x_t (one backward through the UNet or the secondary
  model), negated, zeroed if it holds NaN, and RMS-clamped to ``clamp_max``.
Several images (a still run's images rendered in lockstep) are guided at once: each has
its own random streams (crop geometry, augmentations) and prompt embeddings, the cuts of
all images go through one image-encoder call per CLIP model, and every loss term is a sum
over images of that image's loss, so each image's gradient is the one it would get alone.
Nothing here reads a tensor back to the host.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.profiler import record_function

from engine.cutouts import augment, make_cutouts
from engine.losses import clamp_gradient, saturation_loss, spherical_distance_loss, tv_loss
from engine.models import LoadedClip
from engine.spec import CutSchedule, GuidanceSettings


RANGE_LOSS_IS_INERT = True
"""DD v5.7 takes d(range_loss(pred))/d(x_in) == 0; we reproduce DD (range_scale inert)."""


@dataclass
class ClipTarget:
    """One CLIP model's prompt embeddings [B, P, D] and normalised weights [B, P], for
    each of the B images guided together."""

    clip: LoadedClip
    embeddings: torch.Tensor
    weights: torch.Tensor


@dataclass(frozen=True)
class ImageRandomness:
    """One image's random streams: crop geometry (host) and per-cut values (device)."""

    host_rng: random.Random
    generator: torch.Generator


@dataclass
class EngineCounters:
    """Work done by the last render (read by benchmarks and tests)."""

    steps: int = 0
    unet_forwards: int = 0
    secondary_forwards: int = 0
    clip_image_calls: dict[str, int] = field(default_factory=dict)
    clip_text_calls: dict[str, int] = field(default_factory=dict)
    cuts_encoded: dict[str, int] = field(default_factory=dict)
    setup_seconds: float = 0.0
    sampling_seconds: float = 0.0

    @property
    def seconds_per_step(self) -> float:
        return self.sampling_seconds / self.steps if self.steps else 0.0


class Guidance:
    """Computes the guidance gradient for one sampler step of B images (``randomness``:
    one ``ImageRandomness`` per image)."""

    def __init__(
        self,
        settings: GuidanceSettings,
        cut_schedule: CutSchedule,
        targets: list[ClipTarget],
        counters: EngineCounters,
        randomness: list[ImageRandomness],
        init_image: torch.Tensor | None = None,
        perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        max_cuts_per_clip_call: int | None = None,
    ) -> None:
        self.settings = settings
        self.cut_schedule = cut_schedule
        self.targets = targets
        self.counters = counters
        self.randomness = randomness
        self.init_image = init_image
        self.perceptual = perceptual if (init_image is not None and settings.init_scale) else None
        self.max_cuts_per_clip_call = max_cuts_per_clip_call

    def _clip_gradient(self, x_in: torch.Tensor, slot: int) -> torch.Tensor | None:
        s = self.settings
        overview, innercut, ic_pow, icgray_p = self.cut_schedule.at(slot)
        if overview + innercut <= 0 or not self.targets or s.clip_guidance_scale == 0:
            return None
        total: torch.Tensor | None = None
        for target in self.targets:
            clip = target.clip
            image01 = x_in.add(1).div(2)
            per_image = []
            for b, random_streams in enumerate(self.randomness):
                with record_function("cutouts"):
                    cuts = make_cutouts(image01[b : b + 1], clip.input_size, overview, innercut, ic_pow, icgray_p,
                                        s.cutn_batches, random_streams.host_rng)
                if not s.skip_augs:
                    with record_function("augment"):
                        cuts = augment(cuts, random_streams.generator, s.augmentations)
                per_image.append(cuts)
            cuts_per_image = per_image[0].shape[0]
            cuts = torch.cat(per_image) if len(per_image) > 1 else per_image[0]
            del per_image
            # each cut's prompts: its image's
            cut_targets = target.embeddings.repeat_interleave(cuts_per_image, dim=0)
            cut_weights = target.weights.repeat_interleave(cuts_per_image, dim=0)
            n_cuts = cuts.shape[0]
            chunk = self.max_cuts_per_clip_call or n_cuts
            starts = list(range(0, n_cuts, chunk))
            for k, start in enumerate(starts):
                part = cuts[start : start + chunk]
                with record_function(f"clip_image:{clip.name}"):
                    embeddings = clip.encode_image(part)
                self.counters.clip_image_calls[clip.name] += 1
                self.counters.cuts_encoded[clip.name] += part.shape[0]
                dists = spherical_distance_loss(embeddings[:, None, :], cut_targets[start : start + chunk])
                loss = (dists * cut_weights[start : start + chunk]).sum() * (s.clip_guidance_scale / cuts_per_image)
                last = k == len(starts) - 1
                with record_function(f"clip_backward:{clip.name}"):
                    grad = torch.autograd.grad(loss, x_in, retain_graph=not last)[0]
                total = grad if total is None else total + grad
            del cuts
        return total

    def __call__(self, x: torch.Tensor, x_in: torch.Tensor, slot: int) -> torch.Tensor:
        """d(-loss)/dx for x (requires grad) -> x_in (the guided image); ``slot`` indexes
        the cut schedules."""
        s = self.settings
        x_in_grad = self._clip_gradient(x_in, slot)
        other = None
        if s.tv_scale:
            other = tv_loss(x_in).sum() * s.tv_scale
        # DD's range loss is measured on the prediction, which is upstream of x_in, so
        # its gradient w.r.t. x_in (all DD takes) is zero: range_scale has no effect in
        # DD. Kept that way for parity (see ``range_loss`` and RANGE_LOSS_IS_INERT).
        if s.sat_scale:
            term = saturation_loss(x_in).sum() * s.sat_scale
            other = term if other is None else other + term
        if self.perceptual is not None:
            init = self.init_image.to(x_in.dtype)
            term = self.perceptual(x_in, init).sum() * s.init_scale
            other = term if other is None else other + term
        if other is not None:
            grad = torch.autograd.grad(other, x_in, retain_graph=True)[0]
            x_in_grad = grad if x_in_grad is None else x_in_grad + grad
        if x_in_grad is None:
            return torch.zeros_like(x)
        has_nan = torch.isnan(x_in_grad).flatten(1).any(1)[:, None, None, None]  # per image
        x_in_grad = torch.where(has_nan, torch.zeros_like(x_in_grad), x_in_grad)
        with record_function("backward_to_x"):
            grad = -torch.autograd.grad(x_in, x, x_in_grad)[0]
        if s.clamp_grad:
            grad = clamp_gradient(grad, s.clamp_max)
        return grad
