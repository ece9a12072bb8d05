"""TFLOP/s of our Pallas flash kernel vs cuDNN vs XLA on a GPU, for the 2B model's shapes.

B=1, 16 query heads, 8 kv heads, head_dim 144, bf16, non-causal; N up to ~82k tokens (one
1248x704x96 clip). Forward and forward+backward; FLOPs counted as 4*B*Hq*N^2*D forward
and 2.5x that backward (the usual flash-attention convention). Shapes a path cannot run
(cuDNN unsupported, XLA out of memory) are reported as such, not fatal.

    python benchmarks/attention_gpu.py [--lengths 4096 16384 32768 81920] [--iters 5]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import jax.numpy as jnp

from lumina_jax.ops.attention import attention
from lumina_jax.ops.flash_common import DEFAULT_BLOCK_SIZES, BlockSizes


def bench(fn, args, iters):
    out = fn(*args)  # compile + warm up
    jax.block_until_ready(out)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def make_fns(impl, block_sizes):
    kw = dict(impl=impl, block_sizes=block_sizes if impl == "pallas" else None)

    def fwd(q, k, v):
        return attention(q, k, v, **kw)

    def fwd_bwd(q, k, v):
        out, vjp = jax.vjp(fwd, q, k, v)
        return vjp(out)

    return jax.jit(fwd), jax.jit(fwd_bwd)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 32768, 81920])
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=144)
    p.add_argument("--impls", nargs="+", default=["pallas", "cudnn", "xla"])
    p.add_argument("--block-q", type=int, default=DEFAULT_BLOCK_SIZES["gpu"].block_q)
    p.add_argument("--block-k", type=int, default=DEFAULT_BLOCK_SIZES["gpu"].block_k)
    p.add_argument("--block-q-dkv", type=int, help="dk/dv pass (default: --block-q)")
    p.add_argument("--block-k-dkv", type=int, help="dk/dv pass (default: --block-k)")
    p.add_argument("--iters", type=int, default=5)
    args = p.parse_args()
    if jax.default_backend() != "gpu":
        print(f"attention_gpu.py needs a GPU; JAX backend is {jax.default_backend()!r} "
              f"(devices: {jax.devices()}). Nothing measured.", file=sys.stderr)
        sys.exit(2)
    bs = BlockSizes(args.block_q, args.block_k, args.block_q_dkv, args.block_k_dkv)
    print(f"# {jax.devices()[0].device_kind}; B=1 Hq={args.heads} Hkv={args.kv_heads} "
          f"D={args.head_dim} bf16; pallas blocks {bs}")
    print(f"{'N':>7} {'impl':>7} | {'fwd ms':>9} {'TFLOP/s':>8} | "
          f"{'fwd+bwd ms':>10} {'TFLOP/s':>8}")
    for n in args.lengths:
        keys = jax.random.split(jax.random.key(0), 3)
        q = jax.random.normal(keys[0], (1, n, args.heads, args.head_dim), jnp.bfloat16)
        k = jax.random.normal(keys[1], (1, n, args.kv_heads, args.head_dim), jnp.bfloat16)
        v = jax.random.normal(keys[2], (1, n, args.kv_heads, args.head_dim), jnp.bfloat16)
        flops = 4.0 * args.heads * n * n * args.head_dim
        for impl in args.impls:
            fwd, fwd_bwd = make_fns(impl, bs)
            row = f"{n:>7} {impl:>7} |"
            for fn, f in ((fwd, flops), (fwd_bwd, 3.5 * flops)):
                try:
                    t = bench(fn, (q, k, v), args.iters)
                    row += f" {t * 1e3:>9.2f} {f / t / 1e12:>8.1f} |"
                except Exception as e:  # noqa: BLE001 - report and keep going
                    row += f" {type(e).__name__}: {str(e).splitlines()[0][:40]} |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
