"""3D camera motion: DD's camera (the default) and the pinhole re-projection of the
previous frame through its depth map."""

import math

import numpy as np
import pytest
import torch

from animation.depth import DepthError
from animation.motion import Motion
from animation.warp2d import ImageError
from animation.warp3d import (CAMERA_MODELS, PADDING_MODES, SAMPLING_MODES, TRANSLATION_SCALE, camera_motion,
                              dd_sampling_grid, pixel_grid, rotation_matrix_xyz, sampling_grid_3d, warp_3d)

torch.set_num_threads(1)
FOV = 40.0
TAN_HALF = math.tan(math.radians(FOV / 2))


def warp_pinhole(*args, **kwargs):
    return warp_3d(*args, camera="pinhole", **kwargs)


def random_image(height=64, width=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def flat_depth(value, height=64, width=64):
    return np.full((height, width), value, np.float32)


def centroid(channel):
    """Intensity-weighted (row, column) centre of a 2D array."""
    weights = channel.astype(np.float64)
    rows, cols = np.indices(weights.shape)
    return (weights * rows).sum() / weights.sum(), (weights * cols).sum() / weights.sum()


def centred_square(size=8, extent=64):
    image = np.zeros((extent, extent, 3), np.uint8)
    start = (extent - size) // 2
    image[start:start + size, start:start + size] = 255
    return image


@pytest.mark.parametrize("camera", CAMERA_MODELS)
@pytest.mark.parametrize("sampling", SAMPLING_MODES)
@pytest.mark.parametrize("padding", PADDING_MODES)
def test_zero_motion_is_identity(sampling, padding, camera):
    image = random_image()
    depth = np.random.default_rng(1).uniform(0.5, 5.0, (64, 64)).astype(np.float32)
    out = warp_3d(image, depth, Motion(), padding_mode=padding, sampling_mode=sampling, camera=camera)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.abs(out.astype(int) - image).mean() < 1e-6


def test_float_images_stay_float():
    image = random_image().astype(np.float32) * 0.5
    out = warp_3d(image, flat_depth(2.0), Motion(), sampling_mode="bilinear")
    assert out.dtype == np.float32
    assert np.abs(out - image).max() < 1e-3


def test_pinhole_sideways_translation_moves_near_content_more_than_far():
    image = np.zeros((64, 64, 3), np.uint8)
    image[28:36, 28:36, 0] = 255  # near square, red
    image[10:14, 50:54, 1] = 255  # far marker, green
    depth = flat_depth(10.0)
    depth[28:36, 28:36] = 1.0
    out = warp_pinhole(image, depth, Motion(translation_x=10), sampling_mode="bilinear")
    # T = 10/200 scene units; image shift = T / (depth * tan(fov/2)) half-widths
    expected_near = 0.05 / (1.0 * TAN_HALF) * 32
    expected_far = 0.05 / (10.0 * TAN_HALF) * 32
    near_row, near_col = centroid(out[..., 0])
    far_row, far_col = centroid(out[..., 1])
    assert near_col == pytest.approx(31.5 - expected_near, abs=0.35)  # content slides left
    assert far_col == pytest.approx(51.5 - expected_far, abs=0.1)
    assert near_row == pytest.approx(31.5) and far_row == pytest.approx(11.5)
    assert (31.5 - near_col) > 5 * (51.5 - far_col)
    # the near square covers the background: its leading edge is not lost
    assert (out[..., 0] > 127).sum() == 64
    assert out[31, 24:31, 0].min() == 255


def test_flat_depth_translation_matches_dd_offsets():
    depth = torch.full((64, 64), 2.0, dtype=torch.float64)
    rotation, translation = camera_motion(Motion(translation_x=10, translation_y=-6))
    grid = sampling_grid_3d(depth, rotation, translation, FOV)[0].numpy()
    identity = pixel_grid(64, 64, torch.float64).numpy()
    # DD: offset = T_xy / (depth * tan(fov/2)) and it samples at grid - offset
    offset = np.array([-10, -6]) * TRANSLATION_SCALE / (2.0 * TAN_HALF)
    assert np.allclose(grid, identity - offset, atol=1e-9)


def test_pinhole_forward_translation_magnifies_the_centre():
    image = centred_square(8)
    out = warp_pinhole(image, flat_depth(1.0), Motion(translation_z=50), sampling_mode="bilinear")
    # moving 50/200 = 0.25 closer to a plane at depth 1 scales it by 1 / 0.75
    width = out[31, :, 0].astype(float).sum() / 255
    assert width == pytest.approx(8 / 0.75, abs=0.3)
    assert centroid(out[..., 0]) == pytest.approx((31.5, 31.5))
    back = warp_pinhole(image, flat_depth(1.0), Motion(translation_z=-50), sampling_mode="bilinear")
    assert back[31, :, 0].astype(float).sum() / 255 == pytest.approx(8 / 1.25, abs=0.3)


def test_pinhole_forward_translation_magnifies_near_content_more():
    image = centred_square(8)
    near = warp_pinhole(image, flat_depth(1.0), Motion(translation_z=20), sampling_mode="bilinear")
    far = warp_pinhole(image, flat_depth(4.0), Motion(translation_z=20), sampling_mode="bilinear")
    near_width = near[31, :, 0].astype(float).sum() / 255
    far_width = far[31, :, 0].astype(float).sum() / 255
    assert near_width == pytest.approx(8 / (1 - 0.1), abs=0.3)  # 0.1 closer to depth 1
    assert far_width == pytest.approx(8 / (1 - 0.1 / 4), abs=0.3)  # 0.1 closer to depth 4
    assert near_width > far_width + 0.4


@pytest.mark.parametrize("depth_value", [1.0, 5.0])
def test_pinhole_positive_rotation_3d_y_slides_content_left(depth_value):
    image = centred_square(8)
    out = warp_pinhole(image, flat_depth(depth_value), Motion(rotation_3d_y=5),
                  sampling_mode="bilinear")
    row, col = centroid(out[..., 0])
    expected = math.tan(math.radians(5)) / TAN_HALF * 32
    assert col == pytest.approx(31.5 - expected, abs=0.3)
    assert row == pytest.approx(31.5, abs=0.1)
    left = warp_pinhole(image, flat_depth(depth_value), Motion(rotation_3d_y=-5),
                   sampling_mode="bilinear")
    assert centroid(left[..., 0])[1] == pytest.approx(31.5 + expected, abs=0.3)


def test_pinhole_rotation_does_not_depend_on_depth():
    image = random_image()
    motion = Motion(rotation_3d_x=2, rotation_3d_y=-3, rotation_3d_z=4)
    depth = np.random.default_rng(2).uniform(0.5, 5.0, (64, 64)).astype(np.float32)
    rotation, translation = camera_motion(motion)
    grids = [sampling_grid_3d(torch.tensor(d, dtype=torch.float64), rotation, translation, FOV)
             for d in (depth, flat_depth(3.0))]
    assert torch.allclose(grids[0], grids[1], atol=1e-9)
    difference = warp_pinhole(image, depth, motion).astype(int) - warp_pinhole(image, flat_depth(3.0), motion)
    assert np.abs(difference).max() <= 1  # float32 rounding only


def test_pinhole_rotation_3d_x_slides_down_and_rotation_3d_z_turns_counter_clockwise():
    image = centred_square(8)
    down = warp_pinhole(image, flat_depth(2.0), Motion(rotation_3d_x=5), sampling_mode="bilinear")
    assert centroid(down[..., 0])[0] == pytest.approx(31.5 + math.tan(math.radians(5))
                                                      / TAN_HALF * 32, abs=0.3)
    marker = np.zeros((64, 64, 3), np.uint8)
    marker[30:34, 52:56] = 255  # right of centre
    turned = warp_pinhole(marker, flat_depth(2.0), Motion(rotation_3d_z=30), sampling_mode="bilinear")
    row, col = centroid(turned[..., 0])
    # counter-clockwise on screen: a point right of centre moves up (rows grow downwards)
    radius, angle = 53.5 - 31.5, math.radians(30)
    assert row == pytest.approx(31.5 - radius * math.sin(angle), abs=0.5)
    assert col == pytest.approx(31.5 + radius * math.cos(angle), abs=0.5)


def test_rotation_matrix_is_xyz_euler():
    rotation = rotation_matrix_xyz(10, 20, 30)
    assert np.allclose(rotation @ rotation.T, np.eye(3))
    about_y = rotation_matrix_xyz(0, 90, 0)
    assert np.allclose(about_y @ [1, 0, 0], [0, 0, -1])
    assert np.allclose(rotation, rotation_matrix_xyz(10, 0, 0) @ rotation_matrix_xyz(0, 20, 0)
                       @ rotation_matrix_xyz(0, 0, 30))
    rotation, translation = camera_motion(Motion(translation_x=2, translation_y=4,
                                                 translation_z=-6))
    assert np.allclose(translation, [-0.01, 0.02, 0.03]) and np.allclose(rotation, np.eye(3))


@pytest.mark.parametrize("motion", [Motion(translation_z=20),
                                    Motion(translation_x=20, rotation_3d_y=2),
                                    Motion(translation_y=-15, rotation_3d_x=3, rotation_3d_z=4)])
def test_slanted_plane_matches_the_exact_homography(motion):
    height, width = 48, 80
    normal, offset = np.array([0.0, -0.5, 1.0]), 2.0  # plane normal . p = offset
    rays = np.concatenate([pixel_grid(height, width, torch.float64).numpy()
                           * [TAN_HALF, TAN_HALF * height / width],
                           np.ones((height, width, 1))], axis=-1)
    depth = offset / (rays @ normal)
    rotation, translation = camera_motion(motion)
    grid = sampling_grid_3d(torch.tensor(depth), rotation, translation, FOV)[0].numpy()
    # exact: intersect each new-camera ray with the plane, expressed in the old camera
    new_normal = rotation.T @ normal  # p_old = (p_new - T) R^T: n.p_old = (R^T n).(p_new - T)
    scale = (offset + translation @ new_normal) / (rays @ new_normal)
    old_points = (rays * scale[..., None] - translation) @ rotation.T
    exact = old_points[..., :2] / old_points[..., 2:] / [TAN_HALF, TAN_HALF * height / width]
    error_pixels = np.abs(grid - exact) * [width / 2, height / 2]
    assert error_pixels.max() < 0.25


def test_padding_modes_fill_what_comes_from_outside():
    image = random_image()
    shift_pixels = 0.05 / (1.0 * TAN_HALF) * 32  # translation_x 10 at depth 1: ~4.4 px left
    outs = {mode: warp_3d(image, flat_depth(1.0), Motion(translation_x=10), padding_mode=mode,
                          sampling_mode="nearest") for mode in PADDING_MODES}
    assert (outs["zeros"][:, 63] == 0).all()
    assert np.array_equal(outs["border"][:, 63], image[:, 63])
    reflected = round(63.5 - (63 + shift_pixels - 63.5))  # mirrored about the right edge
    assert np.array_equal(outs["reflection"][:, 63], image[:, reflected])
    for out in outs.values():  # inside the frame all modes agree
        assert np.array_equal(out[:, :56], outs["zeros"][:, :56])


def test_near_and_far_planes_do_not_change_the_image_like_dd():
    image, depth = random_image(), flat_depth(2.0)
    motion = Motion(translation_x=3, translation_z=5, rotation_3d_y=1)
    assert np.array_equal(warp_3d(image, depth, motion, near_plane=200, far_plane=10000),
                          warp_3d(image, depth, motion, near_plane=1, far_plane=50))


def test_large_rotation_leaves_no_nan_and_uses_padding():
    image = random_image()
    out = warp_3d(image, flat_depth(2.0), Motion(rotation_3d_y=120), padding_mode="zeros")
    assert out.shape == image.shape and (out == 0).all()


@pytest.mark.parametrize("kwargs, error, words", [
    ({"depth": flat_depth(1.0, 32, 64)}, DepthError, "does not match"),
    ({"depth": flat_depth(-1.0)}, DepthError, "> 0"),
    ({"depth": flat_depth(np.nan)}, DepthError, "NaN"),
    ({"depth": np.ones((64, 64), np.int32)}, DepthError, "float"),
    ({"padding_mode": "wrap"}, ImageError, "padding mode"),
    ({"sampling_mode": "lanczos"}, ImageError, "sampling mode"),
    ({"fov": 180}, ImageError, "fov"),
    ({"near_plane": 100, "far_plane": 50}, ImageError, "near_plane"),
    ({"motion": Motion(rotation_3d_y=math.inf)}, ImageError, "rotation_3d_y"),
    ({"image": np.zeros((64, 64), np.uint8)}, ImageError, "HxWx3"),
])
def test_bad_arguments_raise_one_line_value_errors(kwargs, error, words):
    arguments = {"image": random_image(), "depth": flat_depth(1.0), "motion": Motion()}
    arguments.update(kwargs)
    with pytest.raises(error, match=words) as caught:
        warp_3d(**arguments)
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)


