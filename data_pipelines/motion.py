"""Motion score: mean absolute optical flow between frames sampled every 0.5 s.

Recipe (REFERENCE.md §3): up to 9 frames 0.5 s apart, at 320x576 (portrait: 576x320),
flow between consecutive frames, mean of |flow| over both components and all pixels,
averaged over pairs. The paper uses UniMatch; we use OpenCV's Farneback. Farneback
cannot follow the large displacements that upsampling a small video would create, so
frames smaller than 320x576 are kept at their size and the flow is rescaled: the score is
always in pixels at a 576-px long side.
"""

from __future__ import annotations

import cv2
import numpy as np

from data_pipelines import video

SIZE = (320, 576)  # (short side, long side) the frames are resized to before the flow


def flow_magnitude(frames: np.ndarray) -> float:
    """frames: RGB uint8 [N, H, W, 3], N >= 2 -> mean |flow| in pixels at SIZE."""
    n, h, w, _ = frames.shape
    if n < 2:
        return 0.0
    th, tw = (SIZE[0], SIZE[1]) if w >= h else (SIZE[1], SIZE[0])
    if min(h, w) > SIZE[0]:  # downscale big frames to the recipe size; never upscale
        h, w = th, tw
    grey = [
        cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (w, h), interpolation=cv2.INTER_AREA)
        for f in frames
    ]
    mags = []
    for a, b in zip(grey[:-1], grey[1:]):
        flow = cv2.calcOpticalFlowFarneback(
            a,
            b,
            None,
            pyr_scale=0.5,
            levels=3,
            winsize=15,
            iterations=3,
            poly_n=5,
            poly_sigma=1.2,
            flags=0,
        )
        mags.append(float(np.abs(flow).mean()))
    return float(np.mean(mags)) * SIZE[1] / max(h, w)


def motion_score(path: str, duration: float, interval: float = 0.5, max_frames: int = 9) -> float:
    """Motion score of a video file (0.0 when it is shorter than one interval)."""
    n = min(max_frames, video.available_frames(duration, 1 / interval))
    if n < 2:
        return 0.0
    return flow_magnitude(video.read_frames(path, fps=1 / interval, num_frames=n))
