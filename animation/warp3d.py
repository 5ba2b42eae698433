"""3D camera motion: re-project the previous frame through a moving camera.

Disco Diffusion v5.7 moves a pytorch3d ``FoVPerspectiveCameras`` by ``R, T`` and samples
the previous frame with ``grid_sample``; we write the same geometry out in plain torch.

Camera frame (as DD's sampling grid): x right, y down, z forward; depth > 0 is the
distance along z, in DD's units (``animation.depth.depth_from_disparity``, about 1 to 3).
A point in the previous camera moves into the new camera as the row vector
``p_new = p_old @ R + T`` (pytorch3d's convention) with

- ``T = (-translation_x, translation_y, -translation_z) * TRANSLATION_SCALE`` (1/200),
- ``R = Rx(rotation_3d_x) @ Ry(rotation_3d_y) @ Rz(rotation_3d_z)`` (degrees; pytorch3d's
  ``euler_angles_to_matrix(..., "XYZ")``).

What the viewer sees, per unit of motion:

- ``translation_x`` > 0: camera moves right; content slides left, near content farther.
- ``translation_y`` > 0: content slides down (camera moves up; DD does not negate y).
- ``translation_z`` > 0: camera moves forward; content grows from the centre.
- ``rotation_3d_x`` > 0: content slides down (camera tilts up).
- ``rotation_3d_y`` > 0: content slides left (camera pans right).
- ``rotation_3d_z`` > 0: content turns counter-clockwise as displayed.

Two camera models (``camera``):

- ``dd`` (default): DD's ``transform_image_3d`` exactly. Each pixel's grid coordinates
  (``linspace(-1, 1)``, not unprojected) with its depth are a world point; both cameras
  project ``(x, y) / (tan(fov / 2) * z)`` (square NDC whatever the aspect); each output
  pixel samples at itself minus its own point's offset, in one step. So near content
  moves faster than in a true camera (forward zoom ``1 / (tan(fov/2) * depth)`` times a
  pinhole's), vertical motion is scaled like horizontal, and a near object moving sideways
  loses its leading edge to the background. This is the motion DD users tuned their
  keyframes to.
- ``pinhole``: a true pinhole camera (pixels unprojected with ``fov`` across the width,
  square pixels). Each output pixel gets the previous-frame point the motion carries onto
  it, found by fixed-point steps (sample the depth under the estimate, move it by the
  miss) from the pixel's own depth and from the nearest depth within reach; if both
  land, the nearer wins (near content covers far content); if neither lands (background
  newly revealed), the farther one stretches the background into the gap. Pure rotations
  are exact.

Either way the previous frame is sampled with ``grid_sample`` (align_corners=False,
``padding_mode`` outside the frame). ``near_plane``/``far_plane`` are validated but, as in
DD (they only reached pytorch3d's discarded clip-space z), they do not change the image.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from animation.depth import check_depth_map
from animation.motion import Motion
from animation.warp2d import ImageError, check_image

TRANSLATION_SCALE = 1.0 / 200.0
PADDING_MODES = ("border", "reflection", "zeros")
CAMERA_MODELS = ("dd", "pinhole")
SAMPLING_MODES = ("bicubic", "bilinear", "nearest")
MIN_CAMERA_DEPTH = 1e-6  # rays at or behind a camera have no source pixel
OUTSIDE = 4.0  # grid value for pixels with no source: handled by the padding mode
SOLVER_ITERATIONS = 4  # fixed-point steps finding each output pixel's source
LANDING_TOLERANCE = 0.5  # pixels: a source "lands" on its output pixel within this
MAX_OCCLUSION_RADIUS = 64  # pixels searched for nearer content that may cover a pixel


def check_option(value: str, allowed: tuple[str, ...], what: str) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise ImageError listing them."""
    if value not in allowed:
        raise ImageError(f"unknown {what} {value!r}; expected one of {sorted(allowed)}")
    return value


