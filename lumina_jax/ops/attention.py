"""The one attention entry point of the model.

Layout: q `[B, Nq, Hq, D]`, k and v `[B, Nk, Hkv, D]` with `Hq % Hkv == 0` (GQA: each
group of `Hq // Hkv` query heads shares one kv head; K/V are never repeated).

Masking (any combination, all optional):
  * `q_segment_ids [B, Nq]` / `kv_segment_ids [B, Nk]`: a query attends only to keys with
    the same segment id (packed items never attend across; give padding its own id).
  * `kv_mask [B, Nk]` (bool): keys that may be attended at all (e.g. valid caption tokens).
A query row with no key to attend to returns zeros, never NaN.

`impl` picks the implementation: "xla" is the reference einsum path; "auto" picks the
best supported path for the platform (only "xla" exists until the Pallas kernels land).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla")


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    q_segment_ids: jax.Array | None = None,
    kv_segment_ids: jax.Array | None = None,
    kv_mask: jax.Array | None = None,
    scale: float | None = None,
    impl: str = "auto",
) -> jax.Array:
    _check_shapes(q, k, v, q_segment_ids, kv_segment_ids, kv_mask)
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention impl={impl!r} is unknown; choose one of {IMPLEMENTATIONS}")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return xla_attention(
        q, k, v, q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
        kv_mask=kv_mask, scale=scale,
    )


def _check_shapes(q, k, v, q_segment_ids, kv_segment_ids, kv_mask):
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape:
        raise ValueError(
            f"attention expects q [B,Nq,Hq,D], k = v [B,Nk,Hkv,D]; got q {q.shape}, "
            f"k {k.shape}, v {v.shape}")
    if q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1] or q.shape[2] % k.shape[2]:
        raise ValueError(
            f"attention: batch/head_dim must match and Hq must be a multiple of Hkv; "
            f"got q {q.shape}, k {k.shape}")
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("attention: pass both q_segment_ids and kv_segment_ids, or neither")
    if q_segment_ids is not None and (q_segment_ids.shape != q.shape[:2]
                                      or kv_segment_ids.shape != k.shape[:2]):
        raise ValueError(
            f"attention: segment ids must be [B,Nq] and [B,Nk]; got "
            f"{q_segment_ids.shape}, {kv_segment_ids.shape}")
    if kv_mask is not None and kv_mask.shape != k.shape[:2]:
        raise ValueError(f"attention: kv_mask must be [B,Nk]={k.shape[:2]}; got {kv_mask.shape}")


def attention_mask(q_segment_ids, kv_segment_ids, kv_mask):
    """Boolean `[B, 1, 1, Nq, Nk]` (broadcast over kv heads and groups) or None."""
    mask = None
    if q_segment_ids is not None:
        mask = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
    if kv_mask is not None:
        km = kv_mask.astype(bool)[:, None, :]
        mask = km if mask is None else mask & km
    return None if mask is None else mask[:, None, None]


def xla_attention(q, k, v, *, q_segment_ids=None, kv_segment_ids=None, kv_mask=None, scale):
    """Reference path: fp32 scores and softmax, inputs' dtype for the matmul operands."""
    b, nq, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, nq, hkv, hq // hkv, d)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", qg, k, preferred_element_type=jnp.float32)
    scores = scores * scale
    mask = attention_mask(q_segment_ids, kv_segment_ids, kv_mask)
    if mask is not None:
        scores = jnp.where(mask, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)  # fully masked row
    probs = jnp.exp(scores - jax.lax.stop_gradient(row_max))
    denom = jnp.sum(probs, axis=-1, keepdims=True)
    probs = probs / jnp.where(denom == 0.0, 1.0, denom)
    out = jnp.einsum("bhgqk,bkhd->bqhgd", probs.astype(v.dtype), v,
                     preferred_element_type=jnp.float32)
    return out.reshape(b, nq, hq, d).astype(q.dtype)
