"""Catalogue of the public checkpoints Disco Diffusion relies on, and where they are cached.

Diffusion UNets (guided-diffusion ``UNetModel``) and the secondary model are downloaded
once into ``models_dir()`` by ``farm models download`` (see ``engine.download``).
CLIP weights are not in this catalogue: open_clip downloads them itself into its own
cache (the Hugging Face hub cache); ``farm models download ViT-B-32::openai`` pre-fetches
them through open_clip. ``parse_clip_name`` turns user spellings into open_clip's
``(architecture, pretrained_tag)``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
import pathlib
from dataclasses import dataclass

__all__ = [
    "ModelFile",
    "DiffusionModelEntry",
    "DIFFUSION_MODELS",
    "CUSTOM_MODEL_UNET",
    "SECONDARY_MODEL",
    "RAFT",
    "ModelError",
    "UnknownModel",
    "ModelNotDownloaded",
    "models_dir",
    "cached_path",
    "vgg16_file",
    "all_model_files",
    "lookup_model_file",
    "parse_clip_name",
    "TINY_MODEL_PREFIX",
]

TINY_MODEL_PREFIX = "tiny-"
"""Names starting with this are built-in, random-initialised test models (no file)."""
TINY_CLIP_ARCHS = ("tiny-vit", "tiny-rn")
"""The built-in CLIP test models (``engine.tiny``), as ``tiny-vit::random``."""


class ModelError(ValueError):
    """Base class for model catalogue, cache and download errors."""


class UnknownModel(ModelError):
    """A model name that is not in the catalogue (message has a did-you-mean)."""


class ModelNotDownloaded(ModelError):
    """A catalogued model whose file is not in the cache yet."""


@dataclass(frozen=True)
class ModelFile:
    """One downloadable checkpoint: catalogue name, file name, sha256 and mirror URLs.

    ``sha256`` is the full hex digest, or (torchvision's convention, for files published
    with only the first 8+ hex digits in their name) a prefix of it."""

    name: str
    filename: str
    sha256: str
    urls: tuple[str, ...]
    size_hint: int | None = None

    def matches(self, digest: str) -> bool:
        """Whether a file's sha256 hex digest is this checkpoint's."""
        return len(self.sha256) >= 8 and digest.lower().startswith(self.sha256.lower())


@dataclass(frozen=True)
class DiffusionModelEntry:
    """A diffusion UNet checkpoint and DD's guided-diffusion settings for it."""

    file: ModelFile
    unet_settings: tuple[tuple[str, object], ...]
    style: str = ""  # KaliYuga's fine-tunes: "pixel art" or "watercolor" (DD gives them their own cut schedules)

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def image_size(self) -> int:
        return int(self.unet_kwargs()["image_size"])

    def unet_kwargs(self) -> dict[str, object]:
        """Keyword overrides for ``guided_diffusion.script_util.model_and_diffusion_defaults()``."""
        return dict(self.unet_settings)


_GB = 1_000_000_000

# DD v5.7 "Model settings": the OpenAI 512 fine-tune and 256 unconditional model.
_OPENAI_UNET = (
    ("attention_resolutions", "32, 16, 8"),
    ("class_cond", False),
    ("diffusion_steps", 1000),
    ("rescale_timesteps", True),
    ("learn_sigma", True),
    ("noise_schedule", "linear"),
    ("num_channels", 256),
    ("num_head_channels", 64),
    ("num_heads", 4),
    ("num_res_blocks", 2),
    ("resblock_updown", True),
    ("use_fp16", False),
    ("use_scale_shift_norm", True),
)

# portrait_generator_v001 (DD): like the 512 model but 128 channels and num_heads 4 with
# guided-diffusion's default num_head_channels (-1: head width = channels / heads).
_PORTRAIT_OVERRIDES = {"num_channels": 128, "num_head_channels": -1}
_PORTRAIT_UNET = tuple((key, _PORTRAIT_OVERRIDES.get(key, value)) for key, value in _OPENAI_UNET)

