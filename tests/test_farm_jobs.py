"""A real `ray start --head` cluster on 127.0.0.1 with token auth, reached through the
Jobs API: submit (staging the init image), status, logs, list, fetch, cancel."""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from farm.cli import main
from tests.conftest import TINY_SCENE

VENV_BIN = str(Path(sys.executable).parent)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, ray_temp_dir):
    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    token = secrets.token_hex(16)
    (home / ".ray" / "auth_token").write_text(token)
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "token", "PATH": VENV_BIN + os.pathsep + os.environ["PATH"],
           "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port, dash, agent = free_port(), free_port(), free_port()
    temp = ray_temp_dir()
    # --block keeps `ray start` in the foreground; in a session of its own, the head's
    # processes can be stopped as one group without `ray stop` (which stops every Ray
    # cluster of this user on the machine, other tests' included). The job agent gets a free
    # port: with the default (52365) another test's Ray, started alongside under
    # pytest-xdist, could hold it, and job submission then finds "no available agent".
    log = open(temp / "ray-start.log", "wb")
    head = subprocess.Popen(
        [f"{VENV_BIN}/ray", "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=3", f"--temp-dir={temp}",
         "--include-dashboard=true", f"--dashboard-agent-listen-port={agent}"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_dashboard(dash, token, head, temp / "ray-start.log")
    except BaseException:
        stop_group(head)
        raise
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_AUTH_MODE")}
    os.environ.update(HOME=str(home), RAY_AUTH_MODE="token")
    yield {"address": f"http://127.0.0.1:{dash}", "token": token}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    stop_group(head)
    log.close()


def wait_for_dashboard(port: int, token: str, head: subprocess.Popen, log_path: Path, timeout: float = 120) -> None:
    """Until the head's Jobs API answers (or the head exits, or the time is up)."""
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/jobs/",
                                     headers={"Authorization": f"Bearer {token}"})
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise AssertionError(f"ray start exited {head.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError(f"the head's dashboard did not answer in {timeout:.0f} s: {log_path.read_text()[-2000:]}")


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group (the head and every Ray process it started), then SIGKILL."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_dashboard_refuses_requests_without_the_token(cluster):
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{cluster['address']}/api/jobs/", timeout=10)
    assert info.value.code == 401
    request = urllib.request.Request(f"{cluster['address']}/api/jobs/",
                                     headers={"Authorization": f"Bearer {cluster['token']}"})
    assert urllib.request.urlopen(request, timeout=10).status == 200


def test_submit_status_logs_list_fetch(cluster, capsys, tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(scenes / "start.png")
    scene = scenes / "s.yaml"
    scene.write_text(TINY_SCENE.replace("steps: 10", "steps: 4").replace("skip_steps: 0", "skip_steps: 1")
                     .replace("seed: 5", "seed: random") + "n_batches: 2\ninit_image: start.png\n"
                     + 'cutn_batches: 1\ncut_overview: "[1]*1000"\ncut_innercut: "[1]*1000"\ninit_scale: 0\n')
    assert "seed: random" in scene.read_text()
    out = tmp_path / "cluster-out"
    code, stdout, err = run(capsys, "submit", str(scene), "--address", cluster["address"], "--out", str(out))
    assert code == 0, stdout[-3000:] + err[-3000:]
    job_id = next(line.split(": ", 1)[1] for line in stdout.splitlines() if line.startswith("job: "))
    assert "dashboard: http://127.0.0.1:" in stdout
    assert (out / "images" / "000001.png").exists()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["frames"][0]["init"]["kind"] == "image"

    code, stdout, _ = run(capsys, "status", job_id, "--address", cluster["address"])
    assert code == 0 and "SUCCEEDED" in stdout and str(out) in stdout
    code, stdout, _ = run(capsys, "logs", job_id, "--address", cluster["address"])
    assert code == 0 and "images:" in stdout
    code, stdout, _ = run(capsys, "list", "--address", cluster["address"])
    assert job_id in stdout
    fetched = tmp_path / "fetched"
    code, stdout, _ = run(capsys, "fetch", job_id, str(fetched), "--address", cluster["address"])
    assert code == 0
    assert (fetched / "images" / "000000.png").read_bytes() == (out / "images" / "000000.png").read_bytes()
    assert (fetched / "manifest.jsonl").exists()
    status = json.loads((out / "status.json").read_text())
    assert status["job_id"] == job_id  # what farm status/logs/cancel take
    code, stdout, _ = run(capsys, "cancel", job_id, "--address", cluster["address"])
    assert code == 0 and "already SUCCEEDED; nothing to cancel" in stdout

    # submitted again (preview setting changed): the random seed recorded in --out is reused
    # and the init image's new copy on the cluster (another folder) counts by its contents
    code, stdout, err = run(capsys, "submit", str(scene), "--address", cluster["address"], "--out", str(out),
                            "--set", "display_rate=3")
    assert code == 0, stdout[-3000:] + err[-3000:]
    assert "resuming: 2 finished frames verified and kept" in stdout
    assert json.loads((out / "plan.json").read_text())["seed"] == plan["seed"]

    # the job's driver leased its actor from the cluster's shared pool, which outlives it
    code, stdout, err = run(capsys, "queue", "--address", cluster["address"])
    assert code == 0, err
    assert "shared pool: 1 actor(s)" in stdout and "actor-0  lives 0  idle" in stdout
    code, stdout, _ = run(capsys, "list", "--address", cluster["address"])
    assert "SUCCEEDED" in stdout and stdout.count("\n") == 2  # the queue query is not a render job


def test_unknown_job_and_unreachable_cluster_are_one_line_errors(cluster, capsys):
    code, _, err = run(capsys, "status", "nope", "--address", cluster["address"])
    assert code == 2 and err.startswith("farm: error: no job 'nope'")
    code, _, err = run(capsys, "list", "--address", f"http://127.0.0.1:{free_port()}")
    assert code == 2 and err.startswith("farm: error: cannot reach the Ray cluster") and len(err.splitlines()) == 1


def test_cluster_submits_of_several_scenes_go_to_their_own_folders_and_keep_the_device(monkeypatch, tmp_path, capsys):
    """With --address each scene is a job: several go to --out/<scene name> (they all wrote
    into --out, each over the other), --device reaches the job, a random seed is left to the
    job (which reuses the one its --out records), and a relative --out is refused (it would be
    inside the job's temporary working directory)."""
    import yaml

    import farm.remote as remote

    submitted = []

    class FakeJobs:
        def submit_job(self, **kwargs):
            staged = Path(kwargs["runtime_env"]["working_dir"]) / "scene.yaml"
            submitted.append({**kwargs, "scene": yaml.safe_load(staged.read_text())})
            return kwargs["submission_id"]

    monkeypatch.setattr(remote, "client", lambda address: FakeJobs())
    scenes = []
    for name in ("one", "two"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(TINY_SCENE.replace("seed: 5", "seed: random").replace("name: t\n", f"name: {name}\n"))
        scenes.append(str(path))
    code, _, err = run(capsys, "submit", *scenes, "--address", "http://127.0.0.1:1", "--out", "/shared/renders",
                       "--device", "cuda:1", "--detach")
    assert code == 0, err
    outs = [job["metadata"]["out"] for job in submitted]
    assert outs == ["/shared/renders/one", "/shared/renders/two"]
    for job in submitted:
        assert "--device cuda:1" in job["entrypoint"] and job["scene"]["seed"] == "random"
        assert job["runtime_env"]["env_vars"]["DISCO_FARM_JOB_ID"] == job["submission_id"]
    code, _, err = run(capsys, "submit", scenes[0], "--address", "http://127.0.0.1:1", "--out", "renders/x")
    assert code == 2 and "a relative path would be a folder inside the job's temporary working directory" in err
    code, _, err = run(capsys, "submit", scenes[0], "--address", "http://127.0.0.1:1", "--out", "file://relout")
    assert code == 2 and "write file:///absolute/path" in err


def test_the_token_sent_in_plain_http_off_this_machine_is_warned_about(monkeypatch, capsys):
    import ray.job_submission

    import farm.remote as remote

    monkeypatch.setattr(ray.job_submission, "JobSubmissionClient", lambda address, headers: ("client", headers))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cret")
    assert remote.client("http://127.0.0.1:8265")[1]  # the tunnel of `ray dashboard`: fine
    assert capsys.readouterr().err == ""
    remote.client("http://ray-head.example:8265")
    assert "Ray's token goes to ray-head.example over plain http" in capsys.readouterr().err
