"""The bad-input corpus: broken scene files and arguments.

Every case must end as exit code 2 with exactly one line on stderr that names the field
(where there is one), with no traceback, nothing on stdout and no file written anywhere
(how fast they fail is not timed here: tests check behaviour, not wall-clock time). Scene cases are files in tests/data/bad/ (each a whole scene with
one thing wrong; the input files they point at are made next to them by `sandbox`); each
runs through `farm validate`, `farm plan` and `farm submit` in-process via
`farm.cli.main`. `farm submit` must fail before it reaches the renderer (`submit_local` /
`submit_remote` are trip wires here). A few cases also run as real subprocesses to show
that no traceback reaches stderr.
"""

from __future__ import annotations

import io
import math
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import farm.remote
import farm.submit
from farm import scene as scene_module
from farm.cli import main
from farm.inputs import count_video_frames
from farm.scene import ClipRegistry, load_scene, open_clip_registry, resolve_clip_name

ROOT = Path(__file__).resolve().parents[1]
BAD = Path(__file__).parent / "data" / "bad"


@dataclass(frozen=True)
class Case:
    name: str  # tests/data/bad/<name>.yaml, or one of GENERATED
    field: str | None  # the setting the line must name; None: a problem of the file itself
    says: str  # part of the message


# fmt: off
SCENE_CASES = [
    # --- the file and its YAML
    Case("yaml-unclosed-flow", None, "expected ',' or ']'"),
    Case("yaml-bad-indentation", None, "mapping values are not allowed here"),
    Case("yaml-tab-indentation", None, "found character '\\t'"),
    Case("yaml-unclosed-quote", None, "expected <block end>"),
    Case("yaml-python-object-apply", None, "YAML tags that build objects are not allowed"),
    Case("yaml-merge-key", None, "YAML merge keys (<<) are not supported"),
    Case("prompts-frame-zero-twice", "text_prompts", "frame 0 is given twice"),
    Case("yaml-python-object-new", None, "YAML tags that build objects are not allowed"),
    Case("yaml-python-name", None, "YAML tags that build objects are not allowed"),
    Case("yaml-python-module", None, "YAML tags that build objects are not allowed"),
    Case("yaml-unknown-tag", None, "tag '!include'"),
    Case("yaml-billion-laughs", None, "document expands to more than 200000 values"),
    Case("yaml-deep-nesting", None, "nested more than 100 levels deep"),
    Case("yaml-deep-block-nesting", None, "nested more than 100 levels deep"),
    Case("yaml-duplicate-key", None, "duplicate key 'steps' (first on line 6)"),
    Case("yaml-duplicate-frame-key", None, "duplicate key '0' (first on line 9)"),
    Case("yaml-two-documents", None, "expected a single document"),
    Case("yaml-list-document", None, "a scene must be a mapping of settings, got a list"),
    Case("yaml-scalar-document", None, "a scene must be a mapping of settings, got str"),
    Case("yaml-complex-key", None, "mapping keys must be plain values"),
    Case("yaml-number-key", "42", "setting names must be text"),
    Case("yaml-control-character", None, "unacceptable character #x0007"),
    Case("yaml-integer-5000-digits", None, "a 5000-character integer is far too large"),
    Case("empty", None, "the scene is empty"),
    Case("comments-only", None, "the scene is empty"),
    Case("null-document", None, "the scene is empty"),
    Case("binary", None, "not a UTF-8 text file"),
    Case("latin-1", None, "not a UTF-8 text file (byte 0xe9"),
    Case("utf-16", None, "not a UTF-8 text file"),
    Case("five-mib", None, "larger than 4 MiB"),
    Case("a-directory", None, "is a directory"),
    Case("missing", None, "file not found"),
    # --- wrong types, huge and negative values
    Case("steps-word", "steps", "unknown name 'many'"),
    Case("width-height-string", "width_height", "expected [width, height]"),
    Case("width-height-one-number", "width_height", "expected [width, height]"),
    Case("width-height-negative", "width_height", "width -64 must be positive"),
    Case("width-height-100000", "width_height", "width 100000 is above the limit 8192"),
    Case("width-height-1e308", "width_height", "above the limit 8192"),
    Case("width-height-fraction", "width_height", "expected a whole number"),
    Case("max-frames-1e12", "max_frames", "above the maximum 100000"),
    Case("max-frames-negative", "max_frames", "below the minimum 1"),
    Case("max-frames-infinite", "max_frames", "finite"),
    Case("max-frames-nan", "max_frames", "finite"),
    Case("max-frames-400-digits", "max_frames", "far too large"),
    Case("steps-10-pow-100", "steps", "the schedule gives 1e+100, above the maximum 10000"),
    Case("steps-1e308", "steps", "above the maximum 10000"),
    Case("guidance-1e308", "clip_guidance_scale", "beyond the limit"),
    Case("guidance-overflows", "clip_guidance_scale", "finite"),
    Case("n-batches-1e12", "n_batches", "above the maximum"),
    Case("seed-negative", "seed", "between 0 and 4294967295"),
    Case("seed-too-big", "seed", "between 0 and 4294967295"),
    Case("seed-word", "seed", "expected a whole number"),
    Case("eta-above-1", "eta", "above the maximum 1"),
    Case("interpolation-unknown", "interpolation", "expected one of linear"),
    Case("animation-mode-unknown", "animation_mode", "expected one of None, 2D, 3D, Video Input"),
    Case("diffusion-model-number", "diffusion_model", "expected a non-empty string"),
    Case("diffusion-model-typo", "diffusion_model", "did you mean 'tiny'?"),
    Case("bool-as-text", "use_secondary_model", "expected true or false"),
    Case("prompts-number", "text_prompts", "expected {frame: [prompts]}"),
    Case("prompts-frame-word", "text_prompts", "frame key 'abc' is not a frame number"),
    Case("prompts-negative-frame", "text_prompts", "negative"),
    Case("prompts-not-text", "text_prompts", "expected a list of 'text:weight' strings"),
    Case("prompts-weights-sum-to-zero", "text_prompts", "sum to 0"),
    Case("prompts-infinite-weight", "text_prompts", "not finite"),
    Case("prompts-none", "text_prompts", "no prompts"),
    Case("cut-schedule-1001-entries", "cut_overview", "more than 1000 entries"),
    Case("cut-schedule-huge-count", "cut_overview", "is far more than 1000"),
    Case("cut-schedule-code", "cut_overview", "is not of the form [numbers]*count"),
    Case("cut-schedule-letters", "cut_innercut", "'a' is not a number"),
    Case("frames-skip-150-percent", "frames_skip_steps", "between 0% and 100%"),
    Case("frames-skip-string-number", "frames_skip_steps", "'30' is ambiguous: write '30%'"),
    Case("seed-underscores", "seed", "expected a whole number, got '1_000'"),
    Case("steps-huge-hex", "steps", "a 15960-bit integer is far too large"),  # str() of it failed
    Case("keyframes-yaml11-time", "angle", "expected '(' after ':'"),  # YAML 1.1 read 10:5 as 605
    Case("prompts-crossfade-through-zero", "text_prompts", "frame 4 (mid prompt_crossfade, the two sets mixed)"),
    Case("keyframe-int-beyond-float", "steps", "is far too large"),
    Case("cut-schedule-nan-number", "cut_ic_pow", "'nan' is not a finite number"),
    Case("cut-schedule-fraction-of-a-cut", "cut_innercut", "0.4 is not a whole number of cuts"),
    Case("frames-skip-negative", "frames_skip_steps", "must be between 0 and"),
    Case("transformation-percent-2", "transformation_percent", "fractions between 0 and 1"),
    Case("shot-cuts-decreasing", "cuts", "increasing positive frame numbers"),
    Case("shot-cut-after-end", "cuts", "not below max_frames 20"),
    Case("intermediate-saves-negative", "intermediate_saves", "between 0 and"),
    Case("custom-model-settings-text", "custom_model_settings", "expected a mapping"),
    Case("custom-model-settings-nested", "custom_model_settings", "plain values"),
    Case("unknown-setting-typo", "stepz", "unknown setting; did you mean 'steps'?"),
    Case("unknown-setting", "frobnicate", "unknown setting"),
    Case("unsupported-vr-mode", "vr_mode", "not supported"),
    Case("alias-given-twice", "batch_name", "given twice (also as 'name')"),
    Case("clip-switch-not-bool", "ViTB32", "expected true or false"),
    Case("clip-switches-all-off", "ViTB32", "every CLIP model is switched off"),
    Case("clip-unknown-architecture", "clip_models", "unknown CLIP architecture 'ViT-B-99'"),
    Case("clip-unknown-tag", "clip_models", "unknown pretrained tag 'nonexistent'"),
    Case("clip-empty-list", "clip_models", "expected a list of CLIP model names"),
    Case("clip-listed-twice", "clip_models", "listed twice"),
    Case("clip-weights-outside", "clip_models", "is outside the scene's folder"),
    Case("clip-list-and-switches", "clip_models", "not both"),
    Case("near-plane-beyond-far", "near_plane", "must be below far_plane"),
    Case("parallel-segments-for-stills", "parallel_segments", "animations only"),
    Case("images-per-call-for-animations", "images_per_call", "applies to stills"),
    Case("video-mode-without-video", "animation_mode", "Video Input needs video_init_path"),
    Case("custom-model-without-path", "diffusion_model", "needs custom_path"),
    # --- keyframe strings and expressions (never eval: no way into Python)
    Case("keyframe-syntax", "zoom", "expected ':' after frame number"),
    Case("expr-import", "angle", "attribute access is not allowed"),
    Case("expr-attribute", "angle", "attribute access is not allowed"),
    Case("expr-dunder-escape", "angle", "attribute access is not allowed"),
    Case("expr-lambda", "angle", "only the listed functions can be called"),
    Case("expr-builtins", "angle", "unknown name '__builtins__'"),
    Case("expr-open-file", "angle", "unknown function 'open'"),
    Case("expr-comprehension", "angle", "unknown function 'sum'"),
    Case("expr-getattr", "angle", "unknown function 'getattr'"),
    Case("expr-power-tower", "angle", "number too large"),
    Case("expr-division-by-zero", "angle", "division by zero"),
    Case("expr-division-by-zero-at-frame-5", "angle", "at frame 5: division by zero"),
    Case("expr-overflows-to-inf", "clip_guidance_scale", "not a finite number"),
    Case("expr-nested-too-deep", "angle", "nested too deeply"),
    Case("expr-too-long", "angle", "at most 1000 are allowed"),
    Case("zoom-keyframe-zero", "zoom", "the schedule gives 0, below the minimum 0.01"),
    Case("zoom-goes-negative", "zoom", "at frame 5, below the minimum 0.01"),
    Case("steps-keyframe-zero", "steps", "below the minimum 2"),
    Case("steps-one", "steps", "1 is below the minimum 2"),
    Case("cutn-batches-keyframe-1000", "cutn_batches", "above the maximum 64"),
    Case("eta-sine-goes-negative", "eta", "at frame 4, below the minimum 0"),
    Case("keyframe-frame-twice", "angle", "frame 0 is given twice"),
    Case("keyframe-negative-frame", "angle", "negative frame number"),
    Case("keyframe-frame-beyond-limit", "angle", "larger than 1000000000"),
    Case("keyframe-unclosed-parenthesis", "angle", "'(' is never closed"),
    Case("keyframe-empty", "angle", "empty keyframe string"),
    Case("keyframe-list", "angle", "got a list"),
    Case("key-frames-false-with-string", "angle", "plain number is required"),
    # --- input files: outside the scene's folder, missing, not what they claim to be
    Case("init-outside-dotdot", "init_image", "is outside the scene's folder"),
    Case("init-outside-absolute-tmp", "init_image", "is outside the scene's folder"),
    Case("init-etc-passwd", "init_image", "is outside the scene's folder"),
    Case("init-home", "init_image", "is outside the scene's folder"),
    Case("steps-respacing-string", "steps", "'ddim250' is steps: 250 with diffusion_sampling_mode: ddim"),
    Case("skip-all-steps", "skip_steps", "frame 0 would skip 10 of its 10 steps"),
    Case("prompts-empty-at-a-frame", "text_prompts", "frame 5 has no prompts (DD stops there)"),
    Case("prompt-weights-sum-near-zero", "text_prompts", "frame 0: the text and image prompt weights sum to 0.0005"),
    Case("depth-model-hub-id", "midas_depth_model", "expected one of dpt_large"),  # any hub repo was fetched
    Case("init-image-url", "init_image", "is a URL; URLs are not read: download the file into the scene's folder"),
    Case("image-prompt-url", "image_prompts", "is a URL; URLs are not read"),
    Case("init-symlink-outside", "init_image", "is outside the scene's folder"),
    Case("init-missing", "init_image", "not found"),
    Case("init-is-a-folder", "init_image", "is not a file"),
    Case("init-not-text", "init_image", "expected a file path"),
    Case("init-text-named-png", "init_image", "'text.png': not an image file"),
    Case("init-empty-png", "init_image", "'empty.png': not an image file"),
    Case("init-eps", "init_image", "'vector.eps': not an image file in a format read here (PNG, JPEG"),
    Case("init-truncated-png", "init_image", "'truncated.png': damaged image"),
    Case("init-truncated-jpeg", "init_image", "'truncated.jpg': damaged image"),
    Case("init-decompression-bomb", "init_image", "image is too large"),
    Case("image-prompt-outside", "image_prompts", "is outside the scene's folder"),
    Case("image-prompt-absolute", "image_prompts", "is outside the scene's folder"),
    Case("image-prompt-text-named-png", "image_prompts", "'text.png': not an image file"),
    Case("video-truncated", "video_init_path", "'truncated.mp4': not a readable video"),
    Case("video-text-named-mp4", "video_init_path", "'text.mp4': not a readable video"),
    Case("video-empty", "video_init_path", "'empty.mp4': not a readable video"),
    Case("video-outside", "video_init_path", "is outside the scene's folder"),
    Case("video-missing", "video_init_path", "not found"),
    Case("custom-checkpoint-outside", "custom_path", "is outside the scene's folder"),
    Case("init-symlink-loop", "init_image", "'loop1.png' cannot be resolved"),
    Case("init-png-short-pixel-data", "init_image", "'shortidat.png': damaged image"),
    # --- the name is the output folder: one plain folder name
    Case("name-path", "name", "must be a folder name, not a path"),
    Case("name-absolute", "name", "must be a folder name, not a path"),
    Case("name-dotdot", "name", "is not a usable folder name"),
    Case("name-newline", "name", "must not contain control or invisible characters"),
    Case("name-zero-width-space", "name", "must not contain control or invisible characters"),
    Case("name-hidden", "name", "starts with '.': a hidden folder"),
    Case("name-fsspec-chain", "name", "must not contain '::'"),
    Case("name-too-many-bytes", "name", "is 400 bytes in UTF-8; a folder name holds at most 255"),
    Case("clip-unknown-builtin", "clip_models", "unknown built-in CLIP model 'tiny-vit::foo'"),
    Case("name-too-long", "name", "is 101 characters long; at most 100"),
    # --- values the engine cannot render
    Case("cut-schedule-negative", "cut_overview", "-2 is below the minimum 0"),
    Case("cut-schedule-100000-cuts", "cut_innercut", "100000 is above the maximum 1024"),
    Case("cut-icgray-above-1", "cut_icgray_p", "2 is above the maximum 1"),
    Case("clamp-max-zero", "clamp_max", "the gradient would always be zero"),
]
# fmt: on

