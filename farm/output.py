"""The output folder of one render (layout in docs/outputs.md), local or at an fsspec URI.

Files are written atomically (a local folder) or as whole objects (a URI); the manifest,
with the PNGs' hashes, is the truth on resume: a frame is finished when its manifest line
exists and its file's sha256 matches. In a local folder each finished frame appends a line
to manifest.jsonl (fsync'd); an object store cannot append, so each finished frame writes
one small object manifest.d/NNNNNN.json instead, and reading merges manifest.jsonl with
manifest.d/. Compaction (on resume) and `fold_manifest` (when a job ends) rewrite
manifest.jsonl whole and only then remove the manifest.d/ objects it took in.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from farm.storage import LocalStore, open_store

MANIFEST = "manifest.jsonl"
MANIFEST_DIR = "manifest.d"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode an HxWx3 uint8 image as PNG (deterministic bytes for equal pixels)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), "RGB").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def read_png(path: Path | bytes) -> np.ndarray:
    """An image file (or PNG bytes) as HxWx3 uint8."""
    from PIL import Image

    with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as image:
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
    """One render's folder (a local path or an fsspec URI): frames, manifest, status,
    previews, video."""

    def __init__(self, root: str | os.PathLike):
        self.store = open_store(root)
        self.is_local = isinstance(self.store, LocalStore)
        self.root: Path | str = self.store.root if self.is_local else self.store.url
        self._lock = threading.Lock()
        self._manifest_objects: dict[str, bytes] = {}  # manifest.d/ objects already read or written
        self._scratch: tempfile.TemporaryDirectory | None = None

    def path(self, relative: str) -> Path:
        """The local path of a file in a local folder (OutputLocationError for a URI)."""
        return self.store.local_path(relative)

    def url(self, relative: str = "") -> str:
        """Where `relative` is, for people: a path, or the URI."""
        return self.store.describe(relative)

    def scratch(self, name: str) -> Path:
        """A local working folder that is no output: inside a local output folder (hidden
        names are left out by `farm fetch`), else in a temporary folder of this process."""
        if self.is_local:
            return self.path(name)
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="disco-farm-scratch-")
        return Path(self._scratch.name) / Path(name).name

    @staticmethod
    def frame_file(kind: str, index: int) -> str:
        folder = {"image": "images", "frame": "frames", "segment": "segments"}[kind]
        return f"{folder}/{index:06d}.png"

    def prepare(self) -> None:
        self.store.prepare()

    # -- whole files
    def write_json(self, relative: str, data: object) -> None:
        self.write_text(relative, json.dumps(data, indent=1, sort_keys=False, default=str) + "\n")

    def write_text(self, relative: str, text: str) -> None:
        self.store.write(relative, text.encode("utf-8"))

    def read_text(self, relative: str) -> str | None:
        try:
            return self.store.read(relative).decode("utf-8")
        except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
            return None

    def read_json(self, relative: str) -> object | None:
        text = self.read_text(relative)
        try:
            return None if text is None else json.loads(text)
        except json.JSONDecodeError:
            return None

    # -- frames
    def write_frame(self, kind: str, index: int, pixels: np.ndarray) -> tuple[str, str]:
        """Write a finished frame atomically; returns (relative file, sha256)."""
        data = png_bytes(pixels)
        relative = self.frame_file(kind, index)
        self.store.write(relative, data)
        return relative, sha256_hex(data)

    def write_preview(self, index: int, png: bytes) -> None:
        self.store.write(f"previews/{index:06d}.png", png)

    def write_depth(self, index: int, depth: np.ndarray) -> None:
        """A 3D frame's depth map as a 16-bit PNG (written under a temporary name, then renamed)."""
        from animation.depth import save_depth_png

        with self.store.local_target(f"depth/{index:06d}.png") as temporary:
            save_depth_png(depth, temporary)

    def local_files(self, relatives: list[str]):
        """(context) Local paths of these files for tools that need files (ffmpeg): the
        files themselves in a local folder, temporary copies for a URI."""
        return self.store.local_files(relatives)

    def local_target(self, relative: str):
        """(context) A local path to write `relative` through (renamed into place, or
        uploaded whole)."""
        return self.store.local_target(relative)

    # -- manifest
    def append_manifest(self, entry: ManifestEntry) -> None:
        """Record a finished frame durably: a fsync'd line in a local folder, one object
        manifest.d/NNNNNN.json at a URI (written whole; the same frame again replaces it)."""
        line = (entry.to_json() + "\n").encode("utf-8")
        with self._lock:
            if self.store.can_append:
                self.store.append(MANIFEST, line)
            else:
                name = f"{entry.index:06d}.json"
                self.store.write(f"{MANIFEST_DIR}/{name}", line)
                self._manifest_objects[name] = line

    def _manifest_dir(self) -> dict[str, bytes]:
        """manifest.d/ objects by name (listed each time; only new ones are read)."""
        names = [n for n in self.store.list(MANIFEST_DIR) if n.endswith(".json")]
        unread = [n for n in names if n not in self._manifest_objects]
        found = self.store.read_many([f"{MANIFEST_DIR}/{n}" for n in unread])
        for relative, data in found.items():
            self._manifest_objects[relative.rsplit("/", 1)[1]] = data
        return {n: self._manifest_objects[n] for n in names if n in self._manifest_objects}

    def manifest(self) -> list[ManifestEntry]:
        """Manifest lines that parse (a torn last line from a crash is ignored):
        manifest.jsonl, then the manifest.d/ objects in index order."""
        try:
            text = self.store.read(MANIFEST).decode("utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            text = ""
        lines = text.splitlines()
        for data in self._manifest_dir().values():
            lines.extend(data.decode("utf-8", errors="replace").splitlines())
        entries = []
        for line in lines:
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
                data = self.store.read(entry.file)
            except (FileNotFoundError, IsADirectoryError):
                continue
            if sha256_hex(data) == entry.sha256:
                good[entry.index] = entry
        return good

    def load_frame(self, entry: ManifestEntry) -> np.ndarray:
        return read_png(self.store.read(entry.file))

    def _rewrite_manifest(self, keep: dict[int, ManifestEntry], folded: list[str]) -> None:
        """manifest.jsonl whole first, then the manifest.d/ objects it replaces (a crash in
        between leaves duplicates that say the same, never a lost frame)."""
        lines = "".join(keep[i].to_json() + "\n" for i in sorted(keep))
        self.store.write(MANIFEST, lines.encode("utf-8"))
        if folded:
            self.store.remove([f"{MANIFEST_DIR}/{name}" for name in folded])
            for name in folded:
                self._manifest_objects.pop(name, None)

    def compact_manifest(self, keep: dict[int, ManifestEntry]) -> None:
        """Rewrite the manifest with exactly one verified line per finished frame."""
        with self._lock:
            self._rewrite_manifest(keep, list(self._manifest_dir()))

    def fold_manifest(self) -> None:
        """Fold manifest.d/ into manifest.jsonl (one line per frame, the latest), when a
        job ends. Nothing to do in a local folder, whose manifest is appended in place."""
        with self._lock:
            folded = list(self._manifest_dir())
            if folded:
                self._rewrite_manifest({entry.index: entry for entry in self.manifest()}, folded)

    # -- summaries
    def contact_sheet(self, entries: list[ManifestEntry], columns: int = 8, max_side: int = 256) -> None:
        from PIL import Image

        if not entries:
            return
        ordered = sorted(entries, key=lambda e: e.index)
        columns = min(columns, len(ordered))
        rows = (len(ordered) + columns - 1) // columns
        sheet = cell = None
        for i, entry in enumerate(ordered):  # one decoded image in memory at a time
            with Image.open(io.BytesIO(self.store.read(entry.file))) as image:
                if sheet is None:
                    scale = min(1.0, max_side / max(image.size))
                    cell = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
                    sheet = Image.new("RGB", (cell[0] * columns, cell[1] * rows), (16, 16, 16))
                sheet.paste(image.convert("RGB").resize(cell), ((i % columns) * cell[0], (i // columns) * cell[1]))
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        self.store.write("contact_sheet.png", buffer.getvalue())
