"""Pixel-based prompt-adherence judge for the synthetic demo clips (data_pipelines.demo).

A demo prompt names a colour, a shape and, for videos, a direction and a speed ("a red
square moving left quickly"; stills: "a blue circle"). `measure` reads those back from
the pixels of one clip, `judge` scores a batch of clips against their prompts:

  background  per-frame median colour (the shape covers well under half the frame).
  foreground  pixels at least half the frame's peak distance from the background (the
              half-max contour of a blurred blob keeps the shape's area); a frame counts
              only if the peak is >= MIN_CONTRAST, the foreground is <= MAX_AREA of the
              frame and its largest connected component holds >= MIN_COMPACT of it; a
              clip needs half its frames usable and one colour winning >= MIN_PURITY of
              the votes, so noise and empty clips are flagged instead of read.
  colour      majority vote of the foreground pixels, each assigned the demo colour whose
              direction from the background is closest (cosine): edge pixels, mixtures of
              colour and background, vote like the core (a blurred yellow edge is darker
              yellow, not green).
  shape       alpha = each pixel's share of the judged colour over the background; every
              demo shape is rendered at the same mass and centroid (demo._draw,
              supersampled then area-averaged like the training clips), at a few sizes
              and blurs, and the best cosine similarity with alpha over up to 4 frames wins.
  direction   least-squares slope of the alpha centroid over frames, in frame sides per
              frame (resolution-free); below STILL it is "still", else the dominant axis.

numpy + cv2 only; the model is never imported here.
"""

from __future__ import annotations

import functools
import itertools
import math
import re

import cv2
import numpy as np

from data_pipelines import demo

SPEED_LABELS = tuple(w for w in demo.SHAPE_TRAVEL if w)  # slow first
# What the in-loop judge samples (train/evaluate.py): every colour x shape x direction
# once, half of them quick (the speeds alternate so each colour, shape and direction has
# both); MOTION_PROMPTS are sampled at each motion score of `eval.judge_motion`.
PROMPTS = tuple(
    f"a {c} {s} moving {d} {SPEED_LABELS[(i + j + k) % 2]}"
    for (i, c), (j, s), (k, d) in itertools.product(
        enumerate(demo.COLORS), enumerate(demo.SHAPES), enumerate(demo.DIRECTIONS)))
# No speed word: their speed is the motion score's alone (horizontal, where the score's
# 320x576 protocol is most sensitive). Eight, each colour both ways: with four, one
# model's end-of-run Spearman read 0.55 where seven levels at another seed read -0.37.
MOTION_PROMPTS = tuple(
    f"a {c} {demo.SHAPES[(i + j) % len(demo.SHAPES)]} moving {d}"
    for i, c in enumerate(demo.COLORS) for j, d in enumerate(("left", "right")))
MIN_CONTRAST = 40.0  # RGB distance at the blob's peak; demo colours are 180-290 from the bg
FG_LEVEL = 0.5  # foreground: >= this share of the peak distance (the half-max contour)
MAX_AREA = 0.5  # more foreground than this is texture or noise, not one demo shape
MIN_COMPACT = 0.6  # share of the foreground in its largest connected component
MIN_PURITY = 0.6  # share of the colour votes the winner needs (noise splits them ~evenly)
STILL = 0.01  # frame sides per frame; "slowly" is >= ~0.023 in both demo designs
_SUPER = 8  # supersampling of the shape templates
_SIZES = (0.85, 1.0, 1.18)  # radius factors: the mass underestimates a dim blob's area
_BLURS = (0.0, 0.5, 1.0, 1.5)  # template blur, px at the clip's resolution
_SHAPE_FRAMES = 4

_PROMPT = re.compile(r"an? (\w+) (\w+)(?: moving (\w+)(?: (\w+))?)?")


def parse_prompt(prompt: str) -> dict:
    """'a red square moving left quickly' -> {colour, shape, direction, speed} (the last
    two None for a still, speed None with no speed word). ValueError for anything that is
    not a demo prompt."""
    m = _PROMPT.fullmatch(prompt.strip().rstrip(".").lower())
    if (
        not m
        or m[1] not in demo.COLORS
        or m[2] not in demo.SHAPES
        or (m[3] is not None and m[3] not in demo.DIRECTIONS)
        or (m[4] is not None and m[4] not in SPEED_LABELS)
    ):
        raise ValueError(f"not a demo shape prompt: {prompt!r}")
    return {"colour": m[1], "shape": m[2], "direction": m[3], "speed": m[4]}


@functools.lru_cache(maxsize=None)
def _unit(shape: str) -> tuple[float, float, float]:
    """(area / r^2, centroid x and y offset from the drawing centre / r) of demo._draw."""
    r = 64
    img = np.zeros((4 * r, 4 * r), np.uint8)
    demo._draw(img, shape, 255, 2 * r, 2 * r, r)  # pylint: disable=protected-access
    a = img.astype(np.float64) / 255
    ys, xs = np.indices(a.shape)
    m = a.sum()
    return m / r**2, ((a * xs).sum() / m - 2 * r) / r, ((a * ys).sum() / m - 2 * r) / r


