"""`farm import-dd` with bad inputs: one line naming the file and DD's key, exit 2, no traceback."""

import json
import os
from pathlib import Path

import pytest

from farm import importdd
from farm.cli import main
from farm.scene import SceneInvalid, load_scene

GOOD = {"text_prompts": {"0": ["a cat:2"]}, "width": 64, "height": 64, "steps": 10,
        "diffusion_model": "512x512_diffusion_uncond_finetune_008100", "batch_name": "imp", "seed": 1}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def settings_file(tmp_path, content, name="settings.txt"):
    path = tmp_path / name
    if isinstance(content, dict):
        content = json.dumps(content)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def one_line_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def import_bad(capsys, tmp_path, content, *needles):
    src = settings_file(tmp_path, content)
    out = tmp_path / "out.yaml"
    code, _, err = run(capsys, "import-dd", src, "-o", out)
    line = one_line_error(code, err, str(src), *needles)
    assert "out.yaml" not in line and not out.exists()
    return line


# --------------------------------------------------------------------------- 1. nesting


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000,
                                  '{"a": ' * 100_000 + "1" + "}" * 100_000,
                                  json.dumps({**GOOD, "angle": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]})])
def test_deep_nesting(capsys, tmp_path, text):
    import_bad(capsys, tmp_path, text, "not DD settings JSON: nested too deeply")


# --------------------------------------------------------------------------- 2. size


def test_huge_file_is_refused_unread(capsys, tmp_path):
    big = tmp_path / "settings.txt"
    with open(big, "wb") as file:
        file.truncate(64 * 1024 * 1024)  # sparse: costs no disk
    code, _, err = run(capsys, "import-dd", big, "-o", tmp_path / "out.yaml")
    one_line_error(code, err, str(big), "larger than 4 MiB")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dev_zero(capsys, tmp_path):
    code, _, err = run(capsys, "import-dd", "/dev/zero", "-o", tmp_path / "out.yaml")
    one_line_error(code, err, "/dev/zero", "larger than 4 MiB")


# --------------------------------------------------------------------------- 3. integers


def test_integer_with_5000_digits(capsys, tmp_path):
    text = json.dumps(GOOD)[:-1] + ', "clip_guidance_scale": 1' + "0" * 4999 + "}"
    import_bad(capsys, tmp_path, text, "clip_guidance_scale", "5000 digits")


def test_long_integer_nested(capsys, tmp_path):
    text = '{"text_prompts": {"0": ["x"]}, "angle": [1, ' + "9" * 200 + "]}"
    import_bad(capsys, tmp_path, text, "angle", "200 digits")


# --------------------------------------------------------------------------- 4. scene problems


@pytest.mark.parametrize("extra, needles", [
    ({"angle": {"0": 1}}, ["settings.txt: angle: expected a number"]),
    ({"width": "sixty"}, ["width/height", "'sixty'"]),
    ({"interp_spline": "Bogus"}, ["interp_spline:", "linear"]),  # DD's name, not ours (interpolation)
    ({"set_seed": "abc", "seed": None}, []),
    ({"diffusion_model": "secondary"}, ["diffusion_model:", "unknown diffusion model"]),
    ({"text_prompts": {"zero": ["x"]}}, ["text_prompts:", "'zero'"]),
    ({"steps": float("nan")}, ["steps:", "finite"]),
    ({"ViTB32": "yes"}, ["ViTB32:", "true or false"]),
    ({"ViTB32": False, "ViTB16": False, "RN50": False}, ["ViTB32, ViTB16, RN50:", "every CLIP model is switched off"]),
    ({"init_image": "/etc/passwd"}, ["init_image:", "outside the scene's folder"]),
])
def test_scene_problems_name_the_settings_file_and_dd_key(capsys, tmp_path, extra, needles):
    settings = {**GOOD, **extra}
    if "seed" in extra:
        del settings["seed"]
        needles = ["set_seed:"]
    import_bad(capsys, tmp_path, json.dumps(settings), *needles)


def test_unknown_dd_keys_are_notes_not_errors(capsys, tmp_path):
    src = settings_file(tmp_path, {**GOOD, "whatever": 1, "seed": 5, "set_seed": "random_seed"})
    out = tmp_path / "out.yaml"
    code, _, err = run(capsys, "import-dd", src, "-o", out)
    assert code == 0, err
    assert "dropped whatever" in err and "dropped set_seed: seed is used" in err
    assert load_scene(out)["seed"] == 5


def test_duplicate_key(capsys, tmp_path):
    import_bad(capsys, tmp_path, '{"steps": 10, "steps": 20}', "'steps'", "twice")


@pytest.mark.parametrize("content, needles", [
    (b"", ["empty"]),
    (b'{"text_prompts": {"0": ["caf\xe9"]}}', ["not a UTF-8 text file", "0xe9"]),
    (b"[1, 2]", ["expected a JSON object"]),
    (b"{not json", ["not DD settings JSON"]),
])
def test_not_settings(capsys, tmp_path, content, needles):
    import_bad(capsys, tmp_path, content, *needles)


def test_settings_is_a_folder(capsys, tmp_path):
    code, _, err = run(capsys, "import-dd", tmp_path, "-o", tmp_path / "out.yaml")
    one_line_error(code, err, str(tmp_path), "is a folder")


# --------------------------------------------------------------------------- 5. -o


def _write_fails(monkeypatch, errno, strerror):
    def fail(path, text):
        raise OSError(errno, strerror, str(Path(path).parent / f".{Path(path).name}.abc123.tmp"))

    monkeypatch.setattr("farm.storage.write_text_atomic", fail)


