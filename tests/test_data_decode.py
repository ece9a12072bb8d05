"""Decoding real encoded files: timestamps, codecs, VFR, rotation, bad files; buckets; motion."""

import math
import os
import sys

import av
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import data_fixtures as fx  # noqa: E402  pylint: disable=wrong-import-position

from data_pipelines import buckets as bk  # noqa: E402
from data_pipelines import demo, motion, video  # noqa: E402


def _true_times(path):
    """Every frame's presentation time, decoded independently of the code under test."""
    with av.open(path) as c:
        return np.array([f.time for f in c.decode(video=0)])


def _check_sampling(path, fps, n, start):
    times = _true_times(path)
    got = video.read_frames(path, fps, n, start=start)
    assert got.shape[0] == n
    for i, img in enumerate(got):
        target = times[0] + start + i / fps
        dist = np.abs(times - target)
        nearest = set(np.flatnonzero(dist <= dist.min() + 1e-6))  # ties: either is right
        assert fx.frame_index(img) in nearest, (path, i, target, fx.frame_index(img), nearest)


@pytest.mark.parametrize(
    "ext,src_fps,fps,start,kwargs",
    [
        (".mp4", 24, 8, 0.0, {}),
        (".mp4", 24, 10, 1.3, {}),  # seek to the keyframe before 1.3 s
        (".webm", 30, 9, 0.5, {}),
        (".mkv", 12, 5, 0.0, {}),
        (".gif", 12, 5, 0.4, {"pix_fmt": "gray"}),
    ],
)
def test_samples_nearest_frame_at_target_fps(tmp_path, ext, src_fps, fps, start, kwargs):
    n_src = min(50, int(src_fps * 2.4))
    path = fx.make_video(str(tmp_path / f"clip{ext}"), n_src, src_fps, **kwargs)
    info = video.probe(path)
    assert (info["width"], info["height"]) == (64, 48)
    assert info["duration"] == pytest.approx(n_src / src_fps, abs=0.1)
    n = video.available_frames(info["duration"] - start, fps)
    _check_sampling(path, fps, n, start)


def test_variable_frame_rate(tmp_path):
    gaps = np.where(np.arange(39) % 3 == 0, 0.09, 0.03)  # irregular: 90 ms, 30 ms, 30 ms...
    times = list(np.r_[0.0, np.cumsum(gaps)])
    path = fx.make_video(str(tmp_path / "vfr.mp4"), 40, 20, times=times)
    assert np.allclose(_true_times(path) - _true_times(path)[0], times, atol=2e-3)
    _check_sampling(path, 10, 15, 0.0)
    _check_sampling(path, 7, 6, 0.35)


@pytest.mark.parametrize("rotation,corner", [(90, "bottom_left"), (-90, "top_right")])
def test_rotation_metadata(tmp_path, rotation, corner):
    path = fx.make_video(str(tmp_path / "rot.mp4"), 10, 10, rotation=rotation)
    info = video.probe(path)
    assert (info["width"], info["height"], info["rotation"]) == (48, 64, rotation)
    img = video.read_frames(path, 10, 1)[0]
    assert img.shape == (64, 48, 3)
    white = img[..., 0] > 200  # the block drawn at the coded top-left corner
    ys, xs = np.nonzero(white)
    if corner == "bottom_left":  # CCW 90: coded top-left shows bottom-left
        assert ys.min() > 50 and xs.max() < 10
    else:  # CW 90: coded top-left shows top-right
        assert ys.max() < 10 and xs.min() > 38


def test_bad_files_raise_decode_error(tmp_path):
    bad = fx.make_bad_files(str(tmp_path))
    for kind in ("corrupt", "empty"):
        with pytest.raises(video.DecodeError):
            video.probe(bad[kind])
    short = video.probe(bad["short"])
    assert short["duration"] == pytest.approx(0.2, abs=0.05)
    assert video.available_frames(short["duration"], 8) == 1
    path = fx.truncate(fx.make_video(str(tmp_path / "trunc.webm"), 48, 24), keep=0.3)
    video.probe(path)  # the header survives the cut ...
    with pytest.raises(video.DecodeError):  # ... the frames after it do not
        video.read_frames(path, 8, 8, start=1.0)


def test_resolution_buckets_and_crop():
    bks = bk.resolution_buckets(256, 32)
    for h, w in bks:
        assert h % 32 == 0 and w % 32 == 0
        assert 0.75 * 256**2 <= h * w <= 256**2  # the staircase under (256 / 32)**2 patches
        assert max(h / w, w / h) <= 4.0 + 1e-6
    assert max(w / h for h, w in bks) == pytest.approx(4.0)
    assert min(w / h for h, w in bks) == pytest.approx(0.25)
    h, w = bk.closest_bucket(1080, 1920, bks)
    assert abs(math.log(w / h) - math.log(16 / 9)) < 0.1
    assert bk.closest_bucket(500, 4000, bks) == (128, 512)  # beyond 4:1 clamps to 4:1
    assert bk.closest_bucket(1920, 1080, bks) == bk.closest_bucket(1080, 1920, bks)[::-1]
    out = bk.resize_crop(np.zeros((3, 1080, 1920, 3), np.uint8), h, w)
    assert out.shape == (3, h, w, 3)
    # Cover then centre crop: a centred 16:9 box keeps its centre.
    img = np.zeros((1, 90, 160, 3), np.uint8)
    img[:, 40:50, 75:85] = 255
    out = bk.resize_crop(img, 64, 64)[0, ..., 0]
    assert out[32, 32] == 255 and out[0, 0] == 0 and out[32, 5] == 0


def test_motion_score_orders_motion(tmp_path):
    scores = {}
    for name, speed in (("still", 0.0), ("slow", 1.0), ("fast", 3.0)):
        path = str(tmp_path / f"{name}.mp4")
        video.write_video(
            path, demo.shape_clip("square", (230, 40, 40), "left", speed, size=64, frames=24), 8
        )
        scores[name] = motion.motion_score(path, video.probe(path)["duration"])
    assert scores["still"] < 0.05
    assert scores["still"] < scores["slow"] < scores["fast"]
    # 3 px/frame at 64 px, 4 frames per 0.5 s, in units of a 576-px frame: the flow on the
    # object is ~108 px; it covers a ~1/16 of the frame, so the mean lies well above 1.
    assert 1.0 < scores["fast"] < 108