# KaliYuga's 256 px fine-tunes (pixel art, watercolor): DD v5.7's "else" branch, which
# leaves num_head_channels (-1) and resblock_updown (False) at guided-diffusion defaults.
_KALIYUGA_256_UNET = (
    ("attention_resolutions", "16"),
    ("class_cond", False),
    ("diffusion_steps", 1000),
    ("rescale_timesteps", True),
    ("learn_sigma", True),
    ("noise_schedule", "linear"),
    ("num_channels", 128),
    ("num_head_channels", -1),
    ("num_heads", 1),
    ("num_res_blocks", 2),
    ("resblock_updown", False),
    ("use_fp16", False),
    ("use_scale_shift_norm", False),
)


CUSTOM_MODEL_UNET: dict[str, object] = dict(_KALIYUGA_256_UNET, image_size=256)
"""DD's settings for ``diffusion_model: custom`` (its "else" branch, like KaliYuga's
fine-tunes); ``custom_model_settings`` overrides them."""


def _entry(name: str, filename: str, sha256: str, urls: tuple[str, ...], size_hint: int | None,
           settings: tuple[tuple[str, object], ...], image_size: int, style: str = "") -> DiffusionModelEntry:
    return DiffusionModelEntry(
        file=ModelFile(name=name, filename=filename, sha256=sha256, urls=urls, size_hint=size_hint),
        unet_settings=settings + (("image_size", image_size),),
        style=style,
    )


def _kaliyuga(name: str, sha256: str, style: str, filename: str | None = None, repo: str | None = None) -> DiffusionModelEntry:
    """One of KaliYuga's 256 px fine-tunes, published on the Hugging Face hub (DD v5.7's list)."""
    filename = filename or f"{name}.pt"
    url = f"https://huggingface.co/KaliYuga/{repo or name}/resolve/main/{filename}"
    return _entry(name, filename, sha256, (url,), None, _KALIYUGA_256_UNET, 256, style)


DIFFUSION_MODELS: dict[str, DiffusionModelEntry] = {
    e.name: e
    for e in (
        _entry(
            "512x512_diffusion_uncond_finetune_008100",
            "512x512_diffusion_uncond_finetune_008100.pt",
            "9c111ab89e214862b76e1fa6a1b3f1d329b1a88281885943d2cdbe357ad57648",
            (
                "https://huggingface.co/lowlevelware/512x512_diffusion_unconditional_ImageNet/resolve/main/512x512_diffusion_uncond_finetune_008100.pt",
                "https://the-eye.eu/public/AI/models/512x512_diffusion_unconditional_ImageNet/512x512_diffusion_uncond_finetune_008100.pt",
            ),
            int(2.2 * _GB),
            _OPENAI_UNET,
            512,
        ),
        _entry(
            "256x256_diffusion_uncond",
            "256x256_diffusion_uncond.pt",
            "a37c32fffd316cd494cf3f35b339936debdc1576dad13fe57c42399a5dbc78b1",
            ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt",),
            int(2.2 * _GB),
            _OPENAI_UNET,
            256,
        ),
        _entry(
            "portrait_generator_v001",
            "portrait_generator_v001_ema_0.9999_1MM.pt",
            "b7e8c747af880d4480b6707006f1ace000b058dd0eac5bb13558ba3752d9b5b9",
            ("https://huggingface.co/felipe3dartist/portrait_generator_v001/resolve/main/portrait_generator_v001_ema_0.9999_1MM.pt",),
            None,
            _PORTRAIT_UNET,
            512,
        ),
        _kaliyuga("pixelartdiffusion_expanded", "a73b40556634034bf43b5a716b531b46fb1ab890634d854f5bcbbef56838739a",
                  "pixel art", filename="PADexpanded.pt", repo="PADexpanded"),
        _kaliyuga("pixel_art_diffusion_hard_256", "be4a9de943ec06eef32c65a1008c60ad017723a4d35dc13169c66bb322234161",
                  "pixel art"),
        _kaliyuga("pixel_art_diffusion_soft_256", "d321590e46b679bf6def1f1914b47c89e762c76f19ab3e3392c8ca07c791039c",
                  "pixel art"),
        _kaliyuga("pixelartdiffusion4k", "a1ba4f13f6dabb72b1064f15d8ae504d98d6192ad343572cc416deda7cccac30",
                  "pixel art"),
        _kaliyuga("PulpSciFiDiffusion", "b79e62613b9f50b8a3173e5f61f0320c7dbb16efad42a92ec94d014f6e17337f",
                  "pixel art"),  # DD gives it the pixel-art cut schedules
        _kaliyuga("watercolordiffusion_2", "49c281b6092c61c49b0f1f8da93af9b94be7e0c20c71e662e2aa26fee0e4b1a9",
                  "watercolor"),
        _kaliyuga("watercolordiffusion", "a3e6522f0c8f278f90788298d66383b11ac763dd5e0d62f8252c962c23950bd6",
                  "watercolor"),
    )
}

