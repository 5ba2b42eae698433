"""Scene files: load, map DD names to ours, validate every field, report problems by line.

`load_scene(path)` returns a `Scene` (validated, normalised values) or raises
`SceneInvalid` holding every `Problem` found, each naming file, line, field and what is
wrong. Nothing here renders or imports Ray.
"""

from __future__ import annotations

import dataclasses
import difflib
import unicodedata
import functools
import json
import math
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np

from animation.keyframes import KeyframeError, parse_keyframes
from engine.spec import WEIGHT_SUM_EPSILON
from farm import settings as S
from farm.cutschedule import CutScheduleError, parse_cut_schedule
from farm.prompts import PromptError, parse_prompt_schedule
from farm.yamlio import MAX_FILE_BYTES, YamlError, load_yaml


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line and self.line > 0 else self.file
        field = f"--set {self.field}" if self.line == SET_BY_ARGUMENT else self.field
        return f"{where}: {field}: {self.message}" if field else f"{where}: {self.message}"


SET_BY_ARGUMENT = -1
"""Problem.line of a setting given by ``--set`` (reported as such, not as a line of the file)."""


class SceneInvalid(ValueError):
    """A scene with one or more problems; str() gives one line per problem."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Scene:
    """A validated scene: every setting present with its normalised value."""

    values: Mapping[str, object]
    source: str = "<scene>"
    base_dir: Path = field(default_factory=Path.cwd)
    raw: Mapping[str, object] = field(default_factory=dict)
    seed_was_random: bool = False

    def __getitem__(self, name: str) -> object:
        return self.values[name]

    @property
    def is_animation(self) -> bool:
        return self.values["animation_mode"] != "None"


# --------------------------------------------------------------------------- checks


class _Bad(ValueError):
    """A field's value is wrong; the message says how."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_number(value: object, what: str = "a number") -> float:
    if _is_number(value):
        try:
            number = float(value)
        except OverflowError:  # an int beyond a float (str() itself fails past 4300 digits)
            shown = f"{str(value)[:20]}..." if value.bit_length() <= 13000 else f"a {value.bit_length()}-bit integer"
            raise _Bad(f"{shown} is far too large") from None
    elif isinstance(value, str):
        try:
            if "_" in value:  # Python's float() reads "1_000"; YAML 1.2 and DD do not
                raise ValueError(value)
            number = float(value.strip())
        except ValueError:
            raise _Bad(f"expected {what}, got '{value}'") from None
    else:
        raise _Bad(f"expected {what}, got {_describe(value)}")
    if not math.isfinite(number):
        raise _Bad(f"expected a finite number, got {value}")
    return number


def _as_int(value: object) -> int:
    number = _as_number(value, "a whole number")
    if not float(number).is_integer():
        raise _Bad(f"expected a whole number, got {value}")
    return int(number)


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    if isinstance(value, int) and value.bit_length() > 13000:  # str() fails past 4300 digits
        return f"a {value.bit_length()}-bit integer"
    text = str(value)
    return f"{type(value).__name__} '{text if len(text) <= 60 else text[:56] + '...'}'"


def _check_range(setting: S.Setting, number: float) -> None:
    if setting.minimum is not None and number < setting.minimum:
        raise _Bad(f"{_fmt(number)} is below the minimum {_fmt(setting.minimum)}")
    if setting.maximum is not None and number > setting.maximum:
        raise _Bad(f"{_fmt(number)} is above the maximum {_fmt(setting.maximum)}")
    if abs(number) > S.MAX_MAGNITUDE:
        raise _Bad(f"{_fmt(number)} is beyond the limit of ±{_fmt(S.MAX_MAGNITUDE)}")


