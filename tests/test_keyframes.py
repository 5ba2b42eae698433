"""Keyframe strings: parsing, DD's in-betweens, expression keys and error messages."""

import math
import pickle

import numpy as np
import pytest
from scipy.interpolate import CubicSpline

from animation.expressions import compile_expression
from animation.keyframes import (
    INTERPOLATIONS,
    KeyframeError,
    Schedule,
    is_keyframe_string,
    keyframe_variables,
    parse_keyframes,
)

# --- DD's own examples -------------------------------------------------------------------


def test_dd_zoom_default():
    values = parse_keyframes("0: (1), 10: (1.05)").values(20)
    expected = [1.0 + 0.005 * i for i in range(11)] + [1.05] * 9
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
    assert values.dtype == np.float64 and values.shape == (20,)


def test_dd_translation_z_and_angle_are_constant():
    np.testing.assert_array_equal(parse_keyframes("0: (10.0)").values(7), np.full(7, 10.0))
    np.testing.assert_array_equal(parse_keyframes("0:(0)").values(5), np.zeros(5))


def test_dd_docstring_example_holds_before_and_after():
    # DD's get_inbetweens docstring: {1: 5, 3: 6}, max_frames 5 -> 5, 5, 5.5, 6, 6 and ints 5, 5, 5, 6, 6.
    schedule = parse_keyframes("1: (5), 3: (6)")
    np.testing.assert_allclose(schedule.values(5), [5.0, 5.0, 5.5, 6.0, 6.0])
    np.testing.assert_array_equal(schedule.values_int(5), [5, 5, 5, 6, 6])
    assert schedule.values_int(5).dtype == np.int64


def test_keys_separated_by_spaces_only_are_read_as_dd_reads_them():
    spaced, commas = parse_keyframes("0:(0) 4:(2)"), parse_keyframes("0:(0), 4:(2)")
    assert spaced.values(6).tolist() == commas.values(6).tolist() == [0, 0.5, 1, 1.5, 2, 2]


def test_two_segments():
    values = parse_keyframes("0: (0), 10: (10), 20: (-10)").values(25)
    assert values[5] == 5.0
    assert values[10] == 10.0
    assert values[15] == 0.0
    assert values[18] == pytest.approx(-6.0)
    np.testing.assert_array_equal(values[20:], np.full(5, -10.0))


def test_integer_values_truncate_toward_zero_like_astype_int():
    schedule = parse_keyframes("0: (2), 4: (-2)")
    np.testing.assert_allclose(schedule.values(5), [2, 1, 0, -1, -2])
    np.testing.assert_array_equal(parse_keyframes("0: (2.9), 2: (-2.9)").values_int(3), [2, 0, -2])


# --- splines -------------------------------------------------------------------------------

# Reference numbers from DD's get_inbetweens (pandas 3.1 Series.interpolate on the keys
# plus DD's pins at frames 0 and max_frames-1), computed once outside this project.
DD_CUBIC = {
    ("0: (0), 10: (5), 20: (-3), 30: (2)", 40): {
        3: 5.085589016018306, 5: 6.457551487414188, 15: 0.29244851258581384,
        25: -1.6273455377574353, 33: 3.6672448512585807, 35: 4.056521739130433, 39: 2.0,
    },
    # three keys: DD falls back to quadratic
    ("0: (0), 10: (4), 20: (1)", 25): {5: 3.128205128205128, 15: 2.6153846153846154, 22: 0.8564102564102565, 24: 1.0},
    # first key after frame 0: DD's pin at 0 makes the spline move before the first key
    ("5: (1), 10: (2), 15: (0), 20: (3)", 30): {
        0: 1.0, 2: 0.364780256288562, 7: 1.7308172757475089, 12: 1.1359506407214046, 25: 6.245372567631703,
    },
}


@pytest.mark.parametrize("text, n_frames", list(DD_CUBIC))
def test_cubic_matches_dd_numbers(text, n_frames):
    values = parse_keyframes(text, "cubic").values(n_frames)
    for frame, expected in DD_CUBIC[(text, n_frames)].items():
        assert values[frame] == pytest.approx(expected, rel=1e-12, abs=1e-12), frame


