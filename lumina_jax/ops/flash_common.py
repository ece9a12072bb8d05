"""Pieces shared by the flash-attention paths (Pallas GPU/TPU kernels, chunked CPU path).

All masking is folded into two int32 id vectors before a kernel runs: a query attends to a
key iff `q_ids[q] == kv_ids[k]`. Keys hidden by `kv_mask`, and keys added to pad the
length up to a block multiple, get `MASKED_ID`, which no query carries (user segment ids
must not be `MASKED_ID` or `PAD_Q_ID`, the two most negative int32 values).

Online softmax conventions (all in fp32): scores are masked with a *finite* large negative
value and probabilities with an explicit `where(valid, ., 0)`, so a row with nothing to
attend keeps `l == 0` and comes out as zeros (never NaN). Its log-sum-exp is stored as
+inf so the backward pass gives it p == 0 too.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

MASKED_ID = int(np.iinfo(np.int32).min)
PAD_Q_ID = MASKED_ID + 1
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes. `block_q`/`block_k` for the forward and dq passes, `*_dkv` for dk/dv."""

    block_q: int = 128
    block_k: int = 128
    block_q_dkv: int | None = None
    block_k_dkv: int | None = None

    @property
    def dkv(self) -> tuple[int, int]:
        return (self.block_q_dkv or self.block_q, self.block_k_dkv or self.block_k)


# Per-platform defaults. GPU (measured on an H200, D=144 padded to 256 in-kernel, 16k tokens,
# benchmarks/RESULTS.md): 128x32 for fwd/dq and 64x64 for dk/dv gave 122 fwd+bwd TFLOP/s
# vs 97 for 64x64 everywhere; 128x64 runs the forward at 198 but the dq pass then
# exceeds shared memory. TPU: 128-multiples fill the MXU and satisfy Mosaic's (8, 128) tiling.
DEFAULT_BLOCK_SIZES = {
    "gpu": BlockSizes(block_q=128, block_k=32, block_q_dkv=64, block_k_dkv=64),
    "tpu": BlockSizes(block_q=512, block_k=512, block_q_dkv=512, block_k_dkv=512),
    "cpu": BlockSizes(block_q=512, block_k=512),
}


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def fold_masks(b, nq, nk, q_segment_ids, kv_segment_ids, kv_mask):
    """(q_ids [B,Nq], kv_ids [B,Nk]) int32 encoding segments and the kv mask."""
    if q_segment_ids is None:
        q_ids = jnp.zeros((b, nq), jnp.int32)
        kv_ids = jnp.zeros((b, nk), jnp.int32)
    else:
        q_ids = q_segment_ids.astype(jnp.int32)
        kv_ids = kv_segment_ids.astype(jnp.int32)
    if kv_mask is not None:
        kv_ids = jnp.where(kv_mask.astype(bool), kv_ids, MASKED_ID)
    return q_ids, kv_ids


def pad_axis(x, axis, multiple, value=0):
    n = x.shape[axis]
    extra = round_up(n, multiple) - n
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


@dataclasses.dataclass(frozen=True)
class FlashConfig:
    """Static (hashable) settings that a backend's fwd/bwd functions receive."""

    scale: float
    block_sizes: BlockSizes
    interpret: bool
    # False when no key is masked (no segments, no kv mask, no length padding); a backend
    # may then skip the id comparison. Set by `run_padded`.
    masked: bool = True


def make_flash(fwd_fn, bwd_fn):
    """custom_vjp flash attention from a backend's two functions.

    fwd_fn(cfg, q, k, v, q_ids, kv_ids) -> (o, lse)   with lse [B, Hq, Nq] fp32
    bwd_fn(cfg, q, k, v, q_ids, kv_ids, o, lse, do, delta) -> (dq, dk, dv)
    Inputs already padded to block multiples; q [B,Nq,Hq,D], k/v [B,Nk,Hkv,D].
    """

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def flash(cfg, q, k, v, q_ids, kv_ids):
        return fwd_fn(cfg, q, k, v, q_ids, kv_ids)[0]

    def flash_fwd(cfg, q, k, v, q_ids, kv_ids):
        o, lse = fwd_fn(cfg, q, k, v, q_ids, kv_ids)
        return o, (q, k, v, q_ids, kv_ids, o, lse)

    def flash_bwd(cfg, res, do):
        q, k, v, q_ids, kv_ids, o, lse = res
        # delta_i = sum_d o_id * do_id (= sum_j p_ij dp_ij): cheap, linear, so plain XLA.
        delta = jnp.einsum("bnhd,bnhd->bhn", o.astype(jnp.float32), do.astype(jnp.float32))
        dq, dk, dv = bwd_fn(cfg, q, k, v, q_ids, kv_ids, o, lse, do, delta)
        return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None

    flash.defvjp(flash_fwd, flash_bwd)
    return flash


def run_padded(flash, cfg: FlashConfig, q, k, v, q_segment_ids, kv_segment_ids, kv_mask,
               q_multiple: int, k_multiple: int):
    """Fold masks, pad lengths to block multiples, run `flash`, slice the padding off."""
    b, nq = q.shape[:2]
    nk = k.shape[1]
    q_ids, kv_ids = fold_masks(b, nq, nk, q_segment_ids, kv_segment_ids, kv_mask)
    q_p = pad_axis(q, 1, q_multiple)
    k_p, v_p = pad_axis(k, 1, k_multiple), pad_axis(v, 1, k_multiple)
    q_ids = pad_axis(q_ids, 1, q_multiple, PAD_Q_ID)
    kv_ids = pad_axis(kv_ids, 1, k_multiple, MASKED_ID)
    masked = (q_segment_ids is not None or kv_mask is not None or k_p.shape[1] != nk)
    cfg = dataclasses.replace(cfg, masked=masked)
    out = flash(cfg, q_p, k_p, v_p, q_ids, kv_ids)
    return out[:, :nq]
