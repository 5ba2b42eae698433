"""Input media read as users see them: 16-bit and float grey scaled (not clipped), EXIF
orientation applied, URLs named as such, oversized or undecodable videos refused at
validation, and thin image prompts capped before they reach the cutouts."""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from animation.video import probe_video
from farm.inputs import MAX_IMAGE_PIXELS, InputError, check_image, check_video, load_image, url_problem
from tests.media import png_mov, ts_segment, zero_mdat


# -- 16-bit, 32-bit and float grey --------------------------------------------------------

def test_mid_grey_16bit_png_loads_as_mid_grey_not_white(tmp_path):
    path = tmp_path / "gray16.png"
    levels = np.full((8, 8), 32768, np.uint16)
    levels[0, :2] = (0, 65535)
    Image.fromarray(levels).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I;16")  # the mode Pillow clipped at 255
    pixels = load_image(path)
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    assert (pixels[1:] == 128).all()
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[0, 1].tolist() == [255, 255, 255]
    assert (load_image(path, (4, 4))[2:] == 128).all()  # resized after scaling


@pytest.mark.parametrize("value, dtype, mode, expected", [
    (0.5, np.float32, "F", 128),  # float in 0..1: grey, not black
    (49152, np.int32, "I", 191),  # 32-bit int holding 16-bit values: scaled from 16 bits
], ids=["float-0-to-1", "int32-holding-16-bit"])
def test_single_channel_tiffs_of_wide_modes_load_scaled_to_8_bits(tmp_path, value, dtype, mode, expected):
    path = tmp_path / f"{mode}.tiff"
    Image.fromarray(np.full((8, 8), value, dtype), mode).save(path)
    with Image.open(path) as image:
        assert image.mode == mode
    assert (load_image(path) == expected).all()


def test_float_tiff_on_the_0_to_255_scale_and_16bit_tiff(tmp_path):
    floats = tmp_path / "f255.tiff"
    Image.fromarray(np.full((4, 4), 200.0, np.float32), "F").save(floats)
    assert (load_image(floats) == 200).all()
    tiff16 = tmp_path / "g16.tiff"
    Image.fromarray(np.full((4, 4), 16384, np.uint16)).save(tiff16)
    assert (load_image(tiff16) == 64).all()


def test_16bit_rgb_png_still_loads_with_its_colours(tmp_path):
    path = tmp_path / "rgb16.png"
    bgr = np.zeros((4, 4, 3), np.uint16)
    bgr[..., 2] = 65535  # red (cv2 writes BGR)
    bgr[..., 1] = 32768
    cv2.imwrite(str(path), bgr)
    pixels = load_image(path)
    assert pixels[..., 0].min() == 255 and abs(int(pixels[..., 1].mean()) - 128) <= 1
    assert (pixels[..., 2] == 0).all()


# -- EXIF orientation -----------------------------------------------------------------------

def _red_left_jpeg(path, orientation: int):
    """64 wide x 32 high as stored, the left half red, the right half blue."""
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = (255, 0, 0)
    pixels[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)


