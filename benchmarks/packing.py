"""Sequence packing vs buckets on mixed-bucket data: compiles, throughput, padding.

    python benchmarks/packing.py                       # 7 aspects x 5 durations, CPU
    python benchmarks/packing.py --data /tmp/mixed     # reuse (or keep) the prepared data

Makes real footage (data_pipelines.footage.render: two sources, every combination of
`--aspects` aspect-ratio buckets and `--seconds` durations), prepares it in pixel space
(32 px buckets, 8 fps), and trains one video 2x2 task of the same model on it two ways
with the real TrainStep: bucketed (a batch of `--batch` clips of one bucket; a compile
per bucket shape) and packed (`data.packing`: `--rows` rows of `--pack-tokens` tokens; one
compile). Batches are drawn first (data time is not counted), every shape is compiled,
then the two modes' steps run interleaved (so machine load hits both alike).

Reported: compiles per stage (task shapes + the update), compile seconds, steady-state
tokens/s (REAL tokens only: packed padding is not counted), tokens/s including compile
time over the run (what a fresh start or a restart without a compilation cache costs),
the packed padding fraction, and the attention work per real token of each mode (packed
rows attend over the whole row on CPU: the chunked kernel masks cross-clip blocks but
still computes them). Prints figures, never fails on time; the last line is
`RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import jax
import numpy as np

from data_pipelines import buckets as bk
from data_pipelines import footage, make_iterator, offline, task_from_dict, video
from lumina_jax.diffusion.loss import LossConfig, TaskSpec
from lumina_jax.model import get_preset, token_count
from lumina_jax.parallel import get_rules, make_mesh
from lumina_jax.train.state import OptimConfig, make_optimizer, state_layout
from lumina_jax.train.step import TrainStep, batch_keys, global_batch

RESOLUTION, MULTIPLE, FPS, PATCH = 32, 8, 8.0, (2, 2)


def make_data(folder: str, aspects: int, seconds: list[float]) -> str:
    """Raw clips for every (aspect bucket, duration) in two sources, prepared; returns
    the prepared folder (kept: a second run with the same --data reuses it)."""
    prepared = os.path.join(folder, "prepared")
    if os.path.exists(os.path.join(prepared, "prepared.json")):
        return prepared
    sizes = bk.resolution_buckets(RESOLUTION, MULTIPLE)
    sizes = [sizes[round(i * (len(sizes) - 1) / max(aspects - 1, 1))] for i in range(aspects)]
    rng = np.random.default_rng(0)
    for source in ("natural", "synthetic"):
        os.makedirs(os.path.join(folder, "raw", source), exist_ok=True)
        for h, w in sizes:
            for s in seconds:
                frames, caption = footage.render(source, 2 * w, 2 * h, round(s * FPS), FPS, rng)
                name = os.path.join(folder, "raw", source, f"{h}x{w}_{s:g}s")
                video.write_video(name + ".mp4", frames, FPS)
                with open(name + ".txt", "w") as f:
                    f.write(caption + "\n")
    offline.prepare(os.path.join(folder, "raw"), prepared, resolution=RESOLUTION,
                    multiple=MULTIPLE, fps=FPS, max_duration=max(seconds))
    return prepared


def data_task(prepared: str, args, packed: bool):
    fields = {"media": "video", "resolution": RESOLUTION, "multiple": MULTIPLE, "fps": FPS,
              "max_frames": int(max(args.seconds) * FPS), "temporal_multiple": PATCH[1],
              "caption_len": 64, "seed": 0,
              "sources": {s: {"path": prepared} for s in ("natural", "synthetic")}}
    if packed:
        fields.update(packing=True, pack_tokens=args.pack_tokens, pack_clips=args.pack_clips,
                      batch_size=args.rows, patch_size=PATCH)
    else:
        fields.update(batch_size=args.batch)
    return task_from_dict(fields)


def real_tokens(batch) -> int:
    if "segment_ids" in batch:
        return int(np.count_nonzero(batch["segment_ids"]))
    return batch["latents"].shape[0] * token_count(*batch["latents"].shape[2:], PATCH)


def attention_per_token(batch) -> float:
    """Self-attention scores computed per real token: a clip's length when bucketed; on
    packed rows the whole row's N^2 (cross-clip blocks are masked, not skipped)."""
    if "segment_ids" in batch:
        b, n = batch["segment_ids"].shape
        return b * n * n / max(real_tokens(batch), 1)
    return token_count(*batch["latents"].shape[2:], PATCH)


