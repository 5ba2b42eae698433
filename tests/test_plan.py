import dataclasses
import re

import numpy as np
import pytest

from farm.plan import intermediate_steps, plan_record, resolve
from farm.scene import parse_scene
from tests.conftest import TINY_SCENE

BASE = "\n".join(line for line in TINY_SCENE.splitlines() if not line.startswith(("steps", "skip_steps", "text_prompts"))) + "\n"
ANIM = BASE + """\
animation_mode: 2D
max_frames: 12
steps: 20
skip_steps: 4
frames_skip_steps: "60%"
init_scale: 100
frames_scale: 1500
zoom: "0: (1), 10: (1.05)"
angle: "0:(10*sin(2*pi*t/48))"
clip_guidance_scale: "0:(1000), 10:(2000)"
text_prompts: {0: ["a:1"], 6: ["b:2"]}
"""


def test_stills_use_seed_plus_index_and_frame_zero_settings():
    plan = resolve(parse_scene(TINY_SCENE + "n_batches: 5\n"))
    assert [f.render.seed for f in plan.frames] == [5, 6, 7, 8, 9]
    assert {f.kind for f in plan.frames} == {"image"}
    assert all(f.init.kind == "noise" and f.previous is None for f in plan.frames)
    assert len({f.settings_hash for f in plan.frames}) == 5


def test_frames_get_dds_cut_augmentations_of_their_mode():
    from engine.spec import ANIMATION_AUGMENTATIONS, STILL_AUGMENTATIONS

    still = resolve(parse_scene(TINY_SCENE)).frames[0]
    anim = resolve(parse_scene(ANIM)).frames[0]
    assert still.render.guidance.augmentations == STILL_AUGMENTATIONS
    assert anim.render.guidance.augmentations == ANIMATION_AUGMENTATIONS
    # an animation frame's hash covers them (frames of earlier builds are rendered again)
    other = dataclasses.replace(anim, render=dataclasses.replace(anim.render, guidance=dataclasses.replace(
        anim.render.guidance, augmentations=STILL_AUGMENTATIONS)))
    assert other.settings_hash != anim.settings_hash


def test_animation_frames_chain_with_keyframed_settings():
    plan = resolve(parse_scene(ANIM))
    frames = plan.frames
    assert len(frames) == 12 and frames[0].init.kind == "noise" and frames[0].previous is None
    assert all(f.init.kind == "previous" and f.previous == f.index - 1 for f in frames[1:])
    # frame 0 uses skip_steps/init_scale; later frames frames_skip_steps (floor 60% of 20) / frames_scale
    assert (frames[0].render.sampler.skip_steps, frames[0].render.guidance.init_scale) == (4, 100)
    assert (frames[3].render.sampler.skip_steps, frames[3].render.guidance.init_scale) == (12, 1500)
    assert [f.motion.zoom for f in frames[:3]] == pytest.approx([1.0, 1.005, 1.01])
    assert frames[11].motion.zoom == pytest.approx(1.05)
    assert frames[12 - 1].motion.angle == pytest.approx(10 * np.sin(2 * np.pi * 11 / 48))
    assert frames[5].render.guidance.clip_guidance_scale == pytest.approx(1500)
    assert [p.text for p in frames[5].render.text_prompts] == ["a"]
    assert [p.text for p in frames[6].render.text_prompts] == ["b"]
    assert [f.render.seed for f in frames[:3]] == [5, 6, 7]


def test_resolution_is_pure_and_hashes_are_stable():
    scene = parse_scene(ANIM)
    first, second = resolve(scene), resolve(scene)
    assert first == second
    assert [f.settings_hash for f in first.frames] == [f.settings_hash for f in second.frames]
    changed = resolve(parse_scene(ANIM.replace("frames_scale: 1500", "frames_scale: 1600")))
    assert changed.frames[0].settings_hash == first.frames[0].settings_hash
    assert changed.frames[1].settings_hash != first.frames[1].settings_hash


