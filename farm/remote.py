"""Submitting to a Ray cluster through the Jobs API, and following, listing, stopping jobs.

`farm submit SCENE --address ADDR` stages the scene and the local files it references
(init image, image prompts, input video) into a small working directory, submits
`python -m farm.cli submit scene.yaml --in-cluster --out OUT` as a Ray job, prints the job
id and the dashboard URL, and follows the job's log unless --detach. The job's driver runs
on the cluster (farm.submit, connecting with address="auto") and leases actors from the
cluster's shared pool (farm.pool: one priority queue for all jobs; `farm cancel` stops the
job with SIGTERM, which gives its actors back); outputs go to OUT on the
head node (a shared path in a real cluster) or, written directly by the job's driver, to an
fsspec URI (s3://, gs://...: passed through untouched), recorded in the job's metadata for
`farm fetch`. Ray's token auth is used as Ray configures it (RAY_AUTH_MODE=token and
~/.ray/auth_token); nothing here turns it off.
"""

from __future__ import annotations

import datetime as _dt
import os
import posixpath
import shutil
import sys
import tempfile
import time
from pathlib import Path

from farm.scene import Scene, load_scene
from farm.terminal import printable
from farm.yamlio import dump_yaml

APP_TAG = "disco-farm"
QUERY_TAG = "disco-farm-query"  # short read-only jobs (farm queue); not listed by farm list
QUERY_SECONDS = 60
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
SUBMIT_RETRY_SECONDS = 120


class RemoteError(ValueError):
    pass


def resolve_address(address: str | None) -> str | None:
    """--address, else RAY_ADDRESS / RAY_API_SERVER_ADDRESS, else None (local embedded Ray)."""
    return address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or None


def address_source(address: str) -> str:
    """' (from $RAY_ADDRESS)' when the address came from the environment, not --address."""
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        if os.environ.get(name) == address:
            return f" (from ${name})"
    return ""


