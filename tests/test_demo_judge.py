"""The demo judge reads colour, shape, direction and speed back from pixels
(data_pipelines/demo_judge.py), and fails what it should fail.

Ground truth comes from the demo's own generator (every colour x shape x direction x speed,
random positions like the training clips), at 16 px (rendered at 32, area-downsampled, as
prepare_demo does for resolution 16) and at 32 px, 8 frames. Robustness thresholds are
below 100 % (measured: 100 % everywhere) so a reasonable design change in demo.py (smaller
shapes, slower motion) does not break them; shape gets the widest margin because blur and
the codec soften exactly what tells the shapes apart (corners).
"""

from __future__ import annotations

import functools
import itertools
import math
import re

import cv2
import numpy as np
import pytest

from data_pipelines import demo, video
from data_pipelines import demo_judge as J

FRAMES = 8
COMBOS = list(itertools.product(demo.SHAPES, demo.COLORS, demo.DIRECTIONS, J.SPEED_LABELS))
PROMPTS = [f"a {c} {s} moving {d} {sp}" for s, c, d, sp in COMBOS]
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def _clip(shape, colour, direction, speed, size, frames=FRAMES, rng=None):
    """One demo clip from demo.py's generator (direction None: a still shape)."""
    return demo.demo_shape_clip(shape, demo.COLORS[colour], direction, speed, size, frames, rng)


def _down(clip, size):
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in clip])


@functools.lru_cache(maxsize=None)
def _truth(size: int):
    """(clips, judge scores) of every combination at `size` px (16: rendered at 32)."""
    rng = np.random.default_rng(size)
    clips = [_down(_clip(*c, size=32, rng=rng), size) for c in COMBOS]
    return clips, J.judge(clips, PROMPTS)


def _assert_scores(scores, floor, shape_floor=None):
    line = J.format_scores(scores)
    assert scores["no_foreground"] == 0, line
    assert scores["colour_acc"] >= floor, line
    assert scores["shape_acc"] >= (shape_floor or floor), line
    assert scores["direction_acc"] >= floor, line
    assert scores["quick_faster"] >= floor, line
    assert scores["speed_quick"] > 1.5 * scores["speed_slow"], line


def test_parse_prompt():
    assert J.parse_prompt("a red square moving left quickly") == {
        "colour": "red", "shape": "square", "direction": "left", "speed": "quickly"}
    assert J.parse_prompt(" A blue circle. ") == {
        "colour": "blue", "shape": "circle", "direction": None, "speed": None}
    assert J.parse_prompt("a red square moving left") == {  # speed: the motion score's
        "colour": "red", "shape": "square", "direction": "left", "speed": None}
    for bad in ("a purple square", "a red hexagon", "a red square moving sideways quickly",
                "a red square moving left fast", "a red square moving",
                "a photo of a cat, the camera pans left slowly", ""):
        with pytest.raises(ValueError, match="not a demo shape prompt"):
            J.parse_prompt(bad)


@pytest.mark.parametrize("size", [16, 32])
def test_ground_truth(size):
    clips, scores = _truth(size)
    assert clips[0].shape == (FRAMES, size, size, 3)
    _assert_scores(scores, 0.95)
    assert min(r["confidence"] for r in scores["rows"]) > 0.9


def test_speed_is_resolution_free():
    s16, s32 = _truth(16)[1], _truth(32)[1]
    for key in ("speed_quick", "speed_slow"):
        assert s16[key] == pytest.approx(s32[key], rel=0.15), (key, s16[key], s32[key])


@pytest.mark.parametrize("size", [16, 32])
def test_stills(size):
    pairs = list(itertools.product(demo.SHAPES, demo.COLORS))
    stills = [_down(_clip(s, c, None, J.SPEED_LABELS[0], 32, frames=1), size)[0] for s, c in pairs]
    scores = J.judge(stills, [f"a {c} {s}" for s, c in pairs])
    assert scores["colour_acc"] == scores["shape_acc"] == 1.0, J.format_scores(scores)
    assert math.isnan(scores["direction_acc"]) and J.measure(stills[0])["direction"] is None


def test_robust_to_blur_and_noise():
    # ~ a blurry sample: sigma 0.7 px at 16 px plus noise of 6 grey levels.
    rng = np.random.default_rng(0)
    clips = []
    for c in _truth(16)[0]:
        b = np.stack([cv2.GaussianBlur(f.astype(np.float32), (0, 0), 0.7) for f in c])
        clips.append(np.clip(b + rng.normal(0, 6, b.shape), 0, 255).astype(np.uint8))
    _assert_scores(J.judge(clips, PROMPTS), 0.9, shape_floor=0.8)


