"""The `farm ui` web app: a read-only live view of the runs under an output root.

Routes (GET only; HEAD is answered too):
  /                      the page (newest run selected)
  /job/<id>              the page with run <id> selected (<id> is the run folder, relative)
  /api/jobs              {"root": ..., "jobs": [summary, ...]} newest first
  /api/jobs/<id>         one run in detail (progress, image/video URLs, errors, settings)
  /files/<id>/<file>     a picture or video of the output root (never outside it, never a hidden file)
  /static/ui.js|ui.css   the page's script and style

A run folder follows docs/outputs.md. The page polls the JSON endpoints every couple of
seconds, so it follows running jobs by itself. Nothing here writes to the output root.

Requests must name this machine in their Host header (127.0.0.1, localhost or [::1], with
the port listened on or without a port; or the address the request came in on): anything
else is refused with 403, so a web page on another origin cannot read the renders through
DNS rebinding. A damaged status.json, plan.json, manifest.jsonl line or scene.yaml (not
parseable, nested too deeply, ...) is reported as a problem of that run, never an error
page.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import re
import threading
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable
from urllib.parse import quote, urlsplit

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (FileResponse, HTMLResponse, JSONResponse, PlainTextResponse,
                                 Response)
from starlette.routing import Route

RUN_MARKERS = ("status.json", "plan.json", "manifest.jsonl", "scene.yaml")
MAX_RUN_DEPTH = 3            # renders/<scene>/<stamp>/ is depth 2; allow one more level
FINAL_VIDEOS = ("video.mp4", "video.webm", "video.gif")
VIDEO_SUFFIXES = (".mp4", ".webm", ".gif", ".mov", ".m4v")
SERVED_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                ".gif": "image/gif", ".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime",
                ".webm": "video/webm"}
"""What /files/ serves, with the type it is served as: pictures and videos only (an .html,
.svg or .js file under the root would run as this page's own content)."""
ACTIVE_STATES = ("queued", "running")
MAX_GALLERY = 60             # finished stills shown when there is no contact sheet yet
MAX_ERRORS = 50
MAX_TEXT = 2000              # characters kept of one error message
MAX_SCENE_TEXT = 100_000     # characters of scene.yaml shown
MAX_NESTING = 64             # deepest nesting accepted in a status/plan/scene/manifest value
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     b"media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
     b"frame-ancestors 'none'"),
]


# --------------------------------------------------------------------------- paths


def clean_relative(text: str) -> PurePosixPath | None:
    """``text`` as a relative path of plain names, or None.

    Refused: empty, absolute, NUL or backslash, empty segments, and any segment starting
    with a dot (``..``, ``.``, hidden and temporary files such as ``.video.mp4.x.tmp``).
    """
    if not text or "\x00" in text or "\\" in text or text.startswith("/"):
        return None
    parts = text.split("/")
    if any(not part or part.startswith(".") for part in parts):
        return None
    return PurePosixPath(*parts)


def resolve_inside(base: Path, relative: str, want_dir: bool = False) -> Path | None:
    """The existing file (or folder) ``base/relative`` after following symlinks, or None
    when the path is not clean, lands outside ``base`` (``base`` must be resolved) or lands
    on a hidden name inside it (a visible symlink to ``.lock`` is refused like ``.lock``)."""
    clean = clean_relative(relative)
    if clean is None:
        return None
    try:
        target = (base / clean).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if target == base or not target.is_relative_to(base):
        return None
    if any(part.startswith(".") for part in target.relative_to(base).parts):
        return None
    return target if (target.is_dir() if want_dir else target.is_file()) else None


def _is_run_folder(folder: Path) -> bool:
    return any((folder / marker).is_file() for marker in RUN_MARKERS)


