"""engine.syncs: host reads and uploads inside a sampler step raise under check_syncs, on
the CPU too (what would stall a GPU's stream is caught by the CPU test suite)."""

import dataclasses

import numpy as np
import pytest
import torch
from test_engine_render import FULL_UNET, WITH_SECONDARY, make_spec

from engine.cutouts import constant_matrix
from engine.models import ModelSet
from engine.render import Renderer
from engine.spec import SamplerSettings
from engine.syncs import HostAccessGuard, HostSyncInStep, sync_check


def test_guard_raises_on_host_reads_and_uploads_only():
    t = torch.zeros(2, 2)
    with HostAccessGuard():
        t[0, 0].fill_(1.0)  # a fill: the value travels as a kernel argument
        t[1] = torch.ones(2)  # tensor to tensor
        doubled = t * 2 + 0.5
    for host_access in (lambda: doubled.sum().item(), lambda: bool(doubled.any()), lambda: torch.tensor([1.0]),
                        lambda: t.__setitem__((0, 1), 0.5)):
        with pytest.raises(HostSyncInStep, match="host (read|upload) inside a sampler step"), sync_check(
                True, torch.device("cpu")):
            host_access()
    with sync_check(False, torch.device("cpu")):
        assert doubled.sum().item() == 8.0


@pytest.mark.parametrize("models,mode", [(FULL_UNET, "ddim"), (FULL_UNET, "plms"), (WITH_SECONDARY, "ddim")],
                         ids=["full UNet, ddim", "full UNet, plms", "secondary model"])
def test_cpu_render_has_no_host_sync_in_a_step_the_first_included(models, mode):
    constant_matrix.cache_clear()  # the cut colour constants are then made inside the first step
    renderer = Renderer(ModelSet(models, "cpu"), check_syncs=True)
    spec = make_spec(models, sampler=SamplerSettings(steps=4, skip_steps=0, mode=mode))
    image = renderer.render(spec)
    assert image.shape == (64, 64, 3) and renderer.counters.steps == 4
    plain = Renderer(renderer.models).render(dataclasses.replace(spec))
    assert np.array_equal(image, plain)  # the guard changes nothing it lets through


@pytest.mark.parametrize("mode", ["2D", "Video Input"])
def test_the_animation_modes_cut_augmentations_have_no_host_sync_either(mode):
    """2D/3D and Video Input draw other augmentations (Video Input: per-cut perspective
    homographies, solved on the device without checking for singular systems on the host)."""
    from engine.spec import augmentations_for_mode

    constant_matrix.cache_clear()
    renderer = Renderer(ModelSet(FULL_UNET, "cpu"), check_syncs=True)
    spec = make_spec(FULL_UNET, sampler=SamplerSettings(steps=3, skip_steps=0))
    spec = dataclasses.replace(spec, guidance=dataclasses.replace(spec.guidance,
                                                                  augmentations=augmentations_for_mode(mode)))
    assert renderer.render(spec).shape == (64, 64, 3) and renderer.counters.steps == 3