def check_camera(near_plane: float, far_plane: float, fov: float) -> None:
    """Raise ImageError unless 0 < near < far (finite) and 0 < fov < 180 degrees."""
    for name, value in (("near_plane", near_plane), ("far_plane", far_plane), ("fov", fov)):
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ImageError(f"{name} must be a finite number, got {value!r}")
    if not 0 < near_plane < far_plane:
        raise ImageError(f"need 0 < near_plane < far_plane, got {near_plane} and {far_plane}")
    if not 0 < fov < 180:
        raise ImageError(f"fov must be between 0 and 180 degrees, got {fov}")


def rotation_matrix_xyz(x_degrees: float, y_degrees: float, z_degrees: float) -> np.ndarray:
    """``Rx @ Ry @ Rz`` (right-handed, column-vector form), like pytorch3d's "XYZ" Euler."""
    x, y, z = (math.radians(angle) for angle in (x_degrees, y_degrees, z_degrees))
    rx = np.array([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]])
    return rx @ ry @ rz


def camera_motion(motion: Motion) -> tuple[np.ndarray, np.ndarray]:
    """DD's (R, T) for a frame's motion: a point moves as ``p_new = p_old @ R + T``."""
    values = {name: getattr(motion, name) for name in (
        "translation_x", "translation_y", "translation_z",
        "rotation_3d_x", "rotation_3d_y", "rotation_3d_z")}
    for name, value in values.items():
        if not math.isfinite(value):
            raise ImageError(f"motion {name} must be a finite number, got {value}")
    rotation = rotation_matrix_xyz(motion.rotation_3d_x, motion.rotation_3d_y,
                                   motion.rotation_3d_z)
    translation = np.array([-motion.translation_x, motion.translation_y,
                            -motion.translation_z]) * TRANSLATION_SCALE
    return rotation, translation


