"""Inference-only rewrites of CLIP image encoders: the same function, cheaper gradients.

Guidance differentiates CLIP with respect to its input cuts, never its weights, and the
models stay frozen in eval mode, so two standard inference rewrites apply:

- ``PatchEmbedding``: a ViT's patch convolution (kernel = stride, no padding) as one
  matrix product over the image's patches. On the CPU the convolution's input gradient
  is far slower than the product's (ViT-B/32, 16 cuts at 224 px: 520 vs 100 ms forward
  and backward; torch 2.14).
- batch norms folded into the convolutions before them (``fuse_conv_bn_eval``, ResNet
  CLIPs): a norm pass less forward and backward for each convolution.

``fuse_inference_layers`` applies both to a module tree and returns the swaps made, so
``unfuse`` can put the original modules back (benchmarks compare the two on one load).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class PatchEmbedding(nn.Module):
    """A bias-free Conv2d whose kernel equals its stride, as a product over patches;
    returns the convolution's [N, width, H/p, W/p] (a permuted view)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not is_patch_convolution(conv):
            raise ValueError("PatchEmbedding needs a bias-free Conv2d with kernel = stride, no padding")
        self.weight = conv.weight
        self.patch = conv.kernel_size[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, channels, height, width = images.shape
        p = self.patch
        rows, cols = height // p, width // p
        patches = images[:, :, : rows * p, : cols * p].reshape(n, channels, rows, p, cols, p)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(n, rows * cols, channels * p * p)
        out = patches @ self.weight.reshape(self.weight.shape[0], -1).t()
        return out.reshape(n, rows, cols, -1).permute(0, 3, 1, 2)


def is_patch_convolution(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.bias is None
        and conv.groups == 1
        and conv.kernel_size[0] == conv.kernel_size[1]
        and tuple(conv.stride) == tuple(conv.kernel_size)
        and tuple(conv.padding) == (0, 0)
        and tuple(conv.dilation) == (1, 1)
    )


@dataclass(frozen=True)
class Swap:
    """``parent.name`` was ``original`` and is now ``replacement``."""

    parent: nn.Module
    name: str
    original: nn.Module
    replacement: nn.Module


def _conv_bn_pairs(parent: nn.Module) -> list[tuple[str, str]]:
    """Names of (Conv2d, BatchNorm2d) children where the norm directly follows the
    convolution: open_clip's ``convK``/``bnK`` pairs and consecutive Sequential members."""
    children = dict(parent.named_children())
    pairs = []
    if isinstance(parent, nn.Sequential):
        names = list(children)
        pairs += [(a, b) for a, b in zip(names, names[1:])
                  if type(children[a]) is nn.Conv2d and type(children[b]) is nn.BatchNorm2d]
    else:
        for name, child in children.items():
            if type(child) is nn.Conv2d and name.startswith("conv"):
                norm = "bn" + name[len("conv"):]
                if type(children.get(norm)) is nn.BatchNorm2d:
                    pairs.append((name, norm))
    return pairs


def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Conv2d:
    """The fused convolution, computed in float32 at least (fp16 models) and stored in
    the convolution's dtype."""
    dtype = conv.weight.dtype
    wide = torch.promote_types(dtype, torch.float32)
    fused = fuse_conv_bn_eval(copy.deepcopy(conv).to(wide), copy.deepcopy(norm).to(wide))
    return fused.to(dtype).requires_grad_(False)


def fuse_inference_layers(model: nn.Module) -> list[Swap]:
    """Fold batch norms into convolutions and turn patch convolutions into
    ``PatchEmbedding`` throughout ``model`` (in eval mode); returns the swaps."""
    if model.training:
        raise ValueError("fuse_inference_layers needs a model in eval mode (frozen batch norms)")
    swaps: list[Swap] = []
    for parent in list(model.modules()):
        folded = set()
        for conv_name, norm_name in _conv_bn_pairs(parent):
            conv, norm = getattr(parent, conv_name), getattr(parent, norm_name)
            swaps.append(Swap(parent, conv_name, conv, _fold(conv, norm)))
            swaps.append(Swap(parent, norm_name, norm, nn.Identity()))
            folded.add(conv_name)
        for name, child in list(parent.named_children()):
            if name not in folded and is_patch_convolution(child) and child.kernel_size[0] > 1:
                swaps.append(Swap(parent, name, child, PatchEmbedding(child)))
    for swap in swaps:
        setattr(swap.parent, swap.name, swap.replacement)
    return swaps


def unfuse(swaps: list[Swap]) -> None:
    """Put back the modules ``fuse_inference_layers`` replaced."""
    for swap in reversed(swaps):
        setattr(swap.parent, swap.name, swap.original)