SECONDARY_MODEL = ModelFile(
    name="secondary_model_imagenet_2",
    filename="secondary_model_imagenet_2.pth",
    sha256="983e3de6f95c88c81b2ca7ebb2c217933be1973b1ff058776b970f901584613a",
    urls=(
        "https://huggingface.co/spaces/huggi/secondary_model_imagenet_2.pth/resolve/main/secondary_model_imagenet_2.pth",
        "https://the-eye.eu/public/AI/models/v-diffusion/secondary_model_imagenet_2.pth",
    ),
    size_hint=55_000_000,
)


VGG16 = ModelFile(
    name="vgg16",
    filename="vgg16-397923af.pth",
    sha256="397923af",  # torchvision publishes the first 8 hex digits of the sha256 in the name
    urls=("https://download.pytorch.org/models/vgg16-397923af.pth",),
    size_hint=553_433_881,
)
"""torchvision's ImageNet VGG16: the backbone of LPIPS, DD's init_scale perceptual loss."""


def vgg16_file() -> pathlib.Path | None:
    """A local copy of LPIPS' VGG16: $DISCO_FARM_VGG16, the models dir, or torch's hub cache
    ($TORCH_HOME/hub/checkpoints, as torch.hub finds it); None if there is none. Raises
    ModelNotDownloaded when $DISCO_FARM_VGG16 names a missing file."""
    explicit = os.environ.get("DISCO_FARM_VGG16")
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    candidates = [pathlib.Path(explicit).expanduser()] if explicit else []
    candidates += [models_dir() / VGG16.filename,
                   pathlib.Path(torch_home).expanduser() / "hub" / "checkpoints" / VGG16.filename]
    for path in candidates:
        if path.is_file():
            return path
    if explicit:
        raise ModelNotDownloaded(f"DISCO_FARM_VGG16 points to a missing file: {explicit}")
    return None


RAFT = ModelFile(
    name="raft_large_C_T_V1",
    filename="raft_large_C_T_V1-22a6c225.pth",
    sha256="22a6c225",  # torchvision's naming: the first 8 hex digits of the sha256
    urls=("https://download.pytorch.org/models/raft_large_C_T_V1-22a6c225.pth",),
    size_hint=21_000_000,
)
"""torchvision's RAFT weights ported from RAFT's raft-things checkpoint (what DD's Video
Input computes its optical flow with)."""


def all_model_files() -> dict[str, ModelFile]:
    """Every downloadable file in the catalogue (diffusion models, the secondary model,
    VGG16, RAFT)."""
    files = {name: entry.file for name, entry in DIFFUSION_MODELS.items()}
    files[SECONDARY_MODEL.name] = SECONDARY_MODEL
    files[VGG16.name] = VGG16
    files[RAFT.name] = RAFT
    return files


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"


