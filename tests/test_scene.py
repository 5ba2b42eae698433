from pathlib import Path

import numpy as np
import pytest

from farm.scene import SceneInvalid, load_scene, parse_scene
from tests.conftest import TINY_SCENE

SCENES = Path(__file__).resolve().parents[1] / "scenes"


def problems(text: str, tmp_path: Path | None = None) -> list[str]:
    with pytest.raises(SceneInvalid) as info:
        parse_scene(text, source="s.yaml", base_dir=tmp_path)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("name", ["smoke", "lighthouse-stills", "lighthouse-2d", "flythrough-3d", "video-restyle"])
def test_example_scenes_validate(name):
    scene = load_scene(SCENES / f"{name}.yaml")
    assert scene["name"] == name


def test_dd_defaults_fill_what_the_scene_leaves_out():
    scene = parse_scene(TINY_SCENE)
    assert scene["clip_guidance_scale"].at(0) == 5000
    assert scene["range_scale"].at(0) == 150
    assert scene["eta"].at(0) == pytest.approx(0.8)
    assert scene["cutn_batches"].at(0) == 4
    assert scene["cut_overview"][0] == 12 and scene["cut_overview"][400] == 4
    assert scene["animation_mode"] == "None" and scene["n_batches"] == 50
    assert scene["frames_skip_steps"] == ("percent", 60.0)


def test_errors_name_file_line_and_field_with_did_you_mean():
    lines = problems(TINY_SCENE + "clip_guidence_scale: 4000\ntv_scale: lots\n")
    assert "s.yaml:9: clip_guidence_scale: unknown setting; did you mean 'clip_guidance_scale'?" in lines
    assert lines[1].startswith("s.yaml:10: tv_scale: bad keyframe string") and "unknown name 'lots'" in lines[1]
    assert len(lines) == 2


def test_dd_names_are_aliases_and_may_not_be_given_twice():
    base = TINY_SCENE.replace("name: t\n", "").replace("seed: 5\n", "")
    scene = parse_scene(base + "batch_name: dd\ninterp_spline: Linear\nset_seed: 3\n")
    assert scene["name"] == "dd" and scene["interpolation"] == "linear" and scene["seed"] == 3
    text = TINY_SCENE.replace("name: t\n", "") + "name: a\nbatch_name: b\n"
    assert any("given twice" in line for line in problems(text))


def test_random_seed_is_chosen_once_and_recorded():
    scene = parse_scene(TINY_SCENE.replace("seed: 5", "seed: random"))
    assert isinstance(scene["seed"], int) and scene.seed_was_random


def test_width_height_must_be_multiples_of_64():
    (line,) = problems(TINY_SCENE.replace("[64, 64]", "[100, 64]"))
    assert line == "s.yaml:4: width_height: width 100 is not a multiple of 64 (DD rendered 64; or 128)"


def test_unsupported_dd_settings_say_why():
    (line,) = problems(TINY_SCENE + "vr_mode: true\n")
    assert "vr_mode: not supported: VR" in line


def test_dd_clip_switches_build_the_clip_list():
    text = TINY_SCENE.replace('clip_models: ["tiny-vit::random"]\n', "") + "ViTB16: false\nRN50x4: true\n"
    scene = parse_scene(text)
    assert scene["clip_models"] == ("ViT-B-32::openai", "RN50::openai", "RN50x4::openai")
    assert any("not both" in p for p in problems(TINY_SCENE + "ViTB32: true\n"))


def test_keyframe_strings_for_guidance_and_motion():
    scene = parse_scene(TINY_SCENE + 'clip_guidance_scale: "0:(1000), 10:(2000)"\nzoom: "0: (1), 10: (1.05)"\n')
    values = scene["clip_guidance_scale"].values(12)
    assert values[5] == pytest.approx(1500) and values[11] == 2000
    assert np.allclose(scene["zoom"].values(11), 1 + 0.005 * np.arange(11))


def test_bad_keyframes_and_expressions_are_field_errors():
    (line,) = problems(TINY_SCENE + 'angle: "0:(__import__(\'os\'))"\n')
    assert line.startswith("s.yaml:9: angle: bad keyframe string")
    (line,) = problems(TINY_SCENE + 'zoom: "0: (1), 10 (2)"\n')
    assert line.startswith("s.yaml:9: zoom: bad keyframe string")


def test_key_frames_false_requires_plain_numbers():
    (line,) = problems(TINY_SCENE + 'key_frames: false\nangle: "0:(1)"\n')
    assert "plain number" in line


def test_yaml_problems_have_lines_and_tags_are_refused():
    (line,) = problems("name: [unclosed\nsteps: 3\n")
    assert line.startswith("s.yaml:")
    (line,) = problems("name: !!python/object/apply:os.system ['echo hi']\n")
    assert "not allowed" in line and "s.yaml:1" in line
    (line,) = problems("name: a\nname: b\n")
    assert "s.yaml:2: duplicate key 'name' (first on line 1)" == line


def test_billion_laughs_is_refused_without_expanding():
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        levels.append(f"a{i}: &a{i} [{', '.join(['*a%d' % (i - 1)] * 10)}]")
    (line,) = problems("\n".join(levels) + "\n")
    assert "expands to more than" in line


def test_input_paths_stay_inside_the_scene_folder(tmp_path):
    (tmp_path / "init.png").write_bytes(b"x")
    scene = parse_scene(TINY_SCENE + "init_image: init.png\n", base_dir=tmp_path)
    assert scene["init_image"] == str(tmp_path / "init.png")
    (line,) = problems(TINY_SCENE + "init_image: ../../etc/passwd\n", tmp_path)
    assert "outside the scene's folder" in line
    (line,) = problems(TINY_SCENE + "init_image: /etc/passwd\n", tmp_path)
    assert "outside the scene's folder" in line
    (line,) = problems(TINY_SCENE + "init_image: missing.png\n", tmp_path)
    assert "not found" in line


