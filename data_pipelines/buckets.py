"""Resolution and frame-count buckets; resize + centre crop into a bucket.

A resolution bucket is (height, width) with both sides divisible by `multiple`
(latent downsampling x patch size: 8 x 2 x 2 = 32 px in the recipe) and an area close
to resolution**2, for aspect ratios up to `max_aspect`:1 either way. A clip goes to the
bucket with the closest aspect ratio (in log space). Frame buckets are the allowed
clip lengths; a clip takes the longest one that fits its duration at the task fps.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

ASPECTS = (1.0, 4 / 3, 3 / 2, 16 / 9, 2.0, 3.0, 4.0)  # width / height, plus inverses


def resolution_buckets(
    resolution: int, multiple: int = 32, max_aspect: float = 4.0
) -> list[tuple[int, int]]:
    """(height, width) buckets of area ~resolution**2, sides divisible by `multiple`."""
    area = resolution * resolution
    out = set()
    for a in ASPECTS:
        if a > max_aspect + 1e-9:
            continue
        for r in {a, 1 / a}:
            h = max(multiple, round(math.sqrt(area / r) / multiple) * multiple)
            w = max(multiple, round(h * r / multiple) * multiple)
            out.add((h, w))
    return sorted(out, key=lambda hw: hw[1] / hw[0])


def closest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    target = math.log(width / height)
    return min(buckets, key=lambda hw: abs(math.log(hw[1] / hw[0]) - target))


def default_frame_buckets(max_frames: int) -> tuple[int, ...]:
    """max_frames, max/2, max/4 (>= 2): short clips still train, in their own bucket."""
    return tuple(sorted({f for f in (max_frames, max_frames // 2, max_frames // 4) if f >= 2}))


def frame_bucket(available: int, frame_buckets: tuple[int, ...]) -> int | None:
    """Longest allowed frame count <= available frames, or None (clip too short)."""
    fits = [f for f in frame_buckets if f <= available]
    return max(fits) if fits else None


def resize_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """[F, h, w, 3] uint8 -> [F, height, width, 3]: scale to cover, then centre crop."""
    f, h, w, _ = frames.shape
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    y0, x0 = (nh - height) // 2, (nw - width) // 2
    out = np.empty((f, height, width, 3), np.uint8)
    for i in range(f):
        out[i] = cv2.resize(frames[i], (nw, nh), interpolation=interp)[
            y0 : y0 + height, x0 : x0 + width
        ]
    return out


def bucket_key(media: str, frames: int, height: int, width: int) -> str:
    return f"{media}_{frames}x{height}x{width}"


def parse_bucket_key(key: str) -> tuple[str, int, int, int]:
    media, dims = key.split("_")
    f, h, w = (int(x) for x in dims.split("x"))
    return media, f, h, w
