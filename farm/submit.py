"""`farm submit` on the embedded local Ray (no --address): render in the foreground."""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from farm.output import OutputFolder
from farm.plan import resolve
from farm.scene import Scene, load_scene
from farm.storage import is_uri, join_location
from farm.terminal import printable
from farm.yamlio import YamlError, dump_yaml, load_yaml


class SubmitError(ValueError):
    pass


def default_out_dir(scene: Scene, base: Path = Path("renders")) -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return base / scene["name"] / stamp


def recorded_seed(out: Path | str | OutputFolder) -> int | None:
    """The seed an earlier, interrupted run in this folder (or at this URI) chose (for resuming 'random')."""
    folder = out if isinstance(out, OutputFolder) else OutputFolder(out)
    text = folder.read_text("scene.yaml")
    try:
        data = load_yaml(text).data if text is not None else None
    except YamlError:
        return None
    seed = data.get("seed") if isinstance(data, dict) else None
    return seed if isinstance(seed, int) else None


def prepare_job(scene_path: str, out: Path | str | None, overrides: dict, frames: range | None = None):
    """Load and resolve a scene, choose (or reuse) its output folder (a path or a URI),
    write scene.yaml; returns (scene, plan, folder, inputs, frames), ``frames`` ending at the
    plan's last frame (a video may give fewer than its probe counted)."""
    from farm.driver import JobInputs

    scene = load_scene(scene_path, overrides=overrides)
    folder = OutputFolder(out if is_uri(out) else Path(out) if out else default_out_dir(scene))
    if scene.seed_was_random and (seed := recorded_seed(folder)) is not None:
        scene = load_scene(scene_path, overrides={**overrides, "seed": seed})
    inputs = JobInputs()
    video_frames = None
    if scene["animation_mode"] == "Video Input":  # its frame count comes from the extracted video
        from animation.video import extract_frames

        folder.prepare()
        folder.claim()  # before anything is written: another submit into it is refused
        frames_dir = folder.scratch(".video-frames")
        width, height = scene["width_height"]
        nth = scene["extract_nth_frame"]  # only the frames the animation uses are decoded and written
        extracted = extract_frames(scene["video_init_path"], frames_dir, every_nth=nth, size=(width, height),
                                   max_frames=scene["max_frames"])
        video_frames = (len(extracted) - 1) * nth + 1  # the fewest video frames that give these
        inputs.video_frames_dir = frames_dir
    plan = resolve(scene, video_frames, input_digests(scene))
    if frames is not None:
        if frames.start >= len(plan.frames):  # a video that gave fewer frames than its probe counted
            raise SubmitError(f"--frames {frames.start}:{frames.stop}: selects nothing; the video gave "
                              f"{len(plan.frames)} frames (0 to {len(plan.frames) - 1})")
        frames = range(frames.start, min(frames.stop, len(plan.frames)))
        chosen = [plan.frames[i] for i in frames]
        on_disk = set(folder.finished(plan.frame_hashes))
        for frame in chosen:
            if frame.previous is not None and frame.previous not in frames and frame.previous not in on_disk:
                raise SubmitError(f"--frames {frames.start}:{frames.stop} starts inside a chain: frame "
                                  f"{frame.index} needs frame {frame.previous}; render it first")
    _load_inputs(scene, inputs)
    folder.prepare()  # after the checks: a refused --frames or an unreadable image writes nothing
    folder.claim()  # OutputBusy while another `farm submit` renders into it
    written = dict(scene.raw)
    written["seed"] = scene["seed"]
    folder.write_text("scene.yaml", dump_yaml(written))
    return scene, plan, folder, inputs, frames


def replaced_frames(folder: OutputFolder, plan, only: range | None = None) -> int:
    """Frames of this plan (of `only`, with --frames) that the folder holds from other
    settings (a changed scene, a different scene sent to the same --out): they will be
    rendered again and replaced."""
    hashes = plan.frame_hashes
    wanted = hashes.keys() if only is None else set(only) & hashes.keys()
    entries = [e for e in folder.manifest() if e.index in wanted]
    current = {e.index for e in entries if e.settings_hash == hashes[e.index]}
    return len({e.index for e in entries} - current)


