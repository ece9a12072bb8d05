"""Measures clips/s through the task pipeline: raw mp4 (decode + bucket) vs ArrayRecord.

  python benchmarks/data_loading.py [--clips 16] [--batches 20] [--workers 0]

Writes synthetic 640x360 h264 clips (6 s, 24 fps) to a temp folder, then times batches of
16 frames at 8 fps in 256 px buckets, (a) decoded on the fly, (b) from a prepared cache.
Prints a table; it measures, it never fails on time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from data_pipelines import demo, offline, pipeline, video


def _clips(folder: str, n: int) -> None:
    os.makedirs(os.path.join(folder, "bench"), exist_ok=True)
    photo = demo._photo("astronaut")  # pylint: disable=protected-access
    for i in range(n):
        frames = demo.camera_clip(photo, list(demo.DIRECTIONS)[i % 4], 0.5, size=360, frames=144)
        frames = np.concatenate([frames, frames[:, :, :280]], axis=2)  # 640x360
        video.write_video(os.path.join(folder, "bench", f"clip{i}.mp4"), frames, 24, crf=23)


def _rate(task: pipeline.Task, batches: int) -> float:
    it = pipeline.make_iterator(task, 0, 1)
    next(it)  # start-up (workers, caption model) is not what we measure
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * task.batch_size / (time.perf_counter() - t0)
    if task.num_workers:
        it.close()
    return rate


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        _clips(os.path.join(tmp, "raw"), args.clips)
        write_s = time.perf_counter() - t0
        kw = dict(
            resolution=256,
            fps=8.0,
            max_frames=16,
            frame_buckets=(16,),
            batch_size=4,
            caption_keep_prob=1.0,
            num_workers=args.workers,
        )
        raw = pipeline.Task(sources=(pipeline.Source("bench", os.path.join(tmp, "raw")),), **kw)
        raw_rate = _rate(raw, args.batches)
        summary = offline.prepare(
            os.path.join(tmp, "raw"),
            os.path.join(tmp, "prep"),
            resolution=256,
            fps=8.0,
            max_frames=16,
            frame_buckets=(16,),
        )
        cached = pipeline.Task(sources=(pipeline.Source("bench", os.path.join(tmp, "prep")),), **kw)
        cache_rate = _rate(cached, args.batches)
    print(
        f"cpus={os.cpu_count()} workers={args.workers} clips: {args.clips} x 640x360 6 s "
        f"h264 (written in {write_s:.1f}s); batches of 4 x 16 frames @ 8 fps, 256 px"
    )
    print("| path                         | clips/s |")
    print("|------------------------------|---------|")
    print(f"| mp4 decode + bucket (PyAV)   | {raw_rate:7.1f} |")
    print(f"| ArrayRecord cache            | {cache_rate:7.1f} |")
    print(
        f"prepare (motion + encode + write): {summary['seconds']:.1f}s for "
        f"{summary['num_examples']} clips"
    )


if __name__ == "__main__":
    main()
