"""Turbo mode (DD) / diffusion cadence (Deforum): diffuse only some frames, blend the rest.

DD v5.7's schedule (its turbo_mode, used with 3D; the math works with any warp):

- Frames ``0..turbo_preroll`` are all diffused. After the preroll a frame is diffused only
  when ``frame % turbo_steps == 0``.
- Two warped chains run alongside: the *newer* chain is the last diffused output warped
  forward one frame at a time; the *older* chain is the diffused output before it, warped
  the same way. (At a diffused frame the newer chain's warp becomes the older chain; the
  older chain starts at ``turbo_preroll`` with the warp of the frame before it.)
- A skipped frame is ``newer * w + older * (1 - w)`` with ``w = (frame % turbo_steps + 1) /
  turbo_steps``. DD's weights start at 2/n and reach 1 (all newer chain) on the last
  skipped frame before the next diffused one; with turbo_steps 2 the older chain gets
  weight 0. We keep DD's weights so DD settings look the same.
- The blended frame is only written out; the chain continues from the newer chain.
- A diffused frame after the first is written as ``1/turbo_steps`` of its new image over
  the warped frame it started from (DD's 3D turbo: less flicker at the diffused frames);
  the chains continue from the new image itself (``turbo_saved_frame``).
"""

from __future__ import annotations

import numpy as np

from animation.warp2d import ImageError, check_image


def _check_schedule(turbo_steps: int, turbo_preroll: int = 0) -> None:
    if not isinstance(turbo_steps, (int, np.integer)) or turbo_steps < 1:
        raise ImageError(f"turbo_steps must be an integer >= 1, got {turbo_steps!r}")
    if not isinstance(turbo_preroll, (int, np.integer)) or turbo_preroll < 0:
        raise ImageError(f"turbo_preroll must be an integer >= 0, got {turbo_preroll!r}")


def is_diffused_frame(frame: int, turbo_steps: int, turbo_preroll: int) -> bool:
    """True when DD's turbo mode runs diffusion on ``frame`` (False = blended in-between)."""
    _check_schedule(turbo_steps, turbo_preroll)
    if frame < 0:
        raise ImageError(f"frame index must be >= 0, got {frame}")
    return frame <= turbo_preroll or frame % turbo_steps == 0


def turbo_weight(frame: int, turbo_steps: int) -> float:
    """DD's weight of the newer warped chain for an in-between frame."""
    _check_schedule(turbo_steps)
    return ((frame % turbo_steps) + 1) / turbo_steps


def blend_chains(older: np.ndarray, newer: np.ndarray, weight: float) -> np.ndarray:
    """``newer * weight + older * (1 - weight)``, rounded to uint8."""
    check_image(older, "older")
    check_image(newer, "newer")
    if older.shape != newer.shape:
        raise ImageError(f"chains differ in size: {older.shape} vs {newer.shape}")
    if not 0.0 <= weight <= 1.0:
        raise ImageError(f"blend weight must be in [0, 1], got {weight}")
    out = newer.astype(np.float32) * weight + older.astype(np.float32) * (1.0 - weight)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def turbo_blend(older: np.ndarray, newer: np.ndarray, frame: int, turbo_steps: int) -> np.ndarray:
    """The in-between frame DD writes for ``frame``: the two warped chains blended."""
    return blend_chains(older, newer, turbo_weight(frame, turbo_steps))


def turbo_saved_frame(diffused: np.ndarray, warped_previous: np.ndarray, turbo_steps: int) -> np.ndarray:
    """What DD's turbo writes out for a diffused frame after the first: ``1/turbo_steps`` of
    its new image over the warped previous frame it started from (the chain goes on from
    the new image)."""
    _check_schedule(turbo_steps)
    return blend_chains(warped_previous, diffused, 1.0 / turbo_steps)
