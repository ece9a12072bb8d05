"""Memory-efficient attention in plain XLA: online softmax over key chunks (lax.scan),
one query block at a time.

For CPU at long lengths (and as a portable fallback). Only one [B, Hq, block_q, block_k]
score block is live at a time, and the backward pass is its own scan (custom_vjp), so
forward and backward memory grow linearly in N instead of quadratically.

Layout: heads-major blocks, transposed once outside the loops. A query block is
`[B, Hkv, G*bq, D]` (the G query heads of a kv head stacked along rows, so GQA never
repeats K/V) and a key chunk `[B, Hkv, bk, D]`: every einsum in the loops is a plain
batched matmul with no transposes (1.5x faster on CPU than token-major blocks).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from lumina_jax.ops.flash_common import MASK_VALUE, FlashConfig, make_flash

F32 = jnp.float32


def _q_blocks(x, hkv, bq):
    """[B, Nq, Hq, D] -> [Nq/bq, B, Hkv, G*bq, D] (rows ordered g-major, then token)."""
    b, n, hq, d = x.shape
    x = x.reshape(b, n // bq, bq, hkv, hq // hkv, d).transpose(1, 0, 3, 4, 2, 5)
    return x.reshape(n // bq, b, hkv, hq // hkv * bq, d)


def _q_unblock(x, hq):  # inverse of _q_blocks
    nb, b, hkv, rows, d = x.shape
    bq = rows // (hq // hkv)
    x = x.reshape(nb, b, hkv, hq // hkv, bq, d).transpose(1, 0, 4, 2, 3, 5)
    return x.reshape(b, nb * bq, hq, d)


def _kv_chunks(x, bk):  # [B, Nk, Hkv, D] -> [Nk/bk, B, Hkv, bk, D]
    b, n, h, d = x.shape
    return x.reshape(b, n // bk, bk, h, d).transpose(1, 0, 3, 2, 4)


def _kv_unchunk(x):  # inverse of _kv_chunks
    nb, b, h, bk, d = x.shape
    return x.transpose(1, 0, 3, 2, 4).reshape(b, nb * bk, h, d)


def _row_blocks(x, hkv, bq):  # [B, Hq, Nq] -> [Nq/bq, B, Hkv, G*bq] (as _q_blocks rows)
    return _q_blocks(jnp.swapaxes(x, 1, 2)[..., None], hkv, bq)[..., 0]


def _row_unblock(x, hq):  # inverse of _row_blocks
    return jnp.swapaxes(_q_unblock(x[..., None], hq)[..., 0], 1, 2)


def _id_blocks(ids, c):  # [B, N] -> [N/c, B, c]
    b, n = ids.shape
    return ids.reshape(b, n // c, c).transpose(1, 0, 2)


def _scores(cfg, qc, kc, q_ids, k_ids):
    """Scaled scores [B, Hkv, G*bq, bk] and the validity mask (None: nothing masked)."""
    if cfg.masked:
        # The ids are loop-invariant inside a layer scan. Untied from the queries, scan
        # partial evaluation (grad) hoists the mask out of the layer loop and stacks it
        # over all key chunks: an [Nq, Nk] residual, i.e. quadratic memory.
        qc, q_ids, k_ids = lax.optimization_barrier((qc, q_ids, k_ids))
    s = jnp.einsum("bhqd,bhkd->bhqk", qc, kc, preferred_element_type=F32) * cfg.scale
    if not cfg.masked:
        return s, None
    b, hkv, rows, bk = s.shape
    g = rows // q_ids.shape[1]
    valid = q_ids[:, None, :, None] == k_ids[:, None, None, :]  # [B, 1, bq, bk]
    valid = jnp.broadcast_to(valid[:, :, None], (b, 1, g, *valid.shape[2:]))
    return s, valid.reshape(b, 1, rows, bk)


def _where(valid, x, fill):
    return x if valid is None else jnp.where(valid, x, fill)


def _fwd_block(cfg: FlashConfig, qc, kc_all, vc_all, q_ids, k_ids_all):
    """One query block [B, Hkv, R, D] against all key chunks: (o, lse [B, Hkv, R])."""
    b, hkv, rows, d = qc.shape

    def step(carry, xs):
        m, l, acc = carry  # [B,Hkv,R], [B,Hkv,R], [B,Hkv,R,D]
        kc, vc, k_ids = xs
        s, valid = _scores(cfg, qc, kc, q_ids, k_ids)
        s = _where(valid, s, MASK_VALUE)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        p = _where(valid, jnp.exp(s - m_new[..., None]), 0.0)
        alpha = jnp.exp(m - m_new)
        l = alpha * l + jnp.sum(p, axis=-1)
        acc = alpha[..., None] * acc + jnp.einsum(
            "bhqk,bhkd->bhqd", p.astype(vc.dtype), vc, preferred_element_type=F32)
        return (m_new, l, acc), None

    init = (jnp.full((b, hkv, rows), MASK_VALUE, F32), jnp.zeros((b, hkv, rows), F32),
            jnp.zeros((b, hkv, rows, d), F32))
    (m, l, acc), _ = lax.scan(step, init, (kc_all, vc_all, k_ids_all))
    nonempty = l > 0.0
    safe_l = jnp.where(nonempty, l, 1.0)
    lse = jnp.where(nonempty, m + jnp.log(safe_l), jnp.inf)
    return (acc / safe_l[..., None]).astype(qc.dtype), lse


def _fwd(cfg: FlashConfig, q, k, v, q_ids, kv_ids):
    hq, hkv = q.shape[2], k.shape[2]
    bq, bk = cfg.block_sizes.block_q, cfg.block_sizes.block_k
    kc, vc, k_ids = _kv_chunks(k, bk), _kv_chunks(v, bk), _id_blocks(kv_ids, bk)
    o, lse = lax.map(lambda xs: _fwd_block(cfg, xs[0], kc, vc, xs[1], k_ids),
                     (_q_blocks(q, hkv, bq), _id_blocks(q_ids, bq)))
    return _q_unblock(o, hq), _row_unblock(lse, hq)


def _bwd(cfg: FlashConfig, q, k, v, q_ids, kv_ids, o, lse, do, delta):
    del o
    hq, hkv = q.shape[2], k.shape[2]
    bq, bk = cfg.block_sizes.block_q, cfg.block_sizes.block_k
    kc_all, vc_all, k_ids_all = _kv_chunks(k, bk), _kv_chunks(v, bk), _id_blocks(kv_ids, bk)

    def q_step(dkv, xs):
        qc, doc, q_ids_c, lse_c, delta_c = xs
        lse_c, delta_c = lse_c[..., None], delta_c[..., None]

        def k_step(dq, ys):
            kc, vc, k_ids = ys
            s, valid = _scores(cfg, qc, kc, q_ids_c, k_ids)
            p = _where(valid, jnp.exp(s - lse_c), 0.0)
            dv = jnp.einsum("bhqk,bhqd->bhkd", p.astype(doc.dtype), doc,
                            preferred_element_type=F32)
            dp = jnp.einsum("bhqd,bhkd->bhqk", doc, vc, preferred_element_type=F32)
            ds = p * (dp - delta_c)
            dk = jnp.einsum("bhqk,bhqd->bhkd", ds.astype(qc.dtype), qc,
                            preferred_element_type=F32)
            dq = dq + jnp.einsum("bhqk,bhkd->bhqd", ds.astype(kc.dtype), kc,
                                 preferred_element_type=F32)
            return dq, (dk, dv)

        dq, (dk, dv) = lax.scan(k_step, jnp.zeros(qc.shape, F32), (kc_all, vc_all, k_ids_all))
        return (dkv[0] + dk, dkv[1] + dv), dq

    zeros = jnp.zeros(kc_all.shape, F32)
    (dk, dv), dq = lax.scan(
        q_step, (zeros, zeros),
        (_q_blocks(q, hkv, bq), _q_blocks(do, hkv, bq), _id_blocks(q_ids, bq),
         _row_blocks(lse, hkv, bq), _row_blocks(delta, hkv, bq)))
    return (_q_unblock(dq, hq) * cfg.scale, _kv_unchunk(dk) * cfg.scale, _kv_unchunk(dv))


chunked_attention = make_flash(_fwd, _bwd)