def auth_headers() -> dict[str, str]:
    """Ray's token, from where Ray keeps it (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token), sent explicitly so it does not depend on Ray's cached auth mode."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        try:
            token = path.read_text().strip()
        except OSError:
            token = ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(address: str):
    from urllib.parse import urlsplit

    from ray.job_submission import JobSubmissionClient

    where = f"cannot reach the Ray cluster at {address}{address_source(address)}"
    try:
        parts = urlsplit(address if "://" in address else f"http://{address}")
        parts.port  # ray:// waited 30 s on 'x:y'
    except ValueError:
        raise RemoteError(f"{where}: its port is not a number from 0 to 65535") from None
    if not parts.hostname:
        raise RemoteError(f"{where}: no host name in the address")
    headers = auth_headers()
    if headers and parts.scheme in ("http", "") and not _is_loopback(parts.hostname):
        print(f"farm: warning: Ray's token goes to {parts.hostname} over plain http, readable on the way; "
              "reach the dashboard through `ray dashboard cluster.yaml` (127.0.0.1) or https", file=sys.stderr)
    try:
        return JobSubmissionClient(address, headers=headers)
    except Exception as error:  # connection refused, auth refused, bad address: one line
        message = " ".join(str(error).split())[:300]
        raise RemoteError(f"cannot reach the Ray cluster at {address}{address_source(address)}: {message}") from None


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard_url(address: str) -> str:
    return address if address.startswith("http") else f"http://{address.split('://')[-1].split(':')[0]}:8265"


def stage_scene(scene: Scene, overrides: dict, staging: Path) -> Path:
    """Copy the scene and its input files into `staging`, paths rewritten to stay relative."""
    data = dict(scene.raw)
    data.update(overrides)
    # a random seed is chosen by the job, which reuses the one recorded in its --out (resume)
    data["seed"] = "random" if scene.seed_was_random else scene["seed"]
    inputs = staging / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)

    def copy(path: str) -> str:
        source = Path(path)
        if not source.is_absolute():
            source = scene.base_dir / source
        target = inputs / source.name
        if target.exists() and target.read_bytes() != source.read_bytes():
            target = inputs / f"{len(list(inputs.iterdir()))}-{source.name}"
        shutil.copy2(source, target)
        return f"inputs/{target.name}"

    for name in ("init_image", "video_init_path"):
        if scene[name]:
            data[name] = copy(scene[name])
    if scene["image_prompts"].keys:
        data["image_prompts"] = {
            start: [f"{copy(p.text)}:{p.weight:g}" for p in prompts] for start, prompts in scene["image_prompts"].keys
        }
    data.pop("set_seed", None)
    path = staging / "scene.yaml"
    path.write_text(dump_yaml(data))
    return path


def submit_remote(args, address: str) -> int:
    """Each scene becomes its own Ray job (several scenes: each in --out/<scene name>)."""
    status = 0
    for scene_path in args.scenes:
        status = max(status, _submit_one(args, address, scene_path, several=len(args.scenes) > 1))
    return status


def _submit_one(args, address: str, scene_path: str, several: bool = False) -> int:
    from farm.cli import _parse_set
    from farm.storage import join_location

    overrides = _parse_set(args.set)
    scene = load_scene(scene_path, overrides=overrides)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    if args.out:
        out = str(join_location(args.out, scene["name"])) if several else args.out
    else:
        out = f"~/disco-farm/renders/{scene['name']}/{stamp}"
    jobs = client(address)
    with tempfile.TemporaryDirectory(prefix="disco-farm-job-") as staging:
        stage_scene(scene, overrides, Path(staging))
        priority = args.priority if args.priority is not None else scene["priority"]
        entrypoint = ["python", "-m", "farm.cli", "submit", "scene.yaml", "--in-cluster", "--out", out,
                      "--priority", str(priority)]
        if args.frames:
            entrypoint += ["--frames", args.frames]
        if args.actors:
            entrypoint += ["--actors", str(args.actors)]
        if args.device:
            entrypoint += ["--device", args.device]
        submission_id = f"{_safe(scene['name'])}-{stamp}-{os.urandom(2).hex()}"
        deadline = time.monotonic() + SUBMIT_RETRY_SECONDS
        while True:
            try:
                job_id = jobs.submit_job(
                    entrypoint=" ".join(_quote(part) for part in entrypoint),
                    submission_id=submission_id,
                    runtime_env={"working_dir": staging, "env_vars": {"PYTHONUNBUFFERED": "1",
                                                                      "DISCO_FARM_JOB_ID": submission_id}},
                    metadata={"app": APP_TAG, "scene": scene["name"], "out": out},
                )
                break
            except Exception as error:
                message = " ".join(str(error).split())
                # a head node that has just started has no job agent yet: Ray says to try again
                if "try again later" in message and time.monotonic() < deadline:
                    time.sleep(2)
                    continue
                raise RemoteError(f"job submission refused: {message[:300]}") from None
    print(f"job: {job_id}")
    print(f"dashboard: {dashboard_url(address)}")
    print(f"outputs (on the cluster): {out}")
    if args.detach:
        print(f"follow it with: farm logs {job_id} --follow --address {address}")
        return 0
    try:
        return follow(jobs, job_id)
    except KeyboardInterrupt:  # Ctrl-C stops following, not the job
        print(f"farm: stopped following; job {job_id} keeps running on the cluster "
              f"(stop it with: farm cancel {job_id} --address {address})", file=sys.stderr)
        return 130


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40] or "scene"


def _quote(part: str) -> str:
    import shlex

    return shlex.quote(part)


def follow(jobs, job_id: str) -> int:
    """Stream a job's log until it ends; exit 0 only if it succeeded."""
    import asyncio

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except Exception:  # the log stream can end with the job; the status below is the answer
        pass
    status = wait_terminal(jobs, job_id, timeout=30)
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def wait_terminal(jobs, job_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    status = str(jobs.get_job_status(job_id).value)
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        status = str(jobs.get_job_status(job_id).value)
    return status


def _job_info(jobs, job_id: str):
    try:
        return jobs.get_job_info(job_id)
    except Exception:
        raise RemoteError(f"no job '{job_id}' on this cluster (see: farm list)") from None


def cmd_status(args) -> int:
    address = _need_address(args)
    jobs = client(address)
    if args.job:
        info = _job_info(jobs, args.job)
        meta = info.metadata or {}
        message = " ".join((info.message or "").split())
        message = message if len(message) <= 500 else f"{message[:500]}... (farm logs {args.job} has it all)"
        print(printable(f"{args.job}: {info.status.value}" + (f" ({message})" if message else "")))
        print(printable(f"scene: {meta.get('scene', '?')}  outputs: {meta.get('out', '?')}"))
        return 0
    return cmd_list(args)


def cmd_list(args) -> int:
    address = _need_address(args)
    rows = []
    for info in client(address).list_jobs():
        meta = info.metadata or {}
        if meta.get("app") != APP_TAG:
            continue
        started = _dt.datetime.fromtimestamp((info.start_time or 0) / 1000, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        rows.append((started, info.submission_id or info.job_id, info.status.value, meta.get("scene", ""), meta.get("out", "")))
    for started, job_id, status, scene, out in sorted(rows):
        print(printable(f"{job_id}  {status:9}  {started}  {scene}  {out}"))
    if not rows:
        print("no Disco Farm jobs on this cluster")
    return 0


def cmd_logs(args) -> int:
    jobs = client(_need_address(args))
    _job_info(jobs, args.job)
    if args.follow:
        return follow(jobs, args.job)
    sys.stdout.write(jobs.get_job_logs(args.job))
    return 0


def cmd_cancel(args) -> int:
    jobs = client(_need_address(args))
    info = _job_info(jobs, args.job)
    if info.status.is_terminal():
        print(f"job {args.job}: already {info.status.value}; nothing to cancel")
        return 0
    jobs.stop_job(args.job)
    status = wait_terminal(jobs, args.job, timeout=30)
    print(f"job {args.job}: {status}; finished frames are kept")
    return 0


def cmd_queue(args) -> int:
    """The cluster's shared pool: read by a short job (`python -m farm.pool`) on the cluster."""
    jobs = client(_need_address(args))
    try:
        job_id = jobs.submit_job(entrypoint="python -m farm.pool", metadata={"app": QUERY_TAG},
                                 runtime_env={"env_vars": {"PYTHONUNBUFFERED": "1"}})
    except Exception as error:
        raise RemoteError(f"cannot ask the cluster: {' '.join(str(error).split())[:300]}") from None
    status = wait_terminal(jobs, job_id, timeout=QUERY_SECONDS)
    logs = jobs.get_job_logs(job_id)
    if status != "SUCCEEDED":
        last = next((line for line in reversed(logs.splitlines()) if line.strip()), "no output")
        raise RemoteError(f"reading the pool failed ({status}): {last[:300]}")
    sys.stdout.write(logs)
    return 0


def cmd_fetch(args) -> int:
    """Copy a job's output folder (a path shared with this machine, or an fsspec URI) to DIR;
    JOB may also be the URI itself (no cluster needed)."""
    from farm.storage import is_uri

    if is_uri(args.job):
        source = args.job
    else:
        jobs = client(_need_address(args))
        info = _job_info(jobs, args.job)
        source = (info.metadata or {}).get("out")
        if not source:
            raise RemoteError(f"job {args.job} has no output folder recorded")
    target = Path(args.dir)
    skipped: list[str] = []
    count = fetch_outputs(source, target, skipped)
    extra = f" ({len(skipped)} skipped: see above)" if skipped else ""
    print(f"fetched {count} files into {target}{extra}")
    return 0


def _local_filesystem(fs) -> bool:
    from fsspec.implementations.local import LocalFileSystem

    return isinstance(fs, LocalFileSystem)


def fetch_outputs(source: str, target: Path, skipped: list[str] | None = None) -> int:
    """Copy every file of an output folder or URI (hidden top-level names left out) into
    `target`; returns how many files were copied.

    Nothing is read from outside the source, nothing is written outside `target`: from a
    local folder (a path or file://) a symlink is followed only when it resolves to a file
    inside the source folder; a wrapped filesystem (simplecache::file://...) copies no
    symlinks; a key whose path would leave the source (`..`) or whose destination would
    leave `target` (`..`, a symlink already in `target`) is skipped. Each skipped entry is
    reported in one line on stderr and appended to `skipped` (its relative path)."""
    import fsspec

    from farm.storage import OutputLocationError, is_uri, open_filesystem

    if is_uri(source):
        try:
            fs, root = open_filesystem(source)
        except OutputLocationError as error:
            raise RemoteError(f"cannot open {error}") from None
    else:
        fs, root = fsspec.core.url_to_fs(os.path.expanduser(source))
    if not fs.exists(root):
        if is_uri(source):  # nothing there (a URI is the same from everywhere): no copy command helps
            raise RemoteError(f"nothing at {source}: no render wrote there (check the location)")
        raise RemoteError(
            f"the output folder {source} is not reachable from here: use a shared path or an object-store URI "
            f"for --out, or copy it with: ray rsync-down cluster.yaml {source} {target}")
    local = _local_filesystem(fs)
    real_root = os.path.realpath(root) if local else None
    target.mkdir(parents=True, exist_ok=True)
    real_target = target.resolve()

    def skip(name: str, why: str) -> None:
        if skipped is not None:
            skipped.append(name)
        print(f"farm fetch: skipped {printable(name)}: {why}", file=sys.stderr, flush=True)

    count = 0
    for path, info in sorted(fs.find(root, detail=True).items()):
        relative = posixpath.relpath(path, root)
        if relative.startswith("..") or relative.startswith("/"):
            skip(path, "its key leaves the source folder ('..')")
            continue
        if relative.split("/")[0].startswith("."):
            continue  # hidden top-level names: lock files, temporary names
        from_path = path
        if local:
            real = os.path.realpath(path)
            if os.path.commonpath([real, real_root]) != real_root:
                skip(relative, "a symlink to outside the source folder (not followed)")
                continue
            if not os.path.isfile(real):
                skip(relative, "not a file (a symlink to a folder, a device, ...)")
                continue
            from_path = real  # the checked file, not the link (which could be changed)
        elif isinstance(info, dict) and (info.get("islink") or info.get("type") == "link"):
            skip(relative, "a symlink (followed only from a local folder or file://)")
            continue
        destination = target / relative
        if not destination.resolve().is_relative_to(real_target) or destination.resolve() == real_target:
            skip(relative, f"it would be written outside {target}")
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(from_path, str(destination))
        count += 1
    return count


def _need_address(args) -> str:
    address = resolve_address(getattr(args, "address", None))
    if not address:
        raise RemoteError("no cluster address: pass --address http://HOST:8265 or set RAY_ADDRESS")
    return address
