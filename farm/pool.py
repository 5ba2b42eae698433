"""Where a RenderSession's actors come from: its own, or leases from the cluster's shared pool.

`OwnedActors` (the embedded local default, `farm submit` without --address): the session
starts its RenderActors, reloads an idle one for a model set no actor holds, pings a
restarted one before giving it work and replaces a permanently dead one.

`PooledActors` (jobs on a cluster, `farm submit --address`): one detached, named actor per
cluster, `FarmPool` (namespace "disco-farm"), owns the RenderActors and grants them to the
drivers of separately submitted jobs, one frame at a time, by (priority, the order jobs
joined the pool, the order of requests). A driver asks for a slot per ready frame (an
async call that answers when granted, so the driver's `ray.wait` loop just waits on it),
renders the frame on the granted actor and gives the slot back with its next request in
one call (so a job that outranks the others keeps the actor). Actors keep their models
across jobs; an idle actor is reloaded only for a model set no usable actor holds, and
stopped after `idle_seconds` so an autoscaler can release its GPU. A driver that dies is
noticed through its ProgressBoard (an actor the driver owns dies with it): its requests
are dropped and its slots reclaimed once their actors answer again (the frame it left
running stops at its next progress report, see farm.actors).

`PoolBook` is the pool's pure bookkeeping (no Ray), tested on its own.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque
from dataclasses import dataclass, field

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from farm.actors import RenderActor

POOL_NAMESPACE = "disco-farm"
POOL_NAME = "farm-pool"


def incarnation(label: str, lives: int) -> str:
    """One life of an actor ("actor-0#2"): failures count per life, blocklisting per label."""
    return f"{label}#{lives}"


@dataclass
class Slot:
    """One RenderActor as a driver sees it: its own, or leased from the shared pool."""

    label: str
    handle: object
    model_key: str
    models: object
    busy: object | None = None  # the ObjectRef in flight
    lives: int = 0  # restarts seen (each restart reloads the models)
    lease: str | None = None  # the pool's request id this actor is granted for

    @property
    def incarnation(self) -> str:
        return incarnation(self.label, self.lives)


# ---------------------------------------------------------------------------- pure bookkeeping
@dataclass(frozen=True)
class PoolConfig:
    """How RenderActors are made: a session's own (`OwnedActors`), or the shared pool's
    (the first job to find the pool empty decides; the last three fields are the pool's)."""

    size: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    device: str | None = None
    threads: int | None = None
    max_restarts: int = 3
    renderer_class: object = None
    check_seconds: float = 1.0  # how often drivers are checked for life and idle actors stopped
    idle_seconds: float = 600.0  # an actor unused this long is stopped (its GPU freed)
    drain_seconds: float = 600.0  # an actor that does not answer this long after a reclaim is restarted


def driver_token(job: str) -> str:
    """The driver part of a pool-wide job key "<driver token>/<job id>"."""
    return job.split("/", 1)[0]


@dataclass(frozen=True)
class SlotRequest:
    """A driver's request for one actor slot, for one frame of one job."""

    request_id: str
    job: str  # pool-wide job key: "<driver token>/<job id>"
    priority: int
    model_key: str
    blocked: frozenset[str] = frozenset()  # actor labels blocklisted for this job
    tried: frozenset[str] = frozenset()  # actor lives ("label#n") that already failed this frame


@dataclass
class PoolActor:
    label: str
    model_key: str
    lives: int = 0
    lease: str | None = None  # request id it is granted to
    job: str | None = None
    checking: bool = False  # after a crash or a reclaim: no grants until it answers
    idle_since: float = 0.0

    @property
    def incarnation(self) -> str:
        return incarnation(self.label, self.lives)

    @property
    def free(self) -> bool:
        return self.lease is None and not self.checking


@dataclass(frozen=True)
class Grant:
    request_id: str
    label: str
    lives: int
    model_key: str


@dataclass(frozen=True)
class Load:
    """Start the actor `label` with this model set (new, reloaded, or replacing a dead one)."""

    label: str
    model_key: str


@dataclass(frozen=True)
class Refuse:
    request_id: str
    reason: str


@dataclass
class _PoolJob:
    priority: int
    order: int


@dataclass
class PoolBook:
    """Which waiting request gets which actor; when actors are started, reloaded, stopped."""

    size: int
    actors: dict[str, PoolActor] = field(default_factory=dict)
    jobs: dict[str, _PoolJob] = field(default_factory=dict)
    pending: dict[str, SlotRequest] = field(default_factory=dict)

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"the pool needs at least one actor, got size {self.size}")
        self._ranks: dict[str, tuple[int, int, int]] = {}
        self._job_order = itertools.count()
        self._request_order = itertools.count()
        self._labels = itertools.count()

    # -- jobs and requests
    def join(self, job: str, priority: int) -> None:
        if job not in self.jobs:
            self.jobs[job] = _PoolJob(priority, next(self._job_order))

    def request(self, request: SlotRequest) -> None:
        self.join(request.job, request.priority)
        job = self.jobs[request.job]
        self.pending[request.request_id] = request
        self._ranks[request.request_id] = (-job.priority, job.order, next(self._request_order))

    def ranked(self) -> list[SlotRequest]:
        """Waiting requests, best first: priority, then job order, then request order."""
        return sorted(self.pending.values(), key=lambda r: self._ranks[r.request_id])

    def withdraw(self, request_ids) -> list[str]:
        """Drop waiting requests; returns those that were still waiting."""
        gone = [rid for rid in request_ids if rid in self.pending]
        for rid in gone:
            del self.pending[rid]
            del self._ranks[rid]
        return gone

    def release(self, request_id: str, crashed: bool = False, now: float = 0.0) -> str | None:
        """A driver gives a slot back (`crashed`: the actor died under it). Returns the label."""
        actor = next((a for a in self.actors.values() if a.lease == request_id), None)
        if actor is None:
            return None
        actor.lease = actor.job = None
        actor.idle_since = now
        if crashed:  # Ray restarts it (models reloaded): a new life, granted once it answers
            actor.lives += 1
            actor.checking = True
        return actor.label

    def leave(self, job: str) -> tuple[list[str], list[str]]:
        """A job ends or its driver died: (its withdrawn requests, the labels it held, now
        being checked: a frame the driver left running must end before anyone gets them)."""
        withdrawn = self.withdraw([rid for rid, r in self.pending.items() if r.job == job])
        reclaimed = []
        for actor in self.actors.values():
            if actor.job == job:
                actor.lease = actor.job = None
                actor.checking = True
                reclaimed.append(actor.label)
        self.jobs.pop(job, None)
        return withdrawn, reclaimed

    # -- actor health
    def restarted(self, label: str) -> None:
        """The pool restarted a hung actor: a new life."""
        self.actors[label].lives += 1

    def checked(self, label: str, alive: bool, now: float = 0.0) -> Load | None:
        """An actor under check answered (or is permanently dead: replace it, same label)."""
        actor = self.actors.get(label)
        if actor is None:
            return None
        actor.checking = False
        actor.idle_since = now
        return None if alive else Load(label, actor.model_key)

    def idle(self, now: float, seconds: float) -> list[str]:
        """Free actors unused for `seconds` while nothing waits: removed, to be stopped."""
        if self.pending:
            return []
        stale = [a.label for a in self.actors.values() if a.free and now - a.idle_since >= seconds]
        for label in stale:
            del self.actors[label]
        return stale

    # -- granting
    def schedule(self, now: float = 0.0) -> list[Grant | Load | Refuse]:
        """Grant free actors to waiting requests, best request first. A request takes a free
        actor holding its model set; else a new actor while the pool is below its size; else,
        if no usable actor holds its model set, a free actor reloaded for it (one whose
        models nobody waits for, if any); else it waits. A request that no actor may ever
        take (all blocklisted for its job or failed its frame) is refused."""
        actions: list[Grant | Load | Refuse] = []
        for request in self.ranked():
            usable = [a for a in sorted(self.actors.values(), key=lambda a: a.label)
                      if a.label not in request.blocked and a.incarnation not in request.tried]
            free = [a for a in usable if a.free]
            same = [a for a in free if a.model_key == request.model_key]
            if same:
                actor = same[0]
            elif len(self.actors) < self.size:
                actor = PoolActor(f"actor-{next(self._labels)}", request.model_key, idle_since=now)
                self.actors[actor.label] = actor
                actions.append(Load(actor.label, actor.model_key))
            elif any(a.model_key == request.model_key for a in usable):
                continue  # an actor holding its models is busy: wait for it
            elif free:
                wanted = {r.model_key for r in self.pending.values()}
                actor = min(free, key=lambda a: (a.model_key in wanted, a.idle_since))
                actor.model_key = request.model_key
                actor.lives += 1  # a new process
                actions.append(Load(actor.label, actor.model_key))
            else:
                if not any(a.label not in request.blocked and not a.free for a in self.actors.values()):
                    # nobody busy may come back as a new life: no actor will ever take it
                    self.withdraw([request.request_id])
                    actions.append(Refuse(request.request_id,
                                          "every actor of the pool is blocklisted for this job or failed this frame"))
                continue
            actor.lease, actor.job = request.request_id, request.job
            self.withdraw([request.request_id])
            actions.append(Grant(request.request_id, actor.label, actor.lives, actor.model_key))
        return actions


