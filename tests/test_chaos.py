"""Short chaos run (see tests/chaos.py; `make chaos` runs a longer one): two actors under
each kind of fault once (each fault restarts an actor, which imports torch and loads its
models again: the run's main cost), against an undisturbed reference run on one actor;
4 sampler steps a frame (the standalone run: 6)."""

import os
import tempfile
from pathlib import Path

from tests.chaos import chaos


def test_faults_at_random_moments_lose_nothing_and_change_no_pixel(capsys):
    before = {path for path in Path(tempfile.gettempdir()).glob("disco-farm-chaos-*")}
    summary = chaos(scale=1, actors=2, seed=3, reference_actors=1, once_each=True, steps=4)
    assert summary["reference_results"] == {"stills": "succeeded", "anim": "succeeded", "shots": "succeeded"}
    assert summary["results"] == summary["reference_results"]
    assert len(summary["faults"]) >= 3
    kinds = " ".join(summary["faults"])
    assert "ray.kill" in kinds and "SIGKILL" in kinds and "removed node" in kinds
    assert summary["disturbed"] == summary["reference"]
    for name, indices in summary["manifests"].items():
        assert sorted(indices) == list(range(len(summary["reference"][name]))), name  # once each, no gaps
    # its renders and Ray's session files are gone, and Ray's temp dir is this process's again
    assert {path for path in Path(tempfile.gettempdir()).glob("disco-farm-chaos-*")} <= before
    assert "disco-farm-chaos-" not in os.environ.get("RAY_TMPDIR", "")
    with capsys.disabled():
        print(f"\nchaos: {len(summary['faults'])} faults injected and survived: {summary['faults']}")