def _holds_unencodable_text(value: object) -> bool:
    """Whether a string in ``value`` (or in its lists and mappings) cannot be UTF-8 encoded:
    YAML's "\\ud800" escape makes an unpaired surrogate, which no file name or CLIP
    tokenizer takes."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


JOINERS = "\u200c\u200d"
"""Zero-width non-joiner and joiner: invisible but part of Persian words and emoji sequences."""


def _check_folder_name(name: str) -> None:
    """A scene name becomes one folder inside the output folder: no path, nothing odd."""
    if "/" in name or "\\" in name:
        raise _Bad(f"'{name}' must be a folder name, not a path (no / or \\)")
    if name in (".", ".."):
        raise _Bad(f"'{name}' is not a usable folder name")
    if name.startswith("."):
        raise _Bad(f"'{name}' starts with '.': a hidden folder (farm ui and farm fetch skip those)")
    if "::" in name:  # fsspec reads '::' in a URI as a chain of filesystems
        raise _Bad(f"'{name}' must not contain '::' (it would split an output URI)")
    if any(unicodedata.category(c) in ("Cc", "Cs", "Co", "Zl", "Zp")
           or (unicodedata.category(c) == "Cf" and c not in JOINERS) for c in name):
        raise _Bad("must not contain control or invisible characters (newlines, tabs, NUL, "
                   "zero-width spaces, direction marks, unpaired surrogates)")
    if len(name) > S.MAX_NAME_LENGTH:
        raise _Bad(f"is {len(name)} characters long; at most {S.MAX_NAME_LENGTH}")
    if len(name.encode("utf-8")) > 255:
        raise _Bad(f"is {len(name.encode('utf-8'))} bytes in UTF-8; a folder name holds at most 255")


def _fmt(number: float) -> str:
    number = float(number)
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else f"{number:g}"


def _normalise(setting: S.Setting, value: object, key_frames: bool) -> object:
    """Check one value against its setting's kind; return the normalised value."""
    kind = setting.kind
    if kind == "number":
        number = _as_number(value)
        _check_range(setting, number)
        return number
    if kind == "int":
        number = _as_int(value)
        _check_range(setting, number)
        return number
    if kind == "bool":
        if not isinstance(value, bool):
            raise _Bad(f"expected true or false, got {_describe(value)}")
        return value
    if kind == "auto_bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        raise _Bad(f"expected true, false or auto, got {_describe(value)}")
    if kind in ("str", "name"):
        if not isinstance(value, str) or not value.strip():
            raise _Bad(f"expected a non-empty string, got {_describe(value)}")
        if kind == "name":
            _check_folder_name(value.strip())
        return value.strip()
    if kind == "choice":
        if value is None and "None" in setting.choices:
            return "None"
        if isinstance(value, str):
            for choice in setting.choices:
                if value.strip().lower() == choice.lower():
                    return choice
        raise _Bad(f"expected one of {', '.join(setting.choices)}; got {_describe(value)}")
    if kind in ("keyframes", "int_keyframes"):
        if isinstance(value, str):
            try:
                if "_" in value:  # float() reads "1_000"; a keyframe string never has one
                    raise ValueError(value)
                value = float(value.strip())
            except ValueError:
                if not key_frames:
                    raise _Bad("key_frames is false, so a plain number is required") from None
        if _is_number(value):
            number = _as_number(value)  # finite, not too large for a float
            if kind == "int_keyframes" and not number.is_integer():
                raise _Bad(f"expected a whole number, got {value}")
            _check_range(setting, number)
            return parse_keyframes(number)
        if isinstance(value, str):
            respaced = re.fullmatch(r"\s*(ddim|plms)\s*(\d+)\s*", value, re.IGNORECASE)
            if respaced and setting.name in ("steps", "video_init_steps"):  # guided-diffusion's respacing string
                raise _Bad(f"expected a number of steps: '{value.strip()}' is steps: {respaced.group(2)} with "
                           f"diffusion_sampling_mode: {respaced.group(1).lower()}")
            try:
                return parse_keyframes(value)
            except KeyframeError as exc:
                raise _Bad(f"bad keyframe string: {exc}") from None
        quote = " (quote keyframe strings: unquoted, YAML reads \"0: (1)\" as a mapping)" if isinstance(value, dict) else ""
        raise _Bad(f"expected a number or a keyframe string like \"0: (1), 10: (1.05)\", got {_describe(value)}{quote}")
    if kind == "skip":
        if isinstance(value, str) and value.strip().endswith("%"):
            percent = _as_number(value.strip()[:-1], "a percentage like '60%'")
            if not 0 <= percent <= 100:
                raise _Bad(f"percentage {value} must be between 0% and 100%")
            return ("percent", percent)
        if isinstance(value, str):
            try:
                float(value.strip())
            except ValueError:
                try:
                    return ("keyframes", parse_keyframes(value))
                except KeyframeError as exc:
                    raise _Bad(f"expected '60%', a number or a keyframe string: {exc}") from None
            # DD reads its string '30' as 30% (it strips a '%'); a plain number here is steps
            raise _Bad(f"'{value.strip()}' is ambiguous: write '{value.strip()}%' for a percentage of steps "
                       f"(as DD reads it) or {value.strip()} without quotes for a number of steps")
        number = _as_int(value)
        if not 0 <= number <= S.MAX_STEPS:
            raise _Bad(f"{_fmt(number)} must be between 0 and {S.MAX_STEPS} steps")
        return ("steps", number)
    if kind == "size":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise _Bad(f"expected [width, height], got {_describe(value)}")
        width, height = (_as_int(v) for v in value)
        for side, name in ((width, "width"), (height, "height")):
            if side <= 0:
                raise _Bad(f"{name} {side} must be positive")
            if side > S.MAX_SIDE:
                raise _Bad(f"{name} {_fmt(side)} is above the limit {S.MAX_SIDE}")
            if side % 64:
                down, nearest = max(64, side // 64 * 64), max(64, round(side / 64) * 64)
                hint = f"DD rendered {down}" + (f"; or {nearest}" if nearest != down else "")
                raise _Bad(f"{name} {side} is not a multiple of 64 ({hint})")
        return (width, height)
    if kind == "seed":
        if value is None or (isinstance(value, str) and value.strip().lower() in ("random", "random_seed", "")):
            return None
        seed = _as_int(value)
        if not 0 <= seed < 2**32:
            raise _Bad(f"seed {_fmt(seed)} must be between 0 and 4294967295")
        return seed
    if kind == "prompts":
        try:
            return parse_prompt_schedule(value)
        except PromptError as exc:
            raise _Bad(str(exc)) from None
    if kind == "cuts":
        try:
            values = parse_cut_schedule(value)
        except CutScheduleError as exc:
            raise _Bad(str(exc)) from None
        for number in (min(values), max(values)):
            _check_range(setting, number)
        if setting.name.endswith(("_overview", "_innercut")):  # cut counts: DD fails on fractions
            fraction = next((v for v in values if not float(v).is_integer()), None)
            if fraction is not None:
                raise _Bad(f"{_fmt(fraction)} is not a whole number of cuts")
        return values
    if kind == "path":
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            return None
        if not isinstance(value, str):
            raise _Bad(f"expected a file path, got {_describe(value)}")
        return value.strip()
    if kind == "floats":
        items = value if isinstance(value, list) else [value]
        if len(items) > S.MAX_STEPS:
            raise _Bad(f"more than {S.MAX_STEPS} values")
        numbers = tuple(_as_number(v) for v in items)
        if not numbers or any(not 0 <= n <= 1 for n in numbers):
            raise _Bad("expected fractions between 0 and 1")
        return numbers
    if kind == "steps_list":
        if isinstance(value, list):
            steps = tuple(_as_int(v) for v in value)
            if any(not 0 <= s <= S.MAX_STEPS for s in steps):
                raise _Bad(f"step indices must be between 0 and {S.MAX_STEPS}")
            return steps
        count = _as_int(value)
        if not 0 <= count <= S.MAX_STEPS:
            raise _Bad(f"{_fmt(count)} must be between 0 and {S.MAX_STEPS}")
        return count
    if kind == "ints":
        if not isinstance(value, list):
            raise _Bad(f"expected a list of frame numbers, got {_describe(value)}")
        frames = tuple(_as_int(v) for v in value)
        if any(f > S.MAX_FRAMES for f in frames):
            raise _Bad(f"frame numbers must be at most {S.MAX_FRAMES}")
        if any(f <= 0 for f in frames) or list(frames) != sorted(set(frames)):
            raise _Bad("expected increasing positive frame numbers")
        return frames
    if kind == "clip_models":
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, str) and v.strip() for v in items):
            raise _Bad("expected a list of CLIP model names like 'ViT-B-32::openai'")
        names = tuple(_clip_name(v.strip()) for v in items)
        if len(set(names)) != len(names):
            raise _Bad("a CLIP model is listed twice")
        return names
    if kind == "mapping":
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _Bad(f"expected a mapping, got {_describe(value)}")
        for key, item in value.items():
            if not isinstance(key, str) or not isinstance(item, (str, int, float, bool)):
                raise _Bad(f"'{key}': expected name: value pairs with plain values (numbers, text, true/false)")
        return dict(value)
    raise AssertionError(f"unknown setting kind {kind}")


