"""Driver death: SIGKILL `farm submit` mid-animation, corrupt a finished frame, submit
again with the same --out: it resumes and the result equals an undisturbed run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from farm.output import OutputFolder
from tests.conftest import TINY_SCENE

BASE = "\n".join(l for l in TINY_SCENE.splitlines() if not l.startswith(("steps", "skip_steps"))) + "\n"
SCENE = BASE + ('steps: 8\nskip_steps: 0\ncutn_batches: 1\ncut_overview: "[2]*1000"\ncut_innercut: "[1]*1000"\n'
                'init_scale: 0\nframes_scale: 0\nanimation_mode: 2D\nmax_frames: 6\nframes_skip_steps: "50%"\n'
                'zoom: "0:(1.05)"\nangle: "0:(2)"\n')


def submit(scene: Path, out: Path, **popen):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "farm.cli", "submit", str(scene), "--out", str(out),
                             "--no-dashboard", "--actors", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **popen)


def hashes(out: Path) -> dict[int, str]:
    return {e.index: e.sha256 for e in OutputFolder(out).manifest()}


def test_resume_after_sigkill_and_corruption_equals_an_undisturbed_run(tmp_path):
    scene = tmp_path / "anim.yaml"
    scene.write_text(SCENE)
    reference = submit(scene, tmp_path / "reference")
    killed_run = submit(scene, tmp_path / "resumed")
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

    assert reference.wait(timeout=300) == 0, reference.stdout.read()
    resumed = submit(scene, tmp_path / "resumed")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    kept = len(finished_before) - 1  # every finished frame but the damaged one
    assert (f"resuming: {kept} finished frames verified and kept; 1 recorded as finished but missing or damaged, "
            "rendered again (1)") in output
    assert hashes(tmp_path / "resumed") == hashes(tmp_path / "reference")
    assert len(hashes(tmp_path / "reference")) == 6
    lines = (tmp_path / "resumed" / "manifest.jsonl").read_text().splitlines()
    assert sorted(json.loads(l)["index"] for l in lines) == list(range(6))  # no duplicates, no gaps
    assert (tmp_path / "resumed" / "video.mp4").exists()


def test_one_submit_renders_several_scenes_sharing_the_actors(tmp_path):
    still = BASE + 'steps: 4\nskip_steps: 0\ncutn_batches: 1\ncut_overview: "[1]*1000"\ncut_innercut: "[1]*1000"\n'
    (tmp_path / "a.yaml").write_text(still.replace("name: t", "name: first") + "n_batches: 2\n")
    (tmp_path / "b.yaml").write_text(still.replace("name: t", "name: urgent") + "n_batches: 1\npriority: 5\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run([sys.executable, "-m", "farm.cli", "submit", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"),
                             "--out", str(tmp_path / "out"), "--no-dashboard"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "urgent: 1 images (priority 5)" in result.stderr and "first: 2 images (priority 0)" in result.stderr
    assert len(hashes(tmp_path / "out" / "first")) == 2 and len(hashes(tmp_path / "out" / "urgent")) == 1
    assert f"urgent: images: {tmp_path / 'out' / 'urgent' / 'images'}" in result.stdout