def test_exif_orientation_6_loads_rotated_as_viewers_show_it(tmp_path):
    path = tmp_path / "phone.jpg"
    _red_left_jpeg(path, 6)
    pixels = load_image(path)
    assert pixels.shape == (64, 32, 3)  # 32 wide, 64 high
    top, bottom = pixels[:28].reshape(-1, 3).mean(0), pixels[36:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50  # rotated 90 degrees clockwise: red on top
    assert bottom[2] > 200 and bottom[0] < 50
    assert check_image(path) == (32, 64)
    assert load_image(path, (16, 16)).shape == (16, 16, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillows_exif_transpose(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.jpg"
    _red_left_jpeg(path, orientation)
    with Image.open(path) as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    pixels = load_image(path)
    assert np.array_equal(pixels, expected)
    assert check_image(path) == (pixels.shape[1], pixels.shape[0])


def test_exif_orientation_in_a_png_turns_it_too(tmp_path):
    path = tmp_path / "turned.png"
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.fromarray(np.zeros((10, 30, 3), np.uint8)).save(path, exif=exif.tobytes())
    assert check_image(path) == (10, 30)
    assert load_image(path).shape == (30, 10, 3)


# -- URLs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["http://127.0.0.1:1/x.png", "https://example.com/a.jpg",
                                  "file:///etc/passwd", "s3://bucket/key.png", " HTTP://x"])
def test_urls_are_named_as_urls(text):
    problem = url_problem(text)
    assert problem.startswith(f"'{text.strip()}' is a URL") and "download the file" in problem
    assert "\n" not in problem


@pytest.mark.parametrize("text", ["init.png", "sub/http.png", "with space.png", "a:b.png",
                                  "C:\\pictures\\x.png", "/abs/path.png", "~/x.png"])
def test_paths_are_not_urls(text):
    assert url_problem(text) is None


# -- input videos ---------------------------------------------------------------------------

def test_video_with_frames_over_the_pixel_limit_is_refused(tmp_path):
    """A PNG is a one-frame video to ffmpeg; before, this one validated (and decoded in full)."""
    path = tmp_path / "huge.png"
    Image.new("1", (8200, 8200)).save(path)
    assert 8200 * 8200 > MAX_IMAGE_PIXELS
    with pytest.raises(InputError) as error:
        check_video(path)
    assert str(error.value) == f"frame size 8200x8200 is more than {MAX_IMAGE_PIXELS} pixels"


def test_video_that_probes_but_does_not_decode_is_refused_with_the_decoders_reason(tmp_path):
    good = png_mov(tmp_path / "good.mov")
    assert check_video(good).frames == 3
    broken = zero_mdat(png_mov(tmp_path / "broken.mov"))
    assert probe_video(broken).frames == 3  # the packets are all there
    with pytest.raises(InputError) as error:
        check_video(broken)
    message = str(error.value)
    assert message.startswith("not a readable video: ") and "PNG signature" in message
    assert "Conversion failed" not in message and "\n" not in message


@pytest.mark.parametrize("live", [False, True])
def test_an_hls_playlist_is_refused_as_a_playlist_promptly(tmp_path, live):
    """Its segment, a video outside the folder, was read by ffmpeg (finite playlist) or
    waited for forever (live playlist: no #EXT-X-ENDLIST)."""
    import time

    outside = ts_segment(tmp_path / "outside" / "secret.ts")
    assert check_video(outside).frames == 6
    playlist = tmp_path / "scene" / "input.m3u8"
    playlist.parent.mkdir()
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:0.5,\n{outside}\n"
                        + ("" if live else "#EXT-X-ENDLIST\n"))
    started = time.monotonic()
    with pytest.raises(InputError) as error:
        check_video(playlist)
    assert time.monotonic() - started < 5
    assert str(error.value) == "it is an HLS playlist, not a video file"


@pytest.mark.parametrize("codec, suffix", [("h264", ".mp4"), ("webm", ".webm"), ("gif", ".gif")])
def test_the_videos_farm_writes_are_still_accepted_as_inputs(tmp_path, codec, suffix):
    from animation.video import stitch

    frames = []
    for i in range(3):
        frames.append(tmp_path / f"f{i}.png")
        cv2.imwrite(str(frames[-1]), np.full((48, 64, 3), 40 * i, np.uint8))
    video = stitch(frames, tmp_path / f"clip{suffix}", codec=codec)
    info = check_video(video)
    assert (info.frames, info.width, info.height) == (3, 64, 48)
    assert check_video(png_mov(tmp_path / "png.mov")).frames == 3


USER_FORMATS = [  # (file name, ffmpeg output options): what users bring, made with the bundled ffmpeg
    ("phone.mov", ["-c:v", "libx264", "-pix_fmt", "yuv420p"]), ("clip.mkv", ["-c:v", "ffv1"]),
    ("clip.avi", ["-c:v", "mjpeg"]), ("still.jpg", ["-frames:v", "1"]), ("still.png", ["-frames:v", "1"]),
    ("clip.y4m", ["-pix_fmt", "yuv420p"]), ("clip.ivf", ["-c:v", "libvpx-vp9"]), ("clip.ts", ["-c:v", "libx264"]),
    ("clip.nut", []), ("clip.h264", ["-c:v", "libx264"]), ("clip.dv", ["-s", "720x480", "-pix_fmt", "yuv411p",
                                                                        "-r", "30000/1001"]),
]