def test_a_frame_hash_covers_the_frames_it_is_made_from():
    """A resume keeps a finished frame only if everything its pixels came from is the
    same: a change that only frame 0 sees re-renders every later frame of its chain."""
    def plan(scale0, extra=""):
        text = ANIM.replace('clip_guidance_scale: "0:(1000), 10:(2000)"',
                            f'clip_guidance_scale: "0:({scale0}), 1:(1000), 10:(2000)"')
        return resolve(parse_scene(text + extra))

    base, changed = plan(1000), plan(1100)
    assert changed.frames[0].settings_hash != base.frames[0].settings_hash
    assert all(changed.frames[i].settings_hash == base.frames[i].settings_hash for i in range(1, 12))
    assert all(changed.frame_hashes[i] != base.frame_hashes[i] for i in range(12))
    assert base.frame_hashes[0] == base.frames[0].settings_hash  # made from nothing, reads no file
    assert base.frame_hashes == plan(1000).frame_hashes  # stable
    shots, shots_changed = plan(1000, "cuts: [4, 8]\n"), plan(1100, "cuts: [4, 8]\n")
    assert [shots_changed.frame_hashes[i] != shots.frame_hashes[i] for i in range(12)] == [True] * 4 + [False] * 8


def test_frame_hashes_follow_segment_seams_and_turbo_chains_and_long_chains():
    segments = resolve(parse_scene(ANIM + "parallel_segments: 2\nsegment_overlap: 2\n"))
    changed = resolve(parse_scene(ANIM.replace("skip_steps: 4", "skip_steps: 5")
                                  + "parallel_segments: 2\nsegment_overlap: 2\n"))
    # every chain starts with skip_steps: everything changes, seams included
    assert all(changed.frame_hashes[f.index] != segments.frame_hashes[f.index] for f in segments.frames)
    seam = next(f for f in segments.frames if f.sources)
    assert segments.frame_hashes[seam.index] != seam.settings_hash  # composed from its two sources' renders
    turbo = resolve(parse_scene(ANIM + "turbo_mode: true\nturbo_steps: 3\nturbo_preroll: 2\n"))
    assert len(set(turbo.frame_hashes.values())) == 12
    long = resolve(parse_scene(ANIM.replace("max_frames: 12", "max_frames: 5000")))
    assert len(set(long.frame_hashes.values())) == 5000  # no recursion limit on a long chain


@pytest.mark.parametrize("mode, change", [("2D", "border_mode: replicate"), ("2D", "animation_mode: 3D"),
                                          ("3D", "fov: 60"), ("2D", "color_coherence: LAB"),
                                          ("3D", "sampling_mode: nearest"), ("3D", "camera_model: pinhole")])
def test_how_frames_are_carried_into_the_next_is_in_every_later_frames_hash(mode, change):
    scene = ANIM.replace("animation_mode: 2D", f"animation_mode: {mode}")
    base = resolve(parse_scene(scene))
    changed = resolve(parse_scene(scene.replace(f"animation_mode: {mode}", change)
                                  if change.startswith("animation_mode") else scene + change + "\n"))
    assert [changed.frames[i].settings_hash == base.frames[i].settings_hash for i in range(12)] == [True] * 12
    assert changed.frame_hashes[0] == base.frame_hashes[0]
    assert all(changed.frame_hashes[i] != base.frame_hashes[i] for i in range(1, 12))


@pytest.mark.parametrize("change", ["fov: 60", "camera_model: pinhole", "video_flow_model: dis", "padding_mode: zeros"])
def test_settings_another_mode_uses_leave_the_hashes_alone(change):
    """A 2D animation does not use the 3D camera or Video Input's flow: changing them keeps
    every frame (they re-rendered it all)."""
    assert resolve(parse_scene(ANIM + change + "\n")).frame_hashes == resolve(parse_scene(ANIM)).frame_hashes


