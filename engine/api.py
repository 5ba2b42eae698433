"""The notebook API: load models once, render specs to PIL images.

    from engine.api import load_models, render
    renderer = load_models(spec)            # a RenderSpec, a ModelSetSpec or a model name
    image = render(renderer, spec)          # PIL.Image
    images = render_images(renderer, spec, seeds=[1, 2, 3, 4])   # in lockstep, one UNet call per step
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from engine.models import ModelSet
from engine.render import ImageLike, Renderer
from engine.spec import ModelSetSpec, RenderSpec

__all__ = ["load_models", "render", "render_images"]


def load_models(
    spec_or_names: RenderSpec | ModelSetSpec | str | None = None,
    device: torch.device | str | None = None,
    **model_set_fields: object,
) -> Renderer:
    """Load a model set once and return a ``Renderer`` for it.

    ``spec_or_names``: a RenderSpec (its ``models``), a ModelSetSpec, a diffusion model
    name (other ModelSetSpec fields from ``model_set_fields``), or None (defaults).
    ``device``: default CUDA if present, else CPU.
    """
    if isinstance(spec_or_names, RenderSpec):
        models = spec_or_names.models
    elif isinstance(spec_or_names, ModelSetSpec):
        models = spec_or_names
    elif isinstance(spec_or_names, str):
        fields = dict(model_set_fields)
        if "clip_models" in fields:
            fields["clip_models"] = tuple(fields["clip_models"])  # type: ignore[arg-type]
        models = ModelSetSpec(diffusion_model=spec_or_names, **fields)  # type: ignore[arg-type]
    elif spec_or_names is None:
        models = ModelSetSpec(**model_set_fields)  # type: ignore[arg-type]
    else:
        raise TypeError("load_models takes a RenderSpec, a ModelSetSpec, a model name or None")
    return Renderer(ModelSet(models, device))


def render(
    renderer: Renderer,
    spec: RenderSpec,
    init: ImageLike | None = None,
    image_prompt_images: Mapping[str, ImageLike] | None = None,
    on_intermediate: Callable[[int, np.ndarray], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """Render ``spec`` with a loaded ``renderer``; returns a PIL RGB image."""
    from PIL import Image

    pixels = renderer.render(
        spec,
        init=init,
        image_prompt_images=image_prompt_images,
        on_intermediate=on_intermediate,
        should_stop=should_stop,
    )
    return Image.fromarray(pixels, mode="RGB")


def render_images(
    renderer: Renderer,
    spec: RenderSpec,
    seeds: Sequence[int],
    inits: Sequence[ImageLike | None] | None = None,
    image_prompt_images: Mapping[str, ImageLike] | None = None,
    should_stop: Callable[[], bool] | None = None,
):
    """``spec`` rendered with each of ``seeds`` together (``Renderer.render_images``: one
    UNet call per step for all, faster per image on a GPU); returns PIL RGB images."""
    import dataclasses

    from PIL import Image

    specs = [dataclasses.replace(spec, seed=seed) for seed in seeds]
    pixels = renderer.render_images(specs, inits, image_prompt_images, should_stop=should_stop)
    return [Image.fromarray(image, mode="RGB") for image in pixels]
