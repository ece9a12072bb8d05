"""Decoding with PyAV: probe a file, sample frames at a target FPS by timestamp.

Frame i of a clip starting at `start` seconds is the decoded frame whose timestamp is
nearest to `start + i / fps` (clamped to the first/last frame). We seek to the keyframe
before `start` and stop decoding once the last target is passed, so a 4 s clip of a long
file never decodes the whole file. Display rotation (the container's display matrix) is
applied, so a phone video recorded in portrait comes out portrait.
"""

from __future__ import annotations

import math
import os
import stat

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from PIL import Image, ImageOps

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".m4v")


class DecodeError(Exception):
    """The file cannot be read (missing, empty, corrupt, truncated, no video stream)."""


def media_type(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    return None


def _rotate(img: np.ndarray, rotation: int) -> np.ndarray:
    # PyAV reports the display rotation counter-clockwise in degrees; np.rot90 is CCW too.
    k = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(img, k)) if k else img


def rgb_converter():
    """`frame -> RGB uint8 [H, W, 3]`, display rotation applied; make one per stream.
    `frame.to_ndarray(format="rgb24")` sets up a new swscale context for every frame
    (~0.25 ms: half the decode time of a small clip); one reformatter keeps its context."""
    reformatter = VideoReformatter()
    return lambda frame: _rotate(reformatter.reformat(frame, format="rgb24").to_ndarray(),
                                 int(frame.rotation or 0))


def check_file(path: str) -> int:
    """The size of `path`; DecodeError unless it is a regular file: opening a FIFO (or a
    device) named like media would block or never end."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise DecodeError(f"missing file or broken link: {path} ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError(f"not a regular file (FIFO, device, socket or folder): {path}")
    return st.st_size


def _open(path: str):
    if check_file(path) == 0:
        raise DecodeError(f"zero-length file: {path}")
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DecodeError(f"cannot open {path}: {e}") from e
    if not container.streams.video:
        container.close()
        raise DecodeError(f"no video stream in {path}")
    return container


def probe(path: str) -> dict:
    """Returns {media, width, height, duration, fps, rotation} (display width/height).

    Decodes the first frame (rotation lives on frames in PyAV, and this proves the
    file decodes). Videos without a known duration (some GIFs) are decoded fully.
    """
    if media_type(path) == "image":
        img = read_image(path)
        return {
            "media": "image",
            "width": img.shape[1],
            "height": img.shape[0],
            "duration": 0.0,
            "fps": 0.0,
            "rotation": 0,
        }
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        first, count, last_t = None, 0, 0.0
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        for frame in container.decode(stream):
            if first is None:
                first = frame
                if duration:
                    break
            count += 1
            last_t = frame.time or 0.0
        if first is None:
            raise DecodeError(f"no decodable frame in {path}")
        if not duration:  # unknown duration: last timestamp + one frame period
            t0 = first.time or 0.0
            duration = last_t - t0 + (1.0 / fps if fps else 0.1)
            fps = fps or count / max(duration, 1e-6)
        w, h, rot = first.width, first.height, int(first.rotation or 0)
        if round(rot / 90) % 2:
            w, h = h, w
        return {
            "media": "video",
            "width": w,
            "height": h,
            "duration": float(duration),
            "fps": fps,
            "rotation": rot,
        }
    except av.FFmpegError as e:
        raise DecodeError(f"cannot decode {path}: {e}") from e
    finally:
        container.close()


def read_image(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] with EXIF orientation applied."""
    check_file(path)
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DecodeError(f"cannot read image {path}: {e}") from e


def available_frames(duration: float, fps: float) -> int:
    """How many frames at `fps` fit in `duration` seconds (targets t = i/fps < duration)."""
    return max(0, math.floor(duration * fps + 1e-6))


def read_frames(path: str, fps: float, num_frames: int, start: float = 0.0) -> np.ndarray:
    """RGB uint8 [num_frames, H, W, 3]: frames nearest to start + i/fps (seconds).

    `start` is relative to the first frame. Raises DecodeError on unreadable input.
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        t0 = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        targets = t0 + start + np.arange(num_frames) / fps
        if start > 0:  # jump to the keyframe at or before the first target
            try:
                container.seek(int(targets[0] / stream.time_base), stream=stream, backward=True)
            except av.FFmpegError:
                container.seek(0)
        out: list[np.ndarray | None] = [None] * num_frames
        j, prev, prev_t, prev_img = 0, None, None, None
        image = rgb_converter()

        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else (prev_t or t0)
            if prev is None:  # targets before the first frame clamp to it
                prev_img = None
                while j < num_frames and targets[j] <= t:
                    prev_img = prev_img if prev_img is not None else image(frame)
                    out[j] = prev_img
                    j += 1
            else:  # targets closer to the previous frame than to this one take the previous
                while j < num_frames and targets[j] <= (prev_t + t) / 2:
                    prev_img = prev_img if prev_img is not None else image(prev)
                    out[j] = prev_img
                    j += 1
                prev_img = None
            if j == num_frames:
                break
            prev, prev_t = frame, t
        if prev is None and j == 0:
            raise DecodeError(f"no decodable frame in {path}")
        # The frames ran out well before the last target: the file is cut short.
        rate = stream.average_rate or stream.guessed_rate
        tolerance = max(0.25, 2.0 / float(rate) if rate else 0.5) + 1.0 / fps
        if j < num_frames and targets[-1] - prev_t > tolerance:
            raise DecodeError(f"truncated: {path} ends at {prev_t - t0:.2f}s")
        if j < num_frames:  # targets past the end clamp to the last frame
            last = image(prev) if prev is not None else out[j - 1]
            for k in range(j, num_frames):
                out[k] = last
        return np.stack(out)
    except av.FFmpegError as e:
        raise DecodeError(f"cannot decode {path}: {e}") from e
    finally:
        container.close()


_CODECS = {
    ".mp4": ("libx264", "yuv420p"),
    ".mkv": ("libx264", "yuv420p"),
    ".webm": ("libvpx-vp9", "yuv420p"),
    ".gif": ("gif", "rgb8"),
}


def write_video(
    path: str,
    frames: np.ndarray,
    fps: float,
    times: list[float] | None = None,
    rotation: int = 0,
    crf: int = 18,
    pix_fmt: str | None = None,
) -> None:
    """Encodes RGB uint8 [N, H, W, 3] to a real video file (codec from the extension).

    `times` (seconds) gives each frame its own timestamp (variable frame rate);
    `rotation` stores a display rotation (CCW degrees) in the container.
    """
    from fractions import Fraction  # pylint: disable=import-outside-toplevel

    codec, default_fmt = _CODECS[os.path.splitext(path)[1].lower()]
    pix_fmt = pix_fmt or default_fmt
    with av.open(path, "w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if codec != "gif":
            stream.options = (
                {"crf": str(crf)} if codec == "libx264" else {"crf": str(crf), "b": "0"}
            )
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(times[i] * 1000), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
