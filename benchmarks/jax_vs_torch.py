"""JAX TrainStep vs the independent PyTorch Next-DiT (lumina_jax/export/torch_nextdit.py), CPU fp32.

    python benchmarks/jax_vs_torch.py [--rounds 6]
    python benchmarks/jax_vs_torch.py --dim 256 --heads 4 --kv-heads 2 --batch 4 --frames 4 --width 32

Same config, same weights (exported from the JAX init), same batch; one step is
forward + backward + AdamW update (grad clip 2.0, betas (0.9, 0.95), eps 1e-15) of the
rectified-flow loss MSE + (1 - cos). Each framework runs in its own worker process with
every core (XLA's CPU pool; torch.set_num_threads), in alternating blocks: a JAX
process times `--steps` steps and exits, then a torch process does, for `--rounds`
rounds; the medians over all timed steps give the ratio. Never two live at once: the
JAX step measured 3.0 s alone, 4.5 s in one process with torch, and still 4.4 s while an
idle torch worker process merely existed (back to 3.1 s once it exited). Never fails on
time. The last line is `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_throughput import add_shape_args, make_batch  # noqa: E402


def model_config(args):
    from lumina_jax.model import get_preset

    return get_preset("2B_GQA", dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                      n_kv_heads=args.kv_heads, cap_feat_dim=args.dim, multiple_of=64,
                      scan_unroll=args.scan_unroll)


def numpy_batch(args, cfg):
    return make_batch(cfg, args.batch, args.frames, args.height, args.width, args.cap_len)


def timed_steps(args, conn, run_step):
    """One warm-up step, then `args.steps` timed ones (idle pause before each); sends
    [(seconds, loss), ...] to the parent."""
    run_step()
    runs = []
    for _ in range(args.steps):
        time.sleep(args.pause)
        t0 = time.perf_counter()
        loss = run_step()
        runs.append((time.perf_counter() - t0, loss))
    conn.send(runs)


def jax_worker(args, conn):
    """Builds the JAX step, sends the initial weights (torch layout), times steps."""
    import jax

    from lumina_jax.diffusion.loss import LossConfig, TaskSpec
    from lumina_jax.export.state_dict import model_args, to_torch
    from lumina_jax.parallel import get_rules, make_mesh
    from lumina_jax.train.state import OptimConfig, make_optimizer, state_layout
    from lumina_jax.train.step import TrainStep, global_batch

    cfg = model_config(args)
    optim = OptimConfig(lr=1e-4, ema_every=10)
    mesh, rules = make_mesh({"data": 1}, devices=jax.devices()[:1]), get_rules("dp")
    layout = state_layout(cfg, mesh, rules, make_optimizer(optim))
    state = layout.init()
    step = TrainStep(cfg, optim, LossConfig(), {"video": TaskSpec("video", (2, 2), 4.0)},
                     mesh, rules, layout)
    batches = {"video": global_batch(numpy_batch(args, cfg), mesh, rules)}
    key = jax.random.key(0)
    conn.send({"weights": dict(to_torch(state["params"], cfg)),
               "model_kwargs": model_args(cfg)["model_kwargs"],
               "optim": {"lr": optim.lr, "betas": (optim.b1, optim.b2), "eps": optim.eps,
                         "weight_decay": optim.weight_decay, "clip_norm": optim.clip_norm},
               "jax": jax.__version__})
    step.compile(state, batches, key)

    def run_step():
        nonlocal state
        state, m = step(state, batches, key)
        return float(m["loss"])  # blocks until the step is done

    timed_steps(args, conn, run_step)


def torch_worker(args, conn, setup):
    import numpy as np
    import torch

    from lumina_jax.export.torch_nextdit import MultiScaleNextDiT

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    model = MultiScaleNextDiT(**setup["model_kwargs"])
    model.load_state_dict({n: torch.from_numpy(np.array(a)) for n, a in
                           setup["weights"].items()}, strict=True)
    o = setup["optim"]
    opt = torch.optim.AdamW(model.parameters(), lr=o["lr"], betas=o["betas"], eps=o["eps"],
                            weight_decay=o["weight_decay"])
    batch = {k: torch.from_numpy(np.asarray(v))
             for k, v in numpy_batch(args, model_config(args)).items()}
    gen = torch.Generator().manual_seed(0)
    conn.send(torch.__version__)

    def run_step():
        opt.zero_grad(set_to_none=True)
        loss = torch_loss(model, batch, (2, 2), 4.0, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o["clip_norm"])
        opt.step()
        return float(loss.detach())

    timed_steps(args, conn, run_step)


def torch_loss(model, batch, patch, shift, gen):
    import torch

    x1 = batch["latents"]
    b = x1.shape[0]
    t = torch.rand(b, generator=gen)
    t = t / (t + shift - shift * t)  # the recipe's scale-aware time shift
    x0 = torch.randn(x1.shape, generator=gen)
    tb = t.view(b, 1, 1, 1, 1)
    pred = model(tb * x1 + (1 - tb) * x0, t, batch["cap_feats"], batch["cap_mask"],
                 batch["motion_score"], patch_size=patch)
    target = (x1 - x0).flatten(1)
    pred = pred.flatten(1)
    mse = ((pred - target) ** 2).mean(1)
    cos = torch.nn.functional.cosine_similarity(pred, target, dim=1, eps=1e-8)
    return (mse + (1 - cos)).mean()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(ap, heads=4, kv_heads=2)  # --scan-unroll applies to JAX only
    ap.add_argument("--rounds", type=int, default=3, help="JAX/torch block pairs")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per block")
    ap.add_argument("--pause", type=float, default=0.5,
                    help="idle seconds before each timed step")
    args = ap.parse_args()

    ctx = mp.get_context("spawn")
    setup, torch_version, jax_runs, torch_runs = None, None, [], []

    def block(target, *extra):
        conn, child = ctx.Pipe()
        proc = ctx.Process(target=target, args=(args, child, *extra), daemon=True)
        proc.start()
        first = conn.recv()
        runs = conn.recv()
        proc.join(timeout=60)
        return first, runs

    for _ in range(args.rounds):
        setup, runs = block(jax_worker)
        jax_runs += runs
        torch_version, runs = block(torch_worker, setup)
        torch_runs += runs

    threads = len(os.sched_getaffinity(0))
    tokens = args.frames // 2 * (args.height // 2) * (args.width // 2)
    r = {"config": {"dim": args.dim, "layers": args.layers, "heads": args.heads,
                    "kv_heads": args.kv_heads, "batch": args.batch, "tokens_per_item": tokens,
                    "cap_len": args.cap_len, "scan_unroll": args.scan_unroll,
                    "threads": threads},
         "jax_step_s": statistics.median(t for t, _ in jax_runs),
         "torch_step_s": statistics.median(t for t, _ in torch_runs),
         "jax_step_s_all": [t for t, _ in jax_runs], "torch_step_s_all": [t for t, _ in torch_runs],
         "jax_loss_last": jax_runs[-1][1], "torch_loss_last": torch_runs[-1][1],
         "torch": torch_version, "jax": setup["jax"]}
    r["speedup"] = r["torch_step_s"] / r["jax_step_s"]
    c = r["config"]
    print(f"model dim {c['dim']} x {c['layers']} layers ({c['heads']} heads, {c['kv_heads']} kv), "
          f"batch {c['batch']} x {c['tokens_per_item']} tokens, fp32, {threads} threads per "
          f"process, JAX scan_unroll {c['scan_unroll']} (torch {r['torch']}, jax {r['jax']})")
    print(f"step (fwd+bwd+AdamW), median of {len(jax_runs)} per framework in {args.rounds} "
          f"alternating blocks: JAX "
          f"{r['jax_step_s'] * 1e3:.1f} ms, PyTorch {r['torch_step_s'] * 1e3:.1f} ms -> JAX is "
          f"{r['speedup']:.2f}x as fast (losses {r['jax_loss_last']:.4f} / "
          f"{r['torch_loss_last']:.4f})")
    print("RESULT " + json.dumps(r))


if __name__ == "__main__":
    main()
