"""Compiled peak temporary memory: naive (xla) vs chunked attention on CPU.

Compiles (never runs) forward+backward of `attention(impl=...)` and reads
`compiled.memory_analysis().temp_size_in_bytes`. Naive grows ~N^2, chunked ~N.

    python benchmarks/attention_memory.py [--lengths 4096 16384 65536] [--forward-only]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from lumina_jax.ops.attention import attention
from lumina_jax.ops.flash_common import BlockSizes


def temp_bytes(impl, n, args):
    b, hq, hkv, d = args.batch, args.heads, args.kv_heads, args.head_dim
    dtype = jnp.dtype(args.dtype)
    kw = dict(impl=impl, block_sizes=BlockSizes(args.chunk, args.chunk))
    seg = jax.ShapeDtypeStruct((b, n), jnp.int32)

    def fwd(q, k, v, seg):
        return attention(q, k, v, q_segment_ids=seg, kv_segment_ids=seg, **kw)

    def fwd_bwd(q, k, v, seg):
        out, vjp = jax.vjp(lambda q, k, v: fwd(q, k, v, seg), q, k, v)
        return vjp(out)

    fn = fwd if args.forward_only else fwd_bwd
    shapes = (jax.ShapeDtypeStruct((b, n, hq, d), dtype),
              *[jax.ShapeDtypeStruct((b, n, hkv, d), dtype)] * 2, seg)
    compiled = jax.jit(fn).lower(*shapes).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--kv-heads", type=int, default=1)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--forward-only", action="store_true")
    args = p.parse_args()
    what = "forward" if args.forward_only else "forward+backward"
    print(f"# {what}, B={args.batch} Hq={args.heads} Hkv={args.kv_heads} D={args.head_dim} "
          f"{args.dtype}, chunk={args.chunk}, backend={jax.default_backend()}")
    print(f"{'N':>7} | {'naive MiB':>11} {'x prev':>7} | {'chunked MiB':>11} {'x prev':>7} "
          f"| {'naive/chunked':>13} | compile s")
    prev = None
    for n in args.lengths:
        t = time.perf_counter()
        naive, chunked = temp_bytes("xla", n, args), temp_bytes("chunked", n, args)
        growth = ("", "") if prev is None else (f"{naive / prev[0]:.1f}",
                                                f"{chunked / prev[1]:.1f}")
        print(f"{n:>7} | {naive / 2**20:>11.1f} {growth[0]:>7} | {chunked / 2**20:>11.1f} "
              f"{growth[1]:>7} | {naive / chunked:>13.1f} | {time.perf_counter() - t:.1f}")
        prev = (naive, chunked)


if __name__ == "__main__":
    main()
