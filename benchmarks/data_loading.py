"""Measures clips/s through the task pipeline: raw media (decode + bucket) vs ArrayRecord.

  python benchmarks/data_loading.py [--clips 16] [--batches 20] [--workers 0] [--scale 4]

Two data sets, each timed (a) decoded on the fly and (b) from a `prepare`d cache
(identity latents, whole clips stored; training draws random windows):
  uniform  synthetic 640x360 h264 clips (6 s, 24 fps): one bucket, 16 frames at 8 fps, 256 px
  footage  data_pipelines.footage at --scale (4: 640x360, 384x384, 288x512 clips at 24/12
           fps, 1.1 s and 2.2 s): mixed buckets (3 aspects x 2 window lengths), windows
           of up to 24 frames at 16 fps in steps of 2 (pF), 256 px
Prints a table; it measures, it never fails on time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from data_pipelines import demo, footage, offline, pipeline, video


def _clips(folder: str, n: int) -> None:
    os.makedirs(os.path.join(folder, "bench"), exist_ok=True)
    photo = demo._photo("astronaut")  # pylint: disable=protected-access
    for i in range(n):
        frames = demo.camera_clip(photo, list(demo.DIRECTIONS)[i % 4], 0.5, size=360, frames=144)
        frames = np.concatenate([frames, frames[:, :, :280]], axis=2)  # 640x360
        video.write_video(os.path.join(folder, "bench", f"clip{i}.mp4"), frames, 24, crf=23)


def _rate(task: pipeline.Task, batches: int) -> tuple[float, int]:
    """(clips/s, number of buckets seen) over `batches` batches after a warm-up batch."""
    it = pipeline.make_iterator(task, 0, 1)
    buckets = {next(it)["bucket"]}  # start-up (workers, caption model) is not measured
    t0 = time.perf_counter()
    for _ in range(batches):
        buckets.add(next(it)["bucket"])
    rate = batches * task.batch_size / (time.perf_counter() - t0)
    if task.num_workers:
        it.close()
    return rate, len(buckets)


def _measure(raw: str, prep: str, sources: tuple[str, ...], batches: int, prepare_kw: dict,
             task_kw: dict) -> dict:
    """Rates of the raw folder and of its prepared cache, plus the prepare summary."""
    def task(path):
        return pipeline.Task(sources=tuple(pipeline.Source(s, path) for s in sources), **task_kw)

    raw_rate, _ = _rate(task(raw), batches)
    summary = offline.prepare(raw, prep, **prepare_kw)
    cache_rate, seen = _rate(task(prep), batches)
    return {"raw": raw_rate, "cache": cache_rate, "buckets": len(pipeline.plan_task(
        task(prep)).groups), "seen": seen, "summary": summary}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--scale", type=float, default=4.0, help="footage size scale")
    args = ap.parse_args(argv)
    common = dict(batch_size=4, caption_keep_prob=1.0, num_workers=args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _clips(os.path.join(tmp, "raw"), args.clips)
        write_s = time.perf_counter() - t0
        uniform = _measure(
            os.path.join(tmp, "raw"), os.path.join(tmp, "prep"), ("bench",), args.batches,
            dict(resolution=256, fps=8.0),
            dict(resolution=256, fps=8.0, max_frames=16, frame_buckets=(16,), **common))
        footage.make_footage(os.path.join(tmp, "footage"), scale=args.scale)
        mixed = _measure(
            os.path.join(tmp, "footage"), os.path.join(tmp, "footage_prep"),
            ("natural", "synthetic"), args.batches, dict(resolution=256, fps=16.0),
            dict(resolution=256, fps=16.0, max_frames=24, temporal_multiple=2, **common))
    print(f"cpus={os.cpu_count()} workers={args.workers}; batches of 4, {args.batches} timed "
          f"after one warm-up; identity latents")
    print(f"| {'data':<53} | raw decode clips/s | ArrayRecord clips/s | buckets (seen) |")
    print(f"|{'-' * 55}|-------------------:|--------------------:|---------------:|")
    rows = (
        (f"{args.clips} x 640x360 6 s h264 (written {write_s:.1f}s), 16 f @ 8 fps", uniform),
        (f"footage x{args.scale:g}: 3 aspects, 2 lengths, <=24 f @ 16 fps", mixed),
    )
    for name, r in rows:
        print(f"| {name:<53} | {r['raw']:18.1f} | {r['cache']:19.1f} | "
              f"{r['buckets']:>10} ({r['seen']}) |")
    for name, r in (("uniform", uniform), ("footage", mixed)):
        s = r["summary"]
        print(f"prepare {name}: {s['seconds']:.1f}s for {s['num_examples']} items; "
              f"skipped {s['skip_counts'] or 'none'}")


if __name__ == "__main__":
    main()
