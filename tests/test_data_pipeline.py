"""Grain pipeline end to end on real files: buckets, bad files, prepare, mixing, resume."""

import json
import logging
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import data_fixtures as fx  # noqa: E402  pylint: disable=wrong-import-position

from data_pipelines import buckets as bk  # noqa: E402
from data_pipelines import cli, demo, manifest, offline, shards  # noqa: E402
from data_pipelines import pipeline as P  # noqa: E402

RES, FPS, FRAMES = 48, 8, 8  # buckets of <= 48x48 px, sides divisible by 16; 1 s windows


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Two sources of real files: landscape/portrait, 12/24/30 fps, VFR, gif, image, bad."""
    root = tmp_path_factory.mktemp("raw")
    a, b = root / "alpha", root / "beta"
    for i in range(4):
        fx.make_video(str(a / f"land{i}.mp4"), 48, 24)  # 2 s, 64x48
    for i in range(3):
        fx.make_video(str(a / f"port{i}.webm"), 48, 30, height=64, width=48)  # 1.6 s
    for i in range(2):
        fx.make_video(str(b / f"gif{i}.gif"), 24, 12, pix_fmt="gray")
        times = list(np.cumsum(np.r_[0, np.tile([0.02, 0.06], 20)]))
        fx.make_video(str(b / f"vfr{i}.mp4"), 41, 25, times=times)  # VFR, 1.6 s
        fx.make_video(str(b / f"rot{i}.mp4"), 30, 12, rotation=90)  # portrait via metadata
    for name in ("land0", "gif0"):
        d = a if name.startswith("land") else b
        (d / f"{name}.txt").write_text(f"caption of {name}")
    import PIL.Image  # pylint: disable=import-outside-toplevel

    PIL.Image.fromarray(fx.frames(1, 48, 64)[0]).save(a / "still.png")
    bad = fx.make_bad_files(str(b))
    bad["truncated"] = fx.truncate(fx.make_video(str(b / "trunc.webm"), 48, 24), keep=0.25)
    return root, bad


def _task(path, media="video", weights=(("alpha", 1.0), ("beta", 1.0)), **kw):
    base = dict(
        media=media,
        resolution=RES,
        fps=FPS,
        max_frames=FRAMES,
        frame_buckets=(FRAMES,),
        multiple=16,
        batch_size=4,
        caption_keep_prob=1.0,
        motion_drop_prob=0.0,
        image_motion_zero_prob=1.0,
        read_threads=1,
    )
    base.update(kw)
    return P.Task(sources=tuple(P.Source(n, str(path), w) for n, w in weights), **base)


def _check_batch(batch, task):
    media, f, h, w = bk.parse_bucket_key(batch["bucket"])
    assert media == batch["media"] == task.media
    assert batch["latents"].shape == (task.batch_size, 3, f, h, w)
    assert batch["latents"].dtype == np.float32
    assert -1.0 <= batch["latents"].min() and batch["latents"].max() <= 1.0
    bsz, length, dim = batch["cap_feats"].shape
    assert (bsz, dim) == (task.batch_size, 384) and length % 8 == 0
    assert batch["cap_mask"].shape == (bsz, length) and batch["cap_mask"].dtype == bool
    assert batch["cap_mask"][:, 0].all()
    assert batch["motion_score"].shape == (bsz,)
    assert (h, w) in bk.resolution_buckets(RES, 16) and h % 16 == 0 and w % 16 == 0


def batch_done(seen, batch):
    want = {"land0.mp4", "port0.webm", "gif0.gif", "vfr0.mp4", "rot0.mp4"}
    return batch is not None and want <= seen and batch["num_skipped"] == 4


def test_raw_pipeline_buckets_timestamps_and_bad_files(raw, caplog, monkeypatch):
    root, bad = raw
    monkeypatch.setattr(manifest, "_warned", set())  # earlier tests may have warned already
    task = _task(root)
    caplog.set_level(logging.WARNING, logger="data_pipelines")
    plan = P.plan_task(task)
    assert plan.skipped == {bad["corrupt"]: "unreadable", bad["empty"]: "unreadable",
                            bad["short"]: "too_short"}
    assert sorted(plan.groups) == ["video_8x32x48", "video_8x48x32"]  # landscape, portrait
    it = P.make_iterator(task, 0, 1)
    seen = set()
    for _ in range(40):  # until every kind of file was met and the truncated one hit
        if batch_done(seen, locals().get("batch")):
            break
        batch = next(it)
        _check_batch(batch, task)
        for path, clip in zip(batch["path"], batch["latents"]):
            seen.add(os.path.basename(path))
            if path.endswith(".mp4") and "land" in path:  # 24 fps source at 8 fps: every 3rd
                pixels = (np.moveaxis(clip, 0, -1) + 1) * 127.5
                idx = [fx.frame_index(p) for p in pixels]
                assert np.all(np.diff(idx) == 3), idx
            if "rot" in path:
                assert batch["bucket"] == "video_8x48x32"
    assert {"land0.mp4", "port0.webm", "gif0.gif", "vfr0.mp4", "rot0.mp4"} <= seen
    assert "still.png" not in seen  # images are a task of their own
    # The truncated file fails at decode time: skipped, warned once, counted.
    assert batch["num_skipped"] == 4
    for path in bad.values():
        assert sum(path in r.getMessage() for r in caplog.records) == 1, path


def test_image_task(raw):
    task = _task(raw[0], media="image", weights=(("alpha", 1.0),), batch_size=2)
    batch = next(P.make_iterator(task, 0, 1))
    assert batch["latents"].shape == (2, 3, 1, 32, 48) and batch["media"] == "image"
    assert (batch["motion_score"] == 0.0).all()


@pytest.fixture(scope="module")
def prepared(raw, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prepared"))
    cli.main(
        [
            "prepare",
            "--input",
            str(raw[0]),
            "--output",
            out,
            "--resolution",
            str(RES),
            "--fps",
            str(FPS),
            "--max-duration",
            "1.5",
            "--multiple",
            "16",
            "--records-per-shard",
            "8",
        ]
    )
    return out


def test_prepare_writes_shards_and_manifest(prepared, raw):
    meta, examples = shards.read_prepared(prepared)
    assert meta["num_examples"] == len(examples) == 15  # 13 good + 1 short video, 1 image
    assert len(meta["shards"]) == 2 and meta["cap_feat_dim"] == 384
    bad = raw[1]
    assert meta["skipped"] == {bad[k]: "unreadable" for k in ("corrupt", "empty", "truncated")}
    assert meta["skip_counts"] == {"unreadable": 3}
    # Whole clips from frame 0, at most 1.5 s: 12 frames at 8 fps; the 0.2 s clip has 1
    # frame (kept: whether it fits a window is the training task's call).
    frames = {os.path.basename(e["path"]): e["frames"] for e in examples}
    assert frames.pop("short.mp4") == frames.pop("still.png") == 1
    assert set(frames.values()) == {12}  # every other clip lasts 1.6 s or more
    recs = manifest.read_manifest(os.path.join(prepared, "manifest.jsonl"))
    scores = {os.path.basename(r["path"]): r["motion_score"] for r in recs if r["media"] == "video"}
    assert all(s >= 0 for s in scores.values())
    assert {e["caption"] for e in examples} >= {"caption of land0", "caption of gif0", "port1"}
    task = _task(prepared, max_frames=FRAMES)
    plan = P.plan_task(task)
    assert plan.skipped == {bad["short"]: "too_short"}
    batch = next(P.make_iterator(task, 0, 1))
    _check_batch(batch, task)
    with pytest.raises(ValueError, match="max_frames: 16 frames at 8 fps need 2 s"):
        P.plan_task(_task(prepared, max_frames=16, frame_buckets=()))


def _count_sources(it, n_batches):
    counts = {}
    for _ in range(n_batches):
        for s in next(it)["source"]:
            counts[s] = counts.get(s, 0) + 1
    return counts


def test_mixing_matches_weights(prepared):
    # alpha's clips are in both buckets, beta's mostly in one: proportions must still hold.
    weights = {"alpha": 0.75, "beta": 0.25}
    task = _task(prepared, weights=tuple(weights.items()))
    counts = _count_sources(P.make_iterator(task, 0, 1), 500)  # 2,000 samples
    n = sum(counts.values())
    chi2 = sum((counts[k] - n * w) ** 2 / (n * w) for k, w in weights.items())
    assert chi2 < 6.63, (counts, chi2)  # 1 dof, p = 0.01; weights 0.7/0.3 give chi2 ~ 24


def _same(a, b):
    assert a["bucket"] == b["bucket"] and list(a["path"]) == list(b["path"])
    for k in ("latents", "cap_feats", "cap_mask", "motion_score"):
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_restores_exact_next_batch(prepared, workers):
    task = _task(prepared, num_workers=workers, caption_keep_prob=0.8, motion_drop_prob=0.3)
    it = P.make_iterator(task, 0, 1)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # checkpoints store it as JSON
    expected = [next(it) for _ in range(3)]
    if workers:
        it.close()
    it2 = P.make_iterator(task, 0, 1)
    it2.set_state(state)
    for want in expected:
        _same(next(it2), want)
    if workers:
        it2.close()


def test_resume_raw_path(raw):
    task = _task(raw[0], caption_keep_prob=0.5)
    it = P.make_iterator(task, 0, 1)
    next(it), next(it)
    state = it.get_state()
    want = next(it)
    it2 = P.make_iterator(task, 0, 1)
    it2.set_state(state)
    _same(next(it2), want)


def test_hosts_share_bucket_sequence_and_split_clips(prepared):
    task = _task(prepared)
    hosts = [P.make_iterator(task, i, 2) for i in range(2)]
    paths = [set(), set()]
    for _ in range(12):
        b0, b1 = next(hosts[0]), next(hosts[1])
        assert b0["bucket"] == b1["bucket"]  # one global batch shape per step
        paths[0] |= set(b0["path"])
        paths[1] |= set(b1["path"])
    land = {p for p in paths[0] | paths[1] if "land" in p}
    assert len(land) == 4 and not (paths[0] & paths[1] & land)


def test_demo_dataset(demo_data, tmp_path):
    """The session's demo (command 1's sizes: 32-px raw clips of 8 frames at 8 fps, one
    clip per caption where command 1 makes 2)."""
    recs = manifest.read_manifest(str(demo_data / "raw" / "manifest.jsonl"))
    by = {}
    for r in recs:
        by.setdefault((r["source"], r["media"]), []).append(r)
    assert {k: len(v) for k, v in by.items()} == {
        ("natural", "video"): 44,
        ("natural", "image"): 4,
        # random travels and positions of 48 combinations (4 colours x 3 shapes x 4
        # directions): 1 each "slowly" and "quickly", UNWORDED_COPIES with no speed word
        ("synthetic", "video"): 48 * (2 + demo.UNWORDED_COPIES),
        ("synthetic", "image"): 12,
    }
    heldout = manifest.read_manifest(str(demo_data / "raw_heldout" / "manifest.jsonl"))
    assert {(r["source"], r["media"]) for r in heldout} == {("synthetic", "video")}
    assert {r["caption"] for r in heldout} == {r["caption"] for r in recs
                                               if r["source"] == "synthetic" and "moving" in r["caption"]}
    assert len(heldout) == 144
    assert all(r["duration"] == pytest.approx(1.0, abs=0.05) for r in recs if r["media"] == "video")
    assert {r["width"] for r in recs} == {32}
    caps = {r["caption"] for r in recs}
    assert {"a red square moving left quickly", "a red square moving left"} <= caps
    assert "a photo of a cat, the camera pans right slowly" in caps
    total = sum(os.path.getsize(r["path"]) for r in recs)
    assert total < 2_000_000
    # The same prepare path as user data, on a slice of it (the full set takes ~20 s).
    sub = [r for r in recs if "red_square" in r["path"]
           and r["path"].endswith(("_0.webm", "_still.png")) or "chelsea" in r["path"]]
    manifest.write_manifest(str(tmp_path / "sub.jsonl"), sub)
    summary = offline.prepare(
        str(tmp_path / "sub.jsonl"),
        str(tmp_path / "prepared"),
        resolution=16,
        fps=8,
        multiple=16,
        system_prompts=demo.DEMO_PROMPTS,
    )
    assert summary["num_examples"] == len(sub) and not summary["skipped"]
    assert {e["frames"] for e in shards.read_prepared(str(tmp_path / "prepared"))[1]} == {1, 8}
    meta, examples = shards.read_prepared(str(tmp_path / "prepared"))
    scores = {e["caption"]: e["motion_score"] for e in examples}
    assert scores["a red square moving left quickly"] > scores["a red square moving left slowly"]
    assert scores["a photo of a cat, the camera is still"] < 0.1
    batch = next(P.make_iterator(demo.demo_task(str(tmp_path), batch_size=4, resolution=16,
                                                frames=8), 0, 1))
    assert batch["latents"].shape == (4, 3, 8, 16, 16) and meta["system_prompts"] == {
        "natural": demo.DEMO_PROMPTS["natural"],
        "synthetic": demo.DEMO_PROMPTS["synthetic"],
    }
