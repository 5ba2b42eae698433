"""Where outputs are written: a local folder or an fsspec URI, confined to one root.

`LocalStore` writes files atomically (temporary name in the same folder, fsync, then
`os.replace`) and appends with fsync. `FsspecStore` writes to any fsspec URI (s3://, gs://,
memory://, file://...): each object is written whole in one call (an object-store PUT is
atomic, and a rename there would be a copy plus a delete), and nothing is appended.
Both refuse relative paths that would land outside their root (`OutsideOutput`).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import tempfile
from pathlib import Path
from typing import Iterator


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()


class OutsideOutput(ValueError):
    pass


class OutputLocationError(ValueError):
    """An output URI that cannot be used (unknown protocol, backend not installed, no path)."""


def confined(root: Path, relative: str | os.PathLike) -> Path:
    """root/relative, refusing anything that would land outside root."""
    root = Path(root).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise OutsideOutput(f"'{relative}' would be written outside the output folder {root}")
    return target


def write_atomic(path: Path, data: bytes) -> Path:
    """Write bytes to path via a temporary file in the same folder and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- URIs

_URI = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.\-]*::)*[A-Za-z][A-Za-z0-9+.\-]*)://")
# fsspec protocols that can only be read (an output location must be writable)
READ_ONLY_PROTOCOLS = frozenset({"http", "https", "zip", "tar", "libarchive", "github", "git", "gist", "data",
                                 "reference", "dvc"})


def is_uri(location: str | os.PathLike | None) -> bool:
    """True for 'protocol://...' (and fsspec chains such as 'simplecache::s3://...')."""
    return isinstance(location, str) and _URI.match(location) is not None


def uri_protocols(url: str) -> list[str]:
    match = _URI.match(url)
    return match.group(1).lower().split("::") if match else []


def check_uri(url: str, need_backend: bool = True) -> None:
    """Raise OutputLocationError unless `url` names a writable fsspec location. Without
    `need_backend` only the protocol's name is checked (its package may live elsewhere,
    e.g. on the cluster that will write there)."""
    import fsspec

    known = set(fsspec.available_protocols())
    for protocol in uri_protocols(url):
        if protocol not in known:
            raise OutputLocationError(f"'{url}': unknown storage protocol '{protocol}://' "
                                      "(expected s3://, gs://, az://, file://, memory:// or another fsspec protocol)")
        if protocol in READ_ONLY_PROTOCOLS:
            raise OutputLocationError(f"'{url}': {protocol}:// locations cannot be written to")
    if not url.split("://", 1)[1].strip("/"):
        raise OutputLocationError(f"'{url}': no bucket or folder after '{url.split('://', 1)[0]}://'")
    if need_backend:
        open_filesystem(url)


def open_filesystem(url: str):
    """(fsspec filesystem, root path without a trailing '/') for an output URI."""
    import fsspec

    check_uri(url, need_backend=False)
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except ImportError as error:
        protocol = uri_protocols(url)[-1]
        reason = " ".join(str(error).split()) or "a package is missing"
        raise OutputLocationError(f"'{url}': the {protocol}:// backend is not installed ({reason})") from None
    except (ValueError, TypeError, OSError) as error:
        raise OutputLocationError(f"'{url}': cannot open it: {' '.join(str(error).split())}") from None
    root = root.rstrip("/")
    if not root.strip("/"):
        raise OutputLocationError(f"'{url}': no bucket or folder after '{url.split('://', 1)[0]}://'")
    return fs, root


LOCAL_PROTOCOLS = ("file", "local")
"""fsspec protocols whose paths are on this machine's disk."""


def disk_path(location: str | os.PathLike) -> Path | None:
    """The folder on this machine's disk that `location` names: a path, or a plain file://
    URI (written through fsspec, but guarded as a folder is); None for other URIs."""
    if not is_uri(location):
        return Path(location).expanduser()
    if is_local_uri(str(location)):
        return Path(open_filesystem(str(location))[1])
    return None


def is_local_uri(url: str) -> bool:
    """A URI whose files end up on this machine's disk: file:// (or local://), also behind
    a cache (simplecache::file://...)."""
    protocols = uri_protocols(url)
    return bool(protocols) and protocols[-1] in LOCAL_PROTOCOLS


def confined_key(root: str, relative: str | os.PathLike, url: str | None = None) -> str:
    """root/relative inside an object store, refusing absolute paths, URIs and '..' escapes."""
    text = os.fspath(relative)
    normal = posixpath.normpath(text) if text else "."
    if text.startswith("/") or is_uri(text) or normal == ".." or normal.startswith("../"):
        raise OutsideOutput(f"'{relative}' would be written outside the output location {url or root}")
    return root if normal == "." else f"{root}/{normal}"


def join_location(location: str | Path, name: str) -> str | Path:
    """location/name for a local folder or a URI, refusing a name that would leave it."""
    if is_uri(location):
        base = str(location).rstrip("/")
        return base + confined_key("", name, base)
    return confined(Path(location), name)


# --------------------------------------------------------------------------- stores