RENDER_ACTOR_RUNTIME_ENV = {"env_vars": {"RAY_worker_niceness": "0"}}
"""Ray lowers its worker processes' priority (nice 15); a render actor is the node's main
work, so it keeps normal priority and does not yield to whatever else runs on the node
(merged with the job's runtime_env). On an idle 2-core VM no speed difference was measurable."""


def _start_actor(config: PoolConfig, models, board_name: str | None, label: str):
    """A RenderActor for `models` (`board_name`: its driver's board; None in the shared pool)."""
    return RenderActor.options(
        num_gpus=config.gpus_per_actor, num_cpus=config.cpus_per_actor, max_restarts=config.max_restarts,
        max_task_retries=0, runtime_env=RENDER_ACTOR_RUNTIME_ENV,
    ).remote(models, config.device, config.threads, board_name, label, config.renderer_class)


# ---------------------------------------------------------------------------- the pool actor
class _FarmPool:
    """The cluster's shared actor pool (detached, named); see the module docstring."""

    def __init__(self, config: PoolConfig):
        self.config = config
        self.book = PoolBook(config.size)
        self.handles: dict[str, object] = {}
        self.specs: dict[str, object] = {}  # model key -> ModelSetSpec
        self.waiting: dict[str, asyncio.Future] = {}
        self.boards: dict[str, object] = {}  # driver token -> its ProgressBoard (alive while the driver is)
        self.grants: deque = deque(maxlen=2000)  # (time, job, label, request id), for inspection
        self.reclaimed: list[str] = []  # driver tokens found dead
        self.abandoned: dict[str, list[dict]] = {}  # per actor: frames it stopped for a dead driver
        self._watchdog: asyncio.Task | None = None

    def __repr__(self) -> str:
        return f"FarmPool({len(self.book.actors)}/{self.book.size} actors)"

    # -- driver calls
    async def configure(self, config: PoolConfig) -> dict:
        """Adopt `config` if the pool is empty (no actors, no jobs); returns the settings in force."""
        if not self.book.actors and not self.book.jobs:
            self.config = config
            self.book.size = config.size
        return {"size": self.book.size, "gpus_per_actor": self.config.gpus_per_actor,
                "device": self.config.device, "threads": self.config.threads}

    async def join(self, job: str, priority: int, board) -> None:
        """Register a job; `board` (the driver's ProgressBoard) tells the pool its driver lives."""
        self._start_watchdog()
        self.boards.setdefault(driver_token(job), board)
        self.book.join(job, priority)

    async def acquire(self, request: SlotRequest, models, releases=()) -> dict:
        """Give back `releases` ((request id, crashed) pairs), then wait for a slot for
        `request`: {"label", "lives", "model_key", "handle"}, or {"withdrawn": True}, or
        {"refused": reason}."""
        self._start_watchdog()
        self.specs.setdefault(request.model_key, models)
        future = asyncio.get_running_loop().create_future()
        self.waiting[request.request_id] = future
        self._release(releases)
        self.book.request(request)
        self._schedule()
        return await future

    async def release(self, releases) -> None:
        self._release(releases)
        self._schedule()

    async def withdraw(self, request_ids) -> None:
        for rid in self.book.withdraw(request_ids):
            self._answer(rid, {"withdrawn": True})
        self._schedule()

    async def leave(self, token: str) -> None:
        """A driver is done: drop its waiting requests and take back whatever it holds."""
        self._leave(token)
        self._schedule()

    async def snapshot(self) -> dict:
        return {
            "size": self.book.size,
            "actors": {a.label: {"model_key": a.model_key, "lives": a.lives, "job": a.job, "checking": a.checking}
                       for a in self.book.actors.values()},
            "jobs": {job: j.priority for job, j in self.book.jobs.items()},
            "pending": [(r.job, r.request_id) for r in self.book.ranked()],
            "grants": list(self.grants),
            "reclaimed": list(self.reclaimed),
            "abandoned": [dict(entry, actor=label) for label, entries in self.abandoned.items() for entry in entries],
        }

    async def stop(self) -> None:
        """Stop every actor and forget every job (the pool itself stays until killed)."""
        for rid in list(self.waiting):
            self._answer(rid, {"withdrawn": True})
        for handle in self.handles.values():
            ray.kill(handle)
        self.handles.clear()
        self.book = PoolBook(self.book.size)
        self.boards.clear()

    # -- inside
    def _answer(self, request_id: str, value: dict) -> None:
        future = self.waiting.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(value)

    def _release(self, releases) -> None:
        for request_id, crashed in releases:
            label = self.book.release(request_id, crashed, time.monotonic())
            if label is not None and crashed:
                self._check_later(label)

    def _leave(self, token: str) -> None:
        for job in [j for j in self.book.jobs if driver_token(j) == token]:
            withdrawn, reclaimed = self.book.leave(job)
            for rid in withdrawn:
                self._answer(rid, {"withdrawn": True})
            for label in reclaimed:
                self._check_later(label)
        for rid, request in list(self.book.pending.items()):  # requests of jobs never joined
            if driver_token(request.job) == token:
                self.book.withdraw([rid])
                self._answer(rid, {"withdrawn": True})
        self.boards.pop(token, None)

    def _schedule(self) -> None:
        for action in self.book.schedule(time.monotonic()):
            if isinstance(action, Load):
                self._load(action.label, action.model_key)
            elif isinstance(action, Grant):
                job = self.book.actors[action.label].job
                self.grants.append((time.time(), job, action.label, action.request_id))
                self._answer(action.request_id, {"label": action.label, "lives": action.lives,
                                                 "model_key": action.model_key, "handle": self.handles[action.label]})
            else:
                self._answer(action.request_id, {"refused": action.reason})

    def _load(self, label: str, model_key: str) -> None:
        old = self.handles.pop(label, None)
        if old is not None:
            ray.kill(old)
        self.handles[label] = _start_actor(self.config, self.specs[model_key], None, label)

    def _check_later(self, label: str) -> None:
        asyncio.get_running_loop().create_task(self._check(label))

    async def _check(self, label: str) -> None:
        """Wait until the actor answers (a restart has reloaded its models, or a frame left
        running by a dead driver has ended); restart it if it hangs; replace it if dead."""
        while True:
            handle = self.handles.get(label)
            if handle is None:
                return
            try:
                info = await asyncio.wait_for(handle.info.remote(), timeout=self.config.drain_seconds)
                self.abandoned[label] = info.get("abandoned", [])
                alive = True
            except asyncio.TimeoutError:
                ray.kill(handle, no_restart=False)
                self.book.restarted(label)
                continue
            except ActorUnavailableError:
                await asyncio.sleep(0.5)
                continue
            except RayActorError:
                alive = False
            break
        if self.handles.get(label) is not handle:
            return
        action = self.book.checked(label, alive, time.monotonic())
        if action is not None:
            self._load(action.label, action.model_key)
        self._schedule()

    def _start_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Every `check_seconds`: reclaim what dead drivers held; stop long-idle actors."""
        while True:
            await asyncio.sleep(self.config.check_seconds)
            try:
                await self._reap_dead_drivers()
                for label in self.book.idle(time.monotonic(), self.config.idle_seconds):
                    handle = self.handles.pop(label, None)
                    if handle is not None:
                        ray.kill(handle)
                self._schedule()
            except Exception as error:  # keep watching; the next round tries again
                print(f"FarmPool: watchdog: {type(error).__name__}: {error}")

    async def _reap_dead_drivers(self) -> None:
        tokens = list(self.boards)
        answers = await asyncio.gather(
            *(asyncio.wait_for(self.boards[t].alive.remote(), timeout=max(10.0, self.config.check_seconds))
              for t in tokens), return_exceptions=True)
        for token, answer in zip(tokens, answers):
            dead = isinstance(answer, ActorDiedError) or (
                isinstance(answer, RayActorError) and not isinstance(answer, ActorUnavailableError))
            if dead and token in self.boards:
                self.reclaimed.append(token)
                self._leave(token)


FarmPool = ray.remote(num_cpus=0)(_FarmPool)


def connect_pool(config: PoolConfig, name: str = POOL_NAME, namespace: str = POOL_NAMESPACE):
    """The cluster's pool (created with `config` if there is none); returns (handle, settings in force)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    handle = FarmPool.options(
        name=name, namespace=namespace, lifetime="detached", get_if_exists=True, max_restarts=5,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote(config)
    return handle, ray.get(handle.configure.remote(config))


