"""Driver death: SIGKILL `farm submit` mid-animation, corrupt a finished frame, submit
again with the same --out: it resumes and the result equals an undisturbed run. And one
submit of several scenes sharing the actors (the same run renders the undisturbed
animation the resumed one is compared with)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.output import OutputFolder
from tests.conftest import TINY_SCENE

BASE = "\n".join(l for l in TINY_SCENE.splitlines() if not l.startswith(("steps", "skip_steps"))) + "\n"
SCENE = BASE.replace("name: t", "name: anim") + (
    'steps: 8\nskip_steps: 0\ncutn_batches: 1\ncut_overview: "[2]*1000"\ncut_innercut: "[1]*1000"\n'
    'init_scale: 0\nframes_scale: 0\nanimation_mode: 2D\nmax_frames: 6\nframes_skip_steps: "50%"\n'
    'zoom: "0:(1.05)"\nangle: "0:(2)"\n')
STILL = BASE + 'steps: 4\nskip_steps: 0\ncutn_batches: 1\ncut_overview: "[1]*1000"\ncut_innercut: "[1]*1000"\n'


def farm_env() -> dict[str, str]:
    """A local embedded Ray whatever the environment says (OMP_WAIT_POLICY comes from
    tests/conftest.py, through os.environ)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    return env


def submit(*argv, stderr=subprocess.STDOUT):
    """`farm submit ... --actors 1` in its own process group (the test may SIGKILL it whole)."""
    return subprocess.Popen([sys.executable, "-m", "farm.cli", "submit", *map(str, argv), "--no-dashboard",
                             "--actors", "1"], env=farm_env(), stdout=subprocess.PIPE, stderr=stderr, text=True,
                            start_new_session=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    """(stdout, stderr) of a submit; one that overruns is killed whole (Ray and actors too)."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise


def hashes(out: Path) -> dict[int, str]:
    return {e.index: e.sha256 for e in OutputFolder(out).manifest()}


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    """One `farm submit` of three scenes sharing its actor: two stills scenes (the second
    more urgent) and the animation, rendered undisturbed into <out>/anim."""
    folder = tmp_path_factory.mktemp("shared")
    (folder / "a.yaml").write_text(STILL.replace("name: t", "name: first") + "n_batches: 2\n")
    (folder / "b.yaml").write_text(STILL.replace("name: t", "name: urgent") + "n_batches: 1\npriority: 5\n")
    (folder / "anim.yaml").write_text(SCENE)
    run = submit(folder / "a.yaml", folder / "b.yaml", folder / "anim.yaml", "--out", folder / "out",
                 stderr=subprocess.PIPE)
    stdout, stderr = finish(run)
    return folder / "out", subprocess.CompletedProcess(run.args, run.returncode, stdout, stderr)


def test_resume_after_sigkill_and_corruption_equals_an_undisturbed_run(tmp_path, shared_run):
    scene = tmp_path / "anim.yaml"
    scene.write_text(SCENE)
    reference_out, reference = shared_run
    assert reference.returncode == 0, reference.stderr[-3000:]
    reference_hashes = hashes(reference_out / "anim")
    assert len(reference_hashes) == 6
    killed_run = submit(scene, "--out", tmp_path / "resumed")
    deadline = time.monotonic() + 240
    manifest = tmp_path / "resumed" / "manifest.jsonl"
    while time.monotonic() < deadline:
        if manifest.exists() and len(manifest.read_text().splitlines()) >= 3:
            break
        assert killed_run.poll() is None, killed_run.stdout.read()
        time.sleep(0.05)
    os.killpg(killed_run.pid, signal.SIGKILL)
    killed_run.wait()
    finished_before = hashes(tmp_path / "resumed")
    assert 3 <= len(finished_before) < 6, "the kill came too late to test resuming"

    # a half-written frame: its hash no longer matches, so it must be rendered again
    damaged = tmp_path / "resumed" / "frames" / "000001.png"
    damaged.write_bytes(damaged.read_bytes()[:100])

    resumed = submit(scene, "--out", tmp_path / "resumed")
    output = finish(resumed)[0]
    assert resumed.returncode == 0, output
    kept = len(finished_before) - 1  # every finished frame but the damaged one
    assert (f"resuming: {kept} finished frames verified and kept; 1 recorded as finished but missing or damaged, "
            "rendered again (1)") in output
    assert hashes(tmp_path / "resumed") == reference_hashes
    lines = (tmp_path / "resumed" / "manifest.jsonl").read_text().splitlines()
    assert sorted(json.loads(l)["index"] for l in lines) == list(range(6))  # no duplicates, no gaps
    assert (tmp_path / "resumed" / "video.mp4").exists()


def test_one_submit_renders_several_scenes_sharing_the_actors(shared_run):
    out, result = shared_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "urgent: 1 images (priority 5)" in result.stderr and "first: 2 images (priority 0)" in result.stderr
    assert "anim: 6 frames (priority 0)" in result.stderr
    assert len(hashes(out / "first")) == 2 and len(hashes(out / "urgent")) == 1 and len(hashes(out / "anim")) == 6
    actors = {e.actor for name in ("first", "urgent", "anim") for e in OutputFolder(out / name).manifest()}
    assert len(actors) == 1, actors  # --actors 1: the one actor rendered all three scenes
    assert f"urgent: images: {out / 'urgent' / 'images'}" in result.stdout