@pytest.mark.parametrize("case", ["folder", "missing_parent", "parent_is_file", "read_only", "device"])
def test_output_problems_direct(tmp_path, monkeypatch, case):
    src = settings_file(tmp_path, GOOD)
    out = {"folder": tmp_path, "missing_parent": tmp_path / "no" / "such" / "x.yaml",
           "parent_is_file": src / "x.yaml", "read_only": tmp_path / "out.yaml", "device": Path("/dev/null")}[case]
    if case == "read_only":
        _write_fails(monkeypatch, 30, "Read-only file system")
    with pytest.raises(importdd.DDImportError) as info:
        importdd.import_dd(src, out)
    message = str(info.value)
    assert message.startswith(f"-o {out}: ") and "\n" not in message and ".tmp" not in message
    expected = {"folder": "is a folder, not a file", "missing_parent": "does not exist",
                "parent_is_file": "is not a folder", "read_only": "cannot write: Read-only file system",
                "device": "not a regular file"}[case]
    assert expected in message
    assert not (tmp_path / "no").exists()


def test_output_is_the_settings_file(tmp_path):
    src = settings_file(tmp_path, GOOD)
    with pytest.raises(importdd.DDImportError, match="is the DD settings file itself"):
        importdd.import_dd(src, src)
    assert json.loads(src.read_text()) == GOOD


def test_output_is_a_folder_cli(capsys, tmp_path):
    src = settings_file(tmp_path, GOOD)
    folder = tmp_path / "dd"
    folder.mkdir()
    code, _, err = run(capsys, "import-dd", src, "-o", folder)
    line = one_line_error(code, err, f"-o {folder}", "is a folder")
    assert ".tmp" not in line


def test_output_parent_missing_cli(capsys, tmp_path):
    src = settings_file(tmp_path, GOOD)
    code, _, err = run(capsys, "import-dd", src, "-o", tmp_path / "no" / "x.yaml")
    one_line_error(code, err, "-o ", "does not exist")


def test_output_read_only_cli(capsys, tmp_path, monkeypatch):
    src = settings_file(tmp_path, GOOD)
    _write_fails(monkeypatch, 13, "Permission denied")
    code, _, err = run(capsys, "import-dd", src, "-o", tmp_path / "out.yaml")
    line = one_line_error(code, err, "-o ", "Permission denied")
    assert ".tmp" not in line


def test_relative_init_image_missing_names_settings_file(capsys, tmp_path):
    out_dir = tmp_path / "scenes"
    out_dir.mkdir()
    import_bad(capsys, tmp_path, {**GOOD, "init_image": "nope.png"}, "init_image:", "nope.png")


def test_relative_init_image_found_beside_output(capsys, tmp_path):
    out_dir = tmp_path / "scenes"
    out_dir.mkdir()
    (out_dir / "init.png").write_bytes(b"x")
    src = settings_file(tmp_path, {**GOOD, "init_image": "init.png"})
    code, _, err = run(capsys, "import-dd", src, "-o", out_dir / "out.yaml")
    assert code == 0, err


# --------------------------------------------------------------------------- 6. BOM


def test_utf8_bom_is_accepted(capsys, tmp_path):
    src = settings_file(tmp_path, b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    out = tmp_path / "out.yaml"
    code, _, err = run(capsys, "import-dd", src, "-o", out)
    assert code == 0, err
    assert load_scene(out)["width_height"] == (64, 64)


# --------------------------------------------------------------------------- 7. width/height


@pytest.mark.parametrize("change, key", [({"width": None}, "width"), ({"height": None}, "height")])
def test_null_width_or_height(capsys, tmp_path, change, key):
    import_bad(capsys, tmp_path, {**GOOD, **change}, f"settings.txt: {key}: ", "null", "width_height")


def test_width_without_height(capsys, tmp_path):
    settings = dict(GOOD)
    del settings["height"]
    import_bad(capsys, tmp_path, settings, "settings.txt: height: missing", "width_height")


# --------------------------------------------------------------------------- 8. URLs


@pytest.mark.parametrize("extra, key", [
    ({"init_image": "http://example.com/a.png"}, "init_image"),
    ({"init_image": "HTTPS://example.com/a.png"}, "init_image"),
    ({"image_prompts": {"0": ["https://example.com/a.png:2"]}}, "image_prompts"),
    ({"image_prompts": ["http://example.com/a.png"]}, "image_prompts"),
    ({"video_init_path": "https://example.com/v.mp4"}, "video_init_path"),
])
def test_urls_are_refused(capsys, tmp_path, extra, key):
    line = import_bad(capsys, tmp_path, {**GOOD, **extra}, f"{key}:", "URLs are not supported",
                      "download the file")
    assert "looked at" not in line


# --------------------------------------------------------------------------- 9. batch_name


@pytest.mark.parametrize("name", ["../../evil", "a/b", "a\\b", "..", "x" * 101, "tab\there"])
def test_unsafe_batch_name(capsys, tmp_path, name):
    line = import_bad(capsys, tmp_path, {**GOOD, "batch_name": name}, "batch_name:")
    assert "name: " in line


def test_scene_header_cannot_be_injected_by_the_file_name(capsys, tmp_path):
    src = settings_file(tmp_path, GOOD, name="a\nseed: 99\n.txt")
    out = tmp_path / "out.yaml"
    code, _, err = run(capsys, "import-dd", src, "-o", out)
    assert code == 0, err
    assert load_scene(out)["seed"] == 1


def test_convert_without_a_path_still_validates():
    with pytest.raises(SceneInvalid) as info:
        importdd.convert_dd_settings({**GOOD, "angle": {"0": 1}})
    assert str(info.value).startswith("DD settings: angle: ")
