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

import contextlib
import datetime as _dt
import errno as _errno
import hashlib
import io
import json
import math
import os
import re
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from farm.storage import LocalStore, OutsideOutput, open_store

MANIFEST = "manifest.jsonl"
MANIFEST_DIR = "manifest.d"
FRAME_FOLDERS = {"image": "images", "frame": "frames", "segment": "segments"}
# what the farm writes into a folder: these must be folders, those files (`check_layout`)
LAYOUT_FOLDERS = (*FRAME_FOLDERS.values(), "previews", "depth", "chain", MANIFEST_DIR)
LAYOUT_FILES = (MANIFEST, "plan.json", "status.json", "scene.yaml")
LOCK_FILE = ".lock"
"""Held (flock) by the `farm submit` rendering into the folder; holds its pid."""
_LAYOUT_FILE = r"\d{6}\.(?:png|json)"
"""Names of the files in the layout folders (a frame, a depth map, a manifest.d/ object)."""
_WRITTEN_NAMES = rf"{_LAYOUT_FILE}|status\.json|plan\.json|scene\.yaml|manifest\.jsonl|contact_sheet|video"
_HALF_WRITTEN = re.compile(
    rf"\.(?:{_WRITTEN_NAMES})\.[a-z0-9_]+\.tmp(?:\.[a-z0-9]+)?"
    r"|\.\.(?:contact_sheet|video)\.[a-z0-9_]+\.tmp\.[a-z0-9_]+\.partial\.[a-z0-9]+")
"""Temporary files of what a render writes: storage.write_atomic's ``.NAME.XXXX.tmp``,
local_target's ``.STEM.HEX.tmp.SUFFIX``, and animation.video.stitch's partial video inside
that. Not farm preview's (it writes without claiming the folder), nor other hidden files."""
# writing errors that trying again (rendering the frame again) cannot cure
PERSISTENT_WRITE_ERRORS = frozenset({_errno.EROFS, _errno.EACCES, _errno.EPERM, _errno.ENOTDIR, _errno.EEXIST,
                                     _errno.EISDIR, _errno.ENAMETOOLONG})
