"""The cluster's shared pool (farm.pool): one queue for separately submitted jobs.

The grant order is tested on the pool's pure bookkeeping; then on a real local Ray with one
declared GPU (one actor slot), separate driver processes (each its own Ray job, connecting
with ray.init(address=...)) share the pool's actor: a high-priority job submitted later
gets the actor before the low-priority job's remaining frames, and the pixels equal a solo
run; a killed driver's slot is reclaimed; a terminated driver (`farm cancel`) gives its
slot back and leaves a cancelled status."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from farm.driver import JobInputs, RenderJob, RenderSession
from farm.output import OutputFolder
from farm.plan import resolve
from farm.pool import Grant, Load, PoolBook, PoolConfig, Refuse, SlotRequest, connect_pool, stop_pool
from farm.scene import parse_scene
from tests.test_farm_local import FAST

ROOT = Path(__file__).resolve().parents[1]
LOW = FAST + "n_batches: 10\n"
HIGH = FAST.replace("seed: 5", "seed: 50") + "n_batches: 3\n"
SLOW = FAST.replace("steps: 4", "steps: 200") + "n_batches: 3\n"  # seconds per frame: a frame to interrupt


# ---------------------------------------------------------------------------- the grant order
def request(rid, job, priority=0, key="m1", blocked=(), tried=()):
    return SlotRequest(rid, job, priority, key, frozenset(blocked), frozenset(tried))


def grants(actions):
    return [(a.request_id, a.label) for a in actions if isinstance(a, Grant)]


def test_grants_go_by_priority_then_job_order_then_request_order():
    book = PoolBook(size=1)
    book.request(request("a1", "A"))
    book.request(request("a2", "A"))
    assert book.schedule() == [Load("actor-0", "m1"), Grant("a1", "actor-0", 0, "m1")]
    book.request(request("b1", "B", priority=5))
    book.request(request("c1", "C", priority=5))
    book.request(request("b2", "B", priority=5))
    assert book.schedule() == []  # the only actor is busy
    order = []
    current = "a1"
    for _ in range(4):
        book.release(current)
        actions = book.schedule()
        assert not [a for a in actions if isinstance(a, Load)]  # the loaded actor is reused
        [(current, _)] = grants(actions)
        order.append(current)
    assert order == ["b1", "b2", "c1", "a2"]
    book.release(current)
    assert book.schedule() == [] and not book.pending


def test_a_slot_given_back_with_the_next_request_stays_with_the_job_that_outranks():
    book = PoolBook(size=1)
    book.request(request("low1", "A", 0))
    book.schedule()
    book.request(request("high1", "B", 5))
    book.release("low1")
    book.request(request("low2", "A", 0))  # A's next frame arrives with its release
    assert grants(book.schedule()) == [("high1", "actor-0")]
    book.release("high1")
    book.request(request("high2", "B", 5))
    assert grants(book.schedule()) == [("high2", "actor-0")]
    book.release("high2")
    assert grants(book.schedule()) == [("low2", "actor-0")]


def test_model_sets_stick_to_actors_and_an_idle_actor_is_reloaded_only_when_needed():
    book = PoolBook(size=2)
    book.request(request("x1", "A", key="m1"))
    book.request(request("y1", "B", key="m2"))
    assert book.schedule() == [Load("actor-0", "m1"), Grant("x1", "actor-0", 0, "m1"),
                               Load("actor-1", "m2"), Grant("y1", "actor-1", 0, "m2")]
    book.release("x1")
    book.request(request("y2", "B", key="m2"))
    assert book.schedule() == []  # actor-1 holds m2 (busy): wait for it rather than reload actor-0
    book.release("y1")
    assert grants(book.schedule()) == [("y2", "actor-1")]
    book.request(request("z1", "C", priority=9, key="m3"))  # nobody holds m3: the idle actor is reloaded
    assert book.schedule() == [Load("actor-0", "m3"), Grant("z1", "actor-0", 1, "m3")]  # a new life


def test_blocklisted_actors_are_skipped_and_a_request_nobody_may_take_is_refused():
    book = PoolBook(size=2)
    book.request(request("a", "A"))
    book.request(request("b", "A"))
    book.schedule()
    book.release("a")
    book.release("b")
    book.request(request("c", "A", blocked={"actor-0"}))
    assert grants(book.schedule()) == [("c", "actor-1")]
    book.request(request("d", "A", blocked={"actor-0"}, tried={"actor-1#0"}))
    assert book.schedule() == []  # actor-1 is busy: it may crash and come back as a new life
    book.release("c")
    assert book.schedule() == [Refuse("d", "every actor of the pool is blocklisted for this job or failed this frame")]


def test_a_crashed_or_reclaimed_actor_is_granted_again_only_after_it_answers():
    book = PoolBook(size=1)
    book.join("dead-driver/j", 0)
    book.request(request("a", "dead-driver/j"))
    book.schedule()
    book.request(request("b", "other/j"))
    withdrawn, reclaimed = book.leave("dead-driver/j")
    assert (withdrawn, reclaimed) == ([], ["actor-0"])
    assert book.schedule() == []  # the dead driver's frame may still be running
    assert book.checked("actor-0", alive=True) is None
    assert grants(book.schedule()) == [("b", "actor-0")]
    book.release("b", crashed=True)
    book.request(request("c", "other/j"))
    assert book.schedule() == []
    assert book.checked("actor-0", alive=False) == Load("actor-0", "m1")  # permanently dead: replaced
    assert book.schedule() == [Grant("c", "actor-0", 1, "m1")]
    book.release("c")
    assert book.idle(now=1000.0, seconds=600) == ["actor-0"] and not book.actors


def test_an_owned_actor_that_is_restarting_or_replaced_takes_work_only_after_it_answers(monkeypatch):
    """Losing a node: a ping to the restarting actor can fail with ActorUnavailableError.
    That is not death (ask again); and a replacement for a dead actor may never be placed
    (its node's GPU is gone), so it too waits for its ping. Before, the replacement took
    the next frame at once and the run waited out the 10-minute stall rule."""
    from types import SimpleNamespace

    import farm.pool as pool
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    calls = []

    class Handle:
        def __init__(self, name):
            self.info = SimpleNamespace(remote=lambda: calls.append(name) or f"ping-{name}-{len(calls)}")

    answers = {}
    monkeypatch.setattr(pool.ray, "get", lambda ref: (_ for _ in ()).throw(answers[ref]) if ref in answers else "ok")
    monkeypatch.setattr(pool, "_start_actor", lambda config, models, board, label: Handle(f"fresh-{label}"))
    session = SimpleNamespace(slots={})
    owned = pool.OwnedActors(session, PoolConfig(size=1), "board")
    slot = pool.Slot("actor-1", Handle("old"), "m1", SimpleNamespace(key="m1"))
    session.slots["actor-1"] = slot
    owned.ended(slot, crashed=True)  # its frame failed: ping it
    first = slot.busy
    answers[first] = ActorUnavailableError("restarting", None)
    owned.answered(first)
    assert session.slots["actor-1"] is slot and slot.busy not in (None, first)  # asked again, still no work
    answers[slot.busy] = ActorDiedError()
    owned.answered(slot.busy)
    fresh = session.slots["actor-1"]
    assert fresh is not slot and fresh.lives == 1 and fresh.busy is not None  # replaced, and waits for its ping
    owned.answered(fresh.busy)
    assert fresh.busy is None  # it answered: it may take work now
    assert calls == ["old", "old", "fresh-actor-1"]


# ---------------------------------------------------------------------------- separate drivers
DRIVER = r"""
import json, sys, time
from pathlib import Path
args = json.loads(sys.argv[1])
import ray
ray.init(address=args["address"], logging_level="ERROR", log_to_driver=False)
from farm.driver import JobInputs, RenderJob, RenderSession
from farm.output import OutputFolder
from farm.plan import resolve
from farm.pool import PoolConfig
from farm.scene import parse_scene

done, report = {}, Path(args["report"])
def record(session):
    for _, index, _ in session.completed:
        done.setdefault(index, time.time())
    if session.inflight and not (report.parent / (report.name + ".running")).exists():
        (report.parent / (report.name + ".running")).write_text("")
session = RenderSession(actors=1, threads=1, poll_seconds=0.05, on_update=record, pool=args["pool"],
                        pool_config=PoolConfig(**args["config"]))
plan = resolve(parse_scene(args["scene"]))
session.add(RenderJob(args["name"], plan, OutputFolder(args["out"]), JobInputs(), args["priority"]))
go = Path(args["go"]) if args.get("go") else None
while go is not None and not go.exists():
    time.sleep(0.02)
try:
    results = session.run()
finally:
    session.shutdown()
report.write_text(json.dumps({"results": results, "done": done}))
"""

CONFIG = dict(size=1, gpus_per_actor=1.0, cpus_per_actor=1.0, threads=1, check_seconds=0.2)


@pytest.fixture(scope="module")
def cluster(ray_temp_dir):
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, _temp_dir=str(ray_temp_dir()),
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1"}})
    name = f"test-pool-{os.urandom(3).hex()}"
    connect_pool(PoolConfig(**CONFIG), name=name)
    yield {"address": ray.get_runtime_context().gcs_address, "pool": name}
    stop_pool(name)
    ray.shutdown()


def pool_snapshot(cluster):
    return ray.get(ray.get_actor(cluster["pool"], namespace="disco-farm").snapshot.remote())


def start_driver(cluster, tmp_path, name, scene, priority, go=None):
    args = {"address": cluster["address"], "pool": cluster["pool"], "config": CONFIG, "scene": scene, "name": name,
            "out": str(tmp_path / name), "priority": priority, "report": str(tmp_path / f"{name}.json"),
            "go": str(go) if go else None}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    with open(tmp_path / f"{name}.log", "w") as log:
        return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(args)], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def finish(process, tmp_path, name, timeout=180):
    try:
        code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert code == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    return json.loads((tmp_path / f"{name}.json").read_text())


def hashes(out):
    return {e.index: e.sha256 for e in OutputFolder(out).manifest()}


def test_a_later_high_priority_job_gets_the_gpu_before_an_earlier_jobs_remaining_frames(cluster, tmp_path):
    go = tmp_path / "go-high"
    high = start_driver(cluster, tmp_path, "high", HIGH, 5, go=go)
    low = start_driver(cluster, tmp_path, "low", LOW, 0)
    try:
        wait_for(lambda: len(OutputFolder(tmp_path / "low").manifest()) >= 1, 120, "the low job's first frame")
        go.write_text("")
        solo = RenderSession(actors=1, threads=1, poll_seconds=0.05)  # meanwhile the same scene alone, own actor
        solo.add(RenderJob("low", resolve(parse_scene(LOW)), OutputFolder(tmp_path / "solo"), JobInputs()))
        try:
            assert solo.run() == {"low": "succeeded"}
        finally:
            solo.shutdown()
        low_report = finish(low, tmp_path, "low")
        high_report = finish(high, tmp_path, "high")
    finally:
        for process in (low, high):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert low_report["results"] == {"low": "succeeded"} and high_report["results"] == {"high": "succeeded"}
    high_times = sorted(high_report["done"].values())
    low_times = sorted(low_report["done"].values())
    assert len(high_times) == 3 and len(low_times) == 10
    # the pool's grants, in order: the high job's three frames one after another, low frames before
    # (it started first) and after (its remaining ones waited)
    snapshot = pool_snapshot(cluster)
    order = "".join(job.rsplit("/", 1)[1][0] for _, job, _, _ in snapshot["grants"] if job.endswith(("/low", "/high")))
    assert "hhh" in order and order.count("h") == 3 and order.startswith("l") and order.endswith("l"), order
    # seen from the drivers: no low frame finished while the high frames ran
    assert not [t for t in low_times if high_times[0] < t < high_times[-1]]
    assert sum(t > high_times[-1] for t in low_times) == len(order) - order.index("hhh") - 3
    assert hashes(tmp_path / "low") == hashes(tmp_path / "solo")
    assert list(snapshot["actors"]) == ["actor-0"] and snapshot["actors"]["actor-0"]["lives"] == 0  # models kept
    assert snapshot["actors"]["actor-0"]["job"] is None and not snapshot["jobs"] and not snapshot["pending"]


def test_a_killed_drivers_slot_is_reclaimed_and_a_terminated_one_gives_its_slot_back(cluster, tmp_path):
    go_next, go_last = tmp_path / "go-next", tmp_path / "go-last"
    doomed = start_driver(cluster, tmp_path, "doomed", SLOW, 9)
    survivor = start_driver(cluster, tmp_path, "survivor", HIGH, 0, go=go_next)
    cancelled = start_driver(cluster, tmp_path, "cancelled", SLOW, 9, go=go_last)
    try:
        wait_for(lambda: (tmp_path / "doomed.json.running").exists(), 120, "the doomed driver's first frame")
        time.sleep(0.5)
        os.killpg(doomed.pid, signal.SIGKILL)  # a driver dies holding the only slot, mid-frame
        go_next.write_text("")
        report = finish(survivor, tmp_path, "survivor")
        assert report["results"] == {"survivor": "succeeded"}
        assert len(hashes(tmp_path / "survivor")) == 3 and not hashes(tmp_path / "doomed")
        # the abandoned frame stopped part-way (the survivor did not wait for its 200 steps)
        snapshot = pool_snapshot(cluster)
        assert len(snapshot["reclaimed"]) == 1
        [stopped] = snapshot["abandoned"]
        assert stopped["job"] == "doomed" and stopped["actor"] == "actor-0", stopped
        assert 0 < stopped["step"] < stopped["steps"] == 200, stopped

        go_last.write_text("")
        wait_for(lambda: (tmp_path / "cancelled.json.running").exists(), 120, "the cancelled driver's first frame")
        os.killpg(cancelled.pid, signal.SIGTERM)  # what `farm cancel` (Ray's stop_job) sends
        cancelled.wait(timeout=30)
        status = OutputFolder(tmp_path / "cancelled").read_json("status.json")
        assert status["state"] == "cancelled"
        snapshot = pool_snapshot(cluster)
        assert len(snapshot["reclaimed"]) == 1  # it left the pool itself
        assert not snapshot["jobs"] and not snapshot["pending"]
        wait_for(lambda: not pool_snapshot(cluster)["actors"]["actor-0"]["checking"], 10, "the actor to answer")
        assert pool_snapshot(cluster)["actors"]["actor-0"]["job"] is None
    finally:
        for process in (doomed, survivor, cancelled):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


def test_a_pooled_actor_crash_is_retried_and_a_frame_no_actor_may_take_fails_its_job(cluster, tmp_path):
    def render(name, scene=HIGH.replace("n_batches: 3", "n_batches: 2"), on_update=None, base_dir=None):
        session = RenderSession(threads=1, poll_seconds=0.05, on_update=on_update, pool=cluster["pool"],
                                pool_config=PoolConfig(**CONFIG))  # this test process is a third driver
        session.add(RenderJob(name, resolve(parse_scene(scene, base_dir=base_dir)), OutputFolder(tmp_path / name),
                              JobInputs()))
        try:
            return session.run()
        finally:
            session.shutdown()

    killed = []

    def kill_once(session):
        if not killed and session.completed:
            for task, label, _ in list(session.inflight.values()):
                ray.kill(session.slots[label].handle, no_restart=False)
                killed.append(task.frame.index)
                break

    assert render("calm") == {"calm": "succeeded"}
    lives = pool_snapshot(cluster)["actors"]["actor-0"]["lives"]
    assert render("crashed", on_update=kill_once) == {"crashed": "succeeded"}
    assert killed, "the test never found a frame in flight to kill"
    assert hashes(tmp_path / "crashed") == hashes(tmp_path / "calm") and len(hashes(tmp_path / "calm")) == 2
    errors = OutputFolder(tmp_path / "crashed").read_json("status.json")["errors"]
    assert len(errors) == 1 and "process stopped while rendering" in errors[0]["message"]
    assert pool_snapshot(cluster)["actors"]["actor-0"]["lives"] == lives + 1  # restarted (models reloaded) once

    bad = HIGH.replace("n_batches: 3", "n_batches: 1") + "image_prompts: {0: ['x.png:1']}\n"
    (tmp_path / "x.png").write_bytes(b"")
    assert render("bad", scene=bad, base_dir=tmp_path) == {"bad": "failed"}  # the prompt's pixels never supplied
    status = OutputFolder(tmp_path / "bad").read_json("status.json")
    assert f"image-000000: no actor left to try it (actor-0#{lives + 1}:" in status["error"]
    assert len(status["errors"]) == 1


def test_describe_pool_lists_actors_then_jobs_in_grant_order():
    from farm.pool import describe_pool

    snapshot = {
        "size": 2,
        "actors": {"actor-1": {"model_key": "tiny|tiny-vit::random", "lives": 1, "job": None, "checking": False},
                   "actor-0": {"model_key": "tiny|tiny-vit::random", "lives": 0, "job": "d1/low", "checking": False}},
        "jobs": {"d1/low": 0, "d2/high": 5},
        "pending": [("d2/high", "r3"), ("d2/high", "r4"), ("d1/low", "r5")],
    }
    lines = describe_pool(snapshot)
    assert lines[0] == "shared pool: 2 actor(s) of 2"
    assert lines[1].startswith("  actor-0  lives 0  rendering for d1/low")
    assert lines[2].startswith("  actor-1  lives 1  idle")
    assert lines[3:] == ["jobs (grant order):", "  d2/high  priority 5  waiting frames 2",
                         "  d1/low  priority 0  waiting frames 1"]
    assert describe_pool({"size": 1, "actors": {}, "jobs": {}, "pending": []})[-1] == "no jobs"
