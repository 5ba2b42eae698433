"""Reading a scene's input files (init images, image prompts, input video) as pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class InputError(ValueError):
    pass


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """An RGB uint8 HxWx3 image, optionally resized to (width, height); one-line errors."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            rgb = image.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"image '{path}' not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"image '{path}' cannot be read: {' '.join(str(exc).split()) or 'corrupt file'}") from None
    if size is not None and rgb.size != tuple(size):
        rgb = rgb.resize(tuple(size), Image.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).copy()


def count_video_frames(path: str | Path) -> int:
    """Frames in the input video (decoded count)."""
    from animation.video import probe_video

    return probe_video(path).frames
