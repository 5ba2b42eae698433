"""Outputs written directly to an fsspec URI (memory:// in this process, file:// through
the same fsspec code): the store in isolation, then real `farm submit` runs (in-process, so
the memory filesystem is shared) with the full layout, an interrupted run resumed against
the URI with identical pixels, `farm fetch` and `farm preview` of a URI."""

from __future__ import annotations

import json
import os
import uuid

import fsspec
import numpy as np
import pytest

import farm.remote
import farm.submit
from farm.cli import main
from farm.output import ManifestEntry, OutputFolder, read_png, sha256_hex
from farm.storage import (FsspecStore, OutsideOutput, OutputLocationError, check_uri, confined_key, is_uri,
                           join_location)
from tests.conftest import TINY_SCENE

MEMORY = fsspec.filesystem("memory")


@pytest.fixture
def memory_url():
    """A fresh memory:// location, removed afterwards."""
    name = f"farm-test-{uuid.uuid4().hex[:8]}"
    yield f"memory://{name}/run"
    if MEMORY.exists(f"/{name}"):
        MEMORY.rm(f"/{name}", recursive=True)


def entry(index: int, data: bytes, settings_hash: str = "h") -> ManifestEntry:
    return ManifestEntry(index=index, kind="frame", file=f"frames/{index:06d}.png", sha256=sha256_hex(data),
                         settings_hash=settings_hash, seed=index)


def pixels(value: int) -> np.ndarray:
    return np.full((8, 8, 3), value % 256, np.uint8)


# --------------------------------------------------------------------------- the store alone


def test_uris_are_told_from_paths():
    assert is_uri("s3://bucket/run") and is_uri("memory://x") and is_uri("simplecache::s3://b/r")
    assert not is_uri("renders/x") and not is_uri("/tmp/a://b") and not is_uri("C:\\renders") and not is_uri(None)


@pytest.mark.parametrize("relative", ["../x", "a/../../x", "/etc/passwd", "s3://other/x", ".."])
def test_paths_escaping_the_root_are_refused(relative, memory_url):
    folder = OutputFolder(memory_url)
    with pytest.raises(OutsideOutput, match="outside the output location"):
        folder.write_text(relative, "x")
    with pytest.raises(OutsideOutput):
        folder.store.read(relative)
    assert not MEMORY.find(memory_url.removeprefix("memory:/").rsplit("/", 1)[0])  # nothing written anywhere


def test_a_scene_name_cannot_climb_out_of_a_multi_scene_uri(memory_url, tmp_path, capsys, monkeypatch):
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "bad.yaml").write_text(TINY_SCENE.replace("name: t", "name: ../escaped"))
    (tmp_path / "good.yaml").write_text(TINY_SCENE)
    url = f"file://{tmp_path}/out/run"
    assert main(["submit", str(tmp_path / "bad.yaml"), str(tmp_path / "good.yaml"), "--out", url]) == 2
    err = capsys.readouterr().err  # refused with the scene, before anything is written
    assert err == f"{tmp_path / 'bad.yaml'}:1: name: '../escaped' must be a folder name, not a path (no / or \\)\n"
    assert not (tmp_path / "out").exists()
    # the location itself still confines whatever is joined to it
    with pytest.raises(OutsideOutput, match="would be written outside the output location"):
        join_location(memory_url, "../escaped")


def test_paths_inside_the_root_are_allowed():
    assert confined_key("/b/run", "frames/../images/000001.png") == "/b/run/images/000001.png"
    assert confined_key("/b/run", "") == "/b/run"


@pytest.mark.parametrize("url, says", [
    ("nosuchproto://bucket/run", "unknown storage protocol 'nosuchproto://'"),
    ("https://example.com/run", "https:// locations cannot be written to"),
    ("memory://", "no bucket or folder after 'memory://'"),
    ("file:///", "no bucket or folder after 'file://'"),
])
def test_bad_uris_are_one_clear_error(url, says):
    with pytest.raises(OutputLocationError, match=says.replace("(", r"\(").replace(")", r"\)")):
        OutputFolder(url)