def _template(shape: str, mass: float, cx: float, cy: float, h: int, w: int) -> np.ndarray:
    """Soft [h, w] mask of `shape` with area `mass` (px) and centroid (cx, cy)."""
    area, ox, oy = _unit(shape)
    r = math.sqrt(mass / area)
    k = _SUPER
    img = np.zeros((h * k, w * k), np.uint8)
    # Frame pixel i covers supersampled pixels k*i .. k*i + k - 1.
    demo._draw(  # pylint: disable=protected-access
        img, shape, 255, (cx - ox * r + 0.5) * k - 0.5, (cy - oy * r + 0.5) * k - 0.5, r * k
    )
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def _best_cosine(a: np.ndarray, templates: np.ndarray) -> float:
    t = templates.reshape(len(templates), -1)
    cos = t @ a.ravel() / (np.linalg.norm(t, axis=1) * np.linalg.norm(a) + 1e-9)
    return float(cos.max())


def _direction(vx: float, vy: float) -> str:
    if math.hypot(vx, vy) < STILL:
        return "still"
    if abs(vx) >= abs(vy):
        return "right" if vx > 0 else "left"
    return "down" if vy > 0 else "up"


def measure(frames: np.ndarray) -> dict:
    """The judge's reading of one clip, uint8 [F, H, W, 3] (or one image [H, W, 3]).

    Returns found (False: no usable foreground; the other readings, from whatever frames
    were usable, are then not to be trusted and `judge` counts the clip as wrong),
    confidence (found-frame share x colour-vote share), colour, shape, shape_scores,
    direction ('still' below STILL; None with fewer than 2 usable frames), velocity
    (vx, vy) and speed in frame sides per frame, speed_px in px per frame at this size.
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    n, h, w, _ = frames.shape
    x = frames.astype(np.float32)
    bg = np.median(x.reshape(n, -1, 3), axis=1)
    diff = x - bg[:, None, None]
    dist = np.linalg.norm(diff, axis=-1)
    names = list(demo.COLORS)
    empty = {"found": False, "confidence": 0.0, "colour": None, "shape": None,
             "shape_scores": {}, "direction": None, "velocity": (math.nan, math.nan),
             "speed": math.nan, "speed_px": math.nan, "frames_found": 0}

    used, masks, votes = [], [], []
    for i in range(n):
        peak = float(np.percentile(dist[i], 99))
        mask = dist[i] >= max(FG_LEVEL * peak, MIN_CONTRAST / 2)
        if peak < MIN_CONTRAST or not 0 < mask.mean() <= MAX_AREA:
            continue
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
        big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        if stats[big, cv2.CC_STAT_AREA] < MIN_COMPACT * mask.sum():
            continue
        dirs = np.array(list(demo.COLORS.values()), np.float32) - bg[i]
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        d = diff[i][mask]
        cos = d @ dirs.T / (np.linalg.norm(d, axis=1, keepdims=True) + 1e-6)
        votes.append(np.argmax(cos, 1))
        x0, y0, bw, bh = stats[big, :4]
        pad = max(2, round(0.1 * max(h, w)))  # keep the blob's soft edge, drop far specks
        box = np.zeros((h, w), bool)
        box[max(0, y0 - pad): y0 + bh + pad, max(0, x0 - pad): x0 + bw + pad] = True
        used.append(i)
        masks.append(box)
    if not used:
        return empty
    votes = np.concatenate(votes)
    counts = np.bincount(votes, minlength=len(names))
    ci = int(np.argmax(counts))
    colour = names[ci]
    purity = counts[ci] / counts.sum()

    # Alpha: each pixel's share of the judged colour over its frame's background.
    c = np.array(demo.COLORS[colour], np.float32)
    ys, xs = np.indices((h, w), dtype=np.float32)
    alphas, cents, frames_used = [], [], []
    for i, box in zip(used, masks):
        u = c - bg[i]
        a = np.clip(diff[i] @ u / float(u @ u), 0, None) * box
        m = float(a.sum())
        if m < 0.5:  # this frame's blob is another colour: nothing of the judged one
            continue
        alphas.append(a)
        cents.append(((a * xs).sum() / m, (a * ys).sum() / m, m))
        frames_used.append(i)
    used = frames_used
    if not used:
        return empty

    pick = np.unique(np.linspace(0, len(used) - 1, min(_SHAPE_FRAMES, len(used))).round())
    scores = {}
    for shape in demo.SHAPES:
        total = 0.0
        for j in pick.astype(int):
            cx, cy, m = cents[j]
            ts = [_template(shape, m * s * s, cx, cy, h, w) for s in _SIZES]
            ts = np.stack([cv2.GaussianBlur(t, (0, 0), b) if b else t for t in ts for b in _BLURS])
            total += _best_cosine(alphas[j], ts)
        scores[shape] = total / len(pick)
    shape = max(scores, key=scores.get)

    velocity, direction = (math.nan, math.nan), None
    if len(used) >= 2:
        t = np.array(used, np.float64)
        cx, cy, _ = np.array(cents).T
        velocity = (float(np.polyfit(t, cx / w, 1)[0]), float(np.polyfit(t, cy / h, 1)[0]))
        direction = _direction(*velocity)
    speed = math.hypot(*velocity)
    return {
        "found": len(used) >= max(1, n / 2) and purity >= MIN_PURITY,
        "confidence": len(used) / n * purity,
        "colour": colour,
        "shape": shape,
        "shape_scores": scores,
        "direction": direction,
        "velocity": velocity,
        "speed": speed,
        "speed_px": speed * max(h, w),
        "frames_found": len(used),
    }


def judge(clips, prompts, readings=None) -> dict:
    """Accuracy of `clips` (each uint8 [F, H, W, 3] or [H, W, 3]) against their prompts.

    `readings`: `measure` outputs for the clips, computed earlier (then `clips` may be
    None), e.g. to judge the same samples against control prompts.

    A clip without usable foreground counts as wrong everywhere. colour_acc and shape_acc
    are over all clips, direction_acc over moving prompts only. quick_faster: over the
    (quick, slow) pairs with the same colour, shape and direction (all quick/slow pairs if
    there are none), the share where both are found and the quick one measured faster.
    speed_quick / speed_slow: mean measured speed (frame sides per frame) of found clips.
    rows: one dict per clip for printing.
    """
    prompts = list(prompts)
    readings = list(readings) if readings is not None else [measure(c) for c in clips]
    if len(readings) != len(prompts):
        raise ValueError(f"{len(readings)} clips but {len(prompts)} prompts")
    rows = []
    for got, prompt in zip(readings, prompts):
        want = parse_prompt(prompt)
        ok = got["found"]
        rows.append({
            "prompt": prompt, "found": ok, "confidence": got["confidence"],
            "colour": got["colour"], "shape": got["shape"], "direction": got["direction"],
            "speed": got["speed"], "want": want, "reading": got,
            "colour_ok": ok and got["colour"] == want["colour"],
            "shape_ok": ok and got["shape"] == want["shape"],
            "direction_ok": None if want["direction"] is None
            else ok and got["direction"] == want["direction"],
        })
    moving = [r for r in rows if r["direction_ok"] is not None]

    def mean(v):
        return float(np.mean(v)) if len(v) else math.nan

    def speeds(label):
        return [r for r in moving if r["want"]["speed"] == label]

    quick, slow = speeds(SPEED_LABELS[-1]), speeds(SPEED_LABELS[0])
    def key(r):
        return r["want"]["colour"], r["want"]["shape"], r["want"]["direction"]

    pairs = [(q, s) for q, s in itertools.product(quick, slow) if key(q) == key(s)]
    pairs = pairs or list(itertools.product(quick, slow))
    return {
        "n": len(rows),
        "colour_acc": mean([r["colour_ok"] for r in rows]),
        "shape_acc": mean([r["shape_ok"] for r in rows]),
        "direction_acc": mean([r["direction_ok"] for r in moving]),
        "speed_quick": mean([r["speed"] for r in quick if r["found"]]),
        "speed_slow": mean([r["speed"] for r in slow if r["found"]]),
        "quick_faster": mean([q["found"] and s["found"] and q["speed"] > s["speed"]
                              for q, s in pairs]),
        "quick_pairs": len(pairs),
        "no_foreground": sum(not r["found"] for r in rows),
        "rows": rows,
    }


def format_scores(scores: dict) -> str:
    """One line, e.g. 'judge: colour 100% shape 92% direction 100% quick>slow 100% (n=12)'."""

    def pct(v):
        return "n/a" if v is None or math.isnan(v) else f"{100 * v:.0f}%"

    missing = f", no foreground {scores['no_foreground']}" if scores["no_foreground"] else ""
    return (
        f"judge: colour {pct(scores['colour_acc'])} shape {pct(scores['shape_acc'])} "
        f"direction {pct(scores['direction_acc'])} quick>slow {pct(scores['quick_faster'])} "
        f"(n={scores['n']}{missing})"
    )


def _ranks(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v))
    for x in np.unique(v):  # ties share their mean rank
        ranks[v == x] = ranks[v == x].mean()
    return ranks


def motion_control(requested, measured) -> float:
    """Spearman rho between requested motion scores and the motion measured in the
    samples (1.0: the control orders motion perfectly); nan if either is constant or a
    measurement is missing (nan). numpy, not scipy.stats: importing that takes seconds."""
    if len(requested) != len(measured):
        raise ValueError(f"{len(requested)} requested but {len(measured)} measured")
    if np.isnan(np.asarray(measured, np.float64)).any():
        return math.nan
    a, b = _ranks(requested), _ranks(measured)
    if a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def measured_motion(clips) -> list[float]:
    """The tracked speed of each clip's shape (`measure`: frame sides per frame; nan where
    no shape is found), for `motion_control`. Not the flow-based motion score: on 16-px
    samples, frame-to-frame flicker dominates dense flow (samples read 12-18 whatever their
    speed, where real demo clips crossing 0.25-1.0 of the room read 1.0-4.3)."""
    out = []
    for clip in clips:
        reading = measure(np.asarray(clip))
        out.append(reading["speed"] if reading["found"] else math.nan)
    return out
