"""Video files with the bundled ffmpeg: stitch, probe, extract, errors, atomic writes."""

import cv2
import numpy as np
import pytest

from animation.video import (VideoError, VideoInfo, blend_consecutive, extract_frames,
                             probe_video, stitch)
from tests.media import png_mov, ts_segment, zero_mdat

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


def test_error_line_of_a_full_disk_is_not_the_encoders_closing_statistics():
    """libx264 prints its summary after a failed trailer: the reason came before it (the
    audit saw 'kb/s:188.05' given as the reason a video could not be written)."""
    from animation.video import _error_line

    stderr = ("[out#0/mp4 @ 0x5581] Error writing trailer: No space left on device\n"
              "[libx264 @ 0x5582] frame I:1     Avg QP:20.00  size:  1234\n"
              "[libx264 @ 0x5582] frame P:7     Avg QP:22.71  size:   321\n"
              "[libx264 @ 0x5582] mb I  I16..4: 10.0% 80.0% 10.0%\n"
              "[libx264 @ 0x5582] final ratefactor: 20.31\n"
              "[libx264 @ 0x5582] coded y,uvDC,uvAC intra: 50.1% 60.2% 30.3%\n"
              "[libx264 @ 0x5582] i16 v,h,dc,p: 20% 30% 10% 40%\n"
              "[libx264 @ 0x5582] kb/s:188.05\n"
              "Conversion failed!\n")
    assert _error_line(stderr) == "Error writing trailer: No space left on device"


