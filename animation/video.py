"""Video files with the ffmpeg bundled by imageio-ffmpeg: probe, extract frames, stitch.

Every ffmpeg failure becomes one ``VideoError`` line naming the file and ffmpeg's reason.
Input files are read only from local files (``-protocol_whitelist file``) and only through
the container and image demuxers in ``INPUT_DEMUXERS``: no playlists (HLS, concat, DASH),
which would make ffmpeg open other files or wait for a live stream. Every ffmpeg call can
time out, and its ffmpeg is killed when the call is interrupted.
``stitch`` writes atomically (a temporary name in the same folder, then ``os.replace``),
includes frame 0 (DD's video dropped it) and can blend consecutive frames like DD's
"linear" video blend: ``out[i] = frame[i] * (1 - blend) + frame[i - 1] * blend``.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import imageio_ffmpeg
import numpy as np

FRAME_PATTERN = "%06d.png"
_FRAME_NAME = re.compile(r"^\d{6}\.png$")

# codec -> (ffmpeg muxer, allowed suffixes)
CONTAINERS = {"h264": ("mp4", (".mp4", ".mov", ".m4v")),
              "webm": ("webm", (".webm",)),
              "gif": ("gif", (".gif",))}


INPUT_DEMUXERS = ("mov", "matroska", "webm", "avi", "mpegts", "flv", "mpeg", "ogg", "asf", "gif",
                  "apng", "webp_anim", "yuv4mpegpipe", "ivf", "dv", "mxf", "nut", "h264", "hevc", "mjpeg",
                  "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe", "ppm_pipe", "pgm_pipe",
                  "pbm_pipe", "pam_pipe")
"""The ffmpeg demuxers input files are read with (``-format_whitelist``): video containers
(mov covers mp4/m4v/3gp, matroska webm, mpeg program streams, asf wmv, y4m, ivf, dv, mxf,
nut), raw H.264/HEVC/MJPEG streams, GIF/APNG/WebP animations and single images through the
pipe demuxers. Playlists and scripts that name other inputs (hls, concat, dash, sdp, rtsp,
...) are not among them. ffmpeg reads a .jpg with image2, which expands sequence patterns
(``%03d``) in the name: it is allowed only for names without a ``%`` (`input_args`)."""

PLAYLIST_SUFFIXES = {".m3u8": "an HLS playlist", ".m3u": "an M3U playlist",
                     ".ffconcat": "an ffmpeg concat script", ".mpd": "a DASH manifest",
                     ".sdp": "an SDP session description", ".pls": "a PLS playlist",
                     ".xspf": "an XSPF playlist"}
_PLAYLIST_HEADS = ((b"#EXTM3U", "an HLS playlist"), (b"ffconcat", "an ffmpeg concat script"),
                   (b"[playlist]", "a PLS playlist"))

PROBE_TIMEOUT_S = 120.0
"""Default limit of one probing/checking ffmpeg call (counting a long video's packets takes
seconds: this only stops a call that would never finish)."""


class VideoError(ValueError):
    """A video file is missing, unreadable, or ffmpeg failed on it."""

    stderr = ""
    """ffmpeg's whole stderr when ffmpeg failed."""


