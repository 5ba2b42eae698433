"""Loading the models of a ``ModelSetSpec`` once on one device.

A ``ModelSet`` holds the guided-diffusion UNet, the secondary model (optional), the
CLIP models and, lazily, LPIPS. The diffusion *schedule* depends on the number of
steps (DD respaces with ``ddim{steps}`` over ``(1000 // steps) * steps`` diffusion
steps), so one schedule is cached per ``steps`` value while the UNet is shared.
"""

from __future__ import annotations

import functools
import logging
import os
import pathlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from engine import tiny
from engine.catalogue import VGG16
from engine.clip_layers import Swap, fuse_inference_layers, unfuse
from engine.errors import EngineError, EngineOutOfMemory, ModelFileMissing, UnknownModelName
from engine.spec import ModelSetSpec

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # guided_diffusion uses torch.cuda.amp decorators
    from guided_diffusion import script_util

from engine.unet import set_group_norm_precision, unet_forward  # noqa: E402  (after the filtered import)
from engine.pooling import set_block_average_pools  # noqa: E402

log = logging.getLogger(__name__)

VGG16_FILENAME = VGG16.filename
"""torchvision's VGG16 ImageNet weights, LPIPS' backbone (looked up locally only)."""

CLIP_MEAN_DEFAULT = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD_DEFAULT = (0.26862954, 0.26130258, 0.27577711)


