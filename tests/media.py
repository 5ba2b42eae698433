"""Small video files for tests, made with the bundled ffmpeg."""

import subprocess
from pathlib import Path

from animation.video import ffmpeg_exe


def png_mov(path: Path, frames: int = 3) -> Path:
    """A 64x48 test-pattern MOV whose frames are PNG images."""
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"testsrc=size=64x48:rate=12:duration={frames / 12}", "-c:v", "png",
                    str(path)], check=True)
    return path


def ts_segment(path: Path) -> Path:
    """A real 64x48 MPEG-TS video (what an HLS playlist's segments are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=64x48:rate=12:duration=0.5", "-c:v", "mpeg2video", "-f", "mpegts",
                    str(path)], check=True)
    return path


def zero_mdat(path: Path) -> Path:
    """Zero the payload of the file's mdat box: the index still finds every packet, but they
    hold no PNG (a video that probes but does not decode)."""
    data = bytearray(path.read_bytes())
    at = 0
    while at + 8 <= len(data):
        size = int.from_bytes(data[at:at + 4], "big")
        if data[at + 4:at + 8] == b"mdat":
            data[at + 8:at + size] = bytes(size - 8)
            path.write_bytes(bytes(data))
            return path
        at += size
    raise AssertionError("no mdat box")