def test_cubic_is_the_not_a_knot_spline_through_keys_and_end_pin():
    keys = {0: 1.0, 7: 3.0, 15: -2.0, 22: 0.5, 30: 4.0}
    text = ", ".join(f"{frame}: ({value})" for frame, value in keys.items())
    n_frames = 41
    knots_x = [*keys, n_frames - 1]
    knots_y = [*keys.values(), 4.0]
    spline = CubicSpline(knots_x, knots_y, bc_type="not-a-knot")
    values = parse_keyframes(text).values(n_frames, interpolation="Cubic")  # DD's spelling works
    np.testing.assert_allclose(values, spline(np.arange(n_frames)), rtol=1e-10, atol=1e-10)
    for frame, value in keys.items():
        assert values[frame] == pytest.approx(value)
    assert values[35] != pytest.approx(4.0)  # a spline, not a hold, up to the pinned last frame


def test_spline_falls_back_like_dd():
    two_keys = parse_keyframes("0: (0), 10: (1)")
    np.testing.assert_array_equal(two_keys.values(20, interpolation="cubic"), two_keys.values(20))
    np.testing.assert_array_equal(two_keys.values(20, interpolation="quadratic"), two_keys.values(20))
    three = parse_keyframes("0: (0), 10: (4), 20: (1)")
    np.testing.assert_array_equal(three.values(25, interpolation="cubic"), three.values(25, interpolation="quadratic"))
    assert not np.allclose(three.values(25, interpolation="quadratic"), three.values(25))


def test_step_holds_the_left_value():
    values = parse_keyframes("2: (1), 5: (3), 8: (-1)", "step").values(11)
    np.testing.assert_array_equal(values, [1, 1, 1, 1, 1, 3, 3, 3, -1, -1, -1])


def test_interpolation_is_stored_and_can_be_overridden():
    schedule = parse_keyframes("0: (0), 4: (4)", "step")
    assert schedule.interpolation == "step"
    np.testing.assert_array_equal(schedule.values(5), [0, 0, 0, 0, 4])
    np.testing.assert_array_equal(schedule.values(5, interpolation="linear"), [0, 1, 2, 3, 4])
    assert set(INTERPOLATIONS) == {"linear", "quadratic", "cubic", "step"}


# --- expressions in values -----------------------------------------------------------------


def test_expression_key_is_evaluated_at_every_frame():
    values = parse_keyframes("0:(10*sin(2*pi*t/48))").values(100)
    for t in (0, 5, 12, 30, 36, 99):
        assert values[t] == pytest.approx(10 * math.sin(2 * math.pi * t / 48), abs=1e-12)


def test_seconds_use_fps():
    schedule = parse_keyframes("0: (s * 2)")
    np.testing.assert_allclose(schedule.values(5, fps=2.0), [0, 1, 2, 3, 4])
    np.testing.assert_allclose(schedule.values(5, fps=4.0), [0, 0.5, 1, 1.5, 2])
    assert schedule.at(24, fps=12.0) == 4.0


def test_mixed_expression_and_constant_keys():
    # 0..9: expression; 10..19: constant 5 interpolated toward key 20 (expression at frame 20 = 40);
    # 20..: expression again.
    values = parse_keyframes("0: (t), 10: (5), 20: (2*t)").values(30)
    np.testing.assert_allclose(values[:10], np.arange(10))
    np.testing.assert_allclose(values[10:20], 5 + (40 - 5) * np.arange(10) / 10)
    np.testing.assert_allclose(values[20:], 2 * np.arange(20, 30))


def test_expression_as_first_key_after_frame_zero_holds_its_start_value():
    values = parse_keyframes("5: (t * t)").values(8)
    np.testing.assert_allclose(values, [25, 25, 25, 25, 25, 25, 36, 49])


def test_balanced_parentheses_in_values():
    schedule = parse_keyframes("0: (max(1, (t + 1) * (2)) ), 10: ((((3))))")
    values = schedule.values(12)
    assert values[0] == 2.0  # max(1, 2)
    assert values[9] == 20.0
    assert values[10] == 3.0 and values[11] == 3.0
    assert schedule.keys[0][1].text == "max(1, (t + 1) * (2))"


