"""Embedded demo dataset, generated locally in seconds (no network, nothing committed).

Two sources, each with videos and still images, written as real encoded files plus a
manifest, then prepared by the same code path as user data:
  natural    camera pans (4 directions x 2 speeds), zooms in/out and static shots over
             the photographs scikit-image ships (mp4 / h264), so motion scores span a
             range; stills of the same photographs (png).
  synthetic  coloured shapes moving in 4 directions on a dark background (webm / vp9),
             "slowly", "quickly" or with no speed word ("a red square moving left": any
             speed, told by the motion score alone); still shapes (png).
             Each combination comes in `variants` clips at nearby random positions
             (POSITION_JITTER), UNWORDED_COPIES times that with no speed word; `heldout`
             has one more per combination for validation, the judge and FVD.

The design is chosen to be learnable and judged from pixels at 16 px: a shape is ~6/16
of the frame wide (square, circle and triangle stay distinct after downsampling), and
"quickly" crosses 65-100% of the free room over the clip ("slowly" 25-45%), so the
motion is several pixels even at 16 px and 8 frames.
"""

from __future__ import annotations

import itertools
import os

import cv2
import numpy as np
from PIL import Image

from data_pipelines import encoders, manifest, offline, video

PHOTOS = {
    "astronaut": "an astronaut",
    "coffee": "a cup of coffee",
    "chelsea": "a cat",
    "rocket": "a rocket on a launch pad",
}
COLORS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
}
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS = {"slowly": 1.5, "quickly": 3.0}  # natural pans: pixels per frame at 64 px
# Shapes: fraction of the free room (frame minus shape) crossed over the clip, drawn per
# clip from its speed word's range, so the motion score tells the speed within a word.
# Captions with no speed word ("a red square moving left") draw from the whole range: for
# them only the motion score says how fast (the judge's motion-control prompts).
SHAPE_TRAVEL = {"slowly": (0.25, 0.45), "quickly": (0.65, 1.0), "": (0.25, 1.0)}
# Captions with no speed word get this many times `variants` clips. With 2 clips each, a
# caption's score named one of its clips rather than a speed: held-out flow loss was
# higher given the true score than with it dropped (0.0492 vs 0.0486). With 8 or 16 the
# score generalises (0.0722 vs 0.0725 at 8 clips, 0.0726 vs 0.0730 at 16), and from 8 to
# 16 the judge's motion control (cfg 3, three noise seeds) went 0.77 / 0.74 / 0.67 to
# 0.83 / 0.80 / 0.71.
UNWORDED_COPIES = 8
SHAPE_RADIUS = 3 / 16  # half-size as a fraction of the frame side
# Random placement uses this share of the room the motion leaves (~1 px at 16 px): each
# prompt then has nearly one clip, so a few minutes of training learns the words instead
# of spending its steps on where to put the shape (full-room placement, 600 steps: colour
# 81%, shape 31%, direction 21%; at 0.2: 98%, 48%, 19%).
POSITION_JITTER = 0.2
BACKGROUND = 24
# Per-source system prompts. The synthetic captions get none: a shared prefix dominates
# MiniLM's pooled caption feature (mean cosine between two demo prompts 0.90 with it,
# 0.67 without), and that pooled feature is what conditions every block (adaLN).
DEMO_PROMPTS = {
    "natural": "Generate a video of a real scene with the described camera motion. ",
    "synthetic": "",
}


def _draw(img: np.ndarray, shape: str, color, cx: float, cy: float, r: float) -> None:
    c, s = (round(cx), round(cy)), round(r)
    if shape == "square":
        cv2.rectangle(img, (c[0] - s, c[1] - s), (c[0] + s, c[1] + s), color, -1)
    elif shape == "circle":
        cv2.circle(img, c, s, color, -1, lineType=cv2.LINE_AA)
    else:
        pts = np.array([[c[0], c[1] - s], [c[0] - s, c[1] + s], [c[0] + s, c[1] + s]], np.int32)
        cv2.fillPoly(img, [pts], color, lineType=cv2.LINE_AA)


