"""2D affine warp (DD conventions) and turbo-mode blending of warped chains."""

import math

import numpy as np
import pytest

from animation.motion import Motion
from animation.turbo import blend_chains, is_diffused_frame, turbo_blend, turbo_saved_frame, turbo_weight
from animation.warp2d import ImageError, affine_matrix_2d, warp_2d


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_identity_motion_leaves_image_unchanged():
    image = random_image(48, 64)
    assert np.array_equal(warp_2d(image, Motion()), image)
    assert np.allclose(affine_matrix_2d(Motion(), 64, 48), [[1, 0, 0], [0, 1, 0]])


def test_pure_translation_moves_by_exact_pixels():
    image = random_image(48, 64)
    out = warp_2d(image, Motion(translation_x=5, translation_y=-3))
    # +x moves content right, -y moves it up; wrap border makes it an exact roll
    assert np.array_equal(out, np.roll(image, (-3, 5), axis=(0, 1)))
    assert np.array_equal(out[10, 20], image[13, 15])


@pytest.mark.parametrize("border, wrapped", [("wrap", True), ("replicate", False),
                                             ("reflect", False)])
def test_border_modes(border, wrapped):
    image = np.zeros((32, 32, 3), np.uint8)
    image[:, 30] = 255  # a bright column near the right edge
    out = warp_2d(image, Motion(translation_x=4), border=border)
    # the column leaves through the right edge; only wrap brings it back on the left
    assert (out[:, 2] == 255).all() == wrapped
    assert out[:, :4].max() == (255 if wrapped else 0)


def test_zoom_two_magnifies_the_centre():
    image = np.zeros((64, 64, 3), np.uint8)
    image[30:34, 30:34] = 255  # 4x4 square around the centre (31.5, 31.5)
    out = warp_2d(image, Motion(zoom=2.0))
    rows, cols = np.nonzero(out[..., 0] > 127)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (28, 35, 28, 35)
    out_half = warp_2d(image, Motion(zoom=0.5), border="replicate")
    bright = np.argwhere(out_half[..., 0] > 127)
    assert np.array_equal(bright, [[31, 31], [31, 32], [32, 31], [32, 32]])
    tiled = warp_2d(image, Motion(zoom=0.5), border="wrap")  # zooming out tiles the image
    assert tiled[0, 0, 0] > 127 and tiled[63, 63, 0] > 127


def test_positive_angle_rotates_counter_clockwise_as_displayed():
    image = random_image(64, 64)
    image[0, 63] = (255, 0, 0)  # marker in the top-right corner
    out = warp_2d(image, Motion(angle=90))
    assert np.array_equal(out, np.rot90(image, 1))  # numpy's rot90 is counter-clockwise
    assert np.array_equal(out[0, 0], [255, 0, 0])  # top-right corner went to top-left
    assert np.array_equal(warp_2d(image, Motion(angle=-90)), np.rot90(image, -1))


def test_translation_is_applied_before_rotation_like_dd():
    image = random_image(64, 64)
    out = warp_2d(image, Motion(angle=90, translation_x=5))
    # DD: R @ T, so the +x translation is itself rotated: content ends up moved *up*
    assert np.array_equal(out, np.rot90(np.roll(image, 5, axis=1), 1))
    assert np.array_equal(out, np.roll(np.rot90(image, 1), -5, axis=0))
    assert not np.array_equal(out, np.roll(np.rot90(image, 1), 5, axis=1))


def test_matrix_matches_dd_composition():
    angle, zoom, tx, ty, width, height = 12.5, 1.07, 3.0, -4.0, 128, 96
    matrix = affine_matrix_2d(Motion(angle=angle, zoom=zoom, translation_x=tx,
                                     translation_y=ty), width, height)
    theta = math.radians(angle)
    scaled_rotation = zoom * np.array([[math.cos(theta), math.sin(theta)],
                                       [-math.sin(theta), math.cos(theta)]])
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    expected_offset = centre - scaled_rotation @ centre + scaled_rotation @ [tx, ty]
    assert np.allclose(matrix[:, :2], scaled_rotation)
    assert np.allclose(matrix[:, 2], expected_offset)
    # the centre stays fixed when there is no translation
    still = affine_matrix_2d(Motion(angle=angle, zoom=zoom), width, height)
    assert np.allclose(still @ [*centre, 1.0], centre)


