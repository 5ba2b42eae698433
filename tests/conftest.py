import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
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