def input_paths(scene: Scene) -> dict[str, Path]:
    """Each input file as the scene names it (what frame specs hold) -> its path."""
    paths = {}
    if scene["init_image"]:
        paths[scene["init_image"]] = Path(scene["init_image"])
    for _, prompts in scene["image_prompts"].keys:
        for prompt in prompts:
            path = Path(prompt.text)
            paths[prompt.text] = path if path.is_absolute() else scene.base_dir / path
    if scene["animation_mode"] == "Video Input":
        paths[scene["video_init_path"]] = Path(scene["video_init_path"])
    return paths


def input_digests(scene: Scene) -> dict[str, str]:
    """Each input file (as the scene names it) -> the sha256 of its contents, so that a
    resume re-renders the frames made from a file that was replaced under the same name."""
    digests = {}
    for name, path in input_paths(scene).items():
        stat = path.stat()
        digests[name] = _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    return digests


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file (cached per version: size and modification time)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _load_inputs(scene: Scene, inputs) -> None:
    from farm.inputs import load_image

    size = tuple(scene["width_height"])
    paths = input_paths(scene)
    if scene["init_image"]:
        inputs.init_image = load_image(paths[scene["init_image"]], size)
    for _, prompts in scene["image_prompts"].keys:
        for prompt in prompts:
            if prompt.text not in inputs.image_prompts:
                inputs.image_prompts[prompt.text] = _image_prompt(paths[prompt.text], size)


def _image_prompt(path: Path, frame_size: tuple[int, int]):
    """An image prompt at the size the renderer would resize it to (the same pixels: it
    keeps that size), so that a large photo is not sent to the actors with every frame."""
    import numpy as np
    from PIL import Image

    from engine.render import image_prompt_size
    from farm.inputs import load_image

    image = load_image(path)
    size = image_prompt_size(image.shape[1], image.shape[0], *frame_size)
    return image if size is None else np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))


def resume_line(kept: int, damaged: tuple[int, ...]) -> str:
    """What a resume found: frames verified and kept, and those recorded as finished whose
    file was missing or damaged (rendered again)."""
    line = f"resuming: {kept} finished frames verified and kept"
    if damaged:
        shown = ", ".join(map(str, damaged[:10])) + (f" and {len(damaged) - 10} more" if len(damaged) > 10 else "")
        line += f"; {len(damaged)} recorded as finished but missing or damaged, rendered again ({shown})"
    return line


class LocalRay(NamedTuple):
    temp_dir: str | None  # the folder made for Ray's session files (remove it after ray.shutdown)
    dashboard_url: str | None  # http://127.0.0.1:PORT, or None without a dashboard


LOOPBACK_NODE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for single-machine clusters: "0" makes the node's address 127.0.0.1, so
its servers (GCS, raylet, dashboard agent, the unauthenticated Prometheus metrics port)
listen on the loopback only; by default on Linux they listen on every interface."""


@contextlib.contextmanager
def loopback_only_node():
    """While Ray starts here: its node on 127.0.0.1 (`LOOPBACK_NODE`), for the processes it
    spawns (the environment) and for this one (Ray read the variable when imported)."""
    from ray._private import ray_constants

    previous_env, previous_flag = os.environ.get(LOOPBACK_NODE), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_NODE] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous_flag
        if previous_env is None:
            os.environ.pop(LOOPBACK_NODE, None)
        else:
            os.environ[LOOPBACK_NODE] = previous_env


RAY_FOLDER_PREFIX = "disco-farm-ray-"
STALE_RAY_FOLDER_SECONDS = 600
"""A Ray folder of ours this old that no process names is a killed run's (SIGKILL leaves it)."""