def _clip_name(name: str) -> str:
    """A CLIP model name as 'arch::tag', checked against open_clip's registry (no torch import)."""
    from engine.catalogue import ModelError

    try:
        arch, tag = resolve_clip_name(name, open_clip_registry())
    except ModelError as exc:
        raise _Bad(str(exc)) from None
    return f"{arch}::{tag}"


OPEN_CLIP_NAMES_FILE = Path(__file__).with_name("open_clip_names.json")


@dataclass(frozen=True)
class ClipRegistry:
    """open_clip's architectures and the pretrained tags of each (what list_models /
    list_pretrained return)."""

    version: str | None
    models: tuple[str, ...]
    pretrained: Mapping[str, tuple[str, ...]]


def _installed_open_clip_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("open_clip_torch")
    except PackageNotFoundError:
        return None


def live_open_clip_registry() -> ClipRegistry:
    """Ask open_clip itself (imports torch: seconds)."""
    from engine.catalogue import ModelError

    try:
        import open_clip
    except ImportError as exc:
        raise ModelError(f"cannot check CLIP names: open_clip is not importable ({exc})") from None
    pretrained: dict[str, list[str]] = {}
    for arch, tag in open_clip.list_pretrained():
        pretrained.setdefault(arch, []).append(tag)
    from engine.tiny import MODEL_CONFIG_DIR

    ours = {path.stem for path in MODEL_CONFIG_DIR.glob("*.json")}  # tiny test models join once one is built
    return ClipRegistry(_installed_open_clip_version(), tuple(m for m in open_clip.list_models() if m not in ours),
                        MappingProxyType({a: tuple(t) for a, t in pretrained.items()}))