def test_stitch_says_a_full_disk_as_an_oserror(tmp_path, monkeypatch):
    """ffmpeg's 'No space left on device' becomes OSError(ENOSPC), which callers treat as any
    full-disk write (the farm: 'no room to write video.mp4 ...: free some space')."""
    import errno

    import animation.video as video

    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\ncat > /dev/null\necho '[out#0/mp4 @ 0x1] Error writing trailer: No space left on "
                    "device' >&2\necho '[libx264 @ 0x2] kb/s:188.05' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(video, "ffmpeg_exe", lambda: str(fake))
    frame = tmp_path / "f.png"
    cv2.imwrite(str(frame), np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(OSError) as caught:
        video.stitch([frame, frame], tmp_path / "out.mp4")
    assert caught.value.errno == errno.ENOSPC and not isinstance(caught.value, VideoError)
    assert not (tmp_path / "out.mp4").exists()


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


# -- playlists, demuxer whitelist, timeouts, no ffmpeg left behind ---------------------------

def hls_playlist(path, segment, live=False):
    """An HLS playlist whose one segment is ``segment`` by its absolute path; a live one
    (no #EXT-X-ENDLIST) makes ffmpeg's HLS demuxer wait for more segments forever."""
    path.write_text("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
                    f"#EXTINF:0.5,\n{segment}\n" + ("" if live else "#EXT-X-ENDLIST\n"))
    return path


def ffmpeg_children(pid):
    """Ids of the live (not zombie) ffmpeg processes whose parent is ``pid``."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z" and b"ffmpeg" in cmdline.split(b"\0")[0]:
            found.append(int(entry))
    return found


def alive(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_hls_playlist_of_a_file_outside_is_refused_by_probe_decode_and_extract(tmp_path):
    """The playlist's segment is a readable video outside the folder: ffmpeg's HLS demuxer
    read it (and probe said 6 frames). Now every entry point refuses the playlist itself."""
    from animation.video import decode_first_frame

    outside = ts_segment(tmp_path / "outside" / "secret.ts")
    assert probe_video(outside).frames == 6  # the segment itself is a fine video
    scene_dir = tmp_path / "scene"
    scene_dir.mkdir()
    for name in ("clip.m3u8", "clip.mp4"):  # by its suffix, and by its content under a video's name
        playlist = hls_playlist(scene_dir / name, outside)
        for call in (lambda: probe_video(playlist), lambda: decode_first_frame(playlist),
                     lambda: extract_frames(playlist, scene_dir / "frames")):
            with pytest.raises(VideoError) as error:
                call()
            assert str(error.value).endswith(f"{playlist}: it is an HLS playlist, not a video file")
    assert not (scene_dir / "frames").exists()  # refused before anything was written


def test_ffmpeg_itself_reads_inputs_only_through_the_whitelisted_demuxers(tmp_path):
    """Beneath the playlist check (called directly here): ffmpeg given input_args refuses
    the hls and concat demuxers, which without it read the file outside."""
    from animation.video import INPUT_DEMUXERS, _run_ffmpeg, input_args

    outside = ts_segment(tmp_path / "outside" / "secret.ts")
    hls = hls_playlist(tmp_path / "hls.m3u8", outside)
    concat = tmp_path / "concat.txt"
    concat.write_text("ffconcat version 1.0\nfile 'outside/secret.ts'\n")  # its safe mode: relative
    for script in (hls, concat):
        _run_ffmpeg(["-i", str(script), "-f", "null", "-"], "without the whitelist", timeout=30)
        with pytest.raises(VideoError, match="not a video file in a format read here") as error:
            _run_ffmpeg([*input_args(script), "-f", "null", "-"], f"cannot read {script.name}", timeout=30)
        assert str(error.value).startswith(f"cannot read {script.name}: ")
    assert not {"hls", "concat", "dash", "image2", "rtsp", "sdp"} & set(INPUT_DEMUXERS)
    # every whitelisted name is a demuxer this ffmpeg has (a typo would refuse that format)
    import subprocess

    from animation.video import ffmpeg_exe

    listing = subprocess.run([ffmpeg_exe(), "-hide_banner", "-demuxers"], capture_output=True, text=True).stdout
    known = {name for line in listing.splitlines()[4:] if len(line.split()) > 1
             for name in line.split()[1].split(",")}
    assert set(INPUT_DEMUXERS) <= known


def test_a_live_playlist_is_refused_at_once_not_waited_on(tmp_path):
    import os
    import time

    outside = ts_segment(tmp_path / "outside" / "live.ts")
    (tmp_path / "scene").mkdir()
    live = hls_playlist(tmp_path / "scene" / "live.m3u8", outside, live=True)
    started = time.monotonic()
    for call in (lambda: probe_video(live), lambda: extract_frames(live, tmp_path / "frames")):
        with pytest.raises(VideoError, match="live.m3u8: it is an HLS playlist, not a video file"):
            call()
    assert time.monotonic() - started < 5
    assert ffmpeg_children(os.getpid()) == []


def test_a_name_with_a_colon_is_read_as_a_local_file(frame_files, tmp_path, monkeypatch):
    """ffmpeg takes 'x:...' for protocol x; input_args names the file as file:/absolute."""
    monkeypatch.chdir(tmp_path)
    video = stitch(frame_files[:3], tmp_path / "subfile:clip.mp4")
    assert probe_video("subfile:clip.mp4").frames == 3


def test_a_probe_over_its_timeout_stops_with_one_line_naming_the_file(frame_files, tmp_path):
    import os

    video = stitch(frame_files, tmp_path / "clip.mp4")
    with pytest.raises(VideoError) as error:
        probe_video(video, timeout=0.001)
    assert str(error.value) == f"cannot read video {video}: ffmpeg did not finish within 0.001 s (stopped)"
    assert ffmpeg_children(os.getpid()) == []  # killed and reaped
    assert probe_video(video, timeout=60).frames == COUNT


SLOW_FFMPEG = """
import sys
from animation.video import _run_ffmpeg, input_args
print("started", flush=True)
try:
    _run_ffmpeg(["-re", *input_args(sys.argv[1]), "-f", "null", "-"], "slow")  # reads at 1x speed
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.stdin.read()  # still alive until the test has looked for its ffmpeg
"""


@pytest.mark.parametrize("signal_name", ["SIGINT"])
def test_no_ffmpeg_outlives_an_interrupted_caller(tmp_path, signal_name):
    """Ctrl-C (KeyboardInterrupt in the call) kills its ffmpeg while the caller lives on.
    (No parent-death signal for SIGKILL: a preexec_fn is unsafe in a process with threads,
    and PR_SET_PDEATHSIG fires when the starting thread ends, not the process.)"""
    import os
    import signal
    import subprocess
    import sys
    import time

    from animation.video import ffmpeg_exe

    long_video = tmp_path / "long.mkv"  # 60 s at 1 fps: ffmpeg -re takes a minute on it
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "color=c=gray:size=16x16:rate=1:duration=60", "-c:v", "ffv1", str(long_video)], check=True)
    caller = subprocess.Popen([sys.executable, "-c", SLOW_FFMPEG, str(long_video)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ffmpeg = None
    try:
        assert caller.stdout.readline() == "started\n"
        deadline = time.monotonic() + 20
        while not (children := ffmpeg_children(caller.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(children) == 1
        ffmpeg = children[0]
        caller.send_signal(getattr(signal, signal_name))
        if signal_name == "SIGINT":
            assert caller.stdout.readline() == "interrupted\n"
        else:
            caller.wait(timeout=20)
        deadline = time.monotonic() + 10
        while alive(ffmpeg) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(ffmpeg)
        if signal_name == "SIGINT":
            assert caller.poll() is None  # ffmpeg was stopped by the call, not by the caller's end
    finally:
        caller.kill()
        caller.wait()
        if ffmpeg is not None and alive(ffmpeg):  # the test failed: do not leave it running
            os.kill(ffmpeg, signal.SIGKILL)
