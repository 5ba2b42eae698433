"""What the engine needs to render one image: frozen, hashable settings.

The farm resolves a scene into one `RenderSpec` per image or frame; the engine renders
a `RenderSpec` (plus optional init pixels) and knows nothing of files, frames or Ray.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

CUT_SLOTS = 1000
"""Cut schedules are defined over 1000 virtual steps, indexed by `1000 - t` (as DD)."""



WEIGHT_SUM_EPSILON = 1e-3
"""A frame's prompt weights (text and image together) whose sum has a smaller magnitude
are refused, as DD refuses them (the weights are divided by the sum)."""

@dataclass(frozen=True)
class WeightedPrompt:
    """A text (or an image-prompt key) with its weight; the weight is never encoded."""

    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class CutSchedule:
    """Per-slot cut counts and shapes over `CUT_SLOTS` virtual steps."""

    overview: tuple[int, ...] = (12,) * 400 + (4,) * 600
    innercut: tuple[int, ...] = (4,) * 400 + (12,) * 600
    ic_pow: tuple[float, ...] = (1.0,) * 1000
    icgray_p: tuple[float, ...] = (0.2,) * 400 + (0.0,) * 600

    def at(self, slot: int) -> tuple[int, int, float, float]:
        """(overview, innercut, ic_pow, icgray_p) for one virtual slot (0..999)."""
        slot = min(max(slot, 0), CUT_SLOTS - 1)
        return self.overview[slot], self.innercut[slot], self.ic_pow[slot], self.icgray_p[slot]


@dataclass(frozen=True)
class CutAugmentations:
    """The random augmentations of each cut before CLIP sees it: DD's MakeCutoutsDango
    picks them by animation mode (`augmentations_for_mode`). Mirror with ``flip_p``, rotate
    up to ``degrees`` and shift up to ``translate`` of the side (nearest-neighbour when
    ``nearest``), a perspective distortion of ``perspective`` with probability
    ``perspective_p``, grayscale with ``gray_p``, brightness/contrast/saturation jitter and
    hue, and ``noise`` between the steps."""

    flip_p: float = 0.5
    degrees: float = 10.0
    translate: float = 0.05
    nearest: bool = False
    perspective: float = 0.0
    perspective_p: float = 0.0
    gray_p: float = 0.1
    jitter: float = 0.1
    hue: float = 0.1
    noise: float = 0.01


STILL_AUGMENTATIONS = CutAugmentations()
ANIMATION_AUGMENTATIONS = CutAugmentations(flip_p=0.4, hue=0.3)
"""DD's 2D and 3D animation modes: mirror p 0.4 and hue jitter 0.3."""
VIDEO_AUGMENTATIONS = CutAugmentations(degrees=15.0, translate=0.1, nearest=True, perspective=0.4,
                                       perspective_p=0.7, gray_p=0.15, jitter=0.0, hue=0.0)
"""DD's Video Input mode: a wider nearest-neighbour affine, a perspective distortion
(0.4, p 0.7), grayscale p 0.15, no colour jitter."""


def augmentations_for_mode(animation_mode: str) -> CutAugmentations:
    """The augmentations DD's MakeCutoutsDango uses in ``animation_mode`` (None, 2D, 3D,
    Video Input)."""
    return {"2D": ANIMATION_AUGMENTATIONS, "3D": ANIMATION_AUGMENTATIONS,
            "Video Input": VIDEO_AUGMENTATIONS}.get(animation_mode, STILL_AUGMENTATIONS)


@dataclass(frozen=True)
class GuidanceSettings:
    """Loss weights and gradient handling (DD names and defaults)."""

    clip_guidance_scale: float = 5000.0
    tv_scale: float = 0.0
    range_scale: float = 150.0
    sat_scale: float = 0.0
    init_scale: float = 1000.0
    cutn_batches: int = 4
    skip_augs: bool = False
    clamp_grad: bool = True
    clamp_max: float = 0.05
    clip_denoised: bool = False
    fuzzy_prompt: bool = False
    rand_mag: float = 0.05
    augmentations: CutAugmentations = STILL_AUGMENTATIONS


@dataclass(frozen=True)
class SamplerSettings:
    """The diffusion sampler: mode, step counts and init handling."""

    mode: str = "ddim"  # "ddim" | "plms"
    steps: int = 250
    skip_steps: int = 10
    eta: float = 0.8
    perlin_init: bool = False
    perlin_mode: str = "mixed"  # "mixed" | "color" | "gray"
    use_horizontal_symmetry: bool = False
    use_vertical_symmetry: bool = False
    transformation_percent: tuple[float, ...] = (0.09,)


@dataclass(frozen=True)
class ModelSetSpec:
    """The models an image needs; equal model sets can share a loaded actor."""

    diffusion_model: str = "512x512_diffusion_uncond_finetune_008100"
    use_secondary_model: bool = True
    clip_models: tuple[str, ...] = ("ViT-B-32::openai", "ViT-B-16::openai", "RN50::openai")
    custom_model_path: str | None = None
    custom_model_settings: tuple[tuple[str, object], ...] = ()
    use_checkpoint: bool = False
    compile_unet: bool = False  # torch.compile the UNet on CUDA (minutes of compilation per actor)

    @property
    def key(self) -> str:
        """A short human-readable key (actor names and affinity): different for model sets
        that load differently, so a frame never lands on an actor holding another set."""
        sec = "+sec" if self.use_secondary_model else ""
        model = self.diffusion_model
        if self.custom_model_path:
            model = f"{model}:{self.custom_model_path.rsplit('/', 1)[-1]}"
        if self.custom_model_settings:
            digest = hashlib.sha1(repr(sorted(self.custom_model_settings)).encode()).hexdigest()[:8]
            model = f"{model}@{digest}"
        loading = "".join(flag for flag, on in (("+checkpointed", self.use_checkpoint),
                                                ("+compiled", self.compile_unet)) if on)
        return f"{model}{sec}{loading}|{','.join(self.clip_models)}"


@dataclass(frozen=True)
class RenderSpec:
    """Everything one image needs and nothing else."""

    width: int = 1280
    height: int = 768
    seed: int = 0
    text_prompts: tuple[WeightedPrompt, ...] = ()
    image_prompts: tuple[WeightedPrompt, ...] = ()
    guidance: GuidanceSettings = field(default_factory=GuidanceSettings)
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    cuts: CutSchedule = field(default_factory=CutSchedule)
    models: ModelSetSpec = field(default_factory=ModelSetSpec)
    intermediate_steps: tuple[int, ...] = ()
    """Sampler step indices (0-based, counted over the steps actually run) whose
    predicted image is handed to the intermediate callback (display_rate /
    intermediate_saves, resolved by the farm)."""