@functools.lru_cache(maxsize=1)
def open_clip_registry() -> ClipRegistry:
    """open_clip's registry from farm/open_clip_names.json when that was written for the
    installed open_clip version (milliseconds), else from open_clip itself."""
    installed = _installed_open_clip_version()
    try:
        cached = json.loads(OPEN_CLIP_NAMES_FILE.read_text())
        if installed is not None and cached["open_clip_version"] == installed:
            return ClipRegistry(installed, tuple(cached["models"]),
                                MappingProxyType({a: tuple(t) for a, t in cached["pretrained"].items()}))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return live_open_clip_registry()


def write_open_clip_names(path: str | os.PathLike = OPEN_CLIP_NAMES_FILE) -> Path:
    """Regenerate farm/open_clip_names.json from the installed open_clip (after upgrading it)."""
    registry = live_open_clip_registry()
    record = {"open_clip_version": registry.version, "models": list(registry.models),
              "pretrained": {a: list(t) for a, t in registry.pretrained.items()}}
    path = Path(path)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def resolve_clip_name(name: str, registry: ClipRegistry) -> tuple[str, str]:
    """engine.catalogue.parse_clip_name checked against `registry` (no open_clip import)."""
    from engine.catalogue import parse_clip_name

    return parse_clip_name(name, (registry.models, registry.pretrained))


# --------------------------------------------------------------------------- loading


