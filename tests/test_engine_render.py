"""Rendering with the built-in tiny (random-initialised) models on the CPU.

The tiny models are untrained: their pictures are noise-like, so these tests check
mechanics (determinism, counters, cancellation, errors) and measurable effects
(CLIP loss under the same tiny CLIP, distance to an init image, mirror symmetry).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

from engine.errors import (  # noqa: E402
    EngineError,
    EngineOutOfMemory,
    InvalidSpec,
    MissingImagePrompt,
    ModelMismatch,
    RenderCancelled,
)
from engine.losses import spherical_distance_loss  # noqa: E402
from engine.models import ModelSet  # noqa: E402
from engine.render import Renderer  # noqa: E402
from engine.spec import (  # noqa: E402
    CutSchedule,
    GuidanceSettings,
    ModelSetSpec,
    RenderSpec,
    SamplerSettings,
    WeightedPrompt,
)

TWO_CLIPS = ("tiny-vit::random", "tiny-rn::random")
FULL_UNET = ModelSetSpec(diffusion_model="tiny", use_secondary_model=False, clip_models=TWO_CLIPS)
WITH_SECONDARY = ModelSetSpec(diffusion_model="tiny", use_secondary_model=True, clip_models=TWO_CLIPS)
# Few cuts keep the CPU tests fast (DD's default schedule has 16 per batch).
SMALL_CUTS = CutSchedule(overview=(2,) * 1000, innercut=(2,) * 1000)


@pytest.fixture(scope="module")
def full_renderer() -> Renderer:
    return Renderer(ModelSet(FULL_UNET, "cpu"))


@pytest.fixture(scope="module")
def secondary_renderer() -> Renderer:
    return Renderer(ModelSet(WITH_SECONDARY, "cpu"))


def make_spec(models: ModelSetSpec = FULL_UNET, prompts=(("a red apple", 1.0),), **changes) -> RenderSpec:
    sampler = changes.pop("sampler", SamplerSettings(steps=6, skip_steps=0))
    guidance = changes.pop("guidance", GuidanceSettings(cutn_batches=1))
    return RenderSpec(
        width=changes.pop("width", 64),
        height=changes.pop("height", 64),
        seed=changes.pop("seed", 7),
        text_prompts=tuple(WeightedPrompt(t, w) for t, w in prompts),
        sampler=sampler,
        guidance=guidance,
        cuts=changes.pop("cuts", SMALL_CUTS),
        models=models,
        **changes,
    )


def clip_loss(renderer: Renderer, image: np.ndarray, text: str, clip_name: str = "tiny-vit::random") -> float:
    """Spherical distance of the whole image to a text under one of the renderer's CLIPs."""
    clip = renderer.models.clips[clip_name]
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    pixels = torch.nn.functional.interpolate(pixels, size=(clip.input_size,) * 2, mode="bicubic", antialias=True)
    with torch.no_grad():
        return spherical_distance_loss(clip.encode_image(pixels), clip.encode_texts([text])).item()


# Guidance strong enough to see with random tiny CLIPs: start from a re-noised gray
# image (skip 7 of 10 steps), do not clamp the gradient, and skip the augmentations
# (a random CLIP's embedding is dominated by their noise; they are tested apart).
STRONG = dict(
    sampler=SamplerSettings(steps=10, skip_steps=7),
    guidance=GuidanceSettings(cutn_batches=1, clip_guidance_scale=100000, clamp_grad=False, skip_augs=True),
)


def with_scale(spec: RenderSpec, scale: float) -> RenderSpec:
    return dataclasses.replace(spec, guidance=dataclasses.replace(spec.guidance, clip_guidance_scale=scale))


# -- determinism -------------------------------------------------------------------------

def test_same_spec_and_seed_give_identical_pixels_and_another_seed_does_not(full_renderer):
    spec = make_spec()
    one = full_renderer.render(spec)
    two = full_renderer.render(spec)
    assert one.shape == (64, 64, 3) and one.dtype == np.uint8
    assert np.array_equal(one, two)
    other = full_renderer.render(dataclasses.replace(spec, seed=8))
    assert not np.array_equal(one, other)


FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import hashlib, os, sys
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, os.getcwd())
    from engine.models import ModelSet
    from engine.render import Renderer
    from tests.test_engine_render import FULL_UNET, make_spec
    image = Renderer(ModelSet(FULL_UNET, "cpu")).render(make_spec(seed=11))
    print(hashlib.sha256(image.tobytes()).hexdigest())
    """
)


def test_a_fresh_process_renders_the_same_pixels(full_renderer):
    here = hashlib.sha256(full_renderer.render(make_spec(seed=11)).tobytes()).hexdigest()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_SCRIPT], cwd=repo, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == here


# -- counters ----------------------------------------------------------------------------

def test_counters_one_unet_forward_and_one_clip_call_per_model_per_step(full_renderer):
    full_renderer.render(make_spec(guidance=GuidanceSettings(cutn_batches=3)))
    c = full_renderer.counters
    assert c.steps == 6 and c.unet_forwards == 6 and c.secondary_forwards == 0
    assert c.clip_image_calls == {name: 6 for name in TWO_CLIPS}
    # All 3 cut batches of 4 cuts go through the one call.
    assert c.cuts_encoded == {name: 6 * 3 * 4 for name in TWO_CLIPS}
    assert c.sampling_seconds > 0 and c.seconds_per_step == pytest.approx(c.sampling_seconds / 6)


def test_prompt_embeddings_are_computed_once_per_prompt_set(full_renderer):
    spec = make_spec(prompts=(("an unseen prompt", 1.0),))
    full_renderer.render(spec)
    assert full_renderer.counters.clip_text_calls == {name: 1 for name in TWO_CLIPS}
    full_renderer.render(spec)
    assert full_renderer.counters.clip_text_calls == {name: 0 for name in TWO_CLIPS}


def test_secondary_model_path_counts_and_differs_from_full_unet(full_renderer, secondary_renderer):
    spec = make_spec(WITH_SECONDARY)
    image = secondary_renderer.render(spec)
    c = secondary_renderer.counters
    assert c.unet_forwards == 6 and c.secondary_forwards == 6
    assert c.clip_image_calls == {name: 6 for name in TWO_CLIPS}
    assert not np.array_equal(image, full_renderer.render(make_spec()))
    assert np.array_equal(image, secondary_renderer.render(spec))


def test_gradient_checkpointing_gives_the_same_image(full_renderer):
    checkpointed = Renderer(ModelSet(dataclasses.replace(FULL_UNET, use_checkpoint=True), "cpu"))
    spec = make_spec()
    same_spec = dataclasses.replace(spec, models=checkpointed.models.spec)
    difference = np.abs(checkpointed.render(same_spec).astype(int) - full_renderer.render(spec).astype(int))
    # the recomputed segments sum their gradients in another order: last-bit differences,
    # which may round a value or two to the next 8-bit level
    assert difference.max() <= 1 and np.count_nonzero(difference) <= 4


def test_memory_budget_splits_clip_calls_without_changing_the_result(full_renderer):
    spec = make_spec(guidance=GuidanceSettings(cutn_batches=2, clamp_grad=False, clip_guidance_scale=20000))
    whole = full_renderer.render(spec)
    split = Renderer(full_renderer.models, max_cuts_per_clip_call=3)
    parts = split.render(spec)
    assert split.counters.clip_image_calls == {name: 6 * 3 for name in TWO_CLIPS}  # 8 cuts in 3+3+2
    assert np.abs(whole.astype(int) - parts.astype(int)).max() <= 1


# -- guidance ----------------------------------------------------------------------------

def test_guidance_lowers_the_clip_loss_to_the_prompt(full_renderer):
    spec = make_spec(**STRONG)
    guided = full_renderer.render(spec)
    unguided = full_renderer.render(with_scale(spec, 0))
    before, after = clip_loss(full_renderer, unguided, "a red apple"), clip_loss(full_renderer, guided, "a red apple")
    assert after < before - 0.3, (before, after)


def test_a_negative_weight_raises_the_clip_loss_to_that_prompt(full_renderer):
    spec = make_spec(prompts=(("a red apple", -1.0),), **STRONG)
    pushed_away = full_renderer.render(spec)
    unguided = full_renderer.render(with_scale(spec, 0))
    before = clip_loss(full_renderer, unguided, "a red apple")
    after = clip_loss(full_renderer, pushed_away, "a red apple")
    assert after > before + 0.3, (before, after)


def test_another_prompt_gives_another_image(full_renderer):
    one = full_renderer.render(make_spec(**STRONG))
    two = full_renderer.render(make_spec(prompts=(("a blue car", 1.0),), **STRONG))
    assert np.abs(one.astype(int) - two.astype(int)).mean() > 1


def test_weights_must_not_sum_to_zero(full_renderer):
    with pytest.raises(InvalidSpec, match="sum to 0"):
        full_renderer.render(make_spec(prompts=(("a", 1.0), ("b", -1.0))))


def test_fuzzy_prompt_changes_the_image(full_renderer):
    spec = make_spec(**STRONG)
    fuzzy = dataclasses.replace(spec, guidance=dataclasses.replace(spec.guidance, fuzzy_prompt=True, rand_mag=0.5))
    assert not np.array_equal(full_renderer.render(spec), full_renderer.render(fuzzy))


def test_image_prompts_guide_and_their_embeddings_are_cached(full_renderer):
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (80, 48, 3), dtype=np.uint8)
    spec = dataclasses.replace(make_spec(**STRONG), image_prompts=(WeightedPrompt("picture.png", 2.0),))
    with pytest.raises(MissingImagePrompt, match="picture.png"):
        full_renderer.render(spec)
    with_image = full_renderer.render(spec, image_prompt_images={"picture.png": picture})
    first_calls = dict(full_renderer.counters.clip_image_calls)
    assert not np.array_equal(with_image, full_renderer.render(make_spec(**STRONG)))
    again = full_renderer.render(spec, image_prompt_images={"picture.png": picture})
    assert np.array_equal(with_image, again)
    # The prompt image was encoded once (first render: steps + 1 calls per model).
    assert all(first_calls[n] == full_renderer.counters.clip_image_calls[n] + 1 for n in TWO_CLIPS)


# -- init, perlin, plms, symmetry, intermediates, cancellation ---------------------------

def test_init_image_with_skip_steps_stays_closer_to_the_init_than_noise(full_renderer):
    yy, xx = np.mgrid[0:64, 0:64]
    init = np.stack([xx * 4, yy * 4, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    sampler = SamplerSettings(steps=10, skip_steps=7)
    guidance = GuidanceSettings(cutn_batches=1, init_scale=0)
    from_init = full_renderer.render(make_spec(sampler=sampler, guidance=guidance), init=init)
    from_noise = full_renderer.render(make_spec(sampler=SamplerSettings(steps=6, skip_steps=0), guidance=guidance))
    dist_init = np.abs(from_init.astype(int) - init).mean()
    dist_noise = np.abs(from_noise.astype(int) - init).mean()
    assert dist_init < dist_noise - 10, (dist_init, dist_noise)


def test_init_scale_pulls_towards_the_init_under_lpips(full_renderer):
    yy, xx = np.mgrid[0:64, 0:64]
    init = np.stack([xx * 4, yy * 4, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    sampler = SamplerSettings(steps=10, skip_steps=7)
    no_clip = dict(cutn_batches=1, clip_guidance_scale=0, clamp_grad=False)
    plain = full_renderer.render(make_spec(sampler=sampler, guidance=GuidanceSettings(init_scale=0, **no_clip)), init=init)
    pulled = full_renderer.render(
        make_spec(sampler=sampler, guidance=GuidanceSettings(init_scale=100000, **no_clip)), init=init
    )
    lpips = full_renderer.models.lpips()  # tiny model sets: random-VGG LPIPS (test use)

    def distance(image: np.ndarray) -> float:
        as_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].float() / 127.5 - 1  # noqa: E731
        with torch.no_grad():
            return lpips(as_tensor(image), as_tensor(init)).item()

    assert distance(pulled) < distance(plain) - 0.01, (distance(pulled), distance(plain))


def test_perlin_init_renders_deterministically(full_renderer):
    spec = make_spec(sampler=SamplerSettings(steps=6, skip_steps=3, perlin_init=True, perlin_mode="mixed"))
    one = full_renderer.render(spec)
    assert np.array_equal(one, full_renderer.render(spec))
    plain = make_spec(sampler=SamplerSettings(steps=6, skip_steps=3))
    assert not np.array_equal(one, full_renderer.render(plain))


def test_plms_runs_with_one_extra_unet_forward_on_its_first_step(full_renderer):
    image = full_renderer.render(make_spec(sampler=SamplerSettings(mode="plms", steps=6, skip_steps=0)))
    assert image.shape == (64, 64, 3)
    c = full_renderer.counters
    assert c.steps == 6 and c.unet_forwards == 7  # pseudo improved Euler start, as guided-diffusion
    assert not np.array_equal(image, full_renderer.render(make_spec()))


def mirror_error(image: np.ndarray) -> float:
    return float(np.abs(image.astype(int) - image[:, ::-1].astype(int)).mean())


@pytest.mark.parametrize("mode", ["ddim", "plms"])
def test_horizontal_symmetry_gives_a_mirror_symmetric_image(full_renderer, mode):
    sampler = SamplerSettings(mode=mode, steps=6, skip_steps=0, transformation_percent=(0.5,))
    plain = full_renderer.render(make_spec(sampler=sampler))
    symmetric = full_renderer.render(
        make_spec(sampler=dataclasses.replace(sampler, use_horizontal_symmetry=True))
    )
    assert mirror_error(symmetric) < 0.1 * mirror_error(plain), (mirror_error(symmetric), mirror_error(plain))


def test_intermediate_images_are_handed_over_at_the_requested_steps(full_renderer):
    seen = []
    spec = make_spec(intermediate_steps=(0, 3, 5))
    final = full_renderer.render(spec, on_intermediate=lambda k, img: seen.append((k, img)))
    assert [k for k, _ in seen] == [0, 3, 5]
    assert all(img.shape == (64, 64, 3) and img.dtype == np.uint8 for _, img in seen)
    assert np.array_equal(seen[-1][1], final)  # the last step's prediction is the result


def test_should_stop_cancels_between_steps(full_renderer):
    polls = []

    def stop_after_three() -> bool:
        polls.append(1)
        return len(polls) > 3

    with pytest.raises(RenderCancelled):
        full_renderer.render(make_spec(), should_stop=stop_after_three)
    assert full_renderer.counters.steps == 3


# -- several images in lockstep ----------------------------------------------------------

def _levels_apart(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


@pytest.mark.parametrize("path", ["full UNet", "secondary model"])
def test_images_rendered_together_are_the_pictures_each_gives_alone(full_renderer, secondary_renderer, path):
    """render_images: per step one UNet call and one CLIP call per model for all images; each
    image keeps its own random streams (crops, augmentations, fuzzy prompts, eta noise) and
    losses (saturation, clamp), so it is its solo picture up to batched kernels' rounding."""
    renderer = full_renderer if path == "full UNet" else secondary_renderer
    models = FULL_UNET if path == "full UNet" else WITH_SECONDARY
    guidance = GuidanceSettings(cutn_batches=2, fuzzy_prompt=True, sat_scale=10, tv_scale=5, clamp_max=0.02)
    specs = [make_spec(models, seed=seed, sampler=SamplerSettings(steps=6, skip_steps=0, eta=0.8), guidance=guidance)
             for seed in (7, 8, 9)]
    alone = [renderer.render(spec) for spec in specs]
    alone_counters = dataclasses.replace(renderer.counters)
    checked = Renderer(renderer.models, check_syncs=True)  # no host sync in a step with several images
    seen: list[tuple[int, int]] = []
    together = checked.render_images(specs, on_intermediate=lambda b, k, image: seen.append((b, k)))
    for solo, batched in zip(alone, together):
        assert _levels_apart(solo, batched).max() <= 2 and _levels_apart(solo, batched).mean() < 0.01
    assert _levels_apart(together[0], together[1]).mean() > 30  # and the seeds still differ
    counters = checked.counters
    assert counters.unet_forwards == alone_counters.unet_forwards == 6  # one call per step for 3 images
    assert counters.clip_image_calls == alone_counters.clip_image_calls == {n: 6 for n in TWO_CLIPS}
    assert counters.cuts_encoded == {n: 3 * c for n, c in alone_counters.cuts_encoded.items()}
    assert seen == [(b, k) for k in specs[0].intermediate_steps for b in range(3)]


