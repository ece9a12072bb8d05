"""Motion score vs known motion: the old estimator against the new one (data_pipelines/motion.py).

    python benchmarks/motion_score.py            # old vs new (~1-2 min on 2 cores)
    python benchmarks/motion_score.py --all      # + the alternatives the choice was made from

Clips with known motion, 0.5 s apart as the motion score samples them:
  pans    9-frame windows sliding over a photograph (skimage) or a random texture by a known
          sub-pixel shift per interval, at source resolutions 32x32, 48x64 (HxW), 200x120
          (portrait) and 256x448. Truth = the exact mean |flow| at 320x576 (the official
          protocol's scale: per-axis resize factors, portrait transposed), i.e.
          (|u| + |v|) / 2 with u, v the per-interval displacement along width and height.
  shapes  data_pipelines.demo.shape_clip squares/circles on a flat background at several
          speeds, 3 frames. Truth = the true flow averaged over the frame (shape area
          fraction x (|u| + |v|) / 2); estimators spread flow into the flat background, so
          only the ranking is meaningful here.
          Reported over speeds <= 12 px per interval (shape moves <= 3/4 of its size) and
          over all (18: the shape clears its own footprint; see data_pipelines/motion.py).
  demo    the embedded demo's natural clips (data_pipelines.demo.generate at 64 px -- the
          default -- and 32 px; 8 fps, 2 s): camera pans "slowly" (6 px per 0.5 s) vs
          "quickly" (12 px per 0.5 s, i.e. 108 px at 576 for 64-px frames, 216 px for
          32-px ones); scored from the encoded files like `prepare` does.
Reported per estimator: Spearman vs truth (pans overall and per resolution; shapes), mean
relative error on moving pans, the largest static-clip score, seconds per 9-frame clip,
and the demo's mean score for "quickly" vs "slowly" captions. Never fails on figures.
The last line is `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import cv2
import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipelines import demo, manifest, motion, video  # noqa: E402

RESOLUTIONS = ((32, 32), (48, 64), (200, 120), (256, 448))  # (H, W) of the source video
PAN_SPEEDS = (0, 1, 2.5, 5, 10, 20, 35, 55, 80, 110)  # px per interval, long side at 576 px
DIRECTIONS = ((1, 0), (0, 1), (-1, 1), (-1, 0))  # (x, y) unit steps, cycled over the clips
SHAPE_SPEEDS = (0, 2, 4, 6, 8, 12, 18)  # px per interval at 64 px; the shapes are 16 px wide
WITHIN_SIZE = 12  # shape speeds up to here move at most 3/4 of the shape's size per interval


# --- estimators ---------------------------------------------------------------------------


def old_flow_magnitude(frames: np.ndarray) -> float:
    """The previous estimator: Farneback (3 levels, window 15) at the native size when
    smaller than 320x576 (downscaled with INTER_AREA otherwise), flow rescaled to 576 px."""
    n, h, w, _ = frames.shape
    if n < 2:
        return 0.0
    th, tw = (motion.SIZE[0], motion.SIZE[1]) if w >= h else (motion.SIZE[1], motion.SIZE[0])
    if min(h, w) > motion.SIZE[0]:
        h, w = th, tw
    grey = [
        cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (w, h), interpolation=cv2.INTER_AREA)
        for f in frames
    ]
    mags = [
        float(np.abs(cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)).mean())
        for a, b in zip(grey[:-1], grey[1:])
    ]
    return float(np.mean(mags)) * motion.SIZE[1] / max(h, w)


def _at_size(flow_fn):
    """An estimator on the protocol's 320x576 frames from a pair -> flow function."""

    def score(frames: np.ndarray) -> float:
        g = motion.prepare_frames(frames)
        return float(np.mean([np.abs(flow_fn(a, b)).mean() for a, b in zip(g, g[1:])]))

    return score


def _dis(preset):
    return _at_size(lambda a, b: cv2.DISOpticalFlow_create(preset).calc(a, b, None))


def _farneback(levels, winsize):
    return _at_size(
        lambda a, b: cv2.calcOpticalFlowFarneback(a, b, None, 0.5, levels, winsize, 3, 5, 1.2, 0)
    )


