"""`farm ui`: the JSON API, file serving (never outside the output root) and the command.

The output root is built in the layout of docs/outputs.md with real PNGs, a real plan.json
from farm.plan and a real H.264 mp4 from animation.video.stitch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

import starlette.testclient as starlette_testclient  # needs httpx (the dev extra)
import uvicorn

from animation.video import stitch  # noqa: E402
from farm.plan import plan_record, resolve  # noqa: E402
from farm.scene import load_scene  # noqa: E402
from farm.ui.app import (UIError, clean_relative, create_app, finite_number,  # noqa: E402
                         host_allowed, plan_summary, resolve_inside, safe_link)
from farm.ui.command import bind_socket, register  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMOKE_SCENE = (REPO / "scenes" / "smoke.yaml").read_text()
STILLS_SCENE = """\
name: stills
diffusion_model: tiny
clip_models: ["tiny-vit::random"]
width_height: [64, 64]
seed: 3
steps: 10
skip_steps: 0
n_batches: 4
text_prompts: {0: ["a quiet harbour at night:2"]}
"""
RUNNING = "smoke/20261125-192000"
FINISHED = "smoke/20261125-180000"
FAILED = "stills/20261125-170000"
SHEET = "stills/20261125-160000"


# --------------------------------------------------------------------------- output root


def picture(seed: int, size: int = 64) -> np.ndarray:
    """A colourful, seed-dependent RGB test image (uint8)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = seed * 0.9
    red = 0.5 + 0.5 * np.sin(6.0 * x + phase)
    green = 0.5 + 0.5 * np.sin(5.0 * y + 1.7 * phase)
    blue = 0.5 + 0.5 * np.sin(7.0 * (x + y) - phase)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_png(path: Path, seed: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(picture(seed)).save(temporary)
    os.replace(temporary, path)
    return path.read_bytes()


def add_finished(run: Path, kind: str, index: int, seed: int | None = None) -> Path:
    """Write images/NNNNNN.png or frames/NNNNNN.png and its manifest line."""
    relative = f"{'images' if kind == 'image' else 'frames'}/{index:06d}.png"
    data = write_png(run / relative, index if seed is None else seed)
    line = {"index": index, "kind": kind, "file": relative,
            "sha256": hashlib.sha256(data).hexdigest(), "settings_hash": "x", "seed": index,
            "actor": "RenderActor(tiny on node-1)", "node": "node-1", "seconds": 3.2,
            "finished_at": f"2026-11-25T19:20:{index:02d}Z"}
    with (run / "manifest.jsonl").open("a") as handle:
        handle.write(json.dumps(line) + "\n")
    return run / relative


def write_status(run: Path, **fields) -> dict:
    status = {"name": run.parent.name, "state": "running", "kind": "frame", "total": 6,
              "done": 0, "failed": 0, "started_at": "2026-11-25T19:20:00Z",
              "updated_at": "2026-11-25T19:20:09Z", "finished_at": None, "eta_seconds": None,
              "current": [], "errors": [], "error": None, "video": None, "job_id": None,
              "dashboard_url": None}
    status.update(fields)
    write_atomic(run / "status.json", json.dumps(status).encode())
    return status


def write_scene(run: Path, text: str) -> None:
    write_atomic(run / "scene.yaml", text.encode())
    record = plan_record(resolve(load_scene(run / "scene.yaml")))
    write_atomic(run / "plan.json", json.dumps(record).encode())


def make_output_root(root: Path) -> Path:
    """Four runs: an animation rendering, one finished with video.mp4, failed stills
    (no contact sheet yet) and finished stills with a contact sheet."""
    running = root / RUNNING
    write_scene(running, SMOKE_SCENE)
    for index in range(3):
        add_finished(running, "frame", index)
    write_png(running / "previews" / "000003.png", 40)
    write_status(running, done=3, eta_seconds=9.5, started_at="2026-11-25T19:20:00Z",
                 current=[{"index": 3, "step": 4, "steps": 10}],
                 dashboard_url="http://127.0.0.1:8265")

    finished = root / FINISHED
    write_scene(finished, SMOKE_SCENE)
    frames = [add_finished(finished, "frame", index) for index in range(6)]
    stitch(frames, finished / "video.mp4", fps=6)
    write_status(finished, state="succeeded", done=6, video="video.mp4",
                 started_at="2026-11-25T18:00:00Z", finished_at="2026-11-25T18:01:00Z")

    failed = root / FAILED
    write_scene(failed, STILLS_SCENE)
    for index in range(2):
        add_finished(failed, "image", index, seed=10 + index)
    write_status(failed, state="failed", kind="image", total=4, done=2, failed=2,
                 started_at="2026-11-25T17:00:00Z",
                 error="2 images failed: CUDA out of memory <b>not bold</b>",
                 errors=[{"index": 2, "actor": "RenderActor(big on node-2)",
                          "message": "CUDA out of memory. Tried to allocate 2.00 GiB"},
                         {"index": 3, "actor": "RenderActor(big on node-2)",
                          "message": "CUDA out of memory. Tried to allocate 2.00 GiB"}])

    sheet = root / SHEET
    write_scene(sheet, STILLS_SCENE)
    for index in range(4):
        add_finished(sheet, "image", index, seed=20 + index)
    write_png(sheet / "contact_sheet.png", 99)
    write_status(sheet, state="succeeded", kind="image", total=4, done=4,
                 started_at="2026-11-25T16:00:00Z")
    return root


@pytest.fixture(scope="module")
def output_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("ui")
    root = make_output_root(base / "renders")
    secret = base / "secret"
    secret.mkdir()
    (secret / "passwords.txt").write_text("root:SECRET-OUTSIDE-ROOT\n")
    write_status(secret, state="running")
    (root / "escape.txt").symlink_to(secret / "passwords.txt")
    (root / "smoke" / "outside").symlink_to(secret, target_is_directory=True)
    (root / RUNNING / "frames" / "escape.png").symlink_to(secret / "passwords.txt")
    (root / RUNNING / "frames" / "alias.png").symlink_to(root / RUNNING / "frames/000000.png")
    (root / RUNNING / ".status.json.x.tmp").write_text("half-written")
    (root / "lockalias.txt").symlink_to(root / RUNNING / ".status.json.x.tmp")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "frame.png").write_text("hidden-folder")
    (root / RUNNING / "frames" / "hidden.png").symlink_to(root / ".hidden" / "frame.png")
    (root / "smoke" / "hidden-link").symlink_to(root / ".hidden", target_is_directory=True)
    return root


