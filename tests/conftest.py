import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# OpenMP threads that wait spin: the tests' Ray actors, subprocesses and this process share
# 2 cores, and a 2-thread actor's spinning cost 10-20x the CPU of its render. Waiting
# threads sleep instead (set before torch loads OpenMP; inherited by Ray's workers and
# every subprocess). Pixels are the same.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def scene_file(tmp_path):
    """Write a scene text to a file in tmp_path and return its path."""

    def write(text: str, name: str = "scene.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="session")
def ray_temp_dir():
    """Makes short directories for Ray's session files. Ray's sockets (AF_UNIX paths, at most
    107 bytes) sit under its temp dir, and pytest's temp paths under an xdist worker
    (``.../pytest-N/popen-gw1/ray0/session_<date>_<pid>/sockets/plasma_store``) are too long."""
    made: list[Path] = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="ray-")))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


TINY_SCENE = """\
name: t
diffusion_model: tiny
clip_models: ["tiny-vit::random"]
width_height: [64, 64]
seed: 5
steps: 10
skip_steps: 0
text_prompts: {0: ["a red apple:2", "blue:1"]}
"""


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the process with pytest's exit status once pytest is done, skipping the
    interpreter's teardown: one full run in three on the development VM died there with a
    segmentation fault after every test had passed (C extensions' threads, Ray's or torch's,
    being finalised), which would fail CI on nothing the tests check."""
    if _EXIT_STATUS and not os.environ.get("DISCO_FARM_TEST_TEARDOWN"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
