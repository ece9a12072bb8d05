"""`lumina-jax prepare`: raw media -> motion scores -> latents + caption features in shards.

As the official cache (REFERENCE.md section 7): each video is encoded WHOLE from frame 0
up to `max_duration` seconds, sampled at the target fps; a latent encoder that compresses
time T-fold (cogvideox: 4) takes the largest T*k+1 frames that fit in one call, and all
1+k latents are stored (training drops latent 0 and draws windows). Images are one frame.
Each item is resized and centre-cropped into the resolution bucket closest to its aspect
ratio. Skipped, warned once per file and counted by reason in the summary: unreadable,
too_small (area below resolution**2: no upscaling), low_fps (below half the target fps),
too_short (no latent left after latent 0), and for folders unknown_extension,
caption_without_media, bad_caption (see manifest.scan).

Output folder: `manifest.jsonl` (the used records, with motion scores), ArrayRecord
shards + `examples.jsonl` + `null_captions.npz` + `prepared.json` (see shards.py).
Train on it with `Source(name, path=<output folder>)`. It is written as `<output>.tmp-<pid>`
and renamed into place at the end, so a killed prepare leaves the previous folder intact
(the next prepare deletes the leftover); input with no usable media raises DataError.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import re
import shutil
import time

import numpy as np

from data_pipelines import buckets as bk
from data_pipelines import encoders, manifest, motion, shards, video
from data_pipelines.manifest import DataError
from lumina_jax.train.guard import process_alive

log = logging.getLogger("data_pipelines")


def frames_to_encode(rec: dict, fps: float, max_duration: float, temporal: int) -> int:
    """Frames sampled from frame 0 (images: 1); 0 if the clip gives no usable latent."""
    if rec["media"] == "image":
        return 1
    n = video.available_frames(min(rec["duration"], max_duration), fps)
    if temporal > 1:  # T*k+1 frames -> 1+k latents; latent 0 alone is not usable
        return (n - 1) // temporal * temporal + 1 if n > temporal else 0
    return n


def _with_motion(rec: dict) -> dict | str:
    """The record with its motion score, or the reason it cannot be read."""
    if rec["media"] != "video" or "motion_score" in rec:
        return rec
    try:
        return {**rec, "motion_score": round(motion.motion_score(rec["path"], rec["duration"]), 4)}
    except Exception as e:  # pylint: disable=broad-except
        return f"{type(e).__name__}: {e}"


def _pixels(item: dict, fps: float) -> np.ndarray | str:
    """uint8 [F, H, W, 3] in the item's bucket, or the reason it cannot be read."""
    try:
        if item["media"] == "image":
            frames = video.read_image(item["path"])[None]
        else:
            frames = video.read_frames(item["path"], fps, item["frames"], start=0.0)
        return bk.resize_crop(frames, item["bucket_hw"][0], item["bucket_hw"][1])
    except Exception as e:  # pylint: disable=broad-except
        return f"{type(e).__name__}: {e}"


# What prepare writes into its output; anything else there would be lost by the swap.
_OWN_FILES = re.compile("|".join(re.escape(n) for n in (
    "manifest.jsonl", "manifest.jsonl.tmp", shards.EXAMPLES, shards.NULL_CAPTIONS,
    shards.PREPARED_META)) + r"|shard-\d+\.array_record")


def _check_output(output: str) -> None:
    """Cleans up after a killed prepare of `output` (deletes its staging folder; if it was
    killed between the two renames, puts the previous result back), then refuses an
    `output` that prepare cannot replace whole without losing someone's files."""
    parent, base = os.path.split(output)
    os.makedirs(parent, exist_ok=True)
    for name in sorted(os.listdir(parent)):
        stem, _, pid = name.rpartition("-")
        if stem not in (base + ".tmp", base + ".old") or not pid.isdigit() or (
                int(pid) != os.getpid() and process_alive(pid)):  # ours: an earlier run's
            continue
        path = os.path.join(parent, name)
        if stem.endswith(".old") and not os.path.lexists(output):
            os.rename(path, output)
        else:
            log.info("deleting %s, left by a prepare that was stopped", path)
            shutil.rmtree(path)
    if not os.path.lexists(output):
        return
    if not os.path.isdir(output):
        raise DataError(f"output {output} is a file: give a folder path")
    foreign = sorted(n for n in os.listdir(output) if not _OWN_FILES.fullmatch(n))
    if foreign:
        raise DataError(f"output {output} holds files prepare did not write ("
                        f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}) and "
                        f"prepare replaces the folder whole: give a new or empty folder, or "
                        f"move those files out")