def lookup_model_file(name: str) -> ModelFile:
    """The catalogue entry for ``name``; ``UnknownModel`` with a did-you-mean otherwise."""
    files = all_model_files()
    if name in files:
        return files[name]
    if name == "secondary":  # DD's key for the secondary model
        return SECONDARY_MODEL
    # Accept the file name (e.g. "PADexpanded.pt") as well as the catalogue name.
    for model in files.values():
        if name == model.filename:
            return model
    raise UnknownModel(
        f"unknown model {name!r}{_did_you_mean(name, files)} (known: {', '.join(files)})"
    )


def _expanded(variable: str, value: str) -> pathlib.Path:
    """``value`` (of environment variable ``variable``) with ``~`` or ``~user`` expanded;
    ModelError naming the variable when there is no such user or home folder."""
    try:
        return pathlib.Path(value).expanduser()
    except RuntimeError:  # pathlib: "Could not determine home directory"
        user = value[1:].split("/", 1)[0]
        whose = f"user '{user}' has no home folder here" if user else "the home folder is not known (no $HOME)"
        raise ModelError(f"{variable}={value}: cannot expand '~{user}': {whose}") from None


def models_dir() -> pathlib.Path:
    """Where downloaded checkpoints live: ``$DISCO_FARM_MODELS`` or the user cache dir.
    ModelError when a ``~`` in them cannot be expanded."""
    explicit = os.environ.get("DISCO_FARM_MODELS")
    if explicit:
        return _expanded("DISCO_FARM_MODELS", explicit)
    cache_home = os.environ.get("XDG_CACHE_HOME")
    if cache_home:
        base = _expanded("XDG_CACHE_HOME", cache_home)
    else:
        try:
            base = pathlib.Path.home() / ".cache"
        except RuntimeError:
            raise ModelError("the home folder is not known (no $HOME): set DISCO_FARM_MODELS "
                             "to the model folder") from None
    return base / "disco-farm" / "models"


def cached_path(name: str, directory: str | os.PathLike | None = None) -> pathlib.Path:
    """The downloaded file of catalogue model ``name``; ``ModelNotDownloaded`` if absent."""
    model = lookup_model_file(name)
    folder = pathlib.Path(directory) if directory is not None else models_dir()
    path = folder / model.filename
    if not path.is_file():
        raise ModelNotDownloaded(
            f"model {model.name!r} is not downloaded (looked in {folder}); "
            f"fetch it with: farm models download {model.name}"
        )
    return path


# ---------------------------------------------------------------------------------------
# CLIP names

_DD_OPENAI_CLIP = {
    # Disco Diffusion's spellings of the OpenAI CLIP models (clip.available_models()).
    "ViT-B/32": "ViT-B-32",
    "ViT-B/16": "ViT-B-16",
    "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336",
    "RN50": "RN50",
    "RN101": "RN101",
    "RN50x4": "RN50x4",
    "RN50x16": "RN50x16",
    "RN50x64": "RN50x64",
}

_DD_OPENCLIP_ARCH = {
    # DD v5.6+ OpenCLIP checkbox names look like "ViTB32_laion2b_e16", "RN50_quickgelu_cc12m".
    "ViTB32": "ViT-B-32",
    "ViTB32quickgelu": "ViT-B-32-quickgelu",
    "ViTB16": "ViT-B-16",
    "ViTL14": "ViT-L-14",
    "RN50": "RN50",
    "RN50_quickgelu": "RN50-quickgelu",
    "RN101": "RN101",
    "RN101_quickgelu": "RN101-quickgelu",
}

# DD's checkbox names carry two typos: "RN50_yffcc15m" and "ViTB32_laion400m_32".
_TAG_TYPOS = {"yffcc15m": "yfcc15m", "laion400m_32": "laion400m_e32"}


