"""The published recipe's data rules on real footage: official buckets, fps and area
filters, whole-clip caching (identity and a tiny random CogVideoX VAE), training windows
(drop latent 0, random start, multiple of pF), resume, task checks, bad-data guards."""

import dataclasses
import json
import logging
import os
import sys
import threading

import av
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import data_fixtures as fx  # noqa: E402  pylint: disable=wrong-import-position

from data_pipelines import DataError, check_task, encoders, footage, task_from_dict  # noqa: E402
from data_pipelines import buckets as bk  # noqa: E402
from data_pipelines import manifest, offline, shards, video  # noqa: E402
from data_pipelines import pipeline as P  # noqa: E402

RES, MULTIPLE = 64, 16  # footage at scale 1: only shapes_tiny (40x24) is below 64^2
SOURCES = ("natural", "synthetic")


def test_official_resolution_buckets():
    # generate_crop_size_list(num_patches=(res // 32)**2, 32, max_ratio=4), (w, h) -> (h, w)
    b256 = bk.resolution_buckets(256)
    assert b256[0] == (128, 512) and b256[-1] == (512, 128) and (256, 256) in b256
    assert all(h % 32 == 0 and w % 32 == 0 and h * w <= 256**2 for h, w in b256)
    assert all(max(h / w, w / h) <= 4 for h, w in b256)
    assert bk.closest_bucket(1080, 1920, b256) == (192, 320)
    # 39x22 patches (1.773) beat 40x22 (1.818) for 16:9: the recipe's 1248x704 output size.
    assert bk.closest_bucket(1080, 1920, bk.resolution_buckets(960)) == (704, 1248)
    assert bk.closest_bucket(1920, 1080, b256) == (320, 192)
    assert bk.closest_bucket(500, 500, b256) == (256, 256)
    assert bk.resolution_buckets(16, 16) == [(16, 16)]
    # Ties go to the larger width: a square item between 2:1 and 1:2 goes landscape.
    assert bk.closest_bucket(10, 10, [(16, 32), (32, 16)]) == (16, 32)


def test_window_rules():
    # cogvideox (T=4): 9 stored latents -> 8 usable; max_frames 24 -> 6; pF 4 -> 4
    assert bk.usable_latents(9, 4) == 8 and bk.usable_latents(17, 1) == 17
    assert bk.window_length(8, 24, 4, 2) == 6 and bk.window_length(8, 24, 4, 4) == 4
    assert bk.window_length(1, 24, 4, 2) == 0  # too short for one pF=2 step
    assert bk.window_length(17, 12, 1, 2) == 12 and bk.window_length(7, 12, 1, 2) == 6
    assert bk.window_length(17, 16, 1, 2, frame_buckets=(4, 8)) == 8
    assert bk.window_length(7, 16, 1, 1, frame_buckets=(8,)) == 0


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("footage")
    return str(root), footage.make_footage(str(root))


def test_footage_is_real_varied_media(media):
    root, paths = media
    info = {os.path.basename(p): video.probe(p) for p in paths}
    vids = {k: v for k, v in info.items() if v["media"] == "video"}
    aspects = {round(v["width"] / v["height"], 2) for v in vids.values()}
    assert {1.78, 1.0, 0.56} <= aspects
    assert {round(v["duration"], 1) for v in vids.values()} == {1.1, 2.2}
    assert {v["fps"] for v in vids.values()} == {6.0, 12.0, 24.0}
    codecs = set()
    for p in paths:
        if video.media_type(p) == "video":
            with av.open(p) as c:
                codecs.add(c.streams.video[0].codec_context.name)
    assert codecs == {"h264", "vp9"}
    stills = {os.path.splitext(k)[1]: v for k, v in info.items() if v["media"] == "image"}
    assert set(stills) == {".png", ".jpg"}
    assert len({round(v["width"] / v["height"], 2) for v in info.values()
                if v["media"] == "image"}) >= 2
    assert all(os.path.exists(os.path.splitext(p)[0] + ".txt") for p in paths)
    frames = video.read_frames(os.path.join(root, "synthetic", "shapes_square.webm"), 8, 2)
    assert np.abs(frames[1].astype(int) - frames[0]).mean() > 1  # things move


def _task(path, **kw):
    base = dict(resolution=RES, multiple=MULTIPLE, batch_size=2, read_threads=1,
                caption_keep_prob=1.0, motion_drop_prob=0.0)
    return P.Task(sources=tuple(P.Source(s, path) for s in SOURCES), **{**base, **kw})


