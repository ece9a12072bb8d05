"""JAX TrainStep vs the independent PyTorch Next-DiT (tests/torch_nextdit.py), CPU fp32.

    python benchmarks/jax_vs_torch.py [--rounds 6]

Same small config, same weights (exported from the JAX init), same batch; one step is
forward + backward + AdamW update (grad clip 2.0, betas (0.9, 0.95), eps 1e-15) of the
rectified-flow loss MSE + (1 - cos). Both run in this process with the same thread
count (XLA's CPU pool uses every core; torch is pinned to the same number), timed
interleaved (JAX step, torch step, JAX step, ...). Prints medians and the ratio; never
fails on time. The last line is `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

import jax
import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from torch_nextdit import MultiScaleNextDiT  # noqa: E402

from lumina_jax.diffusion.loss import LossConfig, TaskSpec  # noqa: E402
from lumina_jax.export.state_dict import model_args, to_torch  # noqa: E402
from lumina_jax.model import get_preset  # noqa: E402
from lumina_jax.parallel import get_rules, make_mesh  # noqa: E402
from lumina_jax.train.state import OptimConfig, create_sharded_state, make_optimizer  # noqa: E402
from lumina_jax.train.step import TrainStep, global_batch  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from train_throughput import make_batch  # noqa: E402


def torch_loss(model, batch, patch, shift, gen):
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
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--cap-len", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    cfg = get_preset("2B_GQA", dim=args.dim, n_layers=args.layers, n_heads=args.heads,
                     n_kv_heads=args.kv_heads, cap_feat_dim=args.dim, multiple_of=64)
    patch = (2, 2)
    task = TaskSpec("video", patch, 4.0)
    optim = OptimConfig(lr=1e-4, ema_every=10)
    mesh, rules = make_mesh({"data": 1}, devices=jax.devices()[:1]), get_rules("dp")
    state, shardings = create_sharded_state(cfg, make_optimizer(optim), 0, mesh, rules)
    step = TrainStep(cfg, optim, LossConfig(), {"video": task}, mesh, rules, shardings)
    np_batch = make_batch(cfg, args.batch, args.frames, args.height, args.width, args.cap_len)
    batches = {"video": global_batch(np_batch, mesh, rules)}
    key = jax.random.key(0)

    tmodel = MultiScaleNextDiT(**model_args(cfg)["model_kwargs"])
    tmodel.load_state_dict({n: torch.from_numpy(np.array(a)) for n, a in
                            to_torch(state["params"], cfg)}, strict=True)
    topt = torch.optim.AdamW(tmodel.parameters(), lr=optim.lr, betas=(optim.b1, optim.b2),
                             eps=optim.eps, weight_decay=optim.weight_decay)
    tbatch = {k: torch.from_numpy(np.asarray(v)) for k, v in np_batch.items()}
    gen = torch.Generator().manual_seed(0)

    def jax_step():
        nonlocal state
        state, m = step(state, batches, key)
        jax.block_until_ready((state, m))
        return float(m["loss"])

    def torch_step():
        topt.zero_grad(set_to_none=True)
        loss = torch_loss(tmodel, tbatch, patch, task.shift, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tmodel.parameters(), optim.clip_norm)
        topt.step()
        return float(loss.detach())

    step.compile(state, batches, key)
    jax_step(), torch_step()  # warm-up
    jt, tt, jl, tl = [], [], [], []
    for _ in range(args.rounds):
        for fn, times, losses in ((jax_step, jt, jl), (torch_step, tt, tl)):
            t0 = time.perf_counter()
            losses.append(fn())
            times.append(time.perf_counter() - t0)
    tokens = args.frames // 2 * (args.height // 2) * (args.width // 2)
    r = {"config": {"dim": cfg.dim, "layers": cfg.n_layers, "heads": cfg.n_heads,
                    "kv_heads": cfg.kv_heads, "batch": args.batch, "tokens_per_item": tokens,
                    "cap_len": args.cap_len, "threads": threads},
         "jax_step_s": statistics.median(jt), "torch_step_s": statistics.median(tt),
         "jax_loss_last": jl[-1], "torch_loss_last": tl[-1], "torch": torch.__version__,
         "jax": jax.__version__}
    r["speedup"] = r["torch_step_s"] / r["jax_step_s"]
    c = r["config"]
    print(f"model dim {c['dim']} x {c['layers']} layers, batch {c['batch']} x "
          f"{c['tokens_per_item']} tokens, fp32, {threads} threads (torch {torch.__version__}, "
          f"jax {jax.__version__})")
    print(f"step (fwd+bwd+AdamW), median of {args.rounds} interleaved: JAX "
          f"{r['jax_step_s'] * 1e3:.1f} ms, PyTorch {r['torch_step_s'] * 1e3:.1f} ms -> JAX is "
          f"{r['speedup']:.2f}x faster (losses {jl[-1]:.4f} / {tl[-1]:.4f})")
    print("RESULT " + json.dumps(r))


if __name__ == "__main__":
    main()