RANDOM_CLIP_TAG = "random"
"""``ARCH::random``: the architecture with random weights (benchmarks, tests; nothing is
downloaded and the guidance means nothing)."""


def _split_dd_openclip(name: str) -> tuple[str, str] | None:
    """``"ViTB32_laion2b_e16"`` -> ``("ViT-B-32", "laion2b_e16")``; None if not that form."""
    for prefix in sorted(_DD_OPENCLIP_ARCH, key=len, reverse=True):
        if name.startswith(prefix + "_") and len(name) > len(prefix) + 1:
            tag = name[len(prefix) + 1:]
            return _DD_OPENCLIP_ARCH[prefix], _TAG_TYPOS.get(tag, tag)
    return None


def parse_clip_name(name: str, known: tuple[Sequence[str], Mapping[str, Sequence[str]]] | None = None
                    ) -> tuple[str, str]:
    """Resolve a CLIP model name to open_clip's ``(architecture, pretrained_tag)``.

    Accepts ``"ViT-B-32::openai"``, a bare open_clip architecture (tag ``openai`` when
    it has one), DD's ``"ViT-B/32"``/``"RN50x4"`` and DD's ``"ViTB32_laion2b_e16"``.
    Names starting with ``tiny-`` are built-in test models: returned as ``(name, "")``
    (any ``::tag`` is kept as the tag). The tag may also be a local weights file path, or
    ``random`` for random weights (``RANDOM_CLIP_TAG``).
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownModel(f"CLIP model name must be a non-empty string, got {name!r}")
    text = name.strip()
    if text.startswith(TINY_MODEL_PREFIX):
        arch, _, tag = text.partition("::")
        if arch not in TINY_CLIP_ARCHS or tag not in ("", "random"):
            raise UnknownModel(f"unknown built-in CLIP model {name!r} (built-in: "
                               f"{', '.join(f'{a}::random' for a in TINY_CLIP_ARCHS)})")
        return arch, tag

    if "::" in text:
        arch, _, tag = text.partition("::")
        arch, tag = arch.strip(), tag.strip()
        arch = _DD_OPENAI_CLIP.get(arch, arch)
        if not tag:
            raise UnknownModel(f"CLIP model {name!r} has an empty pretrained tag after '::'")
    elif text in _DD_OPENAI_CLIP:
        arch, tag = _DD_OPENAI_CLIP[text], "openai"
    elif (split := _split_dd_openclip(text)) is not None:
        arch, tag = split
    else:
        arch, tag = text, ""

    if known is None:
        import open_clip  # local import: heavy, and only needed for validation

        models = open_clip.list_models()
        tags = [t for a, t in open_clip.list_pretrained() if a == arch]
    else:  # (architectures, architecture -> tags), e.g. a cached copy of open_clip's lists
        models, pretrained = known
        tags = list(pretrained.get(arch, ()))
    if arch not in models:
        raise UnknownModel(
            f"unknown CLIP architecture {arch!r} in {name!r}{_did_you_mean(arch, models)}"
        )
    if not tag:
        if "openai" in tags:
            return arch, "openai"
        raise UnknownModel(
            f"CLIP model {name!r} needs a pretrained tag, e.g. '{arch}::{tags[0] if tags else 'TAG'}'"
            + (f" (available: {', '.join(tags)})" if tags else "")
        )
    if tag in tags or tag == RANDOM_CLIP_TAG or _looks_like_path(tag):
        return arch, tag
    hint = _did_you_mean(tag, tags)
    available = f" (available: {', '.join(tags)})" if tags else " (it has no published weights)"
    raise UnknownModel(f"unknown pretrained tag {tag!r} for CLIP {arch!r}{hint}{available}")


def _looks_like_path(tag: str) -> bool:
    return os.sep in tag or tag.endswith((".pt", ".pth", ".bin", ".safetensors"))
