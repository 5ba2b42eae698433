"""Dense optical flow (RAFT as DD, or OpenCV DIS), flow warping, consistency masks,
video-init blending.

Images are HxWx3 RGB, uint8 or float32 on the 0-255 scale.

Flow convention: ``optical_flow(a, b)[y, x] = (dx, dy)`` means the pixel at (x, y) in
``a`` is at (x + dx, y + dy) in ``b``. ``warp_by_flow(image, flow)`` samples backwards:
``out[x] = image[x + flow[x]]``; so ``warp_by_flow(image_aligned_with_b, optical_flow(a, b))``
brings that image into ``a``'s frame.

Video init (DD's ``video_init_flow_warp``): DD computes the flow from the current video
frame back to the previous one, warps the previous *output* by it and returns
``video_cur * (1 - blend) + blend * warped`` (``video_init_flow_blend`` = 0.999: almost all
the stylised previous output). DD never implemented its consistency check; here unreliable
pixels (forward-backward check, as in pytti) take the video frame instead, with the
weighting of Sxela's DD-Warp fork: ``cur * (1 - blend) + blend * (warped * m + cur * (1 - m))``.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from animation.warp2d import BORDER_MODES, SAMPLING_MODES, ImageError, option_flag, check_image

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def _check_flow(flow: np.ndarray, name: str = "flow") -> np.ndarray:
    if not isinstance(flow, np.ndarray) or flow.ndim != 3 or flow.shape[2] != 2:
        shape = getattr(flow, "shape", None)
        raise ImageError(f"{name} must be an HxWx2 array, got shape {shape}")
    return flow.astype(np.float32, copy=False)


def _gray(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def optical_flow(frame_a: np.ndarray, frame_b: np.ndarray, preset: str = "medium") -> np.ndarray:
    """Dense flow a -> b (HxWx2 float32, pixels) with OpenCV's DIS optical flow."""
    check_image(frame_a, "frame_a")
    check_image(frame_b, "frame_b")
    if frame_a.shape != frame_b.shape:
        raise ImageError(f"frames differ in size: {frame_a.shape} vs {frame_b.shape}")
    dis = cv2.DISOpticalFlow_create(option_flag(DIS_PRESETS, preset, "DIS preset"))
    return dis.calc(_gray(frame_a), _gray(frame_b), None)


FlowEstimator = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``flow(frame_a, frame_b)``: dense flow a -> b, HxWx2 float32 in pixels (`optical_flow`'s
convention): `optical_flow` (DIS) or a `RaftFlow`."""

RAFT_ITERATIONS = 20  # DD's get_flow: RAFT's update iterations
RAFT_MIN_SIDE = 128  # RAFT's correlation pyramid needs feature maps of 16+ (1/8 of the frame)


class RaftFlow:
    """RAFT optical flow, as DD computes its video flow (``get_flow``: raft-things, 20
    iterations, RGB frames): torchvision's ``raft_large`` with the weights ported from
    RAFT's raft-things checkpoint. Frames are resized so each side is a multiple of 8 and
    at least 128 px; the flow comes back at the frame's size, in its pixels."""

    def __init__(self, model, device=None, iterations: int = RAFT_ITERATIONS):
        import torch

        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.iterations = iterations

    @classmethod
    def from_file(cls, path, device=None) -> "RaftFlow":
        import torch
        from torchvision.models.optical_flow import raft_large

        model = raft_large(weights=None, progress=False)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return cls(model, device)

    @classmethod
    def random(cls, seed: int = 0, device=None) -> "RaftFlow":
        """RAFT with random weights (tests and tiny models): real cost, meaningless flow."""
        import torch
        from torchvision.models.optical_flow import raft_large

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = raft_large(weights=None, progress=False)
        return cls(model, device)

    def __call__(self, frame_a: np.ndarray, frame_b: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        check_image(frame_a, "frame_a")
        check_image(frame_b, "frame_b")
        if frame_a.shape != frame_b.shape:
            raise ImageError(f"frames differ in size: {frame_a.shape} vs {frame_b.shape}")
        height, width = frame_a.shape[:2]
        scale = max(1.0, RAFT_MIN_SIDE / min(height, width))
        size = tuple(max(8, int(round(side * scale / 8)) * 8) for side in (height, width))

        def tensor(frame: np.ndarray):
            pixels = torch.from_numpy(np.ascontiguousarray(frame, dtype=np.float32)).permute(2, 0, 1)[None]
            pixels = pixels.to(self.device) / 127.5 - 1.0  # RAFT reads [-1, 1]
            return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False) if size != (height, width) else pixels

        with torch.inference_mode():
            flow = self.model(tensor(frame_a), tensor(frame_b), num_flow_updates=self.iterations)[-1]
            if size != (height, width):
                flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
                flow = flow * torch.tensor([width / size[1], height / size[0]], device=flow.device)[None, :, None, None]
        return flow[0].permute(1, 2, 0).float().cpu().numpy()


def _sample_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width = flow.shape[:2]
    map_x = flow[..., 0] + np.arange(width, dtype=np.float32)[None, :]
    map_y = flow[..., 1] + np.arange(height, dtype=np.float32)[:, None]
    return map_x, map_y


