"""Chaos run: a mixed workload on a multi-node local Ray while faults are injected at
random moments (ray.kill of actors, SIGKILL of actor processes, removal of a worker
node). Afterwards every frame exists once with the same hash as an undisturbed run.

Used by tests/test_chaos.py (short) and `make chaos` (longer: CHAOS_SCALE=4).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from farm.driver import JobInputs, RenderJob, RenderSession
from farm.output import OutputFolder
from farm.plan import resolve
from farm.scene import parse_scene

BASE = """\
diffusion_model: tiny
clip_models: ["tiny-vit::random"]
width_height: [64, 64]
seed: 9
steps: {steps}
skip_steps: 0
cutn_batches: 1
cut_overview: "[2]*1000"
cut_innercut: "[1]*1000"
init_scale: 0
frames_scale: 0
text_prompts: {0: ["a red apple:2", "blue:1"]}
"""


def workload(scale: int, steps: int = 6) -> list[tuple[str, str]]:
    base = BASE.replace("{steps}", str(steps))
    stills = base + f"name: stills\nn_batches: {4 * scale}\n"
    anim = base + f'name: anim\nanimation_mode: 2D\nmax_frames: {4 * scale}\nframes_skip_steps: "50%"\nzoom: "0:(1.05)"\n'
    shots = base + f'name: shots\nanimation_mode: 2D\nmax_frames: {4 * scale}\ncuts: [{2 * scale}]\nangle: "0:(3)"\n'
    return [("stills", stills), ("anim", anim), ("shots", shots)]


def run_workload(root: Path, scale: int, actors: int, on_update=None,
                 steps: int = 6) -> tuple[dict, dict[str, dict[int, str]]]:
    session = RenderSession(actors=actors, gpus_per_actor=1, cpus_per_actor=1, threads=1, poll_seconds=0.05,
                            max_restarts=-1, on_update=on_update)
    for name, text in workload(scale, steps):
        plan = resolve(parse_scene(text))
        session.add(RenderJob(name, plan, OutputFolder(root / name), JobInputs()))
    try:
        results = session.run()
    finally:
        session.shutdown()
    hashes = {name: {e.index: e.sha256 for e in OutputFolder(root / name).manifest()}
              for name, _ in workload(scale, steps)}
    return results, hashes


class FaultInjector:
    """Called on every driver loop turn; injects a fault every few finished frames."""

    KINDS = ("ray.kill", "SIGKILL", "removed node")  # how each kind's entries in `injected` begin

    def __init__(self, cluster: Cluster, nodes: list, removals: int = 1, seed: int = 0, every: int = 2,
                 once_each: bool = False):
        """`once_each`: stop once every kind of fault has been injected (at least) once;
        otherwise inject until the workload is done."""
        self.cluster = cluster
        self.once_each = once_each
        self.nodes = list(nodes)
        self.removals = removals
        self.random = random.Random(seed)
        self.every = every
        self.next_at = every
        self.injected: list[str] = []
        kinds = ["ray.kill", "sigkill", "remove_node"]
        self.random.shuffle(kinds)
        self.kinds = kinds + ["ray.kill", "sigkill"] * 100

    def __call__(self, session) -> None:
        """Inject the next fault once `every` more frames have finished; a turn with nothing
        to hit (no busy actor, no process id yet) tries again on the next turn."""
        if len(session.completed) < self.next_at or not session.inflight or self.done:
            return
        count = len(self.injected)
        self._inject(session)
        if len(self.injected) > count:
            self.next_at = len(session.completed) + self.every

    @property
    def done(self) -> bool:
        """With `once_each`: every kind of fault was injected."""
        return self.once_each and all(any(f.startswith(kind) for f in self.injected) for kind in self.KINDS)

    def _inject(self, session) -> None:
        busy = [label for _, label, _ in session.inflight.values() if label in session.slots]
        if not busy:
            return
        label = self.random.choice(busy)
        kind = self.kinds.pop(0)
        if kind == "remove_node" and self.removals > 0:
            node_id = session.actor_nodes.get(label)
            node = next((n for n in self.nodes if n.node_id == node_id), None)
            if node is not None:
                self.removals -= 1
                self.nodes.remove(node)
                self.cluster.remove_node(node)
                self.injected.append(f"removed node {node_id[:8]} (under {label})")
                return
            self.kinds.insert(1, "remove_node")  # that actor's node is unknown yet: try later
            kind = "ray.kill"
        if kind == "sigkill":
            alive = [l for l in busy if session.actor_pids.get(l) and _alive(session.actor_pids[l])]
            if not alive:
                self.kinds.insert(0, "sigkill")  # no current process id known yet: try later
                return
            label = self.random.choice(alive)
            os.kill(session.actor_pids[label], signal.SIGKILL)
            self.injected.append(f"SIGKILL {label} pid {session.actor_pids[label]}")
            return
        ray.kill(session.slots[label].handle, no_restart=False)
        self.injected.append(f"ray.kill {label}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def chaos(scale: int = 1, actors: int = 3, seed: int = 0, reference_actors: int | None = None,
          once_each: bool = False, steps: int = 6) -> dict:
    """Reference run (on `reference_actors`, default `actors`: a frame's pixels do not
    depend on the actor count, each actor has one torch thread), then the same workload on
    `actors` under faults (`once_each`: each kind of fault once, see FaultInjector);
    `steps`: the sampler steps of every scene. Returns a summary. Its renders and Ray's
    session files go to a temporary folder, removed at the end."""
    root = Path(tempfile.mkdtemp(prefix="disco-farm-chaos-"))
    own_ray_tmpdir = "RAY_TMPDIR" not in os.environ  # Ray's sockets need a short path: under root
    if own_ray_tmpdir:
        os.environ["RAY_TMPDIR"] = str(root / "ray")
    try:
        cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
        nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(actors + 1)]
        ray.init(address=cluster.address, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
        try:
            reference_results, reference = run_workload(root / "reference", scale, reference_actors or actors,
                                                        steps=steps)
            injector = FaultInjector(cluster, nodes, removals=1, seed=seed, once_each=once_each)
            results, disturbed = run_workload(root / "chaos", scale, actors, on_update=injector, steps=steps)
        finally:
            ray.shutdown()
            cluster.shutdown()
        manifests = {name: [e.index for e in OutputFolder(root / "chaos" / name).manifest()] for name in disturbed}
    finally:
        if own_ray_tmpdir:
            os.environ.pop("RAY_TMPDIR", None)
        shutil.rmtree(root, ignore_errors=True)
    return {"reference_results": reference_results, "results": results, "reference": reference,
            "disturbed": disturbed, "manifests": manifests, "faults": injector.injected}

if __name__ == "__main__":
    scale = int(os.environ.get("CHAOS_SCALE", "4"))
    summary = chaos(scale=scale, actors=3, seed=int(os.environ.get("CHAOS_SEED", "0")))
    identical = summary["reference"] == summary["disturbed"]
    print(f"faults injected and survived: {len(summary['faults'])}")
    for fault in summary["faults"]:
        print(f"  {fault}")
    print(f"jobs: {summary['results']}; frames identical to the undisturbed run: {identical}")
    raise SystemExit(0 if identical and set(summary["results"].values()) == {"succeeded"} else 1)
