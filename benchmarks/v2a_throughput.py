"""Lumina-V2A train-step throughput on the mesh paths we support, side by side.

    python benchmarks/v2a_throughput.py [--devices 4 --batch 16 --steps 10]

Runs the V2A demo model's real train step (data_pipelines batch shapes of the demo:
1.92 s of audio = 120 x 32 log-mel latents, 31 frames, 16 caption tokens) on a CPU split
into --devices fake devices, once per mesh: pure data parallel (dp) and FSDP. Prints
seconds per step, audio tokens/s and the FSDP/DP ratio as one RESULT line. On one CPU the
fake devices share the cores, so the figures compare the two paths' overheads (the
collectives and sharded updates), not a cluster's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--preset", default="v2a_demo")
    args = ap.parse_args()
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={args.devices}")
    import jax
    import numpy as np

    from lumina_jax.diffusion.loss import LossConfig, TaskSpec
    from lumina_jax.model import get_preset, token_count
    from lumina_jax.parallel import get_rules, make_mesh
    from lumina_jax.train.state import OptimConfig, make_optimizer, state_layout
    from lumina_jax.train.step import TrainStep, batch_keys, global_batch

    cfg = get_preset(args.preset)
    rng = np.random.default_rng(0)
    b = args.batch
    local = {"latents": rng.standard_normal((b, 1, 1, 120, 32), dtype=np.float32),
             "cap_feats": rng.standard_normal((b, 16, cfg.cap_feat_dim), dtype=np.float32),
             "cap_mask": np.ones((b, 16), bool),
             "frames": rng.standard_normal((b, 31, cfg.frame_dim), dtype=np.float32),
             "sync": rng.uniform(0, 1, (b, 120, cfg.sync_dim)).astype(np.float32)}
    tasks = {"audio": TaskSpec("audio", cfg.patch_sizes[0], 1.0)}
    tokens = b * token_count(1, 120, 32, cfg.patch_sizes[0])
    rows = {}
    for name, mesh_sizes, rules_name in (("dp", {"data": args.devices}, "dp"),
                                         ("fsdp", {"fsdp": args.devices}, "fsdp")):
        mesh, rules = make_mesh(mesh_sizes), get_rules(rules_name)
        optim = OptimConfig(lr=1e-3, ema_every=1)
        layout = state_layout(cfg, mesh, rules, make_optimizer(optim))
        state = layout.init()
        step = TrainStep(cfg, optim, LossConfig(), tasks, mesh, rules, layout)
        batches = {"audio": global_batch(local, mesh, rules, batch_keys(cfg))}
        key = jax.random.key(0)
        compiled = step.compile(state, batches, key)
        state, _ = step(state, batches, key)  # warm
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(args.steps):
            state, metrics = step(state, batches, key)
        jax.block_until_ready(state)
        seconds = (time.perf_counter() - start) / args.steps
        rows[name] = {"step_s": round(seconds, 4), "tokens_per_s": round(tokens / seconds, 1),
                      "compile_s": round(sum(c.seconds for c in compiled), 2),
                      "loss": float(metrics["loss"])}
        print(f"{name}: {seconds:.3f} s/step, {tokens / seconds:,.0f} audio tokens/s", flush=True)
    print("RESULT " + json.dumps({
        "preset": args.preset, "devices": args.devices, "global_batch": b,
        "tokens_per_step": tokens, **rows,
        "fsdp_over_dp_tokens_per_s": round(rows["fsdp"]["tokens_per_s"]
                                           / rows["dp"]["tokens_per_s"], 3)}))


if __name__ == "__main__":
    main()