def test_an_input_files_contents_are_in_the_hash_of_the_frames_that_read_it(tmp_path):
    from PIL import Image

    from farm.submit import input_digests

    def write(path, level):
        Image.fromarray(np.full((64, 64, 3), level, np.uint8)).save(path)

    write(tmp_path / "init.png", 10)
    write(tmp_path / "early.png", 15)
    write(tmp_path / "prompt.png", 20)
    anim = parse_scene(ANIM + "init_image: init.png\nimage_prompts: {0: ['early.png:1'], 6: ['prompt.png:1']}\n",
                       base_dir=tmp_path)
    before = resolve(anim, input_digests=input_digests(anim)).frame_hashes
    write(tmp_path / "init.png", 10)  # written again, same pixels: same contents, same hashes
    assert resolve(anim, input_digests=input_digests(anim)).frame_hashes == before
    write(tmp_path / "prompt.png", 30)  # read from frame 6 on
    after = resolve(anim, input_digests=input_digests(anim)).frame_hashes
    assert [after[i] != before[i] for i in range(12)] == [False] * 6 + [True] * 6
    write(tmp_path / "init.png", 40)  # frame 0 starts from it, and every frame from frame 0
    assert all(v != after[i] for i, v in resolve(anim, input_digests=input_digests(anim)).frame_hashes.items())

    stills = parse_scene(TINY_SCENE + "n_batches: 3\ninit_image: init.png\n", base_dir=tmp_path)
    plan = resolve(stills, input_digests=input_digests(stills))
    write(tmp_path / "init.png", 50)
    replaced = resolve(stills, input_digests=input_digests(stills))
    assert all(plan.frame_hashes[i] != replaced.frame_hashes[i] for i in range(3))
    plain = resolve(parse_scene(TINY_SCENE + "n_batches: 3\n"))
    assert plain.frame_hashes == {f.index: f.settings_hash for f in plain.frames}  # no input: as before


def test_shots_restart_the_chain():
    plan = resolve(parse_scene(ANIM + "cuts: [4, 8]\n"))
    starts = [f.index for f in plan.frames if f.previous is None]
    assert starts == [0, 4, 8]
    assert [len(chain) for chain in plan.shots.values()] == [4, 4, 4]


def test_turbo_marks_in_between_frames():
    plan = resolve(parse_scene(ANIM + "turbo_mode: true\nturbo_steps: 3\nturbo_preroll: 2\n"))
    # DD: diffused when frame <= turbo_preroll or frame % turbo_steps == 0
    assert [f.diffuse for f in plan.frames] == [True, True, True, True, False, False, True, False, False, True, False, False]


def test_video_input_uses_overrides_and_video_frames(tmp_path):
    (tmp_path / "in.mp4").write_bytes(b"x")
    text = (ANIM.replace("animation_mode: 2D", "animation_mode: Video Input")
            + "video_init_path: in.mp4\nextract_nth_frame: 2\nvideo_init_steps: 30\nvideo_init_skip_steps: 12\n")
    scene = parse_scene(text + "video_init_seed_continuity: true\n", base_dir=tmp_path)
    plan = resolve(scene, video_frames=9)
    assert len(plan.frames) == 5
    assert [f.init.video_frame for f in plan.frames] == [0, 2, 4, 6, 8]
    assert plan.frames[1].init.flow_from_previous
    assert {f.render.sampler.steps for f in plan.frames} == {30}
    assert plan.frames[0].render.sampler.skip_steps == 12  # video_init_skip_steps
    assert plan.frames[2].render.sampler.skip_steps == 21  # floor(70% of 30)
    assert {f.render.seed for f in plan.frames} == {5}
    # as DD: video_init_frames_scale on every frame, frame 0 too (it got init_scale); the seed
    # grows by 1 before every frame, frame 0 too; without flow warp frame 0 skips as the others
    assert {f.render.guidance.init_scale for f in plan.frames} == {15000}
    free = resolve(parse_scene(text + "video_init_flow_warp: false\n", base_dir=tmp_path), video_frames=9)
    assert [f.render.seed for f in free.frames] == [6, 7, 8, 9, 10]
    assert [f.render.sampler.skip_steps for f in free.frames] == [21] * 5


@pytest.mark.parametrize("change, says", [
    ("skip_steps: 20", "skip_steps: frame 0 would skip 20 of its 20 steps"),
    ('frames_skip_steps: "100%"', "frames_skip_steps: frame 1 would skip 20 of its 20 steps"),
    ('steps: "0:(20), 5:(10)"\nframes_skip_steps: 12', "frames_skip_steps: frame 4 would skip 12 of its 12 steps"),
])
def test_skipping_all_steps_is_refused_as_dd_refuses_it(change, says):
    """Clamped silently before (to steps - 1: a frame that is its init with a touch of noise)."""
    from farm.scene import SceneInvalid

    base = "\n".join(line for line in ANIM.splitlines() if not line.startswith(change.split(":")[0] + ":"))
    if "frames_skip_steps" in change:
        base = "\n".join(line for line in base.splitlines() if not line.startswith("frames_skip_steps"))
    with pytest.raises(SceneInvalid, match=re.escape(says)):
        resolve(parse_scene(base + "\n" + change + "\n"))


