"""The prepared accelerator check: run it first whenever a GPU is lent (one command, <= 8 min).

    python benchmarks/device_check.py --out /tmp/device_check.jsonl     # on one GPU
    python benchmarks/device_check.py --dry-run                         # CPU: every row, tiny

Rows, in order of value (each is caught and reported on its own: an OOM, a Triton compile
error or cuDNN refusing a shape becomes that row's `error`, never the end of the run):
  1. numerics: our Pallas kernel and cuDNN vs the XLA reference (fp32 math on the same bf16
     inputs): forward and dq/dk/dv, bf16, head_dim 144, GQA 16/8, packed segments + a
     padded tail, and a caption-style kv mask;
  2. train step of the released 2B_GQA model (bf16, remat full, attention auto) on a
     256-px video task (8 latent frames 32x32, patch 1x2 -> 2048 tokens per item, batch 8):
     step time and MFU against the data-sheet peak;
  3. attention fwd and fwd+bwd time and TFLOP/s, Pallas vs cuDNN vs XLA, at 4k and 16k
     tokens (B=1, 16/8 heads, D=144, bf16, unmasked);
  4. the train step again with attention forced to our Pallas kernel; then 3. at 32k.
Rows that would start after `--budget-s` are reported as skipped, so the run ends in time.
Each row is printed as it finishes and appended to `--out` (JSON lines); the last line is
`RESULT {json}` with every row. Record the figures in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ siblings
import train_throughput  # noqa: E402

from lumina_jax.ops.attention import attention, xla_attention  # noqa: E402

BF16_TOLERANCE = 2e-2  # max |err| / max |ref|: bf16 rounding of O(1) outputs and grads


def _median_time(fn, args, iters):
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _qkv(n, heads, kv_heads, d, batch=1, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    shape = lambda h: (batch, n, h, d)
    return tuple(jax.random.normal(k, shape(h), jnp.bfloat16)
                 for k, h in zip(keys, (heads, kv_heads, kv_heads)))


def numerics(impl, n, heads, kv_heads, d, masks):
    """Forward and gradients of `impl` vs the XLA reference on the same bf16 inputs."""
    q, k, v = _qkv(n, heads, kv_heads, d, batch=2)
    mask_args = {}
    if masks == "segments":  # item 0: two packed clips + padding; item 1: one clip
        ids = np.zeros((2, n), np.int32)
        ids[0, n // 3:] = 1
        ids[0, n - n // 7:] = 2  # padding tail: its own id
        mask_args = dict(q_segment_ids=jnp.asarray(ids), kv_segment_ids=jnp.asarray(ids))
    elif masks == "kv_mask":
        mask_args = dict(kv_mask=jnp.arange(n)[None, :] < jnp.array([[n // 2], [n - 5]]))
    cot = jax.random.normal(jax.random.key(7), q.shape, jnp.float32)

    def run(fn, *xs):
        out, vjp = jax.vjp(lambda *a: fn(*a).astype(jnp.float32), *xs)
        return (out, *vjp(cot))

    got = jax.jit(lambda *a: run(lambda *b: attention(*b, **mask_args, impl=impl), *a))(q, k, v)
    ref = jax.jit(lambda *a: run(lambda *b: xla_attention(
        *b, **mask_args, scale=d ** -0.5), *a))(*(x.astype(jnp.float32) for x in (q, k, v)))
    errs = {}
    for name, g, r in zip(("out", "dq", "dk", "dv"), got, ref):
        g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
        errs[name] = float(np.max(np.abs(g - r)) / max(float(np.max(np.abs(r))), 1e-6))
    return {"rel_err": errs, "ok": all(e < BF16_TOLERANCE for e in errs.values())}


def kernel_time(impl, n, heads, kv_heads, d, iters):
    q, k, v = _qkv(n, heads, kv_heads, d)
    fwd = jax.jit(lambda *a: attention(*a, impl=impl))

    def fwd_bwd(*a):
        out, vjp = jax.vjp(lambda *b: attention(*b, impl=impl), *a)
        return vjp(out)

    flops = 4.0 * heads * n * n * d  # forward; backward counted as 2.5x (flash convention)
    row = {}
    for name, fn, f in (("fwd", fwd, flops), ("fwd_bwd", jax.jit(fwd_bwd), 3.5 * flops)):
        t = _median_time(fn, (q, k, v), iters)
        row[f"{name}_ms"] = t * 1e3
        row[f"{name}_tflops"] = f / t / 1e12
    return row


def train_step(attention_impl, shape, steps):
    args = argparse.Namespace(attention=attention_impl, steps=steps, matmul_n=1024,
                              patch=(2, 1), dtype="bfloat16", remat="full", scan_unroll=1,
                              **shape)
    r = train_throughput.run(args)
    keep = ("config", "compile_s", "step_s", "mfu", "achieved_flops_s", "peak_flops_s",
            "tokens_per_s", "analytic_flops", "xla_flops", "loss")
    return {k: r[k] for k in keep}


def plan(dry_run):
    """(name, function, kwargs) of every row, in the order they run."""
    if dry_run:  # tiny shapes on CPU: the kernels run in interpret mode
        lengths, heads, kv, d, n_num, iters = (64, 128, 256), 4, 2, 144, 100, 1
        model = dict(dim=64, layers=2, heads=4, kv_heads=2, batch=2, frames=4, height=8,
                     width=8, cap_len=8)
        steps = 1
    else:
        lengths, heads, kv, d, n_num, iters = (4096, 16384, 32768), 16, 8, 144, 1000, 5
        model = dict(dim=2304, layers=24, heads=16, kv_heads=8, batch=8, frames=8, height=32,
                     width=32, cap_len=256)  # the 2B_GQA preset; 8 x 2048 tokens
        steps = 5
    rows = [(f"numerics {impl} {masks}", numerics,
             dict(impl=impl, n=n_num, heads=heads, kv_heads=kv, d=d, masks=masks))
            for impl in ("pallas", "cudnn") for masks in ("segments", "kv_mask", "none")]
    train = lambda impl: (f"train_step 2B_GQA attention={impl}", train_step,
                          dict(attention_impl=impl, shape=model, steps=steps))
    kernels = lambda n: [(f"attention {impl} N={n}", kernel_time,
                          dict(impl=impl, n=n, heads=heads, kv_heads=kv, d=d, iters=iters))
                         for impl in ("pallas", "cudnn", "xla")]
    return [*rows, train("auto"), *kernels(lengths[0]), *kernels(lengths[1]), train("pallas"),
            *kernels(lengths[2])]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="every row at tiny size (CPU)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="start no row after this many seconds (rows run ~10-90 s each)")
    ap.add_argument("--out", help="append each row as a JSON line here")
    ap.add_argument("--only", nargs="+", default=(), metavar="TEXT",
                    help="run only the rows whose name contains one of these")
    args = ap.parse_args()
    if not args.dry_run and jax.default_backend() == "cpu":
        sys.exit("device_check.py: JAX sees only a CPU; run it on a GPU, or pass --dry-run")
    start = time.perf_counter()
    env = {"jax": jax.__version__, "backend": jax.default_backend(),
           "device": jax.devices()[0].device_kind, "devices": jax.device_count()}
    print("# " + json.dumps(env), flush=True)
    results = []
    for name, fn, kwargs in plan(args.dry_run):
        if args.only and not any(t in name for t in args.only):
            continue
        row = {"row": name}
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            row["skipped"] = f"time budget ({elapsed:.0f} s > {args.budget_s:.0f} s)"
        else:
            t0 = time.perf_counter()
            try:
                row.update(fn(**kwargs))
            except Exception as e:  # noqa: BLE001 - one row's failure is that row's result
                row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
                row["where"] = traceback.format_exc().strip().splitlines()[-3][:200]
            row["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    print(f"# total {time.perf_counter() - start:.0f} s", flush=True)
    print("RESULT " + json.dumps({"env": env, "rows": results}), flush=True)


if __name__ == "__main__":
    main()