def find_runs(root: Path, max_depth: int = MAX_RUN_DEPTH) -> list[str]:
    """Run folders under ``root`` (relative POSIX paths), found without following
    symlinked folders or entering hidden ones or the inside of a run folder."""
    found: list[str] = []

    def walk(folder: Path, prefix: str, depth: int) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            relative = f"{prefix}{entry.name}"
            if _is_run_folder(Path(entry.path)):
                found.append(relative)
            elif depth < max_depth:
                walk(Path(entry.path), relative + "/", depth + 1)

    walk(root, "", 1)
    return found


# --------------------------------------------------------------------------- values


def finite_number(value: Any) -> float | int | None:
    """An int or finite float from JSON, else None (NaN, inf, strings, bools)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _int_or_none(value: Any) -> int | None:
    number = finite_number(value)
    return int(number) if number is not None else None


def _short_text(value: Any, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def safe_link(url: Any) -> str | None:
    """``url`` when it is an absolute http(s) URL (never ``javascript:`` and the like)."""
    if not isinstance(url, str):
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    return url.strip() if parts.scheme in ("http", "https") and parts.netloc else None


def _current_list(value: Any) -> list[dict]:
    out = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict) and _int_or_none(item.get("index")) is not None:
            out.append({"index": _int_or_none(item.get("index")),
                        "step": _int_or_none(item.get("step")),
                        "steps": _int_or_none(item.get("steps"))})
    return out


def _error_list(value: Any) -> list[dict]:
    out = []
    for item in (value if isinstance(value, list) else [])[:MAX_ERRORS]:
        if isinstance(item, dict):
            out.append({"index": _int_or_none(item.get("index")),
                        "actor": _short_text(item.get("actor"), 200),
                        "message": _short_text(item.get("message"))})
        else:
            out.append({"index": None, "actor": None, "message": _short_text(item)})
    return out


def _prompt_text(prompts: Any) -> str:
    parts = []
    for prompt in prompts if isinstance(prompts, list) else []:
        if isinstance(prompt, dict):
            weight = prompt.get("weight")
            parts.append(f"{prompt.get('text', '')}:{weight:g}" if isinstance(weight, (int, float))
                         else str(prompt.get("text", "")))
        else:
            parts.append(str(prompt))
    return " | ".join(parts)


def plan_summary(plan: dict) -> list[list[str]]:
    """The few settings worth a glance, as [label, value] rows, from a plan.json record."""
    frames = plan.get("frames") if isinstance(plan.get("frames"), list) else []
    animation = plan.get("animation") if isinstance(plan.get("animation"), dict) else {}
    mode = animation.get("mode")
    stills = mode in (None, "None")
    rows = [["name", str(plan.get("name", ""))],
            ["mode", "stills" if stills else f"{mode} animation"],
            ["images" if stills else "frames", str(len(frames))],
            ["seed", str(plan.get("seed", ""))]]
    first = frames[0] if frames and isinstance(frames[0], dict) else {}
    render = first.get("render") if isinstance(first.get("render"), dict) else {}
    if render:
        rows.append(["size", f"{render.get('width')}×{render.get('height')}"])
        sampler = render.get("sampler") if isinstance(render.get("sampler"), dict) else {}
        if sampler:
            rows.append(["sampler", f"{sampler.get('mode')}, {sampler.get('steps')} steps, "
                                    f"skip {sampler.get('skip_steps')}"])
        models = render.get("models") if isinstance(render.get("models"), dict) else {}
        if models:
            clip = models.get("clip_models")
            rows.append(["diffusion model", str(models.get("diffusion_model"))])
            rows.append(["CLIP models", ", ".join(map(str, clip)) if isinstance(clip, list)
                         else str(clip)])
        guidance = render.get("guidance") if isinstance(render.get("guidance"), dict) else {}
        if "clip_guidance_scale" in guidance:
            rows.append(["clip guidance scale", f"{guidance['clip_guidance_scale']:g}"
                         if isinstance(guidance["clip_guidance_scale"], (int, float))
                         else str(guidance["clip_guidance_scale"])])
    if not stills:
        rows.append(["fps", str(animation.get("fps"))])
        rows.append(["video format", str(animation.get("video_format"))])
    shown, previous = 0, None
    for position, frame in enumerate(frames):
        render = frame.get("render") if isinstance(frame, dict) else None
        text = _prompt_text(render.get("text_prompts")) if isinstance(render, dict) else ""
        if text and text != previous:
            index = frame.get("index", position)
            rows.append([f"prompts from {'image' if stills else 'frame'} {index}", text])
            shown += 1
            if shown == 8:
                break
        previous = text
    return rows


SCENE_KEYS = ("name", "animation_mode", "width_height", "steps", "skip_steps", "seed",
              "n_batches", "max_frames", "diffusion_model", "clip_models",
              "clip_guidance_scale", "text_prompts")


def scene_summary(scene: dict) -> list[list[str]]:
    """[label, value] rows from scene.yaml, for a run that has no plan.json yet."""
    rows = []
    for key in SCENE_KEYS:
        if key in scene:
            value = scene[key]
            rows.append([key.replace("_", " "), value if isinstance(value, str)
                         else json.dumps(value, default=str)])
    return rows


# --------------------------------------------------------------------------- reading


class _ByStat:
    """Values computed from a file, recomputed only when its mtime or size changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[Path, str], tuple[int, int, Any]] = {}

    def get(self, path: Path, what: str, compute: Callable[[Path], Any]) -> Any:
        stat = path.stat()
        key = (path, what)
        with self._lock:
            cached = self._values.get(key)
        if cached is not None and cached[:2] == (stat.st_mtime_ns, stat.st_size):
            return cached[2]
        value = compute(path)
        with self._lock:
            self._values[key] = (stat.st_mtime_ns, stat.st_size, value)
        return value


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Damaged(ValueError):
    """A file of a run that is there but cannot be used (not parseable, too deep, ...)."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return _short_text(text, 300)


def _check_shape(value: Any, max_nodes: int | None = None) -> Any:
    """``value`` when its nesting is at most MAX_NESTING deep (and, with ``max_nodes``, it
    has at most that many containers and values: YAML aliases can repeat a part without
    end), else Damaged. Iterative, so a deep value cannot overflow the stack here."""
    stack = [(value, 1)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if max_nodes is not None and nodes > max_nodes:
            raise Damaged("too many values (YAML aliases repeating a part?)")
        if isinstance(item, dict):
            children = list(item.keys()) + list(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = list(item)
        else:
            continue
        if depth >= MAX_NESTING and children:
            raise Damaged(f"nested more than {MAX_NESTING} levels deep")
        stack.extend((child, depth + 1) for child in children)
    return value


def _parse_json(text: str) -> Any:
    """The JSON value of ``text``; Damaged for anything that is not usable JSON (a syntax
    error, deep nesting that ends in RecursionError, a huge integer, ...)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise Damaged(f"nested more than {MAX_NESTING} levels deep") from None
    except Exception as exc:  # JSONDecodeError, ValueError of a huge integer, ...
        raise Damaged(_one_line(exc)) from None
    return _check_shape(value)