def _dd_transform_image_3d_grid(depth, motion, fov, near=200.0, far=10000.0):
    """DD's transform_image_3d written out with pytorch3d's 4x4 matrices: world-to-view
    [R 0; T 1] for row vectors, FoVPerspectiveCameras' projection (pixel aspect 1), the
    homogeneous divide, offsets subtracted from affine_grid's identity grid."""
    h, w = depth.shape
    rotation, translation = camera_motion(motion)
    tan_half = math.tan(math.radians(fov) / 2)
    projection = np.zeros((4, 4))
    projection[0, 0] = projection[1, 1] = 2 * near / (2 * tan_half * near)
    projection[2, 2], projection[2, 3], projection[3, 2] = far / (far - near), -far * near / (far - near), 1.0
    def ndc_xy(view):  # row vectors: clip = view @ P^T
        clip = np.concatenate([view, np.ones((len(view), 1))], 1) @ projection.T
        return clip[:, :2] / clip[:, 3:4]
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    world = np.stack([x.ravel(), y.ravel(), depth.ravel().astype(np.float64)], 1)
    world_to_new = np.eye(4)
    world_to_new[:3, :3], world_to_new[3, :3] = rotation, translation
    new_view = (np.concatenate([world, np.ones((len(world), 1))], 1) @ world_to_new)[:, :3]
    offset = (ndc_xy(new_view) - ndc_xy(world)).reshape(h, w, 2)
    identity = torch.nn.functional.affine_grid(torch.tensor([[[1.0, 0, 0], [0, 1, 0]]], dtype=torch.float64),
                                               [1, 1, h, w], align_corners=False)[0].numpy()
    return identity - offset


