"""Model catalogue: names, DD's UNet settings, cache paths, and CLIP name parsing."""

from __future__ import annotations

import os
import pathlib
import re

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine import catalogue  # noqa: E402
from engine.catalogue import (  # noqa: E402
    DIFFUSION_MODELS,
    SECONDARY_MODEL,
    ModelError,
    ModelNotDownloaded,
    UnknownModel,
    all_model_files,
    cached_path,
    lookup_model_file,
    models_dir,
    parse_clip_name,
)

EXPECTED_SHA = {
    "512x512_diffusion_uncond_finetune_008100": "9c111ab89e214862b76e1fa6a1b3f1d329b1a88281885943d2cdbe357ad57648",
    "256x256_diffusion_uncond": "a37c32fffd316cd494cf3f35b339936debdc1576dad13fe57c42399a5dbc78b1",
    "portrait_generator_v001": "b7e8c747af880d4480b6707006f1ace000b058dd0eac5bb13558ba3752d9b5b9",
    "pixelartdiffusion_expanded": "a73b40556634034bf43b5a716b531b46fb1ab890634d854f5bcbbef56838739a",
    "pixel_art_diffusion_hard_256": "be4a9de943ec06eef32c65a1008c60ad017723a4d35dc13169c66bb322234161",
    "pixel_art_diffusion_soft_256": "d321590e46b679bf6def1f1914b47c89e762c76f19ab3e3392c8ca07c791039c",
    "pixelartdiffusion4k": "a1ba4f13f6dabb72b1064f15d8ae504d98d6192ad343572cc416deda7cccac30",
    "PulpSciFiDiffusion": "b79e62613b9f50b8a3173e5f61f0320c7dbb16efad42a92ec94d014f6e17337f",
    "watercolordiffusion_2": "49c281b6092c61c49b0f1f8da93af9b94be7e0c20c71e662e2aa26fee0e4b1a9",
    "watercolordiffusion": "a3e6522f0c8f278f90788298d66383b11ac763dd5e0d62f8252c962c23950bd6",
    "secondary_model_imagenet_2": "983e3de6f95c88c81b2ca7ebb2c217933be1973b1ff058776b970f901584613a",
    "vgg16": "397923af",  # torchvision publishes an 8-digit prefix (in the file name)
    "raft_large_C_T_V1": "22a6c225",
}


def test_catalogue_names_hashes_and_urls():
    files = all_model_files()
    assert list(files) == list(EXPECTED_SHA)
    for name, model in files.items():
        assert model.sha256 == EXPECTED_SHA[name]
        assert model.urls and all(url.startswith("https://") for url in model.urls)
        # DD names the local file after the first URL's basename.
        assert model.urls[0].rsplit("/", 1)[1] == model.filename
    assert files["512x512_diffusion_uncond_finetune_008100"].urls[0].startswith("https://huggingface.co/lowlevelware/")
    assert files["512x512_diffusion_uncond_finetune_008100"].urls[1].startswith("https://the-eye.eu/")
    assert SECONDARY_MODEL.urls[1].startswith("https://the-eye.eu/")


def test_custom_models_start_from_dds_else_branch():
    from engine.catalogue import CUSTOM_MODEL_UNET

    assert CUSTOM_MODEL_UNET == {**DIFFUSION_MODELS["pixel_art_diffusion_soft_256"].unet_kwargs()}
    assert (CUSTOM_MODEL_UNET["attention_resolutions"], CUSTOM_MODEL_UNET["num_channels"], CUSTOM_MODEL_UNET["num_heads"],
            CUSTOM_MODEL_UNET["use_scale_shift_norm"], CUSTOM_MODEL_UNET["image_size"]) == ("16", 128, 1, False, 256)


