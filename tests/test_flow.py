"""Optical flow (OpenCV DIS, RAFT), flow warping, forward-backward consistency, video-init blend."""

import cv2
import numpy as np
import pytest

from animation.flow import (RaftFlow, blend_flow_init, consistency_mask, flow_init, optical_flow,
                            warp_by_flow)
from animation.warp2d import ImageError

MARGIN = 16


def texture(height, width, seed, sigma=1.5):
    """Smooth random RGB texture (something optical flow can lock onto)."""
    noise = np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return np.rint(smooth * 255).astype(np.uint8)


def moving_object_scene(shift=8):
    """Static background, a textured 40x40 object moving right by ``shift`` pixels."""
    background = texture(96, 128, seed=1, sigma=3.0)
    thing = texture(40, 40, seed=2)
    prev, cur = background.copy(), background.copy()
    prev[28:68, 36:76] = thing
    cur[28:68, 36 + shift:76 + shift] = thing
    return prev, cur


def interior(array):
    return array[MARGIN:-MARGIN, MARGIN:-MARGIN]


def test_flow_of_a_shifted_texture_is_the_shift():
    frame_a = texture(96, 128, seed=0)
    frame_b = np.roll(frame_a, (-2, 3), axis=(0, 1))  # content moves by (+3, -2)
    flow = optical_flow(frame_a, frame_b)
    assert flow.shape == (96, 128, 2) and flow.dtype == np.float32
    error = np.linalg.norm(interior(flow) - np.array([3.0, -2.0]), axis=2)
    assert error.max() < 1.0
    assert error.mean() < 0.25


