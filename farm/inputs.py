"""Reading a scene's input files (init images, image prompts, input video) as pixels,
and cheap checks that they are what they claim to be (run when a scene is validated)."""

from __future__ import annotations

import functools
import os
import re
import warnings
from pathlib import Path

import numpy as np

MAX_IMAGE_PIXELS = 8192 * 8192
"""Larger input images are refused (a decompression bomb is a small file that decodes huge)."""


class InputError(ValueError):
    pass


_URL = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.\-]*://")


def is_url(text: object) -> bool:
    """An input path given as a URL (``scheme://...``: http, https, file, s3, ...)."""
    return isinstance(text, str) and _URL.match(text) is not None


def url_problem(text: str) -> str | None:
    """The one-line problem with an input path that is a URL, or None for a path. URLs are
    never fetched."""
    if not is_url(text):
        return None
    return (f"'{text.strip()}' is a URL; URLs are not read: download the file into the "
            "scene's folder and give its path")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or "corrupt file"


IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM", "TGA")
"""Pillow formats read as input images: raster formats Pillow decodes itself (EPS would
need Ghostscript, WMF a Windows handler). JPEG covers MPO, how phones store photos."""
IMAGE_FORMAT_NAMES = ("PNG", "JPEG", "WebP", "BMP", "TIFF", "GIF", "PPM", "TGA")


def check_image(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file as shown (after its EXIF orientation) after checking
    it: the header, the size limit, Pillow's verify (for PNG it reads every chunk and checks
    its CRC), then a full decode (a PNG with valid CRCs can still hold too little or broken
    pixel data). Raises InputError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise InputError(f"image is too large: {width}x{height} is more than {MAX_IMAGE_PIXELS} pixels")
                image.verify()
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                image.load()
                width, height = _upright(image).size
    except FileNotFoundError:
        raise InputError("not found") from None
    except UnidentifiedImageError:
        raise InputError(f"not an image file in a format read here ({', '.join(IMAGE_FORMAT_NAMES)})") from None
    except InputError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise InputError(f"image is too large: more than {MAX_IMAGE_PIXELS} pixels") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"damaged image: {_one_line(exc)}") from None
    return width, height


def _upright(image):
    """The image turned as viewers show it (its EXIF orientation applied); as it is when
    the EXIF block is too damaged to read, as viewers do."""
    from PIL import ImageOps

    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a malformed EXIF block can raise almost anything
        return image


def to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """uint8 levels of a one-channel image of Pillow mode I;16*, I or F (Pillow clips them
    at 255 instead of scaling). I;16: 0..65535. I: 0..65535 when every value fits (Pillow's
    mode for some 16-bit files), else 0..2**31-1. F: 0..1 when the largest finite value is
    <= 1, else 0..255 when it is <= 255, else 0..65535. Values outside the range are
    clipped, NaN is black, +inf white."""
    values = np.array(values, dtype=np.float32)  # a copy, changed in place below
    peak = float(np.max(values, where=np.isfinite(values), initial=0.0))
    if mode.startswith("I;16"):
        top = 65535.0
    elif mode == "I":
        top = 65535.0 if peak <= 65535 else float(2**31 - 1)
    else:
        top = 1.0 if peak <= 1 else 255.0 if peak <= 255 else 65535.0
    np.nan_to_num(values, copy=False, nan=0.0, posinf=top, neginf=0.0)
    np.clip(values, 0.0, top, out=values)
    values *= 255.0 / top
    return np.rint(values, out=values).astype(np.uint8)


def _rgb(image):
    """An RGB copy of an image of any mode Pillow reads; 16-bit, 32-bit and float grey
    are scaled to 8 bits (see ``to_8bit``), not clipped."""
    from PIL import Image

    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return Image.fromarray(to_8bit(np.asarray(image), image.mode), "L").convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """An RGB uint8 HxWx3 image as viewers show it (EXIF orientation applied), optionally
    resized to (width, height); 16-bit and float grey scaled as ``to_8bit`` says. One-line
    errors."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=IMAGE_FORMATS) as image:
            image.load()
            rgb = _rgb(_upright(image))
    except FileNotFoundError:
        raise InputError(f"image '{path}' not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"image '{path}' cannot be read: {_one_line(exc)}") from None
    if size is not None and rgb.size != tuple(size):
        rgb = rgb.resize(tuple(size), Image.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).copy()


def check_video(path: str | Path):
    """The input video's VideoInfo (frames counted by ffmpeg) after checking that its frames
    are within MAX_IMAGE_PIXELS and that its first frame decodes; InputError if not (also for
    a playlist such as HLS or concat, which would read other files, and for a check that
    takes longer than animation.video.PROBE_TIMEOUT_S). Cached per file version, so
    validating then planning probes once."""
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
    from animation.video import VideoError, VideoTooLarge, decode_first_frame, probe_video

    try:
        info = probe_video(path, max_pixels=MAX_IMAGE_PIXELS)
        decode_first_frame(path, max_pixels=MAX_IMAGE_PIXELS)
    except VideoTooLarge as exc:
        raise InputError(f"frame size {exc.width}x{exc.height} is more than {exc.max_pixels} pixels") from None
    except VideoError as exc:
        reason = str(exc)
        for prefix in (f"cannot read video {path}: ", f"cannot decode video {path}: ",
                       f"video file not found: {path}"):
            reason = reason.removeprefix(prefix)
        if reason.startswith("it is "):  # a playlist or input script: "it is an HLS playlist, ..."
            raise InputError(reason) from None
        raise InputError(f"not a readable video: {reason or 'not found'}") from None
    return info


def count_video_frames(path: str | os.PathLike) -> int:
    """Frames in the input video (packets counted by ffmpeg)."""
    return check_video(path).frames