def warp_by_flow(image: np.ndarray, flow: np.ndarray, border: str = "replicate",
                 sampling: str = "bilinear") -> np.ndarray:
    """Backward warp: ``out[y, x] = image[y + flow_y, x + flow_x]``; same shape and dtype."""
    check_image(image)
    flow = _check_flow(flow)
    if flow.shape[:2] != image.shape[:2]:
        raise ImageError(f"flow size {flow.shape[:2]} differs from image size {image.shape[:2]}")
    map_x, map_y = _sample_grid(flow)
    return cv2.remap(image, map_x, map_y, option_flag(SAMPLING_MODES, sampling, "sampling mode"),
                     borderMode=option_flag(BORDER_MODES, border, "border mode"))


def consistency_mask(fwd: np.ndarray, bwd: np.ndarray, tol: float = 1.0,
                     relative: float = 0.01) -> np.ndarray:
    """Forward-backward check in the frame where ``fwd`` starts (HxW bool, True = reliable).

    ``fwd`` is the flow A -> B and ``bwd`` the flow B -> A. A pixel x of A is reliable when
    following ``fwd`` and then ``bwd`` returns near x:
    ``|fwd(x) + bwd(x + fwd(x))|^2 <= tol^2 + relative * (|fwd|^2 + |bwd|^2)``
    (Sundaram et al. 2010), and x + fwd(x) lies inside the image.
    """
    fwd = _check_flow(fwd, "fwd")
    bwd = _check_flow(bwd, "bwd")
    if fwd.shape != bwd.shape:
        raise ImageError(f"fwd and bwd flows differ in size: {fwd.shape} vs {bwd.shape}")
    if not tol >= 0 or not relative >= 0:
        raise ImageError(f"tol and relative must be >= 0, got tol={tol}, relative={relative}")
    height, width = fwd.shape[:2]
    map_x, map_y = _sample_grid(fwd)
    bwd_there = cv2.remap(bwd, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    round_trip = np.sum((fwd + bwd_there) ** 2, axis=2)
    motion = np.sum(fwd ** 2, axis=2) + np.sum(bwd_there ** 2, axis=2)
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return inside & (round_trip <= tol ** 2 + relative * motion)


def blend_flow_init(warped: np.ndarray, video_cur: np.ndarray, blend: float = 0.999,
                    mask: np.ndarray | None = None) -> np.ndarray:
    """DD's video-init blend: ``cur*(1-blend) + blend*(warped*m + cur*(1-m))`` as uint8.

    ``mask`` (HxW bool or float in [0, 1]) marks where ``warped`` is reliable; None = all.
    """
    check_image(warped, "warped")
    check_image(video_cur, "video_cur")
    if warped.shape != video_cur.shape:
        raise ImageError(f"warped {warped.shape} and video frame {video_cur.shape} differ in size")
    if not 0.0 <= blend <= 1.0:
        raise ImageError(f"flow blend must be in [0, 1], got {blend}")
    cur = video_cur.astype(np.float32)
    prev = warped.astype(np.float32)
    if mask is not None:
        if mask.shape != video_cur.shape[:2]:
            raise ImageError(f"mask size {mask.shape} differs from frame size "
                             f"{video_cur.shape[:2]}")
        weight = mask.astype(np.float32)[..., None]
        prev = prev * weight + cur * (1.0 - weight)
    out = cur * (1.0 - blend) + prev * blend
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def flow_init(prev_output: np.ndarray, video_prev: np.ndarray, video_cur: np.ndarray,
              blend: float = 0.999, use_mask: bool = True, tol: float = 1.0,
              flow: FlowEstimator = optical_flow) -> np.ndarray:
    """Next init image for Video Input: previous output carried along the video's motion.

    Flow is measured between the video frames (resized to the output size if they differ),
    the previous output is warped by it and blended with ``video_cur`` (``blend`` = DD's
    ``video_init_flow_blend``: 1 = all warped output, 0 = the raw video frame). With
    ``use_mask``, pixels failing the forward-backward check take the video frame.
    """
    warped, mask, cur_frame = carry_along_flow(prev_output, video_prev, video_cur, use_mask, tol, flow)
    return blend_flow_init(warped, cur_frame, blend, mask)


def carry_along_flow(image: np.ndarray, video_prev: np.ndarray, video_cur: np.ndarray,
                     use_mask: bool = True, tol: float = 1.0, flow: FlowEstimator = optical_flow):
    """``image`` (made at ``video_prev``'s moment) warped along the video's motion to
    ``video_cur``'s: (warped, reliable-pixel mask or None, ``video_cur`` at the image's size)."""
    check_image(image, "image")
    height, width = image.shape[:2]
    frames = []
    for name, frame in (("video_prev", video_prev), ("video_cur", video_cur)):
        check_image(frame, name)
        if frame.shape[:2] != (height, width):
            frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
        frames.append(frame)
    prev_frame, cur_frame = frames
    cur_to_prev = flow(cur_frame, prev_frame)
    warped = warp_by_flow(image, cur_to_prev)
    mask = None
    if use_mask:
        prev_to_cur = flow(prev_frame, cur_frame)
        mask = consistency_mask(cur_to_prev, prev_to_cur, tol)
    return warped, mask, cur_frame


def flow_blend_frames(previous: np.ndarray, current: np.ndarray, video_prev: np.ndarray,
                      video_cur: np.ndarray, blend: float, use_mask: bool = True) -> np.ndarray:
    """DD's "optical flow" video blend: the previous output frame moved along the input
    video's motion, then ``current*(1-blend) + blend*warped`` (unreliable pixels: current)."""
    warped, mask, _ = carry_along_flow(previous, video_prev, video_cur, use_mask)
    return blend_flow_init(warped, current, blend, mask)