UI_URL = "http://127.0.0.1:8470"   # the Host the app is asked for: a loopback name and port


def ui_client(app) -> starlette_testclient.TestClient:
    """A test client that talks to the app as a browser on this machine does (the app
    refuses other Host headers: DNS rebinding)."""
    return starlette_testclient.TestClient(app, base_url=UI_URL)


@pytest.fixture(scope="module")
def client(output_root):
    with ui_client(create_app(output_root)) as test_client:
        yield test_client


def file_path(url: str) -> str:
    """The output-root path of a /files/ URL (query dropped)."""
    return unquote(url.split("?")[0].removeprefix("/files/"))


# --------------------------------------------------------------------------- pure parts


def test_clean_relative_accepts_plain_names_only():
    assert str(clean_relative("smoke/2026/frames/000001.png")) == "smoke/2026/frames/000001.png"
    for bad in ["", "/etc/passwd", "../x", "a/../../b", "a/./b", "a//b", "a/", ".hidden",
                "a/.video.mp4.tmp", "a\\..\\b", "a\x00b", ".."]:
        assert clean_relative(bad) is None, bad


def test_resolve_inside_follows_symlinks_but_stays_inside(output_root):
    base = output_root.resolve()
    assert resolve_inside(base, f"{RUNNING}/frames/alias.png") == \
        (output_root / RUNNING / "frames/000000.png").resolve()
    assert resolve_inside(base, "escape.txt") is None
    assert resolve_inside(base, "smoke/outside/passwords.txt") is None
    assert resolve_inside(base, f"{RUNNING}/frames/escape.png") is None
    assert resolve_inside(base, f"{RUNNING}/frames") is None            # a folder, not a file
    assert resolve_inside(base, f"{RUNNING}/frames", want_dir=True) is not None
    # a visible name whose target inside the root is hidden is refused like the hidden name
    assert resolve_inside(base, "lockalias.txt") is None
    assert resolve_inside(base, f"{RUNNING}/frames/hidden.png") is None
    assert resolve_inside(base, "smoke/hidden-link/frame.png") is None
    assert resolve_inside(base, "smoke/hidden-link", want_dir=True) is None


