"""The render farm on a real local Ray with tiny models: spreading, chains, priorities,
shots, actor crashes, cancel and failure reports."""

import numpy as np
import pytest
import ray

from farm.driver import JobInputs, RenderJob, RenderSession
from farm.output import OutputFolder
from farm.plan import resolve
from farm.scene import parse_scene
from tests.conftest import TINY_SCENE

BASE = "\n".join(l for l in TINY_SCENE.splitlines() if not l.startswith(("steps", "skip_steps"))) + "\n"
# 4 steps (2 for animation frames after the first) and one cut of each kind: the tests compare
# pixels of runs of the same scene, which any step count shows
FAST = BASE + 'steps: 4\nskip_steps: 0\ncutn_batches: 1\ncut_overview: "[1]*1000"\ncut_innercut: "[1]*1000"\ninit_scale: 0\nframes_scale: 0\n'
STILLS = FAST + "n_batches: 4\n"
ANIM = FAST + 'animation_mode: 2D\nmax_frames: 4\nframes_skip_steps: "50%"\nzoom: "0:(1.1)"\ntranslation_x: "0:(3)"\n'


@pytest.fixture(scope="module", autouse=True)
def local_ray(ray_temp_dir):
    ray.init(num_cpus=4, include_dashboard=False, _temp_dir=str(ray_temp_dir()),
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


def run_session(session):
    """Run a session's jobs, then shut it down (its actors too); returns the results."""
    try:
        return session.run()
    finally:
        session.shutdown()


def render(scene_text, out_dir, actors=1, priority=0, on_update=None, session=None, name=None, inputs=None,
           base_dir=None):
    plan = resolve(parse_scene(scene_text, base_dir=base_dir))
    own = session is None
    session = session or RenderSession(actors=actors, threads=1, poll_seconds=0.05, on_update=on_update)
    session.add(RenderJob(name or plan.name, plan, OutputFolder(out_dir), inputs or JobInputs(), priority))
    if not own:
        return session
    results = run_session(session)
    return session, results


def frame_hashes(out_dir):
    return {e.index: e.sha256 for e in OutputFolder(out_dir).manifest()}


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """STILLS and ANIM rendered on one actor, as two jobs of one session (one actor start
    for both): the pictures the tests below must reproduce."""
    stills, anim = tmp_path_factory.mktemp("stills-1"), tmp_path_factory.mktemp("anim-1")
    session = render(STILLS, stills, session=RenderSession(actors=1, threads=1, poll_seconds=0.05), name="stills")
    render(ANIM, anim, session=session, name="anim")
    results = run_session(session)
    assert results == {"stills": "succeeded", "anim": "succeeded"}
    return stills, anim


@pytest.fixture(scope="module")
def reference_stills_out(references):
    return references[0]


@pytest.fixture(scope="module")
def reference_stills(reference_stills_out):
    return frame_hashes(reference_stills_out)


@pytest.fixture(scope="module")
def reference_anim_out(references):
    return references[1]


@pytest.fixture(scope="module")
def reference_anim(reference_anim_out):
    return frame_hashes(reference_anim_out)


GROUPED = STILLS.replace("n_batches: 4", "n_batches: 5") + "images_per_call: 2\n"


@pytest.fixture(scope="module")
def two_actor_stills(tmp_path_factory):
    """One session of two actors (two actor starts for the two tests below) with two jobs:
    "spread", STILLS; after it, "together", GROUPED. Returns (session, results, the two
    output folders)."""
    spread, together = tmp_path_factory.mktemp("spread"), tmp_path_factory.mktemp("together")
    session = render(STILLS, spread, session=RenderSession(actors=2, threads=1, poll_seconds=0.05), name="spread")
    render(GROUPED, together, session=session, name="together")
    results = run_session(session)
    return session, results, spread, together


def test_stills_spread_over_two_actors_with_identical_images(two_actor_stills, reference_stills):
    session, results, out, _ = two_actor_stills
    assert results["spread"] == "succeeded"
    assert len({actor for job, _, actor in session.completed if job == "spread"}) == 2
    assert frame_hashes(out) == reference_stills
    assert len(reference_stills) == 4 and len(set(reference_stills.values())) == 4
    assert (out / "contact_sheet.png").exists()
    status = OutputFolder(out).read_json("status.json")
    assert status["state"] == "succeeded" and status["done"] == 4


def test_stills_rendered_together_are_their_solo_pictures_and_resume_by_group(two_actor_stills, reference_stills_out):
    """images_per_call: 2 renders images 0-1, 2-3 and 4 each in one actor call, each image
    its solo picture up to batched kernels' rounding; a damaged image brings its group back
    (the whole group renders, so its pixels match the first run) and only it is rewritten."""
    from farm.output import read_png

    session, results, _, out = two_actor_stills
    assert results["together"] == "succeeded"
    by_image = {index: actor for job, index, actor in session.completed if job == "together"}
    assert sorted(by_image) == [0, 1, 2, 3, 4] and by_image[0] == by_image[1] and by_image[2] == by_image[3]
    seconds = {e.index: e.seconds for e in OutputFolder(out).manifest()}
    assert seconds[0] == seconds[1] and seconds[2] == seconds[3]  # one render call per group
    solo = {e.index: read_png(reference_stills_out / e.file) for e in OutputFolder(reference_stills_out).manifest()}
    together = {e.index: read_png(out / e.file) for e in OutputFolder(out).manifest()}
    for index in range(4):  # the same seeds as the reference run's images 0-3
        apart = np.abs(solo[index].astype(np.int16) - together[index].astype(np.int16))
        assert apart.max() <= 2 and apart.mean() < 0.01, index
    first_run = frame_hashes(out)
    damaged = out / next(e.file for e in OutputFolder(out).manifest() if e.index == 3)
    damaged.write_bytes(damaged.read_bytes()[:100])
    session, results = render(GROUPED, out, actors=1)
    assert results == {"t": "succeeded"}
    assert [index for _, index, _ in session.completed] == [3]  # rendered with 2, written alone
    assert frame_hashes(out) == first_run


def test_render_actors_run_at_the_drivers_priority_not_rays_worker_niceness(tmp_path):
    """Any render actor's process: one whose checkpoint cannot load is started the same way,
    and answers in a second (it fails before importing CLIP's libraries)."""
    import os

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint" * 64)
    scene = STILLS.replace("diffusion_model: tiny", "") + \
        "diffusion_model: custom\ncustom_path: garbage.pt\nuse_secondary_model: false\n"
    session = RenderSession(actors=1, threads=1)
    try:
        session.add(RenderJob("t", resolve(parse_scene(scene, base_dir=tmp_path)), OutputFolder(tmp_path / "out")))
        session.start_actors()
        [info] = ray.get([slot.handle.info.remote() for slot in session.slots.values()])
    finally:
        session.shutdown()
    assert info["niceness"] == os.nice(0)  # Ray's other workers run at nice 15


def test_animation_chain_renders_in_order_and_makes_a_video(tmp_path, reference_anim):
    session, results = render(ANIM, tmp_path, actors=2)
    assert results == {"t": "succeeded"}
    assert [index for _, index, _ in session.completed] == [0, 1, 2, 3]
    assert frame_hashes(tmp_path) == reference_anim
    from animation.video import probe_video

    info = probe_video(tmp_path / "video.mp4")
    assert (info.frames, info.codec) == (4, "h264")
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "video.mp4", tmp_path / "frames" / "000000.png")}
    assert modes["video.mp4"] == modes["000000.png"], modes  # the video was private (0600), unlike the rest