def test_preview_settings_do_not_make_finished_frames_stale():
    """display_rate and intermediate_saves only choose which previews are kept: changing
    them keeps every frame's hash (a resume keeps the frames)."""
    base = resolve(parse_scene(ANIM))
    changed = resolve(parse_scene(ANIM + "display_rate: 3\nintermediate_saves: 2\n"))
    assert changed.frames[0].render.intermediate_steps != base.frames[0].render.intermediate_steps
    assert changed.frame_hashes == base.frame_hashes


def test_intermediate_steps():
    assert intermediate_steps(4, 0, 12, 2) == (0, 4, 8, 9)
    # DD: steps_per_checkpoint (100-10-1)//3 = 29, saved where j % 29 == 0 and j > 0 (j counts the steps run)
    assert intermediate_steps(0, 2, 100, 10) == (29, 58, 87)
    assert intermediate_steps(0, 2, 250, 10) == (79, 158, 237)  # three saves for 2, as in DD
    assert intermediate_steps(0, (15, 500), 100, 10) == (15,)  # a list holds j, not absolute steps


def test_plan_record_is_json_friendly():
    import json

    record = plan_record(resolve(parse_scene(ANIM)))
    text = json.dumps(record)
    assert '"overview": "[12]*400+[4]*600"' in text
    assert record["frames"][3]["settings_hash"] == resolve(parse_scene(ANIM)).frame_hashes[3]


def test_segment_mode_splits_a_chain_with_cross_faded_seams():
    plan = resolve(parse_scene(ANIM + "parallel_segments: 3\nsegment_overlap: 2\n"))
    real = plan.output_frames
    assert [f.index for f in real] == list(range(12))
    assert len(plan.frames) == 12 + 2 * 2 * 2  # two seams, two frames, two renders each
    starts = sorted(plan.shot_starts.values())
    assert len(starts) == 3  # three chains that can run at once
    for seam_start in (4, 8):  # segments begin at frames 4 and 8, overlapping 2 frames before
        for position, i in enumerate((seam_start - 2, seam_start - 1)):
            frame = plan.frames[i]
            tail, lead = (plan.frames[s] for s in frame.sources)
            assert frame.previous is None and tail.of_frame == lead.of_frame == i
            assert frame.blend == pytest.approx((position + 1) / 3)
            assert tail.render.seed == lead.render.seed == frame.render.seed
        assert plan.frames[seam_start].previous == lead.index  # the new chain continues
    first_lead = plan.frames[plan.frames[2].sources[1]]
    assert first_lead.previous is None and first_lead.init.kind == "noise"
    assert plan.frames[plan.frames[2].sources[0]].previous == 1  # the old chain's tail
    # the same settings as without segments, frame for frame (only the chaining differs)
    plain = resolve(parse_scene(ANIM))
    assert [f.render.seed for f in real] == [f.render.seed for f in plain.frames]


def test_segment_mode_limits():
    from farm.scene import SceneInvalid

    with pytest.raises(SceneInvalid, match="segment_overlap: 4 must be below the segment length"):
        parse_scene(ANIM + "parallel_segments: 3\nsegment_overlap: 4\n")
    with pytest.raises(SceneInvalid, match="cannot be combined with turbo_mode"):
        parse_scene(ANIM + "parallel_segments: 2\nturbo_mode: true\n")


def _compiles(text):
    plan = resolve(parse_scene(text))
    assert len({f.render.models for f in plan.frames}) == 1
    return plan.frames[0].render.models.compile_unet