class LocalStore:
    """A folder on this machine: atomic renames, fsync'd appends."""

    can_append = True

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    def local_path(self, relative: str | os.PathLike) -> Path:
        return confined(self.root, relative)

    def describe(self, relative: str = "") -> str:
        return str(self.local_path(relative))

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, relative: str, data: bytes) -> None:
        write_atomic(self.local_path(relative), data)

    def read(self, relative: str) -> bytes:
        return self.local_path(relative).read_bytes()

    def read_many(self, relatives: list[str]) -> dict[str, bytes]:
        found = {}
        for relative in relatives:
            try:
                found[relative] = self.read(relative)
            except (FileNotFoundError, IsADirectoryError):
                continue
        return found

    def append(self, relative: str, data: bytes) -> None:
        with open(self.local_path(relative), "ab") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def list(self, folder: str) -> list[str]:
        """Names of the files directly in `folder` (none if it does not exist)."""
        try:
            return sorted(entry.name for entry in os.scandir(self.local_path(folder)) if entry.is_file())
        except (FileNotFoundError, NotADirectoryError):
            return []

    def remove(self, relatives: list[str]) -> None:
        for relative in relatives:
            self.local_path(relative).unlink(missing_ok=True)

    @contextlib.contextmanager
    def local_files(self, relatives: list[str]) -> Iterator[list[Path]]:
        """Local paths to read these files from: the files themselves."""
        yield [self.local_path(relative) for relative in relatives]

    @contextlib.contextmanager
    def local_target(self, relative: str) -> Iterator[Path]:
        """A local path to write `relative` through: a temporary name in its folder,
        renamed into place when the block ends without an error."""
        target = self.local_path(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.stem}.{os.urandom(4).hex()}.tmp{target.suffix}")
        try:
            yield temporary
            os.chmod(temporary, _FILE_MODE)  # as every other output (tools write private temporaries)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)


class FsspecStore:
    """Any fsspec location: whole-object writes, no appends, no renames."""

    can_append = False

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, self.root = open_filesystem(url)
        self.disk_root: Path | None = Path(self.root).resolve() if is_local_uri(url) else None
        """The folder, for a file:// URI: its links are followed only inside it, as a path's are."""

    def key(self, relative: str | os.PathLike) -> str:
        key = confined_key(self.root, relative, self.url)
        if self.disk_root is not None:
            confined(self.disk_root, relative)  # OutsideOutput for a link out of the folder
        return key

    def local_path(self, relative: str | os.PathLike) -> Path:
        raise OutputLocationError(f"{self.describe(os.fspath(relative))} is not on this machine's disk")

    def describe(self, relative: str = "") -> str:
        key = self.key(relative)
        return self.url + key[len(self.root):]

    def prepare(self) -> None:
        """Nothing: object stores have no folders; filesystems get theirs on first write."""

    def _retry_with_parent(self, key: str, write) -> None:
        try:
            write()
        except FileNotFoundError:  # a filesystem (file://, sftp://) without the folder yet
            self.fs.makedirs(posixpath.dirname(key), exist_ok=True)
            write()

    def write(self, relative: str, data: bytes) -> None:
        key = self.key(relative)
        self._retry_with_parent(key, lambda: self.fs.pipe_file(key, data))

    def read(self, relative: str) -> bytes:
        try:
            return self.fs.cat_file(self.key(relative))
        except IsADirectoryError:
            raise FileNotFoundError(self.describe(relative)) from None

    def read_many(self, relatives: list[str]) -> dict[str, bytes]:
        """Those of `relatives` that exist (fetched concurrently where the store can)."""
        if not relatives:
            return {}
        keys = {self.key(relative): relative for relative in relatives}
        found = self.fs.cat(list(keys), on_error="omit")
        return {keys[key]: data for key, data in found.items() if key in keys and isinstance(data, bytes)}

    def list(self, folder: str) -> list[str]:
        key = self.key(folder)
        self.fs.invalidate_cache(key)
        try:
            entries = self.fs.ls(key, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(posixpath.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "file")

    def remove(self, relatives: list[str]) -> None:
        keys = [self.key(relative) for relative in relatives]
        if keys:
            try:
                self.fs.rm(keys)
            except FileNotFoundError:
                pass
        # filesystems with real folders (file://, sftp) keep an emptied folder: drop it
        for folder in {posixpath.dirname(key) for key in keys} - {self.root}:
            with contextlib.suppress(OSError, NotImplementedError):
                self.fs.invalidate_cache(folder)
                if not self.fs.ls(folder):
                    self.fs.rmdir(folder)

    @contextlib.contextmanager
    def local_files(self, relatives: list[str]) -> Iterator[list[Path]]:
        """Local copies of these objects, in a temporary folder removed afterwards."""
        with tempfile.TemporaryDirectory(prefix="disco-farm-") as scratch:
            paths = [Path(scratch) / posixpath.normpath(relative) for relative in relatives]
            for path in paths:
                path.parent.mkdir(parents=True, exist_ok=True)
            if relatives:
                self.fs.get([self.key(relative) for relative in relatives], [str(path) for path in paths])
            yield paths

    @contextlib.contextmanager
    def local_target(self, relative: str) -> Iterator[Path]:
        """A local path to write `relative` through; uploaded whole when the block ends
        without an error."""
        key = self.key(relative)
        with tempfile.TemporaryDirectory(prefix="disco-farm-") as scratch:
            path = Path(scratch) / posixpath.basename(key)
            yield path
            self._retry_with_parent(key, lambda: self.fs.put_file(str(path), key))


def open_store(location: str | os.PathLike) -> LocalStore | FsspecStore:
    """The store for an output location: a URI goes through fsspec, anything else is a path."""
    if is_uri(location):
        return FsspecStore(str(location))
    return LocalStore(location)