def test_warp_by_flow_samples_backwards():
    image = texture(48, 64, seed=3)
    flow = np.zeros((48, 64, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3.0, -2.0
    out = warp_by_flow(image, flow)
    # out[y, x] = image[y - 2, x + 3]
    assert np.array_equal(out[4:, :-4], image[2:-2, 3:-1])


def test_warping_by_measured_flow_aligns_frames():
    frame_a = texture(96, 128, seed=4)
    frame_b = np.roll(frame_a, (1, -4), axis=(0, 1))
    back_to_a = warp_by_flow(frame_b, optical_flow(frame_a, frame_b))
    difference = np.abs(interior(back_to_a).astype(int) - interior(frame_a).astype(int))
    assert difference.mean() < 3.0
    unaligned = np.abs(interior(frame_b).astype(int) - interior(frame_a).astype(int))
    assert unaligned.mean() > 5 * difference.mean()


def test_consistency_mask_flags_disoccluded_region():
    prev, cur = moving_object_scene(shift=8)
    cur_to_prev, prev_to_cur = optical_flow(cur, prev), optical_flow(prev, cur)
    reliable = consistency_mask(cur_to_prev, prev_to_cur, tol=1.0)
    assert reliable.shape == (96, 128) and reliable.dtype == bool
    uncovered = reliable[28:68, 36:44]  # background the object hid in prev
    assert uncovered.mean() < 0.4
    assert reliable[:, 96:].mean() > 0.95  # background away from the object
    assert reliable[32:64, 50:80].mean() > 0.95  # the object itself was tracked


def test_consistency_mask_rejects_flow_leaving_the_image():
    fwd = np.zeros((16, 16, 2), np.float32)
    fwd[..., 0] = 4.0
    bwd = -fwd
    reliable = consistency_mask(fwd, bwd)
    assert reliable[:, :12].all()
    assert not reliable[:, 12:].any()
    assert not consistency_mask(fwd, fwd).any()  # both going right: never returns


def test_blend_flow_init_follows_dd_formula():
    warped = np.full((4, 4, 3), 200, np.uint8)
    cur = np.full((4, 4, 3), 100, np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[:2] = True
    out = blend_flow_init(warped, cur, blend=0.5, mask=mask)
    assert (out[:2] == 150).all()  # reliable: cur*(1-b) + warped*b
    assert (out[2:] == 100).all()  # unreliable: the video frame
    assert (blend_flow_init(warped, cur, blend=0.999) == 200).all()
    assert (blend_flow_init(warped, cur, blend=0.0) == 100).all()


def test_flow_init_carries_previous_output_along_video_motion():
    video_prev = texture(96, 128, seed=5)
    video_cur = np.roll(video_prev, (0, 3), axis=(0, 1))  # the video pans right by 3
    prev_output = texture(96, 128, seed=6, sigma=2.0)  # stylised frame aligned with video_prev
    out = flow_init(prev_output, video_prev, video_cur, blend=1.0, use_mask=False)
    expected = np.roll(prev_output, (0, 3), axis=(0, 1))
    assert np.abs(interior(out).astype(int) - interior(expected).astype(int)).mean() < 2.0
    assert np.array_equal(flow_init(prev_output, video_prev, video_cur, blend=0.0), video_cur)


def test_flow_init_takes_video_frame_where_flow_is_unreliable():
    video_prev, video_cur = moving_object_scene(shift=8)
    prev_output = np.full_like(video_prev, 255)
    masked = flow_init(prev_output, video_prev, video_cur, blend=1.0, use_mask=True)
    unmasked = flow_init(prev_output, video_prev, video_cur, blend=1.0, use_mask=False)
    assert (unmasked == 255).all()
    from_video = (masked == video_cur).all(axis=2) & (masked != 255).any(axis=2)
    assert from_video[28:68, 36:44].mean() > 0.6  # the uncovered strip
    assert from_video[:, 96:].mean() < 0.05


def test_flow_init_resizes_video_frames_to_the_output():
    video = texture(48, 64, seed=7)
    prev_output = texture(96, 128, seed=8)
    out = flow_init(prev_output, video, video, blend=1.0)
    assert out.shape == prev_output.shape
    assert np.abs(out.astype(int) - prev_output.astype(int)).mean() < 1.0


def test_bad_inputs_give_clear_errors():
    frame = texture(16, 16, seed=9)
    with pytest.raises(ImageError, match="frames differ in size"):
        optical_flow(frame, frame[:8])
    with pytest.raises(ImageError, match="unknown DIS preset"):
        optical_flow(frame, frame, preset="slow")
    with pytest.raises(ImageError, match="HxWx2"):
        warp_by_flow(frame, np.zeros((16, 16), np.float32))
    with pytest.raises(ImageError, match=r"flow blend must be in \[0, 1\]"):
        blend_flow_init(frame, frame, blend=1.5)


def test_flow_init_measures_motion_with_the_estimator_it_is_given():
    """Video Input's flow warp uses the scene's estimator (RAFT as DD, or DIS)."""
    video_prev, video_cur = texture(48, 64, seed=5), texture(48, 64, seed=7)
    prev_output = texture(48, 64, seed=6, sigma=2.0)
    calls = []

    def two_left(a, b):  # every pixel of a is 2 pixels left in b
        calls.append((a.shape, b.shape))
        return np.tile(np.array([-2.0, 0.0], np.float32), (a.shape[0], a.shape[1], 1))

    out = flow_init(prev_output, video_prev, video_cur, blend=1.0, use_mask=False, flow=two_left)
    assert len(calls) == 1  # current -> previous, for the warp
    assert np.array_equal(out, warp_by_flow(prev_output, two_left(video_cur, video_prev)))
    flow_init(prev_output, video_prev, video_cur, blend=1.0, use_mask=True, flow=two_left)
    assert len(calls) == 4  # and previous -> current for the consistency check


def test_raft_gives_a_flow_field_at_the_frames_size_from_its_real_architecture():
    """RAFT (torchvision's raft_large, random weights here: the cost and shapes are real, the
    flow means nothing) on frames smaller than its 128 px minimum and not multiples of 8."""
    import torch

    torch.set_num_threads(1)
    a, b = texture(60, 100, seed=1), texture(60, 100, seed=2)
    raft = RaftFlow.random(seed=3)
    flow = raft(a, b)
    assert flow.shape == (60, 100, 2) and flow.dtype == np.float32 and np.isfinite(flow).all()
    assert np.array_equal(RaftFlow.random(seed=3)(a, b), flow)  # seeded weights: the same everywhere
    assert sum(p.numel() for p in raft.model.parameters()) > 5_000_000  # the real raft_large
    with pytest.raises(ImageError, match="frames differ in size"):
        raft(a, texture(64, 100, seed=2))