def pixel_grid(height: int, width: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """HxWx2 pixel-centre coordinates (x, y) in grid_sample's [-1, 1] (align_corners=False)."""
    x_ndc = (torch.arange(width, dtype=dtype, device=device) * 2 + 1) / width - 1
    y_ndc = (torch.arange(height, dtype=dtype, device=device) * 2 + 1) / height - 1
    y_grid, x_grid = torch.meshgrid(y_ndc, x_ndc, indexing="ij")
    return torch.stack([x_grid, y_grid], dim=-1)


class PinholeMotion:
    """A pinhole camera (``fov`` across the width, square pixels) moved by ``R, T``.

    Image points are grid coordinates in [-1, 1]; ``forward`` takes a previous-frame point
    with its depth to the new frame, ``backward`` a new-frame point with its new depth back.
    """

    def __init__(self, rotation: np.ndarray, translation: np.ndarray, fov: float,
                 height: int, width: int, dtype=torch.float32, device=None):
        tan_half = math.tan(math.radians(fov) / 2.0)
        self.scale = torch.tensor([tan_half, tan_half * height / width], dtype=dtype,
                                  device=device)
        self.rotation = torch.as_tensor(rotation, dtype=dtype, device=device)
        self.translation = torch.as_tensor(translation, dtype=dtype, device=device)

    def unproject(self, points: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        return torch.cat([points * self.scale * depth[..., None], depth[..., None]], dim=-1)

    def project(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        depth = xyz[..., 2]
        safe = torch.where(depth > MIN_CAMERA_DEPTH, depth, torch.ones_like(depth))
        points = xyz[..., :2] / safe[..., None] / self.scale
        return points, torch.where(depth > MIN_CAMERA_DEPTH, depth, torch.zeros_like(depth))

    def forward(self, points: torch.Tensor, depth: torch.Tensor):
        """(points, depth) in the new frame of previous-frame points; depth 0 = behind."""
        return self.project(self.unproject(points, depth) @ self.rotation + self.translation)

    def backward(self, points: torch.Tensor, new_depth: torch.Tensor):
        """(points, depth) in the previous frame of new-frame points at ``new_depth``."""
        return self.project((self.unproject(points, new_depth) - self.translation)
                            @ self.rotation.T)


def sample_depth(depth: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Nearest-pixel depth at HxWx2 grid points (edge values outside the frame).

    Nearest, not bilinear: a blend of near and far depth across an object's edge would
    place the edge pixels in between and smear the edge over the parallax distance.
    """
    return torch.nn.functional.grid_sample(depth[None, None], points[None], mode="nearest",
                                           padding_mode="border", align_corners=False)[0, 0]


def nearest_depth_around(depth: torch.Tensor, radius: int) -> torch.Tensor:
    """Minimum depth in a (2 radius + 1)-pixel square around each pixel."""
    if radius < 1:
        return depth
    size = 2 * radius + 1
    negative = -depth[None, None]
    rows = torch.nn.functional.max_pool2d(negative, (1, size), stride=1, padding=(0, radius))
    both = torch.nn.functional.max_pool2d(rows, (size, 1), stride=1, padding=(radius, 0))
    return -both[0, 0]


def solve_source(camera: PinholeMotion, depth: torch.Tensor, targets: torch.Tensor,
                 guess_depth: torch.Tensor, pixel_size: torch.Tensor, iterations: int):
    """Previous-frame points that the motion carries onto ``targets``, by fixed-point steps.

    Starts from the target's ray at ``guess_depth`` (carried through the motion), then
    repeatedly samples the depth under the estimate and corrects it by the miss. Returns
    (points, new-frame depth, miss in pixels).
    """
    start_depth = camera.forward(targets, guess_depth)[1]
    points = camera.backward(targets, start_depth)[0]
    for _ in range(iterations):
        landed, new_depth = camera.forward(points, sample_depth(depth, points))
        points = points + (targets - landed)
    landed, new_depth = camera.forward(points, sample_depth(depth, points))
    miss = ((landed - targets) / pixel_size).norm(dim=-1)
    miss = torch.where((new_depth > 0) & (start_depth > 0), miss, torch.full_like(miss, math.inf))
    return points, new_depth, miss


def sampling_grid_3d(depth: torch.Tensor, rotation: np.ndarray, translation: np.ndarray,
                     fov: float) -> torch.Tensor:
    """The 1xHxWx2 ``grid_sample`` grid (x, y in [-1, 1], align_corners=False).

    ``depth`` is the previous frame's HxW depth; ``rotation``/``translation`` move a point
    from the previous camera into the new one (``p_new = p_old @ R + T``). Each output
    pixel gets the previous-frame point that lands on it: searched from that pixel's own
    depth and from the nearest depth that could reach it; when both land, the nearer
    wins (occlusion); when neither does (newly revealed background), the farther one is
    used, which stretches the background into the gap.
    """
    height, width = depth.shape
    camera = PinholeMotion(rotation, translation, fov, height, width, depth.dtype, depth.device)
    targets = pixel_grid(height, width, depth.dtype, depth.device)
    pixel_size = torch.tensor([2.0 / width, 2.0 / height], dtype=depth.dtype,
                              device=depth.device)
    own = solve_source(camera, depth, targets, depth, pixel_size, SOLVER_ITERATIONS)
    shift = ((own[0] - targets) / pixel_size).norm(dim=-1)
    shift = shift[torch.isfinite(shift)]
    largest_shift = float(shift.max()) if shift.numel() else 0.0
    radius = int(min(math.ceil(largest_shift) + 1, MAX_OCCLUSION_RADIUS))
    near = solve_source(camera, depth, targets, nearest_depth_around(depth, radius),
                        pixel_size, SOLVER_ITERATIONS)
    own_lands, near_lands = own[2] < LANDING_TOLERANCE, near[2] < LANDING_TOLERANCE
    use_near = (near_lands & (~own_lands | (near[1] < own[1]))) | \
        (~own_lands & ~near_lands & (near[1] > own[1]))
    grid = torch.where(use_near[..., None], near[0], own[0])
    missing = ~torch.isfinite(torch.where(use_near, near[2], own[2]))
    grid = torch.where(missing[..., None], torch.full_like(grid, OUTSIDE),
                       grid.clamp(-OUTSIDE, OUTSIDE))
    return grid[None]


def dd_sampling_grid(depth: torch.Tensor, rotation: np.ndarray, translation: np.ndarray,
                     fov: float) -> torch.Tensor:
    """DD's 1xHxWx2 ``grid_sample`` grid: the pixel grid minus each pixel's projected offset.

    As ``transform_image_3d``: the world point of pixel (i, j) is (linspace x, linspace y,
    its depth); both cameras project with ``(x, y) / (tan(fov / 2) * z)``; a point that
    ends at or behind the new camera has no source (the padding mode fills it).
    """
    height, width = depth.shape
    focal = 1.0 / math.tan(math.radians(fov) / 2.0)
    ys = torch.linspace(-1.0, 1.0, height, dtype=depth.dtype, device=depth.device)
    xs = torch.linspace(-1.0, 1.0, width, dtype=depth.dtype, device=depth.device)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    world = torch.stack([x, y, depth], dim=-1)
    moved = world @ torch.as_tensor(rotation, dtype=depth.dtype, device=depth.device) \
        + torch.as_tensor(translation, dtype=depth.dtype, device=depth.device)
    ahead = moved[..., 2] > MIN_CAMERA_DEPTH
    safe = torch.where(ahead, moved[..., 2], torch.ones_like(moved[..., 2]))
    offset = moved[..., :2] * focal / safe[..., None] - world[..., :2] * focal / depth[..., None]
    grid = pixel_grid(height, width, depth.dtype, depth.device) - offset
    grid = torch.where(ahead[..., None], grid.clamp(-OUTSIDE, OUTSIDE), torch.full_like(grid, OUTSIDE))
    return grid[None]


def warp_3d(image: np.ndarray, depth: np.ndarray, motion: Motion, near_plane: float = 200.0,
            far_plane: float = 10000.0, fov: float = 40.0, padding_mode: str = "border",
            sampling_mode: str = "bicubic", device: str | torch.device | None = None,
            camera: str = "dd") -> np.ndarray:
    """Re-project ``image`` (HxWx3 uint8 or float32, 0-255) by DD 3D ``motion`` with the
    ``camera`` model (``dd`` or ``pinhole``, see the module's text).

    ``depth`` is the image's HxW depth (float, > 0; ``DepthModel.predict``). Returns the
    same shape and dtype; uint8 results are rounded and clipped, float32 ones are not.
    """
    check_image(image)
    height, width = image.shape[:2]
    check_depth_map(depth, (height, width))
    check_option(padding_mode, PADDING_MODES, "padding mode")
    check_option(sampling_mode, SAMPLING_MODES, "sampling mode")
    check_option(camera, CAMERA_MODELS, "camera model")
    check_camera(near_plane, far_plane, fov)
    rotation, translation = camera_motion(motion)
    device = torch.device(device) if device is not None else torch.device("cpu")
    depth_t = torch.as_tensor(np.ascontiguousarray(depth), dtype=torch.float32, device=device)
    grid_of = dd_sampling_grid if camera == "dd" else sampling_grid_3d
    grid = grid_of(depth_t, rotation, translation, fov)
    pixels = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)),
                             device=device).float()[None]
    warped = torch.nn.functional.grid_sample(pixels, grid, mode=sampling_mode,
                                             padding_mode=padding_mode, align_corners=False)
    out = warped[0].permute(1, 2, 0).cpu().numpy()
    if image.dtype == np.uint8:
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    return out.astype(np.float32)