def test_dd_unet_settings():
    big = DIFFUSION_MODELS["512x512_diffusion_uncond_finetune_008100"].unet_kwargs()
    assert big["attention_resolutions"] == "32, 16, 8"
    assert (big["num_channels"], big["num_head_channels"], big["image_size"]) == (256, 64, 512)
    assert big["resblock_updown"] and big["use_scale_shift_norm"] and big["learn_sigma"] and big["rescale_timesteps"]
    assert big["noise_schedule"] == "linear" and big["diffusion_steps"] == 1000 and big["class_cond"] is False
    assert DIFFUSION_MODELS["256x256_diffusion_uncond"].unet_kwargs() == {**big, "image_size": 256}

    portrait = DIFFUSION_MODELS["portrait_generator_v001"].unet_kwargs()
    assert portrait == {**big, "num_channels": 128, "num_heads": 4, "num_head_channels": -1}

    for name in ("pixelartdiffusion_expanded", "watercolordiffusion_2"):
        tune = DIFFUSION_MODELS[name].unet_kwargs()
        assert tune["attention_resolutions"] == "16" and tune["image_size"] == 256
        assert (tune["num_channels"], tune["num_heads"], tune["num_head_channels"]) == (128, 1, -1)
        assert tune["use_scale_shift_norm"] is False and tune["resblock_updown"] is False
    assert all(entry.unet_kwargs()["use_fp16"] is False for entry in DIFFUSION_MODELS.values())


@pytest.mark.parametrize("name", ["256x256_diffusion_uncond", "portrait_generator_v001", "watercolordiffusion_2"])
def test_settings_build_a_real_guided_diffusion_unet(name):
    """Every setting is a guided-diffusion keyword; a shrunken copy builds and runs."""
    import torch
    from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults

    torch.set_num_threads(1)
    defaults = model_and_diffusion_defaults()
    settings = DIFFUSION_MODELS[name].unet_kwargs()
    assert set(settings) <= set(defaults)
    small = {**defaults, **settings, "image_size": 64, "num_channels": 64, "num_res_blocks": 1, "timestep_respacing": "10"}
    model, diffusion = create_model_and_diffusion(**small)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64), torch.tensor([5]))
    assert out.shape == (1, 6, 64, 64)  # learn_sigma: eps and variance
    assert diffusion.num_timesteps == 10
    has_attention = any(type(m).__name__ == "AttentionBlock" for m in model.modules())
    assert has_attention


def test_unknown_model_did_you_mean():
    with pytest.raises(UnknownModel, match=r"did you mean '512x512_diffusion_uncond_finetune_008100'"):
        lookup_model_file("512x512_diffusion_uncond_finetune_00810")
    with pytest.raises(ModelError, match="unknown model 'nothing-like-it'"):
        lookup_model_file("nothing-like-it")
    assert lookup_model_file("PADexpanded.pt").name == "pixelartdiffusion_expanded"
    assert lookup_model_file("secondary") is SECONDARY_MODEL


def test_models_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("DISCO_FARM_MODELS", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models_dir() == tmp_path / "home" / ".cache" / "disco-farm" / "models"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models_dir() == tmp_path / "xdg" / "disco-farm" / "models"
    monkeypatch.setenv("DISCO_FARM_MODELS", str(tmp_path / "explicit"))
    assert models_dir() == tmp_path / "explicit"


def test_a_tilde_that_cannot_be_expanded_is_a_model_error_naming_the_variable(monkeypatch, tmp_path):
    """pathlib raised RuntimeError ("Could not determine home directory"): a traceback."""
    monkeypatch.setenv("DISCO_FARM_MODELS", "~nonexistentuser/x")
    with pytest.raises(ModelError) as error:
        models_dir()
    assert str(error.value) == ("DISCO_FARM_MODELS=~nonexistentuser/x: cannot expand '~nonexistentuser': "
                                "user 'nonexistentuser' has no home folder here")
    monkeypatch.delenv("DISCO_FARM_MODELS")
    monkeypatch.setenv("XDG_CACHE_HOME", "~nonexistentuser/cache")
    with pytest.raises(ModelError, match="^XDG_CACHE_HOME=~nonexistentuser/cache: cannot expand"):
        models_dir()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.delenv("HOME")
    import pwd

    monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))  # no passwd entry
    with pytest.raises(ModelError, match=r"the home folder is not known \(no \$HOME\): set DISCO_FARM_MODELS"):
        models_dir()
    monkeypatch.setenv("DISCO_FARM_MODELS", "~/models")  # with HOME known again, ~ expands
    monkeypatch.setenv("HOME", str(tmp_path))
    assert models_dir() == tmp_path / "models"