def test_cross_field_checks():
    assert any("Video Input needs video_init_path" in p for p in problems(TINY_SCENE + "animation_mode: Video Input\n"))
    assert any("unknown diffusion model 'tinny'; did you mean 'tiny'?" in p
               for p in problems(TINY_SCENE.replace("diffusion_model: tiny", "diffusion_model: tinny")))
    assert any("no prompts" in p for p in problems(TINY_SCENE.replace('text_prompts: {0: ["a red apple:2", "blue:1"]}', "text_prompts: {}")))


def test_overrides_are_validated_like_the_file(scene_file):
    path = scene_file(TINY_SCENE)
    assert load_scene(path, overrides={"steps": 20})["steps"].at(0) == 20
    # DD's spelling replaces the file's setting whichever spelling it used (was "given twice")
    assert load_scene(path, overrides={"batch_name": "renamed"})["name"] == "renamed"
    assert load_scene(scene_file(TINY_SCENE + "set_seed: 3\n"), overrides={"seed": 9})["seed"] == 9
    with pytest.raises(SceneInvalid, match="steps: 0 is below the minimum 2"):
        load_scene(path, overrides={"steps": 0})


def test_not_a_mapping_and_missing_file(tmp_path):
    (line,) = problems("- a\n- b\n")
    assert "must be a mapping" in line
    with pytest.raises(SceneInvalid, match="file not found"):
        load_scene(tmp_path / "nope.yaml")


def test_what_dd_accepts_from_its_settings_files_is_accepted(tmp_path):
    """DD saves video_init_path in every settings file (often a Colab path) and reads it only
    in Video Input; prompts keyed past the last frame are never used; `vr_mode: false` asks
    for nothing. Each was refused."""
    from farm.plan import resolve

    text = "\n".join(line for line in TINY_SCENE.splitlines() if not line.startswith("text_prompts"))
    scene = parse_scene(text + "\nanimation_mode: 2D\nmax_frames: 5\n"
                        "video_init_path: /content/drive/MyDrive/init.mp4\n"
                        "text_prompts: {0: ['a lighthouse:1'], 100: ['a pear:1']}\n"
                        "vr_mode: false\nresume_run: false\n", base_dir=tmp_path)
    plan = resolve(scene)
    assert [[p.text for p in f.render.text_prompts] for f in plan.frames] == [["a lighthouse"]] * 5
    assert plan.animation.video_init_path is None
    with pytest.raises(SceneInvalid, match="vr_mode: not supported"):
        parse_scene(TINY_SCENE + "vr_mode: true\n")
    with pytest.raises(SceneInvalid, match="video_init_path: file 'init.mp4' not found"):
        parse_scene(TINY_SCENE + "animation_mode: Video Input\nvideo_init_path: init.mp4\n", base_dir=tmp_path)


def test_image_prompts_count_in_the_weight_sum_of_their_frame(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "img.png")
    parse_scene(TINY_SCENE + "image_prompts: {0: ['img.png:2']}\n", base_dir=tmp_path)  # 1 + 2: fine
    balanced_text = TINY_SCENE.replace('text_prompts: {0: ["a red apple:2", "blue:1"]}', 'text_prompts: {0: ["a:1", "b:-1"]}')
    assert balanced_text != TINY_SCENE
    parse_scene(balanced_text + "image_prompts: {0: ['img.png:2']}\n", base_dir=tmp_path)  # 0 + 2: fine, as DD
    with pytest.raises(SceneInvalid, match="frame 0: the text and image prompt weights sum to 0"):
        parse_scene(balanced_text, base_dir=tmp_path)
    with pytest.raises(SceneInvalid, match="frame 0: the text and image prompt weights sum to 0"):
        parse_scene(TINY_SCENE + "image_prompts: {0: ['img.png:-3']}\n", base_dir=tmp_path)  # 2 + 1 - 3


def test_dds_per_model_sizes_and_cut_schedules():
    """DD v5.7: 256 px models render at width_height_for_256x256_models; KaliYuga's
    pixel-art (and PulpSciFi) and watercolor models take their own cut schedules. A scene
    (or a DD settings file, which records what DD used) that gives width_height alone or
    cut_* keeps them."""
    from farm.cutschedule import parse_cut_schedule

    def scene(model: str, extra: str = ""):
        return parse_scene(f"diffusion_model: {model}\ntext_prompts: {{0: [a]}}\n{extra}")

    pixel = scene("pixel_art_diffusion_hard_256")
    assert pixel["width_height"] == (512, 448)
    assert pixel["cut_icgray_p"] == pixel["pad_or_pulp_cut_icgray_p"] == tuple(parse_cut_schedule(
        "[0.87]*100+[0.78]*50+[0.73]*50+[0.64]*60+[0.56]*40+[0.50]*50+[0.33]*100+[0.19]*150+[0]*400"))
    water = scene("watercolordiffusion", 'cut_overview: "[3]*1000"\nwidth_height: [256, 256]\n')
    assert water["width_height"] == (256, 256) and water["cut_overview"] == (3.0,) * 1000
    assert water["cut_innercut"] == water["watercolor_cut_innercut"] != scene("watercolordiffusion")["cut_overview"]
    both = scene("256x256_diffusion_uncond", "width_height: [256, 256]\nwidth_height_for_256x256_models: [320, 256]\n")
    assert both["width_height"] == (320, 256)
    plain = scene("256x256_diffusion_uncond")
    assert plain["width_height"] == (512, 448) and plain["cut_overview"] == scene("tiny")["cut_overview"]
    assert scene("512x512_diffusion_uncond_finetune_008100")["width_height"] == (1280, 768)
