"""Download catalogued checkpoints into the model cache: resumable, verified, atomic.

``download(model, dest_dir)`` streams the first working URL into ``FILENAME.part``,
resumes an interrupted transfer with an HTTP Range request (restarting when a server
ignores Range), falls back to the next URL when one fails or serves the wrong bytes,
checks the sha256 and only then renames the file into place with ``os.replace``.
After a successful check it writes a sidecar ``FILENAME.sha256`` (digest and size), so
``file_state`` can report a cached file's state without hashing gigabytes again.
Concurrent downloads of one file into one folder (several workers on a node) are
serialised with an advisory lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import pathlib
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from engine.catalogue import ModelError, ModelFile, models_dir

__all__ = [
    "DownloadError",
    "download",
    "verify",
    "file_state",
    "sha256_of_file",
    "sidecar_path",
    "part_path",
    "DEFAULT_TIMEOUT_S",
    "max_download_bytes",
]

DEFAULT_TIMEOUT_S = 60.0
"""Seconds a connect or a single read may stall before the attempt counts as failed."""

_CHUNK = 1 << 20
_USER_AGENT = "disco-farm-model-download/1 (+urllib)"

SIZE_MARGIN = 1.1
SIZE_SLACK_BYTES = 8 << 20
UNKNOWN_SIZE_LIMIT_BYTES = 16 << 30
"""A transfer stops once the file would be larger than ``size_hint * SIZE_MARGIN +
SIZE_SLACK_BYTES`` (the catalogue's sizes are approximate), or than
UNKNOWN_SIZE_LIMIT_BYTES for a file without a size_hint (the largest checkpoints are 2.2 GB)."""


class DownloadError(ModelError):
    """No URL of a model delivered a file with the catalogued sha256."""


class _Interrupted(Exception):
    """The transfer stopped early; what arrived is kept in the .part file."""


class _RestartFromZero(Exception):
    """The server's reply cannot continue the .part file; start over."""


class _WrongHash(Exception):
    """A URL delivered a complete file whose sha256 is not the catalogued one."""


class _TooLarge(Exception):
    """A URL sent (or announced) more bytes than the file can have."""


def max_download_bytes(model: ModelFile) -> int:
    """The most bytes a download of ``model`` may bring (see SIZE_MARGIN)."""
    if model.size_hint is None:
        return UNKNOWN_SIZE_LIMIT_BYTES
    return int(model.size_hint * SIZE_MARGIN) + SIZE_SLACK_BYTES


def _too_large(model: ModelFile, got: str) -> _TooLarge:
    expected = (f"the catalogue expects about {model.size_hint} bytes" if model.size_hint is not None
                else "no model file is that large")
    return _TooLarge(f"{got} more than {max_download_bytes(model)} bytes ({expected}); stopped")


_ALLOWED_SCHEMES = ("http", "https")


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http(s) only, and from https to https only (no downgrade)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old_scheme = urllib.parse.urlsplit(req.full_url).scheme.lower()
        new_scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if new_scheme not in _ALLOWED_SCHEMES or (old_scheme == "https" and new_scheme != "https"):
            raise urllib.error.URLError(f"refused a redirect to {newurl} (only http(s) redirects are "
                                        "followed, and https ones only to https)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener() -> urllib.request.OpenerDirector:
    """urllib's opener for http and https only (no ftp, file or data handlers)."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(),
                    urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), _HttpOnlyRedirects(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def part_path(model: ModelFile, dest_dir: pathlib.Path) -> pathlib.Path:
    return dest_dir / (model.filename + ".part")


def sidecar_path(model: ModelFile, dest_dir: pathlib.Path) -> pathlib.Path:
    return dest_dir / (model.filename + ".sha256")


def sha256_of_file(path: os.PathLike | str, chunk_size: int = _CHUNK) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------
# sidecar: "sha256=<hex>\nsize=<bytes>\n", written after hashing the finished file


@dataclass(frozen=True)
class _Sidecar:
    sha256: str
    size: int


def _write_sidecar(model: ModelFile, dest_dir: pathlib.Path, digest: str, size: int) -> None:
    path = sidecar_path(model, dest_dir)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"sha256={digest}\nsize={size}\n", encoding="ascii")
    os.replace(tmp, path)


def _read_sidecar(model: ModelFile, dest_dir: pathlib.Path) -> _Sidecar | None:
    try:
        text = sidecar_path(model, dest_dir).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    try:
        return _Sidecar(sha256=fields["sha256"].strip().lower(), size=int(fields["size"]))
    except (KeyError, ValueError):
        return None


def file_state(model: ModelFile, dest_dir: os.PathLike | str | None = None) -> str:
    """Cheap state of a cached file (no hashing): one of
    ``downloaded`` (verified digest matches, size unchanged since), ``corrupt`` (verified
    digest differs, or size changed since verification), ``unverified`` (present, never
    verified), ``partial`` (only a ``.part`` from an interrupted download) or ``missing``.
    """
    folder = pathlib.Path(dest_dir) if dest_dir is not None else models_dir()
    path = folder / model.filename
    if not path.is_file():
        return "partial" if part_path(model, folder).is_file() else "missing"
    sidecar = _read_sidecar(model, folder)
    if sidecar is None:
        return "unverified"
    if not model.matches(sidecar.sha256) or sidecar.size != path.stat().st_size:
        return "corrupt"
    return "downloaded"


def verify(model: ModelFile, dest_dir: os.PathLike | str | None = None) -> bool | None:
    """Hash the cached file: True if it matches the catalogue, False if not, None if absent.

    Records the result in the sidecar so ``file_state`` reflects it.
    """
    folder = pathlib.Path(dest_dir) if dest_dir is not None else models_dir()
    path = folder / model.filename
    if not path.is_file():
        return None
    size = path.stat().st_size
    digest = sha256_of_file(path)
    _write_sidecar(model, folder, digest, size)
    return model.matches(digest)


# --------------------------------------------------------------------------------------
# download


@contextlib.contextmanager
def _exclusive_lock(path: pathlib.Path):
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        return str(reason.strerror if isinstance(reason, OSError) and reason.strerror else reason)
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "timed out"
    return str(error) or type(error).__name__


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def _progress_bar(model: ModelFile, total: int | None, initial: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=model.name,
        file=sys.stderr,
        disable=not enabled,
        leave=True,
    )


def _hash_prefix(part: pathlib.Path, size: int) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with open(part, "rb") as handle:
        remaining = size
        while remaining > 0 and (block := handle.read(min(_CHUNK, remaining))):
            digest.update(block)
            remaining -= len(block)
    return digest


def _fetch_once(model: ModelFile, url: str, part: pathlib.Path, timeout: float, progress: bool) -> str:
    """One HTTP request continuing ``part``; returns the sha256 of the complete file.

    Raises ``_Interrupted`` when the body ended early (retry with Range) and
    ``_RestartFromZero`` when the reply cannot continue the existing bytes.
    """
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in _ALLOWED_SCHEMES:
        raise urllib.error.URLError(f"not an http(s) URL: {url}")
    limit = max_download_bytes(model)
    offset = part.stat().st_size if part.is_file() else 0
    if offset > limit:
        raise _RestartFromZero("the kept part is larger than the file can be")
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = _opener().open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            # Nothing left to send: the .part is complete (or longer than the file).
            error.close()
            return _hash_prefix(part, offset).hexdigest()
        raise
    with response:
        status = getattr(response, "status", None) or 200
        length_header = response.headers.get("Content-Length")
        body_length = int(length_header) if length_header and length_header.isdigit() else None
        if offset and status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != offset:
                raise _RestartFromZero("server answered a different byte range")
            start = offset
        else:
            start = 0  # server ignored Range (200): rewrite the file from the beginning
        total = start + body_length if body_length is not None else None
        if total is not None and total > limit:
            raise _too_large(model, f"the server announced {total} bytes,")

        digest = _hash_prefix(part, start) if start else hashlib.sha256()
        received = start
        with open(part, "r+b" if start else "wb") as handle, _progress_bar(model, total, start, progress) as bar:
            handle.seek(start)
            handle.truncate()
            try:
                while block := response.read(_CHUNK):
                    if received + len(block) > limit:
                        raise _too_large(model, "the server sent")
                    handle.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, socket.timeout, TimeoutError) as error:
                raise _Interrupted(f"connection lost after {received} bytes ({_describe(error)})") from error
        if total is not None and received < total:
            raise _Interrupted(f"connection closed after {received} of {total} bytes")
        return digest.hexdigest()


def _fetch_url(model: ModelFile, url: str, part: pathlib.Path, timeout: float, progress: bool, retries: int) -> str:
    """Fetch ``url`` into ``part`` until the file verifies (returns its sha256); raise otherwise."""
    restarted = False
    stalls = 0
    while True:
        resumed_from = part.stat().st_size if part.is_file() else 0
        try:
            digest = _fetch_once(model, url, part, timeout, progress)
        except _RestartFromZero:
            if restarted:
                raise
            part.unlink(missing_ok=True)
            restarted = True
            continue
        except _Interrupted:
            grown = (part.stat().st_size if part.is_file() else 0) > resumed_from
            stalls = 0 if grown else stalls + 1
            if stalls > retries:
                raise
            continue
        if model.matches(digest):
            return digest
        if resumed_from and not restarted:
            # The kept prefix may be stale or from a bad mirror: one clean attempt.
            part.unlink(missing_ok=True)
            restarted = True
            continue
        part.unlink(missing_ok=True)
        raise _WrongHash(f"sha256 mismatch (got {digest}, expected {model.sha256})")


def download(
    model: ModelFile,
    dest_dir: os.PathLike | str | None = None,
    *,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = 3,
) -> pathlib.Path:
    """Download ``model`` into ``dest_dir`` (default ``models_dir()``); return its path.

    A file already there that verifies (sidecar, or hashing when there is none) is kept.
    ``retries`` bounds consecutive resume attempts that bring no new bytes.
    Raises ``DownloadError`` naming every URL tried and why it failed.
    """
    folder = pathlib.Path(dest_dir) if dest_dir is not None else models_dir()
    final = folder / model.filename
    part = part_path(model, folder)
    if file_state(model, folder) == "downloaded":  # fast path: no lock (read-only folders)
        return final
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # mkdir's word for "a file is in the way"
        raise DownloadError(f"cannot create model folder {folder}: it is a file, not a folder") from None
    except OSError as error:
        raise DownloadError(f"cannot create model folder {folder}: {error.strerror or error}") from error
    with _exclusive_lock(folder / f".{model.filename}.lock"):
        state = file_state(model, folder)
        if state == "downloaded" or (state == "unverified" and verify(model, folder)):
            return final
        if not model.urls:
            raise DownloadError(f"model {model.name!r} has no download URLs")
        failures: list[str] = []
        for url in model.urls:
            try:
                digest = _fetch_url(model, url, part, timeout, progress, retries)
            except _TooLarge as error:
                part.unlink(missing_ok=True)
                failures.append(f"{url}: {error}")
                continue
            except (_Interrupted, _RestartFromZero, _WrongHash) as error:
                failures.append(f"{url}: {error}")
                continue
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
                failures.append(f"{url}: {_describe(error)}")
                continue
            size = part.stat().st_size
            sidecar_path(model, folder).unlink(missing_ok=True)
            os.replace(part, final)
            _write_sidecar(model, folder, digest, size)
            return final
        raise DownloadError(
            f"could not download model {model.name!r} into {folder}; tried "
            + "; ".join(failures)
        )