def load_scene(path: str | os.PathLike, overrides: Mapping[str, object] | None = None,
               check_files: bool = True) -> Scene:
    """Read, validate and normalise a scene file (with optional --set overrides).

    With `check_files` the input files' contents are checked too (images decoded far
    enough to prove they are images, videos probed with ffmpeg)."""
    path = Path(path)
    source = str(path)
    try:
        with open(path, "rb") as file:  # bounded: /dev/zero or a 10 GB file is refused, not read
            raw_bytes = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SceneInvalid([Problem(source, None, "", "file not found")]) from None
    except IsADirectoryError:
        raise SceneInvalid([Problem(source, None, "", "is a directory, not a scene file")]) from None
    except OSError as exc:
        raise SceneInvalid([Problem(source, None, "", f"cannot read: {exc.strerror}")]) from None
    if len(raw_bytes) > MAX_FILE_BYTES:
        raise SceneInvalid([Problem(source, None, "", f"file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")])
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw_bytes.count(b"\n", 0, exc.start) + 1
        raise SceneInvalid([Problem(source, line, "", f"not a UTF-8 text file (byte 0x{raw_bytes[exc.start]:02x} "
                                                      f"at offset {exc.start})")]) from None
    return parse_scene(text, source=source, base_dir=path.parent.resolve(), overrides=overrides,
                       check_files=check_files)


def parse_scene(
    text: str,
    source: str = "<scene>",
    base_dir: Path | None = None,
    overrides: Mapping[str, object] | None = None,
    allowed_roots: tuple[Path, ...] = (),
    check_files: bool = False,
) -> Scene:
    """Validate scene text; raise SceneInvalid listing every problem.

    Input files must exist inside the allowed roots; their contents are checked only with
    `check_files` (load_scene, which every command uses, turns it on)."""
    try:
        document = load_yaml(text)
    except YamlError as exc:
        raise SceneInvalid([Problem(source, exc.line, "", str(exc))]) from None
    data = document.data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SceneInvalid([Problem(source, 1, "", f"a scene must be a mapping of settings, got {_describe(data)}")])
    data = dict(data)
    lines = {key[0]: line for key, line in document.lines.items() if len(key) == 1}
    for key, value in (overrides or {}).items():
        name = S.canonical_name(key) if isinstance(key, str) else None
        if name is not None:  # --set batch_name=x replaces the file's `name` (DD's spelling or ours)
            for other in [k for k in data if isinstance(k, str) and k != key and S.canonical_name(k) == name]:
                del data[other]
        data[key] = value
        lines[key] = SET_BY_ARGUMENT
    if not data:
        raise SceneInvalid([Problem(source, None, "", "the scene is empty: it sets nothing (write at least text_prompts)")])
    return validate(data, source=source, lines=lines, base_dir=base_dir or Path.cwd(), allowed_roots=allowed_roots,
                    check_files=check_files)