class VideoTooLarge(VideoError):
    """The video's frames have more pixels than the caller allows."""

    def __init__(self, path, width: int, height: int, max_pixels: int):
        super().__init__(f"cannot read video {path}: frame size {width}x{height} is more than "
                         f"{max_pixels} pixels")
        self.width, self.height, self.max_pixels = width, height, max_pixels


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds (first video stream)."""

    frames: int
    fps: float
    width: int
    height: int
    codec: str
    pix_fmt: str
    duration: float


def ffmpeg_exe() -> str:
    """Path of the bundled ffmpeg binary."""
    return imageio_ffmpeg.get_ffmpeg_exe()


_CLOSING = (r"Conversion failed!|Error while processing the decoded data|Nothing was written into output file"
            r"|Task finished with error code|Terminating thread with|Decode error rate .* exceeds maximum"
            r"|Could not open encoder before EOF|Cannot determine format of input .* after EOF"
            r"|Last message repeated|Error number -?\d+ occurred")
"""ffmpeg's generic closing lines: they say that something failed, not what."""
_WRAPPING = r"Decoding error: |Error while decoding stream|Consider increasing the value for the"
"""Lines that only pass a reason on (the component that found it said more, earlier)."""
_CLOSING_LINE = re.compile(f"^({_CLOSING})")
_GENERIC_LINE = re.compile(f"^({_CLOSING}|{_WRAPPING})")
_NOT_ERRORS = ("frame=", "size=", "video:", "Input #", "Output #", "Stream mapping:", "Press [q]")
"""Progress and the description of the inputs and outputs (their lines within are indented)."""
_ENCODER_STATISTICS = re.compile(
    r"^\[lib(x264|x265|vpx[^ ]*|aom[^ ]*|svtav1) @ [^\]]*\]\s*(frame [IPB]:|mb [IPB]|final ratefactor|coded y|"
    r"i16 |i8 |i8c |i4 |8x8 transform|Weighted P|ref [PB] |kb/s:|consecutive B|direct mvs|using cpu|profile |"
    r"264 - core|Stats|VBV|ssim|PSNR)")
"""An encoder's closing summary (printed after a failed trailer too): statistics, no error."""


def _error_line(stderr: str) -> str:
    """ffmpeg's most specific stderr line: the last one that is neither a generic closing
    line ("Conversion failed!") nor a wrapping one, else the last wrapping line, else the
    last closing one; without its ``[component @ 0x..]`` prefixes (a map of the video
    stream that matches nothing says so: the file has no video)."""
    if re.search(r"Stream map '[^']*' matches no streams", stderr) and "Video:" not in stderr:
        return "no video stream (an audio-only file?)"
    generic = []
    for raw in reversed(stderr.rstrip().splitlines()):
        if raw[:1].isspace() or _ENCODER_STATISTICS.match(raw.strip()):
            continue
        line = re.sub(r"^(\[[^\]]*\]\s*)+", "", raw.strip())
        if not line or line.startswith(_NOT_ERRORS):
            continue
        if _GENERIC_LINE.match(line):
            generic.append(line)
            continue
        return line.removeprefix("Error opening input files: ")
    return next((line for line in generic if not _CLOSING_LINE.match(line)),
                generic[0] if generic else "unknown ffmpeg error")


def _run_ffmpeg(args: list[str], what: str, stdout=subprocess.DEVNULL,
                timeout: float | None = None) -> subprocess.CompletedProcess:
    """ffmpeg with ``args``; VideoError ``"{what}: reason"`` when it fails or runs longer
    than ``timeout`` seconds. Its process is killed if this call is interrupted."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", *args]
    process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
                               text=True, errors="replace")
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise VideoError(f"{what}: ffmpeg did not finish within {timeout:g} s (stopped)") from None
    except BaseException:  # KeyboardInterrupt, SystemExit, ...: no ffmpeg left behind
        process.kill()
        process.wait()
        raise
    if process.returncode != 0:
        if "Format not on whitelist" in err:
            reason = ("not a video file in a format read here (MP4/MOV, Matroska/WebM, AVI, "
                      "MPEG-TS/PS, FLV, Ogg, WMV, Y4M, IVF, DV, MXF, NUT, raw H.264/HEVC/MJPEG, GIF, APNG, WebP, "
                      "PNG, JPEG, BMP, TIFF, PPM)")
        else:
            reason = _error_line(err)
        error = VideoError(f"{what}: {reason}")
        error.stderr = err
        raise error
    return subprocess.CompletedProcess(cmd, process.returncode, out, err)


def input_args(path: Path) -> list[str]:
    """ffmpeg's options that read ``path`` as one local file through INPUT_DEMUXERS only, and
    image2 where the name holds no sequence pattern (a ``file:`` URL, so a name with a colon
    is not taken for another protocol)."""
    demuxers = INPUT_DEMUXERS if "%" in Path(path).name else (*INPUT_DEMUXERS, "image2")  # one file, no pattern
    return ["-protocol_whitelist", "file", "-format_whitelist", ",".join(demuxers),
            "-i", "file:" + str(Path(path).absolute())]


def playlist_kind(path: str | os.PathLike) -> str | None:
    """What kind of playlist or input script a file is ("an HLS playlist", ...), by its
    name or its first bytes; None for anything else."""
    path = Path(path)
    kind = PLAYLIST_SUFFIXES.get(path.suffix.lower())
    if kind is not None:
        return kind
    try:
        with open(path, "rb") as file:
            head = file.read(64)
    except OSError:
        return None
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    return next((kind for start, kind in _PLAYLIST_HEADS if head.startswith(start)), None)


def _existing_video(path: str | os.PathLike, what: str) -> Path:
    """``path`` after checking that it is a regular file and not a playlist."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video file not found: {path}")
    kind = playlist_kind(path)
    if kind is not None:
        raise VideoError(f"{what} {path}: it is {kind}, not a video file")
    return path