def test_images_rendered_together_each_start_from_their_own_init(full_renderer):
    yy, xx = np.mgrid[0:64, 0:64]
    inits = [np.stack([xx * 4, yy * 4, np.full_like(xx, 128)], axis=-1).astype(np.uint8),
             np.stack([yy * 4, np.full_like(xx, 60), xx * 4], axis=-1).astype(np.uint8)]
    guidance = GuidanceSettings(cutn_batches=1, init_scale=1000)  # LPIPS to each image's own init
    specs = [make_spec(seed=seed, sampler=SamplerSettings(steps=10, skip_steps=6), guidance=guidance)
             for seed in (3, 4)]
    alone = [full_renderer.render(spec, init=init) for spec, init in zip(specs, inits)]
    together = full_renderer.render_images(specs, inits)
    for solo, batched in zip(alone, together):
        assert _levels_apart(solo, batched).max() <= 2 and _levels_apart(solo, batched).mean() < 0.01
    assert _levels_apart(together[0], inits[0]).mean() < _levels_apart(together[0], inits[1]).mean()


def test_images_rendered_together_must_differ_only_in_seed(full_renderer):
    with pytest.raises(InvalidSpec, match="differ only in their seed"):
        full_renderer.render_images([make_spec(seed=1), make_spec(seed=2, width=128)])
    init = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(InvalidSpec, match="an init image each, or none"):
        full_renderer.render_images([make_spec(seed=1), make_spec(seed=2)], [init, None])
    with pytest.raises(EngineError, match="2 images but 1 init images"):
        full_renderer.render_images([make_spec(seed=1), make_spec(seed=2)], [init])
    with pytest.raises(InvalidSpec, match="no images"):
        full_renderer.render_images([])