def test_ctrl_c_while_the_video_is_made_leaves_status_cancelled(tmp_path, monkeypatch, reference_anim_out,
                                                                 reference_anim):
    import shutil

    import farm.driver

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    shutil.copytree(reference_anim_out, tmp_path, dirs_exist_ok=True)  # every frame done: straight to the video
    monkeypatch.setattr(farm.driver, "make_video", interrupted)
    with pytest.raises(KeyboardInterrupt):
        render(ANIM, tmp_path)
    status = OutputFolder(tmp_path).read_json("status.json")
    assert status["state"] == "cancelled" and status["video"] is None  # was "running" for ever
    assert frame_hashes(tmp_path) == reference_anim


def test_a_resume_re_renders_every_frame_made_from_a_changed_setting(tmp_path, reference_anim_out, reference_anim):
    """The border mode changes how each frame is carried into the next, not any frame's own
    settings: the resumed run keeps frame 0 only and equals a fresh run of the new scene."""
    import shutil

    shutil.copytree(reference_anim_out, tmp_path / "run")
    changed = ANIM + "border_mode: replicate\n"
    # the resume and the fresh run: two jobs of one session (one actor start)
    session = render(changed, tmp_path / "run", session=RenderSession(actors=1, threads=1, poll_seconds=0.05),
                     name="resumed")
    render(changed, tmp_path / "fresh", session=session, name="fresh")
    results = run_session(session)
    assert results == {"resumed": "succeeded", "fresh": "succeeded"} and session.jobs["resumed"].reused == 1
    assert frame_hashes(tmp_path / "run") == frame_hashes(tmp_path / "fresh")
    assert frame_hashes(tmp_path / "run")[0] == reference_anim[0]
    assert all(frame_hashes(tmp_path / "run")[i] != reference_anim[i] for i in (1, 2, 3))