DISK_FULL_ERRORS = frozenset({_errno.ENOSPC, _errno.EDQUOT})
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_plain_file(path: Path) -> bool:
    """A regular file, not a link to one."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


class OutputDamaged(ValueError):
    """An output folder that cannot be used as it is (a damaged plan.json, a file where a
    folder belongs): the CLI prints it as one line, exit 2."""


class OutputBusy(ValueError):
    """Another process is rendering into this output folder (one line, exit 2)."""


_CLAIMS: dict[Path, object] = {}  # output folders this process holds (open, locked .lock files)
_CLAIMS_LOCK = threading.Lock()


class OutputWriteError(OSError):
    """Writing an output failed; the message names the output folder (and keeps errno)."""

    def __init__(self, error: OSError, message: str):
        super().__init__(error.errno, error.strerror or str(error))
        self.message = message

    def __str__(self) -> str:
        return self.message


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
    chain_sha256: str = ""  # turbo: the sha256 of chain/NNNNNN.png, the image later frames start from

    def to_json(self) -> str:
        record = dict(self.__dict__)
        if not record["chain_sha256"]:
            del record["chain_sha256"]
        return json.dumps(record, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "ManifestEntry | None":
        """The entry of one manifest line, or None for a line that is torn, not JSON, lacks
        a key, has a value of the wrong type, or names a file other than its frame's own
        (`OutputFolder.frame_file`: so never one outside the folder). Unknown keys are
        ignored. A frame whose line is refused is simply rendered again."""
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError, huge integers, deep nesting
            return None
        if not isinstance(record, dict):
            return None
        index, kind, file = record.get("index"), record.get("kind"), record.get("file")
        if (not _whole(index) or index < 0 or not isinstance(kind, str) or kind not in FRAME_FOLDERS
                or file != OutputFolder.frame_file(kind, index)):
            return None
        for key in ("sha256", "settings_hash"):
            if not isinstance(record.get(key), str) or not record[key]:
                return None
        if not _SHA256.fullmatch(record["sha256"]) or not _whole(record.get("seed")):
            return None
        optional = {"actor": str, "node": str, "finished_at": str}
        if any(key in record and not isinstance(record[key], kind_) for key, kind_ in optional.items()):
            return None
        if "chain_sha256" in record and not (isinstance(record["chain_sha256"], str)
                                             and _SHA256.fullmatch(record["chain_sha256"])):
            return None
        seconds = record.get("seconds", 0.0)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            return None
        fields = {key: record[key] for key in cls.__dataclass_fields__ if key in record}
        return cls(**fields)


def _whole(value) -> bool:
    """An int that is not a bool (JSON true/false)."""
    return isinstance(value, int) and not isinstance(value, bool)


class OutputFolder:
    """One render's folder (a local path or an fsspec URI): frames, manifest, status,
    previews, video."""

    def __init__(self, root: str | os.PathLike):
        self.store = open_store(root)
        self.is_local = isinstance(self.store, LocalStore)
        self.root: Path | str = self.store.root if self.is_local else self.store.url
        self.disk_root: Path | None = self.store.root if self.is_local else self.store.disk_root
        """The folder on this disk (a path, or a file:// URI): checked, claimed and guarded as one."""
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
        return f"{FRAME_FOLDERS[kind]}/{index:06d}.png"

    def prepare(self) -> None:
        """Create the folder (if it is not there) and check what is in it (`check_layout`,
        `check_is_render`)."""
        if self.is_local and self.store.root.exists() and not self.store.root.is_dir():
            raise OutputDamaged(f"{self.root} is a file, not a folder")
        try:
            self.store.prepare()
        except OSError as error:
            raise OutputWriteError(error, f"cannot create the output folder {self.root}: "
                                          f"{error.strerror or error}") from None
        self.check_layout()
        self.check_is_render()

    def check_is_render(self) -> None:
        """OutputDamaged when a local folder holds files but was never a render's (no
        plan.json, never claimed by a submit): the render would overwrite the user's own
        scene.yaml, video.mp4, frames ... Missing or empty folders are fine."""
        root = self.disk_root
        if root is None or not root.is_dir() or _is_plain_file(root / "plan.json") or _is_plain_file(root / LOCK_FILE):
            return
        try:
            names = sorted(os.listdir(root))
        except OSError:
            return  # unreadable: creating and writing report it
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise OutputDamaged(f"{self.root}: holds files that are not a Disco Farm render ({shown}); a render "
                                "would overwrite them: give a new or empty folder")

    def holds_render(self) -> bool:
        """Whether a render's plan.json is here (a plain file, on this disk)."""
        if self.disk_root is not None:
            return _is_plain_file(self.disk_root / "plan.json")
        try:
            return "plan.json" in self.store.list("")
        except (OSError, ValueError):
            return False

    def claim(self) -> None:
        """Hold this folder for this process (an exclusive lock on its .lock file, kept
        until `release` or the process ends): a second `farm submit` into it is refused
        with OutputBusy instead of overwriting frames the first is writing. Local folders
        only (paths and file:// URIs); a folder this process holds already is fine."""
        if self.disk_root is None:
            return
        import fcntl

        root = self.disk_root.resolve()
        try:
            root.mkdir(parents=True, exist_ok=True)  # a file:// URI's folder is made on first write
        except OSError as error:
            raise OutputWriteError(error, f"cannot create the output folder {self.root}: "
                                          f"{error.strerror or error}") from None
        with _CLAIMS_LOCK:
            if root in _CLAIMS:
                return
            try:  # never through a link: a planted .lock link would truncate its target
                descriptor = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as error:
                if error.errno == _errno.ELOOP:
                    raise OutputDamaged(f"{self.root}: {LOCK_FILE} is a link; a Disco Farm render's {LOCK_FILE} is "
                                        "a plain file: remove the link") from None
                raise OutputWriteError(error, f"cannot create {self.root / LOCK_FILE}: "
                                              f"{error.strerror or error}") from None
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                os.close(descriptor)
                raise OutputDamaged(f"{self.root}: {LOCK_FILE} is not a plain file: remove it")
            handle = open(descriptor, "a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip()
                handle.close()
                by = f" (pid {holder})" if holder.isdigit() else ""
                raise OutputBusy(f"{self.root}: another farm submit{by} is rendering into this folder; "
                                 "wait for it to end, or choose another --out") from None
            except OSError:  # a filesystem without locks (some NFS mounts): render unguarded
                handle.close()
                return
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            _CLAIMS[root] = handle
        self._remove_half_written(root)

    @staticmethod
    def _remove_half_written(root: Path) -> None:
        """Temporary files a killed render left (`_HALF_WRITTEN`: hidden, never recorded);
        only while this process holds the folder, so no writer of them is alive."""
        for folder in (root, *(root / name for name in LAYOUT_FOLDERS)):
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for entry in entries:
                if _HALF_WRITTEN.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)

    def release(self) -> None:
        """Let other processes render into this folder again (see `claim`)."""
        if self.disk_root is None:
            return
        with _CLAIMS_LOCK:
            handle = _CLAIMS.pop(self.disk_root.resolve(), None)
        if handle is not None:
            handle.close()  # closing the file drops the lock

    def check_layout(self) -> None:
        """OutputDamaged when something the farm writes here has the wrong type: a file
        where a folder belongs (frames/, previews/ ...), or a folder where a file belongs
        (manifest.jsonl, plan.json ...). Found before rendering, so no frame is rendered
        only to fail when it is written. Only folders on this disk (an object store has none)."""
        root = self.disk_root
        if root is None:
            return
        for name in LAYOUT_FOLDERS:
            path = root / name
            if path.is_symlink() and not path.exists():
                problem = "is a broken link, not a folder"
            elif path.exists() and not path.is_dir():
                problem = "is a file, not a folder"
            elif path.is_dir() and root not in path.resolve().parents:
                problem = f"is a link to {path.resolve()}, outside the output folder"
            else:
                continue
            raise OutputDamaged(f"{path} {problem}: move it away (or choose another --out), then submit again")
        for name in LAYOUT_FILES:
            path = root / name
            if path.is_dir():
                raise OutputDamaged(f"{path} is a folder, not a file: move it away (or choose another --out), "
                                    "then submit again")
        for name in LAYOUT_FOLDERS:  # a folder where a frame's file goes: found after rendering it, every time
            try:
                entries = [e for e in os.scandir(root / name) if re.fullmatch(_LAYOUT_FILE, e.name)]
            except OSError:  # not there (or not a folder: reported above)
                continue
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    raise OutputDamaged(f"{entry.path} is a folder, not a file: move it away (or choose another "
                                        "--out), then submit again")

    def write_problem(self, relative: str, error: OSError) -> str:
        """Why writing `relative` failed, in words that name the output folder: a file in
        the way of a folder, a full disk, or the system's reason."""
        if self.is_local:
            root = self.store.root
            parent = (root / relative).parent
            while parent != root and root in parent.parents:
                if parent.exists() and not parent.is_dir():
                    return f"{parent} is a file, not a folder"
                parent = parent.parent
        reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
        if error.errno in DISK_FULL_ERRORS:
            return f"no room to write {relative} in the output folder {self.root} ({reason}): free some space"
        return f"could not write {relative} in the output folder {self.root}: {reason}"

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
        except (ValueError, RecursionError):
            return None

    def write_status(self, data: dict) -> bool:
        """status.json, best effort: atomically; on a full local disk (no room for the
        temporary copy) overwritten in place, since a stale "running" is worse than a torn
        file (readers take a torn status.json as missing). False when it could not be written."""
        text = (json.dumps(data, indent=1, sort_keys=False, default=str) + "\n").encode("utf-8")
        try:
            self.store.write("status.json", text)
            return True
        except OSError as error:
            if not self.is_local or error.errno not in DISK_FULL_ERRORS:
                return False
        try:
            with open(self.path("status.json"), "r+b") as handle:
                handle.truncate(0)
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            return True
        except (OSError, ValueError):
            return False

    def read_plan(self) -> dict:
        """plan.json, checked: a dict whose "frames" is a non-empty list of records with a
        whole-number "index" (each once) and a "settings_hash" string, and whose
        "animation" (if there) is a dict with a positive "fps" (if there). OutputDamaged
        (one line) when there is no plan.json or it is damaged."""
        where = self.url("plan.json")
        try:
            data = self.store.read("plan.json")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            if self.is_local and not self.store.root.exists():
                raise OutputDamaged(f"{self.url()}: no such folder") from None
            raise OutputDamaged(f"{self.url()}: no plan.json here (not a render output folder)") from None

        def damaged(reason: str) -> OutputDamaged:
            return OutputDamaged(f"{where} is damaged ({reason}): submit the scene again to rewrite it")

        try:
            record = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            raise damaged("not UTF-8 text") from None
        except (ValueError, RecursionError):
            raise damaged("not valid JSON") from None
        if not isinstance(record, dict):
            raise damaged("not a JSON object")
        frames = record.get("frames")
        if not isinstance(frames, list):
            raise damaged("'frames' is missing" if frames is None else "'frames' is not a list")
        if not frames:
            raise damaged("'frames' is empty")
        seen = set()
        for position, frame in enumerate(frames):
            if not isinstance(frame, dict):
                raise damaged(f"frames[{position}] is not an object")
            index = frame.get("index")
            if not _whole(index) or index < 0:
                raise damaged(f"frames[{position}] has no whole-number 'index'")
            if index in seen:
                raise damaged(f"frame {index} appears twice")
            seen.add(index)
            if not isinstance(frame.get("settings_hash"), str) or not frame["settings_hash"]:
                raise damaged(f"frames[{position}] has no 'settings_hash'")
        animation = record.get("animation", {})
        if not isinstance(animation, dict):
            raise damaged("'animation' is not an object")
        fps = animation.get("fps", 12)
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise damaged("'animation.fps' is not a positive number")
        return record

    # -- frames
    @staticmethod
    def chain_file(index: int) -> str:
        return f"chain/{index:06d}.png"

    def _write_png(self, relative: str, pixels: np.ndarray) -> str:
        """Write an image atomically; returns its sha256."""
        data = png_bytes(pixels)
        self.store.write(relative, data)
        return sha256_hex(data)

    def write_chain(self, index: int, pixels: np.ndarray) -> str:
        """A turbo frame's chain image (see `load_source`); returns its sha256."""
        return self._write_png(self.chain_file(index), pixels)

    def write_frame(self, kind: str, index: int, pixels: np.ndarray) -> tuple[str, str]:
        """Write a finished frame atomically; returns (relative file, sha256)."""
        relative = self.frame_file(kind, index)
        return relative, self._write_png(relative, pixels)

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
                if not self._ends_with_newline(MANIFEST):  # a torn last line (a crash, a full disk)
                    line = b"\n" + line  # stays alone on its line (and is skipped), not glued to this one
                self.store.append(MANIFEST, line)
            else:
                name = f"{entry.index:06d}.json"
                self.store.write(f"{MANIFEST_DIR}/{name}", line)
                self._manifest_objects[name] = line

    def _ends_with_newline(self, relative: str) -> bool:
        """True when the local file is missing, empty or ends with a newline."""
        try:
            with open(self.path(relative), "rb") as handle:
                handle.seek(0, os.SEEK_END)
                if handle.tell() == 0:
                    return True
                handle.seek(-1, os.SEEK_END)
                return handle.read(1) == b"\n"
        except OSError:
            return True

    def _manifest_dir(self) -> dict[str, bytes]:
        """manifest.d/ objects by name (listed each time; only new ones are read)."""
        names = [n for n in self.store.list(MANIFEST_DIR) if n.endswith(".json")]
        unread = [n for n in names if n not in self._manifest_objects]
        found = self.store.read_many([f"{MANIFEST_DIR}/{n}" for n in unread])
        for relative, data in found.items():
            self._manifest_objects[relative.rsplit("/", 1)[1]] = data
        return {n: self._manifest_objects[n] for n in names if n in self._manifest_objects}

    def manifest(self) -> list[ManifestEntry]:
        """Manifest lines that parse and check out (`ManifestEntry.from_json`: a torn last
        line from a crash, a damaged or hand-edited line is ignored): manifest.jsonl, then
        the manifest.d/ objects in index order."""
        try:
            text = self.store.read(MANIFEST).decode("utf-8", errors="replace")
        except (FileNotFoundError, IsADirectoryError):
            text = ""
        lines = text.splitlines()
        for data in self._manifest_dir().values():
            lines.extend(data.decode("utf-8", errors="replace").splitlines())
        entries = []
        for line in lines:
            entry = ManifestEntry.from_json(line)
            if entry is not None:
                entries.append(entry)
        return entries

    def finished(self, hashes: dict[int, str], entries: list[ManifestEntry] | None = None) -> dict[int, ManifestEntry]:
        """Frames whose manifest line (of `entries`, already read, or the manifest) matches the
        plan's settings hash and whose PNG (and chain image, if it has one) verifies."""
        good: dict[int, ManifestEntry] = {}
        for entry in self.manifest() if entries is None else entries:
            if hashes.get(entry.index) != entry.settings_hash:
                continue
            files = [(entry.file, entry.sha256)]
            if entry.chain_sha256:
                files.append((self.chain_file(entry.index), entry.chain_sha256))
            if all(self._verifies(relative, digest) for relative, digest in files):
                good[entry.index] = entry
        return good

    def _verifies(self, relative: str, digest: str) -> bool:
        try:
            data = self.store.read(relative)
        except (OSError, OutsideOutput):  # gone, unreadable, frames/ not a folder, a link out
            return False
        return sha256_hex(data) == digest

    def load_frame(self, entry: ManifestEntry) -> np.ndarray:
        return read_png(self.store.read(entry.file))

    def load_source(self, entry: ManifestEntry) -> np.ndarray:
        """The image later frames start from: the chain image of a turbo frame written out
        blended, else the frame itself."""
        return read_png(self.store.read(self.chain_file(entry.index))) if entry.chain_sha256 else self.load_frame(entry)

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
