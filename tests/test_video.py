"""Video files with the bundled ffmpeg: stitch, probe, extract, errors, atomic writes."""

import cv2
import numpy as np
import pytest

from animation.video import (VideoError, VideoInfo, blend_consecutive, extract_frames,
                             probe_video, stitch)
from tests.media import png_mov, zero_mdat

WIDTH, HEIGHT, COUNT = 64, 48, 7


def grey(i):
    return 20 + 30 * i


@pytest.fixture
def frame_files(tmp_path):
    """COUNT flat-grey PNG frames, frame i at level grey(i), with a small marker."""
    paths = []
    for i in range(COUNT):
        image = np.full((HEIGHT, WIDTH, 3), grey(i), np.uint8)
        path = tmp_path / "frames" / f"f{i:03d}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def levels(paths):
    return [float(cv2.imread(str(p)).mean()) for p in paths]


def test_h264_round_trip_through_probe_and_extract(frame_files, tmp_path):
    video = stitch(frame_files, tmp_path / "out" / "clip.mp4", fps=12)
    assert video == tmp_path / "out" / "clip.mp4"
    assert [p.name for p in video.parent.iterdir()] == ["clip.mp4"]  # no temporary left
    info = probe_video(video)
    assert isinstance(info, VideoInfo)
    assert (info.frames, info.fps, info.width, info.height) == (COUNT, 12.0, WIDTH, HEIGHT)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert info.duration == pytest.approx(COUNT / 12, abs=0.05)

    every = extract_frames(video, tmp_path / "all")
    assert [p.name for p in every] == [f"{i:06d}.png" for i in range(COUNT)]
    # frame 0 is in the video (DD dropped it) and every frame keeps its content
    assert levels(every) == pytest.approx([grey(i) for i in range(COUNT)], abs=2)

    nth = extract_frames(video, tmp_path / "nth", every_nth=3)
    assert levels(nth) == pytest.approx([grey(0), grey(3), grey(6)], abs=2)

    first_two = extract_frames(video, tmp_path / "limited", every_nth=2, max_frames=2)  # frames 0 and 2 only
    assert [p.name for p in first_two] == ["000000.png", "000001.png"]
    assert levels(first_two) == pytest.approx([grey(0), grey(2)], abs=2)
    with pytest.raises(VideoError, match="max_frames must be an integer >= 1"):
        extract_frames(video, tmp_path / "none", max_frames=0)


def test_an_audio_only_file_is_said_to_have_no_video_stream(tmp_path):
    import subprocess

    from animation.video import VideoError, ffmpeg_exe

    audio = tmp_path / "audio.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=1", "-c:a", "aac", str(audio)], check=True)
    with pytest.raises(VideoError, match="no video stream"):
        probe_video(audio)


def test_extract_resizes_and_replaces_older_frames(frame_files, tmp_path):
    video = stitch(frame_files, tmp_path / "clip.mp4")
    out_dir = tmp_path / "x"
    assert len(extract_frames(video, out_dir)) == COUNT
    (out_dir / "notes.txt").write_text("keep me")
    small = extract_frames(video, out_dir, every_nth=2, size=(32, 24))
    assert len(small) == 4
    assert sorted(p.name for p in out_dir.iterdir()) == \
        ["000000.png", "000001.png", "000002.png", "000003.png", "notes.txt"]
    assert cv2.imread(str(small[0])).shape == (24, 32, 3)


@pytest.mark.parametrize("codec, suffix, probed, pix_fmts", [
    ("webm", ".webm", "vp9", {"yuv420p"}),
    ("gif", ".gif", "gif", {"bgra", "pal8", "bgr8"}),
])
def test_webm_and_gif_are_written(frame_files, tmp_path, codec, suffix, probed, pix_fmts):
    video = stitch(frame_files, tmp_path / f"clip{suffix}", fps=12, codec=codec)
    info = probe_video(video)
    assert (info.frames, info.width, info.height, info.codec) == (COUNT, WIDTH, HEIGHT, probed)
    assert info.pix_fmt in pix_fmts
    assert info.fps == pytest.approx(12, abs=0.6)  # GIF stores delays in 1/100 s
    assert levels(extract_frames(video, tmp_path / codec))[3] == pytest.approx(grey(3), abs=4)


def test_blend_mixes_each_frame_with_the_one_before(frame_files, tmp_path):
    video = stitch(frame_files, tmp_path / "blend.mp4", blend=0.5)
    got = levels(extract_frames(video, tmp_path / "b"))
    expected = [grey(0)] + [(grey(i) + grey(i - 1)) / 2 for i in range(1, COUNT)]
    assert got == pytest.approx(expected, abs=2)
    previous, current = np.full((2, 2, 3), 100, np.uint8), np.full((2, 2, 3), 200, np.uint8)
    assert (blend_consecutive(previous, current, 0.25) == 175).all()


def test_odd_frame_size_is_padded_for_yuv420p(tmp_path):
    path = tmp_path / "odd.png"
    cv2.imwrite(str(path), np.full((47, 63, 3), 128, np.uint8))
    info = probe_video(stitch([path, path], tmp_path / "odd.mp4"))
    assert (info.width, info.height, info.frames) == (64, 48, 2)