def validate(
    data: Mapping[str, object],
    source: str = "<scene>",
    lines: Mapping[str, int | None] | None = None,
    base_dir: Path | None = None,
    allowed_roots: tuple[Path, ...] = (),
    check_files: bool = False,
) -> Scene:
    """Check a mapping of settings (our or DD names); return a Scene or raise SceneInvalid."""
    lines = lines or {}
    base_dir = (base_dir or Path.cwd()).resolve()
    problems: list[Problem] = []

    def problem(key: str, message: str) -> None:
        problems.append(Problem(source, lines.get(key), key, message))

    values: dict[str, object] = {}
    given_as: dict[str, str] = {}
    clip_flags: dict[str, bool] = {}
    key_frames = data.get("key_frames", True) is not False
    for key, value in data.items():
        if not isinstance(key, str):
            problems.append(Problem(source, lines.get(key), str(key), "setting names must be text"))
            continue
        if key in S.UNSUPPORTED:
            if value is not False and value is not None:  # `vr_mode: false` asks for nothing
                problem(key, f"not supported: {S.UNSUPPORTED[key]}")
            continue
        if key in S.IGNORED:
            continue
        if key in S.DD_CLIP_FLAGS:
            if not isinstance(value, bool):
                problem(key, f"expected true or false, got {_describe(value)}")
            else:
                clip_flags[key] = value
            continue
        name = S.canonical_name(key)
        if name is None:
            suggestion = difflib.get_close_matches(key, S.all_known_names(), n=1, cutoff=0.6)
            hint = f"; did you mean '{suggestion[0]}'?" if suggestion else ""
            problem(key, f"unknown setting{hint}")
            continue
        if name in given_as:
            problem(key, f"given twice (also as '{given_as[name]}')")
            continue
        given_as[name] = key
        if _holds_unencodable_text(value):
            problem(key, "holds text that is not valid Unicode (an unpaired surrogate such as \\ud800)")
            continue
        try:
            values[name] = _normalise(S.BY_NAME[name], value, key_frames)
        except _Bad as exc:
            problem(key, str(exc))
        except (KeyframeError, PromptError, CutScheduleError) as exc:
            problem(key, str(exc))

    if clip_flags:
        if "clip_models" in given_as:
            problem("clip_models", "give either clip_models or DD's CLIP switches (ViTB32, RN50, ...), not both")
        else:
            enabled = {flag: flag in S.DD_CLIP_DEFAULT_ON for flag in S.DD_CLIP_FLAGS}
            enabled.update(clip_flags)
            chosen = tuple(S.DD_CLIP_FLAGS[flag] for flag, on in enabled.items() if on)
            if not chosen:
                problem(next(iter(clip_flags)), "every CLIP model is switched off; enable at least one")
            values["clip_models"] = chosen

    for setting in S.SETTINGS:
        if setting.name not in values and setting.name not in given_as:
            values[setting.name] = _normalise(setting, setting.default, True)

    if not problems:
        _cross_checks(values, given_as, problem, base_dir, allowed_roots, check_files)
    if problems:
        raise SceneInvalid(problems)

    seed_was_random = values["seed"] is None
    if seed_was_random:
        values["seed"] = secrets.randbelow(2**31)
    return Scene(MappingProxyType(values), source, base_dir, MappingProxyType(dict(data)), seed_was_random)


STYLE_CUT_SCHEDULES = {"pixel art": "pad_or_pulp", "watercolor": "watercolor"}
CUT_SCHEDULE_SETTINGS = ("cut_overview", "cut_innercut", "cut_ic_pow", "cut_icgray_p")


def _apply_model_defaults(values: dict, given_as: Mapping[str, str], entry) -> None:
    """DD's per-model settings: a 256 px model renders at width_height_for_256x256_models
    and KaliYuga's fine-tunes take their style's cut schedules, unless the scene gives
    width_height (only) or the cut_* schedules itself, as DD's settings files do."""
    if entry.image_size == 256 and ("width_height" not in given_as or "width_height_for_256x256_models" in given_as):
        values["width_height"] = values["width_height_for_256x256_models"]
    prefix = STYLE_CUT_SCHEDULES.get(entry.style)
    for name in CUT_SCHEDULE_SETTINGS if prefix else ():
        if name not in given_as:
            values[name] = values[f"{prefix}_{name}"]


