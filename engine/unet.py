"""A sync-free forward pass for guided-diffusion's ``UNetModel``.

The library's ``timestep_embedding`` builds its frequency table on the CPU and copies
it to the device on every call, a blocking host-to-device copy (a stream sync on
CUDA) once per sampler step. ``unet_forward`` runs the same modules in the same order
as ``UNetModel.forward`` but builds that table on the device.
"""

from __future__ import annotations

import math

import torch


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


def unet_forward(model: torch.nn.Module, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """``model(x, timesteps)`` for an unconditional guided-diffusion UNetModel."""
    emb = model.time_embed(timestep_embedding(timesteps, model.model_channels))
    hs = []
    h = x.type(model.dtype)
    for module in model.input_blocks:
        h = module(h, emb)
        hs.append(h)
    h = model.middle_block(h, emb)
    for module in model.output_blocks:
        h = torch.cat([h, hs.pop()], dim=1)
        h = module(h, emb)
    h = h.type(x.dtype)
    return model.out(h)