def test_safe_link_only_http_urls():
    assert safe_link("http://127.0.0.1:8265") == "http://127.0.0.1:8265"
    assert safe_link("https://ray.example.org/#/jobs") == "https://ray.example.org/#/jobs"
    for bad in ["javascript:alert(1)", "data:text/html,x", "//evil", "127.0.0.1:8265", None, 5]:
        assert safe_link(bad) is None


def test_finite_number():
    assert finite_number(9.5) == 9.5 and finite_number(3) == 3
    assert finite_number(float("nan")) is None and finite_number(float("inf")) is None
    assert finite_number(True) is None and finite_number("5") is None


def test_plan_summary_of_a_real_plan(output_root):
    plan = json.loads((output_root / RUNNING / "plan.json").read_text())
    rows = dict(plan_summary(plan))
    assert rows["mode"] == "2D animation"
    assert rows["frames"] == "6"
    assert rows["size"] == "64×64"
    assert rows["seed"] == "42"
    assert rows["sampler"].startswith("ddim, 12 steps")
    assert rows["prompts from frame 0"] == \
        "a lighthouse in a storm, oil painting:3 | yellow color scheme:1"
    assert rows["prompts from frame 3"] == "a lighthouse at dawn, watercolor:2"
    stills = dict(plan_summary(json.loads((output_root / FAILED / "plan.json").read_text())))
    assert stills["mode"] == "stills" and stills["images"] == "4"


# --------------------------------------------------------------------------- JSON API


def test_job_list_newest_first_with_progress(client):
    data = client.get("/api/jobs").json()
    jobs = {job["id"]: job for job in data["jobs"]}
    assert [job["id"] for job in data["jobs"]] == [RUNNING, FINISHED, FAILED, SHEET]
    assert "smoke/outside" not in jobs                   # a symlinked folder is not followed
    running = jobs[RUNNING]
    assert (running["state"], running["done"], running["total"], running["failed"]) == \
        ("running", 3, 6, 0)
    assert running["eta_seconds"] == 9.5
    assert file_path(running["latest"]["url"]) == f"{RUNNING}/frames/000002.png"
    assert jobs[FAILED]["state"] == "failed" and jobs[FAILED]["failed"] == 2
    assert jobs[FINISHED]["state"] == "succeeded"


