"""JSON Schema of the scene format, generated from the settings table (for editors)."""

from __future__ import annotations

from farm import __version__
from farm import settings as S
from farm.prompts import MAX_PROMPT_LENGTH

_KEYFRAME_PATTERN = r"^\s*\d+\s*:\s*\(.*\)(\s*,\s*\d+\s*:\s*\(.*\))*\s*,?\s*$"
_PROMPT = {"type": "string", "maxLength": MAX_PROMPT_LENGTH}
_PROMPT_LIST = {"type": "array", "items": _PROMPT}
_NUMBER_TEXT = {"type": "string", "pattern": r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"}  # "3", as DD saves some
_INTEGER_TEXT = {"type": "string", "pattern": r"^\s*[-+]?\d+(\.0*)?\s*$"}


def _property(setting: S.Setting) -> dict:
    kind = setting.kind
    bounds = {}
    if setting.minimum is not None:
        bounds["minimum"] = setting.minimum
    if setting.maximum is not None:
        bounds["maximum"] = setting.maximum
    if kind == "number":
        schema = {"anyOf": [{"type": "number", **bounds}, _NUMBER_TEXT]}
    elif kind == "int":
        schema = {"anyOf": [{"type": "integer", **bounds}, _INTEGER_TEXT]}
    elif kind == "bool":
        schema = {"type": "boolean"}
    elif kind == "auto_bool":
        schema = {"enum": [True, False, "auto"]}
    elif kind == "str":
        schema = {"type": "string", "minLength": 1}
    elif kind == "name":
        schema = {"type": "string", "minLength": 1, "maxLength": 100,
                  "pattern": "^(?![.])(?!.*::)[^/\\\\\\x00-\\x1f\\x7f]+$"}  # no path, not hidden, no '::'
    elif kind == "choice":
        spellings = dict.fromkeys(v for c in setting.choices for v in (c, c.lower(), c.capitalize(), c.upper()))
        schema = {"enum": list(spellings) + ([None] if "None" in setting.choices else [])}
    elif kind in ("keyframes", "int_keyframes"):
        number = {"type": "integer" if kind == "int_keyframes" else "number", **bounds}
        # DD's "0: (1), 10: (1.05)", a number as text, or math in t and s ("10*sin(t)")
        schema = {"anyOf": [number, {"type": "string", "minLength": 1}]}
    elif kind == "skip":
        schema = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*%\s*$"},
                            {"type": "string", "pattern": _KEYFRAME_PATTERN}]}
    elif kind == "size":
        schema = {"type": "array", "items": {"type": "integer", "multipleOf": 64, "minimum": 64, "maximum": S.MAX_SIDE},
                  "minItems": 2, "maxItems": 2}
    elif kind == "seed":
        schema = {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 2**32 - 1}, {"enum": ["", None]},
                            {"type": "string", "pattern": r"^\s*([Rr][Aa][Nn][Dd][Oo][Mm](_[Ss][Ee][Ee][Dd])?|\d+)\s*$"}]}
    elif kind == "prompts":
        schema = {"anyOf": [
            {"type": "object", "patternProperties": {r"^\d+$": {"anyOf": [_PROMPT_LIST, _PROMPT]}},
             "additionalProperties": False},
            _PROMPT_LIST, _PROMPT]}
    elif kind == "cuts":
        schema = {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "array", "items": {"type": "number"},
                                                                        "minItems": 1000, "maxItems": 1000}]}
    elif kind == "path":
        schema = {"type": ["string", "null"]}
    elif kind == "floats":
        schema = {"anyOf": [{"type": "number", "minimum": 0, "maximum": 1},
                            {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": 1}]}
    elif kind == "steps_list":
        schema = {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "array", "items": {"type": "integer", "minimum": 0}}]}
    elif kind == "ints":
        schema = {"type": "array", "items": {"type": "integer", "minimum": 1}}
    elif kind == "clip_models":
        schema = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
    elif kind == "mapping":
        schema = {"type": "object"}
    else:  # pragma: no cover - the table only uses the kinds above
        raise AssertionError(kind)
    default = setting.default
    if isinstance(default, dict):
        default = {str(k): v for k, v in default.items()}
    return {**schema, "description": setting.doc, "default": default}


def scene_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a scene file."""
    properties = {}
    for setting in S.SETTINGS:
        properties[setting.name] = _property(setting)
        for alias in setting.aliases:
            properties[alias] = {**_property(setting), "description": f"DD name of {setting.name}. {setting.doc}"}
    for flag, clip in S.DD_CLIP_FLAGS.items():
        properties[flag] = {"type": "boolean", "description": f"DD switch for CLIP {clip} (or use clip_models)."}
    for name, why in S.IGNORED.items():
        properties[name] = {"description": f"Accepted and ignored: {why}."}
    for name, why in S.UNSUPPORTED.items():  # false or null asks for nothing and is accepted
        properties[name] = {"enum": [False, None], "description": f"Not supported: {why}."}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://disco-farm.invalid/scene-{__version__}.schema.json",
        "title": "Disco Farm scene",
        "description": "A Disco Diffusion scene: prompts, guidance, cut schedules, models and keyframed motion.",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