def test_failed_stitch_leaves_no_partial_file_and_keeps_old_video(frame_files, tmp_path):
    out = tmp_path / "clip.mp4"
    stitch(frame_files[:2], out)
    before = out.read_bytes()
    wrong_size = tmp_path / "big.png"
    cv2.imwrite(str(wrong_size), np.zeros((96, 128, 3), np.uint8))
    with pytest.raises(VideoError, match=r"big\.png is 128x96, the first frame is 64x48"):
        stitch(frame_files + [wrong_size], out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png", "clip.mp4", "frames"]


def test_missing_and_corrupt_videos_give_one_line_errors(tmp_path):
    missing = tmp_path / "nowhere.mp4"
    for call in (lambda: probe_video(missing), lambda: extract_frames(missing, tmp_path / "o")):
        with pytest.raises(VideoError, match="video file not found: .*nowhere.mp4") as error:
            call()
        assert "\n" not in str(error.value)
    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"this is not a video" * 50)
    for call in (lambda: probe_video(corrupt), lambda: extract_frames(corrupt, tmp_path / "o")):
        with pytest.raises(VideoError, match=r"broken\.mp4: Invalid data") as error:
            call()
        assert "\n" not in str(error.value)
    assert list((tmp_path / "o").iterdir()) == []  # no staging folder left behind


@pytest.mark.parametrize("kwargs, message", [
    ({"codec": "avi"}, "unknown video codec 'avi'"),
    ({"out_name": "clip.webm"}, "h264 video needs a file name ending in .mp4"),
    ({"fps": 0}, "fps must be > 0"),
    ({"blend": 1.0}, r"video blend must be in \[0, 1\)"),
    ({"crf": 99}, "crf must be an integer in 0..63"),
])
def test_bad_stitch_arguments(frame_files, tmp_path, kwargs, message):
    out_name = kwargs.pop("out_name", "clip.mp4")
    with pytest.raises(VideoError, match=message):
        stitch(frame_files, tmp_path / out_name, **kwargs)


def test_stitch_reports_missing_frame_and_empty_list(frame_files, tmp_path):
    with pytest.raises(VideoError, match="frame not found: .*gone.png"):
        stitch(frame_files[:2] + [tmp_path / "gone.png"], tmp_path / "c.mp4")
    with pytest.raises(VideoError, match="no frames to stitch"):
        stitch([], tmp_path / "c.mp4")
    with pytest.raises(VideoError, match="every_nth must be an integer >= 1"):
        extract_frames(frame_files[0], tmp_path / "o", every_nth=0)


# -- pixel limit, undecodable packets, ffmpeg's most telling error line -----------------------

def test_probe_refuses_frames_over_max_pixels(frame_files, tmp_path):
    from animation.video import VideoTooLarge

    video = stitch(frame_files[:2], tmp_path / "clip.mp4")
    assert probe_video(video, max_pixels=WIDTH * HEIGHT).frames == 2
    with pytest.raises(VideoTooLarge, match=f"frame size {WIDTH}x{HEIGHT} is more than 1000 pixels") as error:
        probe_video(video, max_pixels=1000)
    assert (error.value.width, error.value.height, error.value.max_pixels) == (WIDTH, HEIGHT, 1000)
    still = tmp_path / "still.png"  # ffmpeg decodes image codecs while probing: refused before that
    cv2.imwrite(str(still), np.zeros((300, 400, 3), np.uint8))
    with pytest.raises(VideoTooLarge, match="frame size 400x300 is more than 100000 pixels"):
        probe_video(still, max_pixels=100_000)


def test_undecodable_packets_fail_with_the_decoders_reason_not_conversion_failed(tmp_path):
    from animation.video import decode_first_frame

    good = png_mov(tmp_path / "good.mov")
    decode_first_frame(good)
    broken = zero_mdat(png_mov(tmp_path / "broken.mov"))
    assert probe_video(broken).frames == 3
    for call in (lambda: decode_first_frame(broken), lambda: extract_frames(broken, tmp_path / "o")):
        with pytest.raises(VideoError, match=r"broken\.mov: Invalid PNG signature") as error:
            call()
        assert "\n" not in str(error.value) and "Conversion failed" not in str(error.value)


def test_error_line_skips_generic_closing_lines_and_stream_descriptions():
    from animation.video import _error_line

    stderr = ("[png @ 0x1] Invalid PNG signature 0x00000000.\n"
              "    Last message repeated 3 times\n"
              "[vist#0:0/png @ 0x2] [dec:png @ 0x3] Decoding error: Invalid data found when processing input\n"
              "Output #0, null, to 'pipe:':\n"
              "  Stream #0:0: Video: wrapped_avframe, rgb24, 64x64\n"
              "      vendor_id       : FFMP\n"
              "[vist#0:0/png @ 0x2] [dec:png @ 0x3] Decode error rate 0.8 exceeds maximum 0.67\n"
              "[vist#0:0/png @ 0x2] [dec:png @ 0x3] Task finished with error code: -1 (Error number -1 occurred)\n"
              "frame=    1 fps=0.0 q=-0.0 Lsize=N/A\n"
              "Conversion failed!\n")
    assert _error_line(stderr) == "Invalid PNG signature 0x00000000."
    only_generic = stderr.split("\n", 2)[2]
    assert _error_line(only_generic) == "Decoding error: Invalid data found when processing input"
    assert _error_line("Conversion failed!\n") == "Conversion failed!"
    assert _error_line("Error opening input files: Invalid data found when processing input\n") == \
        "Invalid data found when processing input"