@pytest.mark.parametrize("motion", [Motion(translation_z=10), Motion(translation_x=7, translation_y=-4),
                                    Motion(rotation_3d_x=2, rotation_3d_y=-3, rotation_3d_z=4),
                                    Motion(translation_x=3, translation_z=-8, rotation_3d_y=1.5)])
def test_the_dd_camera_is_dds_transform_image_3d(motion):
    depth = np.random.default_rng(4).uniform(0.8, 3.0, (40, 64))
    rotation, translation = camera_motion(motion)
    grid = dd_sampling_grid(torch.tensor(depth), rotation, translation, 60.0)[0].numpy()
    assert np.allclose(grid, _dd_transform_image_3d_grid(depth, motion, 60.0), atol=1e-9)


def test_the_dd_camera_zooms_near_content_faster_than_a_pinhole_as_dd_users_know():
    image = centred_square(8)
    dd = warp_3d(image, flat_depth(1.0), Motion(translation_z=10), sampling_mode="bilinear")
    pinhole = warp_pinhole(image, flat_depth(1.0), Motion(translation_z=10), sampling_mode="bilinear")
    # DD: a grid point x at depth 1 projects to x / tan; 0.05 closer it moves by
    # x / tan * (1 / 0.95 - 1), so the output samples at u * (1 - that / x)
    magnification = 1 / (1 - (1 / 0.95 - 1) / TAN_HALF)
    assert dd[31, :, 0].astype(float).sum() / 255 == pytest.approx(8 * magnification, abs=0.3)
    assert pinhole[31, :, 0].astype(float).sum() / 255 == pytest.approx(8 / 0.95, abs=0.3)
    # vertical motion is scaled like horizontal on a wide frame (DD's square NDC)
    wide = np.zeros((40, 64, 3), np.uint8)
    wide[18:22, 30:34] = 255
    moved = warp_3d(wide, flat_depth(2.0, 40, 64), Motion(translation_y=10), sampling_mode="bilinear")
    expected_rows = 0.05 / (2.0 * TAN_HALF) * 20  # NDC offset times half the height in pixels
    assert centroid(moved[..., 0])[0] == pytest.approx(19.5 + expected_rows, abs=0.2)
