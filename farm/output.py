"""The output folder of one render (layout in docs/outputs.md).

Files are written atomically; the manifest is append-only and, with the PNGs' hashes,
the truth on resume: a frame is finished when its manifest line exists and its file's
sha256 matches.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from farm.storage import confined, write_atomic, write_text_atomic


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode an HxWx3 uint8 image as PNG (deterministic bytes for equal pixels)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), "RGB").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ManifestEntry:
    index: int
    kind: str
    file: str
    sha256: str
    settings_hash: str
    seed: int
    actor: str = ""
    node: str = ""
    seconds: float = 0.0
    finished_at: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


class OutputFolder:
    """One render's folder: frames, manifest, status, previews, video."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self._lock = threading.Lock()

    def path(self, relative: str) -> Path:
        return confined(self.root, relative)

    @staticmethod
    def frame_file(kind: str, index: int) -> str:
        folder = {"image": "images", "frame": "frames", "segment": "segments"}[kind]
        return f"{folder}/{index:06d}.png"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    # -- whole files
    def write_json(self, relative: str, data: object) -> None:
        write_text_atomic(self.path(relative), json.dumps(data, indent=1, sort_keys=False, default=str) + "\n")

    def write_text(self, relative: str, text: str) -> None:
        write_text_atomic(self.path(relative), text)

    def read_json(self, relative: str) -> object | None:
        try:
            return json.loads(self.path(relative).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    # -- frames
    def write_frame(self, kind: str, index: int, pixels: np.ndarray) -> tuple[str, str]:
        """Write a finished frame atomically; returns (relative file, sha256)."""
        data = png_bytes(pixels)
        relative = self.frame_file(kind, index)
        write_atomic(self.path(relative), data)
        return relative, sha256_hex(data)

    def write_preview(self, index: int, png: bytes) -> None:
        write_atomic(self.path(f"previews/{index:06d}.png"), png)

    def write_depth(self, index: int, depth: np.ndarray) -> None:
        """A 3D frame's depth map as a 16-bit PNG (written under a temporary name, then renamed)."""
        from animation.depth import save_depth_png

        target = self.path(f"depth/{index:06d}.png")
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.stem}.tmp.png")
        save_depth_png(depth, temporary)
        os.replace(temporary, target)

    def append_manifest(self, entry: ManifestEntry) -> None:
        with self._lock:
            path = self.path("manifest.jsonl")
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(entry.to_json() + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    def manifest(self) -> list[ManifestEntry]:
        """Manifest lines that parse (a torn last line from a crash is ignored)."""
        try:
            text = self.path("manifest.jsonl").read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        entries = []
        for line in text.splitlines():
            try:
                entries.append(ManifestEntry(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                continue
        return entries

    def finished(self, hashes: dict[int, str]) -> dict[int, ManifestEntry]:
        """Frames whose manifest line matches the plan's settings hash and whose PNG verifies."""
        good: dict[int, ManifestEntry] = {}
        for entry in self.manifest():
            if hashes.get(entry.index) != entry.settings_hash:
                continue
            try:
                data = self.path(entry.file).read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                continue
            if sha256_hex(data) == entry.sha256:
                good[entry.index] = entry
        return good

    def load_frame(self, entry: ManifestEntry) -> np.ndarray:
        return read_png(self.path(entry.file))

    def compact_manifest(self, keep: dict[int, ManifestEntry]) -> None:
        """Rewrite the manifest with exactly one verified line per finished frame."""
        lines = "".join(keep[i].to_json() + "\n" for i in sorted(keep))
        write_text_atomic(self.path("manifest.jsonl"), lines)

    # -- summaries
    def contact_sheet(self, entries: list[ManifestEntry], columns: int = 8, max_side: int = 256) -> None:
        from PIL import Image

        if not entries:
            return
        images = [Image.open(self.path(e.file)).convert("RGB") for e in sorted(entries, key=lambda e: e.index)]
        width, height = images[0].size
        scale = min(1.0, max_side / max(width, height))
        cell = (max(1, int(width * scale)), max(1, int(height * scale)))
        columns = min(columns, len(images))
        rows = (len(images) + columns - 1) // columns
        sheet = Image.new("RGB", (cell[0] * columns, cell[1] * rows), (16, 16, 16))
        for i, image in enumerate(images):
            sheet.paste(image.resize(cell), ((i % columns) * cell[0], (i // columns) * cell[1]))
            image.close()
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        write_atomic(self.path("contact_sheet.png"), buffer.getvalue())