def parse_stream_header(stderr: str, path: Path) -> tuple[str, str, int, int, float, float]:
    """(codec, pix_fmt, width, height, fps, duration) from ffmpeg's input description."""
    stream = re.search(r"Stream #0:\d+.*?: Video: (?P<codec>\w+)[^,\n]*, (?P<pix>[a-z0-9_]+)"
                       r"(?P<rest>.*)", stderr)
    if stream is None:
        raise VideoError(f"cannot read video {path}: no video stream")
    rest = stream.group("rest")
    size = re.search(r"[,\s](\d{1,5})x(\d{1,5})[\s,\[]", rest + " ")
    rate = re.search(r"([\d.]+)(k?) fps", rest) or re.search(r"([\d.]+)(k?) tbr", rest)
    if size is None or rate is None:
        raise VideoError(f"cannot read video {path}: no frame size or rate in its header")
    fps = float(rate.group(1)) * (1000.0 if rate.group(2) else 1.0)
    duration = 0.0
    hms = re.search(r"Duration: (\d+):(\d+):([\d.]+)", stderr)
    if hms:
        duration = int(hms.group(1)) * 3600 + int(hms.group(2)) * 60 + float(hms.group(3))
    return (stream.group("codec"), stream.group("pix"), int(size.group(1)), int(size.group(2)),
            fps, duration)


def _pixel_limit(max_pixels: int | None) -> list[str]:
    """ffmpeg's decoder option that refuses larger frames before allocating them."""
    return [] if max_pixels is None else ["-max_pixels", str(int(max_pixels))]


def _run_limited(args: list[str], path: Path, what: str, max_pixels: int | None,
                 stdout=subprocess.DEVNULL, timeout: float | None = None) -> subprocess.CompletedProcess:
    """``_run_ffmpeg`` on ``path`` with the pixel limit; a frame over it is VideoTooLarge."""
    try:
        return _run_ffmpeg([*_pixel_limit(max_pixels), *input_args(path), *args], what, stdout, timeout)
    except VideoError as exc:
        too_big = max_pixels is not None and re.search(
            r"Picture size (\d+)x(\d+) (?:exceeds specified max pixel count|is invalid)", exc.stderr)
        if too_big and int(too_big.group(1)) * int(too_big.group(2)) > max_pixels:
            raise VideoTooLarge(path, int(too_big.group(1)), int(too_big.group(2)), max_pixels) from None
        raise


def probe_video(path: str | os.PathLike, max_pixels: int | None = None,
                timeout: float | None = PROBE_TIMEOUT_S) -> VideoInfo:
    """Read a video's frame count (packets counted, no decoding), rate, size and codec.
    ``max_pixels``: frames larger than that are refused (VideoTooLarge), whether ffmpeg's
    probing would decode them (it does for PNG and other image codecs) or not. ``timeout``:
    seconds ffmpeg may take (None: no limit)."""
    path = _existing_video(path, "cannot read video")
    result = _run_limited(["-map", "0:v:0", "-c", "copy", "-f", "null", "-progress", "pipe:1",
                           "-nostats", "-"], path, f"cannot read video {path}", max_pixels,
                          stdout=subprocess.PIPE, timeout=timeout)
    codec, pix_fmt, width, height, fps, duration = parse_stream_header(result.stderr, path)
    if max_pixels is not None and width * height > max_pixels:
        raise VideoTooLarge(path, width, height, max_pixels)
    counts = re.findall(r"^frame=(\d+)", result.stdout, flags=re.MULTILINE)
    frames = int(counts[-1]) if counts else 0
    if frames == 0:
        raise VideoError(f"cannot read video {path}: it has no frames")
    return VideoInfo(frames, fps, width, height, codec, pix_fmt, duration)