def _manifest_lines(path: Path) -> list[dict]:
    lines = []
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = _parse_json(line)
            except Damaged:
                continue  # a torn or hand-edited line: not a finished frame
            if isinstance(record, dict) and isinstance(record.get("file"), str):
                lines.append(record)
    return lines


def _read_json(path: Path) -> tuple[Any, str | None]:
    """(value, None), or (None, why it is damaged); OSError when it cannot be read."""
    data = path.read_bytes()
    try:
        return _parse_json(data.decode("utf-8")), None
    except UnicodeDecodeError as exc:
        return None, _one_line(exc)
    except Damaged as exc:
        return None, str(exc)


def _read_yaml(path: Path) -> tuple[str, Any, str | None]:
    """(text, value, None), or (text, None, why it is damaged); OSError when unreadable.
    Only a safe loader is used: the file is data, never code."""
    from farm.yamlio import YamlError, load_yaml

    text = path.read_text(encoding="utf-8", errors="replace")
    try:  # as the farm reads scenes (YAML 1.2 numbers, bounded size and nesting)
        value = load_yaml(text).data
    except YamlError as exc:
        return text, None, "not valid YAML: " + _one_line(exc)
    except RecursionError:
        return text, None, f"nested more than {MAX_NESTING} levels deep"
    except Exception as exc:  # a constructor's ValueError (a date like 2024-13-45), ...
        return text, None, "cannot be read as YAML: " + _one_line(exc)
    try:
        return text, _check_shape(value, max_nodes=10 * len(text) + 10_000), None
    except Damaged as exc:
        return text, None, str(exc)