@pytest.mark.parametrize("crf", [None, 55])
def test_robust_to_encoding(tmp_path, crf):
    """The demo's path for resolution 16 (32-px clips through webm/vp9 at its default
    quality, read back, area-downsampled) and a harsh crf. The clips are tiled into one
    8 x 12 mosaic video (one encode instead of 96; tiles are 32 px, a multiple of the
    codec's blocks)."""
    rng = np.random.default_rng(1)
    tiles = np.stack([_clip(*c, size=32, rng=rng) for c in COMBOS])  # [96, F, 32, 32, 3]
    mosaic = tiles.reshape(8, 12, FRAMES, 32, 32, 3).transpose(2, 0, 3, 1, 4, 5)
    path = str(tmp_path / "mosaic.webm")
    video.write_video(path, mosaic.reshape(FRAMES, 256, 384, 3), 8.0,
                      **({"crf": crf} if crf else {}))
    back = video.read_frames(path, 8.0, FRAMES).reshape(FRAMES, 8, 32, 12, 32, 3)
    back = back.transpose(1, 3, 0, 2, 4, 5).reshape(96, FRAMES, 32, 32, 3)
    assert np.abs(back.astype(int) - tiles).mean() > (2.0 if crf else 0.1)  # really lossy
    _assert_scores(J.judge([_down(c, 16) for c in back], PROMPTS), 0.9, shape_floor=0.8)


def test_noise_and_blank_are_flagged():
    rng = np.random.default_rng(0)
    shape = (FRAMES, 16, 16, 3)
    clips = (
        [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(8)]  # full-range noise
        + [np.clip(rng.normal(24, 20, shape), 0, 255).astype(np.uint8) for _ in range(8)]
        + [np.full(shape, 24, np.uint8), np.full(shape, 200, np.uint8)]  # blank frames
        + [np.broadcast_to(np.array(demo.COLORS["red"], np.uint8), shape)]  # all colour
    )
    prompts = PROMPTS[: len(clips)]
    scores = J.judge(clips, prompts)
    assert scores["no_foreground"] == len(clips), J.format_scores(scores)
    assert scores["colour_acc"] == scores["shape_acc"] == scores["direction_acc"] == 0
    assert scores["quick_faster"] == 0
    assert "no foreground 19" in J.format_scores(scores)


def test_wrong_prompts_score_near_chance():
    readings = [r["reading"] for r in _truth(16)[1]["rows"]]
    perm = np.random.default_rng(0).permutation(len(PROMPTS))
    scores = J.judge(None, [PROMPTS[i] for i in perm], readings)
    line = J.format_scores(scores)
    # chance: colour 1/4, shape 1/3, direction 1/4, quick>slow 1/2
    assert scores["colour_acc"] < 0.4 and scores["shape_acc"] < 0.5, line
    assert scores["direction_acc"] < 0.4 and scores["quick_faster"] < 0.7, line
    swapped = [p.replace("quickly", "@").replace("slowly", "quickly").replace("@", "slowly")
               for p in PROMPTS]
    assert J.judge(None, swapped, readings)["quick_faster"] == 0


def test_static_clip_is_still():
    clip = _down(demo.shape_clip("square", demo.COLORS["red"], "left", 0.0, 32, FRAMES), 16)
    got = J.measure(clip)
    assert got["found"] and got["direction"] == "still" and got["speed"] < J.STILL
    scores = J.judge([clip], ["a red square moving left quickly"])
    assert scores["colour_acc"] == scores["shape_acc"] == 1.0
    assert scores["direction_acc"] == 0.0 and scores["rows"][0]["direction_ok"] is False


def test_reversed_frames_flip_direction():
    clips, _ = _truth(16)
    for clip, (_, _, direction, _) in list(zip(clips, COMBOS))[::7]:
        assert J.measure(clip)["direction"] == direction
        assert J.measure(clip[::-1])["direction"] == OPPOSITE[direction]


def test_format_scores():
    clips, scores = _truth(16)
    assert re.fullmatch(r"judge: colour \d+% shape \d+% direction \d+% quick>slow \d+% "
                        r"\(n=96\)", J.format_scores(scores))
    still = J.judge(clips[:1], ["a red square"])
    assert "direction n/a quick>slow n/a (n=1)" in J.format_scores(still)


def test_motion_control():
    assert J.motion_control([0.0, 1.0, 2.0, 5.0], [0.1, 0.3, 0.4, 9.0]) == 1.0
    assert J.motion_control([0.0, 1.0, 2.0, 5.0], [3.0, 2.0, 1.0, 0.5]) == -1.0
    assert math.isnan(J.motion_control([1.0, 1.0], [0.0, 1.0]))
    assert math.isnan(J.motion_control([1.0, 2.0, 3.0], [0.1, math.nan, 0.3]))  # not found
    assert J.motion_control([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486833)  # scipy
    with pytest.raises(ValueError):
        J.motion_control([0.0, 1.0], [0.0])


def test_measured_motion_orders_speeds_through_flicker():
    """Shapes at 16 px moving 0, 0.5, 1 and 1.5 px per frame, with fresh noise in every
    frame (the flicker of samples): the tracked speeds keep the order; noise alone is nan."""
    rng = np.random.default_rng(0)
    speeds = (0.0, 2.0, 4.0, 6.0)  # px per frame at 64 px
    clips = [np.clip(demo.shape_clip("circle", demo.COLORS["blue"], "right", v, 16, 8,
                                     radius=demo.SHAPE_RADIUS)
                     + rng.normal(0, 12, (8, 16, 16, 3)), 0, 255).astype(np.uint8)
             for v in speeds]
    measured = J.measured_motion(clips)
    assert measured[0] < J.STILL and J.motion_control(speeds, measured) == 1.0, measured
    noise = rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8)
    assert math.isnan(J.measured_motion([noise])[0])