# -- errors ------------------------------------------------------------------------------

def test_size_not_multiple_of_64_is_refused(full_renderer):
    with pytest.raises(InvalidSpec, match="multiples of 64"):
        full_renderer.render(make_spec(width=100))


def test_spec_for_other_models_is_refused(full_renderer):
    with pytest.raises(ModelMismatch):
        full_renderer.render(make_spec(WITH_SECONDARY))


def test_unknown_model_names_raise_engine_errors():
    with pytest.raises(EngineError, match="unknown diffusion model"):
        ModelSet(ModelSetSpec(diffusion_model="nope", clip_models=("tiny-vit::random",)), "cpu")
    with pytest.raises(EngineError, match="CLIP"):
        ModelSet(ModelSetSpec(diffusion_model="tiny", use_secondary_model=False, clip_models=("ViT-Q-99::openai",)), "cpu")
    with pytest.raises(EngineError, match="built-in"):
        ModelSet(ModelSetSpec(diffusion_model="tiny", use_secondary_model=False, clip_models=("tiny-xyz::random",)), "cpu")


def test_missing_model_files_name_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DISCO_FARM_MODELS", str(tmp_path))
    with pytest.raises(EngineError, match="farm models download 512x512_diffusion_uncond_finetune_008100"):
        ModelSet(ModelSetSpec(clip_models=("tiny-vit::random",)), "cpu")
    with pytest.raises(EngineError, match="not found"):
        ModelSet(
            ModelSetSpec(diffusion_model="custom", custom_model_path=str(tmp_path / "x.pt"), clip_models=("tiny-vit::random",)),
            "cpu",
        )