def test_at_agrees_with_values():
    for text, interpolation, n_frames in [
        ("0: (1), 10: (1.05)", "linear", 30),
        ("0: (0), 10: (5), 20: (-3), 30: (2)", "cubic", 40),
        ("3: (1), 6: (sin(t)), 9: (2)", "step", 15),
        ("0: (t), 10: (5), 20: (2*t)", "linear", 25),
    ]:
        schedule = parse_keyframes(text, interpolation)
        values = schedule.values(n_frames, fps=8.0)
        for frame in range(n_frames):
            assert schedule.at(frame, fps=8.0, n_frames=n_frames) == values[frame]
    assert parse_keyframes("0: (1), 10: (1.05)").at(1000) == 1.05


def test_keys_past_the_end_keep_their_place():
    # DD would move frame 100 onto the last frame; here values do not depend on the clip length.
    schedule = parse_keyframes("0: (0), 100: (100)")
    np.testing.assert_allclose(schedule.values(5), [0, 1, 2, 3, 4])


def test_evaluation_errors_name_key_and_frame():
    schedule = parse_keyframes("0: (1), 10: (1 / (t - 12))")
    schedule.values(12)
    with pytest.raises(KeyframeError, match=r"key at frame 10: .*at frame 12: division by zero"):
        schedule.values(13)


# --- plain values, helpers, dataclass -------------------------------------------------------


@pytest.mark.parametrize("value", [3, 2.5, np.float64(1.25), np.int64(4)])
def test_plain_number_is_a_constant(value):
    schedule = parse_keyframes(value)
    np.testing.assert_array_equal(schedule.values(4), np.full(4, float(value)))
    assert schedule.is_constant and schedule.variables == frozenset()


def test_bare_expression_string_is_one_key_at_frame_zero_like_dd():
    np.testing.assert_array_equal(parse_keyframes("1.05").values(3), [1.05] * 3)
    np.testing.assert_array_equal(parse_keyframes("t / 2").values(3), [0, 0.5, 1])
    assert not is_keyframe_string("1.05")


def test_is_keyframe_string():
    assert is_keyframe_string("0: (1)")
    assert is_keyframe_string("  10 :(1), 20: (2)")
    assert is_keyframe_string("-3: (1)")  # parsed as keyframes, then refused with a clear error
    assert is_keyframe_string("0 (1)")  # missing ':' is reported as such
    assert not is_keyframe_string("10*sin(t)")
    assert not is_keyframe_string(1.0)
    assert not is_keyframe_string(None)


def test_variables_used():
    assert keyframe_variables("0: (1), 10: (1.05)") == frozenset()
    assert keyframe_variables("0: (1), 10: (sin(t))") == frozenset({"t"})
    assert keyframe_variables("0: (s), 10: (t)") == frozenset({"t", "s"})
    assert keyframe_variables(2.0) == frozenset()
    assert parse_keyframes("0: (2 * pi)").variables == frozenset()


def test_is_constant():
    assert parse_keyframes("0: (1), 10: (1)").is_constant
    assert not parse_keyframes("0: (1), 10: (1.05)").is_constant
    assert not parse_keyframes("0: (t)").is_constant


def test_keys_are_sorted_and_round_trip_as_text():
    schedule = parse_keyframes(" 10:(2) ,0:( 1 ), ")
    assert [frame for frame, _ in schedule.keys] == [0, 10]
    assert schedule.to_text() == "0: (1), 10: (2)"
    assert parse_keyframes(schedule.to_text()) == schedule


def test_schedule_is_frozen_hashable_and_picklable():
    schedule = parse_keyframes("0: (1), 10: (sin(t))", "cubic")
    with pytest.raises(AttributeError):
        schedule.interpolation = "linear"  # type: ignore[misc]
    assert hash(schedule) == hash(parse_keyframes("0: (1), 10: (sin(t))", "cubic"))
    copy = pickle.loads(pickle.dumps(schedule))
    assert copy == schedule
    np.testing.assert_array_equal(copy.values(15), schedule.values(15))