class OutputRoot:
    """Reads run folders under one output root; every path goes through resolve_inside."""

    def __init__(self, root: Path) -> None:
        self.shown_root = str(root)
        self.root = Path(root).resolve()
        self._cache = _ByStat()

    # ----- files
    def file(self, relative: str) -> Path | None:
        return resolve_inside(self.root, relative)

    def run_folder(self, job: str) -> Path | None:
        clean = clean_relative(job)
        if clean is None or len(clean.parts) > MAX_RUN_DEPTH:
            return None
        folder = resolve_inside(self.root, job, want_dir=True)
        return folder if folder is not None and _is_run_folder(folder) else None

    def _url(self, job: str, folder: Path, relative: str) -> dict | None:
        path = resolve_inside(folder, relative)
        if path is None:
            return None
        try:
            version = path.stat().st_mtime_ns
        except OSError:  # removed since it was resolved
            return None
        return {"file": relative, "url": f"/files/{quote(job)}/{quote(relative)}?v={version}"}

    def _cached(self, path: Path, what: str, compute: Callable[[Path], Any]) -> Any:
        return self._cache.get(path, what, compute)

    # ----- pieces of a run
    def _status(self, folder: Path) -> tuple[dict, str | None]:
        path = resolve_inside(folder, "status.json")
        if path is None:
            return {}, None
        try:
            status, damage = self._cached(path, "json", _read_json)
        except OSError as exc:
            return {}, f"status.json is unreadable: {_one_line(exc)}"
        if damage is not None:
            return {}, f"status.json is unreadable: {damage}"
        if not isinstance(status, dict):
            return {}, "status.json is not a JSON object"
        return status, None

    def _manifest(self, folder: Path) -> list[dict]:
        path = resolve_inside(folder, "manifest.jsonl")
        if path is None:
            return []
        try:
            return self._cached(path, "manifest", _manifest_lines)
        except OSError:
            return []

    def _verifies(self, folder: Path, relative: str, expected: Any) -> bool:
        """True when ``expected`` is a sha256 (64 lower-case hex digits) and the file
        ``folder/relative`` exists with exactly that sha256."""
        if not isinstance(expected, str) or not SHA256_HEX.fullmatch(expected):
            return False
        path = resolve_inside(folder, relative)
        if path is None:
            return False
        try:
            return self._cached(path, "sha256", _sha256) == expected
        except OSError:
            return False

    def _finished(self, job: str, folder: Path, record: dict) -> dict | None:
        """The image of a manifest line when it is finished as docs/outputs.md says: its
        file exists and has the line's sha256 (a line without one is not finished), and for
        a turbo frame with "chain_sha256" its chain/ image verifies too."""
        if not self._verifies(folder, record["file"], record.get("sha256")):
            return None
        if "chain_sha256" in record:
            index = _int_or_none(record.get("index"))
            if index is None or index < 0 or not self._verifies(
                    folder, f"chain/{index:06d}.png", record["chain_sha256"]):
                return None
        link = self._url(job, folder, record["file"])
        if link is None:
            return None
        link["index"] = _int_or_none(record.get("index"))
        link["finished_at"] = _short_text(record.get("finished_at"), 64)
        return link

    def _latest(self, job: str, folder: Path, manifest: list[dict]) -> dict | None:
        for record in reversed(manifest[-50:]):
            finished = self._finished(job, folder, record)
            if finished is not None:
                return finished
        return None

    def _plan(self, folder: Path) -> tuple[dict | None, str | None]:
        path = resolve_inside(folder, "plan.json")
        if path is None:
            return None, None
        try:
            plan, damage = self._cached(path, "json", _read_json)
        except OSError as exc:
            return None, f"plan.json is unreadable: {_one_line(exc)}"
        if damage is not None:
            return None, f"plan.json is unreadable: {damage}"
        return (plan, None) if isinstance(plan, dict) else (None, "plan.json is not an object")

    def _scene(self, folder: Path) -> tuple[str | None, dict | None, str | None]:
        path = resolve_inside(folder, "scene.yaml")
        if path is None:
            return None, None, None
        try:
            text, scene, damage = self._cached(path, "yaml", _read_yaml)
        except OSError as exc:
            return None, None, f"scene.yaml is unreadable: {_one_line(exc)}"
        if damage is not None:
            return None, None, f"scene.yaml is {damage}"
        return text, scene if isinstance(scene, dict) else None, None

    def _video(self, job: str, folder: Path, status: dict) -> dict | None:
        names = list(FINAL_VIDEOS)
        named = status.get("video")
        if isinstance(named, str) and named.lower().endswith(VIDEO_SUFFIXES):
            names.insert(0, named)
        for name in names:
            link = self._url(job, folder, name)
            if link is not None:
                link.update(final=True, kind="image" if name.lower().endswith(".gif") else "video")
                return link
        link = self._url(job, folder, "preview.mp4")
        if link is not None:
            link.update(final=False, kind="video")
        return link

    def _previews(self, job: str, folder: Path, state: str, current: list[dict]) -> list[dict]:
        if state not in ACTIVE_STATES:
            return []
        previews = []
        for item in current:
            link = self._url(job, folder, f"previews/{item['index']:06d}.png")
            if link is not None:
                previews.append({**link, **item})
        return previews

    # ----- public
    def summary(self, job: str) -> dict | None:
        """The run's state and progress in brief (the job list)."""
        folder = self.run_folder(job)
        if folder is None:
            return None
        status, problem = self._status(folder)
        manifest = self._manifest(folder)
        done = _int_or_none(status.get("done"))
        if done is None:
            indices = {_int_or_none(record.get("index")) for record in manifest}
            done = len(indices - {None})
        total = _int_or_none(status.get("total"))
        if total is None:
            plan, _ = self._plan(folder)
            frames = plan.get("frames") if plan else None
            total = len(frames) if isinstance(frames, list) else None
        state = status.get("state") if isinstance(status.get("state"), str) else "unknown"
        started = status.get("started_at")
        if not isinstance(started, str):
            started = datetime.fromtimestamp(folder.stat().st_mtime, timezone.utc) \
                .strftime("%Y-%m-%dT%H:%M:%SZ")
        name = status.get("name") if isinstance(status.get("name"), str) else job.split("/")[0]
        return {
            "id": job, "name": name, "state": state,
            "kind": status.get("kind") if isinstance(status.get("kind"), str) else None,
            "done": done, "total": total, "failed": _int_or_none(status.get("failed")) or 0,
            "eta_seconds": finite_number(status.get("eta_seconds")),
            "started_at": started,
            "updated_at": _short_text(status.get("updated_at"), 64),
            "finished_at": _short_text(status.get("finished_at"), 64),
            "error": _short_text(status.get("error")),
            "problem": problem,
            "latest": self._latest(job, folder, manifest),
        }

    def detail(self, job: str) -> dict | None:
        """Everything the page shows about one run."""
        summary = self.summary(job)
        if summary is None:
            return None
        folder = self.run_folder(job)
        status, _ = self._status(folder)
        manifest = self._manifest(folder)
        current = _current_list(status.get("current"))
        plan, plan_problem = self._plan(folder)
        scene_text, scene, scene_problem = self._scene(folder)
        if plan is not None:
            settings = plan_summary(plan)
        elif scene is not None:
            settings = scene_summary(scene)
        else:
            settings = []
        kind = summary["kind"] or (
            "image" if any(record.get("kind") == "image" for record in manifest[:1]) else None)
        gallery = []
        contact_sheet = self._url(job, folder, "contact_sheet.png")
        if kind == "image" and contact_sheet is None:
            for record in manifest[-MAX_GALLERY:]:
                finished = self._finished(job, folder, record)
                if finished is not None:
                    gallery.append(finished)
        problems = [p for p in (summary["problem"], plan_problem, scene_problem) if p]
        return {
            **summary, "kind": kind,
            "current": current,
            "previews": self._previews(job, folder, summary["state"], current),
            "errors": _error_list(status.get("errors")),
            "video": self._video(job, folder, status),
            "contact_sheet": contact_sheet,
            "gallery": gallery,
            "dashboard_url": safe_link(status.get("dashboard_url")),
            "job_id": _short_text(status.get("job_id"), 200),
            "settings": settings,
            "scene_yaml": _short_text(scene_text, MAX_SCENE_TEXT),
            "problems": problems,
        }

    @staticmethod
    def _unreadable(job: str, exc: Exception) -> dict:
        return {"id": job, "name": job.split("/")[0], "state": "unknown", "kind": None,
                "done": None, "total": None, "failed": 0, "eta_seconds": None,
                "started_at": "", "updated_at": None, "finished_at": None, "error": None,
                "problem": f"cannot read this run: {_one_line(exc)}", "latest": None}

    def _summary_or_problem(self, job: str) -> dict | None:
        """summary(job); should reading one run still fail in a way not foreseen above, that
        run is listed with the reason as its problem and the other runs are still shown."""
        try:
            return self.summary(job)
        except Exception as exc:  # noqa: BLE001 - one damaged run must not hide the others
            return self._unreadable(job, exc)

    def detail_or_problem(self, job: str) -> dict | None:
        """detail(job), or the run with only the reason it cannot be read (see above)."""
        try:
            return self.detail(job)
        except Exception as exc:  # noqa: BLE001
            summary = self._unreadable(job, exc)
            return {**summary, "current": [], "previews": [], "errors": [], "video": None,
                    "contact_sheet": None, "gallery": [], "dashboard_url": None,
                    "job_id": None, "settings": [], "scene_yaml": None,
                    "problems": [summary["problem"]]}

    def jobs(self) -> list[dict]:
        """Summaries of every run folder, newest first."""
        summaries = [s for s in map(self._summary_or_problem, find_runs(self.root))
                     if s is not None]
        summaries.sort(key=lambda s: (s["started_at"], s["id"]), reverse=True)
        return summaries


