"""`lumina-jax prepare`: raw media -> motion scores -> latents + caption features in shards.

One clip per file: the first `frames` frames at the target fps (start 0), in the bucket
the training pipeline would choose. Output folder: `manifest.jsonl` (the input records
with motion scores), ArrayRecord shards + `examples.jsonl` + `null_captions.npz` +
`prepared.json` (see shards.py). Train on it with `Source(name, path=<output folder>)`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time

import numpy as np

from data_pipelines import buckets as bk
from data_pipelines import encoders, manifest, motion, pipeline, shards, video

log = logging.getLogger("data_pipelines")


def _with_motion(rec: dict) -> dict | None:
    if rec["media"] != "video" or "motion_score" in rec:
        return rec
    try:
        return {**rec, "motion_score": round(motion.motion_score(rec["path"], rec["duration"]), 4)}
    except Exception as e:  # pylint: disable=broad-except
        manifest.warn_skip(rec["path"], f"unreadable ({e})")
        return None


def _pixels(clip: dict, fps: float) -> np.ndarray | None:
    media, f, h, w = bk.parse_bucket_key(clip["bucket"])
    try:
        if media == "image":
            frames = video.read_image(clip["path"])[None]
        else:
            frames = video.read_frames(clip["path"], fps, f, start=0.0)
        return bk.resize_crop(frames, h, w)
    except Exception as e:  # pylint: disable=broad-except
        manifest.warn_skip(clip["path"], f"unreadable ({e})")
        return None


def prepare(
    input_path: str,
    output: str,
    *,
    resolution: int = 256,
    fps: float = 8.0,
    max_frames: int = 32,
    frame_buckets: tuple[int, ...] = (),
    multiple: int = 32,
    max_aspect: float = 4.0,
    latent_encoder: str = "identity",
    caption_encoder: str = "minilm",
    system_prompt: str = encoders.DEFAULT_SYSTEM_PROMPT,
    system_prompts: dict[str, str] | None = None,
    records_per_shard: int = 1024,
    workers: int | None = None,
) -> dict:
    """Prepares a folder or manifest into `output`; returns a summary dict.

    `system_prompts` maps source name -> prompt (others get `system_prompt`).
    """
    t0 = time.time()
    workers = workers or os.cpu_count() or 1
    records, skipped = manifest.load_input(input_path)
    # OpenCV and FFmpeg release the GIL, so threads use every core.
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        scored = list(pool.map(_with_motion, records))
    skipped += [r["path"] for r, s in zip(records, scored) if s is None]
    records = [s for s in scored if s is not None]
    os.makedirs(output, exist_ok=True)
    manifest.write_manifest(os.path.join(output, "manifest.jsonl"), records)

    prompts = {r["source"]: (system_prompts or {}).get(r["source"], system_prompt) for r in records}
    clips = []
    for media in ("video", "image"):
        task = pipeline.Task(
            sources=(),
            media=media,
            resolution=resolution,
            fps=fps,
            max_frames=max_frames,
            frame_buckets=tuple(frame_buckets),
            multiple=multiple,
            max_aspect=max_aspect,
        )
        for name, prompt in prompts.items():
            src = pipeline.Source(name, input_path, system_prompt=prompt)
            clips += pipeline.assign_buckets(
                task, [r for r in records if r["source"] == name], src, skipped
            )

    latent = encoders.LATENT_ENCODERS[latent_encoder]()
    captions = encoders.get_caption_encoder(caption_encoder)
    writer = shards.ShardWriter(output, records_per_shard)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(clips), 64):
            chunk = clips[start : start + 64]
            pixels = list(pool.map(lambda c: _pixels(c, fps), chunk))
            feats = captions.encode([c["system_prompt"] + c["caption"] for c in chunk])
            for clip, px, (cap, n) in zip(chunk, pixels, feats):
                if px is None:
                    skipped.append(clip["path"])
                    continue
                writer.write(
                    shards.serialize(latent.encode(px), cap, n, clip["motion_score"]),
                    {
                        "source": clip["source"],
                        "media": clip["bucket"].split("_")[0],
                        "bucket": clip["bucket"],
                        "caption": clip["caption"],
                        "path": clip["path"],
                        "motion_score": clip["motion_score"],
                    },
                )
    null = {}
    for name, prompt in prompts.items():
        ((cap, n),) = captions.encode([prompt])
        null[name], null[name + "__len"] = cap.astype(np.float16), np.int32(n)
    np.savez(os.path.join(output, shards.NULL_CAPTIONS), **null)
    summary = {
        "resolution": resolution,
        "fps": fps,
        "max_frames": max_frames,
        "frame_buckets": list(frame_buckets),
        "multiple": multiple,
        "max_aspect": max_aspect,
        "latent_encoder": latent_encoder,
        "latent_channels": latent.channels,
        "caption_encoder": caption_encoder,
        "cap_feat_dim": encoders.CAPTION_DIMS[caption_encoder],
        "system_prompts": prompts,
        "skipped": sorted(set(skipped)),
    }
    writer.close(summary)
    summary.update(num_examples=writer.count, seconds=round(time.time() - t0, 2))
    log.info(
        "prepared %d examples into %s in %.1fs (%d files skipped)",
        writer.count,
        output,
        summary["seconds"],
        len(summary["skipped"]),
    )
    return summary
