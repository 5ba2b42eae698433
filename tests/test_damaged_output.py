"""A damaged or unusable output folder: odd manifest lines are skipped (never a crash, never
a read outside the folder), a damaged plan.json is one clear line, a full disk fails the
render once with the folder named (status.json says failed), and a file where frames/
belongs is found before anything renders. No Ray, no rendering: the folder is built with
OutputFolder's own methods and the driver's frame handling runs on a bare session."""

import errno
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from farm.output import ManifestEntry, OutputDamaged, OutputFolder, OutputWriteError, sha256_hex
from farm.plan import plan_record, resolve
from farm.scene import parse_scene
from tests.conftest import TINY_SCENE

STILLS = TINY_SCENE + "n_batches: 3\n"


def pixels(value: int) -> np.ndarray:
    return np.full((8, 8, 3), value, dtype=np.uint8)


def finished_folder(root: Path, count: int = 3, settings: str = "h") -> OutputFolder:
    """A folder with `count` finished frames written the way the driver writes them."""
    folder = OutputFolder(root)
    folder.prepare()
    for index in range(count):
        relative, digest = folder.write_frame("frame", index, pixels(10 * index))
        folder.append_manifest(ManifestEntry(index, "frame", relative, digest, settings, index))
    return folder


def add_lines(root: Path, *records) -> None:
    with open(root / "manifest.jsonl", "a") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record)) + "\n")


GOOD = {"index": 0, "kind": "frame", "file": "frames/000000.png", "sha256": "0" * 64, "settings_hash": "h",
        "seed": 1}


# ------------------------------------------------------------------ 1. odd manifest lines


@pytest.mark.parametrize("change", [
    {"index": [0]}, {"index": "0"}, {"index": True}, {"index": -1}, {"index": 1.0}, {"file": 5}, {"file": None},
    {"sha256": 5}, {"sha256": "x"}, {"settings_hash": ["h"]}, {"seed": "1"}, {"kind": "movie"}, {"kind": ["frame"]},
    {"actor": 3}, {"seconds": "slow"}, {"finished_at": {}}, {"chain_sha256": "x"}, {"chain_sha256": 5},
], ids=repr)
def test_a_manifest_line_with_a_wrong_type_is_skipped(tmp_path, change):
    folder = finished_folder(tmp_path)
    add_lines(tmp_path, {**GOOD, **change})
    assert [e.index for e in folder.manifest()] == [0, 1, 2]
    assert sorted(folder.finished({0: "h", 1: "h", 2: "h"})) == [0, 1, 2]


def test_lines_missing_keys_and_lines_that_are_no_record_are_skipped_and_compaction_drops_them(tmp_path):
    folder = finished_folder(tmp_path)
    add_lines(tmp_path, *({k: v for k, v in GOOD.items() if k != key} for key in GOOD),
              "[1, 2]", "5", "null", '"frames/000000.png"', "[" * 100000 + "]" * 100000,
              '{"index": 1' + "0" * 5000 + "}", '{"index": 0, "kind": "frame"')  # torn
    add_lines(tmp_path, {**GOOD, "unknown": "ignored", "sha256": sha256_hex((tmp_path / GOOD["file"]).read_bytes())})
    entries = folder.manifest()
    assert [e.index for e in entries] == [0, 1, 2, 0]
    finished = folder.finished({0: "h", 1: "h", 2: "h"})
    assert sorted(finished) == [0, 1, 2]
    folder.compact_manifest(finished)
    assert [json.loads(line)["index"] for line in (tmp_path / "manifest.jsonl").read_text().splitlines()] == [0, 1, 2]


def test_the_manifest_line_after_a_torn_one_is_not_glued_to_it(tmp_path):
    folder = finished_folder(tmp_path, count=1)
    with open(tmp_path / "manifest.jsonl", "a") as handle:
        handle.write('{"index": 5, "kind": "fra')  # a full disk or a crash mid-append
    relative, digest = folder.write_frame("frame", 1, pixels(99))
    folder.append_manifest(ManifestEntry(1, "frame", relative, digest, "h", 1))
    assert sorted(OutputFolder(tmp_path).finished({0: "h", 1: "h"})) == [0, 1]


