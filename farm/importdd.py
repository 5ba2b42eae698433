"""`farm import-dd`: turn the settings JSON that DD writes beside each run into a scene.

Everything wrong with the settings file is reported as one line that names the settings
file and DD's key (not the scene file about to be written, nor our name for the key):
the file is read with a size cap, its JSON nesting and integer lengths are bounded, and
the converted scene is validated here, against the settings file, before anything is
written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


from farm import settings as S
from farm.inputs import is_url
from farm.scene import Problem, SceneInvalid, parse_scene
from farm.yamlio import MAX_FILE_BYTES, dump_yaml

MAX_JSON_DEPTH = 32
"""DD's settings nest three levels deep (text_prompts -> frame -> list); deeper is not DD's."""
MAX_INT_DIGITS = 100
"""An integer longer than this means nothing in a scene (seeds have at most 10 digits)."""
PATH_SETTINGS = ("init_image", "video_init_path", "custom_path")
_SIZE_LABEL = "width/height"


class DDImportError(ValueError):
    pass


class DDSettings(dict):
    """DD's settings mapping, remembering the file it was read from (for messages)."""

    path: Path | None = None


class _Duplicate(Exception):
    pass


class _LongInt:
    """Stands in for an integer too long to convert, so its key can be named."""

    def __init__(self, digits: int):
        self.digits = digits


# --------------------------------------------------------------------------- reading