def decode_first_frame(path: str | os.PathLike, max_pixels: int | None = None,
                       timeout: float | None = PROBE_TIMEOUT_S) -> None:
    """Decode the video's first frame (and nothing is written): VideoError with the
    decoder's reason if it cannot (packets that probe fine can still hold garbage)."""
    path = _existing_video(path, "cannot decode video")
    _run_limited(["-map", "0:v:0", "-frames:v", "1", "-f", "null", "-"], path,
                 f"cannot decode video {path}", max_pixels, timeout=timeout)


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise VideoError(f"size must be (width, height), got {size!r}") from None
    if width < 1 or height < 1:
        raise VideoError(f"size must be positive, got {width}x{height}")
    return width, height


def extract_frames(video_path: str | os.PathLike, out_dir: str | os.PathLike,
                   every_nth: int = 1, size: tuple[int, int] | None = None,
                   max_frames: int | None = None, timeout: float | None = None) -> list[Path]:
    """Write every ``every_nth`` frame (0, n, 2n, ...) as RGB PNG ``000000.png``, ... .

    ``size`` = (width, height) resizes (area filter); ``max_frames`` stops ffmpeg after
    that many PNGs (the rest of the video is not decoded). Older numbered frames in
    ``out_dir`` are replaced only after ffmpeg succeeded. Returns the PNG paths in order.
    ``timeout``: seconds ffmpeg may take (None: no limit; it is killed if interrupted).
    """
    video_path = _existing_video(video_path, "cannot extract frames from")
    if not isinstance(every_nth, (int, np.integer)) or every_nth < 1:
        raise VideoError(f"every_nth must be an integer >= 1, got {every_nth!r}")
    if max_frames is not None and (not isinstance(max_frames, (int, np.integer)) or max_frames < 1):
        raise VideoError(f"max_frames must be an integer >= 1, got {max_frames!r}")
    size = _check_size(size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    filters = []
    if every_nth > 1:
        filters.append(f"select=not(mod(n\\,{every_nth}))")
    if size is not None:
        filters.append(f"scale={size[0]}:{size[1]}:flags=area")
    args = [*input_args(video_path), "-map", "0:v:0"]
    if filters:
        args += ["-vf", ",".join(filters)]
    if max_frames is not None:
        args += ["-frames:v", str(int(max_frames))]
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=out_dir))
    try:
        _run_ffmpeg(args + ["-fps_mode", "vfr", "-pix_fmt", "rgb24", "-start_number", "0",
                            str(staging / FRAME_PATTERN)],
                    f"cannot extract frames from {video_path}", timeout=timeout)
        new_frames = sorted(p.name for p in staging.iterdir() if _FRAME_NAME.match(p.name))
        if not new_frames:
            raise VideoError(f"cannot extract frames from {video_path}: no frames decoded")
        for old in out_dir.iterdir():
            if _FRAME_NAME.match(old.name):
                old.unlink()
        for name in new_frames:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / name for name in new_frames]