def _cross_checks(values, given_as, problem, base_dir: Path, allowed_roots: tuple[Path, ...],
                  check_files: bool = False) -> None:
    """Checks that involve several settings, files on disk, or the model catalogue."""
    from engine.catalogue import DIFFUSION_MODELS, TINY_MODEL_PREFIX, _looks_like_path
    from farm.inputs import InputError, check_image, check_video

    def where(name: str) -> str:
        return given_as.get(name, name)

    model = values["diffusion_model"]
    known = {*DIFFUSION_MODELS, "custom", "tiny"}
    if model not in known:
        suggestion = difflib.get_close_matches(model, sorted(known), n=1, cutoff=0.5)
        hint = f"; did you mean '{suggestion[0]}'?" if suggestion else f"; known: {', '.join(sorted(known))}"
        problem(where("diffusion_model"), f"unknown diffusion model '{model}'{hint}")
    if model == "custom" and not values["custom_path"]:
        problem(where("diffusion_model"), "'custom' needs custom_path (the checkpoint file)")
    if model in DIFFUSION_MODELS:
        _apply_model_defaults(values, given_as, DIFFUSION_MODELS[model])

    mode = values["animation_mode"]
    roots = (base_dir, *[r.resolve() for r in allowed_roots])
    if mode != "Video Input":  # unused (DD saves it in every settings file, often a Colab path)
        values["video_init_path"] = None
    for name in ("init_image", "video_init_path", "custom_path"):
        if not values[name]:
            continue
        given = values[name]
        try:
            values[name] = str(resolve_input_path(given, base_dir, roots))
        except _Bad as exc:
            problem(where(name), str(exc))
            values[name] = None
            continue
        try:
            if check_files and name == "init_image":
                check_image(values[name])
            if check_files and name == "video_init_path" and mode == "Video Input":
                check_video(values[name])
        except InputError as exc:
            problem(where(name), f"'{given}': {exc}")
            values[name] = None
    for name in ("image_prompts",):
        for _, prompts in values[name].keys:
            for prompt in prompts:
                try:
                    path = resolve_input_path(prompt.text, base_dir, roots)
                    if check_files:
                        check_image(path)
                except (_Bad, InputError) as exc:
                    problem(where(name), f"'{prompt.text}': {exc}")
    clip_models = []
    for clip in values["clip_models"]:
        arch, _, tag = clip.partition("::")
        if not arch.startswith(TINY_MODEL_PREFIX) and _looks_like_path(tag):
            try:  # a local weights file: an input file like the others
                clip = f"{arch}::{resolve_input_path(tag, base_dir, roots)}"
            except _Bad as exc:
                problem(where("clip_models"), f"'{clip}': {exc}")
        clip_models.append(clip)
    values["clip_models"] = tuple(clip_models)

    if mode == "Video Input" and not values["video_init_path"] and "video_init_path" not in given_as:
        problem(where("animation_mode"), "Video Input needs video_init_path")
    if values["near_plane"] >= values["far_plane"]:
        problem(where("near_plane"), f"near_plane {_fmt(values['near_plane'])} must be below far_plane {_fmt(values['far_plane'])}")
    frames = values["max_frames"] if mode != "None" else 1
    for cut in values["cuts"]:
        if cut >= frames:
            problem(where("cuts"), f"shot start {cut} is not below max_frames {frames}")
    if values["images_per_call"] > 1 and mode != "None":
        problem(where("images_per_call"), "images_per_call applies to stills (animation_mode None): "
                                          "animation frames start from each other")
    segments = values["parallel_segments"]
    if segments > 1 and mode == "None":
        problem(where("parallel_segments"), "parallel_segments applies to animations only")
    elif segments > 1:
        if values["turbo_mode"]:
            problem(where("parallel_segments"), "parallel_segments cannot be combined with turbo_mode yet")
        starts = (0, *values["cuts"], frames)
        shortest = min(b - a for a, b in zip(starts, starts[1:]))
        if shortest // segments < 2:
            problem(where("parallel_segments"), f"{segments} segments need at least {2 * segments} frames per shot "
                                                f"(the shortest shot has {shortest})")
        elif values["segment_overlap"] >= shortest // segments:
            problem(where("segment_overlap"), f"{values['segment_overlap']} must be below the segment length "
                                              f"({shortest // segments} frames)")
    if not any(prompts for _, prompts in values["text_prompts"].keys) and not values["image_prompts"].keys:
        problem(where("text_prompts"), "no prompts: give text_prompts or image_prompts")
    else:
        _check_prompt_weights(values, where, problem, frames if mode != "None" else 1)
    if mode == "Video Input" and check_files and values["video_init_path"]:
        frames = min(frames, math.ceil(check_video(values["video_init_path"]).frames / values["extract_nth_frame"]))
    _check_schedules(values, where, problem, frames)


