"""JAX's maintained TPU splash attention behind our attention contract (ops/attention.py).

Splash takes one batch element `[H, N, D]` with GQA native (Hq a multiple of Hkv), any
head_dim (144 included: its accumulators tile 128 lanes and slice the rest) and segment
ids, but no softmax scale, no kv mask and no lengths off its 128-row blocks. So: q is
scaled before the kernel, the kv mask and the length padding are folded into segment ids
(flash_common.fold_masks / run_padded, as for our kernels), the batch is a vmap, and rows
with no key to attend -- which splash fills with an average of the values -- are set to
zero (found in O(N log N) from the ids, never from an [Nq, Nk] mask).

Each call builds its kernel from the local shapes it sees, so inside `shard_map`
(ops/sharded.py) every device runs an unsharded splash over its own shard.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from lumina_jax.ops.flash_common import FlashConfig, round_up, run_padded

# 512-row tiles for the forward and the fused dq/dk/dv backward (MaxText's defaults on
# v4/v5), shrunk to the 128-row multiple that covers a short sequence.
BLOCK = 512
LANES = 128


def _blocks(nq: int, nk: int) -> splash.BlockSizes:
    bq = min(BLOCK, round_up(nq, LANES))
    bk = min(BLOCK, round_up(nk, LANES))
    return splash.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq,
                             block_kv_dkv=bk, block_kv_dkv_compute=bk,
                             use_fused_bwd_kernel=True)


def _has_key(q_ids, kv_ids):
    """[B, Nq] bool: some key carries the query's id (sort + search, no [Nq, Nk] mask)."""
    def one(q, kv):
        kv = jnp.sort(kv)
        at = jnp.clip(jnp.searchsorted(kv, q), 0, kv.shape[0] - 1)
        return kv[at] == q
    return jax.vmap(one)(q_ids, kv_ids)


def splash_attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, kv_mask=None,
                     scale: float, interpret: bool = False):
    """q `[B, Nq, Hq, D]`, k/v `[B, Nk, Hkv, D]` -> `[B, Nq, Hq, D]`; see the module doc."""
    bs = _blocks(q.shape[1], k.shape[1])

    def flash(cfg, q, k, v, q_ids, kv_ids):
        nq, hq, nk = q.shape[1], q.shape[2], k.shape[1]
        mask = splash.MultiHeadMask([splash.FullMask((nq, nk))] * hq)
        kernel = splash.make_splash_mha(mask, block_sizes=bs, head_shards=1, q_seq_shards=1,
                                        interpret=cfg.interpret)
        heads_first = lambda x: x.transpose(0, 2, 1, 3)
        q_scaled = (q.astype(jnp.float32) * cfg.scale).astype(q.dtype)
        ids = lambda qi, ki: splash.SegmentIds(q=qi, kv=ki) if cfg.masked else None
        out = jax.vmap(lambda q, k, v, qi, ki: kernel(q, k, v, segment_ids=ids(qi, ki)))(
            heads_first(q_scaled), heads_first(k), heads_first(v), q_ids, kv_ids)
        out = heads_first(out)
        if cfg.masked:
            out = jnp.where(_has_key(q_ids, kv_ids)[:, :, None, None], out, 0)
        return out

    cfg = FlashConfig(scale=scale, block_sizes=None, interpret=interpret)
    return run_padded(flash, cfg, q, k, v, q_segment_ids, kv_segment_ids, kv_mask,
                      q_multiple=bs.block_q, k_multiple=bs.block_kv)
