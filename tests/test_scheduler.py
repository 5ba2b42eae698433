"""Scheduler bookkeeping without Ray: order, chains, affinity, retries, blocklists."""

from farm.plan import resolve
from farm.scene import parse_scene
from farm.scheduler import Scheduler
from tests.conftest import TINY_SCENE

STILLS = TINY_SCENE + "n_batches: 3\n"
ANIM = TINY_SCENE + "animation_mode: 2D\nmax_frames: 3\n"
KEY = resolve(parse_scene(STILLS)).frames[0].render.models.key


def plan(text):
    return resolve(parse_scene(text))


def take(s, actor="a", key=KEY, life=None):
    task = s.next_for(actor, key, life)
    return (task.job, task.frame.index) if task else None


def test_chains_wait_for_their_previous_frame_and_go_before_stills():
    s = Scheduler()
    s.add_job("stills", plan(STILLS))
    s.add_job("anim", plan(ANIM))
    first = s.next_for("a", KEY)
    assert (first.job, first.frame.index) == ("anim", 0)
    assert take(s, "b") == ("stills", 0)  # frame 1 of the chain is not ready yet
    s.succeeded(first)
    assert take(s, "c") == ("anim", 1)


def test_priority_beats_submission_order():
    s = Scheduler()
    s.add_job("early", plan(STILLS), priority=0)
    s.add_job("urgent", plan(STILLS), priority=9)
    assert [take(s)[0] for _ in range(4)] == ["urgent"] * 3 + ["early"]


def test_model_affinity():
    s = Scheduler()
    s.add_job("j", plan(STILLS))
    assert s.next_for("a", "some-other-model-set") is None
    assert s.waiting_model_keys() == {KEY}


def test_a_frame_fails_the_job_after_three_different_actors():
    s = Scheduler()
    s.add_job("j", plan(STILLS.replace("n_batches: 3", "n_batches: 1")))
    for actor in ("a", "b", "c"):
        task = s.next_for(actor, KEY)
        assert task is not None
        assert s.next_for(actor, KEY) is None  # in flight: nobody else gets it
        s.failed(task, actor, f"boom on {actor}")
        assert s.next_for(actor, KEY) is None or actor == "c"  # the same actor never retries it
    job = s.jobs["j"]
    assert job.state == "failed" and "image-000000 failed on 3 actors" in job.error and "boom on b" in job.error


def test_a_restarted_actor_may_retry_and_an_actor_failing_three_frames_is_blocklisted():
    s = Scheduler()
    s.add_job("j", plan(STILLS.replace("n_batches: 3", "n_batches: 4")))
    task = s.next_for("a", KEY, "a#0")
    s.failed(task, "a", "actor died", "a#0")
    retry = s.next_for("a", KEY, "a#1")  # a new life (models reloaded) may retry the frame
    assert retry.frame.index == task.frame.index
    s.succeeded(retry)
    for life in ("a#1", "a#2"):
        s.failed(s.next_for("a", KEY, life), "a", "bad GPU", life)
    assert s.jobs["j"].actor_failures["a"] == 3
    assert s.next_for("a", KEY, "a#3") is None  # blocklisted for this job
    assert take(s, "b") is not None  # other actors still take its frames
    assert s.jobs["j"].state == "running"


def test_starvation_fails_the_job_with_a_reason():
    s = Scheduler(max_frame_failures=5)
    s.add_job("j", plan(STILLS.replace("n_batches: 3", "n_batches: 1")))
    task = s.next_for("a", KEY)
    s.failed(task, "a", "bad pixels")
    s.check_starvation({"a": (KEY, "a")})
    assert s.jobs["j"].state == "failed" and "no actor left" in s.jobs["j"].error


def test_resume_skips_finished_frames_and_readies_the_chain_after_them():
    s = Scheduler()
    s.add_job("j", plan(ANIM), finished={0, 1})
    assert take(s) == ("j", 2)
    assert s.jobs["j"].done == {0, 1}


def test_cancel_drops_remaining_work():
    s = Scheduler()
    s.add_job("j", plan(STILLS))
    running = s.next_for("a", KEY)
    s.cancel("j")
    assert s.next_for("b", KEY) is None
    s.abandoned(running)
    assert s.jobs["j"].state == "cancelled"


def test_stills_rendered_together_are_one_task_led_by_their_lowest_unfinished_image():
    grouped = plan(STILLS.replace("n_batches: 3", "n_batches: 5") + "images_per_call: 2\n")
    assert [f.group for f in grouped.frames] == [(0, 1), (0, 1), (2, 3), (2, 3), (4,)]
    s = Scheduler()
    s.add_job("j", grouped)
    first, second = s.next_for("a", KEY), s.next_for("b", KEY)
    assert (first.frame.index, second.frame.index) == (0, 2)  # one task per group
    third = s.next_for("c", KEY)
    assert third.frame.index == 4 and s.next_for("d", KEY) is None  # 1 and 3 ride with their groups
    s.succeeded(first, [0, 1])
    assert s.jobs["j"].done == {0, 1}
    s.failed(second, "b", "boom")  # the group goes back as one task, to another actor
    assert s.next_for("b", KEY) is None
    again = s.next_for("c", KEY)
    assert again.frame.index == 2 and s.next_for("d", KEY) is None
    s.succeeded(again, [2])  # image 3 was not written (a full disk, say): the group comes back, led by 3
    retry = s.next_for("d", KEY)
    assert retry.frame.index == 3 and retry.frame.group == (2, 3)
    s.succeeded(retry, [3])
    s.succeeded(third, [4])
    assert s.all_finished and s.jobs["j"].done == {0, 1, 2, 3, 4}


def test_a_resumed_group_is_led_by_its_first_unfinished_image():
    s = Scheduler()
    s.add_job("j", plan(STILLS.replace("n_batches: 3", "n_batches: 4") + "images_per_call: 4\n"), finished={0, 2})
    task = s.next_for("a", KEY)
    assert task.frame.index == 1 and task.frame.group == (0, 1, 2, 3) and s.next_for("b", KEY) is None
