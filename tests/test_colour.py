"""Colour coherence: histogram matching to a reference frame in RGB, HSV or LAB."""

import cv2
import numpy as np
import pytest

from animation.colour import (COLOUR_MODES, ColourError, match_channel, match_colours,
                              normalise_colour_mode)

SPACES = {"RGB": None, "HSV": cv2.COLOR_RGB2HSV, "LAB": cv2.COLOR_RGB2LAB}


def scene(seed, height=96, width=128):
    """Smooth colourful random image."""
    noise = np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)
    return np.rint(cv2.GaussianBlur(noise, (0, 0), 4.0) * 255).astype(np.uint8)


def reference_and_drifted():
    reference = scene(0)
    reference = cv2.normalize(reference, None, 0, 255, cv2.NORM_MINMAX)
    drifted = reference.astype(np.float32) * [0.6, 0.9, 1.1] + [60, -10, 5]  # colour drift
    drifted = np.clip(drifted, 0, 255).astype(np.uint8)
    return reference, np.roll(drifted, 7, axis=1)  # and a little motion


def histogram_distance(image, reference, space=None):
    """Mean over channels of the 1D Wasserstein distance between value distributions."""
    if space is not None:
        image, reference = cv2.cvtColor(image, space), cv2.cvtColor(reference, space)
    return float(np.mean([np.abs(np.sort(image[..., c].ravel()).astype(float)
                                 - np.sort(reference[..., c].ravel())).mean()
                          for c in range(3)]))


@pytest.mark.parametrize("mode", ["RGB", "HSV", "LAB"])
def test_matching_reduces_histogram_distance(mode):
    reference, drifted = reference_and_drifted()
    matched = match_colours(drifted, reference, mode)
    assert matched.shape == drifted.shape and matched.dtype == np.uint8
    before = histogram_distance(drifted, reference)
    after = histogram_distance(matched, reference)
    assert after < 0.35 * before  # closer in RGB, what the viewer sees
    in_own_space = histogram_distance(matched, reference, SPACES[mode])
    assert in_own_space < 0.35 * histogram_distance(drifted, reference, SPACES[mode])


@pytest.mark.parametrize("mode", ["RGB", "HSV", "LAB"])
def test_each_mode_matches_histograms_in_its_own_colour_space(mode):
    reference = cv2.normalize(scene(0), None, 0, 255, cv2.NORM_MINMAX)
    other = cv2.normalize(scene(1), None, 0, 255, cv2.NORM_MINMAX)  # different content
    other = np.clip(other.astype(np.float32) * [0.6, 0.9, 1.1] + [60, -10, 5], 0, 255)
    other = other.astype(np.uint8)
    own = histogram_distance(match_colours(other, reference, mode), reference, SPACES[mode])
    for rival in set(SPACES) - {mode}:
        matched_elsewhere = match_colours(other, reference, rival)
        assert own < 0.6 * histogram_distance(matched_elsewhere, reference, SPACES[mode])


def test_rgb_matching_is_nearly_exact_and_keeps_structure():
    reference, drifted = reference_and_drifted()
    matched = match_colours(drifted, reference, "RGB")
    assert histogram_distance(matched, reference) < 1.0
    # a monotone per-channel map: the order of pixel values inside a channel is kept
    for c in range(3):
        order = np.argsort(drifted[..., c].ravel(), kind="stable")
        assert (np.diff(matched[..., c].ravel()[order].astype(int)) >= 0).all()


def test_none_mode_returns_unchanged_copy():
    reference, drifted = reference_and_drifted()
    out = match_colours(drifted, reference, "none")
    assert np.array_equal(out, drifted) and out is not drifted


def test_reference_may_have_a_different_size():
    reference = scene(1, 48, 64)
    image = np.clip(scene(2).astype(int) + 40, 0, 255).astype(np.uint8)
    matched = match_colours(image, reference, "LAB")
    assert matched.shape == image.shape
    assert histogram_distance(matched, cv2.resize(reference, (128, 96))) < \
        histogram_distance(image, cv2.resize(reference, (128, 96)))


def test_match_channel_maps_quantiles():
    source = np.array([0, 0, 10, 10, 20, 20, 30, 30], np.uint8)
    reference = np.array([100, 100, 110, 110, 120, 120, 130, 130], np.uint8)
    assert np.array_equal(match_channel(source, reference), reference.astype(np.float32))


def test_mode_names():
    assert normalise_colour_mode("lab") == "LAB"
    assert normalise_colour_mode(None) == "none"
    assert set(COLOUR_MODES) == {"none", "RGB", "HSV", "LAB"}
    with pytest.raises(ColourError, match="unknown colour coherence mode 'XYZ'"):
        match_colours(scene(0, 8, 8), scene(1, 8, 8), "XYZ")
    assert issubclass(ColourError, ValueError)