def stop_pool(name: str = POOL_NAME, namespace: str = POOL_NAMESPACE) -> bool:
    """Stop the pool's actors and the pool itself; False if there is none."""
    try:
        handle = ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    ray.get(handle.stop.remote())
    ray.kill(handle)
    return True


def describe_pool(snapshot: dict) -> list[str]:
    """`farm queue`'s lines for a `FarmPool.snapshot()`: actors, then jobs in grant order."""
    actors, jobs = snapshot.get("actors", {}), snapshot.get("jobs", {})
    waiting: dict[str, int] = {}
    for job, _ in snapshot.get("pending", []):
        waiting[job] = waiting.get(job, 0) + 1
    lines = [f"shared pool: {len(actors)} actor(s) of {snapshot.get('size', '?')}"]
    for label in sorted(actors):
        actor = actors[label]
        state = "checking" if actor["checking"] else (f"rendering for {actor['job']}" if actor["job"] else "idle")
        lines.append(f"  {label}  lives {actor['lives']}  {state}  models {actor['model_key']}")
    order = list(dict.fromkeys([job for job, _ in snapshot.get("pending", [])] + sorted(jobs)))
    lines.append("jobs (grant order):" if order else "no jobs")
    for job in order:
        lines.append(f"  {job}  priority {jobs.get(job, '?')}  waiting frames {waiting.get(job, 0)}")
    return lines


