"""Real encoded test videos for the data pipeline tests (imported explicitly).

Frame i of every clip is flat grey at level STEP * i, so the index of any decoded frame
can be read back from its centre pixel (robust to lossy codecs); a white block marks
the coded top-left corner so rotations can be checked.
"""

from __future__ import annotations

import os

import av
import numpy as np

from data_pipelines import video

STEP = 5


def frames(n: int, height: int, width: int) -> np.ndarray:
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        out[i] = STEP * i
        out[i, :8, :8] = 255
    return out


def decoded_frames(path) -> np.ndarray:
    """Every frame of a video file, RGB uint8 [F, H, W, 3], decoded by PyAV. (Not
    imageio's PyAV plugin: its close() runs a full gc.collect(), ~0.5 s in a test worker
    that holds JAX.)"""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def frame_index(img: np.ndarray) -> int:
    h, w, _ = img.shape
    return int(round(float(img[h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2].mean()) / STEP))


def make_video(path: str, n: int, fps: float, height: int = 48, width: int = 64, **kwargs) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    video.write_video(path, frames(n, height, width), fps, **kwargs)
    return path


def make_bad_files(folder: str) -> dict[str, str]:
    """A corrupt file, a zero-length file and a 0.2 s clip, by kind."""
    os.makedirs(folder, exist_ok=True)
    corrupt = os.path.join(folder, "corrupt.mp4")
    with open(corrupt, "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))
    empty = os.path.join(folder, "empty.webm")
    open(empty, "wb").close()
    short = make_video(os.path.join(folder, "short.mp4"), 5, 25)  # 0.2 s
    return {"corrupt": corrupt, "empty": empty, "short": short}


def truncate(path: str, keep: float = 0.5) -> str:
    """Cuts a (streamable, e.g. webm) file: it opens and probes, then ends early."""
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])
    return path
