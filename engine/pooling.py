"""Average pooling over whole k x k blocks with a cheaper backward pass.

The UNet's down-sampling blocks, the secondary model and ResNet CLIPs pool with
``nn.AvgPool2d(k)`` (kernel = stride, no padding). torch's CUDA backward for it works out,
for every input pixel, which pooling windows cover it, with integer divisions per pixel:
at DD's 1280x768 its 20 calls per step took 11.6 ms of an H200's 293 ms full-UNet step
(``bench.gpu_profile``), where the gradient is just each output gradient divided by k*k and
copied to its block. ``BlockAverage`` keeps torch's forward (the same values) and makes the
backward that broadcasting copy (the same values: the same division, each output gradient
by k*k, as torch's).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.unet import is_channels_last


def spread_blocks(grad: torch.Tensor, k: int, channels_last: bool = False) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, H*k, W*k]: each value divided by k*k and copied to its k x k
    block (in channels_last memory order if asked)."""
    n, c, h, w = grad.shape
    scaled = grad / (k * k)
    if channels_last:
        nhwc = scaled.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(n, h, k, w, k, c)
        return nhwc.reshape(n, h * k, w * k, c).permute(0, 3, 1, 2)
    return scaled[:, :, :, None, :, None].expand(n, c, h, k, w, k).reshape(n, c, h * k, w * k)


class BlockAverage(torch.autograd.Function):
    """``F.avg_pool2d(x, k)`` for x whose height and width are multiples of k."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int) -> torch.Tensor:
        ctx.k, ctx.channels_last = k, is_channels_last(x)
        return F.avg_pool2d(x, k)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        return spread_blocks(grad_out, ctx.k, ctx.channels_last), None


def block_average(x: torch.Tensor, k: int) -> torch.Tensor:
    """``F.avg_pool2d(x, k)``; through ``BlockAverage`` when k divides x's height and width."""
    if x.dim() == 4 and x.shape[-2] % k == 0 and x.shape[-1] % k == 0:
        return BlockAverage.apply(x, k)
    return F.avg_pool2d(x, k)


class BlockAveragePool(nn.Module):
    """Drop-in for ``nn.AvgPool2d(k)`` (kernel = stride, no padding) via ``block_average``."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return block_average(x, self.k)

    def extra_repr(self) -> str:
        return f"k={self.k}"


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def block_pool_size(pool: nn.Module) -> int | None:
    """k when ``pool`` is a plain ``nn.AvgPool2d`` over whole k x k blocks, else None."""
    if type(pool) is not nn.AvgPool2d or pool.ceil_mode or pool.divisor_override is not None:
        return None
    kernel, stride, padding = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding)
    if kernel[0] != kernel[1] or stride != kernel or padding != (0, 0):
        return None
    return kernel[0]


def _swapped_pool(module: nn.Module, enabled: bool) -> nn.Module | None:
    """The pool that replaces ``module`` (None: it stays)."""
    if enabled:
        k = block_pool_size(module)
        return None if k is None else BlockAveragePool(k)
    return nn.AvgPool2d(module.k) if isinstance(module, BlockAveragePool) else None


def set_block_average_pools(model: nn.Module, enabled: bool = True) -> int:
    """Replace every block-shaped ``nn.AvgPool2d`` in ``model`` by ``BlockAveragePool``
    (``enabled``) or put ``nn.AvgPool2d`` back (benchmarks compare the two); returns how
    many pools were swapped."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            replacement = _swapped_pool(child, enabled)
            if replacement is not None:
                setattr(parent, name, replacement)
                count += 1
    return count