GENERATED = {"binary", "latin-1", "utf-16", "five-mib", "a-directory", "missing"}
GOOD_SCENE = (BAD / "steps-word.yaml").read_text().replace("steps: many", "steps: 10")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def make_inputs(scenes: Path, outside: Path) -> None:
    """The files the corpus points at: good ones, damaged ones, and good ones outside."""
    picture = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    png, jpeg = _encoded(picture, "PNG"), _encoded(picture, "JPEG")
    video = (ROOT / "scenes" / "input.mp4").read_bytes()
    (scenes / "good.png").write_bytes(png)
    (scenes / "good.mp4").write_bytes(video)
    (scenes / "text.png").write_text("this is not a picture\n")
    (scenes / "empty.png").write_bytes(b"")
    (scenes / "vector.eps").write_bytes(_encoded(picture, "EPS"))  # Pillow reads EPS only through Ghostscript
    (scenes / "truncated.png").write_bytes(png[: len(png) // 2])
    (scenes / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 1, 0, 0, 0, 0)  # 10^10 pixels in 100 bytes
    (scenes / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                                      + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))
    (scenes / "folder.png").mkdir()
    (scenes / "text.mp4").write_text("this is not a video\n")
    (scenes / "empty.mp4").write_bytes(b"")
    (scenes / "truncated.mp4").write_bytes(video[:3000])
    (outside / "secret.png").write_bytes(png)
    (outside / "clip.mp4").write_bytes(video)
    (scenes / "link.png").symlink_to(outside / "secret.png")
    (scenes / "loop1.png").symlink_to("loop2.png")
    (scenes / "loop2.png").symlink_to("loop1.png")
    pixels = zlib.compress(b"\0" * 10)  # valid chunks and CRCs, far too little pixel data for 64x64
    header = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    (scenes / "shortidat.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
                                           + _png_chunk(b"IDAT", pixels) + _png_chunk(b"IEND", b""))


def write_scene(name: str, scenes: Path, outside: Path) -> Path:
    """The scene file of a case, in the sandbox's scene folder."""
    path = scenes / f"{name}.yaml"
    if name == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif name == "latin-1":
        path.write_bytes(GOOD_SCENE.replace("name: bad", "name: café").encode("latin-1"))
    elif name == "utf-16":
        path.write_bytes(GOOD_SCENE.encode("utf-16"))
    elif name == "five-mib":
        path.write_text(GOOD_SCENE + ("# padding\n" * (5 * 1024 * 1024 // 10)))
    elif name == "a-directory":
        path.mkdir()
    elif name == "missing":
        pass
    else:
        path.write_text((BAD / path.name).read_text().replace("{outside}", str(outside)))
    return path


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folders` with its size and modification time."""
    seen = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                stat = path.lstat()
                seen[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return seen


class ReachedRendering(BaseException):
    """`farm submit` got past its checks to the renderer (BaseException: main cannot swallow it)."""


@dataclass
class Sandbox:
    root: Path
    scenes: Path
    outside: Path
    out: Path
    good: Path

    def scene(self, name: str) -> Path:
        return write_scene(name, self.scenes, self.outside)


@pytest.fixture(scope="module", autouse=True)
def warm_imports(tmp_path_factory):
    """The first call imports PIL, ffmpeg's path, the plan...: not part of the timed cases."""
    folder = tmp_path_factory.mktemp("warm")
    make_inputs(folder, folder)
    (folder / "warm.yaml").write_text(GOOD_SCENE + "init_image: good.png\nanimation_mode: Video Input\n"
                                      "video_init_path: good.mp4\n")
    with open(os.devnull, "w") as devnull:
        stdout, sys.stdout = sys.stdout, devnull
        try:
            assert main(["plan", str(folder / "warm.yaml"), "--frames", "0:2"]) == 0
            assert main(["validate", str(folder / "text.png")]) == 2
        finally:
            sys.stdout = stdout


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """scenes/ (cases and their input files), outside/ (good files outside the scene's
    folder), home/ as $HOME, work/ as the current folder; out/ is never created by a case."""
    scenes, outside, home, work = (tmp_path / name for name in ("scenes", "outside", "home", "work"))
    for folder in (scenes, outside, home, work):
        folder.mkdir()
    make_inputs(scenes, outside)
    good = scenes / "good.yaml"
    good.write_text(GOOD_SCENE)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)

    def trip(*args, **kwargs):
        raise ReachedRendering("farm submit reached the renderer")

    monkeypatch.setattr(farm.submit, "submit_local", trip)
    monkeypatch.setattr(farm.remote, "submit_remote", trip)
    return Sandbox(tmp_path, scenes, outside, tmp_path / "out", good)


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def command_lines(scene: Path, out: Path) -> dict[str, list[str]]:
    return {
        "validate": ["validate", str(scene)],
        "plan": ["plan", str(scene)],
        "submit": ["submit", str(scene), "--out", str(out)],
    }


def test_the_corpus_is_large_and_every_file_is_used():
    names = [case.name for case in SCENE_CASES]
    assert len(names) == len(set(names)) and len(names) >= 60
    on_disk = {path.stem for path in BAD.glob("*.yaml")}
    assert on_disk == set(names) - GENERATED


@pytest.mark.parametrize("case", SCENE_CASES, ids=lambda case: case.name)
def test_bad_scene_is_one_line_naming_the_field(case, sandbox, capsys):
    scene = sandbox.scene(case.name)
    before = snapshot(sandbox.root)
    repo_before = sorted(os.listdir(ROOT))
    for command, argv in command_lines(scene, sandbox.out).items():
        code, out, err = run_cli(capsys, argv)
        lines = err.splitlines()
        assert code == 2, (command, err)
        assert "Traceback" not in err
        assert out == "", command
        assert len(lines) == 1, (command, err)
        line = lines[0]
        assert line.startswith(f"{scene}:"), (command, line)
        if case.field is not None:
            assert f": {case.field}: " in line, (command, line)
        assert case.says in line, (command, line)
    assert snapshot(sandbox.root) == before  # nothing written, not even the output folder
    assert sorted(os.listdir(ROOT)) == repo_before
    assert not (sandbox.root / "pwned").exists() and not (sandbox.root / "work" / "pwned").exists()


# (arguments with {good} = a valid scene, {out} = the output folder, {file} = a plain file;
#  what the line must contain; the flag or field it must name)
ARGUMENT_CASES = [
    ("validate-without-scene", ["validate"], "the following arguments are required: SCENE", "SCENE"),
    ("validate-unknown-flag", ["validate", "{good}", "--bogus"], "unrecognized arguments: --bogus", "--bogus"),
    ("validate-set-huge", ["validate", "{good}", "--set", "max_frames=1e12"], "above the maximum", "max_frames"),
    ("validate-set-python-tag", ["validate", "{good}", "--set", "seed=!!python/name:os.system"],
     "YAML tags that build objects are not allowed", "--set"),
    ("plan-without-scene", ["plan"], "the following arguments are required: SCENE", "SCENE"),
    ("plan-frames-words", ["plan", "{good}", "--frames", "x:y"], "expected A:B", "--frames"),
    ("plan-frames-backwards", ["plan", "{good}", "--frames", "5:2"], "expected 0 <= A < B", "--frames"),
    ("plan-frames-negative", ["plan", "{good}", "--frames=-1:3"], "expected 0 <= A < B", "--frames"),
    ("plan-frames-negative-spaced", ["plan", "{good}", "--frames", "-1:3"], "expected 0 <= A < B", "--frames"),
    ("plan-frames-1e12", ["plan", "{good}", "--frames", "1e12"], "expected A:B", "--frames"),
    ("plan-frames-power", ["plan", "{good}", "--frames", "10**100"], "expected A:B", "--frames"),
    ("plan-frames-5000-digits", ["plan", "{good}", "--frames", "9" * 5000], "expected A:B", "--frames"),
    ("plan-frames-past-the-end", ["plan", "{good}", "--frames", "100:200"], "the scene has 50 (0 to 49)", "--frames"),
    ("plan-frames-empty", ["plan", "{good}", "--frames", ""], "expected A:B", "--frames"),
    ("plan-frames-underscores", ["plan", "{good}", "--frames", "1_0:2_0"], "expected A:B", "--frames"),
    ("plan-frames-full-width-digits", ["plan", "{good}", "--frames", "\uff10:\uff12"], "expected A:B", "--frames"),
    ("preview-missing-folder", ["preview", "{missing}"], "no such folder", "missing.yaml"),
    ("plan-frames-missing-value", ["plan", "{good}", "--frames"], "expected one argument", "--frames"),
    ("plan-set-bad-value", ["plan", "{good}", "--set", "steps=abc"], "unknown name 'abc'", "steps"),
    ("plan-set-no-key", ["plan", "{good}", "--set", "=3"], "expected key=value", "--set"),
    ("plan-set-no-equals", ["plan", "{good}", "--set", "steps"], "expected key=value", "--set"),
    ("plan-set-bad-yaml", ["plan", "{good}", "--set", "steps=[unclosed"], "not valid YAML", "--set"),
    ("plan-set-python-tag", ["plan", "{good}", "--set", 'steps=!!python/object/apply:os.system ["touch pwned"]'],
     "YAML tags that build objects are not allowed", "--set"),
    ("plan-set-unknown-key", ["plan", "{good}", "--set", "stepz=3"], "did you mean 'steps'?", "stepz"),
    ("plan-set-width-100000", ["plan", "{good}", "--set", "width_height=[100000, 64]"], "above the limit 8192",
     "width_height"),
    ("plan-set-outside", ["plan", "{good}", "--set", "init_image=/etc/passwd"], "outside the scene's folder",
     "init_image"),
    ("plan-unknown-flag", ["plan", "{good}", "--colour"], "unrecognized arguments: --colour", "--colour"),
    ("submit-frames-words", ["submit", "{good}", "--out", "{out}", "--frames", "x:y"], "expected A:B", "--frames"),
    ("submit-frames-backwards", ["submit", "{good}", "--out", "{out}", "--frames", "5:2"], "expected 0 <= A < B",
     "--frames"),
    ("submit-frames-past-the-end", ["submit", "{good}", "--out", "{out}", "--frames", "60:70"], "selects nothing",
     "--frames"),
    ("submit-frames-1e12", ["submit", "{good}", "--out", "{out}", "--frames", "0:1e12"], "expected A:B", "--frames"),
    ("submit-actors-zero", ["submit", "{good}", "--out", "{out}", "--actors", "0"], "must be at least 1", "--actors"),
    ("submit-actors-word", ["submit", "{good}", "--out", "{out}", "--actors", "many"], "invalid int value",
     "--actors"),
    ("submit-priority-word", ["submit", "{good}", "--out", "{out}", "--priority", "high"], "invalid int value",
     "--priority"),
    ("submit-device-banana", ["submit", "{good}", "--out", "{out}", "--device", "banana"],
     "expected cpu, cuda, cuda:N or mps", "--device"),
    ("submit-device-absent", ["submit", "{good}", "--out", "{out}", "--device", "cuda:7"], "this machine has",
     "--device cuda:7"),  # the actors failed to load their models after Ray had started
    ("submit-out-empty", ["submit", "{good}", "--out", ""], "expected a folder or a URI", "--out ''"),
    ("models-list-dir-is-a-file", ["models", "list", "--dir", "{file}"], "is not a folder", "--dir"),
    ("models-verify-dir-missing", ["models", "verify", "--dir", "{missing}"], "no such folder", "--dir"),
    ("submit-out-is-a-file", ["submit", "{good}", "--out", "{file}"], "exists and is not a folder", "--out"),
    ("submit-out-unknown-protocol", ["submit", "{good}", "--out", "nosuchproto://bucket/run"],
     "unknown storage protocol 'nosuchproto://'", "--out"),
    ("submit-out-backend-missing", ["submit", "{good}", "--out", "oci://bucket@space/run"],
     "the oci:// backend is not installed (Install ocifs", "--out"),
    ("submit-out-no-bucket", ["submit", "{good}", "--out", "s3://"], "no bucket or folder after 's3://'", "--out"),
    ("submit-out-read-only", ["submit", "{good}", "--out", "https://example.com/run"],
     "https:// locations cannot be written to", "--out"),
    ("submit-unknown-flag", ["submit", "{good}", "--out", "{out}", "--turbo"], "unrecognized arguments: --turbo",
     "--turbo"),
    ("submit-set-bad", ["submit", "{good}", "--out", "{out}", "--set", "eta=7"], "above the maximum 1", "--set eta"),
    ("plan-set-unquoted-keyframes", ["plan", "{good}", "--set", "zoom=0: (1)"], "quote keyframe strings", "--set zoom"),
    ("submit-two-scenes-one-name", ["submit", "{good}", "{good}", "--out", "{out}"],
     "scenes submitted together need different names", "name 'bad'"),
    ("submit-set-name-path", ["submit", "{good}", "--out", "{out}", "--set", "name=../x"],
     "must be a folder name, not a path", "name"),
    ("submit-out-symlink-loop", ["submit", "{good}", "--out", "{loop}"], "cannot be resolved: Symlink loop",
     "--out"),
    ("preview-symlink-loop", ["preview", "{loop}"], "cannot be resolved: Symlink loop", "loop-a"),
    ("preview-fps-zero", ["preview", "{out}", "--fps", "0"], "expected frames per second above 0", "--fps 0"),
    ("ui-root-is-a-file", ["ui", "--root", "{file}"], "is a file, not a folder of renders", "--root"),
    ("fetch-empty-uri", ["fetch", "memory://nothing-here/run", "{out}"], "nothing at memory://nothing-here/run",
     "memory://nothing-here/run"),
    ("preview-fps-huge", ["preview", "{out}", "--fps", "1e300"], "at most 1000", "--fps 1e+300"),
    ("submit-out-the-scenes-own-folder", ["submit", "{good}", "--out", "{scenes}"], "is the folder of",
     "--out"),
    ("submit-out-a-folder-of-other-files", ["submit", "{good}", "--out", "{work}"],  # would overwrite them
     "holds files that are not a Disco Farm render (loop-a, loop-b, not-a-folder)", "--out"),
    ("submit-frames-with-segments", ["submit", "{good}", "--out", "{out}", "--set", "animation_mode=2D", "--set",
                                     "parallel_segments=2", "--frames", "0:3"], "parallel_segments", "--frames"),
    ("submit-out-memory", ["submit", "{good}", "--out", "memory://bucket/run"],
     "memory:// lives only as long as this command", "--out"),
    ("submit-missing-scene", ["submit", "{missing}", "--out", "{out}"], "file not found", "missing.yaml"),
    ("validate-dev-zero", ["validate", "/dev/zero"], "larger than 4 MiB", "/dev/zero"),  # read bounded, not forever
    ("queue-no-address", ["queue"], "no cluster address: pass --address", "--address"),
    ("list-address-port-word", ["list", "--address", "ray://x:y"], "its port is not a number", "ray://x:y"),
    ("list-address-no-host", ["list", "--address", "http://"], "no host name in the address", "http://"),
    ("unknown-command", ["frobnicate"], "invalid choice: 'frobnicate'", "frobnicate"),
    ("unknown-global-flag", ["--frobnicate", "validate", "{good}"], "unrecognized arguments: --frobnicate",
     "--frobnicate"),
]


@pytest.mark.parametrize("argv, says, names", [case[1:] for case in ARGUMENT_CASES],
                         ids=[case[0] for case in ARGUMENT_CASES])
def test_bad_arguments_are_one_line(argv, says, names, sandbox, capsys):
    plain_file = sandbox.root / "work" / "not-a-folder"
    plain_file.write_text("x")
    loop = sandbox.root / "work" / "loop-a"
    loop.symlink_to("loop-b")
    (sandbox.root / "work" / "loop-b").symlink_to("loop-a")
    values = {"good": str(sandbox.good), "out": str(sandbox.out), "file": str(plain_file),
              "missing": str(sandbox.scenes / "missing.yaml"), "loop": str(loop), "scenes": str(sandbox.scenes),
              "work": str(sandbox.root / "work")}
    argv = [arg.format(**values) if arg.startswith("{") else arg for arg in argv]
    before = snapshot(sandbox.root)
    code, out, err = run_cli(capsys, argv)
    lines = err.splitlines()
    assert code == 2, err
    assert "Traceback" not in err and out == ""
    assert len(lines) == 1, err
    assert says in lines[0] and names in lines[0], lines[0]
    assert snapshot(sandbox.root) == before


def test_a_checkpoint_not_downloaded_is_named_before_anything_starts(sandbox, capsys, monkeypatch):
    """DD's default model not yet fetched (the likeliest first-run mistake): one line with
    the command that fetches it, before Ray starts or anything is written."""
    monkeypatch.setenv("DISCO_FARM_MODELS", str(sandbox.root / "empty-model-cache"))
    scene = sandbox.scenes / "dd-models.yaml"
    scene.write_text(GOOD_SCENE.replace("diffusion_model: tiny\n", ""))
    assert main(["validate", str(scene)]) == 0  # the scene itself is fine
    before = snapshot(sandbox.root)
    code, out, err = run_cli(capsys, ["submit", str(scene), "--out", str(sandbox.out)])
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "models 512x512_diffusion_uncond_finetune_008100, secondary_model_imagenet_2 are not downloaded" in err
    assert ("farm models download 512x512_diffusion_uncond_finetune_008100 secondary_model_imagenet_2" in err
            and str(scene) in err)
    assert snapshot(sandbox.root) == before


def test_video_inputs_raft_weights_not_downloaded_are_named_before_anything_starts(sandbox, capsys, monkeypatch):
    """Video Input's flow warp uses RAFT (as DD): its weights are a download like the models'."""
    from farm.cli import check_models_present

    monkeypatch.setenv("DISCO_FARM_MODELS", str(sandbox.root / "empty-model-cache"))
    monkeypatch.setenv("TORCH_HOME", str(sandbox.root / "empty-torch-home"))  # no VGG16 in torch's cache
    monkeypatch.delenv("DISCO_FARM_VGG16", raising=False)
    scene = sandbox.scenes / "video-raft.yaml"
    scene.write_text(GOOD_SCENE.replace("diffusion_model: tiny\n", "diffusion_model: custom\ncustom_path: good.png\n")
                     + "animation_mode: Video Input\nvideo_init_path: good.mp4\nuse_secondary_model: false\n")
    before = snapshot(sandbox.root)
    code, out, err = run_cli(capsys, ["submit", str(scene), "--out", str(sandbox.out)])
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    # RAFT, and LPIPS' VGG16 (every Video Input frame is guided toward its init by video_init_frames_scale)
    assert "models raft_large_C_T_V1, vgg16 are not downloaded" in err
    assert "farm models download raft_large_C_T_V1 vgg16" in err
    assert snapshot(sandbox.root) == before
    scene.write_text(scene.read_text() + "video_flow_model: dis\nvideo_init_frames_scale: 0\n")  # need neither
    check_models_present([(str(scene), load_scene(scene))])


def test_3ds_depth_model_missing_offline_is_named_before_anything_starts(sandbox, monkeypatch):
    """Offline (HF_HUB_OFFLINE, as `make` sets) a 3D render needs DPT-Large in a cache;
    online it is fetched on first use."""
    from farm.cli import UsageError, check_models_present

    monkeypatch.setenv("DISCO_FARM_MODELS", str(sandbox.root / "empty-model-cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(sandbox.root / "empty-hf-cache"))
    scene = sandbox.scenes / "depth.yaml"
    scene.write_text(GOOD_SCENE.replace("diffusion_model: tiny\n", "diffusion_model: custom\ncustom_path: good.png\n")
                     + "animation_mode: 3D\nuse_secondary_model: false\nframes_scale: 0\nmax_frames: 3\n")
    loaded = load_scene(scene)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="model 'dpt-large' is not downloaded.*farm models download dpt-large"):
        check_models_present([(str(scene), loaded)])
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    check_models_present([(str(scene), loaded)])


def test_an_output_location_that_cannot_be_written_names_out(tmp_path, monkeypatch, capsys):
    """The real submit (no sandbox stand-in): it fails making the folder, before Ray starts."""
    monkeypatch.chdir(tmp_path)
    scene = tmp_path / "good.yaml"
    scene.write_text(GOOD_SCENE)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, out, err = run_cli(capsys, ["submit", str(scene), "--out", str(blocker / "run")])
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"farm: error: --out {blocker / 'run'}: cannot write there: Not a directory"), err


def test_a_second_submit_into_a_folder_being_rendered_is_refused(tmp_path, capsys):
    """Two `farm submit` into one --out overwrote each other's frames, and both said they
    succeeded. The render holds the folder; a second submit is one line, exit 2, and
    changes nothing there."""
    import textwrap

    scene = tmp_path / "scene.yaml"
    scene.write_text(GOOD_SCENE)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from farm.output import OutputFolder
        folder = OutputFolder({str(out)!r})
        folder.prepare()
        folder.claim()
        (folder.root / "scene.yaml").write_text("the first render's")
        print("held", flush=True)
        sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = run_cli(capsys, ["submit", str(scene), "--out", str(out)])
        assert code == 2 and err.splitlines() == [
            f"farm: error: {out}: another farm submit (pid {holder.pid}) is rendering into this folder; "
            "wait for it to end, or choose another --out"]
        assert (out / "scene.yaml").read_text() == "the first render's"
    finally:
        holder.communicate("", timeout=30)
    from farm.submit import prepare_job

    _, _, folder, _, _ = prepare_job(str(scene), out, {})  # the first one ended: free again
    assert (out / "scene.yaml").read_text() != "the first render's"
    folder.release()


def test_frames_from_other_settings_are_announced_before_they_are_replaced(tmp_path, capsys):
    from farm.output import ManifestEntry, OutputFolder
    from farm.plan import resolve
    from farm.scene import parse_scene
    from farm.submit import replaced_frames

    plan = resolve(parse_scene(GOOD_SCENE + "animation_mode: 2D\nmax_frames: 4\n"))
    folder = OutputFolder(tmp_path / "out")
    folder.prepare()
    for frame in plan.frames[:3]:  # frames 0-1 from these settings, frame 2 from other ones
        file, sha = folder.write_frame("frame", frame.index, np.zeros((64, 64, 3), np.uint8))
        same = frame.index < 2
        folder.append_manifest(ManifestEntry(index=frame.index, kind="frame", file=file, sha256=sha, seed=1,
                                             settings_hash=plan.frame_hashes[frame.index] if same else "changed"))
    assert replaced_frames(folder, plan) == 1


def test_more_actors_than_the_machine_can_place_are_capped_with_a_note(capsys):
    from farm.submit import _at_most

    assert _at_most(None, 2, "CPUs") == 2 and _at_most(1, 2, "CPUs") == 1
    capsys.readouterr()
    assert _at_most(4, 2, "CPUs") == 2  # two of them could never start: their frames would wait for ever
    assert capsys.readouterr().err.strip() == "farm: --actors 4: this machine has 2 CPUs (one per actor); using 2"


def test_a_frames_range_inside_a_chain_is_refused_before_anything_is_written(tmp_path):
    from farm.submit import SubmitError, prepare_job

    scene = tmp_path / "anim.yaml"
    scene.write_text(GOOD_SCENE + "animation_mode: 2D\nmax_frames: 4\n")
    with pytest.raises(SubmitError, match="starts inside a chain: frame 2 needs frame 1"):
        prepare_job(str(scene), tmp_path / "out", {}, range(2, 4))
    assert not (tmp_path / "out").exists()


def test_frames_of_a_video_scene_are_counted_on_the_extracted_video(tmp_path):
    """`--frames 3:` on a Video Input scene meant frames 3 to max_frames (10000): an
    IndexError. The range now ends at the frames the video gave; past them is one line."""
    from farm.submit import SubmitError, prepare_job

    (tmp_path / "input.mp4").write_bytes((ROOT / "scenes" / "input.mp4").read_bytes())
    scene = tmp_path / "video.yaml"
    scene.write_text(GOOD_SCENE + "animation_mode: Video Input\nvideo_init_path: input.mp4\nmax_frames: 10000\n")
    _, plan, _, _, frames = prepare_job(str(scene), tmp_path / "out", {}, range(0, 10000))
    assert 1 < len(plan.frames) < 10000 and frames == range(len(plan.frames))
    with pytest.raises(SubmitError, match=f"selects nothing; the video gave {len(plan.frames)} frames"):
        prepare_job(str(scene), tmp_path / "out", {}, range(len(plan.frames), 10000))


def test_a_video_scene_extracts_only_the_frames_it_uses(tmp_path):
    """Every frame of the input video was decoded and written as a PNG, whatever max_frames
    said (a film: hours and hundreds of GB before the first frame). Now every nth frame, at
    most max_frames of them; frame k reads video frame k * extract_nth_frame."""
    from animation.video import extract_frames
    from farm.submit import prepare_job

    (tmp_path / "input.mp4").write_bytes((ROOT / "scenes" / "input.mp4").read_bytes())
    scene = tmp_path / "video.yaml"
    scene.write_text(GOOD_SCENE + "animation_mode: Video Input\nvideo_init_path: input.mp4\n"
                     "extract_nth_frame: 3\nmax_frames: 4\n")
    _, plan, folder, inputs, _ = prepare_job(str(scene), tmp_path / "out", {})
    assert len(plan.frames) == 4 and [f.init.video_frame for f in plan.frames] == [0, 3, 6, 9]
    assert sorted(p.name for p in inputs.video_frames_dir.iterdir()) == [f"{i:06d}.png" for i in range(4)]
    every = extract_frames(tmp_path / "input.mp4", tmp_path / "every", size=(64, 64))
    for number in (0, 3, 9):
        assert np.array_equal(inputs.video_frame(number, 3, (64, 64)), np.asarray(Image.open(every[number])))


def test_each_problem_is_one_line(sandbox, capsys):
    scene = sandbox.scenes / "three.yaml"
    scene.write_text(GOOD_SCENE.replace("[64, 64]", "[65, 64]") + "stepz: 3\ninit_image: text.png\n")
    code, _, err = run_cli(capsys, ["validate", str(scene), str(sandbox.good)])
    assert code == 2
    assert err.splitlines() == [
        f"{scene}:4: width_height: width 65 is not a multiple of 64 (DD rendered 64)",
        f"{scene}:9: stepz: unknown setting; did you mean 'steps'?",
    ]  # cross-field and file checks run once the fields themselves are right
    scene.write_text(GOOD_SCENE + "init_image: text.png\nimage_prompts: {0: ['../outside/secret.png']}\n")
    code, _, err = run_cli(capsys, ["validate", str(scene)])
    lines = err.splitlines()
    assert code == 2 and len(lines) == 2
    assert ": init_image: 'text.png': not an image file" in lines[0]
    assert ": image_prompts: '../outside/secret.png'" in lines[1] and "outside" in lines[1]


def test_a_model_folder_that_is_a_file_is_called_that(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "models"
    blocker.write_text("x")
    code, _, err = run_cli(capsys, ["models", "download", "--dir", str(blocker), "256x256_diffusion_uncond"])
    assert code == 2 and err.strip() == f"farm: error: --dir {blocker}: is not a folder"
    monkeypatch.setenv("DISCO_FARM_MODELS", str(blocker))
    code, _, err = run_cli(capsys, ["models", "download", "256x256_diffusion_uncond"])
    assert code == 1 and err.strip() == f"farm: error: cannot create model folder {blocker}: it is a file, not a folder"


def test_a_flood_of_problems_is_cut_short(sandbox, capsys):
    scene = sandbox.scenes / "flood.yaml"
    scene.write_text(GOOD_SCENE + "".join(f"unknown_{i}: 1\n" for i in range(500)))
    code, _, err = run_cli(capsys, ["validate", str(scene)])
    lines = err.splitlines()
    assert code == 2 and len(lines) == 51 and lines[-1] == "... and 450 more problems"
    assert all("unknown setting" in line for line in lines[:50])


def test_good_input_files_pass_the_same_checks(sandbox, capsys):
    """The controls: real images, a real video and local CLIP weights inside the folder."""
    (sandbox.scenes / "weights.pt").write_bytes(b"weights")
    scene = sandbox.scenes / "fine.yaml"
    scene.write_text(GOOD_SCENE.replace('["tiny-vit::random"]', '["ViT-B-32::weights.pt"]')
                     + "init_image: good.png\nimage_prompts: {0: ['good.png:2']}\n"
                     + "animation_mode: Video Input\nvideo_init_path: good.mp4\nextract_nth_frame: 2\n"
                     + 'angle: "0:(10*sin(2*pi*t/48))"\neta: "0:(0.5), 5:(1)"\n')
    code, out, err = run_cli(capsys, ["validate", str(scene)])
    frames = math.ceil(count_video_frames(sandbox.scenes / "good.mp4") / 2)  # every 2nd video frame
    assert frames > 2
    assert code == 0 and err == "" and f"Video Input animation, {frames} frames" in out
    loaded = load_scene(scene)
    assert loaded["init_image"] == str(sandbox.scenes / "good.png")
    assert loaded["clip_models"] == (f"ViT-B-32::{sandbox.scenes / 'weights.pt'}",)
    code, out, err = run_cli(capsys, ["plan", str(scene), "--frames", f"{frames - 2}:"])
    assert code == 0 and [row.split()[0] for row in out.splitlines()[2:]] == [str(frames - 2), str(frames - 1)]
    code, _, err = run_cli(capsys, ["plan", str(scene), "--frames", f"{frames}:"])
    assert code == 2 and f"the scene has {frames} (0 to {frames - 1})" in err


def test_submit_checks_before_it_renders(sandbox, capsys):
    """The trip wire is live: a good scene reaches it; the bad cases above never do."""
    with pytest.raises(ReachedRendering):
        main(["submit", str(sandbox.good), "--out", str(sandbox.out), "--frames", "0:2"])
    assert not sandbox.out.exists()


SUBPROCESS_CASES = [
    ["validate", "scenes/yaml-python-object-apply.yaml"],
    ["validate", "scenes/init-truncated-png.yaml"],
    ["plan", "scenes/yaml-billion-laughs.yaml"],
    ["plan", "scenes/binary.yaml"],
    ["submit", "scenes/good.yaml", "--out", "out", "--frames", "5:2"],
    ["submit", "scenes/expr-import.yaml", "--out", "out"],
    ["submit", "scenes/good.yaml", "--out", "nosuchproto://bucket/run"],
]


def test_no_traceback_reaches_a_real_terminal(sandbox):
    """Real processes (started together to save time): exit 2, one line, nothing written."""
    for argv in SUBPROCESS_CASES:
        if argv[1].startswith("scenes/") and argv[1] != "scenes/good.yaml":
            sandbox.scene(Path(argv[1]).stem)
    before = snapshot(sandbox.root)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(sandbox.root / "home")}
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(name, None)
    runs = [subprocess.Popen([sys.executable, "-m", "farm.cli", *argv], cwd=sandbox.root, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for argv in SUBPROCESS_CASES]
    for argv, run in zip(SUBPROCESS_CASES, runs):
        out, err = run.communicate(timeout=120)
        assert run.returncode == 2, (argv, err)
        assert "Traceback" not in err and out == "", argv
        assert len(err.splitlines()) == 1, (argv, err)
    assert snapshot(sandbox.root) == before


# --------------------------------------------------------------------------- CLIP names


def test_clip_names_are_checked_without_importing_torch():
    """Validating a scene with real CLIP names reads the cached registry (no torch import)."""
    code = ("import sys; from farm.scene import load_scene; "
            "scene = load_scene('scenes/lighthouse-2d.yaml'); "
            "print(scene['clip_models'], 'torch' in sys.modules, 'open_clip' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["('ViT-B-32::openai',", "'ViT-B-16::openai',", "'RN50::openai')", "False", "False"]


def test_a_stale_cache_is_not_trusted(monkeypatch):
    """Another open_clip version: its own registry is asked (here a stand-in with one model)."""
    stand_in = ClipRegistry("9.9.9", ("ViT-X-1",), {"ViT-X-1": ("newtag",)})
    with monkeypatch.context() as patch:
        patch.setattr(scene_module, "_installed_open_clip_version", lambda: "9.9.9")
        patch.setattr(scene_module, "live_open_clip_registry", lambda: stand_in)
        open_clip_registry.cache_clear()
        try:
            assert open_clip_registry() is stand_in
            assert scene_module._clip_name("ViT-X-1::newtag") == "ViT-X-1::newtag"
        finally:
            open_clip_registry.cache_clear()
    assert open_clip_registry().version == scene_module._installed_open_clip_version()


SPELLINGS = ["ViT-B-32::openai", "ViT-B-32::laion2b_s34b_b79k", "ViT-B/32", "ViT-B/16", "ViT-L/14@336px", "RN50x4",
             "RN101", "ViT-B-16", "ViTB32_laion2b_e16", "ViTB32_laion400m_32", "ViTB32quickgelu_laion400m_e31",
             "RN50_yffcc15m", "RN50_quickgelu_cc12m", "RN101_quickgelu_yfcc15m", "tiny-clip::seed3",
             "ViT-B-32::/models/vit.pt", "ViT-B-23::openai", "ViT-B-32::laion2b_e61", "ViT-B-32::",
             "ViT-B-16-plus-240", "", "coca_ViT-B-32", "convnext_base"]


@pytest.mark.slow
def test_cached_open_clip_names_match_open_clip():
    """farm/open_clip_names.json is open_clip's registry, and names resolve exactly as
    engine.catalogue.parse_clip_name resolves them (which imports open_clip).
    After upgrading open_clip: python -c 'from farm.scene import write_open_clip_names as w; w()'."""
    from engine.catalogue import ModelError, parse_clip_name
    from farm.scene import live_open_clip_registry

    cached, live = open_clip_registry(), live_open_clip_registry()
    assert cached.version == live.version
    assert cached.models == live.models
    assert dict(cached.pretrained) == dict(live.pretrained)
    for spelling in SPELLINGS:
        try:
            expected = parse_clip_name(spelling)
        except ModelError as exc:
            with pytest.raises(ModelError) as info:
                resolve_clip_name(spelling, cached)
            assert str(info.value) == str(exc)
        else:
            assert resolve_clip_name(spelling, cached) == expected, spelling
