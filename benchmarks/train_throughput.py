"""Train-step throughput and MFU of the real sharded TrainStep on this machine.

    python benchmarks/train_throughput.py                  # dim 512, 2 x 2048 tokens
    python benchmarks/train_throughput.py --attention xla --remat full --batch 4
    python benchmarks/train_throughput.py --heads 4 --kv-heads 2 --scan-unroll 4

MFU = analytic model FLOPs per step (lumina_jax/model/flops.py; remat recompute not
counted) / step time / the measured dense fp32 matmul peak of this machine (timed in
the same run, interleaved with the steps). XLA's `compiled.cost_analysis()` FLOPs are
printed next to the analytic count as a cross-check. Prints figures, never fails on
time. The last line is `RESULT {json}` for benchmarks/collect_results.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from lumina_jax.diffusion.loss import LossConfig, TaskSpec
from lumina_jax.model import get_preset, token_count
from lumina_jax.parallel import get_rules, make_mesh
from lumina_jax.train.metrics import device_peak_flops, measured_matmul_flops
from lumina_jax.train.state import OptimConfig, make_optimizer, state_layout
from lumina_jax.train.step import TrainStep, global_batch


def make_batch(cfg, batch, frames, h, w, cap_len, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "latents": rng.standard_normal((batch, cfg.in_channels, frames, h, w), np.float32),
        "cap_feats": rng.standard_normal((batch, cap_len, cfg.cap_feat_dim), np.float32),
        "cap_mask": np.arange(cap_len)[None] < rng.integers(cap_len // 2, cap_len + 1, (batch, 1)),
        "motion_score": rng.uniform(0, 5, batch).astype(np.float32),
    }


def run(args) -> dict:
    cfg = get_preset("2B_GQA", dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                     n_kv_heads=args.kv_heads, cap_feat_dim=args.dim, dtype=args.dtype,
                     remat=args.remat, attention_impl=args.attention,
                     scan_unroll=args.scan_unroll)
    p, pf = args.patch
    task = TaskSpec("video", (p, pf), 4.0)
    tokens = token_count(args.frames, args.height, args.width, (p, pf))
    mesh, rules = make_mesh({"data": 1}, devices=jax.devices()[:1]), get_rules("dp")
    optim = OptimConfig(lr=1e-4, ema_every=1)
    layout = state_layout(cfg, mesh, rules, make_optimizer(optim))
    state = layout.init()
    step = TrainStep(cfg, optim, LossConfig(), {"video": task}, mesh, rules, layout)
    batches = {"video": global_batch(make_batch(cfg, args.batch, args.frames, args.height,
                                                args.width, args.cap_len), mesh, rules)}
    key = jax.random.key(0)
    t0 = time.perf_counter()
    compiles = step.compile(state, batches, key)
    compile_s = time.perf_counter() - t0
    analytic = step.model_flops(batches)
    # XLA counts a while loop's body once: scale the scanned layers' share by n_layers.
    xla = sum(c.flops for c in compiles)  # the task's gradient + the update

    state, m = step(state, batches, key)  # warm-up
    jax.block_until_ready(m)
    # CPU: the peak is this machine's fp32 matmul, timed between steps (it drifts with
    # load); accelerators: the data sheet's dense bf16 peak (metrics.PEAK_FLOPS).
    on_cpu = jax.default_backend() == "cpu"
    times, peaks = [], [] if on_cpu else [device_peak_flops()]
    for _ in range(args.steps):
        if on_cpu:
            peaks.append(measured_matmul_flops(args.matmul_n, repeats=3))
        t0 = time.perf_counter()
        state, m = step(state, batches, key)
        jax.block_until_ready((state, m))
        times.append(time.perf_counter() - t0)
    step_s, peak = statistics.median(times), max(peaks)
    achieved = analytic / step_s
    return {
        "config": {"dim": cfg.dim, "layers": cfg.n_layers, "heads": cfg.n_heads,
                   "kv_heads": cfg.kv_heads, "ffn": cfg.ffn_dim, "batch": args.batch,
                   "tokens_per_item": tokens, "cap_len": args.cap_len, "dtype": cfg.dtype,
                   "remat": cfg.remat, "attention": cfg.attention_impl,
                   "scan_unroll": cfg.scan_unroll},
        "compile_s": compile_s, "step_s": step_s, "step_s_all": times,
        "analytic_flops": analytic, "xla_flops": xla, "xla_over_analytic": xla / analytic,
        "achieved_flops_s": achieved, "peak_flops_s": peak, "mfu": achieved / peak,
        "tokens_per_s": args.batch * tokens / step_s, "loss": float(m["loss"]),
        "devices": str(jax.devices()[0].device_kind), "jax": jax.__version__,
    }


def add_shape_args(ap, heads: int, kv_heads: int) -> None:
    """Model and batch shape flags shared with benchmarks/jax_vs_torch.py."""
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=heads)
    ap.add_argument("--kv-heads", type=int, default=kv_heads)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--cap-len", type=int, default=32)
    ap.add_argument("--scan-unroll", type=int, default=1,
                    help="layers per layer-scan iteration (= --layers: fully unrolled)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(ap, heads=8, kv_heads=4)
    ap.add_argument("--patch", type=int, nargs=2, default=(2, 2), metavar=("P", "PF"))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--remat", default="none")
    ap.add_argument("--attention", default="auto")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--matmul-n", type=int, default=2048)
    r = run(ap.parse_args())
    c = r["config"]
    print(f"model dim {c['dim']} x {c['layers']} layers ({c['heads']} heads, {c['kv_heads']} kv, "
          f"ffn {c['ffn']}), batch {c['batch']} x {c['tokens_per_item']} tokens, {c['dtype']}, "
          f"remat {c['remat']}, attention {c['attention']}, scan_unroll {c['scan_unroll']}; "
          f"compile {r['compile_s']:.1f} s")
    print(f"FLOPs per step: analytic {r['analytic_flops']:.4g}, XLA cost_analysis "
          f"{r['xla_flops']:.4g} (ratio XLA/analytic {r['xla_over_analytic']:.3f})")
    print(f"step time {r['step_s']:.3f} s (median of {len(r['step_s_all'])}), "
          f"{r['tokens_per_s']:.0f} tokens/s, {r['achieved_flops_s'] / 1e9:.1f} GFLOP/s")
    print(f"measured fp32 matmul peak {r['peak_flops_s'] / 1e9:.1f} GFLOP/s -> "
          f"MFU {100 * r['mfu']:.1f}%")
    print("RESULT " + json.dumps(r))


if __name__ == "__main__":
    main()