def test_running_job_detail(client, output_root):
    job = client.get(f"/api/jobs/{RUNNING}").json()
    assert job["kind"] == "frame"
    assert job["latest"]["index"] == 2
    assert job["current"] == [{"index": 3, "step": 4, "steps": 10}]
    [preview] = job["previews"]
    assert (preview["index"], preview["step"], preview["steps"]) == (3, 4, 10)
    assert file_path(preview["url"]) == f"{RUNNING}/previews/000003.png"
    assert job["dashboard_url"] == "http://127.0.0.1:8265"
    assert job["video"] is None and job["contact_sheet"] is None
    settings = dict(job["settings"])
    assert settings["mode"] == "2D animation"
    assert "lighthouse" in job["scene_yaml"]
    image = client.get(job["latest"]["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == (output_root / RUNNING / "frames/000002.png").read_bytes()


def test_latest_frame_must_match_its_sha256(tmp_path):
    root = tmp_path / "renders"
    run = root / "a" / "1"
    write_scene(run, SMOKE_SCENE)
    for index in range(3):
        add_finished(run, "frame", index)
    write_status(run, done=3)
    app_client = ui_client(create_app(root))
    assert app_client.get("/api/jobs/a/1").json()["latest"]["index"] == 2
    write_png(run / "frames/000002.png", 77)                   # not the bytes the manifest names
    assert app_client.get("/api/jobs/a/1").json()["latest"]["index"] == 1
    (run / "frames/000001.png").unlink()
    assert app_client.get("/api/jobs/a/1").json()["latest"]["index"] == 0


def test_a_line_without_a_valid_sha256_is_not_finished(tmp_path):
    """docs/outputs.md: finished = line present AND the file's sha256 matches (and a turbo
    frame's chain/ image too): a line with no sha256, or not a sha256, is not finished."""
    root = tmp_path / "renders"
    run = root / "stills" / "1"
    write_scene(run, STILLS_SCENE)
    for index in range(2):
        add_finished(run, "image", index)
    bad_hashes = [None, "", 123, "ABC", "0" * 64]                  # 2, 3, 4, 5, 6
    for index, digest in enumerate(bad_hashes, start=2):
        relative = f"images/{index:06d}.png"
        data = write_png(run / relative, index)
        line = {"index": index, "kind": "image", "file": relative, "settings_hash": "x"}
        if digest is not None:
            line["sha256"] = digest
        if digest == "ABC":
            line["sha256"] = hashlib.sha256(data).hexdigest().upper()
        with (run / "manifest.jsonl").open("a") as handle:
            handle.write(json.dumps(line) + "\n")
    write_status(run, kind="image", total=7, done=7)
    app_client = ui_client(create_app(root))
    job = app_client.get("/api/jobs/stills/1").json()
    assert job["latest"]["index"] == 1
    assert [image["index"] for image in job["gallery"]] == [0, 1]
    assert app_client.get("/api/jobs").json()["jobs"][0]["latest"]["index"] == 1


def test_a_turbo_frame_needs_its_chain_image(tmp_path):
    root = tmp_path / "renders"
    run = root / "turbo" / "1"
    add_finished(run, "frame", 0)
    data = write_png(run / "frames/000001.png", 1)
    chain = write_png(run / "chain/000001.png", 2)
    line = {"index": 1, "kind": "frame", "file": "frames/000001.png",
            "sha256": hashlib.sha256(data).hexdigest(),
            "chain_sha256": hashlib.sha256(chain).hexdigest()}
    (run / "manifest.jsonl").open("a").write(json.dumps(line) + "\n")
    write_status(run, done=2)
    app_client = ui_client(create_app(root))
    assert app_client.get("/api/jobs/turbo/1").json()["latest"]["index"] == 1
    write_png(run / "chain/000001.png", 3)                         # not the chain image named
    assert app_client.get("/api/jobs/turbo/1").json()["latest"]["index"] == 0


def test_finished_animation_has_its_video(client, output_root):
    job = client.get(f"/api/jobs/{FINISHED}").json()
    assert job["state"] == "succeeded" and job["previews"] == []
    assert job["video"]["final"] is True and job["video"]["kind"] == "video"
    assert file_path(job["video"]["url"]) == f"{FINISHED}/video.mp4"
    video = client.get(job["video"]["url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.content == (output_root / FINISHED / "video.mp4").read_bytes()
    part = client.get(job["video"]["url"], headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and len(part.content) == 100   # seeking in the player


def test_preview_video_so_far(tmp_path):
    root = tmp_path / "renders"
    run = root / "anim" / "1"
    frames = [add_finished(run, "frame", index) for index in range(3)]
    write_status(run, done=3)
    stitch(frames, run / "preview.mp4", fps=6)
    job = ui_client(create_app(root)).get("/api/jobs/anim/1").json()
    assert job["video"]["final"] is False
    assert file_path(job["video"]["url"]) == "anim/1/preview.mp4"
    assert job["settings"] == [] and job["total"] == 6


def test_failed_stills_show_errors_and_finished_images(client):
    job = client.get(f"/api/jobs/{FAILED}").json()
    assert job["state"] == "failed"
    assert job["error"] == "2 images failed: CUDA out of memory <b>not bold</b>"
    assert [e["index"] for e in job["errors"]] == [2, 3]
    assert job["errors"][0]["message"].startswith("CUDA out of memory")
    assert [g["index"] for g in job["gallery"]] == [0, 1]
    assert job["contact_sheet"] is None and job["video"] is None and job["previews"] == []
    assert dict(job["settings"])["mode"] == "stills"


def test_finished_stills_show_the_contact_sheet(client):
    job = client.get(f"/api/jobs/{SHEET}").json()
    assert file_path(job["contact_sheet"]["url"]) == f"{SHEET}/contact_sheet.png"
    assert job["gallery"] == []
    assert client.get(job["contact_sheet"]["url"]).status_code == 200


def test_run_names_with_spaces_and_unicode(tmp_path):
    root = tmp_path / "renders"
    run = root / "neon café #2" / "20261125-192000"
    add_finished(run, "frame", 0)
    write_status(run, done=1)
    app_client = ui_client(create_app(root))
    [job] = app_client.get("/api/jobs").json()["jobs"]
    assert job["id"] == "neon café #2/20261125-192000"
    assert "%20caf%C3%A9%20%232/" in job["latest"]["url"]
    detail = app_client.get("/api/jobs/neon%20caf%C3%A9%20%232/20261125-192000").json()
    assert app_client.get(detail["latest"]["url"]).content == \
        (run / "frames/000000.png").read_bytes()


def test_bad_status_files_do_not_break_the_page(tmp_path):
    root = tmp_path / "renders"
    broken, odd = root / "broken" / "1", root / "odd" / "1"
    write_scene(broken, SMOKE_SCENE)
    (broken / "status.json").write_text("{not json")
    odd.mkdir(parents=True)
    (odd / "status.json").write_text('{"state": "running", "done": 1, "total": 4, '
                                      '"eta_seconds": NaN, "dashboard_url": "javascript:x()", '
                                      '"current": [{"index": "3"}, 7], "errors": ["boom"]}')
    app_client = ui_client(create_app(root))
    assert {job["id"] for job in app_client.get("/api/jobs").json()["jobs"]} == \
        {"broken/1", "odd/1"}
    job = app_client.get("/api/jobs/broken/1").json()
    assert job["state"] == "unknown" and job["total"] == 6
    assert job["problems"][0].startswith("status.json is unreadable")
    job = app_client.get("/api/jobs/odd/1").json()
    assert job["eta_seconds"] is None and job["dashboard_url"] is None
    assert job["current"] == [] and job["errors"][0]["message"] == "boom"


DEEP_JSON = "[" * 100_000 + "]" * 100_000          # json.loads raises RecursionError


def test_deep_or_unparseable_files_are_damage_not_errors(tmp_path):
    """A status.json, plan.json, manifest.jsonl line or scene.yaml that cannot be parsed in
    any way (RecursionError, a YAML date that is no date, ...) is that run's problem: the
    job list and every run's detail still answer 200."""
    root = tmp_path / "renders"
    good = root / "good" / "1"
    write_scene(good, SMOKE_SCENE)
    add_finished(good, "frame", 0)
    write_status(good, done=1, started_at="2026-11-25T19:00:00Z")

    deep_status = root / "deep-status" / "1"
    write_scene(deep_status, SMOKE_SCENE)
    (deep_status / "status.json").write_text(DEEP_JSON)

    deep_line = root / "deep-line" / "1"
    write_scene(deep_line, SMOKE_SCENE)
    add_finished(deep_line, "frame", 0)
    with (deep_line / "manifest.jsonl").open("a") as handle:
        handle.write(DEEP_JSON + "\n")
        handle.write('{"index": [1], "file": "frames/000000.png"}\n')    # unhashable index
    add_finished(deep_line, "frame", 1)
    write_status(deep_line, done=None, total=None)

    deep_plan = root / "deep-plan" / "1"
    write_scene(deep_plan, SMOKE_SCENE)
    (deep_plan / "plan.json").write_text(DEEP_JSON)
    write_status(deep_plan, total=None)

    nested_plan = root / "nested-plan" / "1"            # parses, too deep to show safely
    write_scene(nested_plan, SMOKE_SCENE)
    (nested_plan / "plan.json").write_text('{"name": ' + "[" * 900 + "]" * 900 + "}")
    write_status(nested_plan)

    deep_scene = root / "deep-scene" / "1"
    write_status(deep_scene)
    write_atomic(deep_scene / "scene.yaml", ("a: " + "[" * 5000 + "]" * 5000 + "\n").encode())

    bad_date = root / "bad-date" / "1"
    write_status(bad_date)
    write_atomic(bad_date / "scene.yaml", b"name: when\nseed: 2024-13-45\n")

    bomb = root / "alias-bomb" / "1"                     # YAML aliases: 10**6 strings
    write_status(bomb)
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{n}: &a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]" for n in range(1, 6)]
    write_atomic(bomb / "scene.yaml", ("\n".join(levels) + "\ntext_prompts: *a5\n").encode())

    app_client = ui_client(create_app(root))
    answer = app_client.get("/api/jobs")
    assert answer.status_code == 200
    jobs = {job["id"]: job for job in answer.json()["jobs"]}
    assert set(jobs) == {"good/1", "deep-status/1", "deep-line/1", "deep-plan/1",
                         "nested-plan/1", "deep-scene/1", "bad-date/1", "alias-bomb/1"}
    assert jobs["good/1"]["latest"]["index"] == 0 and jobs["good/1"]["problem"] is None
    assert jobs["deep-status/1"]["problem"].startswith("status.json is unreadable")
    assert jobs["deep-status/1"]["state"] == "unknown" and jobs["deep-status/1"]["total"] == 6
    assert jobs["deep-line/1"]["latest"]["index"] == 1 and jobs["deep-line/1"]["done"] == 2

    details = {}
    for job in jobs:
        answer = app_client.get(f"/api/jobs/{job}")
        assert answer.status_code == 200, job
        details[job] = answer.json()
    assert details["good/1"]["problems"] == []
    assert dict(details["deep-status/1"]["settings"])["mode"] == "2D animation"
    assert details["deep-line/1"]["problems"] == []
    for job in ("deep-plan/1", "nested-plan/1"):
        [problem] = details[job]["problems"]
        assert problem.startswith("plan.json is unreadable"), job
        assert dict(details[job]["settings"])["name"] == "smoke"   # from scene.yaml instead
    for job in ("deep-scene/1", "bad-date/1", "alias-bomb/1"):
        [problem] = details[job]["problems"]
        assert problem.startswith("scene.yaml is"), job
        assert details[job]["settings"] == [] and details[job]["scene_yaml"] is None
    assert len(app_client.get("/api/jobs/alias-bomb/1").content) < 10_000


def test_an_unforeseen_failure_in_one_run_leaves_the_others(tmp_path, monkeypatch):
    import farm.ui.app as ui_app

    root = tmp_path / "renders"
    for job in ("good", "bad"):
        add_finished(root / job / "1", "frame", 0)
        write_status(root / job / "1", done=1)
    latest = ui_app.OutputRoot._latest

    def failing(self, job, folder, manifest):
        if job == "bad/1":
            raise RuntimeError("something nobody foresaw")
        return latest(self, job, folder, manifest)

    monkeypatch.setattr(ui_app.OutputRoot, "_latest", failing)
    app_client = ui_client(create_app(root))
    answer = app_client.get("/api/jobs")
    assert answer.status_code == 200
    jobs = {job["id"]: job for job in answer.json()["jobs"]}
    assert jobs["good/1"]["latest"]["index"] == 0
    assert jobs["bad/1"]["problem"] == "cannot read this run: something nobody foresaw"
    detail = app_client.get("/api/jobs/bad/1")
    assert detail.status_code == 200
    assert detail.json()["problems"] == ["cannot read this run: something nobody foresaw"]


def test_unknown_jobs_are_404(client):
    for path in ["/api/jobs/nope/1", f"/api/jobs/{RUNNING}/frames", "/api/jobs/smoke/outside",
                 "/api/jobs/..%2f..%2fsecret", "/job/nope", "/job/"]:
        assert client.get(path).status_code == 404, path
    page = client.get(f"/job/{RUNNING}")
    assert page.status_code == 200 and '<script src="/static/ui.js">' in page.text


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'data-poll-ms="2000"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    script = client.get("/static/ui.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/api/jobs" in script.text and "innerHTML" not in script.text
    assert client.get("/static/ui.css").status_code == 200
    assert client.get("/static/app.py").status_code == 404


# --------------------------------------------------------------------------- refusals


TRAVERSALS = [
    "/files/../../etc/passwd",
    "/files/%2e%2e/%2e%2e/etc/passwd",
    "/files/..%2f..%2fetc%2fpasswd",
    "/files/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "/files/smoke/..%2f..%2fsecret/passwords.txt",
    "/files//etc/passwd",
    "/files/%2fetc%2fpasswd",
    "/files/escape.txt",
    "/files/smoke/outside/passwords.txt",
    f"/files/{RUNNING}/frames/escape.png",
    f"/files/{RUNNING}/.status.json.x.tmp",
    "/files/lockalias.txt",
    f"/files/{RUNNING}/frames/hidden.png",
    "/files/smoke/hidden-link/frame.png",
    "/files/..\\..\\etc\\passwd",
    "/files/smoke/%00/x",
    "/files/",
    f"/files/{RUNNING}/frames",
]


def asgi_get(app, raw_path: str, host: bytes | None = b"127.0.0.1") -> tuple[int, bytes]:
    """Call the app the way uvicorn would for this raw request path (no client cleanup)."""
    import asyncio

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": unquote(raw_path), "raw_path": raw_path.encode(),
             "query_string": b"", "root_path": "",
             "headers": [] if host is None else [(b"host", host)],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    sent: list[dict] = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # the client stays connected

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


@pytest.mark.parametrize("raw_path", TRAVERSALS)
def test_files_outside_the_root_are_refused(output_root, raw_path):
    status, body = asgi_get(create_app(output_root), raw_path)
    assert status == 404, raw_path
    assert b"root:" not in body and b"SECRET" not in body and b"half-written" not in body
    assert b"hidden-folder" not in body


def test_symlink_inside_the_root_is_served(client, output_root):
    answer = client.get(f"/files/{RUNNING}/frames/alias.png")
    assert answer.content == (output_root / RUNNING / "frames/000000.png").read_bytes()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/", "/api/jobs", f"/api/jobs/{RUNNING}",
                                  f"/files/{RUNNING}/status.json"])
def test_only_get(client, output_root, method, path):
    before = (output_root / RUNNING / "status.json").read_bytes()
    assert client.request(method, path, content=b"{}").status_code == 405
    assert (output_root / RUNNING / "status.json").read_bytes() == before


REFUSED_HOSTS = ["evil.example:8470", "evil.example", "127.0.0.1.evil.example:8470",
                 "localhost.evil.example", "localhost:8471", "127.0.0.1:80", "[::1]:1",
                 "localhost:8470:1", "::1", "[::2]:8470", "10.0.0.1:8470", "127.0.0.1:x",
                 "localhost:8470/x"]
ACCEPTED_HOSTS = ["127.0.0.1:8470", "127.0.0.1", "localhost:8470", "localhost", "LocalHost",
                  "[::1]:8470", "[::1]", "[0:0:0:0:0:0:0:1]:8470"]


@pytest.mark.parametrize("path", ["/", "/api/jobs", f"/api/jobs/{RUNNING}",
                                  f"/files/{RUNNING}/frames/000000.png", "/static/ui.js"])
def test_other_host_headers_are_refused(client, path):
    """DNS rebinding: a page of another origin reaches 127.0.0.1 under its own name, so
    only this machine's names (with the port listened on, or none) are answered."""
    for host in REFUSED_HOSTS:
        answer = client.get(path, headers={"host": host})
        assert answer.status_code == 403, host
        assert answer.headers["content-type"].startswith("text/plain")
        assert len(answer.content) < 200 and b"smoke" not in answer.content
    for host in ACCEPTED_HOSTS:
        assert client.get(path, headers={"host": host}).status_code == 200, host


def test_missing_or_repeated_host_header_is_refused(output_root):
    app = create_app(output_root)
    assert asgi_get(app, "/api/jobs")[0] == 200
    assert asgi_get(app, "/api/jobs", host=None)[0] == 403
    assert asgi_get(app, "/api/jobs", host=b"")[0] == 403


def test_host_allowed_names():
    assert host_allowed("127.0.0.1:8470", ("127.0.0.1", 8470))
    assert not host_allowed("127.0.0.1:8471", ("127.0.0.1", 8470))
    assert not host_allowed(None, ("127.0.0.1", 8470))
    # listening on all addresses: the address a request came in on, and the --host name
    assert host_allowed("192.168.1.5:8470", ("192.168.1.5", 8470))
    assert not host_allowed("render-box.lan:8470", ("192.168.1.5", 8470))
    assert host_allowed("render-box.lan:8470", ("192.168.1.5", 8470), ["render-box.lan"])
    assert host_allowed("[fe80::1]:8470", ("fe80::1", 8470))


def test_farm_ui_host_name_is_accepted(output_root):
    """`farm ui --host render-box.lan` passes its name: a browser opening that name works."""
    app_client = ui_client(create_app(output_root, allowed_hosts=["render-box.lan"]))
    assert app_client.get("/api/jobs", headers={"host": "render-box.lan:8470"}).status_code == 200
    assert app_client.get("/api/jobs", headers={"host": "evil.example:8470"}).status_code == 403


def test_host_header_over_real_http(output_root):
    with ServerThread(create_app(output_root)) as server:
        port = server.port
        for host in [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost"]:
            assert raw_http_get(server.port, "/api/jobs", host=host)[0] == 200, host
        for host in [f"evil.example:{port}", "evil.example", f"localhost:{port + 1}"]:
            status, body = raw_http_get(server.port, "/api/jobs", host=host)
            assert status == 403 and b"smoke" not in body, host


def test_head_is_answered_without_a_body(client):
    answer = client.head(f"/files/{RUNNING}/frames/000000.png")
    assert answer.status_code == 200 and answer.content == b""


# --------------------------------------------------------------------------- the server


class ServerThread:
    """uvicorn serving an app on a free 127.0.0.1 port in a thread (for tests)."""

    def __init__(self, app) -> None:
        self.socket = bind_socket("127.0.0.1", 0)
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.socket.close()


def raw_http_get(port: int, target: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """Send a GET with the request target exactly as given (no client normalisation)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
                           f"Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2]


def test_traversal_over_real_http(output_root):
    with ServerThread(create_app(output_root)) as server:
        assert raw_http_get(server.port, f"/files/{RUNNING}/frames/000000.png")[0] == 200
        for target in ["/files/../../etc/passwd", "/files/%2e%2e/%2e%2e/etc/passwd",
                       "/files/..%2f..%2fsecret/passwords.txt", "/files//etc/passwd",
                       "/files/escape.txt", "/files/smoke/outside/passwords.txt"]:
            status, body = raw_http_get(server.port, target)
            assert status in (400, 404), target
            assert b"root:" not in body and b"SECRET" not in body


# --------------------------------------------------------------------------- the command


def test_register_adds_ui_with_defaults():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ui"])
    assert (args.root, args.port, args.host) == (Path("renders"), 8470, "127.0.0.1")
    args = parser.parse_args(["ui", "--root", "out", "--port", "9001", "--host", "0.0.0.0"])
    assert (args.root, args.port, args.host) == (Path("out"), 9001, "0.0.0.0")
    assert callable(args.handler)


def test_command_errors_are_one_line(tmp_path):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["ui", "--root", str(tmp_path / "missing")])
    with pytest.raises(UIError, match="no such folder"):
        args.handler(args)
    with pytest.raises(UIError, match="0..65535"):
        bind_socket("127.0.0.1", 70000)
    with pytest.raises(UIError, match="--host no-such-host.invalid"):
        bind_socket("no-such-host.invalid", 0)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(UIError, match="cannot listen on 127.0.0.1"):
            bind_socket("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()
    with pytest.raises(UIError, match="not a folder"):
        create_app(tmp_path / "missing")


def test_command_serves_until_interrupted(output_root):
    """The real handler in a child process: it prints its URL, serves, and exits 0 on Ctrl+C."""
    code = ("import argparse, sys; from farm.ui.command import register; "
            "p = argparse.ArgumentParser(); register(p.add_subparsers()); "
            "a = p.parse_args(sys.argv[1:]); sys.exit(a.handler(a))")
    child = subprocess.Popen([sys.executable, "-c", code, "ui", "--root", str(output_root),
                              "--port", "0"], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line
        port = int(match.group(1))
        status, body = raw_http_get(port, "/api/jobs")
        assert status == 200 and RUNNING in json.loads(body)["jobs"][0]["id"]
        assert raw_http_get(port, "/api/jobs", host=f"evil.example:{port}")[0] == 403
        child.send_signal(signal.SIGINT)
        assert child.wait(10) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("name", ["page.html", "x.js", "a.svg", "notes.txt", "scene.yaml", "status.json"])
def test_files_serves_pictures_and_videos_only(client, output_root, name):
    """An .html, .svg or .js file under the root would run as the page's own content
    (its CSP allows script-src 'self'): /files/ serves pictures and videos only."""
    (output_root / RUNNING / name).write_text("<script>alert(1)</script>")
    assert client.get(f"/files/{RUNNING}/{name}").status_code == 404


def test_served_pictures_are_sandboxed_and_typed_by_their_suffix(client, output_root):
    answer = client.get(f"/files/{RUNNING}/frames/000000.png")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert "sandbox" in answer.headers.get_list("content-security-policy")
