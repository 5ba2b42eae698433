"""`farm import-dd`: turn the settings JSON that DD writes beside each run into a scene."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from farm import settings as S


class DDImportError(ValueError):
    pass


def convert_dd_settings(dd: dict) -> tuple[dict, list[str]]:
    """DD's settings mapping -> (scene mapping with our names, notes about dropped keys)."""
    scene: dict = {}
    notes: list[str] = []
    width, height = dd.get("width"), dd.get("height")
    if width is not None and height is not None:
        scene["width_height"] = [width, height]
    elif "width_height" in dd:
        scene["width_height"] = dd["width_height"]
    clip_flags = {k: v for k, v in dd.items() if k in S.DD_CLIP_FLAGS}
    if clip_flags:
        enabled = {flag: flag in S.DD_CLIP_DEFAULT_ON for flag in S.DD_CLIP_FLAGS}
        enabled.update({k: bool(v) for k, v in clip_flags.items()})
        scene["clip_models"] = [S.DD_CLIP_FLAGS[f] for f, on in enabled.items() if on]
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
        if value is None and S.BY_NAME[name].kind not in ("path", "seed", "choice"):
            notes.append(f"dropped {key}: null in DD's file (default used)")
            continue
        if name in ("text_prompts", "image_prompts") and isinstance(value, dict):
            value = {_frame_key(k): v for k, v in value.items()}
        if name == "interpolation" and isinstance(value, str):
            value = value.lower()
        scene[name] = value
    return scene, notes


def _frame_key(key):
    try:
        return int(key)
    except (TypeError, ValueError):
        return key


def read_dd_settings(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DDImportError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DDImportError(f"{path}: cannot read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DDImportError(f"{path}:{exc.lineno}: not DD settings JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise DDImportError(f"{path}: expected a JSON object of DD settings")
    return data


def scene_yaml(scene: dict, source: str) -> str:
    header = f"# Imported from Disco Diffusion settings: {source}\n"
    return header + yaml.safe_dump(scene, sort_keys=False, allow_unicode=True, width=100)
