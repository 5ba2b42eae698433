"""Video files with the ffmpeg bundled by imageio-ffmpeg: probe, extract frames, stitch.

Every ffmpeg failure becomes one ``VideoError`` line naming the file and ffmpeg's reason.
``stitch`` writes atomically (a temporary name in the same folder, then ``os.replace``),
includes frame 0 (DD's video dropped it) and can blend consecutive frames like DD's
"linear" video blend: ``out[i] = frame[i] * (1 - blend) + frame[i - 1] * blend``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np

FRAME_PATTERN = "%06d.png"
_FRAME_NAME = re.compile(r"^\d{6}\.png$")

# codec -> (ffmpeg muxer, allowed suffixes)
CONTAINERS = {"h264": ("mp4", (".mp4", ".mov", ".m4v")),
              "webm": ("webm", (".webm",)),
              "gif": ("gif", (".gif",))}


class VideoError(ValueError):
    """A video file is missing, unreadable, or ffmpeg failed on it."""


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


def _error_line(stderr: str) -> str:
    """ffmpeg's last meaningful stderr line, without its ``[component @ 0x..]`` prefix
    (a map of the video stream that matches nothing says so: the file has no video)."""
    if re.search(r"Stream map '[^']*' matches no streams", stderr) and "Video:" not in stderr:
        return "no video stream (an audio-only file?)"
    for line in reversed(stderr.strip().splitlines()):
        line = re.sub(r"^\[[^\]]*\]\s*", "", line.strip())
        if line and not line.startswith(("frame=", "size=", "video:")):
            return line.removeprefix("Error opening input files: ")
    return "unknown ffmpeg error"


def _run_ffmpeg(args: list[str], what: str,
                stdout=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", *args]
    result = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise VideoError(f"{what}: {_error_line(result.stderr)}")
    return result


def _existing_video(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video file not found: {path}")
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


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read a video's frame count (packets counted, no decoding), rate, size and codec."""
    path = _existing_video(path)
    result = _run_ffmpeg(["-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "null",
                          "-progress", "pipe:1", "-nostats", "-"],
                         f"cannot read video {path}", stdout=subprocess.PIPE)
    codec, pix_fmt, width, height, fps, duration = parse_stream_header(result.stderr, path)
    counts = re.findall(r"^frame=(\d+)", result.stdout, flags=re.MULTILINE)
    frames = int(counts[-1]) if counts else 0
    if frames == 0:
        raise VideoError(f"cannot read video {path}: it has no frames")
    return VideoInfo(frames, fps, width, height, codec, pix_fmt, duration)


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
                   max_frames: int | None = None) -> list[Path]:
    """Write every ``every_nth`` frame (0, n, 2n, ...) as RGB PNG ``000000.png``, ... .

    ``size`` = (width, height) resizes (area filter); ``max_frames`` stops ffmpeg after
    that many PNGs (the rest of the video is not decoded). Older numbered frames in
    ``out_dir`` are replaced only after ffmpeg succeeded. Returns the PNG paths in order.
    """
    video_path = _existing_video(video_path)
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
    args = ["-i", str(video_path), "-map", "0:v:0"]
    if filters:
        args += ["-vf", ",".join(filters)]
    if max_frames is not None:
        args += ["-frames:v", str(int(max_frames))]
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=out_dir))
    try:
        _run_ffmpeg(args + ["-fps_mode", "vfr", "-pix_fmt", "rgb24", "-start_number", "0",
                            str(staging / FRAME_PATTERN)],
                    f"cannot extract frames from {video_path}")
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
           crf: int = 17, codec: str = "h264", blend: float = 0.0) -> Path:
    """Encode image files (all the same size) into a video; returns ``out_path``.

    ``codec``: "h264" (mp4, libx264, yuv420p), "webm" (VP9, yuv420p) or "gif" (palette).
    ``crf`` is the constant-quality value for h264 (0-51) and VP9 (0-63); GIF ignores it.
    ``blend`` in [0, 1) mixes each frame with the one before (frame 0 stays as is).
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
                for path in paths:
                    frame = first if previous is None else _read_rgb(path)
                    if frame.shape != first.shape:
                        raise VideoError(f"frame {path} is {frame.shape[1]}x{frame.shape[0]}, "
                                         f"the first frame is {width}x{height}")
                    out = frame if previous is None or blend == 0 else \
                        blend_consecutive(previous, frame, blend)
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
                reason = _error_line(stderr.read().decode("utf-8", "replace"))
                raise VideoError(f"cannot write video {out_path}: {reason}")
        os.replace(tmp_path, out_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    return out_path