def process_table() -> dict[int, tuple[int, str]]:
    """{process id: (parent id, command line)} of the processes /proc shows (Linux; best effort)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    parent = int(handle.read().rsplit(b")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    table[int(entry)] = (parent, handle.read().decode("utf-8", "replace"))
    return table


def remove_stale_ray_folders(parent: str | None = None, now: float | None = None) -> list[str]:
    """Remove the Ray folders killed embedded runs left in ``parent`` (the temporary folder):
    this user's, named RAY_FOLDER_PREFIX..., untouched for STALE_RAY_FOLDER_SECONDS, that no
    running process names on its command line (a live Ray's processes all do). Linux
    (/proc); best effort. Returns the folders removed."""
    parent = parent or tempfile.gettempdir()
    now = time.time() if now is None else now
    try:
        candidates = [entry.path for entry in os.scandir(parent)
                      if entry.name.startswith(RAY_FOLDER_PREFIX) and entry.is_dir(follow_symlinks=False)
                      and entry.stat(follow_symlinks=False).st_uid == os.getuid()
                      and now - entry.stat(follow_symlinks=False).st_mtime > STALE_RAY_FOLDER_SECONDS]
    except OSError:
        return []
    if not candidates or not os.path.isdir("/proc"):
        return []
    named = {folder for _, command in process_table().values() for folder in candidates if folder in command}
    removed = [folder for folder in candidates if folder not in named]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


RAY_START_ATTEMPTS = 2
"""Ray gives its raylet 30 s (fixed) to register: on a machine too busy for that, the
embedded Ray is started once more before the submit gives up."""


class RayStartFailed(RuntimeError):
    """The embedded Ray did not start (a one-line reason)."""


def start_local_ray(num_gpus: int | None = None, num_cpus: int | None = None, dashboard: bool = True) -> LocalRay:
    """An embedded Ray on this machine only: every server of it, the dashboard included,
    listens on 127.0.0.1 (`loopback_only_node`), with Ray's token auth left on as Ray sets
    it. Its temp_dir is None with $DISCO_FARM_RAY_TMP (kept) or when Ray was running already.
    Raises RayStartFailed when Ray fails to start RAY_START_ATTEMPTS times."""
    import ray

    if ray.is_initialized():
        return LocalRay(None, None)
    chosen = os.environ.get("DISCO_FARM_RAY_TMP")
    if chosen:
        chosen = os.path.abspath(os.path.expanduser(chosen))
        try:
            os.makedirs(chosen, exist_ok=True)
        except OSError as error:
            raise SubmitError(f"DISCO_FARM_RAY_TMP={chosen}: cannot make Ray's folder there: "
                              f"{error.strerror or error}") from None
    else:
        remove_stale_ray_folders()
    options = dict(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=dashboard)
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        # Ray makes its session folders world-writable: inside a folder only this user may enter
        owned = None if chosen else tempfile.mkdtemp(prefix=RAY_FOLDER_PREFIX)
        temp_dir = chosen or os.path.join(owned, "r")  # short: Ray's socket paths must stay under 107 bytes
        try:
            context = _init_local_ray(temp_dir, owned, options)
            break
        except Exception as error:  # Ray's own failures: a server that did not start or register in time
            reason = printable(" ".join(str(error).split())[:300]) or type(error).__name__
            if attempt == RAY_START_ATTEMPTS:
                raise RayStartFailed(f"the embedded Ray did not start ({RAY_START_ATTEMPTS} tries): {reason}") from None
            print(f"farm: Ray did not start ({reason}); trying once more", file=sys.stderr)
    address = getattr(context, "dashboard_url", None)
    return LocalRay(owned, f"http://{address}" if dashboard and address else None)


def _init_local_ray(temp_dir: str, owned: str | None, options: dict):
    """ray.init for `start_local_ray`, once. Ctrl-C waits for Ray to be up (one raised
    inside ray.init could crash its shutdown); on any failure nothing of this try is left:
    Ray stopped, its servers too (a node that failed to start leaves them running), and
    ``owned`` (this try's folder) removed."""
    import ray

    interrupted = []
    previous_int = signal.signal(signal.SIGINT, lambda signum, frame: interrupted.append(signum))
    try:
        with loopback_only_node():
            context = ray.init(
                **options, dashboard_host="127.0.0.1", _temp_dir=temp_dir, log_to_driver=True,
                configure_logging=False,
                runtime_env={"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0")}},
            )
    except BaseException as error:
        if ray.is_initialized():  # Ray's processes may be up already: stopped before their folder goes
            ray.shutdown()
        stop_descendants_naming(temp_dir)
        if owned:
            shutil.rmtree(owned, ignore_errors=True)
        if isinstance(error, SystemExit) and error.code == signal.SIGTERM:  # Ray's own SIGTERM handler, mid-start
            _note_terminated()
            raise Terminated from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous_int)
    if interrupted:
        if ray.is_initialized():
            ray.shutdown()
        if owned:
            shutil.rmtree(owned, ignore_errors=True)
        raise KeyboardInterrupt
    return context


def stop_descendants_naming(text: str) -> list[int]:
    """SIGKILL this process's descendants whose command line contains ``text`` (Linux,
    /proc; best effort). Returns their process ids."""
    if not os.path.isdir("/proc"):
        return []
    table = process_table()
    parents = {pid: parent for pid, (parent, _) in table.items()}

    def descends(pid: int) -> bool:
        seen = set()
        while pid in parents and pid not in seen:
            seen.add(pid)
            pid = parents[pid]
            if pid == os.getpid():
                return True
        return False

    stopped = [pid for pid, (_, command) in table.items() if text in command and descends(pid)]
    for pid in stopped:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return stopped