def run(args) -> dict:
    folder = args.data or tempfile.mkdtemp(prefix="lumina-packing-")
    t0 = time.perf_counter()
    prepared = make_data(folder, args.aspects, args.seconds)
    print(f"data: {prepared} ({time.perf_counter() - t0:.0f}s)", flush=True)
    cfg = get_preset("tiny", dim=args.dim, n_layers=args.layers, n_heads=4, n_kv_heads=2,
                     in_channels=3, cap_feat_dim=384)
    mesh, rules = make_mesh({"data": 1}, devices=jax.devices()[:1]), get_rules("dp")
    optim = OptimConfig(lr=1e-4, ema_every=1)
    tasks = {"video_2x2": TaskSpec("video", PATCH, 4.0)}
    key = jax.random.key(0)
    modes = {}
    for name, packed in (("bucketed", False), ("packed", True)):
        it = make_iterator(data_task(prepared, args, packed), 0, 1)
        local = [next(it) for _ in range(args.steps)]
        layout = state_layout(cfg, mesh, rules, make_optimizer(optim))
        state = layout.init()
        step = TrainStep(cfg, optim, LossConfig(), tasks, mesh, rules, layout)
        batches = [{"video_2x2": global_batch(b, mesh, rules, batch_keys(cfg))} for b in local]
        t0 = time.perf_counter()
        for b in batches:
            step.compile(state, b, key)
        modes[name] = {"step": step, "state": state, "batches": batches, "local": local,
                       "compile_s": time.perf_counter() - t0, "step_s": 0.0,
                       "buckets": {bucket for b in local for bucket in np.ravel(b["bucket"])
                                   if bucket and bucket != "packed"}
                       | {bucket for b in local for bucket in np.ravel(b.get("buckets", []))
                          if bucket}}
        print(f"{name}: {len(step.compiles)} executables compiled in "
              f"{modes[name]['compile_s']:.1f}s", flush=True)
    for i in range(args.steps):  # interleaved, so load on the machine hits both alike
        for m in modes.values():
            start = time.perf_counter()
            m["state"], metrics = m["step"](m["state"], m["batches"][i], key)
            jax.block_until_ready(metrics["loss"])
            m["step_s"] += time.perf_counter() - start
    out = {"steps": args.steps, "model": {"dim": args.dim, "layers": args.layers},
           "buckets_in_data": len(modes["bucketed"]["buckets"] | modes["packed"]["buckets"])}
    for name, m in modes.items():
        tokens = sum(real_tokens(b) for b in m["local"])
        out[name] = {
            "compiles": len(m["step"].compiles),
            "task_shapes": len(m["step"].compiles) - 1,
            "compile_s": round(m["compile_s"], 1),
            "real_tokens": tokens,
            "tokens_per_s": round(tokens / m["step_s"], 1),
            "tokens_per_s_with_compile": round(tokens / (m["step_s"] + m["compile_s"]), 1),
            "attention_per_token": round(float(np.mean([attention_per_token(b)
                                                        for b in m["local"]])), 1),
        }
    out["packed"]["padding"] = round(float(np.mean([b["padding"] for b in modes["packed"]["local"]])), 4)
    out["packed"]["clips_per_row"] = round(float(np.mean(
        [b["num_clips"] / args.rows for b in modes["packed"]["local"]])), 2)
    out["ratio_tokens_per_s"] = round(out["packed"]["tokens_per_s"]
                                      / out["bucketed"]["tokens_per_s"], 3)
    out["ratio_tokens_per_s_with_compile"] = round(
        out["packed"]["tokens_per_s_with_compile"]
        / out["bucketed"]["tokens_per_s_with_compile"], 3)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="", help="folder for the footage (reused if prepared)")
    ap.add_argument("--aspects", type=int, default=7)
    ap.add_argument("--seconds", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.5, 2.0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4, help="bucketed: clips per batch")
    ap.add_argument("--rows", type=int, default=2, help="packed: rows per batch")
    ap.add_argument("--pack-tokens", type=int, default=2560)
    ap.add_argument("--pack-clips", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    out = run(ap.parse_args())
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
