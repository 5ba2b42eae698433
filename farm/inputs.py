"""Reading a scene's input files (init images, image prompts, input video) as pixels,
and cheap checks that they are what they claim to be (run when a scene is validated)."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np

MAX_IMAGE_PIXELS = 8192 * 8192
"""Larger input images are refused (a decompression bomb is a small file that decodes huge)."""


class InputError(ValueError):
    pass


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or "corrupt file"


def check_image(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file after checking it: the header, the size limit,
    Pillow's verify (for PNG it reads every chunk and checks its CRC), then a full decode
    (a PNG with valid CRCs can still hold too little or broken pixel data). Raises InputError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                image_format = image.format
                if width * height > MAX_IMAGE_PIXELS:
                    raise InputError(f"image is too large: {width}x{height} is more than {MAX_IMAGE_PIXELS} pixels")
                image.verify()
            with Image.open(path) as image:
                image.load()
    except FileNotFoundError:
        raise InputError("not found") from None
    except UnidentifiedImageError:
        raise InputError("not an image file (or a format Pillow cannot read)") from None
    except InputError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InputError(f"image is too large: more than {MAX_IMAGE_PIXELS} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"damaged image: {_one_line(exc)}") from None
    return width, height


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
        raise InputError(f"image '{path}' cannot be read: {_one_line(exc)}") from None
    if size is not None and rgb.size != tuple(size):
        rgb = rgb.resize(tuple(size), Image.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).copy()


def check_video(path: str | Path):
    """The input video's VideoInfo (frames counted by ffmpeg); InputError if ffmpeg cannot
    read it. Cached per file version, so validating then planning probes once."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise InputError("not found") from None
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}") from None
    return _probe(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _probe(path: str, size: int, mtime_ns: int):
    from animation.video import VideoError, probe_video

    try:
        return probe_video(path)
    except VideoError as exc:
        reason = str(exc)
        for prefix in (f"cannot read video {path}: ", f"video file not found: {path}"):
            reason = reason.removeprefix(prefix)
        raise InputError(f"not a readable video: {reason or 'not found'}") from None


def count_video_frames(path: str | os.PathLike) -> int:
    """Frames in the input video (packets counted by ffmpeg)."""
    return check_video(path).frames