def test_a_missing_backend_is_named_but_only_checked_where_it_is_needed(monkeypatch):
    from fsspec.registry import known_implementations

    monkeypatch.setitem(known_implementations, "farmtest",
                        {"class": "no_such_package_xyz.FileSystem", "err": "Install no_such_package_xyz"})
    with pytest.raises(OutputLocationError, match=r"the farmtest:// backend is not installed \(Install no_such_package"):
        check_uri("farmtest://bucket/run")
    check_uri("farmtest://bucket/run", need_backend=False)  # a cluster job: the cluster needs it, not we


def test_each_finished_frame_is_one_small_object_and_reading_merges_them(memory_url, monkeypatch):
    folder = OutputFolder(memory_url)
    writes = []
    real_pipe = folder.store.fs.pipe_file

    def counting_pipe(key, data, **kwargs):
        writes.append((key, len(data)))
        return real_pipe(key, data, **kwargs)

    monkeypatch.setattr(folder.store.fs, "pipe_file", counting_pipe)  # fsspec shares the instance: restored after
    data = {i: folder.write_frame("frame", i, pixels(i))[1] for i in range(300)}
    writes.clear()
    for i in range(300):
        folder.append_manifest(entry(i, folder.store.read(f"frames/{i:06d}.png")))
    # one PUT per frame of one line, never a rewrite of what came before (not O(n^2))
    assert [key.rsplit("/", 2)[1:] for key, _ in writes] == [["manifest.d", f"{i:06d}.json"] for i in range(300)]
    assert max(size for _, size in writes) < 400
    assert not folder.store.fs.exists(folder.store.key("manifest.jsonl"))
    fresh = OutputFolder(memory_url)  # another reader (the UI, farm preview) sees the same
    assert [e.index for e in fresh.manifest()] == list(range(300))
    assert set(fresh.finished({i: "h" for i in range(300)})) == set(range(300))
    assert all(e.sha256 == data[e.index] for e in fresh.manifest())
    writes.clear()
    folder.fold_manifest()
    lines = folder.store.read("manifest.jsonl").decode().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(300))
    assert folder.store.list("manifest.d") == [] and len(writes) == 1
    assert [e.index for e in OutputFolder(memory_url).manifest()] == list(range(300))


def test_resume_reading_verifies_hashes_and_ignores_torn_objects(memory_url):
    folder = OutputFolder(memory_url)
    for i in range(4):
        relative, digest = folder.write_frame("frame", i, pixels(10 * i))
        folder.append_manifest(ManifestEntry(i, "frame", relative, digest, "h", i))
    folder.store.write("frames/000001.png", b"\x89PNG half")  # damaged after its object was written
    folder.store.write("manifest.d/000002.json", b'{"index": 2, "kind": "fr')  # torn object
    finished = OutputFolder(memory_url).finished({0: "h", 1: "h", 2: "h", 3: "other settings"})
    assert sorted(finished) == [0]
    assert np.array_equal(folder.load_frame(finished[0]), pixels(0))
    folder.compact_manifest(finished)  # on resume: verified frames only, objects folded in
    assert folder.store.list("manifest.d") == []
    assert [e.index for e in OutputFolder(memory_url).manifest()] == [0]


def test_a_crash_between_rewriting_and_removing_loses_nothing(memory_url, monkeypatch):
    folder = OutputFolder(memory_url)
    for i in range(3):
        relative, digest = folder.write_frame("frame", i, pixels(i))
        folder.append_manifest(ManifestEntry(i, "frame", relative, digest, "h", i))

    def crash(relatives):
        raise OSError("connection lost")

    monkeypatch.setattr(folder.store, "remove", crash)
    with pytest.raises(OSError):
        folder.fold_manifest()
    reader = OutputFolder(memory_url)
    assert len(reader.manifest()) == 6  # each frame twice, saying the same
    assert sorted(reader.finished({0: "h", 1: "h", 2: "h"})) == [0, 1, 2]
    reader.fold_manifest()
    assert reader.store.list("manifest.d") == [] and len(reader.manifest()) == 3