def test_killing_an_actor_mid_run_still_gives_identical_pixels(tmp_path, reference_anim):
    killed = []

    def kill_once(session):
        if not killed and session.completed:
            for ref, (task, label, _) in list(session.inflight.items()):
                ray.kill(session.slots[label].handle, no_restart=False)
                killed.append(task.frame.index)
                break

    session, results = render(ANIM, tmp_path, actors=1, on_update=kill_once)
    assert killed, "the test never found a frame in flight to kill"
    assert results == {"t": "succeeded"}
    assert frame_hashes(tmp_path) == reference_anim
    status = OutputFolder(tmp_path).read_json("status.json")
    errors = status["errors"]
    assert errors and "process stopped while rendering frame" in errors[0]["message"]
    assert errors[0]["message"].endswith("the frame is tried again")
    assert status["failed"] == 0 and status["failed_attempts"] == len(errors)  # retried, and finished


def test_priority_then_submission_order_with_shared_actors(tmp_path):
    session = RenderSession(actors=1, threads=1, poll_seconds=0.05)
    render(STILLS.replace("n_batches: 4", "n_batches: 2"), tmp_path / "low", session=session, name="low", priority=0)
    render(STILLS.replace("n_batches: 4", "n_batches: 2"), tmp_path / "high", session=session, name="high", priority=5)
    results = run_session(session)
    assert results == {"low": "succeeded", "high": "succeeded"}
    assert [job for job, _, _ in session.completed] == ["high", "high", "low", "low"]


def test_shots_render_in_parallel_chains(tmp_path):
    peak = []

    def watch(session):
        peak.append(len(session.inflight))

    session, results = render(ANIM + "cuts: [2]\n", tmp_path, actors=2, on_update=watch)
    assert results == {"t": "succeeded"}
    assert max(peak) == 2
    plan = resolve(parse_scene(ANIM + "cuts: [2]\n"))
    assert plan.frames[2].init.kind == "noise" and plan.frames[2].previous is None
    order = [index for _, index, _ in session.completed]
    assert order.index(0) < order.index(1) and order.index(2) < order.index(3)


def test_cancel_keeps_finished_frames(tmp_path):
    def cancel_after_first(session):
        if session.completed and not session.scheduler.jobs["t"].cancelled:
            session.cancel("t")

    session, results = render(ANIM, tmp_path, actors=1, on_update=cancel_after_first)
    assert results == {"t": "cancelled"}
    kept = OutputFolder(tmp_path).manifest()
    assert 1 <= len(kept) < 4
    assert not (tmp_path / "video.mp4").exists()


def test_frames_that_always_fail_end_with_a_report(tmp_path):
    scene = STILLS.replace("n_batches: 4", "n_batches: 1") + "image_prompts: {0: ['x.png:1']}\n"
    (tmp_path / "x.png").write_bytes(b"")
    plan = resolve(parse_scene(scene, base_dir=tmp_path))
    session = RenderSession(actors=2, threads=1, poll_seconds=0.05)
    session.add(RenderJob("bad", plan, OutputFolder(tmp_path / "out"), JobInputs()))  # pixels never supplied
    results = run_session(session)
    assert results == {"bad": "failed"}
    status = OutputFolder(tmp_path / "out").read_json("status.json")
    assert "image-000000" in status["error"] and "actor-0" in status["error"] and "actor-1" in status["error"]
    assert len(status["errors"]) == 2


def test_a_checkpoint_that_cannot_load_fails_its_frames_with_the_reason_not_a_dead_actor(tmp_path):
    """The actor keeps running and says why on each frame it is given (Ray would otherwise
    restart it and print its constructor's traceback each time)."""
    scene = STILLS.replace("n_batches: 4", "n_batches: 1").replace("diffusion_model: tiny", "") + \
        "diffusion_model: custom\ncustom_path: garbage.pt\nuse_secondary_model: false\n"
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint" * 64)
    _, results = render(scene, tmp_path / "out", name="bad-weights", base_dir=tmp_path)
    assert results == {"bad-weights": "failed"}
    error = OutputFolder(tmp_path / "out").read_json("status.json")["error"]
    assert "ModelLoadError: the models could not be loaded" in error and "garbage.pt" in error, error
    assert "Traceback" not in error and "\n" not in error