def _stored(folder):
    """path -> all stored latents, read straight from the shards."""
    meta, examples = shards.read_prepared(folder)
    import grain  # pylint: disable=import-outside-toplevel

    src = grain.sources.ArrayRecordDataSource([os.path.join(folder, s) for s in meta["shards"]])
    return {os.path.basename(e["path"]): shards.deserialize(src[i])["latents"]
            for i, e in enumerate(examples)}


def _starts(stored, window):
    """Every index s with stored[:, s : s + F] == window."""
    f = window.shape[1]
    return [s for s in range(stored.shape[1] - f + 1)
            if np.array_equal(stored[:, s : s + f], window)]


def _draw_windows(task, stored, batches):
    """{file: set of window starts} over `batches` batches; checks every window."""
    it = P.make_iterator(task, 0, 1)
    scale = encoders.LATENT_ENCODERS[task.latent_encoder].spatial
    starts, lengths = {}, set()
    for _ in range(batches):
        batch = next(it)
        _, f, h, w = bk.parse_bucket_key(batch["bucket"])
        assert batch["latents"].shape[2:] == (f, h // scale, w // scale)
        assert f % task.temporal_multiple == 0 and batch["num_skipped"] == 0
        lengths.add(f)
        for path, lat in zip(batch["path"], batch["latents"]):
            found = _starts(stored[os.path.basename(path)], lat)
            assert found, (path, f)
            starts.setdefault(os.path.basename(path), set()).update(found)
    return starts, lengths, it


def _same_batches(task, it, n=3):
    state = json.loads(json.dumps(it.get_state()))  # checkpoints store it as JSON
    want = [next(it) for _ in range(n)]
    it2 = P.make_iterator(task, 0, 1)
    it2.set_state(state)
    for a in want:
        b = next(it2)
        assert a["bucket"] == b["bucket"] and list(a["path"]) == list(b["path"])
        for k in ("latents", "cap_feats", "cap_mask", "motion_score"):
            np.testing.assert_array_equal(a[k], b[k])


def test_identity_recipe(media, tmp_path, caplog, monkeypatch):
    root, _ = media
    monkeypatch.setattr(manifest, "_warned", set())  # another test may have warned already
    out = str(tmp_path / "prepared")
    caplog.set_level(logging.WARNING, logger="data_pipelines")
    summary = offline.prepare(root, out, resolution=RES, fps=8, multiple=MULTIPLE)
    # At 8 fps the 6 fps clip passes (6 >= 8 / 2); only the tiny clip is skipped.
    assert summary["skipped"] == {os.path.join(root, "synthetic", "shapes_tiny.mp4"): "too_small"}
    assert summary["skip_counts"] == {"too_small": 1}
    assert any("shapes_tiny.mp4" in r.getMessage() for r in caplog.records)
    meta, examples = shards.read_prepared(out)
    assert (meta["latent_temporal"], meta["latent_channels"], meta["max_duration"]) == (1, 3, 4.0)
    frames = {os.path.basename(e["path"]): e["frames"] for e in examples}
    # Whole clips from frame 0 at 8 fps: 2.2 s -> 17 frames, 1.1 s -> 8, images 1.
    assert frames == {"pan_landscape.mp4": 17, "pan_landscape_6fps.mp4": 17,
                      "pan_portrait.mp4": 8, "pan_square.webm": 8, "shapes_landscape.mp4": 8,
                      "shapes_portrait.webm": 17, "shapes_square.webm": 17,
                      "photo_landscape.png": 1, "photo_portrait.jpg": 1, "shapes_still.png": 1}
    stored = _stored(out)
    assert all(stored[k].shape[1] == n for k, n in frames.items())

    task = _task(out, fps=8, max_frames=12, temporal_multiple=2)
    plan = P.plan_task(task)
    keys = [bk.parse_bucket_key(b) for b in plan.groups]
    assert len({(h, w) for _, _, h, w in keys}) == 3  # 16:9, 1:1, 9:16
    assert {f for _, f, _, _ in keys} == {12, 8}  # long clips: 12 of 17; short: all 8
    starts, lengths, it = _draw_windows(task, stored, 30)
    assert lengths == {12, 8}
    long_starts = starts.get("shapes_square.webm", set()) | starts.get("pan_landscape.mp4", set())
    assert len(long_starts) > 2  # a fresh window each time a clip is drawn
    _same_batches(task, it)

    image = _task(out, media="image", fps=8)
    batch = next(P.make_iterator(image, 0, 1))
    assert batch["latents"].shape[:3] == (2, 3, 1)
    assert len({bk.parse_bucket_key(b)[2:] for b in P.plan_task(image).groups}) >= 2


def test_cogvideox_recipe(media, tmp_path):
    root, _ = media
    vae = encoders.make_random_cogvideox_vae(str(tmp_path / "vae"))
    out = str(tmp_path / "prepared")
    summary = offline.prepare(root, out, resolution=RES, fps=16, multiple=MULTIPLE,
                              latent_encoder="cogvideox", latent_encoder_path=vae)
    # At 16 fps the 6 fps clip is below half the target: skipped, as is the tiny one.
    assert summary["skipped"] == {os.path.join(root, "natural", "pan_landscape_6fps.mp4"):
                                  "low_fps",
                                  os.path.join(root, "synthetic", "shapes_tiny.mp4"): "too_small"}
    meta, examples = shards.read_prepared(out)
    assert {k: meta[k] for k in ("latent_encoder", "latent_encoder_path", "latent_channels",
                                 "latent_temporal", "latent_spatial", "fps", "cap_feat_dim")} == {
        "latent_encoder": "cogvideox", "latent_encoder_path": vae, "latent_channels": 16,
        "latent_temporal": 4, "latent_spatial": 8, "fps": 16, "cap_feat_dim": 384}
    # 2.2 s at 16 fps: 35 frames -> 33 = 4*8+1 -> 9 latents; 1.1 s: 17 -> 5; images: 1.
    frames = {os.path.basename(e["path"]): e["frames"] for e in examples}
    assert frames == {"pan_landscape.mp4": 9, "pan_portrait.mp4": 5, "pan_square.webm": 5,
                      "shapes_landscape.mp4": 5, "shapes_portrait.webm": 9,
                      "shapes_square.webm": 9, "photo_landscape.png": 1,
                      "photo_portrait.jpg": 1, "shapes_still.png": 1}
    stored = _stored(out)
    assert stored["pan_landscape.mp4"].shape == (16, 9, 48 // 8, 80 // 8)

    # max_frames 24 -> windows of 6 latents after dropping latent 0 (8 left of 9), pF 2;
    # short clips have 4 latents left -> 4.
    task = _task(out, fps=16, max_frames=24, temporal_multiple=2, latent_encoder="cogvideox")
    starts, lengths, it = _draw_windows(task, stored, 24)
    assert lengths == {6, 4}
    long_starts = starts.get("pan_landscape.mp4", set()) | starts.get("shapes_square.webm", set())
    assert min(long_starts) >= 1 and max(long_starts) <= 3  # latent 0 never in a window
    assert len(long_starts) > 1  # a fresh window each time the clip is drawn
    assert all(s == {1} for k, s in starts.items() if frames[k] == 5)
    _same_batches(task, it)
    image = next(P.make_iterator(dataclasses.replace(task, media="image"), 0, 1))
    assert image["latents"].shape[1:3] == (16, 1)


def _fake_prepared(folder, **overrides):
    """A prepared.json alone: check_task must not need more."""
    os.makedirs(folder, exist_ok=True)
    meta = {"resolution": RES, "fps": 16.0, "max_duration": 4.0, "multiple": MULTIPLE,
            "max_aspect": 4.0, "latent_encoder": "cogvideox", "latent_encoder_path": "",
            "latent_channels": 16, "latent_temporal": 4, "latent_spatial": 8,
            "caption_encoder": "minilm", "caption_encoder_path": "", "cap_feat_dim": 384,
            "record_format": shards.MAGIC.decode(), **overrides}
    with open(os.path.join(folder, shards.PREPARED_META), "w") as f:
        json.dump(meta, f)
    return folder


@pytest.mark.parametrize("change,field,words", [
    (dict(batch_size=0), "batch_size", ["must be > 0 (got 0)"]),
    (dict(resolution=-1), "resolution", ["got -1"]),
    (dict(fps=0.0), "fps", []),
    (dict(max_frames=0), "max_frames", []),
    (dict(multiple=0), "multiple", []),
    (dict(temporal_multiple=0), "temporal_multiple", [">= 1"]),
    (dict(frame_buckets=(3,), temporal_multiple=2), "frame_buckets", ["[3]"]),
    (dict(media="audio"), "media", ["'audio'"]),
    (dict(latent_encoder="vqgan"), "latent_encoder", ["'vqgan'", "cogvideox"]),
    (dict(caption_encoder="t5"), "caption_encoder", ["'t5'"]),
    (dict(resolution=128), "resolution", ["128", "prepared with 64"]),
    (dict(fps=8.0), "fps", ["8.0", "16.0"]),
    (dict(multiple=32), "multiple", []),
    (dict(latent_encoder="identity"), "latent_encoder", ["'identity'", "'cogvideox'"]),
    (dict(max_frames=65), "max_frames", ["65", "4 s (64 frames)", "--max-duration 4.0625"]),
])
def test_check_task_names_the_field(tmp_path, change, field, words):
    good = P.Task(sources=(P.Source("a", _fake_prepared(str(tmp_path / "a"))),), fps=16.0,
                  resolution=RES, multiple=MULTIPLE, max_frames=64, latent_encoder="cogvideox")
    check_task(good)
    with pytest.raises(ValueError) as err:
        check_task(dataclasses.replace(good, **change))
    assert str(err.value).startswith(f"{field}: "), str(err.value)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_check_task_sources_and_unknown_keys(tmp_path):
    prep = _fake_prepared(str(tmp_path / "a"))
    raw = str(tmp_path / "raw")
    os.makedirs(raw)
    d = {"sources": {"a": {"path": prep}}, "resolution": RES, "fps": 16.0, "multiple": MULTIPLE,
         "max_frames": 64, "latent_encoder": "cogvideox"}
    check_task(task_from_dict(d))
    with pytest.raises(ValueError, match=r"^unknown field\(s\) \['bogus'\]; allowed: \[.*'fps'"):
        task_from_dict({**d, "bogus": 1})
    with pytest.raises(ValueError, match=r"^sources.a: unknown field\(s\) \['wieght'\]"):
        task_from_dict({**d, "sources": {"a": {"path": prep, "wieght": 2}}})
    cases = [
        ({"a": {"path": prep, "weight": -1.0}}, "weight -1.0"),
        ({"a": {"path": prep, "weight": 0.0}}, "all weights are 0"),
        ({"a": {"path": str(tmp_path / "nope")}}, "does not exist"),
        ({"a": {"path": prep}, "b": {"path": raw}}, "all prepared folders or all raw"),
        ({"b": {"path": raw}}, "prepare the data first"),  # raw media + cogvideox
        ({"c": {"path": _fake_prepared(str(tmp_path / "c"), record_format="npz")}},
         "prepared by an older version"),
    ]
    for sources, words in cases:
        with pytest.raises(ValueError) as err:
            check_task(task_from_dict({**d, "sources": sources}))
        msg = str(err.value)
        assert msg.startswith(("sources: ", "latent_encoder: ")) and words in msg, msg


def _raw_task(folder, **kw):
    return P.Task(sources=(P.Source("s", folder),), resolution=32, multiple=16, fps=8.0,
                  max_frames=8, batch_size=2, read_threads=1, **kw)


def _next_within(it, seconds):
    """next(it) in a daemon thread: a hang fails the test instead of blocking it."""
    out = {}
    thread = threading.Thread(target=lambda: out.update(r=_catch(lambda: next(it))), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"next() still running after {seconds} s"
    return out["r"]


def _catch(fn):
    try:
        return fn()
    except Exception as e:  # pylint: disable=broad-except
        return e


def test_all_bad_files_raise_data_error(tmp_path):
    folder = tmp_path / "bad"
    for i in range(3):  # headers survive (probe passes), the frames do not
        path = fx.truncate(fx.make_video(str(folder / f"cut{i}.webm"), 48, 24), keep=0.3)
        assert video.probe(path)["duration"] == pytest.approx(2.0, abs=0.1)
        with pytest.raises(video.DecodeError):
            video.read_frames(path, 8, 8)
    err = _next_within(P.make_iterator(_raw_task(str(folder)), 0, 1), 20)
    assert isinstance(err, DataError), err
    msg = str(err)
    for words in ("video task", "bucket video_8x32x32", "64 examples in a row", "source 's'",
                  "truncated"):
        assert words in msg, msg


def test_flaky_read_is_retried_not_skipped(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "ok"
    for i in range(2):
        fx.make_video(str(folder / f"clip{i}.mp4"), 24, 12)
    real, failed, lock = video.read_frames, set(), threading.Lock()

    def flaky(path, *args, **kwargs):
        if not str(path).startswith(str(folder)):  # an earlier test's reader thread, still
            return real(path, *args, **kwargs)     # prefetching in this worker
        with lock:
            first = path not in failed
            failed.add(path)
        if first:
            raise OSError("transient network file system error")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(video, "read_frames", flaky)
    caplog.set_level(logging.WARNING, logger="data_pipelines")
    it = P.make_iterator(_raw_task(str(folder)), 0, 1)
    for _ in range(3):
        batch = next(it)
        assert batch["num_skipped"] == 0 and batch["latents"].shape == (2, 3, 8, 32, 32)
    assert len(failed) == 2  # both files failed once and were read on the retry
    assert not [r for r in caplog.records if "skipping" in r.getMessage()]