def test_clip_weights_not_in_the_cache_name_the_download_command():
    spec = ModelSetSpec(diffusion_model="tiny", use_secondary_model=False, clip_models=("ViT-B-32::openai",))
    with pytest.raises(EngineError, match="farm models download ViT-B-32::openai"):
        ModelSet(spec, "cpu")


def test_notebook_api_returns_a_pil_image():
    from engine.api import load_models, render

    spec = make_spec()
    renderer = load_models(spec, device="cpu")
    image = render(renderer, spec)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image), renderer.render(spec))
    from engine.api import render_images

    several = render_images(renderer, spec, seeds=[spec.seed, 99])
    assert [i.size for i in several] == [(64, 64)] * 2
    assert _levels_apart(np.asarray(several[0]), np.asarray(image)).max() <= 2
    assert _levels_apart(np.asarray(several[1]), np.asarray(image)).mean() > 30


def test_out_of_memory_becomes_an_engine_error_naming_the_settings(full_renderer, monkeypatch):
    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    import engine.render

    monkeypatch.setattr(engine.render, "unet_forward", exhausted)
    with pytest.raises(EngineOutOfMemory) as info:
        full_renderer.render(make_spec())
    message = str(info.value)
    for setting in ("width_height", "cutn_batches", "CLIP", "use_secondary_model", "use_checkpoint"):
        assert setting in message
    with pytest.raises(EngineOutOfMemory, match="rendering 2 images of 64x64 together .*lower images_per_call"):
        full_renderer.render_images([make_spec(seed=1), make_spec(seed=2)])


# -- real loading paths (files of the real architectures, random weights) ---------------