def read_dd_settings(path: str | os.PathLike) -> DDSettings:
    """Read a DD settings file (bounded, UTF-8 with or without BOM, JSON object)."""
    path = Path(path)
    try:
        with open(path, "rb") as file:  # bounded: /dev/zero or a 10 GB file is refused, not read
            raw = file.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise DDImportError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DDImportError(f"{path}: is a folder, not a DD settings file") from None
    except OSError as exc:
        raise DDImportError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise DDImportError(f"{path}: file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB "
                            "(DD settings files are a few KB)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DDImportError(f"{path}:{line}: not a UTF-8 text file (byte 0x{raw[exc.start]:02x} "
                            f"at offset {exc.start})") from None
    if not text.strip():
        raise DDImportError(f"{path}: not DD settings JSON: the file is empty")
    try:
        data = json.loads(text, parse_int=_parse_int, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise DDImportError(f"{path}:{exc.lineno}: not DD settings JSON: {exc.msg}") from None
    except RecursionError:
        raise DDImportError(f"{path}: not DD settings JSON: nested too deeply "
                            f"(more than {MAX_JSON_DEPTH} levels)") from None
    except _Duplicate as exc:
        raise DDImportError(f"{path}: key '{exc}' is given twice") from None
    except (ValueError, OverflowError) as exc:  # anything else json refuses
        raise DDImportError(f"{path}: not DD settings JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise DDImportError(f"{path}: expected a JSON object of DD settings")
    _check_structure(data, path)
    settings = DDSettings(data)
    settings.path = path
    return settings


def _parse_int(text: str):
    digits = len(text.lstrip("-"))
    return _LongInt(digits) if digits > MAX_INT_DIGITS else int(text)


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise _Duplicate(key)
        result[key] = value
    return result


def _check_structure(data: dict, path: Path) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH and over-long integers, naming the key."""
    stack: list[tuple[object, int, str | None]] = [(data, 1, None)]
    while stack:
        value, depth, key = stack.pop()
        if isinstance(value, _LongInt):
            raise DDImportError(f"{path}: {key}: an integer with {value.digits} digits is far too large")
        if isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                where = f"{key}: " if key else ""
                raise DDImportError(f"{path}: {where}not DD settings JSON: nested too deeply "
                                    f"(more than {MAX_JSON_DEPTH} levels)")
            children = value.items() if isinstance(value, dict) else ((None, v) for v in value)
            for child_key, child in children:
                stack.append((child, depth + 1, key if key is not None else child_key))


# --------------------------------------------------------------------------- converting


def convert_dd_settings(dd: dict, base_dir: Path | None = None) -> tuple[dict, list[str]]:
    """DD's settings mapping -> (scene mapping with our names, notes about dropped keys).

    The scene is validated here; problems raise SceneInvalid naming the settings file
    (`dd.path` when `dd` came from read_dd_settings) and DD's key. `base_dir` is the folder
    relative input paths are resolved against (the output scene's folder; default: the
    current folder)."""
    source = str(getattr(dd, "path", None) or "DD settings")
    scene: dict = {}
    notes: list[str] = []
    origin: dict[str, str] = {}  # scene name -> DD key(s) it came from
    problems: list[Problem] = []

    def problem(key: str, message: str) -> None:
        problems.append(Problem(source, None, key, message))

    _convert_size(dd, scene, notes, origin, problem)
    clip_flags = {k: v for k, v in dd.items() if k in S.DD_CLIP_FLAGS}
    for flag, on in clip_flags.items():
        if not isinstance(on, bool):
            problem(flag, f"expected true or false, got {_describe(on)}")
    if clip_flags and not problems:
        enabled = {flag: flag in S.DD_CLIP_DEFAULT_ON for flag in S.DD_CLIP_FLAGS}
        enabled.update(clip_flags)
        scene["clip_models"] = [S.DD_CLIP_FLAGS[f] for f, on in enabled.items() if on]
        origin["clip_models"] = ", ".join(clip_flags)
        if not scene["clip_models"]:
            problem(origin["clip_models"], "every CLIP model is switched off; enable at least one")
    for key, value in dd.items():
        if key in ("width", "height", "width_height") or key in S.DD_CLIP_FLAGS:
            continue
        if key in S.UNSUPPORTED:
            notes.append(f"dropped {key}: {S.UNSUPPORTED[key]}")
            continue
        if key in S.IGNORED:
            notes.append(f"dropped {key}: {S.IGNORED[key]}")
            continue
        name = S.canonical_name(key)
        if name is None:
            notes.append(f"dropped {key}: not a setting Disco Farm knows")
            continue
        if name in origin:  # DD's name and ours (seed, set_seed): ours wins, the other is noted
            kept, dropped = (key, origin[name]) if key == name else (origin[name], key)
            notes.append(f"dropped {dropped}: {kept} is used")
            if key != name:
                continue
        if value is None and S.BY_NAME[name].kind not in ("path", "seed", "choice"):
            notes.append(f"dropped {key}: null in DD's file (default used)")
            continue
        if name in ("text_prompts", "image_prompts") and isinstance(value, dict):
            value = {_frame_key(k): v for k, v in value.items()}
        if name == "interpolation" and isinstance(value, str):
            value = value.lower()
        url = _first_url(value) if name in (*PATH_SETTINGS, "image_prompts") else None
        if url is not None:
            what = "image prompts" if name == "image_prompts" else key
            problem(key, f"'{url}' is a URL; URLs are not supported for {what} (download the file and give its path)")
            continue
        scene[name] = value
        origin[name] = key
    if problems:
        raise SceneInvalid(problems)
    if "animation_mode" not in scene and "max_frames" in scene:  # DD saves animation settings, not the mode
        notes.append("DD's settings file does not record animation_mode or n_batches: this scene renders "
                     f"{scene.get('n_batches', S.BY_NAME['n_batches'].default)} stills; add animation_mode "
                     "(2D, 3D or Video Input) for an animation")
    _validate(scene, source, origin, base_dir)
    return scene, notes


def _convert_size(dd: dict, scene: dict, notes: list[str], origin: dict[str, str], problem) -> None:
    """DD writes width and height; the scene has width_height. Both or neither, as numbers."""
    if "width" not in dd and "height" not in dd:
        if "width_height" in dd:
            scene["width_height"] = dd["width_height"]
            origin["width_height"] = "width_height"
        return
    for key, other in (("width", "height"), ("height", "width")):
        if key not in dd:
            problem(key, f"missing: {other} is given, and DD needs both (they become width_height)")
        elif dd[key] is None:
            problem(key, "expected a number of pixels, got nothing (null); DD would fail here "
                         "(width and height become width_height)")
    if "width_height" in dd:
        notes.append("dropped width_height: width and height are used")
    size = [dd.get("width"), dd.get("height")]
    for position, key in enumerate(("width", "height")):
        side = size[position]
        if isinstance(side, int) and not isinstance(side, bool) and side >= 64 and side % 64:
            size[position] = side // 64 * 64  # what DD rendered: it rounds down to a multiple of 64
            notes.append(f"{key} {side} -> {size[position]}: DD rendered {size[position]} (a multiple of 64)")
    scene["width_height"] = size
    origin["width_height"] = _SIZE_LABEL


def _first_url(value: object) -> str | None:
    """The first URL among a path setting's value or an image-prompt schedule's texts."""
    if isinstance(value, str):
        return value.strip() if is_url(value) else None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        found = _first_url(item)
        if found is not None:
            return found
    return None


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, (dict, list)):
        return f"a {'mapping' if isinstance(value, dict) else 'list'}"
    return f"{type(value).__name__} '{value}'"


def _validate(scene: dict, source: str, origin: dict[str, str], base_dir: Path | None) -> None:
    """Validate the scene text exactly as it will be written; report against the settings file."""
    text = scene_yaml(scene, Path(source).name)
    try:
        parse_scene(text, source=source, base_dir=base_dir or Path.cwd())  # input files as the scene will read them
    except SceneInvalid as exc:
        problems = []
        for found in exc.problems:
            if not found.field:
                problems.append(Problem(source, None, "", f"the converted scene: {found.message}"))
            else:
                problems.append(Problem(source, None, origin.get(found.field, found.field), found.message))
        raise SceneInvalid(problems) from None


def _frame_key(key):
    try:
        return int(key)
    except (TypeError, ValueError):
        return key


def scene_yaml(scene: dict, source: str) -> str:
    header = f"# Imported from Disco Diffusion settings: {' '.join(str(source).split())}\n"
    return header + dump_yaml(scene, width=100)


# --------------------------------------------------------------------------- writing


def check_output(output: str | os.PathLike, settings: str | os.PathLike | None = None) -> Path:
    """Refuse an -o that cannot take the scene file, naming -o and why."""
    out = Path(output)
    label = f"-o {output}"
    if out.is_dir():
        raise DDImportError(f"{label}: is a folder, not a file")
    if out.exists() and not out.is_file():
        raise DDImportError(f"{label}: exists and is not a regular file")
    parent = out.parent
    if not parent.exists():
        raise DDImportError(f"{label}: folder {parent} does not exist")
    if not parent.is_dir():
        raise DDImportError(f"{label}: {parent} is not a folder")
    if settings is not None and out.exists():
        try:
            if os.path.samefile(out, settings):
                raise DDImportError(f"{label}: is the DD settings file itself; choose another file")
        except OSError:
            pass
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DDImportError(f"{label}: cannot write in folder {parent.resolve()}: permission denied")
    return out


def write_scene(output: str | os.PathLike, text: str) -> Path:
    """Write the scene atomically; errors name -o and the reason, never the temporary file."""
    from farm.storage import write_text_atomic

    out = check_output(output)
    try:
        return write_text_atomic(out, text)
    except OSError as exc:
        raise DDImportError(f"-o {output}: cannot write: {exc.strerror or type(exc).__name__}") from None


def import_dd(settings: str | os.PathLike, output: str | os.PathLike) -> list[str]:
    """The whole of `farm import-dd`: read, convert, validate, write; returns the notes.

    Every problem raises DDImportError (one line) or SceneInvalid (one line per problem)
    naming the settings file and DD's key, or -o."""
    dd = read_dd_settings(settings)
    out = check_output(output, settings)
    scene, notes = convert_dd_settings(dd, base_dir=out.parent.resolve())
    write_scene(out, scene_yaml(scene, Path(settings).name))
    return notes
