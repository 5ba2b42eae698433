"""The `farm` command line: exit codes, one-line errors, plan output, schema, import-dd."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from farm.cli import main
from farm.scene import load_scene
from tests.conftest import TINY_SCENE

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_version_and_help(capsys):
    result = subprocess.run([sys.executable, "-m", "farm.cli", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "disco-farm" in result.stdout  # the module runs as the `farm` command
    for sub in ("validate", "plan", "schema", "import-dd", "submit", "models", "ui", "status", "logs", "cancel", "list", "fetch"):
        code, out, _ = run(capsys, sub, "--help")
        assert code == 0 and f"usage: farm {sub}" in out, sub


def test_validate_ok_and_problems(capsys, scene_file):
    good = scene_file(TINY_SCENE, "good.yaml")
    bad = scene_file(TINY_SCENE.replace("[64, 64]", "[65, 64]") + "stepz: 3\n", "bad.yaml")
    code, out, err = run(capsys, "validate", str(good))
    assert code == 0 and "ok (50 images)" in out
    code, out, err = run(capsys, "validate", str(good), str(bad))
    assert code == 2
    lines = err.strip().splitlines()
    assert lines == [
        f"{bad}:4: width_height: width 65 is not a multiple of 64 (DD rendered 64)",
        f"{bad}:9: stepz: unknown setting; did you mean 'steps'?",
    ]
    assert "Traceback" not in err


def test_validate_bad_yaml_is_one_line(capsys, scene_file):
    bad = scene_file("name: [oops\n")
    code, _, err = run(capsys, "validate", str(bad))
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(str(bad))


def test_plan_table_and_json(capsys, scene_file):
    path = scene_file(TINY_SCENE + 'animation_mode: 2D\nmax_frames: 8\nzoom: "0: (1), 4: (1.2)"\n')
    code, out, _ = run(capsys, "plan", str(path), "--frames", "2:4")
    assert code == 0
    rows = out.strip().splitlines()
    assert rows[0].startswith("# t: 2D, seed 5, 8 frames")
    assert [r.split()[0] for r in rows[2:]] == ["2", "3"]
    assert "1.1" in rows[2] and "1.15" in rows[3]
    code, out, _ = run(capsys, "plan", str(path), "--json")
    record = json.loads(out)
    assert [f["index"] for f in record["frames"]] == list(range(8))
    assert record["frames"][4]["motion"]["zoom"] == pytest.approx(1.2)


def test_plan_with_set_override_and_bad_range(capsys, scene_file):
    path = scene_file(TINY_SCENE)
    code, out, _ = run(capsys, "plan", str(path), "--json", "--set", "steps=33", "--set", "n_batches=2")
    assert code == 0 and [f["render"]["sampler"]["steps"] for f in json.loads(out)["frames"]] == [33, 33]
    code, _, err = run(capsys, "plan", str(path), "--set", "steps=abc")
    assert code == 2 and "steps" in err
    code, _, err = run(capsys, "plan", str(path), "--frames", "x:y")
    assert code == 2 and err.startswith("farm: error: --frames")


def test_schema_describes_every_setting_and_validates_examples(capsys, tmp_path):
    code, out, _ = run(capsys, "schema")
    schema = json.loads(out)
    assert code == 0 and schema["type"] == "object"
    for name in ("text_prompts", "clip_guidance_scale", "zoom", "frames_skip_steps", "interp_spline", "ViTB32"):
        assert name in schema["properties"]
    jsonschema = pytest.importorskip("jsonschema")
    for scene in sorted((ROOT / "scenes").glob("*.yaml")):
        jsonschema.validate(json.loads(json.dumps(yaml.safe_load(scene.read_text()))), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"width_height": [100, 64]}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"vr_mode": True}, schema)
    # what the validator takes, the schema takes (DD writes some numbers as text) ...
    for accepted in ({"steps": "250"}, {"zoom": "1.02"}, {"angle": "10*sin(t)"}, {"seed": "Random"},
                     {"seed": "123"}, {"vr_mode": False}, {"turbo_steps": "3"}, {"clip_guidance_scale": "5000"}):
        jsonschema.validate(accepted, schema)
    # ... and what it refuses, the schema refuses where a schema can say it
    for refused in ({"name": ".."}, {"name": ".hidden"}, {"name": "a::b"}, {"seed": "soon"}, {"steps": 1.5}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(refused, schema)
    # import-dd's output is a scene the schema takes
    code, _, _ = run(capsys, "import-dd", str(DATA / "dd_settings.txt"), "-o", str(tmp_path / "dd.yaml"))
    assert code == 0
    jsonschema.validate(json.loads(json.dumps(yaml.safe_load((tmp_path / "dd.yaml").read_text()))), schema)


def test_import_dd_settings(capsys, tmp_path):
    out_path = tmp_path / "imported.yaml"
    code, out, err = run(capsys, "import-dd", str(DATA / "dd_settings.txt"), "-o", str(out_path))
    assert code == 0 and out_path.exists()
    assert "dropped diffusion_steps" in err
    scene = load_scene(out_path)
    assert scene["width_height"] == (1280, 768)
    assert scene["seed"] == 2599079091
    assert scene["clip_models"] == ("ViT-B-32::openai", "ViT-B-16::openai", "RN50::openai")
    assert [p.weight for p in scene["text_prompts"].at(100)] == [1.0, 5.0]
    assert scene["frames_skip_steps"] == ("percent", 60.0)
    assert scene["zoom"].values(11)[10] == pytest.approx(1.05)
    assert scene["turbo_steps"] == 3


def test_import_dd_of_a_file_as_dd_writes_it_for_an_animation(capsys, tmp_path):
    """DD saves video_init_path in every settings file (a Colab path: the import was refused,
    file not found) and never animation_mode: the import says the scene renders stills."""
    settings = json.loads((DATA / "dd_settings.txt").read_text())
    settings["video_init_path"] = "/content/drive/MyDrive/init.mp4"
    source = tmp_path / "TimeToDisco(0)_settings.txt"
    source.write_text(json.dumps(settings))
    code, _, err = run(capsys, "import-dd", str(source), "-o", str(tmp_path / "imported.yaml"))
    assert code == 0, err
    assert "does not record animation_mode or n_batches: this scene renders 50 stills; add animation_mode" in err
    assert load_scene(tmp_path / "imported.yaml", overrides={"animation_mode": "2D"})["max_frames"] == 10000
    settings.update(width=1000, height=700)  # DD rounds down to multiples of 64 (the import refused it)
    source.write_text(json.dumps(settings))
    code, _, err = run(capsys, "import-dd", str(source), "-o", str(tmp_path / "sized.yaml"))
    assert code == 0 and "width 1000 -> 960: DD rendered 960" in err and "height 700 -> 640" in err
    assert load_scene(tmp_path / "sized.yaml")["width_height"] == (960, 640)


def test_import_dd_bad_input(capsys, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("{not json")
    code, _, err = run(capsys, "import-dd", str(bad), "-o", str(tmp_path / "x.yaml"))
    assert code == 2 and "not DD settings JSON" in err and not (tmp_path / "x.yaml").exists()
    code, _, err = run(capsys, "import-dd", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "x.yaml"))
    assert code == 2 and "file not found" in err


def test_plan_piped_into_head_stops_quietly(tmp_path):
    scene = tmp_path / "many.yaml"
    long_scene = TINY_SCENE.replace("steps: 10\nskip_steps: 0\n", "steps: 250\nskip_steps: 10\n")
    scene.write_text(long_scene + "n_batches: 5000\n")  # a table far larger than a pipe holds
    process = subprocess.Popen([sys.executable, "-m", "farm.cli", "plan", str(scene)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=ROOT)
    first = process.stdout.readline()
    process.stdout.close()  # what `| head -1` does
    error = process.stderr.read()
    assert process.wait() == 141 and error == b""
    assert first.startswith(b"# t: stills, seed 5, 5000 images, 1200000 sampler steps, UNet compiled on CUDA GPUs")


def test_sigterm_and_ctrl_c_while_stopping_end_a_local_render_in_one_line(tmp_path):
    """`timeout`, systemd and `docker stop` send SIGTERM: one line, the status says
    cancelled, finished frames stay (Ray's own handler printed a native stack dump)."""
    import signal
    import time

    scene = tmp_path / "slow.yaml"
    scene.write_text(TINY_SCENE.replace("\nsteps: 10\n", "\nsteps: 300\n") + "n_batches: 2\n")
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-m", "farm.cli", "submit", str(scene), "--out", str(out),
                              "--no-dashboard"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until the render runs (status.json exists once frames are queued)
            status = out / "status.json"
            if status.exists() and json.loads(status.read_text() or "{}").get("state") == "running":
                break
            time.sleep(0.5)
        time.sleep(2)
        child.send_signal(signal.SIGTERM)
        for _ in range(2):  # an impatient user: Ctrl-C while it stops (broke Ray's shutdown with a traceback)
            time.sleep(0.3)
            child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 143, err[-2000:]
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("farm:")]
    assert lines[-1] == "farm: terminated; finished outputs are kept"
    assert "SIGTERM received" not in err and "Traceback" not in err
    assert json.loads((out / "status.json").read_text())["state"] == "cancelled"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_ray_starts_stops_in_one_line_and_leaves_no_ray_folder(tmp_path, monkeypatch, signum):
    """Ctrl-C arriving inside ray.init waits for Ray to be up (raised there it could crash
    Ray's shutdown: a segfault); SIGTERM meets Ray's own handler there (sys.exit(15), which
    ended the submit with exit 15 and no word): both end as Ctrl-C / SIGTERM do, and Ray's
    session folder is removed. ray.init is stood in for by one that gets the signal."""
    import ray

    import farm.submit as submit

    made = []

    def init_getting_a_signal(**kwargs):
        made.append(kwargs["_temp_dir"])
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, lambda s, f: sys.exit(s))  # as ray.init installs it
        os.kill(os.getpid(), signum)
        time.sleep(0.5)  # the handler runs here (Ctrl-C's only notes it)

    monkeypatch.setattr(ray, "init", init_getting_a_signal)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(submit, "terminated", False)
    monkeypatch.delenv("DISCO_FARM_RAY_TMP", raising=False)
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            submit.start_local_ray()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert isinstance(caught.value, submit.Terminated) == (signum == signal.SIGTERM)
    assert submit.terminated == (signum == signal.SIGTERM)
    assert made and not os.path.exists(made[0]) and not os.path.exists(os.path.dirname(made[0]))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _descendants(pid: int) -> set[int]:
    """``pid``'s child processes, their children, ... (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _listening_addresses(pids: set[int]) -> dict[int, str]:
    """port -> local address of each TCP socket listening in one of ``pids`` (/proc/net)."""
    import ipaddress

    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                address, port_hex = fields[1].split(":")
                if fields[3] != "0A" or fields[9] not in inodes:
                    continue
                raw = bytes.fromhex(address)
                # /proc prints each 32-bit word in host (little-endian) order
                ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
                found[int(port_hex, 16)] = str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)
    return found


def test_a_ray_that_does_not_start_is_tried_once_more_then_named_in_one_line(tmp_path, monkeypatch, capsys):
    """Ray gives its raylet 30 s to register: on a busy machine ray.init fails with a bare
    Exception. The embedded Ray is started once more (the failed try's servers stopped, its
    folder removed); failing again, `farm submit` says so in one line, exit 1."""
    import ray

    import farm.submit as submit

    tries = []

    def init_failing(times):
        def init(**kwargs):
            tries.append(kwargs["_temp_dir"])
            if len(tries) <= times:
                raise Exception("The current node timed out during startup. This could happen because ...")
            return SimpleNamespace(dashboard_url="127.0.0.1:8265")
        return init

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.delenv("DISCO_FARM_RAY_TMP", raising=False)
    monkeypatch.setattr(ray, "init", init_failing(1))
    local = submit.start_local_ray()
    assert len(tries) == 2 and not os.path.exists(os.path.dirname(tries[0]))
    assert local.temp_dir == os.path.dirname(tries[1]) and local.dashboard_url == "http://127.0.0.1:8265"
    shutil.rmtree(local.temp_dir)
    assert "farm: Ray did not start (The current node timed out during startup." in capsys.readouterr().err

    tries.clear()
    monkeypatch.setattr(ray, "init", init_failing(2))
    scene = tmp_path / "s.yaml"
    scene.write_text(TINY_SCENE)
    code, out, err = run(capsys, "submit", str(scene), "--out", str(tmp_path / "out"), "--no-dashboard")
    assert code == 1 and len(tries) == 2 and not any(os.path.exists(os.path.dirname(t)) for t in tries)
    last = err.strip().splitlines()[-1]
    assert last.startswith("farm: error: the embedded Ray did not start (2 tries): The current node timed out")
    assert last.endswith("nothing was rendered") and "Traceback" not in err
    assert (tmp_path / "out" / "scene.yaml").exists()


def test_stop_descendants_naming_kills_only_this_processes_children_that_name_the_text(tmp_path):
    import farm.submit as submit

    marker = str(tmp_path / "failed-ray-try")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "unrelated"])
    try:
        deadline = time.monotonic() + 30
        while marker not in Path(f"/proc/{child.pid}/cmdline").read_bytes().decode() and time.monotonic() < deadline:
            time.sleep(0.05)  # exec'd
        assert submit.stop_descendants_naming(marker) == [child.pid]
        assert child.wait(timeout=30) == -signal.SIGKILL and other.poll() is None
        assert submit.stop_descendants_naming("/no/such/text") == []
    finally:
        for process in (child, other):
            process.kill()
            process.wait()


def test_the_embedded_ray_listens_on_the_loopback_only_in_a_private_folder(monkeypatch):
    """By default Ray on Linux binds its servers, and an unauthenticated Prometheus metrics
    port, to every interface: the embedded Ray is a node on 127.0.0.1, and its session
    folders (which Ray makes world-writable) lie in a folder only this user may enter."""
    import stat

    import ray

    import farm.submit as submit

    monkeypatch.delenv("DISCO_FARM_RAY_TMP", raising=False)
    monkeypatch.delenv(submit.LOOPBACK_NODE, raising=False)
    local = submit.start_local_ray(num_cpus=1, dashboard=False)
    try:
        assert local.temp_dir and stat.S_IMODE(os.stat(local.temp_dir).st_mode) == 0o700
        assert os.path.isdir(os.path.join(local.temp_dir, "r"))
        node = ray.nodes()[0]
        assert node["NodeManagerAddress"] == "127.0.0.1"
        listening = _listening_addresses(_descendants(os.getpid()) | {os.getpid()})
        # the GCS, raylet, dashboard agent, metrics, runtime-env agent, workers ...: all on the loopback
        assert {node["MetricsExportPort"], node["NodeManagerPort"]} <= set(listening) and len(listening) >= 5
        assert set(listening.values()) == {"127.0.0.1"}, listening
        assert submit.LOOPBACK_NODE not in os.environ  # this process's environment as it was
    finally:
        ray.shutdown()
        shutil.rmtree(local.temp_dir, ignore_errors=True)


def test_the_local_dashboards_address_reaches_status_json(monkeypatch, tmp_path):
    """farm ui links each render to its Ray dashboard from status.json's dashboard_url."""
    from types import SimpleNamespace

    import ray

    import farm.submit as submit
    from farm.driver import RenderSession

    monkeypatch.setattr(ray, "init", lambda **kwargs: SimpleNamespace(dashboard_url="127.0.0.1:8265"))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setenv("DISCO_FARM_RAY_TMP", str(tmp_path / "ray"))  # a kept folder: none made to remove
    local = submit.start_local_ray()
    assert local == submit.LocalRay(None, "http://127.0.0.1:8265")
    assert submit.start_local_ray(dashboard=False).dashboard_url is None
    session = RenderSession.__new__(RenderSession)
    session.dashboard_url = local.dashboard_url
    job = SimpleNamespace(job_id="t", plan=SimpleNamespace(name="t", is_animation=False, output_indices=frozenset({0})),
                          reused=0, errors=[], started_at="", frame_seconds=[])
    session.scheduler = SimpleNamespace(jobs={"t": SimpleNamespace(state="running", finished=False, error=None,
                                                                   done=set(), remaining={0}, running=set())})
    session.progress, session.slots = {}, {}
    assert session.status(job)["dashboard_url"] == "http://127.0.0.1:8265"


def test_ray_folders_of_killed_runs_are_removed_and_live_or_new_ones_kept(tmp_path):
    """SIGKILL leaves an embedded run's Ray folder: the next start removes those no process
    names, untouched for STALE_RAY_FOLDER_SECONDS."""
    import farm.submit as submit

    def folder(name: str, age: float) -> Path:
        path = tmp_path / name
        (path / "ray" / "session_x" / "logs").mkdir(parents=True)
        (path / "ray" / "session_x" / "logs" / "raylet.out").write_text("log")
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))
        return path

    old = submit.STALE_RAY_FOLDER_SECONDS + 60
    killed = folder("disco-farm-ray-killed1", old)
    live = folder("disco-farm-ray-live1234", old)
    new = folder("disco-farm-ray-new12345", 5)
    other = folder("someone-elses-folder", old)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--temp-dir={live}/ray"])
    try:
        removed = submit.remove_stale_ray_folders(str(tmp_path))
    finally:
        holder.kill()
        holder.wait()
    assert removed == [str(killed)] and not killed.exists()
    assert live.exists() and new.exists() and other.exists()