def test_files_load_through_the_catalogue_and_custom_path(tmp_path, monkeypatch, full_renderer):
    from engine.secondary import SecondaryDiffusionModel

    torch.save(SecondaryDiffusionModel().state_dict(), tmp_path / "secondary_model_imagenet_2.pth")
    unet_file = tmp_path / "my_unet.pt"
    torch.save(full_renderer.models.unet.state_dict(), unet_file)
    monkeypatch.setenv("DISCO_FARM_MODELS", str(tmp_path))
    settings = tuple(
        (k, full_renderer.models.unet_settings[k])
        for k in ("image_size", "num_channels", "num_res_blocks", "attention_resolutions", "num_head_channels",
                  "num_heads", "resblock_updown", "use_scale_shift_norm")
    )  # over DD's custom-model defaults (KaliYuga's layout)
    spec = ModelSetSpec(
        diffusion_model="custom",
        custom_model_path=str(unet_file),
        custom_model_settings=settings,
        use_secondary_model=True,
        clip_models=("tiny-vit::random",),
    )
    models = ModelSet(spec, "cpu")
    assert models.secondary is not None and not models.is_tiny
    for key, value in full_renderer.models.unet.state_dict().items():
        assert torch.equal(models.unet.state_dict()[key], value)
    image = Renderer(models).render(make_spec(spec, sampler=SamplerSettings(steps=3, skip_steps=0)))
    assert image.shape == (64, 64, 3)
    bad = dataclasses.replace(spec, custom_model_settings=(("num_channels", 64),))
    with pytest.raises(EngineError, match="does not fit"):
        ModelSet(bad, "cpu")


def test_lpips_backbone_loads_from_a_local_vgg16_file_or_names_the_missing_file(tmp_path, monkeypatch):
    from engine.errors import ModelFileMissing
    from engine.models import VGG16_FILENAME, load_lpips

    monkeypatch.setenv("DISCO_FARM_MODELS", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("DISCO_FARM_VGG16", raising=False)
    with pytest.raises(ModelFileMissing, match=VGG16_FILENAME) as missing:
        load_lpips(random_backbone=False)
    assert "farm models download vgg16" in str(missing.value)

    reference = load_lpips(random_backbone=True)
    gen = torch.Generator().manual_seed(5)
    vgg_state = {}  # torchvision's key layout: features.<index>.<weight|bias>
    for slice_name, module in reference.net.named_children():
        for key, tensor in module.state_dict().items():
            vgg_state[f"features.{key}"] = torch.randn(tensor.shape, generator=gen)
    torch.save(vgg_state, tmp_path / VGG16_FILENAME)
    loaded = load_lpips(random_backbone=False)
    for slice_name, module in loaded.net.named_children():
        for key, tensor in module.state_dict().items():
            assert torch.equal(tensor, vgg_state[f"features.{key}"])


def test_benchmark_reports_counters_and_the_dd_style_baseline(capsys):
    from engine.benchmark import main

    result = main(["--preset", "tiny", "--steps", "2", "--cutn-batches", "1", "--baseline", "--device", "cpu"])
    assert result["steps"] == 2 and result["unet_forwards"] == 2 and result["secondary_forwards"] == 2
    assert result["clip_image_calls"] == {name: 2 for name in TWO_CLIPS}
    assert result["seconds_per_step"] > 0 and result["dd_style_seconds_per_step"] > 0
    assert '"speedup"' in capsys.readouterr().out


def test_a_half_precision_secondary_model_renders_close_and_float32_is_back_exactly():
    """configure_secondary: DD's float32 by default; a half type (fp16 on CUDA, a speed
    option bench.gpu_profile measures; bfloat16 here) changes the pixels a little, and
    float32 again gives the default pixels exactly."""
    model_set = ModelSet(WITH_SECONDARY, "cpu")
    assert model_set.secondary_dtype == torch.float32
    spec = make_spec(WITH_SECONDARY)
    renderer = Renderer(model_set)
    default = renderer.render(spec)
    model_set.configure_secondary(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model_set.secondary.parameters())
    half = renderer.render(spec)
    assert np.array_equal(half, renderer.render(spec))  # deterministic
    difference = np.abs(half.astype(int) - default.astype(int))
    assert 0 < difference.mean() < 2, difference.mean()
    model_set.configure_secondary(torch.float32)
    assert np.array_equal(renderer.render(spec), default)
