"""Disco Diffusion keyframe schedules: ``"0: (1), 10: (1.05)"`` -> one value per frame.

Syntax: ``frame: (value)`` pairs separated by commas, whitespace anywhere between tokens,
an optional trailing comma. A value is a safe expression (:mod:`animation.expressions`)
in ``t`` (frame index) and ``s`` (seconds); its parentheses must balance. A plain number,
or a string that does not start with ``frame:``, is one key at frame 0 (DD wraps such
values as ``"0: (value)"`` too).

Values per frame (DD's ``get_inbetweens`` with Deforum's expression keys):

- A key whose value uses ``t``/``s`` owns the frames from itself up to the next key and
  is evaluated at each of them; after the last key it keeps being evaluated.
- Frames owned by a constant key, and frames before the first key, are interpolated
  through the knots: every key at its own frame, plus DD's pins, frame 0 = first key's
  value and (splines only) frame ``n_frames - 1`` = the last key's value there.
  ``linear`` (DD's default) and ``step`` hold the first/last value outside the keys;
  ``quadratic``/``cubic`` are scipy's not-a-knot interpolating splines, as pandas
  ``interpolate(method='cubic')`` in DD, and fall back like DD: cubic with at most 3
  keys -> quadratic, quadratic with at most 2 keys -> linear.

One deliberate difference: DD moves a key beyond the last frame onto ``n_frames - 1``;
here it stays where it is, so a value at a frame never depends on the clip length for
linear and step.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import make_interp_spline

from animation.expressions import Expression, ExpressionError, compile_expression

INTERPOLATIONS = ("linear", "quadratic", "cubic", "step")
MAX_FRAME = 1_000_000_000

# A number followed by ':' (or by '(' as in "0 (1)", never a valid expression).
_LOOKS_LIKE_KEYFRAMES = re.compile(r"\s*-?([0-9]+\.?[0-9]*|\.[0-9]+)\s*[:(]")


class KeyframeError(ValueError):
    """A keyframe string or schedule request is invalid."""


def is_keyframe_string(value: object) -> bool:
    """True for text that starts like a keyframe list (``frame:``); it is then parsed as one."""
    return isinstance(value, str) and _LOOKS_LIKE_KEYFRAMES.match(value) is not None


@dataclass(frozen=True)
class Schedule:
    """Keys ``(frame, Expression)`` in increasing frame order and the in-between method."""

    keys: tuple[tuple[int, Expression], ...]
    interpolation: str = "linear"

    def __post_init__(self):
        if not self.keys:
            raise KeyframeError("a schedule needs at least one key")
        previous = -1
        for key in self.keys:
            frame, expression = key
            if type(frame) is not int or frame < 0:
                raise KeyframeError(f"key frames must be whole numbers >= 0, got {frame!r}")
            if frame <= previous:
                raise KeyframeError(f"key frames must increase, got {frame} after {previous}")
            if not isinstance(expression, Expression):
                raise KeyframeError(f"key values must be Expressions, got {type(expression).__name__}")
            previous = frame
        object.__setattr__(self, "keys", tuple(tuple(key) for key in self.keys))
        object.__setattr__(self, "interpolation", _check_interpolation(self.interpolation))

    @property
    def variables(self) -> frozenset[str]:
        """Variables any key uses (``t``, ``s``); empty when no value depends on time."""
        return frozenset().union(*(expression.variables for _, expression in self.keys))

    @property
    def is_constant(self) -> bool:
        """True when every frame gets the same value."""
        if self.variables:
            return False
        return len({expression(0.0) for _, expression in self.keys}) == 1

    def to_text(self) -> str:
        """The schedule as a keyframe string, e.g. ``"0: (1), 10: (1.05)"``."""
        return ", ".join(f"{frame}: ({expression.text})" for frame, expression in self.keys)

    def values(self, n_frames: int, fps: float = 12.0, interpolation: str | None = None) -> np.ndarray:
        """Float64 value of every frame ``0 .. n_frames-1``."""
        _check_count(n_frames)
        return self._evaluate(np.arange(n_frames), n_frames, _check_fps(fps), self._method(interpolation))

    def values_int(self, n_frames: int, fps: float = 12.0, interpolation: str | None = None) -> np.ndarray:
        """Int64 values per frame, truncated toward zero like DD's ``astype(int)``."""
        return _truncate(self.values(n_frames, fps, interpolation))

    def at(self, frame: int, fps: float = 12.0, n_frames: int | None = None,
           interpolation: str | None = None) -> float:
        """Value at one frame; equals ``values(n_frames)[frame]``.

        ``n_frames`` only matters for splines (DD pins the last frame); None means no pin.
        """
        if not _is_whole(frame) or frame < 0:
            raise KeyframeError(f"frame must be a whole number >= 0, got {frame!r}")
        frame = int(frame)
        if n_frames is not None:
            _check_count(n_frames)
            if frame >= n_frames:
                raise KeyframeError(f"frame {frame} is past the last frame ({n_frames - 1})")
        result = self._evaluate(np.array([frame]), n_frames, _check_fps(fps), self._method(interpolation))
        return float(result[0])

    def _method(self, interpolation: str | None) -> str:
        method = self.interpolation if interpolation is None else _check_interpolation(interpolation)
        if method == "cubic" and len(self.keys) <= 3:
            method = "quadratic"
        if method == "quadratic" and len(self.keys) <= 2:
            method = "linear"
        return method

    def _evaluate(self, frames: np.ndarray, n_frames: int | None, fps: float, method: str) -> np.ndarray:
        key_frames = np.array([frame for frame, _ in self.keys])
        owner = np.searchsorted(key_frames, frames, side="right") - 1  # -1: before the first key
        out = np.empty(len(frames), dtype=np.float64)
        interpolated = np.ones(len(frames), dtype=bool)
        for index, (key_frame, expression) in enumerate(self.keys):
            if expression.is_constant:
                continue
            for position in np.flatnonzero(owner == index):
                out[position] = _evaluate_key(key_frame, expression, int(frames[position]), fps)
                interpolated[position] = False
        if interpolated.any():
            knot_frames, knot_values = self._knots(n_frames if method in ("quadratic", "cubic") else None, fps)
            out[interpolated] = _interpolate(knot_frames, knot_values, frames[interpolated], method)
        if not np.all(np.isfinite(out)):
            raise KeyframeError("schedule produced a value that is not a finite number")
        return out

    def _knots(self, n_frames: int | None, fps: float) -> tuple[np.ndarray, np.ndarray]:
        """Keys at their own frames, plus DD's pins at frame 0 and (if given) n_frames - 1."""
        frames = [frame for frame, _ in self.keys]
        values = [_evaluate_key(frame, expression, frame, fps) for frame, expression in self.keys]
        if frames[0] > 0:
            frames.insert(0, 0)
            values.insert(0, values[0])
        if n_frames is not None and frames[-1] < n_frames - 1:
            last_frame, last_expression = self.keys[-1]
            frames.append(n_frames - 1)
            values.append(_evaluate_key(last_frame, last_expression, n_frames - 1, fps))
        return np.array(frames, dtype=np.float64), np.array(values, dtype=np.float64)