@contextlib.contextmanager
def _staged(output: str):
    """Yields a fresh sibling folder to write into; on a clean exit it replaces `output`
    (old one moved aside, new one renamed in, old one deleted). On an error the staging
    folder is deleted, and after a kill the next prepare deletes it: either way `output`
    keeps the previous result (or stays absent)."""
    tmp, old = f"{output}.tmp-{os.getpid()}", f"{output}.old-{os.getpid()}"
    os.makedirs(tmp)  # same file system as output: the renames below are atomic
    try:
        yield tmp
        if os.path.lexists(output):
            os.rename(output, old)
        os.rename(tmp, output)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare(
    input_path: str,
    output: str,
    *,
    resolution: int = 256,
    fps: float = 8.0,
    max_duration: float = 4.0,
    multiple: int = 32,
    max_aspect: float = 4.0,
    latent_encoder: str = "identity",
    latent_encoder_path: str = "",
    caption_encoder: str = "minilm",
    caption_encoder_path: str = "",
    system_prompt: str = encoders.DEFAULT_SYSTEM_PROMPT,
    system_prompts: dict[str, str] | None = None,
    records_per_shard: int = 1024,
    workers: int | None = None,
) -> dict:
    """Prepares a folder or manifest into `output`; returns the summary: prepared.json's
    fields plus `seconds`.

    `system_prompts` maps source name -> prompt (others get `system_prompt`). Encoder
    paths go to encoders.get_latent_encoder / get_caption_encoder ("" = their default).
    """
    t0 = time.time()
    output = os.path.realpath(output)  # stage beside the real folder, not beside a link
    _check_output(output)  # before the slow part: a bad output fails at once
    workers = workers or os.cpu_count() or 1
    latent = encoders.get_latent_encoder(latent_encoder, latent_encoder_path)
    captions = encoders.get_caption_encoder(caption_encoder, caption_encoder_path)
    records, skipped = manifest.load_input(input_path)
    res_buckets = bk.resolution_buckets(resolution, multiple, max_aspect)
    items = []
    for rec in records:
        why = bk.skip_reason(rec, resolution, fps)
        n = 0 if why else frames_to_encode(rec, fps, max_duration, latent.temporal)
        if not why and n == 0:
            why = ("too_short", f"{rec['duration']:.2f} s at {fps:g} fps leaves no latent "
                                f"frame after the first")
        if why:
            manifest.skip(skipped, rec["path"], *why)
            continue
        hw = bk.closest_bucket(rec["height"], rec["width"], res_buckets)
        items.append({**rec, "frames": n, "bucket_hw": hw})

    # OpenCV and FFmpeg release the GIL, so threads use every core.
    with _staged(output) as folder, concurrent.futures.ThreadPoolExecutor(workers) as pool:
        scored = []
        for item, out in zip(items, pool.map(_with_motion, items)):
            if isinstance(out, str):
                manifest.skip(skipped, item["path"], "unreadable", out)
            else:
                scored.append(out)
        manifest.write_manifest(
            os.path.join(folder, "manifest.jsonl"),
            [{k: v for k, v in r.items() if k not in ("frames", "bucket_hw")} for r in scored],
        )
        prompts = {
            r["source"]: (system_prompts or {}).get(r["source"], system_prompt) for r in scored
        }
        writer = shards.ShardWriter(folder, records_per_shard)
        # Chunks of `workers` clips bound memory: whole clips are decoded at once.
        for start in range(0, len(scored), workers):
            chunk = scored[start : start + workers]
            pixels = list(pool.map(lambda it: _pixels(it, fps), chunk))
            feats = captions.encode([prompts[it["source"]] + it["caption"] for it in chunk])
            for item, px, (cap, n) in zip(chunk, pixels, feats):
                if isinstance(px, str):
                    manifest.skip(skipped, item["path"], "unreadable", px)
                    continue
                lat = latent.encode(px)
                writer.write(
                    shards.serialize(lat, cap, n, item.get("motion_score", -1.0)),
                    {
                        "source": item["source"],
                        "media": item["media"],
                        "caption": item["caption"],
                        "path": item["path"],
                        "motion_score": item.get("motion_score", -1.0),
                        "frames": int(lat.shape[1]),
                        "height": item["bucket_hw"][0],
                        "width": item["bucket_hw"][1],
                    },
                )
        null = {}
        for name, prompt in prompts.items():
            ((cap, n),) = captions.encode([prompt])
            null[name], null[name + "__len"] = cap.astype(np.float16), np.int32(n)
        np.savez(os.path.join(folder, shards.NULL_CAPTIONS), **null)
        summary = {
            "resolution": resolution,
            "fps": fps,
            "max_duration": max_duration,
            "multiple": multiple,
            "max_aspect": max_aspect,
            "latent_encoder": latent_encoder,
            "latent_encoder_path": latent_encoder_path,
            "latent_channels": latent.channels,
            "latent_temporal": latent.temporal,
            "latent_spatial": latent.spatial,
            "caption_encoder": caption_encoder,
            "caption_encoder_path": caption_encoder_path,
            "cap_feat_dim": captions.dim,
            "system_prompts": prompts,
            "skip_counts": manifest.skip_counts(skipped),
            "skipped": dict(sorted(skipped.items())),
        }
        summary = {**writer.close(summary), "seconds": round(time.time() - t0, 2)}
        if not summary["num_examples"]:  # an empty folder would only fail later, in training
            raise DataError(
                f"no usable media in {input_path} (skipped: {summary['skip_counts'] or 'none'};"
                f" see the warnings above): give a folder of videos/images "
                f"({', '.join(video.VIDEO_EXTS + video.IMAGE_EXTS)}) or a manifest of them")
    log.info(
        "prepared %d examples into %s in %.1fs; skipped %s",
        summary["num_examples"],
        output,
        summary["seconds"],
        summary["skip_counts"] or "none",
    )
    return summary