U, F, M = (
    cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    cv2.DISOPTICAL_FLOW_PRESET_FAST,
    cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
)
ESTIMATORS = {"old": old_flow_magnitude, "new": motion.flow_magnitude}
ALTERNATIVES = {
    "farneback_l3_w15_at_576": _farneback(3, 15),
    "farneback_l6_w31_at_576": _farneback(6, 31),
    "dis_ultrafast": _dis(U),
    "dis_fast": _dis(F),
    "dis_medium": _dis(M),
    "new_ultrafast": lambda fr: motion.flow_magnitude(fr, U),
    "new_medium": lambda fr: motion.flow_magnitude(fr, M),
}


# --- clips with known motion --------------------------------------------------------------


def texture(seed: int, height: int, width: int, cell: int = 4) -> np.ndarray:
    """Random colour texture with a feature every `cell` px (bicubic-upsampled noise)."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height // cell + 2, width // cell + 2, 3)).astype(np.float32)
    up = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(up * 255, 0, 255).astype(np.uint8)


def pan_clip(canvas: np.ndarray, h: int, w: int, dx: float, dy: float, n: int = 9):
    """n frames: an h x w window over `canvas` whose content moves (dx, dy) px per frame."""
    ch, cw, _ = canvas.shape
    x0, y0 = (cw - w) / 2 + dx * (n - 1) / 2, (ch - h) / 2 + dy * (n - 1) / 2
    out = []
    for i in range(n):  # dst(p) = canvas(p + offset); content moves +dx <=> offset moves -dx
        m = np.float32([[1, 0, dx * i - x0], [0, 1, dy * i - y0]])
        out.append(cv2.warpAffine(canvas, m, (w, h), flags=cv2.INTER_LINEAR))
    return np.stack(out)


def true_score(h: int, w: int, dx: float, dy: float) -> float:
    """Exact mean |flow| at 320x576 for a uniform shift (dx, dy) px of an h x w video."""
    if h > w:  # portrait is transposed
        h, w, dx, dy = w, h, dy, dx
    return (abs(dx) * motion.SIZE[1] / w + abs(dy) * motion.SIZE[0] / h) / 2


def photo_canvas(name: str, h: int, w: int, margin_x: float, margin_y: float) -> np.ndarray:
    """The photo resized so an h x w window covers about half its short side and can move."""
    img = demo._photo(name)  # pylint: disable=protected-access
    ph, pw, _ = img.shape
    s = max((h + margin_y) / ph, (w + margin_x) / pw, 2 * min(h, w) / min(ph, pw))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC
    return cv2.resize(img, (int(pw * s) + 1, int(ph * s) + 1), interpolation=interp)


def pan_clips(resolutions=RESOLUTIONS, speeds=PAN_SPEEDS):
    """[(resolution, kind, truth, clip)]: one photo pan and one texture pan per speed."""
    photos = list(demo.PHOTOS)
    out = []
    for h, w in resolutions:
        for j, d in enumerate(speeds):
            s = d * max(h, w) / motion.SIZE[1]  # source px per interval
            for k, kind in enumerate(("photo", "texture")):
                ux, uy = DIRECTIONS[(j + k) % len(DIRECTIONS)]
                mx, my = abs(ux) * s * 8 + 8, abs(uy) * s * 8 + 8
                if kind == "photo":
                    canvas = photo_canvas(photos[(j + k) % len(photos)], h, w, mx, my)
                else:
                    canvas = texture(100 * j + k, int(h + my) + 1, int(w + mx) + 1)
                clip = pan_clip(canvas, h, w, ux * s, uy * s)
                out.append(((h, w), kind, true_score(h, w, ux * s, uy * s), clip))
    return out


def shape_clips(resolutions=RESOLUTIONS, speeds=SHAPE_SPEEDS):
    """[(speed, kind, truth, clip)]: a square moving left, a circle moving down."""
    out = []
    for h, w in resolutions:
        for v in speeds:
            for shape, direction in (("square", "left"), ("circle", "down")):
                c = demo.shape_clip(shape, (230, 40, 40), direction, v, size=64, frames=3)
                c = np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in c])
                dx, dy = demo.DIRECTIONS[direction]
                area = float((c[:-1] != 24).any(-1).mean())  # moving pixels (bg is 24)
                truth = area * true_score(h, w, dx * v * w / 64, dy * v * h / 64)
                out.append((v, shape, truth, c))
    return out


def demo_clips(folder: str, size: int = 64):
    """[(caption, path, duration)] of the demo's natural camera pans."""
    recs = manifest.read_manifest(demo.generate(folder, size=size))
    return [
        (r["caption"], r["path"], r["duration"])
        for r in recs
        if r["source"] == "natural" and "pans" in r["caption"]
    ]


