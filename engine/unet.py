"""A sync-free, fused-attention forward pass for guided-diffusion's ``UNetModel``.

``unet_forward`` runs the same modules, with the same weights, in the same order as
``UNetModel.forward``, with two differences that change speed, not the function:

- The library's ``timestep_embedding`` builds its frequency table on the CPU and copies
  it to the device on every call, a blocking host-to-device copy (a stream sync on
  CUDA) once per sampler step; here the table is built on the device.
- The attention blocks run through ``torch.nn.functional.scaled_dot_product_attention``
  (flash / memory-efficient kernels on CUDA, a fused kernel on the CPU) instead of two
  einsums around a materialised [T x T] softmax. At DD's 1280x768 the UNet's 1/8-scale
  blocks attend over 15,360 positions: the materialised weights are 3.8 GB per block in
  fp16, kept for the backward pass. The result equals the library's up to float rounding
  (the library scales q and k by ch^-1/4 each; SDPA scales their product by ch^-1/2).

``set_group_norm_precision`` is a third, opt-in change (``ModelSet(half_group_norms=...)``):
the library's ``GroupNorm32`` converts fp16 activations to fp32, normalises and converts
back, two full-size copies per norm; torch's CUDA group-norm kernel accumulates half
inputs in fp32 anyway, so normalising in the input dtype gives the same statistics
without the copies.

``GroupNormSplitStatistics`` is the fourth (``ModelSet(split_norm_statistics=...)``, on by
default on CUDA for the eager UNet): torch's CUDA group-norm kernel computes each group's
moments in one thread block, so at batch 1 a norm over 32 groups runs 32 blocks on a GPU
with 132 multiprocessors; at DD's 1280x768 that moments pass was a third of the GPU's
time in a step (``bench.gpu_profile``). Here the moments come from ``torch.std_mean``,
whose reduction spreads each long group over many blocks; the normalisation is one
``addcmul`` with per-channel scale and shift, and the backward pass is torch's own
group-norm backward given those statistics. A channels_last input keeps its layout: its
statistics come from a grouped view without a copy, and its backward pass is
``group_norm_input_gradients`` (per-channel sums, then two fused multiply-adds), where
torch's backward would need NCHW copies of the input and gradient.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # guided_diffusion uses torch.cuda.amp decorators
    from guided_diffusion.nn import GroupNorm32
    from guided_diffusion.unet import AttentionBlock, QKVAttention, TimestepBlock


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embeddings [N, dim] of (fractional) timesteps, computed on their device."""
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(-math.log(max_period) * exponents / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def split_heads(qkv: torch.Tensor, heads: int, new_order: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v as [N, heads, T, ch] views, each with unit stride along ch, from
    guided-diffusion's packed [N, 3*heads*ch, T] qkv (one transposing copy).

    SDPA's fused kernels (flash and memory-efficient on CUDA, flash on the CPU) need unit
    stride on the last dimension; plain transposed views of the packed tensor silently
    fall back to the math kernel, which materialises the [T x T] weights.
    ``new_order`` is ``QKVAttention`` (split q/k/v, then heads); otherwise
    ``QKVAttentionLegacy`` (split heads, then q/k/v), the layout of DD's checkpoints."""
    batch, width, length = qkv.shape
    ch = width // (3 * heads)
    tokens = qkv.transpose(1, 2).contiguous()  # [N, T, 3*heads*ch]
    if new_order:
        q, k, v = tokens.view(batch, length, 3, heads, ch).unbind(2)
    else:
        q, k, v = tokens.view(batch, length, heads, 3, ch).unbind(3)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def fused_attention(qkv: torch.Tensor, heads: int, new_order: bool) -> torch.Tensor:
    """guided-diffusion's QKV attention ([N, 3*H*C, T] -> [N, H*C, T]) through SDPA."""
    batch, _, length = qkv.shape
    q, k, v = split_heads(qkv, heads, new_order)
    out = F.scaled_dot_product_attention(q, k, v)  # [N, H, T, C], scale C^-1/2 as the library
    return out.permute(0, 1, 3, 2).reshape(batch, -1, length)


def _attention_block(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    batch, channels, *spatial = x.shape
    flat = x.reshape(batch, channels, -1)
    qkv = block.qkv(block.norm(flat))
    new_order = isinstance(block.attention, QKVAttention)
    h = block.proj_out(fused_attention(qkv, block.attention.n_heads, new_order))
    return (flat + h).reshape(batch, channels, *spatial)


def attention_block_forward(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``AttentionBlock.forward`` with fused attention (recomputed in the backward pass
    when the block's ``use_checkpoint`` is set and gradients flow)."""
    if block.use_checkpoint and torch.is_grad_enabled():
        return checkpoint(_attention_block, block, x, use_reentrant=False)
    return _attention_block(block, x)


def _run_sequential(sequence: torch.nn.Module, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """``TimestepEmbedSequential.forward`` with attention blocks fused."""
    for layer in sequence:
        if isinstance(layer, AttentionBlock):
            h = attention_block_forward(layer, h)
        elif isinstance(layer, TimestepBlock):
            h = layer(h, emb)
        else:
            h = layer(h)
    return h


def unet_forward(model: torch.nn.Module, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """``model(x, timesteps)`` for an unconditional guided-diffusion UNetModel."""
    emb = model.time_embed(timestep_embedding(timesteps, model.model_channels))
    hs = []
    h = x.type(model.dtype)
    for module in model.input_blocks:
        h = _run_sequential(module, h, emb)
        hs.append(h)
    h = _run_sequential(model.middle_block, h, emb)
    for module in model.output_blocks:
        h = torch.cat([h, hs.pop()], dim=1)
        h = _run_sequential(module, h, emb)
    h = h.type(x.dtype)
    return model.out(h)


def group_norm_in_input_dtype(norm: torch.nn.GroupNorm, x: torch.Tensor,
                              params: tuple[torch.Tensor, torch.Tensor] | None = None,
                              split_statistics: bool = False) -> torch.Tensor:
    """``GroupNorm32(x)`` without the fp32 round trip (statistics still accumulate in fp32).
    ``params``: the norm's (weight, bias) already cast to x's dtype (done once, at set-up);
    ``split_statistics``: through ``GroupNormSplitStatistics``."""
    if params is None or params[0].dtype != x.dtype:
        params = (norm.weight.to(x.dtype), norm.bias.to(x.dtype))
    if split_statistics:
        return GroupNormSplitStatistics.apply(x, *params, norm.num_groups, norm.eps)
    return F.group_norm(x, norm.num_groups, *params, norm.eps)


def group_norm_scale_shift(mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor) -> torch.Tensor:
    """Scale and shift per group and channel, as one [2, N, G, C/G] tensor in fp32 at least,
    such that group norm = x * scale + shift, from per-group mean and 1/std [N, G] and the
    affine weight and bias [C]. Two kernels: half inputs are widened inside them."""
    wide = torch.promote_types(rstd.dtype, torch.float32)
    (n, groups), channels = mean.shape, weight.shape[0]
    weight, bias = weight.view(groups, channels // groups), bias.view(groups, channels // groups)
    out = torch.empty(2, n, groups, channels // groups, dtype=wide, device=mean.device)
    torch.mul(rstd[:, :, None], weight, out=out[0])
    torch.addcmul(bias, mean[:, :, None], out[0], value=-1, out=out[1])
    return out


def is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def grouped_view(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A view of x [N, C, ...] and the dims to reduce over for per-group statistics,
    without a copy for contiguous and for channels_last inputs."""
    n, c = x.shape[:2]
    if is_channels_last(x):  # memory order N, H, W, C
        return x.permute(0, 2, 3, 1).reshape(n, -1, groups, c // groups), (1, 3)
    return x.reshape(n, groups, -1), (2,)


def group_norm_input_gradients(grad_out: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
                               weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group norm's backward pass from per-channel sums, in any memory layout: (dx, dweight,
    dbias) for x [N, C, ...], per-group mean and 1/std [N, G] and the affine weight [C].
    The sums over each channel (of dy and of dy * x, accumulated in fp32 at least) are
    reductions spread over the whole device; dx = a * dy + b * x + c, with a per channel
    and b, c per group, keeps x's layout."""
    n, c = x.shape[:2]
    groups = mean.shape[1]
    wide = torch.promote_types(x.dtype, torch.float32)
    dims = tuple(range(2, x.dim()))
    elements = x[0, 0].numel() * (c // groups)  # per group
    grad_out = grad_out.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else grad_out.contiguous()
    sum_dy = grad_out.sum(dims, dtype=wide)  # [N, C]
    sum_dy_x = (grad_out * x).sum(dims, dtype=wide)
    mean, rstd, w = mean.to(wide), rstd.to(wide), weight.to(wide)

    def to_channels(values: torch.Tensor) -> torch.Tensor:  # [N, G] -> [N, C]
        return values.repeat_interleave(c // groups, dim=1)

    per_channel_rstd = to_channels(rstd)
    sum_dy_centred = sum_dy_x - to_channels(mean) * sum_dy  # sum of dy * (x - mean), per channel
    a_group = (w * sum_dy).view(n, groups, -1).sum(2)  # sum of w * dy over the group
    b_group = (w * sum_dy_centred).view(n, groups, -1).sum(2)  # sum of w * dy * (x - mean)
    x_coefficient = -rstd.pow(3) * b_group / elements
    constant = -x_coefficient * mean - rstd * a_group / elements
    shape = (n, c) + (1,) * (x.dim() - 2)
    # the coefficients stay in fp32 (b * x and c nearly cancel): each addcmul computes in
    # fp32 and writes x's dtype
    dx = torch.empty_like(x)
    torch.addcmul(to_channels(constant).view(shape), to_channels(x_coefficient).view(shape), x, out=dx)
    torch.addcmul(dx, (per_channel_rstd * w).view(shape), grad_out, out=dx)
    dweight = (sum_dy_centred * per_channel_rstd).sum(0).to(weight.dtype)
    dbias = sum_dy.sum(0).to(weight.dtype)
    return dx, dweight, dbias


class GroupNormSplitStatistics(torch.autograd.Function):
    """``F.group_norm(x, groups, weight, bias, eps)`` with its statistics from
    ``torch.std_mean`` (a reduction that splits each group over many thread blocks;
    accumulated in fp32 for half inputs). The backward pass is torch's group-norm backward
    given those statistics, or for a channels_last input (whose output and input gradient
    keep the layout) ``group_norm_input_gradients``, which needs no NCHW copies."""

    @staticmethod
    def forward(ctx, x, weight, bias, groups: int, eps: float):
        # ten kernels for a half input (each a launch at batch 1, where they are tiny)
        n, c = x.shape[:2]
        view, dims = grouped_view(x, groups)
        std, mean = torch.std_mean(view, dim=dims, correction=0)
        std, mean = std.reshape(n, groups), mean.reshape(n, groups)
        rstd = std.to(torch.promote_types(std.dtype, torch.float32)).square_().add_(eps).rsqrt_()  # std: ours
        scale, shift = group_norm_scale_shift(mean, rstd, weight, bias).to(x.dtype)  # [N, G, C/G] each
        ctx.channels_last = is_channels_last(x)
        if ctx.channels_last:  # view: [N, H*W, G, C/G]
            out = torch.addcmul(shift[:, None], view, scale[:, None])
            out = out.view(n, *x.shape[2:], c).permute(0, 3, 1, 2)
        else:
            out = torch.addcmul(shift[..., None], x.view(n, groups, c // groups, -1), scale[..., None]).view(x.shape)
        if ctx.channels_last:  # group_norm_input_gradients: fp32 statistics
            stats_dtype = rstd.dtype
        else:  # as native_group_norm
            stats_dtype = x.dtype if weight.dtype == x.dtype else torch.float32
        ctx.save_for_backward(x, mean.to(stats_dtype), rstd.to(stats_dtype), weight)
        ctx.groups = groups
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, mean, rstd, weight = ctx.saved_tensors
        if ctx.channels_last:
            grads = group_norm_input_gradients(grad_out, x, mean, rstd, weight)
            return (*(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad)), None, None)
        n, c = x.shape[:2]
        wanted = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]), bool(ctx.needs_input_grad[2])]
        dx, dweight, dbias = torch.ops.aten.native_group_norm_backward(
            grad_out.contiguous(), x.contiguous(), mean, rstd, weight, n, c, x[0, 0].numel(), ctx.groups, wanted)
        return dx, dweight, dbias, None, None


def set_group_norm_precision(unet: torch.nn.Module, in_input_dtype: bool, split_statistics: bool = False) -> int:
    """Make the UNet's GroupNorm32 layers normalise in their input's dtype (True) or as the
    library does, through fp32 (False); in the input's dtype, ``split_statistics`` takes
    the statistics from ``GroupNormSplitStatistics``. Their weights are cast to the UNet's
    dtype here, once, not per call. Returns how many layers were set."""
    count = 0
    for module in unet.modules():
        if isinstance(module, GroupNorm32):
            if in_input_dtype:
                dtype = getattr(unet, "dtype", module.weight.dtype)
                params = (module.weight.detach().to(dtype), module.bias.detach().to(dtype))
                module.forward = functools.partial(group_norm_in_input_dtype, module, params=params,
                                                   split_statistics=split_statistics)
            else:
                module.__dict__.pop("forward", None)
            count += 1
    return count


def uses_input_dtype_group_norms(unet: torch.nn.Module) -> bool:
    return any(isinstance(m, GroupNorm32) and "forward" in m.__dict__ for m in unet.modules())


def uses_split_norm_statistics(unet: torch.nn.Module) -> bool:
    return any(isinstance(m, GroupNorm32) and getattr(m.__dict__.get("forward"), "keywords", {}).get("split_statistics")
               for m in unet.modules())