def test_3d_turbo_animation_saves_depth_maps_and_previews(tmp_path, capsys):
    from animation.video import probe_video
    from farm.cli import main

    scene = ANIM.replace("animation_mode: 2D", "animation_mode: 3D") + (
        'translation_z: "0:(15)"\nsave_depth_maps: true\nturbo_mode: true\nturbo_steps: 2\nturbo_preroll: 1\n')
    _, results = render(scene, tmp_path, actors=1)
    assert results == {"t": "succeeded"}
    assert sorted(p.name for p in (tmp_path / "depth").iterdir()) == ["000001.png", "000002.png", "000003.png"]
    assert main(["preview", str(tmp_path)]) == 0
    assert probe_video(tmp_path / "preview.mp4").frames == 4
    assert "preview (4 of 4 frames)" in capsys.readouterr().out
    # diffused frames after the first are written blended; their chain images are kept apart
    assert sorted(p.name for p in (tmp_path / "chain").iterdir()) == ["000001.png", "000002.png"]
    written = frame_hashes(tmp_path)
    (tmp_path / "chain" / "000002.png").unlink()  # frame 3 starts from it: frame 2 is rendered again
    session, results = render(scene, tmp_path, actors=1)
    assert results == {"t": "succeeded"} and session.jobs["t"].reused == 3
    assert frame_hashes(tmp_path) == written and (tmp_path / "chain" / "000002.png").exists()


def test_a_frame_without_step_progress_is_failed_and_retried(tmp_path, reference_stills):
    from farm.worker import FrameRenderer

    marker = tmp_path / "hung-once"

    class HangsOnce(FrameRenderer):
        """Real renderer, except that its first frame hangs without any sampler progress."""

        def render(self, frame, animation, inputs, on_intermediate=None, should_stop=None):
            if not marker.exists():
                marker.write_text(str(frame.index))
                import time

                time.sleep(120)
            return super().render(frame, animation, inputs, on_intermediate, should_stop)

    plan = resolve(parse_scene(STILLS.replace("n_batches: 4", "n_batches: 2")))  # the reference's first two
    session = RenderSession(actors=1, threads=1, poll_seconds=0.05, stall_seconds=4, renderer_class=HangsOnce)
    session.add(RenderJob("t", plan, OutputFolder(tmp_path / "out"), JobInputs()))
    results = run_session(session)
    assert results == {"t": "succeeded"}
    assert marker.exists()
    assert frame_hashes(tmp_path / "out") == {index: reference_stills[index] for index in (0, 1)}
    errors = OutputFolder(tmp_path / "out").read_json("status.json")["errors"]
    assert len(errors) == 1 and errors[0]["index"] == int(marker.read_text())
    assert "process stopped while rendering" in errors[0]["message"]


def test_segment_mode_renders_segments_in_parallel_and_blends_the_seams(tmp_path):
    from animation.turbo import blend_chains
    from farm.output import read_png

    scene = ANIM.replace("max_frames: 4", "max_frames: 6") + "parallel_segments: 2\nsegment_overlap: 1\n"
    peak = []
    session, results = render(scene, tmp_path, actors=2, on_update=lambda s: peak.append(len(s.inflight)))
    assert results == {"t": "succeeded"}
    assert max(peak) == 2
    plan = resolve(parse_scene(scene))
    seam = plan.frames[2]  # segment 2 starts at frame 3, overlapping frame 2
    tail, lead = (read_png(tmp_path / "segments" / f"{s:06d}.png") for s in seam.sources)
    assert np.array_equal(read_png(tmp_path / "frames" / "000002.png"), blend_chains(tail, lead, 0.5))
    from animation.video import probe_video

    assert probe_video(tmp_path / "video.mp4").frames == 6


def test_a_full_disk_while_writing_a_frame_retries_it_and_leaves_nothing_half_written(tmp_path, monkeypatch,
                                                                                        reference_stills):
    import errno

    import farm.storage

    real_replace = farm.storage.os.replace
    failures = []

    def replace_fails_once(source, target):
        # the frame itself (a preview of frame 1, previews/000001.png, may be written first)
        if str(target).endswith("images/000001.png") and not failures:
            failures.append(target)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(farm.storage.os, "replace", replace_fails_once)
    _, results = render(STILLS.replace("n_batches: 4", "n_batches: 2"), tmp_path, actors=1)  # the reference's 0, 1
    assert failures and results == {"t": "succeeded"}
    assert frame_hashes(tmp_path) == {index: reference_stills[index] for index in (0, 1)}
    assert not [p for p in (tmp_path / "images").iterdir() if p.name.startswith(".")]  # no temp files left
    errors = OutputFolder(tmp_path).read_json("status.json")["errors"]
    assert errors == [{"index": 1, "actor": "output", "message": "could not write image-000001: No space left on device"}]