def default_device() -> torch.device:
    """CUDA when present, otherwise the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class LoadedClip:
    """One CLIP model ready for guidance: its image size and normalisation on device."""

    name: str
    arch: str
    tag: str
    model: torch.nn.Module
    tokenizer: Callable[[list[str]], torch.Tensor]
    input_size: int
    mean: torch.Tensor
    std: torch.Tensor
    dtype: torch.dtype
    fused_layers: list[Swap] = field(default_factory=list)
    """The module swaps of ``engine.clip_layers`` in effect (empty: the library's layers)."""

    @property
    def is_convolutional(self) -> bool:
        """A ResNet image encoder (more than a ViT's one patch convolution)."""
        return sum(isinstance(m, torch.nn.Conv2d) for m in self.model.visual.modules()) > 1

    def encode_image(self, pixels01: torch.Tensor) -> torch.Tensor:
        """Embeddings (float32) of images in [0, 1] at ``input_size``; normalises first."""
        normalised = (pixels01 - self.mean[:, None, None]) / self.std[:, None, None]
        return self.model.encode_image(normalised.to(self.dtype)).float()

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Embeddings (float32) of texts (no gradient)."""
        device = self.mean.device
        with torch.no_grad():
            tokens = self.tokenizer(texts).to(device)
            return self.model.encode_text(tokens).float()


@dataclass(frozen=True)
class DiffusionSchedule:
    """Per respaced step (index i = 0..num_steps-1) the sampler's python-float coefficients."""

    num_steps: int
    diffusion_steps: int
    model_times: tuple[float, ...]
    """Timestep value fed to the UNet (original timestep, rescaled as guided-diffusion)."""
    cut_slots: tuple[int, ...]
    """Index into the 1000-slot cut schedules (DD: ``1000 - (int(t) + 1)``)."""
    alphas_cumprod: tuple[float, ...]
    alphas_cumprod_prev: tuple[float, ...]

    def sqrt_alpha_bar(self, i: int) -> float:
        return self.alphas_cumprod[i] ** 0.5

    def sqrt_one_minus_alpha_bar(self, i: int) -> float:
        return (1.0 - self.alphas_cumprod[i]) ** 0.5

    def sqrt_recip_alpha_bar(self, i: int) -> float:
        return (1.0 / self.alphas_cumprod[i]) ** 0.5

    def sqrt_recipm1_alpha_bar(self, i: int) -> float:
        return (1.0 / self.alphas_cumprod[i] - 1.0) ** 0.5


def diffusion_steps_for(steps: int) -> int:
    """DD's diffusion length for a step count: a multiple of ``steps`` close to 1000."""
    return (1000 // steps) * steps if steps < 1000 else steps


def schedule_from_diffusion(diffusion: Any) -> DiffusionSchedule:
    """Read a guided-diffusion ``SpacedDiffusion`` into python floats (one time, on the CPU)."""
    original = diffusion.original_num_steps
    timestep_map = torch.tensor(diffusion.timestep_map, dtype=torch.long)
    if diffusion.rescale_timesteps:
        times = timestep_map.float() * (1000.0 / original)
    else:
        times = timestep_map.float()
    model_times = tuple(float(t) for t in times)
    cut_slots = tuple(1000 - (int(t) + 1) for t in model_times)
    return DiffusionSchedule(
        num_steps=int(diffusion.num_timesteps),
        diffusion_steps=int(original),
        model_times=model_times,
        cut_slots=cut_slots,
        alphas_cumprod=tuple(float(a) for a in diffusion.alphas_cumprod),
        alphas_cumprod_prev=tuple(float(a) for a in diffusion.alphas_cumprod_prev),
    )


def _catalogue():
    from engine import catalogue

    return catalogue


def _load_state_dict(path: pathlib.Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelFileMissing(f"model file not found: {path}") from None
    except Exception as exc:  # a corrupt or foreign file
        raise EngineError(f"cannot read model file {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise EngineError(f"model file {path} holds no state dict")
    return state


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: object) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise EngineError(
            f"{what} file {path} does not fit its architecture/settings: {detail[:400]}"
        ) from None


class ModelSet:
    """The models of one ``ModelSetSpec`` loaded once on one device."""

    def __init__(
        self,
        spec: ModelSetSpec,
        device: torch.device | str | None = None,
        *,
        half_precision: bool | None = None,
        channels_last: bool | None = None,
        random_weights: bool = False,
        half_group_norms: bool | None = None,
        compile_unet: bool | None = None,
        clip_channels_last: bool | None = None,
        fuse_clip_layers: bool | None = None,
        split_norm_statistics: bool | None = None,
    ) -> None:
        self.spec = spec
        # random_weights: the real architectures with random weights and no files
        # (benchmarks only; the pictures are noise).
        self.random_weights = random_weights
        self.device = torch.device(device) if device is not None else default_device()
        on_cuda = self.device.type == "cuda"
        self.half_precision = on_cuda if half_precision is None else (half_precision and on_cuda)
        # channels_last is off by default: with torch's group norms every block converted
        # layouts (H200, DD defaults: 0.28 vs 0.22 s/step with the secondary model, 0.55 vs
        # 0.28 on the full-UNet path). The split-statistics norms now keep the layout, forward
        # and backward; bench.gpu_profile's "UNet channels_last" variant measures it again
        self.channels_last = False if channels_last is None else (channels_last and on_cuda)
        # GroupNorm32 without its fp32 round trip (engine.unet); only matters in fp16
        self.half_group_norms = self.half_precision if half_group_norms is None else (
            half_group_norms and self.half_precision)
        # group-norm statistics from a reduction spread over the whole GPU instead of one
        # thread block per group (engine.unet.GroupNormSplitStatistics); eager UNet only
        self.split_norm_statistics = on_cuda if split_norm_statistics is None else split_norm_statistics
        # torch.compile only on CUDA (on the CPU its compile time outweighs a render)
        self.compile_unet = on_cuda and (spec.compile_unet if compile_unet is None else compile_unet)
        # ResNet CLIPs in channels_last: on the CPU 14% faster for RN50 (forward + backward
        # to the cuts), 30% for the tiny RN; on an H200 no gain (bench.gpu_profile), so CPU only
        self.clip_channels_last = (not on_cuda) if clip_channels_last is None else clip_channels_last
        # batch norms folded into ResNet CLIPs' convolutions, ViTs' patch convolution as a
        # matrix product (engine.clip_layers): on the CPU the ViT-B/32 patch embedding's
        # forward + backward is 5x faster; on an H200 no gain (bench.gpu_profile), so CPU only
        self.fuse_clip_layers = (not on_cuda) if fuse_clip_layers is None else fuse_clip_layers
        if not spec.clip_models:
            raise EngineError("clip_models is empty: name at least one CLIP model")
        self.is_tiny = tiny.is_tiny_diffusion(spec.diffusion_model)
        self.unet_settings = self._unet_settings()
        self.clips: dict[str, LoadedClip] = {}
        try:
            self.unet = self._load_unet()
            self.configure_unet(channels_last=self.channels_last, half_group_norms=self.half_group_norms,
                                compile_unet=self.compile_unet, split_norm_statistics=self.split_norm_statistics)
            self.secondary = self._load_secondary() if spec.use_secondary_model else None
            self.secondary_dtype = torch.float32
            self._secondary_float32: dict[str, torch.Tensor] | None = None
            for name in spec.clip_models:
                if name in self.clips:
                    raise EngineError(f"CLIP model {name!r} is listed twice in clip_models")
                self.clips[name] = self._load_clip(name)
            self.configure_clips(channels_last=self.clip_channels_last, fused=self.fuse_clip_layers)
            self.configure_pools(block_average=True)
        except torch.OutOfMemoryError:
            raise EngineOutOfMemory(
                f"out of GPU memory loading {spec.key}: use fewer/smaller CLIP models"
            ) from None
        self._schedules: dict[int, DiffusionSchedule] = {}
        self._lpips: torch.nn.Module | None = None
        self.text_embedding_cache: dict[tuple[str, str], torch.Tensor] = {}
        self.image_prompt_cache: dict[tuple, torch.Tensor] = {}

    # -- diffusion ---------------------------------------------------------------------
    def _unet_settings(self) -> dict[str, object]:
        spec = self.spec
        defaults = script_util.model_and_diffusion_defaults()
        catalogue = _catalogue()
        base_name = "512x512_diffusion_uncond_finetune_008100"
        if self.is_tiny:
            settings = dict(defaults)
            settings.update(catalogue.DIFFUSION_MODELS[base_name].unet_kwargs())
            settings = tiny.tiny_unet_kwargs(settings)
        elif spec.diffusion_model in catalogue.DIFFUSION_MODELS:
            settings = dict(defaults)
            settings.update(catalogue.DIFFUSION_MODELS[spec.diffusion_model].unet_kwargs())
        elif spec.custom_model_path:  # DD's custom model: the settings of KaliYuga's 256 px fine-tunes
            settings = dict(defaults)
            settings.update(catalogue.CUSTOM_MODEL_UNET)
        else:
            known = ", ".join([*catalogue.DIFFUSION_MODELS, tiny.TINY_DIFFUSION_MODEL])
            raise UnknownModelName(
                f"unknown diffusion model {spec.diffusion_model!r} (known: {known}; "
                "or set custom_model_path)"
            )
        for key, value in spec.custom_model_settings:
            if key not in defaults:
                raise EngineError(
                    f"unknown custom_model_settings key {key!r} "
                    f"(guided-diffusion settings: {', '.join(sorted(defaults))})"
                )
            settings[key] = value
        settings["use_checkpoint"] = bool(spec.use_checkpoint)
        settings["use_fp16"] = self.half_precision
        settings["timestep_respacing"] = ""
        return settings

    def _unet_path(self) -> pathlib.Path | None:
        spec = self.spec
        if self.random_weights and not self.is_tiny:
            return None
        if spec.custom_model_path:
            path = pathlib.Path(spec.custom_model_path).expanduser()
            if not path.is_file():
                raise ModelFileMissing(f"custom diffusion model file not found: {path}")
            return path
        if self.is_tiny:
            return None
        catalogue = _catalogue()
        try:
            return catalogue.cached_path(spec.diffusion_model)
        except catalogue.UnknownModel as exc:
            raise UnknownModelName(str(exc)) from None
        except catalogue.ModelError as exc:
            raise ModelFileMissing(str(exc)) from None

    def _load_unet(self) -> torch.nn.Module:
        path = self._unet_path()
        model_kwargs = {
            k: v for k, v in self.unet_settings.items()
            if k in script_util.model_and_diffusion_defaults()
        }
        create_args = {k: model_kwargs[k] for k in _CREATE_MODEL_KEYS if k in model_kwargs}
        try:
            if path is None:
                with tiny.seeded(tiny.TINY_SEED):
                    unet = script_util.create_model(**create_args)
                    tiny.randomise_zero_parameters(unet)  # untrained: make the output depend on x
            else:
                unet = script_util.create_model(**create_args)
        except (AssertionError, ValueError, TypeError) as exc:
            raise EngineError(f"invalid UNet settings {create_args}: {exc}") from None
        if getattr(unet, "num_classes", None) is not None:
            raise EngineError("class-conditional diffusion models are not supported (set class_cond false)")
        if path is not None:
            _load_into(unet, _load_state_dict(path), "diffusion model", path)
        unet.requires_grad_(False).eval().to(self.device)
        if self.half_precision:
            unet.convert_to_fp16()
        return unet

    def configure_unet(self, *, channels_last: bool, half_group_norms: bool, compile_unet: bool,
                       split_norm_statistics: bool | None = None) -> None:
        """The loaded UNet's memory layout, group-norm precision and statistics, and
        compilation (CUDA speed options; benchmarks switch them on one loaded set to
        compare). Split statistics apply to the eager UNet in its input dtype only: a
        compiled UNet gets torch.compile's own group-norm reductions."""
        self.channels_last, self.half_group_norms, self.compile_unet = channels_last, half_group_norms, compile_unet
        if split_norm_statistics is not None:
            self.split_norm_statistics = split_norm_statistics
        self.unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        set_group_norm_precision(self.unet, half_group_norms, self.split_norm_statistics and not compile_unet)
        self.compiled_unet_forward = (
            torch.compile(functools.partial(unet_forward, self.unet), dynamic=False) if compile_unet else None)

    def drop_compiled_unet(self, error: Exception) -> None:
        """Go on with the eager UNet after torch.compile failed (warned once)."""
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        warnings.warn(f"compile_unet: torch.compile failed ({type(error).__name__}: {first_line}); "
                      "rendering on without compilation", RuntimeWarning, stacklevel=2)
        self.compile_unet = False
        self.compiled_unet_forward = None
        set_group_norm_precision(self.unet, self.half_group_norms, self.split_norm_statistics)

    def configure_clips(self, *, channels_last: bool, fused: bool | None = None) -> None:
        """Memory layout of the convolutional (ResNet) CLIP image encoders (ViTs keep
        theirs) and whether their layers are fused for inference (``engine.clip_layers``;
        None keeps the current state)."""
        self.clip_channels_last = channels_last
        if fused is not None:
            self.fuse_clip_layers = fused
        layout = torch.channels_last if channels_last else torch.contiguous_format
        for clip in self.clips.values():
            if self.fuse_clip_layers and not clip.fused_layers:
                clip.fused_layers = fuse_inference_layers(clip.model.visual)
            elif not self.fuse_clip_layers and clip.fused_layers:
                unfuse(clip.fused_layers)
                clip.fused_layers = []
            if clip.is_convolutional:
                clip.model.visual.to(memory_format=layout)

    def configure_pools(self, *, block_average: bool) -> None:
        """Whether the models' block-shaped average pools run through
        ``engine.pooling.BlockAverage`` (the same values, a cheaper backward pass) or torch's
        ``nn.AvgPool2d`` (benchmarks compare the two on one load)."""
        models = [self.unet, self.secondary, *(clip.model.visual for clip in self.clips.values())]
        for model in models:
            if model is not None:
                set_block_average_pools(model, block_average)

    def schedule(self, steps: int) -> DiffusionSchedule:
        """The sampler coefficients for ``steps`` (cached per steps value)."""
        if steps not in self._schedules:
            s = self.unet_settings
            diffusion = script_util.create_gaussian_diffusion(
                steps=diffusion_steps_for(steps),
                learn_sigma=bool(s["learn_sigma"]),
                noise_schedule=str(s["noise_schedule"]),
                use_kl=bool(s["use_kl"]),
                predict_xstart=bool(s["predict_xstart"]),
                rescale_timesteps=bool(s["rescale_timesteps"]),
                rescale_learned_sigmas=bool(s["rescale_learned_sigmas"]),
                timestep_respacing=f"ddim{steps}",
            )
            self._schedules[steps] = schedule_from_diffusion(diffusion)
        return self._schedules[steps]

    # -- secondary ---------------------------------------------------------------------
    def configure_secondary(self, dtype: torch.dtype) -> None:
        """The secondary model's precision: float32 (the default, as DD runs it) or a half
        type (a speed option on CUDA that ``bench.gpu_profile`` measures; it changes pixels)."""
        if self.secondary is not None:
            if dtype != torch.float32 and self._secondary_float32 is None:  # to go back without rounding
                self._secondary_float32 = {k: v.detach().clone() for k, v in self.secondary.state_dict().items()}
            self.secondary.to(dtype)
            if dtype == torch.float32 and self._secondary_float32 is not None:
                self.secondary.load_state_dict(self._secondary_float32)
        self.secondary_dtype = dtype

    def _load_secondary(self) -> torch.nn.Module:
        from engine.secondary import SecondaryDiffusionModel

        if self.is_tiny:
            model = tiny.build_tiny_secondary()
        elif self.random_weights:
            with tiny.seeded(tiny.TINY_SEED + 11):
                model = SecondaryDiffusionModel()
        else:
            catalogue = _catalogue()
            try:
                path = catalogue.cached_path(catalogue.SECONDARY_MODEL.name)
            except catalogue.ModelError as exc:
                raise ModelFileMissing(str(exc)) from None
            model = SecondaryDiffusionModel()
            _load_into(model, _load_state_dict(path), "secondary model", path)
        model.requires_grad_(False).eval().to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    # -- CLIP --------------------------------------------------------------------------
    def _load_clip(self, name: str) -> LoadedClip:
        import open_clip

        catalogue = _catalogue()
        try:
            arch, tag = catalogue.parse_clip_name(name)
        except catalogue.ModelError as exc:
            raise UnknownModelName(str(exc)) from None
        precision = "fp16" if self.half_precision else "fp32"
        if arch.startswith(catalogue.TINY_MODEL_PREFIX):
            if not tiny.is_tiny_clip(arch) or tag not in ("", "random"):
                raise UnknownModelName(
                    f"unknown built-in CLIP model {name!r} (built-in: {', '.join(tiny.TINY_CLIP_MODELS)})"
                )
            model = tiny.build_tiny_clip(arch)
        elif self.random_weights or tag == catalogue.RANDOM_CLIP_TAG:
            with tiny.seeded(tiny.TINY_SEED + 12):
                model = open_clip.create_model(arch, pretrained=None, precision="fp32")
        else:
            try:
                model = open_clip.create_model(arch, pretrained=tag, precision="fp32")
            except Exception as exc:  # open_clip raises many kinds when weights are absent
                raise ModelFileMissing(
                    f"CLIP weights {name!r} are not in open_clip's local cache and could not be "
                    f"fetched ({type(exc).__name__}); fetch them with: farm models download {name}"
                ) from None
        model.requires_grad_(False).eval().to(self.device)
        if precision == "fp16":
            model.half()
        visual = model.visual
        size = visual.image_size
        input_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        mean = getattr(visual, "image_mean", None) or CLIP_MEAN_DEFAULT
        std = getattr(visual, "image_std", None) or CLIP_STD_DEFAULT
        return LoadedClip(
            name=name,
            arch=arch,
            tag=tag,
            model=model,
            tokenizer=open_clip.get_tokenizer(arch),
            input_size=input_size,
            mean=torch.tensor(mean, dtype=torch.float32, device=self.device),
            std=torch.tensor(std, dtype=torch.float32, device=self.device),
            dtype=torch.float16 if precision == "fp16" else torch.float32,
        )

    # -- LPIPS -------------------------------------------------------------------------
    def lpips(self) -> torch.nn.Module:
        """LPIPS-VGG (lazy). Real sets need VGG16 weights in a local file; tiny sets
        use a random-initialised VGG (test use only)."""
        if self._lpips is None:
            random_backbone = self.is_tiny or self.random_weights
            self._lpips = load_lpips(random_backbone=random_backbone).to(self.device)
        return self._lpips


_CREATE_MODEL_KEYS = (
    "image_size", "num_channels", "num_res_blocks", "channel_mult", "learn_sigma",
    "class_cond", "use_checkpoint", "attention_resolutions", "num_heads",
    "num_head_channels", "num_heads_upsample", "use_scale_shift_norm", "dropout",
    "resblock_updown", "use_fp16", "use_new_attention_order",
)


def vgg16_weights_path() -> pathlib.Path | None:
    """A local VGG16 file: $DISCO_FARM_VGG16, the models dir, or torch's hub cache."""
    catalogue = _catalogue()
    try:
        return catalogue.vgg16_file()
    except catalogue.ModelNotDownloaded as error:
        raise ModelFileMissing(str(error)) from None


def load_lpips(random_backbone: bool) -> torch.nn.Module:
    """LPIPS (VGG, v0.1 linear layers shipped with the ``lpips`` package), offline.

    The VGG16 backbone comes from a local file (see ``vgg16_weights_path``); with
    ``random_backbone`` it is random-initialised from a fixed seed (tests only).
    """
    try:
        import lpips
    except ImportError:
        raise EngineError("init_scale needs the 'lpips' package: pip install lpips") from None
    path = None if random_backbone else vgg16_weights_path()
    if path is None and not random_backbone:
        raise ModelFileMissing(
            f"init_scale > 0 needs LPIPS' VGG16 weights ({VGG16_FILENAME}), not found; fetch them with "
            "'farm models download vgg16' (or set DISCO_FARM_VGG16 to a local copy, or init_scale to 0)"
        )
    with warnings.catch_warnings(), tiny.seeded(tiny.TINY_SEED + 20):
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    if path is not None:
        vgg_state = _load_state_dict(path)
        net_state = {}
        slices = {name: mod for name, mod in model.net.named_children() if name.startswith("slice")}
        for key, tensor in vgg_state.items():
            parts = key.split(".")
            if parts[0] != "features":
                continue
            for slice_name, slice_module in slices.items():
                if parts[1] in dict(slice_module.named_children()):
                    net_state[f"{slice_name}.{parts[1]}.{parts[2]}"] = tensor
        missing = set(model.net.state_dict()) - set(net_state)
        if missing:
            raise EngineError(f"VGG16 file {path} lacks {sorted(missing)[:3]}")
        model.net.load_state_dict(net_state)
    model.requires_grad_(False).eval()
    return model


def load_model_set(spec: ModelSetSpec, device: torch.device | str | None = None, **options: Any) -> ModelSet:
    """Load ``spec``'s models on ``device`` (default: CUDA if present, else CPU)."""
    return ModelSet(spec, device, **options)


__all__ = [
    "ModelSet",
    "LoadedClip",
    "DiffusionSchedule",
    "diffusion_steps_for",
    "schedule_from_diffusion",
    "load_model_set",
    "load_lpips",
    "default_device",
]