def parse_keyframes(value: str | float | int, interpolation: str = "linear") -> Schedule:
    """Parse a keyframe string, a bare expression or a plain number into a :class:`Schedule`."""
    interpolation = _check_interpolation(interpolation)
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        number = float(value)
        if not math.isfinite(number):
            raise KeyframeError(f"a constant schedule needs a finite number, got {value!r}")
        return Schedule(((0, compile_expression(repr(number))),), interpolation)
    if not isinstance(value, str):
        raise KeyframeError(f"expected a number or a keyframe string, got {type(value).__name__}")
    if not value.strip():
        raise KeyframeError("empty keyframe string")
    if not is_keyframe_string(value):
        return Schedule(((0, _compile_value(value, 0)),), interpolation)
    return Schedule(tuple(sorted(_scan(value))), interpolation)


def keyframe_variables(value: str | float | int) -> frozenset[str]:
    """Variables (``t``, ``s``) used by a keyframe string or number; empty if none."""
    return parse_keyframes(value).variables


def _scan(text: str) -> list[tuple[int, Expression]]:
    """Read ``frame: (value)`` pairs, reporting the character where reading failed."""
    keys: dict[int, Expression] = {}
    end = len(text)
    i = _skip_space(text, 0)
    while i < end:
        start = i
        sign = 1 if text[i] == "-" else 0
        j = i + sign
        while j < end and "0" <= text[j] <= "9":
            j += 1
        if j == i + sign:
            raise _error(i, f"expected a frame number, found {text[i]!r}")
        if j < end and text[j] == ".":
            raise _error(start, "frame numbers must be whole numbers")
        if sign:
            raise _error(start, "negative frame number")
        frame = int(text[i:j])
        if frame > MAX_FRAME:
            raise _error(start, f"frame number {frame} is larger than {MAX_FRAME}")
        if frame in keys:
            raise _error(start, f"frame {frame} is given twice")
        i = _skip_space(text, j)
        if i == end or text[i] != ":":
            raise _error(i, "expected ':' after frame number")
        i = _skip_space(text, i + 1)
        if i == end or text[i] != "(":
            raise _error(i, "expected '(' after ':' (values go in parentheses)")
        close = _matching_parenthesis(text, i)
        if not text[i + 1:close].strip():
            raise _error(i, f"empty value for frame {frame}")
        keys[frame] = _compile_value(text[i + 1:close], i + 1)
        i = _skip_space(text, close + 1)
        if i < end:
            if text[i] == ",":
                i = _skip_space(text, i + 1)
            elif not (i > close + 1 and "0" <= text[i] <= "9"):  # DD's parser also takes "0:(0) 4:(2)"
                raise _error(i, f"expected ',' between keys, found {text[i]!r}")
    return list(keys.items())


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def _matching_parenthesis(text: str, opening: int) -> int:
    depth = 0
    for i in range(opening, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise _error(opening, "'(' is never closed")


def _compile_value(text: str, offset: int) -> Expression:
    try:
        return compile_expression(text)
    except ExpressionError as error:
        position = offset + (error.position if error.position is not None else 0)
        raise _error(position, error.reason) from None


def _evaluate_key(key_frame: int, expression: Expression, frame: int, fps: float) -> float:
    try:
        return expression(frame, fps)
    except ExpressionError as error:
        raise KeyframeError(f"value of the key at frame {key_frame}: {error}") from None


def _interpolate(knot_frames: np.ndarray, knot_values: np.ndarray, frames: np.ndarray, method: str) -> np.ndarray:
    if method == "step":
        left = np.searchsorted(knot_frames, frames, side="right") - 1
        return knot_values[np.maximum(left, 0)]
    if method == "linear" or len(knot_frames) < 2:
        return np.interp(frames, knot_frames, knot_values)
    spline = make_interp_spline(knot_frames, knot_values, k=3 if method == "cubic" else 2)
    return spline(np.clip(frames, knot_frames[0], knot_frames[-1]))


def _truncate(values: np.ndarray) -> np.ndarray:
    if values.size and np.max(np.abs(values)) >= 2.0**62:
        raise KeyframeError("integer schedule value is too large")
    return np.trunc(values).astype(np.int64)


def _check_interpolation(interpolation: object) -> str:
    method = interpolation.lower() if isinstance(interpolation, str) else interpolation
    if method not in INTERPOLATIONS:
        raise KeyframeError(f"unknown interpolation {interpolation!r}; expected one of {', '.join(INTERPOLATIONS)}")
    return method


def _check_count(n_frames: object) -> None:
    if not _is_whole(n_frames) or n_frames < 0:
        raise KeyframeError(f"n_frames must be a whole number >= 0, got {n_frames!r}")


def _is_whole(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_fps(fps: object) -> float:
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not (math.isfinite(fps) and fps > 0):
        raise KeyframeError(f"fps must be a positive number, got {fps!r}")
    return float(fps)


def _error(position: int, reason: str) -> KeyframeError:
    return KeyframeError(f"at character {position + 1}: {reason}")