def test_whole_files_local_copies_and_uploads(memory_url, tmp_path):
    folder = OutputFolder(memory_url)
    folder.write_json("status.json", {"state": "running"})
    assert folder.read_json("status.json") == {"state": "running"}
    assert folder.read_json("missing.json") is None and folder.read_text("missing.txt") is None
    folder.write_frame("image", 3, pixels(7))
    with folder.local_files(["images/000003.png"]) as paths:
        assert paths[0].is_file() and np.array_equal(read_png(paths[0]), pixels(7))
    assert not paths[0].exists()  # temporary copies are removed
    with pytest.raises(RuntimeError):
        with folder.local_target("video.mp4") as target:
            target.write_bytes(b"half")
            raise RuntimeError("ffmpeg failed")
    assert folder.read_text("video.mp4") is None  # nothing uploaded from a failed block
    with folder.local_target("video.mp4") as target:
        target.write_bytes(b"whole video")
    assert folder.store.read("video.mp4") == b"whole video"
    folder.write_depth(3, np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
    assert folder.store.read("depth/000003.png").startswith(b"\x89PNG")
    assert folder.url("images") == f"{memory_url}/images"
    with pytest.raises(OutputLocationError, match="is not on this machine's disk"):
        folder.path("images")
    scratch = folder.scratch(".video-frames")
    assert not str(scratch).startswith(memory_url) and scratch.name == ".video-frames"
    assert farm.submit.recorded_seed(folder) is None
    folder.write_text("scene.yaml", "name: x\nseed: 77\n")
    assert farm.submit.recorded_seed(memory_url) == 77 and farm.submit.recorded_seed(folder) == 77


def test_file_uris_go_through_fsspec_and_make_their_folders(tmp_path):
    folder = OutputFolder(f"file://{tmp_path}/out")
    assert isinstance(folder.store, FsspecStore)
    relative, digest = folder.write_frame("frame", 0, pixels(1))
    folder.append_manifest(ManifestEntry(0, "frame", relative, digest, "h", 0))
    assert (tmp_path / "out" / "manifest.d" / "000000.json").is_file()
    assert sha256_hex((tmp_path / "out" / "frames" / "000000.png").read_bytes()) == digest
    # a local reader of the same folder (e.g. one fetched mid-run) merges manifest.d/ too
    assert [e.index for e in OutputFolder(tmp_path / "out").manifest()] == [0]


def test_a_file_uri_is_guarded_as_a_folder_is(tmp_path, capsys):
    """file:// goes through fsspec, but its folder is on this disk: links out of it are not
    written through, a folder of the user's files is refused, and a submit claims it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("user data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "status.json").symlink_to(victim)
    folder = OutputFolder(f"file://{out}")
    assert folder.disk_root == out.resolve()
    with pytest.raises(OutsideOutput, match="outside the output folder"):
        folder.write_text("status.json", "{}")
    assert victim.read_text() == "user data"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "scene.yaml").write_text("my own scene")
    scene = tmp_path / "scene.yaml"
    scene.write_text(TINY_SCENE)
    assert main(["submit", str(scene), "--out", f"file://{mine}"]) == 2
    assert "holds files that are not a Disco Farm render" in capsys.readouterr().err
    assert (mine / "scene.yaml").read_text() == "my own scene"
    claimed = OutputFolder(f"file://{tmp_path}/claimed")
    claimed.claim()
    try:
        assert (tmp_path / "claimed" / ".lock").read_text().strip() == str(os.getpid())
    finally:
        claimed.release()
    assert OutputFolder("memory://bucket/x").disk_root is None
    assert OutputFolder(f"simplecache::file://{tmp_path}/cached").disk_root == (tmp_path / "cached").resolve()


def test_a_local_folder_still_appends_to_manifest_jsonl(tmp_path):
    folder = OutputFolder(tmp_path)
    relative, digest = folder.write_frame("frame", 0, pixels(1))
    folder.append_manifest(ManifestEntry(0, "frame", relative, digest, "h", 0))
    folder.fold_manifest()
    assert not (tmp_path / "manifest.d").exists()
    assert len((tmp_path / "manifest.jsonl").read_text().splitlines()) == 1


def test_a_cluster_job_gets_the_uri_untouched(monkeypatch, tmp_path, capsys):
    """--address: the URI goes into the job's command line and metadata as given (its
    backend is needed on the cluster, not here)."""
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    submitted = {}

    class Jobs:
        def submit_job(self, **kwargs):
            submitted.update(kwargs)
            return "job-1"

    monkeypatch.setattr(farm.remote, "client", lambda address: Jobs())
    scene = tmp_path / "s.yaml"
    scene.write_text(TINY_SCENE)
    url = "farmtest-missing-backend-is-fine://bucket/run"
    from fsspec.registry import known_implementations

    monkeypatch.setitem(known_implementations, "farmtest-missing-backend-is-fine",
                        {"class": "no_such_package_xyz.FileSystem", "err": "Install no_such_package_xyz"})
    assert main(["submit", str(scene), "--out", url, "--address", "http://127.0.0.1:9", "--detach"]) == 0
    assert f"--out {url} " in submitted["entrypoint"] and submitted["metadata"]["out"] == url
    assert f"outputs (on the cluster): {url}" in capsys.readouterr().out
    assert main(["submit", str(scene), "--out", url]) == 2  # locally the backend is needed
    assert "--out 'farmtest-missing-backend-is-fine://bucket/run': the farmtest-missing-backend-is-fine:// " \
           "backend is not installed" in capsys.readouterr().err


# --------------------------------------------------------------------------- real renders

BASE = "\n".join(l for l in TINY_SCENE.splitlines() if not l.startswith(("steps", "skip_steps"))) + "\n"
FAST = BASE + ('steps: 6\nskip_steps: 0\ncutn_batches: 1\ncut_overview: "[2]*1000"\ncut_innercut: "[1]*1000"\n'
               'init_scale: 0\nframes_scale: 0\ndisplay_rate: 2\n')
STILLS = FAST.replace("name: t", "name: stills") + "n_batches: 3\n"
ANIM = FAST.replace("name: t", "name: anim") + ('animation_mode: 2D\nmax_frames: 4\nframes_skip_steps: "50%"\n'
                                                'zoom: "0:(1.1)"\ntranslation_x: "0:(3)"\n')


def submit(*argv: str) -> int:
    return main(["submit", *argv, "--no-dashboard", "--actors", "1"])


def local_render_env(patch: pytest.MonkeyPatch) -> None:
    """A local embedded Ray, whatever the environment says (OMP_WAIT_POLICY comes from
    tests/conftest.py)."""
    patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        patch.delenv(name, raising=False)


def store_files(url: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url)
    return {os.path.relpath(path, root): fs.cat_file(path) for path in fs.find(root)}


def frame_hashes(location) -> dict[int, str]:
    return {e.index: e.sha256 for e in OutputFolder(location).manifest()}


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenes")
    (folder / "stills.yaml").write_text(STILLS)
    (folder / "anim.yaml").write_text(ANIM)
    return folder


@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory):
    """One submit of both scenes (sharing the actor) to a file:// URI (through fsspec, as
    an object store: whole objects, manifest.d/; a local submit refuses memory://, which
    ends with the command): <url>/stills, <url>/anim."""
    url = f"file://{tmp_path_factory.mktemp('uri')}/reference"
    with pytest.MonkeyPatch.context() as patch:
        local_render_env(patch)
        assert submit(str(scenes / "stills.yaml"), str(scenes / "anim.yaml"), "--out", url) == 0
        yield url


def test_stills_and_an_animation_write_the_whole_layout_to_the_uri(reference, scenes, tmp_path, capsys):
    stills, anim = store_files(f"{reference}/stills"), store_files(f"{reference}/anim")
    assert {"scene.yaml", "plan.json", "manifest.jsonl", "status.json", "contact_sheet.png"} <= set(stills)
    assert {f"images/{i:06d}.png" for i in range(3)} <= set(stills)
    assert {"scene.yaml", "plan.json", "manifest.jsonl", "status.json", "video.mp4"} <= set(anim)
    assert {f"frames/{i:06d}.png" for i in range(4)} <= set(anim)
    assert any(name.startswith("previews/") for name in anim)
    assert not [name for name in [*stills, *anim] if name.startswith("manifest.d/")]  # folded at the end
    for files, count in ((stills, 3), (anim, 4)):
        lines = [json.loads(line) for line in files["manifest.jsonl"].decode().splitlines()]
        assert [line["index"] for line in lines] == list(range(count))
        assert all(sha256_hex(files[line["file"]]) == line["sha256"] for line in lines)
        assert json.loads(files["status.json"])["state"] == "succeeded"
    assert json.loads(anim["status.json"])["video"] == "video.mp4"
    # fetch (no cluster needed for a URI) copies exactly the same files
    assert main(["fetch", f"{reference}/anim", str(tmp_path / "fetched")]) == 0
    fetched = {str(p.relative_to(tmp_path / "fetched")): p.read_bytes()
               for p in (tmp_path / "fetched").rglob("*") if p.is_file()}
    assert ".lock" in anim  # a file:// folder is claimed as a path is; fetch leaves hidden names out
    assert fetched == {name: data for name, data in anim.items() if name != ".lock"}
    from animation.video import probe_video

    assert probe_video(tmp_path / "fetched" / "video.mp4").frames == 4
    plan = json.loads(anim["plan.json"])
    assert len(OutputFolder(tmp_path / "fetched").finished({f["index"]: f["settings_hash"] for f in plan["frames"]})) == 4
    # farm preview of a URI: frames downloaded for ffmpeg, preview.mp4 uploaded
    capsys.readouterr()
    assert main(["preview", f"{reference}/anim"]) == 0
    assert f"preview (4 of 4 frames): {reference}/anim/preview.mp4" in capsys.readouterr().out
    (tmp_path / "preview.mp4").write_bytes(OutputFolder(f"{reference}/anim").store.read("preview.mp4"))
    assert probe_video(tmp_path / "preview.mp4").frames == 4


def test_an_interrupted_run_resumes_against_the_uri_with_identical_pixels(reference, scenes, tmp_path, monkeypatch,
                                                                          capsys):
    local_render_env(monkeypatch)
    url = f"file://{tmp_path}/resumed"
    out = tmp_path / "resumed"
    real_bars = farm.submit._Bars.__call__

    def interrupt_after_two_frames(self, session):
        real_bars(self, session)
        if len(session.completed) >= 2:
            raise KeyboardInterrupt  # the driver stops as on Ctrl-C: in-flight work cancelled

    with monkeypatch.context() as patch:
        patch.setattr(farm.submit._Bars, "__call__", interrupt_after_two_frames)
        assert submit(str(scenes / "anim.yaml"), "--out", url) == 130
    # a cancelled job folds its finished frames' objects into manifest.jsonl, as an ended job does
    assert [json.loads(line)["index"] for line in (out / "manifest.jsonl").read_text().splitlines()] == [0, 1]
    assert not (out / "manifest.d").exists()
    assert json.loads((out / "status.json").read_text())["state"] == "cancelled"
    assert not (out / "video.mp4").exists()
    # a partial run fetched mid-way reads the same
    assert main(["fetch", url, str(tmp_path / "partial")]) == 0
    assert sorted(frame_hashes(tmp_path / "partial")) == [0, 1]

    damaged = out / "frames" / "000001.png"
    damaged.write_bytes(damaged.read_bytes()[:100])
    capsys.readouterr()
    assert submit(str(scenes / "anim.yaml"), "--out", url) == 0
    _, err = capsys.readouterr()
    assert "resuming: 1 finished frames verified and kept" in err
    assert frame_hashes(url) == frame_hashes(f"{reference}/anim")
    assert len(frame_hashes(url)) == 4
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2, 3]  # no duplicates, no gaps
    assert not (out / "manifest.d").exists()  # folded into manifest.jsonl, the emptied folder removed
    assert (out / "video.mp4").stat().st_size > 0
    for i in range(4):
        reference_png = OutputFolder(f"{reference}/anim").store.read(f"frames/{i:06d}.png")
        assert np.array_equal(read_png((out / "frames" / f"{i:06d}.png").read_bytes()), read_png(reference_png))