# --------------------------------------------------------------------------- web


class SecurityHeaders:
    """ASGI middleware: no MIME sniffing, no referrer, a strict content security policy."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


HOST_HEADER = re.compile(r"(\[[0-9a-f:.]+\]|[^:\[\]]+)(?::([0-9]{1,5}))?")


def host_name(name: str) -> str:
    """A host name compared case-insensitively, an IP address in its canonical form
    (``[0:0::1]`` and ``::1`` are both ``[::1]``)."""
    name = name.strip().lower()
    try:
        address = ipaddress.ip_address(name[1:-1] if name.startswith("[") else name)
    except ValueError:
        return name
    return f"[{address.compressed}]" if address.version == 6 else address.compressed


def host_allowed(host: str | None, server: Any, extra_names: Iterable[str] = ()) -> bool:
    """True when the Host header ``host`` names this machine for the server address
    ``server`` (the ASGI scope's (address, port) the request came in on).

    Accepted names: 127.0.0.1, localhost, [::1], the address the request came in on, and
    ``extra_names`` (the --host given); each with the port listened on or without a port.
    Anything else (a missing header, another name, another port) is refused: a page of
    another origin reaching this server through DNS rebinding sends its own name."""
    if not host:
        return False
    match = HOST_HEADER.fullmatch(host.strip().lower())
    if match is None:
        return False
    names = {host_name(name) for name in (*LOOPBACK_NAMES, *extra_names) if name}
    port = None
    if isinstance(server, (tuple, list)) and len(server) == 2:
        if isinstance(server[0], str) and server[0]:
            names.add(host_name(server[0]))
        port = server[1] if isinstance(server[1], int) else None
    if host_name(match.group(1)) not in names:
        return False
    return match.group(2) is None or port is None or int(match.group(2)) == port


class HostCheck:
    """ASGI middleware against DNS rebinding: a request whose Host header does not name
    this machine (see host_allowed) is answered 403 with a short plain-text body."""

    def __init__(self, app, extra_names: Iterable[str] = ()) -> None:
        self.app = app
        self.extra_names = tuple(extra_names)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            hosts = [value.decode("latin-1") for key, value in scope.get("headers", [])
                     if key.lower() == b"host"]
            host = hosts[0] if len(hosts) == 1 else None
            if not host_allowed(host, scope.get("server"), self.extra_names):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                response = PlainTextResponse(
                    "forbidden: the Host header does not name this machine "
                    "(open the page at 127.0.0.1 or localhost)\n", status_code=403)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class UIError(ValueError):
    """A bad `farm ui` setting (root folder, port, host)."""


def _static_text(name: str) -> str:
    return resources.files("farm.ui").joinpath("static", name).read_text(encoding="utf-8")


NO_STORE = {"cache-control": "no-store"}
STATIC_TYPES = {"ui.js": "text/javascript; charset=utf-8", "ui.css": "text/css; charset=utf-8"}


def create_app(root: Path, poll_seconds: float = 2.0,
               allowed_hosts: Iterable[str] = ()) -> Starlette:
    """The read-only web app over the runs under ``root`` (see the module docstring).

    ``allowed_hosts``: host names accepted in the Host header besides the loopback names
    and the address a request came in on (`farm ui --host NAME` passes NAME)."""
    root = Path(root)
    if not root.is_dir():
        raise UIError(f"output root {root} is not a folder")
    outputs = OutputRoot(root)
    page = _static_text("index.html").replace("{{poll_ms}}", str(int(poll_seconds * 1000)))
    static = {name: _static_text(name) for name in STATIC_TYPES}

    def index(request: Request) -> Response:
        return HTMLResponse(page, headers=NO_STORE)

    def job_page(request: Request) -> Response:
        found = outputs.run_folder(request.path_params["job"]) is not None
        return HTMLResponse(page, status_code=200 if found else 404, headers=NO_STORE)

    def api_jobs(request: Request) -> Response:
        return JSONResponse({"root": outputs.shown_root, "jobs": outputs.jobs()},
                            headers=NO_STORE)

    def api_job(request: Request) -> Response:
        detail = outputs.detail_or_problem(request.path_params["job"])
        if detail is None:
            return JSONResponse({"error": "no such run"}, status_code=404, headers=NO_STORE)
        return JSONResponse(detail, headers=NO_STORE)

    def files(request: Request) -> Response:
        relative = request.path_params["path"]
        media_type = SERVED_TYPES.get(PurePosixPath(relative).suffix.lower())
        path = outputs.file(relative) if media_type else None
        if path is None:
            return Response("not found\n", status_code=404, media_type="text/plain")
        return FileResponse(path, media_type=media_type,
                            headers={"cache-control": "no-cache", "content-security-policy": "sandbox"})

    def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in static:
            return Response("not found\n", status_code=404, media_type="text/plain")
        return Response(static[name], media_type=STATIC_TYPES[name],
                        headers={"cache-control": "no-cache"})

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/job/{job:path}", job_page, methods=["GET"]),
        Route("/api/jobs", api_jobs, methods=["GET"]),
        Route("/api/jobs/{job:path}", api_job, methods=["GET"]),
        Route("/files/{path:path}", files, methods=["GET"]),
        Route("/static/{name}", static_file, methods=["GET"]),
    ]
    return Starlette(routes=routes, middleware=[
        Middleware(SecurityHeaders),
        Middleware(HostCheck, extra_names=tuple(allowed_hosts)),
    ])