class Terminated(KeyboardInterrupt):
    """SIGTERM, stopping a local render as Ctrl-C does (exit 143 instead of 130)."""


terminated = False
"""Set once SIGTERM arrived (a Ctrl-C after it still ends the run as terminated)."""


def _note_terminated() -> None:
    global terminated
    terminated = True


def _interrupt(signum, frame) -> None:
    _note_terminated()
    raise Terminated


@contextlib.contextmanager
def _uninterrupted(active: bool):
    """Ctrl-C and SIGTERM ignored for the few seconds the actors and Ray take to stop."""
    if not active:
        yield
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def local_actor_layout(actors: int | None, device: str | None = None,
                       in_cluster: bool = False) -> tuple[int, float, int | None]:
    """(actor count, GPUs per actor, torch threads per actor) for this machine, or for the
    cluster a job runs in: there `--device cuda` asks for GPU actors even while the cluster
    has none yet (the autoscaler adds GPU nodes for them), `--actors` of them."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if in_cluster and not gpus and device and device.startswith("cuda"):
        count = actors or 1
        print(f"farm: the cluster has no GPU yet: asking for {count} GPU actor(s) (the autoscaler adds nodes "
              "for them)", file=sys.stderr)
        return count, 1.0, None
    if in_cluster and gpus and actors and actors > gpus and device and device.startswith("cuda"):
        return actors, 1.0, None  # more GPU actors than GPUs up now: the autoscaler adds the rest
    if gpus:
        return _at_most(actors, gpus, "GPUs"), 1.0, None
    count = _at_most(actors, int(resources.get("CPU", 1)) or 1, "CPUs") if actors else 1
    threads = max(1, (os.cpu_count() or 1) // count)
    return count, 0.0, threads


def _at_most(actors: int | None, available: int, what: str) -> int:
    """--actors N on this machine: each actor takes a GPU (or a CPU without GPUs); more
    actors than that could never start, and frames sent to them would wait for ever."""
    if actors is None:
        return available
    if actors > available:
        print(f"farm: --actors {actors}: this machine has {available} {what} (one per actor); "
              f"using {available}", file=sys.stderr)
        return available
    return actors


class _Bars:
    """Terminal progress: frames done of total, the current frame's sampler steps, ETA."""

    def __init__(self):
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bars = {}

    def __call__(self, session) -> None:
        for job_id, job in session.jobs.items():
            state = session.scheduler.jobs[job_id]
            bar = self.bars.get(job_id)
            if bar is None:
                unit = "frame" if job.plan.is_animation else "image"
                bar = self.bars[job_id] = self._tqdm(total=len(job.plan.output_indices), desc=job.plan.name,
                                                     unit=unit, file=sys.stderr, dynamic_ncols=True)
            done = len(job.plan.output_indices & state.done)  # film frames (not segment renders)
            changed = bar.n != done
            bar.n = done
            current = [f"#{i}:{r.get('step', 0)}/{r.get('steps', 0)}"
                       for (j, i), r in sorted(session.progress.items()) if j == job_id]
            eta = session.eta_seconds(job)
            postfix = " ".join(current)
            if eta is not None:
                postfix += f" eta {eta:.0f}s"
            if changed or postfix != getattr(bar, "_last_postfix", None):
                bar._last_postfix = postfix
                bar.set_postfix_str(postfix, refresh=False)
                bar.refresh()

    def close(self):
        for bar in self.bars.values():
            bar.close()