# ------------------------------------------------------------------ 2. lines naming files outside the folder


@pytest.mark.parametrize("file", ["../../../etc/passwd", "/etc/passwd", "frames/../../outside.png",
                                  "frames/../plan.json", "file:///etc/passwd", "frames\\000000.png",
                                  "frames/000001.png", "images/000000.png"])
def test_a_line_naming_another_file_than_its_frames_own_is_skipped_and_resume_still_works(tmp_path, file):
    (tmp_path / "outside.png").write_bytes(b"not yours")
    folder = finished_folder(tmp_path / "out")
    passwd = Path("/etc/passwd")
    digest = sha256_hex(passwd.read_bytes()) if passwd.exists() else "0" * 64
    add_lines(tmp_path / "out", {**GOOD, "file": file, "sha256": digest})
    finished = folder.finished({0: "h", 1: "h", 2: "h"})
    assert sorted(finished) == [0, 1, 2] and finished[0].file == "frames/000000.png"
    folder.compact_manifest(finished)  # what a re-submit does: no "would be written outside" error
    assert len(folder.manifest()) == 3


def test_a_frames_link_out_of_the_folder_is_never_read(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    finished_folder(elsewhere)
    out = tmp_path / "out"
    out.mkdir()
    (out / "frames").symlink_to(elsewhere / "frames")
    (out / "manifest.jsonl").write_text((elsewhere / "manifest.jsonl").read_text())
    folder = OutputFolder(out)
    assert folder.finished({0: "h", 1: "h", 2: "h"}) == {}
    with pytest.raises(OutputDamaged, match=r"/out/frames is a link to .*elsewhere/frames, outside the output folder"):
        folder.prepare()


def test_frames_that_cannot_be_read_are_simply_not_finished(tmp_path):
    folder = finished_folder(tmp_path)
    (tmp_path / "frames" / "000001.png").unlink()
    (tmp_path / "frames" / "000001.png").mkdir()
    assert sorted(folder.finished({0: "h", 1: "h", 2: "h"})) == [0, 2]
    for path in (tmp_path / "frames").iterdir():
        path.rmdir() if path.is_dir() else path.unlink()
    (tmp_path / "frames").rmdir()
    (tmp_path / "frames").write_bytes(b"a file")  # reading frames/000000.png: NotADirectoryError
    assert folder.finished({0: "h", 1: "h", 2: "h"}) == {}


# ------------------------------------------------------------------ 3. a damaged plan.json


def test_read_plan_returns_a_good_plan_record(tmp_path):
    folder = OutputFolder(tmp_path)
    record = plan_record(resolve(parse_scene(STILLS)))
    folder.write_json("plan.json", record)
    assert folder.read_plan()["frames"] == json.loads(json.dumps(record, default=str))["frames"]
    assert {f["index"]: f["settings_hash"] for f in folder.read_plan()["frames"]} == {
        f["index"]: f["settings_hash"] for f in record["frames"]}


@pytest.mark.parametrize("text, reason", [
    ('{"frames": 5}', "'frames' is not a list"),
    ('{"name": "t"}', "'frames' is missing"),
    ('{"frames": []}', "'frames' is empty"),
    ('{"frames": [{"index": 0}]}', "frames[0] has no 'settings_hash'"),
    ('{"frames": [{"index": 0, "settings_hash": 7}]}', "frames[0] has no 'settings_hash'"),
    ('{"frames": [{"settings_hash": "h"}]}', "frames[0] has no whole-number 'index'"),
    ('{"frames": [{"index": [0], "settings_hash": "h"}]}', "frames[0] has no whole-number 'index'"),
    ('{"frames": [{"index": true, "settings_hash": "h"}]}', "frames[0] has no whole-number 'index'"),
    ('{"frames": [5]}', "frames[0] is not an object"),
    ('{"frames": [{"index": 0, "settings_hash": "h"}, {"index": 0, "settings_hash": "h"}]}', "frame 0 appears twice"),
    ('{"frames": [{"index": 0, "settings_hash": "h"}], "animation": 3}', "'animation' is not an object"),
    ('{"frames": [{"index": 0, "settings_hash": "h"}], "animation": {"fps": 0}}', "'animation.fps' is not a positive number"),
    ('{"frames": [{"index": 0, "settings_hash": "h"}], "animation": {"fps": "x"}}', "'animation.fps' is not a positive number"),
    ("[1, 2]", "not a JSON object"),
    ('{"frames": [', "not valid JSON"),
    ("[" * 100000, "not valid JSON"),
    (b"\xff\xfe{}", "not UTF-8 text"),
])
def test_a_damaged_plan_json_is_one_line_naming_it(tmp_path, text, reason):
    data = text if isinstance(text, bytes) else text.encode()
    (tmp_path / "plan.json").write_bytes(data)
    with pytest.raises(OutputDamaged) as caught:
        OutputFolder(tmp_path).read_plan()
    message = str(caught.value)
    assert message == f"{tmp_path}/plan.json is damaged ({reason}): submit the scene again to rewrite it"
    assert isinstance(caught.value, ValueError) and "\n" not in message  # the CLI prints it as one line, exit 2


@pytest.mark.parametrize("make", [lambda p: None, lambda p: (p / "plan.json").mkdir(),
                                  lambda p: p.rmdir() or p.write_text("a file, not a folder")],
                         ids=["missing", "a folder", "OUT a file"])
def test_no_plan_json_says_so(tmp_path, make):
    root = tmp_path / "out"
    root.mkdir()
    make(root)
    with pytest.raises(OutputDamaged, match=r"/out: no plan.json here \(not a render output folder\)$"):
        OutputFolder(root).read_plan()


@pytest.mark.parametrize("text", ['{"frames": 5}', '{"frames": [{"index": 0}]}', '{"frames": [{"index": 0, '
                                  '"settings_hash": "h"}], "animation": null}'])
def test_farm_preview_on_a_damaged_plan_json(tmp_path, capsys, text):
    import farm.cli

    (tmp_path / "plan.json").write_text(text)
    assert farm.cli.main(["preview", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"farm: error: {tmp_path}/plan.json is damaged (") and err.count("\n") == 1


def test_preview_reads_past_odd_manifest_lines(tmp_path, capsys):
    """`farm preview` on a folder whose manifest has the audit's odd lines (no traceback)."""
    from farm.cli import main

    plan = resolve(parse_scene(STILLS))
    folder = OutputFolder(tmp_path)
    folder.write_json("plan.json", plan_record(plan))
    for frame in plan.frames:
        relative, digest = folder.write_frame("frame", frame.index, pixels(40 * frame.index))
        folder.append_manifest(ManifestEntry(frame.index, "frame", relative, digest, frame.settings_hash, 1))
    add_lines(tmp_path, {**GOOD, "index": [0], "file": "x", "sha256": "x", "settings_hash": "y"},
              {**GOOD, "file": 5, "settings_hash": plan.frames[0].settings_hash},
              {**GOOD, "file": "../../../etc/passwd", "settings_hash": plan.frames[0].settings_hash})
    assert main(["preview", str(tmp_path)]) == 0, capsys.readouterr().err
    assert "preview (3 of 3 frames)" in capsys.readouterr().out


# ------------------------------------------------------------------ 5. a file where frames/ belongs


@pytest.mark.parametrize("name, problem", [("frames", "is a file, not a folder"), ("images", "is a file, not a folder"),
                                           ("previews", "is a file, not a folder"),
                                           ("manifest.jsonl", "is a folder, not a file"),
                                           ("status.json", "is a folder, not a file")])
def test_a_file_where_a_folder_belongs_is_found_before_rendering(tmp_path, name, problem):
    (tmp_path / name).mkdir() if problem.startswith("is a folder") else (tmp_path / name).write_text("x")
    with pytest.raises(OutputDamaged) as caught:
        OutputFolder(tmp_path).prepare()
    assert str(caught.value) == (f"{tmp_path / name} {problem}: move it away (or choose another --out), "
                                 "then submit again")


@pytest.mark.parametrize("name", ["frames/000006.png", "images/000000.png", "manifest.d/000002.json"])
def test_a_folder_where_a_frames_file_goes_is_found_before_rendering(tmp_path, name):
    """Found only when the frame was written, after rendering it, on every resume alike."""
    (tmp_path / name).mkdir(parents=True)
    (tmp_path / "frames" / "000001.png").parent.mkdir(exist_ok=True)
    (tmp_path / "frames" / "000001.png").write_bytes(b"a file, as it should be")
    with pytest.raises(OutputDamaged) as caught:
        OutputFolder(tmp_path).prepare()
    assert str(caught.value) == (f"{tmp_path / name} is a folder, not a file: move it away (or choose another "
                                 "--out), then submit again")


def test_a_broken_link_where_frames_belongs_is_found_too(tmp_path):
    (tmp_path / "frames").symlink_to(tmp_path / "gone")
    with pytest.raises(OutputDamaged, match="frames is a broken link, not a folder"):
        OutputFolder(tmp_path).prepare()


def test_an_output_folder_that_is_a_file(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(OutputDamaged, match=r"/out is a file, not a folder$"):
        OutputFolder(tmp_path / "out").prepare()


def test_submit_stops_before_ray_when_frames_is_a_file(tmp_path, capsys, monkeypatch):
    from farm.cli import main

    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "scene.yaml").write_text(STILLS)
    out = tmp_path / "out"
    out.mkdir()
    (out / "images").write_text("x")
    assert main(["submit", str(tmp_path / "scene.yaml"), "--out", str(out), "--no-dashboard"]) == 2
    assert capsys.readouterr().err == (f"farm: error: {out}/images is a file, not a folder: move it away "
                                       "(or choose another --out), then submit again\n")
    assert sorted(p.name for p in out.iterdir()) == ["images"]  # nothing written, nothing rendered


# ------------------------------------------------------------------ 4 and 5 in the driver (a bare session, no Ray)


@pytest.fixture
def bare_session(monkeypatch):
    """A RenderSession without Ray: frames 'rendered' by the test go through the driver's
    own result handling (_collect: write, manifest line, retries, failures, status.json)."""
    import farm.driver as driver
    from farm.scheduler import Scheduler

    results = {}
    monkeypatch.setattr(driver.ray, "get", lambda ref, **_: results.pop(ref))
    counter = SimpleNamespace(inc=lambda *a, **k: None, set=lambda *a, **k: None)
    monkeypatch.setattr(driver, "farm_metrics", lambda: {name: counter for name in
                                                         ("frames_done", "frames_failed", "queue_depth", "busy_seconds")})
    session = driver.RenderSession.__new__(driver.RenderSession)
    session.__dict__.update(
        stall_seconds=600.0, poll_seconds=0.01, on_update=None, scheduler=Scheduler(), jobs={}, slots={}, inflight={},
        _write_failures=0, progress={}, _pixels={}, _on_disk={}, _model_specs={}, completed=[], actor_nodes={},
        actor_pids={},
        _board=SimpleNamespace(clear=SimpleNamespace(remote=lambda *a: None)),
        source=SimpleNamespace(ended=lambda slot, crashed=False: None))

    def render_next(job_id: str) -> bool:
        """Hand the next ready frame to a pretend actor and collect its result; False if none."""
        job = session.jobs[job_id]
        task = session.scheduler.next_for("actor-0", job.plan.frames[0].render.models.key)
        if task is None:
            return False
        ref = object()
        session.inflight[ref] = (task, "actor-0", 0.0)
        results[ref] = (pixels(task.frame.index), {"actor": "actor-0", "node": "n", "seconds": 0.1})
        session._collect(ref)
        return True

    session.render_next = render_next
    return session


def add_job(session, root: Path):
    from farm.driver import RenderJob

    plan = resolve(parse_scene(STILLS))
    return session.add(RenderJob("t", plan, OutputFolder(root)))


def full_disk_for(monkeypatch, *names):
    """os.replace into these files (or into these folders) fails as on a full disk: no
    room for the temporary copy, nothing half-written. Returns the names tried, in order."""
    import farm.storage

    real_replace = farm.storage.os.replace
    attempts = []

    def replace(source, target):
        if Path(target).name in names or Path(target).parent.name in names:
            attempts.append(Path(target).name)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(farm.storage.os, "replace", replace)
    return attempts


def test_a_full_disk_fails_the_render_once_naming_the_folder_and_status_says_failed(tmp_path, bare_session,
                                                                                    monkeypatch):
    job = add_job(bare_session, tmp_path)
    assert bare_session.render_next("t")  # image 0 is written
    attempts = full_disk_for(monkeypatch, "images", "status.json")  # no room for new files from here on
    while bare_session.render_next("t"):
        pass
    state = bare_session.scheduler.jobs["t"]
    frames = [name for name in attempts if name.endswith(".png")]
    assert len(frames) == 2  # one more try (a full disk can be a passing peak), then the job failed
    assert state.state == "failed"
    assert state.error == (f"no room to write images/{frames[-1]} in the output folder {tmp_path} "
                           "(No space left on device): free some space")
    assert bare_session._finish(job) == "failed"
    status = json.loads((tmp_path / "status.json").read_text())  # rewritten in place: no room for a new file
    assert status["state"] == "failed" and status["error"] == state.error
    assert [e["message"] for e in status["errors"]] == [
        f"could not write image-{int(name[:6]):06d}: No space left on device" for name in frames]
    assert sorted(OutputFolder(tmp_path).finished({f.index: f.settings_hash for f in job.plan.frames})) == [0]


def test_status_json_that_cannot_be_written_at_all_does_not_stop_the_render(tmp_path, bare_session, monkeypatch):
    import farm.storage

    real_replace = farm.storage.os.replace
    job = add_job(bare_session, tmp_path)
    (tmp_path / "status.json").unlink()  # nothing to overwrite in place either
    attempts = full_disk_for(monkeypatch, "status.json")
    while bare_session.render_next("t"):
        bare_session._write_status(job, force=True)
    assert attempts and not (tmp_path / "status.json").exists()
    assert bare_session.scheduler.jobs["t"].state == "succeeded"
    monkeypatch.setattr(farm.storage.os, "replace", real_replace)  # room again
    assert bare_session._finish(job) == "succeeded"
    assert json.loads((tmp_path / "status.json").read_text())["state"] == "succeeded"


def test_a_frames_file_appearing_mid_render_fails_the_job_at_its_first_write(tmp_path, bare_session):
    add_job(bare_session, tmp_path)
    assert bare_session.render_next("t")
    (tmp_path / "images" / "000000.png").unlink()
    (tmp_path / "images").rmdir()
    (tmp_path / "images").write_text("in the way")
    assert bare_session.render_next("t")
    state = bare_session.scheduler.jobs["t"]
    assert state.error == f"{tmp_path}/images is a file, not a folder"
    assert not bare_session.render_next("t")  # rendered once, not on 3 actors


def test_a_full_disk_before_rendering_is_one_line_naming_the_folder(tmp_path, bare_session, monkeypatch):
    finished_folder(tmp_path, count=0)
    full_disk_for(monkeypatch, "plan.json")
    with pytest.raises(OutputWriteError) as caught:
        add_job(bare_session, tmp_path)
    assert str(caught.value) == (f"t: no room to write plan.json in the output folder {tmp_path} (No space left on "
                                 f"device): free some space; finished frames are kept: submit again with --out "
                                 f"{tmp_path} to resume")
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC


def test_a_frame_file_linked_out_of_the_folder_fails_the_job_and_says_so(tmp_path, bare_session):
    """A link where a frame's PNG goes, pointing out of the output folder: never written
    through; the job fails once with the reason in status.json (it stayed 'running')."""
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("keep me")
    out = tmp_path / "out"
    job = add_job(bare_session, out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "images" / "000001.png").symlink_to(outside)
    while bare_session.render_next("t"):
        pass
    state = bare_session.scheduler.jobs["t"]
    assert state.state == "failed" and "outside the output folder" in state.error
    assert outside.read_text() == "keep me"
    assert bare_session._finish(job) == "failed"
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "outside the output folder" in status["error"]


def test_a_frames_range_after_a_settings_change_leaves_the_other_frames_recorded(tmp_path, bare_session):
    """--frames 0:1 after the scene changed: only image 0 is announced and rendered again;
    the others keep their manifest lines (they were dropped, leaving unrecorded files);
    the contact sheet made from the old images goes."""
    from farm.driver import RenderJob
    from farm.submit import replaced_frames

    out = tmp_path / "out"
    folder = OutputFolder(out)
    folder.prepare()
    folder.claim()  # as farm submit does before the session adds the job
    try:
        for index in range(3):
            relative, digest = folder.write_frame("image", index, pixels(index))
            folder.append_manifest(ManifestEntry(index, "image", relative, digest, "old settings", index))
        (out / "contact_sheet.png").write_bytes(b"made from the old images")
        plan = resolve(parse_scene(STILLS))
        assert replaced_frames(folder, plan, range(0, 1)) == 1 and replaced_frames(folder, plan) == 3
        bare_session.add(RenderJob("t", plan, OutputFolder(out)), only=range(0, 1))
        assert not (out / "contact_sheet.png").exists()
        lines = {entry.index: entry for entry in folder.manifest()}
        assert sorted(lines) == [1, 2] and {e.settings_hash for e in lines.values()} == {"old settings"}
        while bare_session.render_next("t"):
            pass
        lines = {entry.index: entry for entry in folder.manifest()}
        assert sorted(lines) == [0, 1, 2] and lines[0].settings_hash == plan.frame_hashes[0]
    finally:
        folder.release()


def test_a_cancelled_job_says_nothing_renders_and_folds_its_manifest(tmp_path, bare_session):
    """farm cancel / Ctrl-C: status.json has no frame in flight and no ETA left, and an
    object-store manifest's manifest.d/ objects are folded into manifest.jsonl."""
    job = add_job(bare_session, tmp_path / "out")
    assert bare_session.render_next("t")
    bare_session.progress[("t", 1)] = {"step": 3, "steps": 10}
    folded = []
    job.out.fold_manifest = lambda: folded.append(True)
    bare_session.mark_cancelled()
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["state"] == "cancelled" and status["current"] == [] and status["eta_seconds"] is None
    assert status["finished_at"] and folded == [True]


def test_a_lock_file_linked_out_of_the_folder_is_refused_and_its_target_kept(tmp_path):
    """A planted .lock link must not make claim() truncate and overwrite the link's target,
    nor make a folder of the user's files pass for a render."""
    victim = tmp_path / "notes.txt"
    victim.write_text("important user data\n")
    out = tmp_path / "out"
    folder = finished_folder(out)
    (out / ".lock").symlink_to(victim)
    with pytest.raises(OutputDamaged, match=r"\.lock is a link"):
        folder.claim()
    assert victim.read_text() == "important user data\n"
    user_folder = tmp_path / "mine"
    user_folder.mkdir()
    (user_folder / "scene.yaml").write_text("mine")
    (user_folder / ".lock").symlink_to(victim)
    with pytest.raises(OutputDamaged, match="not a Disco Farm render"):
        OutputFolder(user_folder).check_is_render()


def test_a_lock_that_is_a_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    folder = finished_folder(out)
    (out / ".lock").mkdir()
    with pytest.raises((OutputDamaged, OutputWriteError), match=r"\.lock"):
        folder.claim()


def test_a_resume_that_cannot_start_says_so_in_status_json(tmp_path, bare_session):
    """A finished render whose manifest was replaced by a link out of the folder: the resume
    fails before anything renders, and status.json no longer says "succeeded"."""
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("keep me")
    out = tmp_path / "out"
    job = add_job(bare_session, out)
    while bare_session.render_next("t"):
        pass
    assert bare_session._finish(job) == "succeeded"
    assert json.loads((out / "status.json").read_text())["state"] == "succeeded"
    (out / "manifest.jsonl").rename(out / "kept.jsonl")
    (out / "manifest.jsonl").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the output folder"):
        add_job(bare_session, out)
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "outside the output folder" in status["error"]
    assert outside.read_text() == "keep me"


def test_a_refused_folder_of_the_users_files_gets_no_status_json(tmp_path, bare_session):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(OutputDamaged, match="not a Disco Farm render"):
        add_job(bare_session, mine)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_a_full_disk_while_the_video_is_written_says_so_naming_the_video(tmp_path, bare_session, monkeypatch):
    """ffmpeg's own reason (No space left on device) becomes the farm's full-disk wording for
    video.mp4, not ffmpeg's line about its hidden temporary file."""
    import os

    import farm.driver as driver
    from farm.driver import RenderJob

    def full_disk_video(out, plan, entries, inputs=None):  # as animation.video.stitch says a full disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{out.root}/.video.f683772f.tmp.mp4")

    monkeypatch.setattr(driver, "make_video", full_disk_video)
    plan = resolve(parse_scene(TINY_SCENE + "animation_mode: 2D\nmax_frames: 2\n"))
    job = bare_session.add(RenderJob("t", plan, OutputFolder(tmp_path / "out")))
    while bare_session.render_next("t"):
        pass
    assert bare_session._finish(job) == "failed"
    error = json.loads((tmp_path / "out" / "status.json").read_text())["error"]
    assert error.startswith("no room to write video.mp4 in the output folder") and "free some space" in error
    assert ".tmp" not in error


def test_claiming_a_folder_removes_the_temporary_files_a_killed_render_left(tmp_path):
    out = tmp_path / "out"
    folder = finished_folder(out)
    left = [out / "frames" / ".000003.png.abcd1234.tmp", out / ".status.json.x1y2.tmp",
            out / ".video.f683772f.tmp.mp4", out / "..video.f683772f.tmp.k2j3abcd.partial.mp4",
            out / "manifest.d" / ".000002.json.k2j3_x9z.tmp"]
    (out / "manifest.d").mkdir(exist_ok=True)
    (out / "frames").mkdir(exist_ok=True)
    for path in left:
        path.write_bytes(b"half")
    kept = [out / "frames" / "notes.tmp", out / ".hidden", out / "frames" / "000000.png", out / ".my notes.tmp",
            out / ".preview.1234abcd.tmp.mp4"]  # farm preview writes without claiming the folder
    for path in kept:
        path.write_bytes(b"keep")
    folder.claim()
    try:
        assert not [path for path in left if path.exists()]
        assert all(path.read_bytes() == b"keep" for path in kept)
    finally:
        folder.release()


def test_resume_names_the_recorded_frames_that_were_missing_or_damaged():
    from farm.submit import resume_line

    assert resume_line(5, ()) == "resuming: 5 finished frames verified and kept"
    assert resume_line(5, (1, 2, 6)) == ("resuming: 5 finished frames verified and kept; 3 recorded as finished but "
                                         "missing or damaged, rendered again (1, 2, 6)")
    assert resume_line(0, tuple(range(12))).endswith("(0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and 2 more)")


def test_the_frames_found_damaged_when_a_job_is_added_are_kept_apart(tmp_path, bare_session):
    out = tmp_path / "out"
    job = add_job(bare_session, out)
    while bare_session.render_next("t"):
        pass
    bare_session._finish(job)
    (out / "images" / "000001.png").write_bytes(b"truncated")
    from farm.driver import RenderJob

    again = bare_session.add(RenderJob("again", job.plan, OutputFolder(out)))
    assert again.reused == 2 and again.damaged_at_start == (1,)
    # --frames 2:3: frame 1 stays as recorded, not rendered again, so not announced
    ranged = bare_session.add(RenderJob("ranged", job.plan, OutputFolder(out)), only=range(2, 3))
    assert ranged.damaged_at_start == ()
