"""Monocular depth: DD's disparity-to-depth math, MiDaS input sizing, tiny DPT, loading."""

import os

import cv2
import numpy as np
import pytest
import torch

from animation.depth import (MIN_DEPTH, DepthError, DepthModel, DepthModelError,
                             depth_from_disparity, midas_input_size, normalise_depth,
                             save_depth_png)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_model():
    return DepthModel.tiny(seed=0)


def random_image(height=64, width=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_depth_from_disparity_known_numbers():
    disparity = np.array([[0.0, 12.0], [31.0, 60.0]], np.float32)
    depth = depth_from_disparity(disparity)
    # DD: (50 - disparity) / 19; at or past 50 the depth is floored instead of going <= 0
    assert depth.dtype == np.float32
    assert np.allclose(depth, [[50 / 19, 2.0], [1.0, MIN_DEPTH]])


def test_depth_from_disparity_blends_a_second_depth_like_dd():
    disparity = np.array([[12.0, 31.0]])
    second = np.array([[4.0, 1.0]])
    depth = depth_from_disparity(disparity, second, midas_weight=0.3)
    assert np.allclose(depth, [[0.3 * 2.0 + 0.7 * 4.0, 0.3 * 1.0 + 0.7 * 1.0]])
    assert np.allclose(depth_from_disparity(disparity, second, midas_weight=1.0), [[2.0, 1.0]])
    # without a second map the MiDaS depth is used alone, whatever the weight
    assert np.allclose(depth_from_disparity(disparity, midas_weight=0.3), [[2.0, 1.0]])


@pytest.mark.parametrize("args, words", [
    ((np.zeros((2, 2)), np.zeros((3, 2)), 0.5), "does not match"),
    ((np.zeros((2, 2)), np.zeros((2, 2)), 1.5), "midas_weight"),
    ((np.zeros(4), None, 1.0), "HxW"),
    ((np.full((2, 2), np.nan), None, 1.0), "finite"),
])
def test_depth_from_disparity_rejects_bad_input(args, words):
    with pytest.raises(DepthError, match=words):
        depth_from_disparity(*args)


@pytest.mark.parametrize("size, side, expected", [
    ((1280, 768), 384, (640, 384)),   # DD default frame: the height scale (0.5) is nearer 1
    ((1920, 1080), 384, (672, 384)),  # 682.7 rounds to the nearest multiple of 32
    ((512, 256), 384, (384, 192)),    # width scale 0.75 beats height scale 1.5
    ((64, 64), 384, (384, 384)),
    ((20, 5), 64, (64, 32)),          # never below one multiple of 32
])
def test_midas_input_size_follows_the_minimal_rule(size, side, expected):
    assert midas_input_size(*size, side=side) == expected


def test_tiny_model_predicts_finite_depth_of_the_image_size(tiny_model):
    image = random_image()
    depth = tiny_model.predict(image)
    assert depth.shape == (64, 64) and depth.dtype == np.float32
    assert np.isfinite(depth).all() and depth.min() >= MIN_DEPTH
    assert depth.std() > 0  # the random network does respond to the pixels
    assert np.array_equal(depth, depth_from_disparity(tiny_model.disparity(image)))
    non_square = tiny_model.predict(random_image(48, 80, seed=1))
    assert non_square.shape == (48, 80) and np.isfinite(non_square).all()


def test_tiny_model_is_deterministic_and_labelled_random(tiny_model):
    image = random_image(seed=3)
    again = DepthModel.tiny(seed=0)
    assert np.array_equal(tiny_model.predict(image), again.predict(image))
    assert np.array_equal(tiny_model.predict(image), tiny_model.predict(image))
    assert not np.array_equal(DepthModel.tiny(seed=1).disparity(image),
                              tiny_model.disparity(image))
    assert not np.array_equal(tiny_model.disparity(random_image(seed=4)),
                              tiny_model.disparity(image))
    assert tiny_model.is_random and "random" in tiny_model.name
    assert tiny_model.network_input(image).shape == (1, 3, 64, 64)


def test_load_from_a_local_folder_round_trips(tiny_model, tmp_path):
    tiny_model.network.save_pretrained(tmp_path / "dpt")
    loaded = DepthModel.load(tmp_path / "dpt", device="cpu")
    image = random_image(seed=5)
    assert np.array_equal(loaded.disparity(image), tiny_model.disparity(image))
    assert not loaded.is_random


def test_missing_model_folder_gives_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(DepthModelError, match="does not exist") as caught:
        DepthModel.load(missing)
    message = str(caught.value)
    assert str(missing) in message and "farm models download dpt-large" in message
    assert "\n" not in message


def test_folder_without_config_or_a_file_gives_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DepthModelError, match="config.json"):
        DepthModel.load(tmp_path / "empty")
    (tmp_path / "weights.pt").write_bytes(b"not a folder")
    with pytest.raises(DepthModelError, match="is a file"):
        DepthModel.load(tmp_path / "weights.pt")


def test_offline_hub_id_not_in_cache_names_how_to_get_it():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest: no network in tests
    with pytest.raises(DepthModelError) as caught:
        DepthModel.load("disco-farm-tests/no-such-depth-model")
    message = str(caught.value)
    assert "HF_HUB_OFFLINE" in message and "farm models download dpt-large" in message
    assert "local model folder" in message and "\n" not in message


def test_save_depth_png_writes_normalised_16_and_8_bit(tmp_path):
    depth = np.array([[1.0, 2.0], [3.0, 5.0]], np.float32)
    written = cv2.imread(str(save_depth_png(depth, tmp_path / "d16.png")), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16
    assert np.array_equal(written, np.round(np.array([[0, 0.25], [0.5, 1.0]]) * 65535))
    eight = cv2.imread(str(save_depth_png(depth, tmp_path / "d8.png", bits=8)),
                       cv2.IMREAD_UNCHANGED)
    assert eight.dtype == np.uint8 and eight.min() == 0 and eight.max() == 255
    assert np.array_equal(normalise_depth(np.full((3, 3), 2.0)), np.zeros((3, 3)))


@pytest.mark.parametrize("path, bits, words", [
    ("missing-folder/d.png", 16, "could not write"),
    ("d.jpg", 16, ".png"),
    ("d.png", 12, "8 or 16"),
])
def test_save_depth_png_rejects_bad_arguments(tmp_path, path, bits, words):
    with pytest.raises(DepthError, match=words):
        save_depth_png(np.ones((2, 2)), tmp_path / path, bits=bits)


def test_farm_models_download_caches_the_depth_model_where_3d_mode_looks(tmp_path, monkeypatch, capsys):
    """The hub cannot be reached here: the hub id is pointed at a local tiny DPT folder."""
    import farm.models_cmd as models_cmd
    from animation.depth import DepthModel
    from farm.cli import main
    from farm.worker import depth_source

    hub = tmp_path / "hub-copy"
    DepthModel.tiny(seed=3).network.save_pretrained(hub)
    monkeypatch.setitem(models_cmd.DEPTH_MODELS, "dpt-large", str(hub))
    monkeypatch.setenv("DISCO_FARM_MODELS", str(tmp_path / "cache"))
    assert main(["models", "download", "dpt_large"]) == 0
    assert "dpt-large:" in capsys.readouterr().out
    source = depth_source("dpt_large")
    assert source == str(tmp_path / "cache" / "dpt-large")
    image = np.full((64, 64, 3), 128, np.uint8)
    assert np.array_equal(DepthModel.load(source).predict(image), DepthModel.tiny(seed=3).predict(image))
