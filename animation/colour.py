"""Colour coherence: match a frame's colour distribution to a reference (usually frame 0).

Deforum's "Match Frame 0 RGB/HSV/LAB": convert both images to the colour space, match each
channel's histogram to the reference's (exact quantile mapping, the algorithm of
scikit-image's ``match_histograms``), convert back. Stops the slow colour drift of long
animations. Uses OpenCV's 8-bit conversions (HSV hue in 0..179, LAB offset by 128).
"""

from __future__ import annotations

import cv2
import numpy as np

from animation.warp2d import ImageError, check_image

COLOUR_MODES = ("none", "RGB", "HSV", "LAB")

_TO_SPACE = {"HSV": cv2.COLOR_RGB2HSV, "LAB": cv2.COLOR_RGB2LAB}
_FROM_SPACE = {"HSV": cv2.COLOR_HSV2RGB, "LAB": cv2.COLOR_LAB2RGB}


class ColourError(ImageError):
    """Unknown colour-coherence mode."""


def normalise_colour_mode(mode: str | None) -> str:
    """Return the canonical mode name (case-insensitive; None means "none")."""
    if mode is None:
        return "none"
    for known in COLOUR_MODES:
        if isinstance(mode, str) and mode.strip().lower() == known.lower():
            return known
    raise ColourError(f"unknown colour coherence mode {mode!r}; "
                      f"expected one of {list(COLOUR_MODES)}")


def match_channel(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Map uint8 ``source`` values so their histogram matches ``reference``'s (float32 out)."""
    src_counts = np.bincount(source.ravel(), minlength=256)
    ref_counts = np.bincount(reference.ravel(), minlength=256)
    src_quantiles = np.cumsum(src_counts) / source.size
    present = ref_counts > 0
    ref_values = np.flatnonzero(present).astype(np.float64)
    ref_quantiles = np.cumsum(ref_counts[present]) / reference.size
    lookup = np.interp(src_quantiles, ref_quantiles, ref_values)
    return lookup[source].astype(np.float32)


def match_histograms(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-channel histogram matching of two uint8 HxWxC images (sizes may differ)."""
    channels = [match_channel(image[..., c], reference[..., c]) for c in range(image.shape[2])]
    return np.clip(np.rint(np.stack(channels, axis=2)), 0, 255).astype(np.uint8)


def _as_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def match_colours(image: np.ndarray, reference: np.ndarray, mode: str = "LAB") -> np.ndarray:
    """Return ``image`` (HxWx3 RGB) with its colours matched to ``reference`` in ``mode``.

    ``mode`` is "LAB", "HSV", "RGB" or "none" (returns a copy, unchanged). Output is uint8.
    """
    check_image(image)
    check_image(reference, "reference")
    mode = normalise_colour_mode(mode)
    image, reference = _as_uint8(image), _as_uint8(reference)
    if mode == "none":
        return image.copy()
    if mode == "RGB":
        return match_histograms(image, reference)
    matched = match_histograms(cv2.cvtColor(image, _TO_SPACE[mode]),
                               cv2.cvtColor(reference, _TO_SPACE[mode]))
    return cv2.cvtColor(matched, _FROM_SPACE[mode])