def file_frames(path: str, duration: float, interval: float = 0.5, max_frames: int = 9):
    """The frames motion.motion_score reads from a file."""
    n = min(max_frames, video.available_frames(duration, 1 / interval))
    return video.read_frames(path, fps=1 / interval, num_frames=n)


# --- evaluation ---------------------------------------------------------------------------


def evaluate(fn, pans, shapes, demo_frames) -> dict:
    t0 = time.perf_counter()
    pan_scores = np.array([fn(c) for *_, c in pans])
    per_clip = (time.perf_counter() - t0) / len(pans)  # all pan clips have 9 frames
    truth = np.array([t for _, _, t, _ in pans])
    res = [r for r, *_ in pans]
    moving = truth > 0
    rel = np.abs(pan_scores[moving] - truth[moving]) / truth[moving]
    shape_scores = np.array([fn(c) for *_, c in shapes])
    shape_truth = np.array([t for _, _, t, _ in shapes])
    within = np.array([v <= WITHIN_SIZE for v, *_ in shapes])
    demo = {}
    for size, frames in demo_frames.items():
        scores = {cap: fn(fr) for cap, fr in frames.items()}
        quick = [s for cap, s in scores.items() if cap.endswith("quickly")]
        slow = [s for cap, s in scores.items() if cap.endswith("slowly")]
        pairs = [
            scores[cap] > scores[cap.replace("quickly", "slowly")]
            for cap in scores
            if cap.endswith("quickly")
        ]
        demo[f"demo{size}_quickly_mean"] = round(float(np.mean(quick)), 3)
        demo[f"demo{size}_slowly_mean"] = round(float(np.mean(slow)), 3)
        demo[f"demo{size}_quickly_gt_slowly_pairs"] = f"{sum(pairs)}/{len(pairs)}"
    return {
        "pan_spearman": round(float(spearmanr(truth, pan_scores)[0]), 4),
        "pan_spearman_per_res": {
            f"{h}x{w}": round(
                float(spearmanr(truth[[x == (h, w) for x in res]],
                                pan_scores[[x == (h, w) for x in res]])[0]), 4)
            for h, w in RESOLUTIONS
        },
        "pan_mean_rel_err": round(float(rel.mean()), 4),
        "pan_max_rel_err": round(float(rel.max()), 4),
        "static_max": round(float(pan_scores[~moving].max()), 4),
        "shape_spearman": round(
            float(spearmanr(shape_truth[within], shape_scores[within])[0]), 4),
        "shape_spearman_all": round(float(spearmanr(shape_truth, shape_scores)[0]), 4),
        "shape_static_max": round(float(shape_scores[shape_truth == 0].max()), 4),
        "sec_per_clip": round(per_clip, 4),
        **demo,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--all", action="store_true", help="also the alternatives considered")
    args = ap.parse_args()
    pans, shapes = pan_clips(), shape_clips()
    demo_frames = {}
    for size in (64, 32):
        with tempfile.TemporaryDirectory() as tmp:
            demo_frames[size] = {cap: file_frames(p, d) for cap, p, d in demo_clips(tmp, size)}
    ests = {**ESTIMATORS, **(ALTERNATIVES if args.all else {})}
    print(f"{len(pans)} pan clips (9 frames), {len(shapes)} shape clips (3 frames), "
          f"{len(demo_frames[64])} demo pans per size; {os.cpu_count()} CPUs, "
          f"OpenCV {cv2.__version__} ({cv2.getNumThreads()} threads)")
    results = {}
    for name, fn in ests.items():
        results[name] = r = evaluate(fn, pans, shapes, demo_frames)
        print(f"{name:26s} pan rho {r['pan_spearman']:.3f} {r['pan_spearman_per_res']} "
              f"rel err {r['pan_mean_rel_err']:.3f} (max {r['pan_max_rel_err']:.2f}) "
              f"static {r['static_max']:.3f} | shapes rho {r['shape_spearman']:.3f} "
              f"(all {r['shape_spearman_all']:.3f}) | {r['sec_per_clip']:.3f} s/clip | demo "
              + " ".join(f"{z}px quickly {r[f'demo{z}_quickly_mean']:.1f} slowly "
                         f"{r[f'demo{z}_slowly_mean']:.1f} "
                         f"({r[f'demo{z}_quickly_gt_slowly_pairs']})" for z in demo_frames),
              flush=True)
    print("RESULT " + json.dumps({"motion_score": results}))


if __name__ == "__main__":
    main()
