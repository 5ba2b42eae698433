"""Built-in tiny models: RANDOM-INITIALISED TEST MODELS, not trained, for tests and demos.

They have the real architectures (guided-diffusion ``UNetModel``, our secondary model,
open_clip ViT and ModifiedResNet) at toy sizes, with weights drawn from fixed seeds,
so every process builds bit-identical models without any file. Their pictures are
noise-like: use them to exercise the pipeline, never to judge image quality.

Names: diffusion model ``"tiny"``; CLIP ``"tiny-vit::random"`` and ``"tiny-rn::random"``.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator

import torch

from engine.catalogue import TINY_CLIP_ARCHS  # defined there: scene checks need it without torch

TINY_DIFFUSION_MODEL = "tiny"
TINY_CLIP_MODELS = tuple(f"{arch}::random" for arch in TINY_CLIP_ARCHS)
TINY_SECONDARY_BASE_CHANNELS = 8
TINY_SEED = 20211029
"""Seed of every tiny model's weights (fixed: tiny models are the same everywhere)."""

MODEL_CONFIG_DIR = pathlib.Path(__file__).with_name("model_configs")

_registered = False


def is_tiny_diffusion(name: str) -> bool:
    return name == TINY_DIFFUSION_MODEL


def is_tiny_clip(arch: str) -> bool:
    return arch in TINY_CLIP_ARCHS


def tiny_unet_kwargs(base: dict[str, object]) -> dict[str, object]:
    """DD's 512 settings (``base``) shrunk to a ~4 M parameter 64 px UNet."""
    kwargs = dict(base)
    kwargs.update(
        image_size=64,
        num_channels=32,
        num_res_blocks=1,
        attention_resolutions="16",
        num_head_channels=32,
        learn_sigma=True,
    )
    return kwargs


def randomise_zero_parameters(module: torch.nn.Module, std: float = 0.02) -> None:
    """Give zero-initialised weight tensors small random values.

    guided-diffusion zero-initialises its output convolutions, so an untrained UNet
    would predict exactly zero noise; a test model should depend on its input.
    """
    with torch.no_grad():
        for param in module.parameters():
            if param.dim() > 1 and not param.any():
                param.normal_(0.0, std)


@contextlib.contextmanager
def seeded(seed: int = TINY_SEED) -> Iterator[None]:
    """Draw from the CPU RNG seeded with ``seed``, restoring its state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def register_tiny_clip_configs() -> None:
    """Make open_clip know the tiny-vit / tiny-rn configs (idempotent)."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(MODEL_CONFIG_DIR)
    _registered = True


def build_tiny_clip(arch: str) -> torch.nn.Module:
    """A random-initialised tiny open_clip model (deterministic weights)."""
    import logging

    import open_clip

    register_tiny_clip_configs()
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # open_clip warns that no pretrained weights load
    try:
        with seeded(TINY_SEED + TINY_CLIP_ARCHS.index(arch) + 1):
            model = open_clip.create_model(arch, pretrained=None)
    finally:
        logger.setLevel(level)
    return model


def build_tiny_secondary() -> torch.nn.Module:
    """A narrow random-initialised secondary model (same class as the real one)."""
    from engine.secondary import SecondaryDiffusionModel

    with seeded(TINY_SEED + 10):
        model = SecondaryDiffusionModel(base_channels=TINY_SECONDARY_BASE_CHANNELS)
    return model
