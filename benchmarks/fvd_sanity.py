"""FVD sanity numbers on the demo's clips (lumina_jax/evaluation/fvd.py), and its CPU cost.

    python benchmarks/fvd_sanity.py              # 8 clips per set (~4-6 min on 2 cores)
    python benchmarks/fvd_sanity.py --clips 16   # less small-N bias, twice the time
    python benchmarks/fvd_sanity.py --all        # + the package's own apply and the
                                                 #   half-pixel resize convention

Clips are 8 frames at 16x16 px like the demo's (data_pipelines.demo at size 16): coloured
shapes moving on a dark background, and camera pans over photographs. I3D sees them
stretched to 16 frames (frame repetition) and 224x224 (bilinear), the module's protocol.
Reported (all FVDs between sets of --clips clips, so all carry the same small-N bias):
  self        a set of shapes against the same clips embedded a second time (should be 0)
  noise       the shapes against themselves with Gaussian pixel noise (sigma in 0..255 units)
  blur        ... with a Gaussian blur (sigma in px at 16x16)
  halves      two disjoint sets of shapes; shapes vs pans; two disjoint sets of pans
  cost        seconds per clip (wall and process CPU, steady state, batches of 8), compile
              and weight-loading seconds; with --all also the package's unmodified apply
              (max |logit difference| to the default path) and tf-vs-half-pixel resizing.
The last line is `RESULT {json}`. Never fails on figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
import warnings

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipelines import demo  # noqa: E402
from lumina_jax.evaluation import fvd as F  # noqa: E402

NOISE = (2, 4, 8, 16, 32, 64)
BLUR = (0.35, 0.7, 1.4, 2.8)
SIZE, FRAMES = 16, 8


def shape_clips(n: int, offset: int = 0) -> np.ndarray:
    combos = list(
        itertools.product(demo.SHAPES, demo.COLORS.values(), demo.DIRECTIONS, demo.SPEEDS.values())
    )
    order = np.random.default_rng(0).permutation(len(combos))[offset : offset + n]
    return np.stack([demo.shape_clip(*combos[i], size=SIZE, frames=FRAMES) for i in order])


def pan_clips(n: int, offset: int = 0) -> np.ndarray:
    combos = list(itertools.product(demo.PHOTOS, demo.DIRECTIONS, demo.SPEEDS.values()))
    order = np.random.default_rng(1).permutation(len(combos))[offset : offset + n]
    photos = {name: demo._photo(name) for name in demo.PHOTOS}  # pylint: disable=protected-access
    return np.stack(
        [demo.camera_clip(photos[combos[i][0]], combos[i][1], combos[i][2], SIZE, FRAMES)
         for i in order]
    )


def noisy(clips: np.ndarray, sigma: float) -> np.ndarray:
    noise = np.random.default_rng(int(sigma * 10)).normal(0, sigma, clips.shape)
    return np.clip(np.round(clips + noise), 0, 255).astype(np.uint8)


def blurred(clips: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([[cv2.GaussianBlur(f, (0, 0), sigma) for f in clip] for clip in clips])


def timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=8, help="clips per set (>= 2)")
    ap.add_argument("--all", action="store_true", help="also the package's apply and half-pixel")
    args = ap.parse_args()
    n = args.clips
    warnings.simplefilter("ignore", F.FVDBiasWarning)  # every set here is small; see the doc

    _, load_s, _ = timed(F._shared_model)  # pylint: disable=protected-access
    i3d = F.I3DFeatures(batch_size=8)
    shapes, pans = shape_clips(2 * n), pan_clips(2 * n)
    base = shapes[:n]
    print(f"{n} clips per set, {FRAMES} frames at {SIZE}x{SIZE} -> 16x224x224; "
          f"{os.cpu_count()} CPUs; weights loaded in {load_s:.1f} s", flush=True)

    # The first call compiles (one batch shape for all sets below: --clips a multiple of 8
    # keeps it to one compile).
    f_base, first_wall, first_cpu = timed(i3d, base)
    steady = {"wall": 0.0, "cpu": 0.0, "clips": 0}

    def embed(clips):
        feats, wall, cpu = timed(i3d, clips)
        steady["wall"] += wall
        steady["cpu"] += cpu
        steady["clips"] += len(clips)
        return feats

    fd = F.frechet_distance
    self_fvd = fd(f_base, embed(base))
    print(f"self FVD {self_fvd:.3g}", flush=True)
    noise = {s: fd(f_base, embed(noisy(base, s))) for s in NOISE}
    print("noise  " + "  ".join(f"sigma {s}: {v:.1f}" for s, v in noise.items()), flush=True)
    blur = {s: fd(f_base, embed(blurred(base, s))) for s in BLUR}
    print("blur   " + "  ".join(f"sigma {s}: {v:.1f}" for s, v in blur.items()), flush=True)
    f_shapes_b, f_pans = embed(shapes[n:]), embed(pans)
    halves = {
        "shapes_vs_shapes": fd(f_base, f_shapes_b),
        "shapes_vs_pans": float(np.mean([fd(a, b) for a in (f_base, f_shapes_b)
                                         for b in (f_pans[:n], f_pans[n:])])),
        "pans_vs_pans": fd(f_pans[:n], f_pans[n:]),
    }
    print("halves " + "  ".join(f"{k}: {v:.1f}" for k, v in halves.items()), flush=True)

    per_wall = steady["wall"] / steady["clips"]
    per_cpu = steady["cpu"] / steady["clips"]
    compile_s = first_wall - per_wall * n
    result = {
        "clips_per_set": n,
        "self_fvd": self_fvd,
        "noise": {str(k): round(v, 2) for k, v in noise.items()},
        "noise_monotonic": bool(np.all(np.diff([self_fvd, *noise.values()]) > 0)),
        "blur": {str(k): round(v, 2) for k, v in blur.items()},
        "blur_monotonic": bool(np.all(np.diff([self_fvd, *blur.values()]) > 0)),
        **{k: round(v, 2) for k, v in halves.items()},
        "sec_per_clip_wall": round(per_wall, 3),
        "sec_per_clip_cpu": round(per_cpu, 3),
        "compile_s_wall": round(compile_s, 1),
        "load_s": round(load_s, 1),
        "clips_embedded": steady["clips"] + n,
        "cpus": os.cpu_count(),
    }
    print(f"cost   {per_wall:.2f} s/clip wall, {per_cpu:.2f} CPU-s/clip over "
          f"{steady['clips']} clips; first call {first_wall:.1f} s (~{compile_s:.1f} s compile)",
          flush=True)

    if args.all:
        sub = base[: min(n, 4)]
        plain = F.I3DFeatures(batch_size=len(sub), fast=False)
        fast = F.I3DFeatures(batch_size=len(sub))
        plain(sub), fast(sub)  # compile both
        f_plain, wall_p, cpu_p = timed(plain, sub)
        f_fast, wall_f, cpu_f = timed(fast, sub)
        half = F.I3DFeatures(batch_size=8, resize="half_pixel")
        f_half = half(base)
        result.update({
            "package_apply_sec_per_clip_wall": round(wall_p / len(sub), 3),
            "package_apply_sec_per_clip_cpu": round(cpu_p / len(sub), 3),
            "fast_sec_per_clip_wall_same_run": round(wall_f / len(sub), 3),
            "fast_sec_per_clip_cpu_same_run": round(cpu_f / len(sub), 3),
            "fast_vs_package_max_abs_logit_diff": float(np.abs(f_plain - f_fast).max()),
            "fast_vs_package_max_abs_logit": float(np.abs(f_plain).max()),
            "tf_vs_half_pixel_resize_fvd": round(fd(f_base, f_half), 2),
        })
        print(f"package apply {wall_p / len(sub):.2f} s/clip wall, {cpu_p / len(sub):.2f} "
              f"CPU-s/clip vs default {wall_f / len(sub):.2f} / {cpu_f / len(sub):.2f}; max "
              f"|logit diff| {result['fast_vs_package_max_abs_logit_diff']:.2g} (logits up to "
              f"{result['fast_vs_package_max_abs_logit']:.1f}); FVD tf vs half-pixel resize "
              f"{result['tf_vs_half_pixel_resize_fvd']:.1f}", flush=True)
    print("RESULT " + json.dumps({"fvd_sanity": result}))


if __name__ == "__main__":
    main()