def test_cached_path_error_names_the_fetch_command(monkeypatch, tmp_path):
    monkeypatch.setenv("DISCO_FARM_MODELS", str(tmp_path))
    name = "512x512_diffusion_uncond_finetune_008100"
    with pytest.raises(ModelNotDownloaded) as info:
        cached_path(name)
    assert str(info.value) == (
        f"model '{name}' is not downloaded (looked in {tmp_path}); fetch it with: farm models download {name}"
    )
    assert isinstance(info.value, ValueError)
    target = tmp_path / "512x512_diffusion_uncond_finetune_008100.pt"
    target.write_bytes(b"weights")
    assert cached_path(name) == target
    with pytest.raises(UnknownModel):
        cached_path("512x512")


@pytest.mark.parametrize(
    "spelling, expected",
    [
        ("ViT-B-32::openai", ("ViT-B-32", "openai")),
        ("ViT-B-32::laion2b_s34b_b79k", ("ViT-B-32", "laion2b_s34b_b79k")),
        ("ViT-B/32", ("ViT-B-32", "openai")),
        ("ViT-B/16", ("ViT-B-16", "openai")),
        ("ViT-L/14@336px", ("ViT-L-14-336", "openai")),
        ("RN50x4", ("RN50x4", "openai")),
        ("RN101", ("RN101", "openai")),
        ("ViT-B-16", ("ViT-B-16", "openai")),
        ("ViTB32_laion2b_e16", ("ViT-B-32", "laion2b_e16")),
        ("ViTB32_laion400m_32", ("ViT-B-32", "laion400m_e32")),
        ("ViTB32quickgelu_laion400m_e31", ("ViT-B-32-quickgelu", "laion400m_e31")),
        ("RN50_yffcc15m", ("RN50", "yfcc15m")),
        ("RN50_quickgelu_cc12m", ("RN50-quickgelu", "cc12m")),
        ("RN101_quickgelu_yfcc15m", ("RN101-quickgelu", "yfcc15m")),
        ("tiny-vit", ("tiny-vit", "")),
        ("tiny-rn::random", ("tiny-rn", "random")),
    ],
)
def test_parse_clip_name(spelling, expected):
    assert parse_clip_name(spelling) == expected


def test_parse_clip_name_accepts_local_weights_file(tmp_path):
    weights = tmp_path / "vit.pt"
    assert parse_clip_name(f"ViT-B-32::{weights}") == ("ViT-B-32", str(weights))


@pytest.mark.parametrize(
    "spelling, message",
    [
        ("ViT-B-23::openai", r"unknown CLIP architecture 'ViT-B-23'.*did you mean 'ViT-B-32'"),
        ("ViT-B-32::laion2b_e61", r"unknown pretrained tag 'laion2b_e61' for CLIP 'ViT-B-32'.*did you mean 'laion2b_e16'"),
        ("ViT-B-32::", r"empty pretrained tag"),
        ("tiny-clip::random", r"unknown built-in CLIP model 'tiny-clip::random'"),
        ("tiny-vit::seed3", r"unknown built-in CLIP model 'tiny-vit::seed3'"),
        ("ViT-B-16-plus-240", r"needs a pretrained tag.*laion400m_e31"),
        ("", r"non-empty"),
    ],
)
def test_parse_clip_name_errors(spelling, message):
    with pytest.raises(UnknownModel, match=message) as info:
        parse_clip_name(spelling)
    assert "\n" not in str(info.value)


def test_entries_are_frozen():
    entry = DIFFUSION_MODELS["watercolordiffusion_2"]
    with pytest.raises(Exception):
        entry.file.sha256 = "0" * 64  # type: ignore[misc]
    assert re.fullmatch(r"[0-9a-f]{64}", entry.file.sha256)
    assert isinstance(catalogue.models_dir(), pathlib.Path)


def test_random_tag_gives_random_weights_of_a_real_architecture():
    import torch

    from engine.models import ModelSet
    from engine.spec import ModelSetSpec

    assert parse_clip_name("RN50::random") == ("RN50", "random")
    with pytest.raises(UnknownModel, match="unknown CLIP architecture"):
        parse_clip_name("RN5O::random")
    torch.set_num_threads(1)
    models = ModelSet(ModelSetSpec(diffusion_model="tiny", use_secondary_model=False,
                                   clip_models=("RN50::random",)), "cpu")
    clip = models.clips["RN50::random"]
    assert clip.input_size == 224
    assert sum(p.numel() for p in clip.model.visual.parameters()) > 20_000_000  # the real RN50 tower
