"""engine.clip_layers: inference rewrites of CLIP image encoders give the same function."""

import pytest
import torch
from torch import nn

from engine.clip_layers import PatchEmbedding, fuse_inference_layers, unfuse
from engine.models import ModelSet
from engine.spec import ModelSetSpec

TINY = ModelSetSpec(diffusion_model="tiny", clip_models=("tiny-vit::random", "tiny-rn::random"))


def _input_grad(model, x, weights):
    x = x.clone().requires_grad_()
    out = model(x)
    (out * weights).sum().backward()
    return out.detach(), x.grad


def test_patch_embedding_is_the_patch_convolution():
    conv = nn.Conv2d(3, 16, kernel_size=8, stride=8, bias=False).double()
    x = torch.rand(4, 3, 35, 33, dtype=torch.float64)  # sides not multiples of the patch: cropped like the conv
    weights = torch.rand(4, 16, 4, 4, dtype=torch.float64)
    conv_out, conv_grad = _input_grad(conv, x, weights)
    patch_out, patch_grad = _input_grad(PatchEmbedding(conv), x, weights)
    torch.testing.assert_close(patch_out, conv_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(patch_grad, conv_grad, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="kernel = stride"):
        PatchEmbedding(nn.Conv2d(3, 16, kernel_size=3, padding=1, bias=False))


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.downsample = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4))
        self.patches = nn.Conv2d(4, 6, kernel_size=2, stride=2, bias=False)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.patches(self.downsample(x))


def test_fused_layers_compute_the_same_function_and_unfuse_restores_them():
    torch.manual_seed(0)
    model = _Block().double().eval()
    for norm in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):  # non-trivial frozen statistics
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.2, 3)
        norm.weight.data.uniform_(0.5, 2)
        norm.bias.data.uniform_(-1, 1)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    weights = torch.rand(2, 6, 4, 4, dtype=torch.float64)
    before_out, before_grad = _input_grad(model, x, weights)
    originals = dict(model.named_modules())
    swaps = fuse_inference_layers(model)
    kinds = [type(m) for m in model.modules()]
    assert nn.BatchNorm2d not in kinds and PatchEmbedding in kinds and len(swaps) == 7
    fused_out, fused_grad = _input_grad(model, x, weights)
    torch.testing.assert_close(fused_out, before_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(fused_grad, before_grad, rtol=0, atol=1e-12)
    unfuse(swaps)
    assert all(module is originals[name] for name, module in model.named_modules())
    with pytest.raises(ValueError, match="eval mode"):
        fuse_inference_layers(_Block())


def test_model_set_fuses_clip_layers_on_the_cpu_with_the_same_gradients():
    models = ModelSet(TINY, "cpu", fuse_clip_layers=False)
    resnet = models.clips["tiny-rn::random"].model.visual
    torch.manual_seed(1)
    for norm in (m for m in resnet.modules() if isinstance(m, nn.BatchNorm2d)):
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2)
    x = torch.rand(4, 3, 64, 64)
    reference = {}
    for name, clip in models.clips.items():
        weights = torch.rand(4, clip.encode_image(x).shape[-1])
        reference[name] = (weights, *_input_grad(clip.encode_image, x, weights))
    models.configure_clips(channels_last=models.clip_channels_last, fused=True)
    assert isinstance(models.clips["tiny-vit::random"].model.visual.conv1, PatchEmbedding)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())
    assert models.clips["tiny-rn::random"].is_convolutional
    for name, clip in models.clips.items():
        weights, out, grad = reference[name]
        fused_out, fused_grad = _input_grad(clip.encode_image, x, weights)
        torch.testing.assert_close(fused_out, out, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fused_grad, grad, rtol=1e-3, atol=1e-3 * grad.abs().max().item())
    models.configure_clips(channels_last=models.clip_channels_last, fused=False)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in resnet.modules()) > 0
    assert ModelSet(TINY, "cpu").fuse_clip_layers  # the CPU default
