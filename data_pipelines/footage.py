"""Small real footage that exercises every data rule of the recipe, made in seconds.

`make_footage(folder)` writes real encoded media with sidecar `.txt` captions into two
sources (sub-folders), so `prepare` and training see what real data looks like: several
aspect ratios, durations, frame rates and codecs, stills, and files the official filters
must skip. Content: coloured shapes moving (bouncing) over a textured background; in
"natural" the background is a photograph the camera pans over, in "synthetic" smooth
coloured noise with a fine grid.

At scale 1 (width x height, fps, seconds, codec):

  natural/    pan_landscape       160x90   24 fps  2.2 s  h264 mp4
              pan_square           96x96   12 fps  1.1 s  vp9 webm
              pan_portrait         72x128  24 fps  1.1 s  h264 mp4
              pan_landscape_6fps  160x90    6 fps  2.2 s  h264 mp4   low fps
              photo_landscape.png 160x90, photo_portrait.jpg 72x128
  synthetic/  shapes_square        96x96   24 fps  2.2 s  vp9 webm
              shapes_portrait      72x128  12 fps  2.2 s  vp9 webm
              shapes_landscape    160x90   12 fps  1.1 s  h264 mp4
              shapes_tiny          40x24   24 fps  1.1 s  h264 mp4   too small
              shapes_still.png     96x96

With target fps F in (12, 24] (e.g. 16) the fps filter (fps < F/2) skips exactly
`pan_landscape_6fps`; with resolution R in [31, 96] * scale (e.g. 64) the area filter
(w*h < R^2) skips exactly `shapes_tiny`.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image

from data_pipelines import demo, video

_draw, _photo = demo._draw, demo._photo  # pylint: disable=protected-access

# (source, name, width, height, fps, seconds, extension); sizes at scale 1
CLIPS = (
    ("natural", "pan_landscape", 160, 90, 24, 2.2, ".mp4"),
    ("natural", "pan_square", 96, 96, 12, 1.1, ".webm"),
    ("natural", "pan_portrait", 72, 128, 24, 1.1, ".mp4"),
    ("natural", "pan_landscape_6fps", 160, 90, 6, 2.2, ".mp4"),
    ("synthetic", "shapes_square", 96, 96, 24, 2.2, ".webm"),
    ("synthetic", "shapes_portrait", 72, 128, 12, 2.2, ".webm"),
    ("synthetic", "shapes_landscape", 160, 90, 12, 1.1, ".mp4"),
    ("synthetic", "shapes_tiny", 40, 24, 24, 1.1, ".mp4"),
)
# (source, name, width, height, extension)
STILLS = (
    ("natural", "photo_landscape", 160, 90, ".png"),
    ("natural", "photo_portrait", 72, 128, ".jpg"),
    ("synthetic", "shapes_still", 96, 96, ".png"),
)
LOW_FPS = ("pan_landscape_6fps",)  # names the fps filter skips at a target of 16 fps
TOO_SMALL = ("shapes_tiny",)  # names the area filter skips at resolution 64 (scale 1)


def _texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth coloured noise plus a fine grid: detail for optical flow and the VAE."""
    low = rng.random((max(2, height // 16), max(2, width // 16), 3)).astype(np.float32)
    img = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[:height, :width]
    grid = ((xx // 6 + yy // 6) % 2)[..., None] * 0.15
    return np.clip((0.6 * img + grid + 0.1) * 255, 0, 255).astype(np.uint8)


def _canvas(source: str, height: int, width: int, rng: np.random.Generator):
    """(background, its description): a photo to pan over (natural) or a texture."""
    if source == "natural":
        name = str(rng.choice(list(demo.PHOTOS)))
        photo = _photo(name)
        ph, pw, _ = photo.shape
        scale = max(height / ph, width / pw)
        photo = cv2.resize(photo, (round(pw * scale) + 1, round(ph * scale) + 1),
                           interpolation=cv2.INTER_AREA)
        return photo[:height, :width], f"a photo of {demo.PHOTOS[name]}"
    return _texture(height, width, rng), "a textured background"


def render(source: str, width: int, height: int, frames: int, fps: float,
           rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """RGB uint8 [frames, height, width, 3] and its caption: two shapes bouncing around,
    over a background the camera pans across (natural) or a still texture (synthetic)."""
    margin = max(width, height) // 4
    canvas, desc = _canvas(source, height + 2 * margin, width + 2 * margin, rng)
    direction = str(rng.choice(list(demo.DIRECTIONS)))
    pan = demo.DIRECTIONS[direction] if source == "natural" else (0, 0)
    r = min(width, height) / 8
    shapes = []
    for shape, cname in zip(rng.choice(demo.SHAPES, 2), rng.choice(list(demo.COLORS), 2,
                                                                   replace=False)):
        pos = rng.uniform([r, r], [width - r, height - r])
        vel = rng.normal(size=2)
        vel *= min(width, height) / 2 / np.linalg.norm(vel)  # half the short side per second
        shapes.append((str(shape), str(cname), pos, vel))
    out = np.empty((frames, height, width, 3), np.uint8)
    for i in range(frames):
        t = i / fps
        # The view slides `margin` px per second in the pan direction.
        ox = int(np.clip(margin + pan[0] * margin * (t - 0.5), 0, 2 * margin))
        oy = int(np.clip(margin + pan[1] * margin * (t - 0.5), 0, 2 * margin))
        out[i] = canvas[oy : oy + height, ox : ox + width]
        for shape, cname, pos, vel in shapes:
            # Bounce: reflect the straight path into [r, size - r] on each axis.
            p = []
            for x, v, size in ((pos[0], vel[0], width), (pos[1], vel[1], height)):
                span = size - 2 * r
                u = (x - r + v * t) % (2 * span)
                p.append(r + (u if u <= span else 2 * span - u))
            _draw(out[i], shape, demo.COLORS[cname], p[0], p[1], r)
    (s1, c1, _, _), (s2, c2, _, _) = shapes
    caption = f"a {c1} {s1} and a {c2} {s2} {'moving over' if frames > 1 else 'on'} {desc}"
    if source == "natural" and frames > 1:
        caption += f", the camera pans {direction}"
    return out, caption


def _even(x: float) -> int:
    return max(2, 2 * round(x / 2))  # 4:2:0 video needs even sides


def make_footage(folder: str, seed: int = 0, scale: float = 1.0) -> list[str]:
    """Writes the footage listed in the module docstring; returns the media paths.

    Args:
      folder: output root; media go to folder/natural and folder/synthetic, each file
        with a `<name>.txt` caption next to it (what `scan`/`prepare` read).
      seed: picks photos, shapes, colours, motion (same seed: same pixels).
      scale: multiplies every width and height (rounded to even), e.g. 4 for 640x360
        landscape clips; the area-filter window for the resolution scales with it.
    """
    rng = np.random.default_rng(seed)
    paths = []

    def save(source: str, name: str, ext: str, caption: str) -> str:
        path = os.path.join(folder, source, name + ext)
        with open(os.path.join(folder, source, name + ".txt"), "w") as f:
            f.write(caption + "\n")
        paths.append(path)
        return path

    for source in ("natural", "synthetic"):
        os.makedirs(os.path.join(folder, source), exist_ok=True)
    for source, name, w, h, fps, seconds, ext in CLIPS:
        frames, caption = render(source, _even(w * scale), _even(h * scale),
                                 round(seconds * fps), fps, rng)
        video.write_video(save(source, name, ext, caption), frames, fps)
    for source, name, w, h, ext in STILLS:
        img, caption = render(source, _even(w * scale), _even(h * scale), 1, 1.0, rng)
        Image.fromarray(img[0]).save(save(source, name, ext, caption), quality=90)
    return sorted(paths)