def test_compile_unet_auto_compiles_long_scenes_only():
    from farm.plan import AUTO_COMPILE_MIN_STEPS, sampler_steps

    enough = -(-AUTO_COMPILE_MIN_STEPS // 240)  # images of 240 steps that reach the threshold
    long_stills = BASE + f"steps: 250\nskip_steps: 10\nn_batches: {enough}\n"
    short_stills = long_stills.replace(f"n_batches: {enough}", f"n_batches: {enough - 1}")
    assert _compiles(long_stills)  # auto is the default
    assert not _compiles(short_stills)
    assert _compiles(long_stills + "use_secondary_model: false\n")  # the full-UNet path too
    assert not _compiles(short_stills + "use_secondary_model: false\n")
    assert not _compiles(long_stills + "compile_unet: false\n")
    assert _compiles(BASE + "n_batches: 1\ncompile_unet: true\n")
    assert _compiles(long_stills + "compile_unet: Auto\n")
    # animations count the steps each frame runs; turbo in-betweens run none
    animation = ANIM.replace("max_frames: 12", "max_frames: 600")
    plan = resolve(parse_scene(animation))
    assert sampler_steps(plan.frames) == 20 - 4 + 599 * (20 - 12) and _compiles(animation)
    turbo = resolve(parse_scene(animation + "turbo_mode: true\nturbo_steps: 3\nturbo_preroll: 2\n"))
    assert sampler_steps(turbo.frames) < 0.5 * sampler_steps(plan.frames)


def test_adding_images_past_the_compile_threshold_keeps_finished_ones_current():
    from farm.plan import AUTO_COMPILE_MIN_STEPS

    enough = -(-AUTO_COMPILE_MIN_STEPS // 240)
    short, long = (resolve(parse_scene(BASE + f"steps: 250\nskip_steps: 10\nn_batches: {n}\n"))
                   for n in (enough - 1, enough))
    assert not short.frames[0].render.models.compile_unet and long.frames[0].render.models.compile_unet
    assert [f.settings_hash for f in long.frames[:enough - 1]] == [f.settings_hash for f in short.frames]


def test_compile_unet_takes_true_false_or_auto():
    from farm.scene import SceneInvalid

    with pytest.raises(SceneInvalid, match="compile_unet.*expected true, false or auto, got"):
        parse_scene(BASE + "compile_unet: sometimes\n")


def test_model_set_key_tells_apart_sets_that_load_differently():
    """Actors are routed and shared by key: sets the Renderer would refuse as another
    model set (compiled, checkpointed, other custom settings) get other keys."""
    import dataclasses

    from engine.spec import ModelSetSpec

    base = ModelSetSpec(diffusion_model="tiny", clip_models=("tiny-vit::random",))
    variants = [dataclasses.replace(base, compile_unet=True), dataclasses.replace(base, use_checkpoint=True),
                dataclasses.replace(base, custom_model_settings=(("num_channels", 32),)),
                dataclasses.replace(base, custom_model_settings=(("num_channels", 64),))]
    keys = [base.key] + [v.key for v in variants]
    assert len(set(keys)) == len(keys)
    assert base.key == "tiny+sec|tiny-vit::random" and variants[0].key == "tiny+sec+compiled|tiny-vit::random"
    assert dataclasses.replace(base).key == base.key
    from farm.plan import AUTO_COMPILE_MIN_STEPS

    enough = -(-AUTO_COMPILE_MIN_STEPS // 240)
    long = resolve(parse_scene(BASE + f"steps: 250\nskip_steps: 10\nn_batches: {enough}\n"))
    short = resolve(parse_scene(BASE + f"steps: 250\nskip_steps: 10\nn_batches: {enough - 1}\n"))
    assert long.frames[0].render.models.key != short.frames[0].render.models.key


def test_stills_rendered_together_are_grouped_by_index():
    stills = BASE + "text_prompts: {0: ['a:1']}\nn_batches: 7\n"
    alone, together = resolve(parse_scene(stills)), resolve(parse_scene(stills + "images_per_call: 3\n"))
    assert [f.group for f in alone.frames] == [()] * 7
    assert [f.group for f in together.frames] == [(0, 1, 2)] * 3 + [(3, 4, 5)] * 3 + [(6,)]
    assert [f.render.seed for f in together.frames] == [f.render.seed for f in alone.frames]
    # rendered in a batch, an image's pixels may round differently: a finished one is not reused
    assert all(a.settings_hash != b.settings_hash for a, b in zip(alone.frames, together.frames))
    assert plan_record(together)["frames"][4]["group"] == [3, 4, 5]


def test_an_init_image_counts_by_its_contents_not_where_it_lies(tmp_path):
    """A cluster job reads its copy of the init image from a per-run folder: the same file
    in another place keeps every frame's hash; other contents change them."""
    from PIL import Image

    from farm.submit import input_digests

    hashes = []
    for folder, value in (("a", 10), ("b", 10), ("c", 200)):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8), (value, 0, 0)).save(tmp_path / folder / "init.png")
        scene = parse_scene(ANIM + "init_image: init.png\n", base_dir=tmp_path / folder)
        hashes.append(resolve(scene, None, input_digests(scene)).frame_hashes)
    assert hashes[0] == hashes[1] and hashes[0][0] != hashes[2][0] and hashes[0][5] != hashes[2][5]