def shape_clip(
    shape: str,
    color,
    direction: str,
    speed: float,
    size: int = 64,
    frames: int = 16,
    radius: float = 1 / 8,
    offset: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """`frames` frames of a shape (half-size `radius` x size) moving `speed` px per frame
    (at 64 px) in `direction`; the path is centred, then moved by `offset` (fractions of
    the frame side)."""
    dx, dy = DIRECTIONS[direction]
    r = size * radius
    travel = speed * (frames - 1) * size / 64
    # Start so the shape stays in view for the whole clip, centred on the other axis.
    cx = size / 2 - dx * travel / 2 + offset[0] * size
    cy = size / 2 - dy * travel / 2 + offset[1] * size
    out = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        out[i] = BACKGROUND
        step = speed * i * size / 64
        _draw(out[i], shape, color, cx + dx * step, cy + dy * step, r)
    return out


def demo_shape_clip(shape: str, color, direction: str | None, speed: str, size: int,
                    frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """A synthetic demo clip: a SHAPE_RADIUS shape moving `direction` (None: still) over a
    SHAPE_TRAVEL[speed] share of the room. `rng` draws the travel from that range and
    jitters the position within POSITION_JITTER of the room the motion leaves (None: the
    range's middle, centred)."""
    room = 1 - 2 * SHAPE_RADIUS - 2 / size  # free fraction of the frame (1 px margins)
    low, high = SHAPE_TRAVEL[speed]
    share = (low + high) / 2 if rng is None else rng.uniform(low, high)
    travel = share * room if direction else 0.0
    speed_px = travel * 64 / max(frames - 1, 1)
    dx, dy = DIRECTIONS[direction or "left"]
    slack = np.array([room - travel * abs(dx), room - travel * abs(dy)]) / 2
    offset = (0.0, 0.0) if rng is None else tuple(POSITION_JITTER * rng.uniform(-slack, slack))
    return shape_clip(shape, color, direction or "left", speed_px, size, frames,
                      SHAPE_RADIUS, offset)


def _photo(name: str) -> np.ndarray:
    import skimage.data  # pylint: disable=import-outside-toplevel

    img = getattr(skimage.data, name)()
    return img if img.ndim == 3 else np.repeat(img[..., None], 3, -1)


def camera_clip(
    photo: np.ndarray, motion: str, speed: float, size: int = 64, frames: int = 16
) -> np.ndarray:
    """Crops a moving/zooming window out of a photo. 'pan left' = content moves right."""
    h, w, _ = photo.shape
    win = min(h, w) // 2
    scale = win / size
    out = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        t = i - (frames - 1) / 2
        cx, cy, side = w / 2, h / 2, win
        if motion in DIRECTIONS:
            dx, dy = DIRECTIONS[motion]
            cx, cy = cx + dx * speed * scale * t, cy + dy * speed * scale * t
        elif motion == "zooms in":
            side = win * (1 - 0.025 * speed * (i - 0))
        elif motion == "zooms out":
            side = win * (1 - 0.025 * speed * (frames - 1 - i))
        x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
        x0, y0 = min(max(x0, 0), w - int(side)), min(max(y0, 0), h - int(side))
        crop = photo[y0 : y0 + int(side), x0 : x0 + int(side)]
        out[i] = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    return out


def generate(folder: str, size: int = 64, frames: int = 16, fps: float = 8.0,
             variants: int = 2, heldout: bool = False) -> str:
    """Writes the demo media and `manifest.jsonl` under `folder`; returns the manifest path.

    `heldout`: only the synthetic videos, one new random position per combination (a
    different seed from the training clips).
    """
    recs = []
    rng = np.random.default_rng(1 if heldout else 0)

    def add(
        source: str,
        name: str,
        caption: str,
        clip: np.ndarray | None = None,
        still: np.ndarray | None = None,
        ext: str = ".mp4",
    ):
        os.makedirs(os.path.join(folder, source), exist_ok=True)
        path = os.path.join(folder, source, name + (ext if clip is not None else ".png"))
        if clip is not None:
            video.write_video(path, clip, fps)
        else:
            Image.fromarray(still).save(path)
        recs.append({"path": path, "caption": caption, "source": source})

    for name, desc in ({} if heldout else PHOTOS).items():
        photo = _photo(name)
        for (d, _), (sp, v) in itertools.product(DIRECTIONS.items(), SPEEDS.items()):
            add(
                "natural",
                f"{name}_pan_{d}_{sp}",
                f"a photo of {desc}, the camera pans {d} {sp}",
                camera_clip(photo, d, v, size, frames),
            )
        for zoom in ("zooms in", "zooms out"):
            add(
                "natural",
                f"{name}_{zoom.replace(' ', '_')}",
                f"a photo of {desc}, the camera {zoom}",
                camera_clip(photo, zoom, 1.5, size, frames),
            )
        add(
            "natural",
            f"{name}_static",
            f"a photo of {desc}, the camera is still",
            camera_clip(photo, "static", 0.0, size, frames),
        )
        add(
            "natural",
            f"{name}_still",
            f"a photo of {desc}",
            still=cv2.resize(
                camera_clip(photo, "static", 0.0, 2 * size, 1)[0],
                (size, size),
                interpolation=cv2.INTER_AREA,
            ),
        )
    for shape, (cname, color) in itertools.product(SHAPES, COLORS.items()):
        for d, sp in itertools.product(DIRECTIONS, SHAPE_TRAVEL):
            copies = 1 if heldout else variants * (UNWORDED_COPIES if sp == "" else 1)
            for i in range(copies):
                add(
                    "synthetic",
                    f"{cname}_{shape}_{d}_{sp or 'any'}_{i}",
                    f"a {cname} {shape} moving {d} {sp}".strip(),
                    demo_shape_clip(shape, color, d, sp, size, frames, rng),
                    ext=".webm",
                )
        if not heldout:
            add(
                "synthetic",
                f"{cname}_{shape}_still",
                f"a {cname} {shape}",
                still=demo_shape_clip(shape, color, None, "slowly", size, 1)[0],
            )
    path = os.path.join(folder, "manifest.jsonl")
    # Probe now so the manifest is complete (and every generated file is proven readable).
    skipped: dict[str, str] = {}
    probed = [manifest.probe_record(r, skipped) for r in recs]
    if skipped:
        raise RuntimeError(f"demo files failed to decode: {skipped}")
    manifest.write_manifest(path, probed)
    return path


def prepare_demo(
    folder: str,
    resolution: int = 32,
    fps: float = 8.0,
    frames: int = 16,
    caption_encoder: str = "minilm",
    variants: int = 2,
) -> dict:
    """Generates the demo under folder/raw (+ folder/raw_heldout) and prepares it into
    folder/prepared (+ folder/heldout, the synthetic held-out clips).

    Clips are 2*resolution px (the area filter keeps them) and `frames` frames at `fps`,
    stored whole; `variants` clips per caption (see `generate`). Train with
    `demo_task(folder)`. For on-the-fly decoding instead, use
    sources with path folder/prepared/manifest.jsonl (the raw files, with motion scores).
    Returns the training set's prepare summary, with the held-out one under "heldout".
    """
    summaries = {}
    for raw, out, heldout in (("raw", "prepared", False), ("raw_heldout", "heldout", True)):
        manifest_path = generate(os.path.join(folder, raw), size=2 * resolution,
                                 frames=frames, fps=fps, variants=variants, heldout=heldout)
        summaries[out] = offline.prepare(
            manifest_path,
            os.path.join(folder, out),
            resolution=resolution,
            fps=fps,
            max_duration=max(4.0, frames / fps),
            multiple=16,
            caption_encoder=caption_encoder,
            system_prompts=DEMO_PROMPTS,
            system_prompt=encoders.DEFAULT_SYSTEM_PROMPT,
        )
    return {**summaries["prepared"], "heldout": summaries["heldout"]}


def demo_task(
    folder: str,
    media: str = "video",
    batch_size: int = 8,
    resolution: int = 32,
    frames: int = 16,
    **kwargs,
) -> "pipeline.Task":  # noqa: F821 (imported inside)
    """The Task that trains on `prepare_demo(folder)` output: natural 0.5, synthetic 0.5."""
    from data_pipelines import pipeline  # pylint: disable=import-outside-toplevel

    path = os.path.join(folder, "prepared")
    return pipeline.Task(
        sources=(pipeline.Source("natural", path, 0.5), pipeline.Source("synthetic", path, 0.5)),
        media=media,
        resolution=resolution,
        fps=8.0,
        max_frames=frames,
        frame_buckets=(frames,),
        multiple=16,
        batch_size=batch_size,
        **kwargs,
    )
