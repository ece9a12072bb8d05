"""Resolution buckets, admission filters and training windows (official rules, REFERENCE §7).

Resolution buckets are the official `generate_crop_size_list`: every size on the
staircase of (w, h) in `multiple`-px units with w*h <= (resolution // multiple)**2 and
aspect <= max_aspect. An item goes to the bucket closest to its aspect ratio, as the
official var_center_crop does. Items smaller than resolution**2 in area, and videos below
half the target fps, are skipped (never upscaled or stretched in time).

Frames: a clip is trained on a window of latent frames; its length is the clip's frame
bucket (any length: no coarse {max, max/2, max/4} buckets).
"""

from __future__ import annotations

import cv2
import numpy as np


def resolution_buckets(
    resolution: int, multiple: int = 32, max_aspect: float = 4.0
) -> list[tuple[int, int]]:
    """(height, width) candidates of the official generate_crop_size_list, in its order."""
    num_patches = (resolution // multiple) ** 2
    out = []
    wp, hp = num_patches, 1
    while wp > 0:
        if max(wp, hp) / min(wp, hp) <= max_aspect:
            out.append((hp * multiple, wp * multiple))
        if (hp + 1) * wp <= num_patches:
            hp += 1
        else:
            wp -= 1
    return out


def closest_bucket(height: int, width: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose resize ratios are most alike: max min(rw, rh) / max(rw, rh).

    Ties go to the larger (width, height), as the official sort does.
    """

    def rank(hw):
        rh, rw = hw[0] / height, hw[1] / width
        return min(rh, rw) / max(rh, rw), hw[1], hw[0]

    return max(buckets, key=rank)


def skip_reason(rec: dict, resolution: int, fps: float) -> tuple[str, str] | None:
    """(reason, detail) if a probed item must not be used, else None."""
    if rec["width"] * rec["height"] < resolution * resolution:
        return "too_small", f"{rec['width']}x{rec['height']} is below {resolution}^2 px"
    if rec["media"] == "video" and rec["fps"] < fps / 2:
        return "low_fps", f"{rec['fps']:g} fps is below half the target {fps:g} fps"
    return None


def usable_latents(stored: int, temporal: int) -> int:
    """Latent frames a training window can use: latent 0 (the special single-frame
    latent of a temporally compressed video) is dropped."""
    return stored - 1 if temporal > 1 else stored


def window_length(
    usable: int, max_frames: int, temporal: int, multiple: int = 1, frame_buckets=()
) -> int:
    """Latent frames per training window (0: the clip is too short).

    At most max_frames // temporal, truncated to a multiple of `multiple` (the model's
    temporal patch size); with `frame_buckets`, the largest one that fits instead.
    """
    f = min(usable, max_frames // temporal)
    f -= f % multiple
    if frame_buckets:
        f = max((b for b in frame_buckets if b <= f), default=0)
    return f


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
    """'media_FxHxW': F latent frames per window (the batch's F), H x W pixels."""
    return f"{media}_{frames}x{height}x{width}"


def parse_bucket_key(key: str) -> tuple[str, int, int, int]:
    media, dims = key.split("_")
    f, h, w = (int(x) for x in dims.split("x"))
    return media, f, h, w