def test_schedule_constructor_checks_keys():
    one = compile_expression("1")
    assert Schedule(((0, one),)).values(2).tolist() == [1.0, 1.0]
    for keys, words in [((), "at least one key"), (((3, one), (3, one)), "must increase"),
                        (((-1, one),), ">= 0"), (((0, 1.0),), "Expressions")]:
        with pytest.raises(KeyframeError, match=words):
            Schedule(keys)


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty keyframe string"),
        ("   ", "empty keyframe string"),
        ("0 (1)", "at character 3: expected ':' after frame number"),
        ("0: 1", "at character 4: expected '(' after ':'"),
        ("0: (1), 10: (1.05", "at character 13: '(' is never closed"),
        ("0: (1), 10: ((1.05)", "at character 13: '(' is never closed"),
        ("0: (1)10: (2)", "at character 7: expected ',' between keys, found '1'"),
        ("0: (1), 10: (2))", "at character 16: expected ',' between keys, found ')'"),
        ("0: (1), 10: (2) garbage", "at character 17: expected ',' between keys, found 'g'"),
        ("0: (1), 0: (2)", "at character 9: frame 0 is given twice"),
        ("0: (1), 10: (2), 10: (3)", "at character 18: frame 10 is given twice"),
        ("0: (1), 10.0: (3)", "at character 9: frame numbers must be whole numbers"),
        ("-5: (1)", "at character 1: negative frame number"),
        ("0: (1), -5: (2)", "at character 9: negative frame number"),
        ("1.5: (1)", "at character 1: frame numbers must be whole numbers"),
        ("0: (1), , 5: (2)", "at character 9: expected a frame number, found ','"),
        ("0: (1), x: (2)", "at character 9: expected a frame number, found 'x'"),
        ("0: ()", "at character 4: empty value for frame 0"),
        ("0: (1), 10: (  __import__('os'))", "at character 16: unknown function '__import__'"),
        ("0: (1), 10: (t.real)", "at character 14: attribute access is not allowed"),
        ("0: (1), 10: (1 + foo)", "at character 18: unknown name 'foo'"),
        ("0: (1), 10: (9**9**9)", "at character 14: number too large"),
        ("0: (1 +)", "invalid syntax"),
        ("99999999999: (1)", "larger than"),
        ("sin(", "invalid syntax"),
    ],
)
def test_errors_say_where_and_what(text, message):
    with pytest.raises(KeyframeError) as caught:
        parse_keyframes(text)
    assert message in str(caught.value)


def test_duplicate_frame_error_text_starts_with_position():
    with pytest.raises(KeyframeError, match=r"^at character 9: frame 0 is given twice$"):
        parse_keyframes("0: (1), 0: (2)")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: parse_keyframes(None), "expected a number or a keyframe string, got NoneType"),
        (lambda: parse_keyframes(True), "got bool"),
        (lambda: parse_keyframes(float("nan")), "finite number"),
        (lambda: parse_keyframes(float("inf")), "finite number"),
        (lambda: parse_keyframes("0: (1)", "spline"), "unknown interpolation 'spline'"),
        (lambda: parse_keyframes("0: (1)").values(-1), "n_frames must be a whole number >= 0"),
        (lambda: parse_keyframes("0: (1)").values(2.5), "n_frames must be a whole number"),
        (lambda: parse_keyframes("0: (1)").values(3, fps=0), "fps must be a positive number"),
        (lambda: parse_keyframes("0: (1)").values(3, interpolation="nearest"), "unknown interpolation"),
        (lambda: parse_keyframes("0: (1)").at(-1), "frame must be a whole number >= 0"),
        (lambda: parse_keyframes("0: (1)").at(5, n_frames=5), "past the last frame"),
    ],
)
def test_bad_arguments(call, message):
    with pytest.raises(KeyframeError, match=message):
        call()


def test_errors_are_value_errors():
    assert issubclass(KeyframeError, ValueError)


def test_zero_frames_and_speed():
    assert parse_keyframes("0: (1)").values(0).shape == (0,)
    values = parse_keyframes("0: (1.0025 + 0.002*sin(1.25*pi*t/30)), 5000: (1), 9000: (s)", "cubic").values(10_000)
    assert values.shape == (10_000,) and np.all(np.isfinite(values))