def show_pool(name: str = POOL_NAME, namespace: str = POOL_NAMESPACE) -> int:
    """Print the running cluster's pool (`python -m farm.pool`, run as a job by `farm queue`)."""
    ray.init(address="auto", namespace=namespace, logging_level="ERROR", log_to_driver=False)
    try:
        handle = ray.get_actor(name, namespace=namespace)
    except ValueError:
        print("no shared pool on this cluster yet (the first `farm submit --address` job starts it)")
        return 0
    print("\n".join(describe_pool(ray.get(handle.snapshot.remote(), timeout=30))))
    return 0


# ---------------------------------------------------------------------------- actor sources
class OwnedActors:
    """The session's own RenderActors (the embedded local default)."""

    board_per_call = False

    def __init__(self, session, config: PoolConfig, board_name: str):
        self.session = session
        self.config = config
        self.board_name = board_name
        self.pings: dict[object, str] = {}  # restarted actors we wait to hear from
        self._next_label = 0

    def _new_slot(self, models, label: str | None = None) -> Slot:
        if label is None:
            label = f"actor-{self._next_label}"
            self._next_label += 1
        handle = _start_actor(self.config, models, self.board_name, label)
        slot = Slot(label, handle, models.key, models)
        self.session.slots[label] = slot
        return slot

    def prepare(self) -> None:
        """Grow the pool to its size; reload an idle actor for a model set no actor holds."""
        slots, specs = self.session.slots, self.session._model_specs
        wanted = self.session.scheduler.waiting_model_keys()
        if not wanted:
            return
        keys = sorted(wanted)
        while len(slots) < self.config.size:
            self._new_slot(specs[keys[len(slots) % len(keys)]])
        held = {slot.model_key for slot in slots.values()}
        for key in keys:
            if key in held:
                continue
            idle = [s for s in slots.values() if s.busy is None and s.model_key not in wanted]
            if not idle:
                break
            slot = idle[0]
            ray.kill(slot.handle)
            del slots[slot.label]
            self._new_slot(specs[key], slot.label)
            held.add(key)

    def assign(self) -> list:
        """(task, slot) pairs to start now: each free actor's best task."""
        starts = []
        for slot in list(self.session.slots.values()):
            if slot.busy is not None:
                continue
            task = self.session.scheduler.next_for(slot.label, slot.model_key, slot.incarnation)
            if task is not None:
                starts.append((task, slot))
        return starts

    def waitables(self) -> list:
        return list(self.pings)

    def answered(self, ref) -> None:
        """A restarted actor answered its ping; one still restarting is asked again; one
        dead for good is replaced by a fresh actor, which also takes work only once it
        answers (it may never be placed: its node's GPU is gone, say)."""
        label = self.pings.pop(ref)
        slot = self.session.slots.get(label)
        if slot is None or slot.busy is not ref:
            return
        slot.busy = None
        try:
            ray.get(ref)
        except ActorUnavailableError:  # restarting (a node lost, models reloading): not dead
            self._ping(slot)
        except RayActorError:
            del self.session.slots[label]
            fresh = self._new_slot(slot.models, label)
            fresh.lives = slot.lives
            self._ping(fresh)

    def _ping(self, slot: Slot) -> None:
        """Ask the actor for its info; it takes no work until the answer comes."""
        ping = slot.handle.info.remote()
        slot.busy = ping
        self.pings[ping] = slot.label

    def ended(self, slot: Slot, crashed: bool) -> None:
        """A render call ended. After a crash: ping the actor (Ray restarts it, reloading
        models); it takes no work until the ping answers."""
        if not crashed:
            return
        slot.lives += 1
        if self.session.slots.get(slot.label) is slot:
            self._ping(slot)

    def live_actors(self) -> dict[str, tuple[str, str]]:
        return {s.label: (s.model_key, s.incarnation) for s in self.session.slots.values()}

    def cancel(self, job_id: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def shutdown(self) -> None:
        for slot in self.session.slots.values():
            ray.kill(slot.handle)
        self.session.slots.clear()


class PooledActors:
    """Leases from the cluster's shared FarmPool: one request per ready frame, at most the
    pool's size outstanding; a slot goes back with the driver's next request."""

    board_per_call = True

    def __init__(self, session, config: PoolConfig, name: str = POOL_NAME, namespace: str = POOL_NAMESPACE):
        self.session = session
        self.pool, settings = connect_pool(config, name, namespace)
        self.capacity = int(settings["size"])
        self.token = f"{ray.get_runtime_context().get_job_id()}-{os.urandom(4).hex()}"
        self.requests: dict[object, tuple[str, object]] = {}  # acquire ref -> (request id, task)
        self.granted: list[tuple[object, Slot]] = []  # grants to start
        self.leases: dict[str, str] = {}  # label -> request id, while this driver holds it
        self.releases: list[tuple[str, bool]] = []  # slots to give back with the next call
        self.joined: set[str] = set()
        self.withdrawn: set[str] = set()
        self._sequence = itertools.count()

    def _key(self, job_id: str) -> str:
        return f"{self.token}/{job_id}"  # see driver_token

    def prepare(self) -> None:
        """Join new jobs; withdraw the waiting requests of jobs that ended (cancelled, failed)."""
        for job_id, job in self.session.jobs.items():
            if job_id not in self.joined:
                self.pool.join.remote(self._key(job_id), job.priority, self.session._board)
                self.joined.add(job_id)
        states = self.session.scheduler.jobs
        self._withdraw(lambda task: states[task.job].cancelled or states[task.job].error)

    def _withdraw(self, wanted) -> None:
        """Withdraw the waiting requests whose task is `wanted` (each at most once)."""
        stale = [rid for rid, task in self.requests.values() if rid not in self.withdrawn and wanted(task)]
        if stale:
            self.pool.withdraw.remote(stale)
            self.withdrawn.update(stale)

    def assign(self) -> list:
        """Grants to start now; requests for newly ready frames (with the slots to give back)."""
        scheduler = self.session.scheduler
        starts = []
        for task, slot in self.granted:
            state = scheduler.jobs[task.job]
            if state.cancelled or state.error:  # ended since the grant: the slot goes straight back
                scheduler.abandoned(task)
                self.ended(slot, crashed=False)
            else:
                starts.append((task, slot))
        self.granted = []
        tasks = []
        while len(self.requests) + len(self.leases) + len(tasks) < self.capacity:
            task = scheduler.next_task()
            if task is None:
                break
            tasks.append(task)
        releases, self.releases = self.releases, []
        for task in tasks:
            blocked, tried = scheduler.exclusions(task)
            rid = f"{self.token}:{next(self._sequence)}"
            request = SlotRequest(rid, self._key(task.job), self.session.jobs[task.job].priority, task.model_key,
                                  blocked, tried)
            ref = self.pool.acquire.remote(request, task.frame.render.models, releases)
            releases = []
            self.requests[ref] = (rid, task)
        if releases:
            self.pool.release.remote(releases)
        return starts

    def waitables(self) -> list:
        return list(self.requests)

    def answered(self, ref) -> None:
        """The pool answered a request: a grant (started next turn), withdrawn or refused."""
        rid, task = self.requests.pop(ref)
        self.withdrawn.discard(rid)
        scheduler = self.session.scheduler
        try:
            answer = ray.get(ref)
        except RayActorError:  # the pool itself was lost (Ray restarts it empty): ask again
            scheduler.abandoned(task)
            self.joined.clear()
            return
        if "refused" in answer:
            scheduler.unschedulable(task, answer["refused"])
            return
        if "withdrawn" in answer:
            scheduler.abandoned(task)
            return
        state = scheduler.jobs[task.job]
        label = answer["label"]
        if state.cancelled or state.error or not scheduler.allowed(task, label, incarnation(label, answer["lives"])):
            scheduler.abandoned(task)  # back to the queue, asked for again with today's exclusions
            self.releases.append((rid, False))
            return
        slot = Slot(label, answer["handle"], answer["model_key"], task.frame.render.models, lives=answer["lives"],
                    lease=rid)
        self.session.slots[label] = slot
        self.leases[label] = rid
        self.granted.append((task, slot))

    def ended(self, slot: Slot, crashed: bool) -> None:
        """A render call ended: the slot goes back with the next request (the pool checks a
        crashed actor before granting it again)."""
        if self.session.slots.get(slot.label) is slot:
            del self.session.slots[slot.label]
        rid = self.leases.pop(slot.label, None)
        if rid is not None:
            self.releases.append((rid, crashed))

    def live_actors(self) -> dict[str, tuple[str, str]]:
        return {}  # the pool refuses a request no actor may take (see PoolBook.schedule)

    def cancel(self, job_id: str) -> None:
        self._withdraw(lambda task: task.job == job_id)

    def flush(self) -> None:
        releases, self.releases = self.releases, []
        if releases:
            self.pool.release.remote(releases)

    def shutdown(self) -> None:
        """Stop frames still running for this driver and leave the pool (slots go back)."""
        for slot in self.session.slots.values():
            if slot.busy is not None:
                ray.cancel(slot.busy)
        self.flush()
        try:
            ray.get(self.pool.leave.remote(self.token), timeout=30)
        except (RayActorError, ray.exceptions.GetTimeoutError):
            pass  # the pool notices this driver's end by itself
        self.session.slots.clear()


if __name__ == "__main__":
    raise SystemExit(show_pool())