@pytest.mark.parametrize("name, options", USER_FORMATS, ids=[name for name, _ in USER_FORMATS])
def test_the_video_formats_users_bring_are_accepted(tmp_path, name, options):
    """The demuxer whitelist keeps playlists out, not these (a JPEG is read with image2)."""
    import subprocess

    from animation.video import ffmpeg_exe

    path = tmp_path / name
    size = [] if "-s" in options else ["-s", "64x48"]
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=64x48:rate=10:duration=0.5", *size, *options, str(path)], check=True)
    assert check_video(path).frames >= 1


def test_a_name_with_a_sequence_pattern_is_not_read_as_a_sequence(tmp_path):
    """image2 would expand '%03d' in the name into img001.jpg, img002.jpg, ... (other files):
    a JPEG so named is refused in one line instead."""
    import shutil
    import subprocess

    from animation.video import ffmpeg_exe

    for index in range(1, 4):
        cv2.imwrite(str(tmp_path / f"img{index:03d}.jpg"), np.full((48, 64, 3), 40 * index, np.uint8))
    shutil.copy(tmp_path / "img001.jpg", tmp_path / "img%03d.jpg")
    plain = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(tmp_path / "img%03d.jpg"), "-f", "null", "-"],
                           capture_output=True, text=True)
    assert "frame=    3" in plain.stderr.replace("frame=3", "frame=    3")  # what ffmpeg alone reads: 3 files
    with pytest.raises(InputError, match="not a video file in a format read here"):
        check_video(tmp_path / "img%03d.jpg")
    assert check_video(tmp_path / "img001.jpg").frames == 1


def test_farm_validate_names_the_setting_and_the_playlist_in_one_line(tmp_path, capsys, monkeypatch):
    from farm.cli import main

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    outside = ts_segment(tmp_path / "outside" / "secret.ts")
    scene_dir = tmp_path / "scene"
    scene_dir.mkdir()
    (scene_dir / "live.m3u8").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:0.5,\n{outside}\n")
    scene = scene_dir / "video.yaml"
    scene.write_text("name: v\ndiffusion_model: tiny\nclip_models: [\"tiny-vit::random\"]\n"
                     "width_height: [64, 64]\nsteps: 10\ntext_prompts: {0: [\"an apple\"]}\n"
                     "animation_mode: Video Input\nvideo_init_path: live.m3u8\n")
    assert main(["validate", str(scene)]) == 2
    out = capsys.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "video_init_path" in lines[0] and "'live.m3u8': it is an HLS playlist, not a video file" in lines[0]


# -- image prompts --------------------------------------------------------------------------

def test_image_prompt_size_keeps_dds_rule_for_normal_aspects():
    from engine.render import image_prompt_size

    frames = [(64, 64), (1280, 768), (768, 1280), (512, 448)]
    images = [(80, 48), (48, 80), (3000, 2000), (1024, 4096), (4096, 1024), (30, 20), (64, 256)]
    for frame_w, frame_h in frames:
        for w, h in images:
            short = min(frame_w, frame_h, w, h)  # DD, as the renderer did before the cap
            scale = short / min(w, h)
            before = None if min(w, h) == short else (max(1, round(w * scale)), max(1, round(h * scale)))
            assert image_prompt_size(w, h, frame_w, frame_h) == before, (w, h, frame_w, frame_h)


def test_image_prompt_size_caps_a_thin_image_keeping_its_aspect():
    from engine.render import image_prompt_size

    assert image_prompt_size(3, 20000, 64, 64) == (1, 256)
    assert image_prompt_size(20000, 3, 64, 48) == (256, 1)
    assert image_prompt_size(300, 20000, 1280, 768) == (77, 5120)
    assert image_prompt_size(1, 1, 64, 64) is None