def _check_prompt_weights(values, where, problem, frames: int) -> None:
    """Each prompt set in force (from the frame it starts at; keys past the last frame, as in
    DD, are never used) needs prompts whose text and image weights together do not sum to 0:
    DD divides by the sum, and stops on such a frame."""
    text, images = values["text_prompts"], values["image_prompts"]
    starts = keys = {0} | {start for start, _ in text.keys + images.keys if start < frames}
    fade = values["prompt_crossfade"] if frames > 1 else 0
    if fade:  # frames inside a cross-fade mix two sets: their sum passes through 0 between +/- sums
        text = dataclasses.replace(text, crossfade=fade)
        text_starts = sorted(start for start, _ in text.keys) + [frames]
        starts = keys | {f for start, following in zip(text_starts, text_starts[1:])
                         for f in range(start, min(start + fade, following, frames))}
    for start in sorted(starts):
        prompts = text.at(start) + images.at(start)
        total = sum(p.weight for p in prompts)
        if not prompts:
            problem(where("text_prompts"), f"frame {start} has no prompts (DD stops there): give at least one")
        elif abs(total) < WEIGHT_SUM_EPSILON:
            fading = " (mid prompt_crossfade, the two sets mixed)" if start not in keys else ""
            problem(where("text_prompts"), f"frame {start}{fading}: the text and image prompt weights sum to "
                                           f"{total:g}; the sum must not be 0 (the weights are divided by it): "
                                           "change a weight")


def _check_schedules(values, where, problem, frames: int) -> None:
    """Evaluate every keyframe schedule over the frames it will be used for: each value must
    evaluate (no division by zero at frame 7) and lie in its setting's range."""
    fps, interpolation = values["fps"], values["interpolation"]
    schedules = [(setting, values[setting.name]) for setting in S.SETTINGS if setting.kind in ("keyframes", "int_keyframes")]
    schedules += [(S.BY_NAME[name], values[name][1]) for name in ("frames_skip_steps", "video_init_frames_skip_steps")
                  if values[name][0] == "keyframes"]
    for setting, schedule in schedules:
        try:
            count = 1 if schedule.is_constant else frames
            series = schedule.values(count, fps=fps, interpolation=interpolation)
        except (KeyframeError, ArithmeticError, ValueError) as exc:
            problem(where(setting.name), f"bad keyframe value: {exc}")
            continue
        integer = setting.kind in ("int_keyframes", "skip")
        if integer:
            series = np.trunc(series)
        low = max(setting.minimum if setting.minimum is not None else -S.MAX_MAGNITUDE, -S.MAX_MAGNITUDE)
        if setting.kind == "skip":
            low = 0
        high = min(setting.maximum if setting.maximum is not None else S.MAX_MAGNITUDE, S.MAX_MAGNITUDE)
        for bad, limit, side in ((series < low, low, "below the minimum"), (series > high, high, "above the maximum")):
            if bad.any():
                frame = int(np.argmax(bad))
                at = f" at frame {frame}" if count > 1 else ""
                problem(where(setting.name), f"the schedule gives {_fmt(series[frame])}{at}, {side} {_fmt(limit)}")
                break
        else:
            if setting.name == "clamp_max" and values["clamp_grad"] and (series <= 0).any():
                frame = int(np.argmax(series <= 0))
                at = f" at frame {frame}" if count > 1 else ""
                problem(where(setting.name), f"the schedule gives 0{at}: the gradient would always be zero "
                                             "(clamp_max must be > 0; clamp_grad: false turns clamping off)")


def resolve_input_path(text: str, base_dir: Path, roots: tuple[Path, ...]) -> Path:
    """A scene's input file, relative to the scene's folder, confined to the allowed roots."""
    from farm.inputs import url_problem

    if problem := url_problem(text):
        raise _Bad(problem)
    candidate = Path(os.path.expanduser(text))
    try:
        resolved = (candidate if candidate.is_absolute() else base_dir / candidate).resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise _Bad(f"'{text}' cannot be resolved: {exc}") from None
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise _Bad(
            f"'{text}' is outside the scene's folder {base_dir}: input files must be inside it "
            f"(allowed: {', '.join(str(r) for r in roots)}); copy the file there"
        )
    if not resolved.exists():
        raise _Bad(f"file '{text}' not found (looked at {resolved})")
    if not resolved.is_file():
        raise _Bad(f"'{text}' is not a file")
    return resolved
