"""Monocular depth for 3D animation: MiDaS DPT-Large through ``transformers``.

Disco Diffusion v5.7 (``disco_xform_utils.transform_image_3d``) runs MiDaS v3 DPT-Large,
which predicts *relative inverse depth* (disparity: near = large), and turns it into the
depth its 3D warp uses with ``depth = (50 - disparity) / 19``. With ``midas_weight < 1``
it blends that with AdaBins' metric depth: ``midas_weight * midas + (1 - midas_weight) *
adabins``. DD does not scale depth into the near/far planes (those only reach pytorch3d's
clip-space z, which DD discards), and neither do we. AdaBins is not part of this project,
so ``midas_weight`` only matters when a caller supplies a second depth map.

Preprocessing follows DD's MiDaS transform for DPT-Large: RGB in [0, 1], resized with the
"minimal" keep-aspect rule to multiples of 32 around ``config.image_size`` (384) with cubic
interpolation, normalised with mean 0.5 / std 0.5; the network's output is resized back to
the image size bicubically. Model loading (``DepthModel``) is kept apart from the pure math
(``midas_input_size``, ``depth_from_disparity``, ``normalise_depth``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import cv2
import numpy as np
import torch

from animation.warp2d import check_image

DEFAULT_DEPTH_MODEL = "Intel/dpt-large"
DOWNLOAD_HINT = "pass a local model folder or run `farm models download dpt-large`"
MIDAS_DISPARITY_OFFSET = 50.0  # DD: depth = (50 - disparity) / 19
MIDAS_DISPARITY_SCALE = 19.0
MIN_DEPTH = 0.01  # floor for depth: DD's formula goes <= 0 where disparity >= 50
DPT_MEAN = 0.5
DPT_STD = 0.5
SIZE_MULTIPLE = 32  # DPT's reassemble stages need sides that are multiples of 32
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DepthError(ValueError):
    """A depth map or depth argument is not usable (shape, dtype, value)."""


class DepthModelError(DepthError):
    """A depth model cannot be found or loaded."""


def check_depth_map(depth: np.ndarray, shape: tuple[int, int] | None = None,
                    name: str = "depth") -> np.ndarray:
    """Return ``depth`` if it is a finite, positive HxW float array (of ``shape`` if given)."""
    if not isinstance(depth, np.ndarray):
        raise DepthError(f"{name} must be a numpy array, got {type(depth).__name__}")
    if depth.ndim != 2 or depth.size == 0:
        raise DepthError(f"{name} must be a non-empty HxW array, got shape {depth.shape}")
    if shape is not None and depth.shape != tuple(shape):
        raise DepthError(f"{name} shape {depth.shape} does not match the image's {tuple(shape)}")
    if not np.issubdtype(depth.dtype, np.floating):
        raise DepthError(f"{name} must be a float array, got {depth.dtype}")
    if not np.isfinite(depth).all():
        raise DepthError(f"{name} contains NaN or infinite values")
    if depth.min() <= 0:
        raise DepthError(f"{name} must be > 0 everywhere, got minimum {float(depth.min())}")
    return depth


def midas_input_size(width: int, height: int, side: int = 384,
                     multiple: int = SIZE_MULTIPLE) -> tuple[int, int]:
    """Network input (width, height) for an image, by MiDaS' "minimal" keep-aspect rule.

    The image is scaled by whichever of ``side / width`` and ``side / height`` is closer to
    1 (the least change), then each side is rounded to a multiple of ``multiple`` (at least
    one multiple).
    """
    if width < 1 or height < 1 or side < 1 or multiple < 1:
        raise DepthError(f"sizes must be positive, got {width}x{height}, side {side}")
    scale_width, scale_height = side / width, side / height
    scale = scale_width if abs(1 - scale_width) < abs(1 - scale_height) else scale_height

    def to_multiple(value: float) -> int:
        return max(multiple, int(round(value / multiple)) * multiple)

    return to_multiple(scale * width), to_multiple(scale * height)


def depth_from_disparity(disparity: np.ndarray, second_depth: np.ndarray | None = None,
                         midas_weight: float = 1.0) -> np.ndarray:
    """DD's depth from MiDaS disparity: ``(50 - d) / 19``, optionally blended; float32.

    With ``second_depth`` (an AdaBins-like metric depth of the same shape) the result is
    ``midas_weight * midas_depth + (1 - midas_weight) * second_depth`` as in DD; without
    it the MiDaS depth is used alone (``midas_weight`` ignored). Values are floored at
    ``MIN_DEPTH`` so the camera never sees a point at or behind itself.
    """
    disparity = np.asarray(disparity)
    if disparity.ndim != 2 or not np.isfinite(disparity).all():
        raise DepthError(f"disparity must be a finite HxW array, got shape {disparity.shape}")
    depth = (MIDAS_DISPARITY_OFFSET - disparity.astype(np.float64)) / MIDAS_DISPARITY_SCALE
    if second_depth is not None:
        second_depth = np.asarray(second_depth, dtype=np.float64)
        if second_depth.shape != depth.shape:
            raise DepthError(f"second depth shape {second_depth.shape} does not match "
                             f"disparity shape {depth.shape}")
        if not math.isfinite(midas_weight) or not 0.0 <= midas_weight <= 1.0:
            raise DepthError(f"midas_weight must be in [0, 1], got {midas_weight}")
        depth = depth * midas_weight + second_depth * (1.0 - midas_weight)
    return np.maximum(depth, MIN_DEPTH).astype(np.float32)


def normalise_depth(depth: np.ndarray) -> np.ndarray:
    """Depth scaled linearly to [0, 1] (nearest 0, farthest 1); a flat map gives zeros."""
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2 or depth.size == 0 or not np.isfinite(depth).all():
        raise DepthError(f"depth must be a finite, non-empty HxW array, got shape {depth.shape}")
    low, high = depth.min(), depth.max()
    if high - low <= 0:
        return np.zeros(depth.shape, np.float64)
    return (depth - low) / (high - low)


def save_depth_png(depth: np.ndarray, path: str | os.PathLike, bits: int = 16) -> Path:
    """Write ``depth`` as a grey PNG normalised to the full range (near dark, far bright)."""
    if bits not in (8, 16):
        raise DepthError(f"depth PNG bits must be 8 or 16, got {bits}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise DepthError(f"depth image path must end in .png, got {str(path)!r}")
    top, dtype = (65535, np.uint16) if bits == 16 else (255, np.uint8)
    pixels = np.round(normalise_depth(depth) * top).astype(dtype)
    try:
        written = cv2.imwrite(str(path), pixels)
    except cv2.error:
        written = False
    if not written:
        raise DepthError(f"could not write depth PNG {str(path)!r} (does its folder exist?)")
    return path


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class DepthModel:
    """A DPT depth network (MiDaS v3 architecture) ready to predict DD-style depth maps."""

    def __init__(self, network: torch.nn.Module, name: str, device: torch.device,
                 is_random: bool = False):
        config = network.config
        if getattr(config, "model_type", None) != "dpt" or config.is_hybrid or \
                getattr(config, "backbone_config", None) is not None:
            raise DepthModelError(f"depth model {name!r} is not a ViT DPT model "
                                  f"(Intel/dpt-large architecture); {DOWNLOAD_HINT}")
        self.network = network.to(device).eval()
        self.name = name
        self.device = device
        self.is_random = is_random
        self.input_side = int(config.image_size)

    @classmethod
    def load(cls, source: str | os.PathLike = DEFAULT_DEPTH_MODEL,
             device: str | torch.device | None = None) -> DepthModel:
        """Load DPT weights from a local folder or a Hugging Face hub id (cache only offline)."""
        from transformers import DPTForDepthEstimation

        device = torch.device(device) if device is not None else default_device()
        text = os.fspath(source)
        folder = Path(text).expanduser()
        looks_like_path = not HUB_ID_PATTERN.match(text)  # "owner/name" may be either
        if folder.is_file():
            raise DepthModelError(f"depth model {text!r} is a file; expected a folder "
                                  "holding config.json and the weights")
        if not folder.is_dir() and looks_like_path:
            raise DepthModelError(f"depth model folder {text!r} does not exist; {DOWNLOAD_HINT}")
        if folder.is_dir() and not (folder / "config.json").is_file():
            raise DepthModelError(f"depth model folder {text!r} has no config.json; "
                                  f"{DOWNLOAD_HINT}")
        try:
            if folder.is_dir():
                network = DPTForDepthEstimation.from_pretrained(str(folder), local_files_only=True)
            else:
                network = DPTForDepthEstimation.from_pretrained(text)
        except (OSError, ValueError, RuntimeError) as error:
            if folder.is_dir():
                reason = str(error).strip().splitlines()[0] if str(error).strip() else "unknown"
                raise DepthModelError(f"could not load depth model from {text!r} ({reason}); "
                                      f"{DOWNLOAD_HINT}") from None
            offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true",
                                                                               "yes", "on")
            where = "in the local Hugging Face cache (HF_HUB_OFFLINE is set)" if offline \
                else "loadable from the Hugging Face hub"
            raise DepthModelError(f"depth model {text!r} is neither a local folder nor {where}; "
                                  f"{DOWNLOAD_HINT}") from None
        return cls(network, text, device)

    @classmethod
    def tiny(cls, seed: int = 0, device: str | torch.device | None = None) -> DepthModel:
        """A tiny DPT with random weights, for tests only: its depth maps mean nothing."""
        from transformers import DPTConfig, DPTForDepthEstimation

        config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                           intermediate_size=64, image_size=64, patch_size=16,
                           backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32],
                           fusion_hidden_size=16, use_auxiliary_head=False,
                           # wider init than DPT's 0.02 so random outputs are not all ~0
                           initializer_range=0.15)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = DPTForDepthEstimation(config)
        device = torch.device(device) if device is not None else torch.device("cpu")
        return cls(network, f"tiny-random-dpt(seed={seed}) [random test model]", device,
                   is_random=True)

    def network_input(self, image: np.ndarray) -> torch.Tensor:
        """The 1x3xhxw normalised tensor DPT expects for an HxWx3 RGB image (0-255 scale)."""
        check_image(image)
        height, width = image.shape[:2]
        input_width, input_height = midas_input_size(width, height, self.input_side)
        rgb = image.astype(np.float32) / 255.0
        resized = cv2.resize(rgb, (input_width, input_height), interpolation=cv2.INTER_CUBIC)
        normalised = (resized - DPT_MEAN) / DPT_STD
        return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))[None]

    @torch.no_grad()
    def disparity(self, image: np.ndarray) -> np.ndarray:
        """MiDaS relative inverse depth (near = large) at the image's HxW, float32."""
        pixels = self.network_input(image).to(self.device)
        config = self.network.config
        # DPTForDepthEstimation.forward assumes a square patch grid for ViT backbones, so run
        # its parts with the real grid to keep DD's aspect-preserving input.
        outputs = self.network.dpt(pixels, output_hidden_states=True)
        features = [state for index, state in enumerate(outputs.hidden_states[1:])
                    if index in config.backbone_out_indices]
        grid_height = pixels.shape[2] // config.patch_size
        grid_width = pixels.shape[3] // config.patch_size
        predicted = self.network.head(self.network.neck(features, grid_height, grid_width))
        resized = torch.nn.functional.interpolate(predicted[:, None].float(),
                                                  size=image.shape[:2], mode="bicubic",
                                                  align_corners=False)
        return resized[0, 0].cpu().numpy().astype(np.float32)

    def predict(self, image: np.ndarray, second_depth: np.ndarray | None = None,
                midas_weight: float = 1.0) -> np.ndarray:
        """DD depth (HxW float32, larger = farther) for an HxWx3 RGB image."""
        return depth_from_disparity(self.disparity(image), second_depth, midas_weight)