def test_sampling_modes_differ_on_subpixel_shift_and_dtype_is_kept():
    image = random_image(32, 32)
    motion = Motion(translation_x=0.5)
    nearest = warp_2d(image, motion, sampling="nearest")
    bilinear = warp_2d(image, motion, sampling="bilinear")
    bicubic = warp_2d(image, motion, sampling="bicubic")
    assert not np.array_equal(nearest, bilinear)
    assert not np.array_equal(bilinear, bicubic)
    expected = (image.astype(np.float32) + np.roll(image, 1, axis=1)) / 2
    assert np.abs(bilinear.astype(np.float32) - expected).max() <= 1.0
    as_float = warp_2d(image.astype(np.float32), motion)
    assert as_float.dtype == np.float32
    assert np.allclose(as_float, expected, atol=0.01)


@pytest.mark.parametrize("kwargs, message", [
    ({"motion": Motion(zoom=0)}, "zoom must be > 0"),
    ({"motion": Motion(angle=float("nan"))}, "angle must be a finite"),
    ({"border": "clamp"}, "unknown border mode 'clamp'"),
    ({"sampling": "lanczos"}, "unknown sampling mode 'lanczos'"),
])
def test_bad_arguments_give_clear_errors(kwargs, message):
    arguments = {"image": random_image(8, 8), "motion": Motion(), **kwargs}
    with pytest.raises(ImageError, match=message):
        warp_2d(**arguments)


def test_bad_image_gives_clear_error():
    with pytest.raises(ValueError, match=r"HxWx3"):
        warp_2d(np.zeros((8, 8), np.uint8), Motion())
    with pytest.raises(ValueError, match="uint8 or float32"):
        warp_2d(np.zeros((8, 8, 3), np.int64), Motion())


# --- turbo mode: blending the two warped chains (DD's turbo_mode weights) ---

def test_turbo_schedule_matches_dd():
    diffused = [f for f in range(16) if is_diffused_frame(f, turbo_steps=3, turbo_preroll=4)]
    assert diffused == [0, 1, 2, 3, 4, 6, 9, 12, 15]
    assert all(is_diffused_frame(f, 1, 0) for f in range(10))


def test_a_turbo_diffused_frame_is_written_as_dd_writes_it():
    """DD: cv2.addWeighted(new, 1/turbo_steps, warped previous, 1 - 1/turbo_steps, 0)."""
    new, warped = np.full((2, 2, 3), 200, np.uint8), np.full((2, 2, 3), 100, np.uint8)
    assert (turbo_saved_frame(new, warped, 4) == 125).all()
    assert np.array_equal(turbo_saved_frame(new, warped, 1), new)


def test_turbo_weights_match_dd():
    # DD: blend_factor = ((frame % turbo_steps) + 1) / turbo_steps for the newer chain
    assert [turbo_weight(f, 3) for f in (7, 8)] == pytest.approx([2 / 3, 1.0])
    assert [turbo_weight(f, 4) for f in (9, 10, 11)] == pytest.approx([0.5, 0.75, 1.0])


def test_turbo_blend_mixes_chains_with_weight():
    older = np.full((8, 8, 3), 30, np.uint8)
    newer = np.full((8, 8, 3), 210, np.uint8)
    assert (turbo_blend(older, newer, frame=7, turbo_steps=3) == 150).all()  # 2/3 newer
    assert (turbo_blend(older, newer, frame=8, turbo_steps=3) == 210).all()
    assert (blend_chains(older, newer, 0.25) == 75).all()
    with pytest.raises(ImageError, match="turbo_steps must be an integer >= 1"):
        turbo_weight(3, 0)
    with pytest.raises(ImageError, match="chains differ in size"):
        blend_chains(older, newer[:4], 0.5)