def test_image_prompt_size_is_final_once_applied():
    """A prompt shrunk when loaded is not resampled again by the renderer."""
    from engine.render import image_prompt_size

    for frame in ((64, 64), (1280, 768), (100, 37)):
        for w, h in ((3, 20000), (20000, 3), (300, 20000), (3000, 2000), (999, 333), (7, 5000)):
            size = image_prompt_size(w, h, *frame) or (w, h)
            assert image_prompt_size(*size, *frame) is None, (w, h, frame)


@pytest.fixture(scope="module")
def tiny_renderer():
    import torch

    from engine.models import ModelSet
    from engine.render import Renderer
    from engine.spec import ModelSetSpec

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    return Renderer(ModelSet(ModelSetSpec(diffusion_model="tiny", use_secondary_model=False,
                                          clip_models=("tiny-vit::random",)), "cpu"))


def _spec(**changes):
    from engine.spec import CutSchedule, GuidanceSettings, RenderSpec, SamplerSettings, WeightedPrompt

    return RenderSpec(width=64, height=64, seed=3, text_prompts=(WeightedPrompt("an apple", 1.0),),
                      sampler=SamplerSettings(steps=4, skip_steps=2),
                      guidance=GuidanceSettings(cutn_batches=1),
                      cuts=CutSchedule(overview=(2,) * 1000, innercut=(2,) * 1000),
                      models=_tiny_models(), **changes)


def _tiny_models():
    from engine.spec import ModelSetSpec

    return ModelSetSpec(diffusion_model="tiny", use_secondary_model=False, clip_models=("tiny-vit::random",))


def test_normal_image_prompts_get_exactly_the_pixels_they_got_before(tiny_renderer):
    import torch

    from engine.render import image_to_tensor

    spec = _spec()
    rng = np.random.default_rng(1)
    for shape in ((120, 200, 3), (48, 80, 3), (40, 30, 3)):
        picture = rng.integers(0, 256, shape, dtype=np.uint8)
        h, w = shape[:2]
        short = min(64, 64, w, h)  # the renderer's code before the cap
        expected = image_to_tensor(picture, None, None, "image prompt")
        if min(w, h) != short:
            scale = short / min(w, h)
            resized = Image.fromarray(picture).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                      Image.LANCZOS)
            expected = image_to_tensor(resized, None, None, "image prompt")
        assert torch.equal(tiny_renderer._image_prompt_pixels(picture, spec), expected)


def test_a_3x20000_image_prompt_is_capped_and_renders(tiny_renderer):
    from engine.spec import WeightedPrompt

    tall = np.full((20000, 3, 3), 200, np.uint8)
    tall[:10000] = 30
    spec = dataclasses.replace(_spec(), image_prompts=(WeightedPrompt("tall.png", 1.0),))
    pixels = tiny_renderer._image_prompt_pixels(tall, spec)
    assert tuple(pixels.shape[-2:]) == (4 * 64, 1)
    image = tiny_renderer.render(spec, image_prompt_images={"tall.png": tall})
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def test_a_submit_sends_image_prompts_at_the_size_the_renderer_uses(tmp_path, tiny_renderer):
    """A 640x480 photo as an image prompt of a 64x64 scene travels to the actors as 85x64:
    what the renderer would have made of it, so its pixels are the same."""
    import torch

    from farm.submit import prepare_job

    photo = np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    scene = tmp_path / "scene.yaml"
    scene.write_text('name: p\ndiffusion_model: tiny\nclip_models: ["tiny-vit::random"]\nwidth_height: [64, 64]\n'
                     'seed: 5\nsteps: 10\nskip_steps: 0\ntext_prompts: {0: ["an apple:1"]}\n'
                     'image_prompts: {0: ["photo.png:1"]}\n')
    _, _, _, inputs, _ = prepare_job(str(scene), tmp_path / "out", {})
    sent = inputs.image_prompts["photo.png"]
    assert sent.shape == (64, 85, 3)
    spec = _spec()
    assert torch.equal(tiny_renderer._image_prompt_pixels(sent, spec), tiny_renderer._image_prompt_pixels(photo, spec))