def blend_consecutive(previous: np.ndarray, current: np.ndarray, blend: float) -> np.ndarray:
    """DD's linear video blend: ``current * (1 - blend) + previous * blend`` as uint8."""
    if not 0.0 <= blend < 1.0:
        raise VideoError(f"video blend must be in [0, 1), got {blend}")
    out = current.astype(np.float32) * (1.0 - blend) + previous.astype(np.float32) * blend
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _read_rgb(path: Path) -> np.ndarray:
    if not path.is_file():
        raise VideoError(f"frame not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise VideoError(f"cannot read frame image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _encoder_args(codec: str, crf: int) -> list[str]:
    even = "pad=ceil(iw/2)*2:ceil(ih/2)*2"
    if codec == "h264":
        return ["-vf", even, "-c:v", "libx264", "-preset", "medium", "-crf", str(crf),
                "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4"]
    if codec == "webm":
        return ["-vf", even, "-c:v", "libvpx-vp9", "-crf", str(crf), "-b:v", "0",
                "-row-mt", "1", "-cpu-used", "4", "-pix_fmt", "yuv420p", "-f", "webm"]
    return ["-filter_complex", "split[a][b];[a]palettegen[p];[b][p]paletteuse",
            "-loop", "0", "-f", "gif"]


def stitch(frames: list[str | os.PathLike], out_path: str | os.PathLike, fps: float = 12,
           crf: int = 17, codec: str = "h264", blend: float = 0.0,
           blend_pair: Callable[[np.ndarray, np.ndarray, int], np.ndarray] | None = None) -> Path:
    """Encode image files (all the same size) into a video; returns ``out_path``.

    ``codec``: "h264" (mp4, libx264, yuv420p), "webm" (VP9, yuv420p) or "gif" (palette).
    ``crf`` is the constant-quality value for h264 (0-51) and VP9 (0-63); GIF ignores it.
    ``blend`` in [0, 1) mixes each frame with the one before (frame 0 stays as is):
    linearly, or as ``blend_pair(previous, current, position)`` says (e.g. along a flow).
    A full disk is an ``OSError`` (ENOSPC), as any write's; other failures are VideoError.
    """
    if codec not in CONTAINERS:
        raise VideoError(f"unknown video codec {codec!r}; expected one of {sorted(CONTAINERS)}")
    out_path = Path(out_path)
    muxer, suffixes = CONTAINERS[codec]
    if out_path.suffix.lower() not in suffixes:
        raise VideoError(f"{codec} video needs a file name ending in {' or '.join(suffixes)}, "
                         f"got {out_path.name}")
    if not frames:
        raise VideoError(f"no frames to stitch into {out_path}")
    if not fps > 0:
        raise VideoError(f"fps must be > 0, got {fps}")
    if not isinstance(crf, (int, np.integer)) or not 0 <= crf <= 63:
        raise VideoError(f"crf must be an integer in 0..63, got {crf!r}")
    if not 0.0 <= blend < 1.0:
        raise VideoError(f"video blend must be in [0, 1), got {blend}")
    paths = [Path(p) for p in frames]
    first = _read_rgb(paths[0])
    height, width = first.shape[:2]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.stem}.",
                                    suffix=f".partial{out_path.suffix}", dir=out_path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{width}x{height}", "-framerate", str(fps), "-i", "pipe:0",
           *_encoder_args(codec, crf), str(tmp_path)]
    try:
        with tempfile.TemporaryFile() as stderr:
            process = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=stderr)
            try:
                previous = None
                for position, path in enumerate(paths):
                    frame = first if previous is None else _read_rgb(path)
                    if frame.shape != first.shape:
                        raise VideoError(f"frame {path} is {frame.shape[1]}x{frame.shape[0]}, "
                                         f"the first frame is {width}x{height}")
                    if previous is None or blend == 0:
                        out = frame
                    elif blend_pair is not None:
                        out = blend_pair(previous, frame, position)
                    else:
                        out = blend_consecutive(previous, frame, blend)
                    process.stdin.write(np.ascontiguousarray(out).tobytes())
                    previous = frame
                process.stdin.close()
            except BrokenPipeError:
                pass
            finally:
                if not process.stdin.closed:
                    try:
                        process.stdin.close()
                    except BrokenPipeError:
                        pass
                returncode = process.wait()
            if returncode != 0:
                stderr.seek(0)
                text = stderr.read().decode("utf-8", "replace")
                if "No space left on device" in text:  # the disk's failure, as a write's: OSError(ENOSPC)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_path))
                raise VideoError(f"cannot write video {out_path}: {_error_line(text)}")
        os.replace(tmp_path, out_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return out_path