def submit_local(args) -> int:
    """Render one or more scenes on an embedded local Ray (or, in a cluster job, on its
    cluster); several scenes share the actors, by priority, then in the order given."""
    from farm.cli import _parse_range, _parse_set, _video_frames
    from farm.driver import RenderJob, RenderSession

    overrides = _parse_set(args.set)
    jobs = []
    for scene_path in args.scenes:
        scene_probe = load_scene(scene_path, overrides=overrides)
        frames = None
        if args.frames:
            from farm.plan import frame_count

            frames = _parse_range(args.frames, frame_count(scene_probe, _video_frames(scene_probe)))
        out = None
        if args.out:
            out = args.out if is_uri(args.out) else Path(os.path.expanduser(args.out))
        if out is not None and len(args.scenes) > 1:
            out = join_location(out, scene_probe["name"])
        try:
            scene, plan, folder, inputs, frames = prepare_job(scene_path, out, overrides, frames)
        except OSError as error:  # a read-only, full or impossible location: name it
            where = f"--out {args.out}" if args.out else f"output folder {error.filename or ''}".rstrip()
            raise SubmitError(f"{where}: cannot write there: {error.strerror or error}") from None
        if (replaced := replaced_frames(folder, plan, frames)):
            print(f"farm: {plan.name}: {replaced} finished {'frames' if plan.is_animation else 'images'} in "
                  f"{folder.root} were rendered with other settings (the scene changed?) and will be rendered "
                  "again", file=sys.stderr)
        priority = args.priority if args.priority is not None else scene["priority"]
        job_id = plan.name if plan.name not in {j[0].job_id for j in jobs} else f"{plan.name}-{len(jobs)}"
        jobs.append((RenderJob(job_id, plan, folder, inputs, priority=priority), frames))
        print(f"farm: {job_id}: {len(plan.output_frames)} {'frames' if plan.is_animation else 'images'} "
              f"(priority {priority}) into {folder.root}", file=sys.stderr)
    import ray

    in_cluster = getattr(args, "in_cluster", False)
    # locally, SIGTERM (`timeout`, systemd, docker stop) stops as Ctrl-C does, from Ray's start
    # on (ray.init puts in handlers of its own: ours goes back after it); a cluster job keeps
    # Ray's handling (`farm cancel`)
    previous_term = None if in_cluster else signal.signal(signal.SIGTERM, _interrupt)
    bars, session, temp_dir = _Bars(), None, None
    try:
        if in_cluster:
            ray.init(address="auto", configure_logging=False)  # inside a Ray job: join its cluster
        else:
            local_ray = start_local_ray(dashboard=not getattr(args, "no_dashboard", False))
            temp_dir = local_ray.temp_dir
            signal.signal(signal.SIGTERM, _interrupt)
        count, gpus_per_actor, threads = local_actor_layout(getattr(args, "actors", None), args.device, in_cluster)
        # a cluster job leases actors from the cluster's shared pool (farm.pool): one queue, by
        # priority, for all separately submitted jobs; the embedded local Ray has its own actors
        from farm.pool import POOL_NAME

        session = RenderSession(actors=count, gpus_per_actor=gpus_per_actor, device=args.device, threads=threads,
                                on_update=bars, pool=POOL_NAME if in_cluster else None)
        session.dashboard_url = None if in_cluster else local_ray.dashboard_url  # for status.json and farm ui
        session.cluster_job_id = os.environ.get("DISCO_FARM_JOB_ID") if in_cluster else None
        for job, frames in jobs:
            session.add(job, only=frames)
            if job.reused or job.damaged_at_start:
                print(f"farm: {job.job_id}: {resume_line(job.reused, job.damaged_at_start)}", file=sys.stderr)
        results = session.run()
    except KeyboardInterrupt:  # before the render ran (run() says cancelled itself): say so too
        if session is not None:
            session.mark_cancelled()
        raise
    finally:
        bars.close()
        with _uninterrupted(not in_cluster):  # a second Ctrl-C broke Ray's shutdown with a traceback
            if session is not None:
                session.shutdown()
            if not in_cluster and ray.is_initialized():
                ray.shutdown()
            if temp_dir is not None:
                shutil.rmtree(temp_dir, ignore_errors=True)  # Ray's session files: logs, sockets
            for job, _ in jobs:
                job.out.release()
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
    failed = 0
    for job, _ in jobs:
        folder, plan = job.out, job.plan
        status = folder.read_json("status.json") or {}
        if results[job.job_id] != "succeeded":
            failed += 1
            print(f"farm: {job.job_id} {results[job.job_id]}: {printable(str(status.get('error') or 'see status.json'))}",
                  file=sys.stderr)
            print(f"farm: finished frames are kept in {folder.root}; submit again with --out {folder.root} "
                  "to resume", file=sys.stderr)
            continue
        kind = "frames" if plan.is_animation else "images"
        prefix = f"{job.job_id}: " if len(jobs) > 1 else ""
        print(f"{prefix}{kind}: {folder.url(kind)}")
        if status.get("video"):
            print(f"{prefix}video: {folder.url(status['video'])}")
        if status.get("contact_sheet"):
            print(f"{prefix}contact sheet: {folder.url(status['contact_sheet'])}")
    return 1 if failed else 0
