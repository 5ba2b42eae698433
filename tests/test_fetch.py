"""`farm fetch SRC DEST` (farm.remote.fetch_outputs): it copies the output folder and never
reads outside SRC (symlinks out of a local folder) nor writes outside DEST (`..` keys)."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import fsspec
import pytest

from farm.remote import cmd_fetch, fetch_outputs

SECRET = b"root:SECRET-OUTSIDE-SOURCE\n"


def make_source(base: Path) -> Path:
    """An output folder with a frame, a symlink to a frame inside it, and symlinks out of it
    (to a file and to a folder), next to a secret folder."""
    outside = base / "outside"
    outside.mkdir()
    (outside / "passwords.txt").write_bytes(SECRET)
    source = base / "run"
    (source / "frames").mkdir(parents=True)
    (source / "frames" / "000000.png").write_bytes(b"frame 0")
    (source / "status.json").write_text('{"state": "succeeded"}')
    (source / "frames" / "000001.png").symlink_to(outside / "passwords.txt")
    (source / "frames" / "000002.png").symlink_to("000000.png")        # inside: copied
    (source / "secrets").symlink_to(outside, target_is_directory=True)
    (source / "leak.txt").symlink_to("../outside/passwords.txt")
    (source / ".lock").write_text("hidden")
    return source


def files_under(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("as_uri", [True, False], ids=["file-uri", "path"])
def test_symlinks_out_of_a_local_source_are_skipped(tmp_path, capsys, as_uri):
    source = make_source(tmp_path)
    target = tmp_path / "dest"
    skipped: list[str] = []
    count = fetch_outputs(source.as_uri() if as_uri else str(source), target, skipped)
    copied = files_under(target)
    assert copied == {"frames/000000.png": b"frame 0", "frames/000002.png": b"frame 0",
                      "status.json": b'{"state": "succeeded"}'}
    assert count == 3
    assert not any(SECRET in data for data in copied.values())
    assert sorted(skipped) == ["frames/000001.png", "leak.txt", "secrets"]
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "frames/000001.png: a symlink to outside" in err


def test_cmd_fetch_counts_the_skipped(tmp_path, capsys):
    source = make_source(tmp_path)
    assert cmd_fetch(argparse.Namespace(job=source.as_uri(), dir=str(tmp_path / "d"))) == 0
    out = capsys.readouterr().out
    assert "fetched 3 files" in out and "3 skipped" in out


def test_wrapped_local_filesystem_copies_no_symlinks(tmp_path):
    source = make_source(tmp_path)
    target = tmp_path / "dest"
    fetch_outputs(f"simplecache::{source.as_uri()}", target)
    copied = files_under(target)
    assert not any(SECRET in data for data in copied.values())
    assert copied["frames/000000.png"] == b"frame 0"


def test_keys_with_dot_dot_never_leave_dest(tmp_path, capsys):
    fs = fsspec.filesystem("memory")
    run = f"/fetch-{uuid.uuid4().hex}"
    try:
        fs.pipe(f"{run}/frames/000000.png", b"frame 0")
        fs.pipe(f"{run}/frames/../../escape-1.txt", b"escaped")        # stays a literal key
        fs.pipe(f"{run}/a/../../../escape-2.txt", b"escaped")
        fs.pipe(f"{run}/./x/../../escape-3.txt", b"escaped")
        target = tmp_path / "deep" / "dest"
        count = fetch_outputs(f"memory://{run}", target)
        assert count == 1
        assert files_under(target) == {"frames/000000.png": b"frame 0"}
        assert files_under(tmp_path) == {"deep/dest/frames/000000.png": b"frame 0"}
        assert capsys.readouterr().err.count("leaves the source folder") == 3
    finally:
        fs.rm(run, recursive=True)


def test_a_symlink_in_dest_is_not_written_through(tmp_path):
    source = make_source(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = tmp_path / "dest"
    target.mkdir()
    (target / "frames").symlink_to(elsewhere, target_is_directory=True)
    skipped: list[str] = []
    fetch_outputs(str(source), target, skipped)
    assert list(elsewhere.iterdir()) == []
    assert {"frames/000000.png", "frames/000002.png"} <= set(skipped)
    assert (target / "status.json").read_bytes() == b'{"state": "succeeded"}'
