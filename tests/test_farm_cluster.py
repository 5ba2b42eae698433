"""Several nodes (ray.cluster_utils.Cluster, GPUs declared on this CPU machine): one
actor per GPU; removing a worker node mid-run loses no finished frame and the job
completes on the remaining node."""

import os

import pytest
import ray
from ray.cluster_utils import Cluster

from farm.driver import JobInputs, RenderJob, RenderSession
from farm.output import OutputFolder
from farm.plan import resolve
from farm.scene import parse_scene
from tests.test_farm_local import STILLS


@pytest.fixture(scope="module")
def cluster(ray_temp_dir):
    os.environ["RAY_TMPDIR"] = str(ray_temp_dir())
    # two GPU nodes: the head and one worker (the one removed; each node start costs ~20 s here)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, num_gpus=1)]
    ray.init(address=cluster.address, runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    cluster.wait_for_nodes()
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()
    os.environ.pop("RAY_TMPDIR", None)


def test_losing_a_worker_node_loses_no_frame(cluster, tmp_path):
    cluster_, workers = cluster
    removed = []

    worker = workers[0]

    def remove_a_node(session):  # once the worker node has finished a frame
        if removed or not any(session.actor_nodes.get(label) == worker.node_id for _, _, label in session.completed):
            return
        cluster_.remove_node(worker)
        removed.append((worker.node_id, len(session.completed)))

    plan = resolve(parse_scene(STILLS.replace("n_batches: 4", "n_batches: 6")))
    session = RenderSession(actors=2, gpus_per_actor=1, cpus_per_actor=1, threads=1, poll_seconds=0.05,
                            max_restarts=1, on_update=remove_a_node)
    session.add(RenderJob("t", plan, OutputFolder(tmp_path), JobInputs()))
    try:
        results = session.run()
    finally:
        session.shutdown()
    assert removed, "no node was removed"
    assert results == {"t": "succeeded"}
    assert len(set(session.actor_nodes.values())) == 2  # both GPUs' nodes rendered
    manifest = OutputFolder(tmp_path).manifest()
    assert sorted(e.index for e in manifest) == list(range(6))
    survivor = cluster_.head_node.node_id
    late = [label for _, _, label in session.completed[removed[0][1] + 1:]]
    assert all(session.actor_nodes[label] == survivor for label in late if label in session.actor_nodes) or late == []
