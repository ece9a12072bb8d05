"""Memory-efficient attention in plain XLA: online softmax over key chunks (lax.scan),
one query block at a time (lax.map).

For CPU at long lengths (and as a portable fallback). Only one [B, Hq, block_q, chunk]
score block is live at a time, and the backward pass is its own scan (custom_vjp), so
forward and backward memory grow linearly in N instead of quadratically. GQA is done by grouping
query heads ([B, N, Hkv, G, D] einsums), never by repeating K/V.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from lumina_jax.ops.flash_common import MASK_VALUE, FlashConfig, make_flash

F32 = jnp.float32


def _chunks(x, c):  # [B, N, ...] -> [N / c, B, c, ...] (scan axis first)
    b, n = x.shape[:2]
    return jnp.moveaxis(x.reshape(b, n // c, c, *x.shape[2:]), 1, 0)


def _unchunk(x):  # inverse of _chunks
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def _scores(cfg, qg, kc, q_ids, idc):
    """Scaled scores [B,Hkv,G,Nq,c] and the validity mask (None when nothing is masked)."""
    if cfg.masked:
        # The ids are loop-invariant inside a layer scan. Untied from the queries, scan
        # partial evaluation (grad) hoists the mask out of the layer loop and stacks it
        # over all key chunks: an [Nq, Nk] residual, i.e. quadratic memory.
        qg, q_ids, idc = lax.optimization_barrier((qg, q_ids, idc))
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qg, kc, preferred_element_type=F32) * cfg.scale
    if not cfg.masked:
        return s, None
    return s, q_ids[:, None, None, :, None] == idc[:, None, None, None, :]


def _where(valid, x, fill):
    return x if valid is None else jnp.where(valid, x, fill)


def _fwd_block(cfg: FlashConfig, q, k, v, q_ids, kv_ids):
    """One query block against all keys: (o [B,bq,Hq,D], lse [B,Hq,bq])."""
    b, nq, hq, d = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    c = cfg.block_sizes.block_k
    qg = q.reshape(b, nq, hkv, g, d)

    def step(carry, xs):
        m, l, acc = carry  # [B,Hkv,G,bq], [B,Hkv,G,bq], [B,Hkv,G,bq,D]
        kc, vc, idc = xs
        s, valid = _scores(cfg, qg, kc, q_ids, idc)
        s = _where(valid, s, MASK_VALUE)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        p = _where(valid, jnp.exp(s - m_new[..., None]), 0.0)
        alpha = jnp.exp(m - m_new)
        l = alpha * l + jnp.sum(p, axis=-1)
        acc = alpha[..., None] * acc + jnp.einsum(
            "bhgqk,bkhd->bhgqd", p.astype(v.dtype), vc, preferred_element_type=F32)
        return (m_new, l, acc), None

    init = (jnp.full((b, hkv, g, nq), MASK_VALUE, F32), jnp.zeros((b, hkv, g, nq), F32),
            jnp.zeros((b, hkv, g, nq, d), F32))
    (m, l, acc), _ = lax.scan(step, init, (_chunks(k, c), _chunks(v, c), _chunks(kv_ids, c)))
    nonempty = l > 0.0
    safe_l = jnp.where(nonempty, l, 1.0)
    o = (acc / safe_l[..., None]).transpose(0, 3, 1, 2, 4).reshape(b, nq, hq, d)
    lse = jnp.where(nonempty, m + jnp.log(safe_l), jnp.inf).reshape(b, hq, nq)
    return o.astype(q.dtype), lse


def _bwd_block(cfg: FlashConfig, q, k, v, q_ids, kv_ids, lse, do, delta):
    """One query block's dq and its (fp32) contributions to dk, dv."""
    b, nq, hq, d = q.shape
    hkv = k.shape[2]
    g = hq // hkv
    c = cfg.block_sizes.block_k
    qg = q.reshape(b, nq, hkv, g, d)
    dog = do.reshape(b, nq, hkv, g, d)
    lse = lse.reshape(b, hkv, g, nq)[..., None]
    delta = delta.reshape(b, hkv, g, nq)[..., None]

    def step(dq, xs):
        kc, vc, idc = xs
        s, valid = _scores(cfg, qg, kc, q_ids, idc)
        p = _where(valid, jnp.exp(s - lse), 0.0)
        dv = jnp.einsum("bhgqk,bqhgd->bkhd", p.astype(do.dtype), dog,
                        preferred_element_type=F32)
        dp = jnp.einsum("bqhgd,bkhd->bhgqk", dog, vc, preferred_element_type=F32)
        ds = p * (dp - delta)
        dk = jnp.einsum("bhgqk,bqhgd->bkhd", ds.astype(q.dtype), qg,
                        preferred_element_type=F32) * cfg.scale
        dq = dq + jnp.einsum("bhgqk,bkhd->bqhgd", ds.astype(k.dtype), kc,
                             preferred_element_type=F32)
        return dq, (dk, dv)

    dq, (dk, dv) = lax.scan(step, jnp.zeros(qg.shape, F32),
                            (_chunks(k, c), _chunks(v, c), _chunks(kv_ids, c)))
    return (dq * cfg.scale).reshape(q.shape), _unchunk(dk), _unchunk(dv)


def _lse_blocks(x, bq):  # [B, Hq, Nq] -> [Nq / bq, B, Hq, bq]
    b, h, n = x.shape
    return jnp.moveaxis(x.reshape(b, h, n // bq, bq), 2, 0)


def _fwd(cfg: FlashConfig, q, k, v, q_ids, kv_ids):
    bq = cfg.block_sizes.block_q
    o, lse = lax.map(lambda xs: _fwd_block(cfg, xs[0], k, v, xs[1], kv_ids),
                     (_chunks(q, bq), _chunks(q_ids, bq)))
    b, nq, hq, _ = q.shape
    return _unchunk(o), jnp.moveaxis(lse, 0, 2).reshape(b, hq, nq)


def _bwd(cfg: FlashConfig, q, k, v, q_ids, kv_ids, o, lse, do, delta):
    del o
    bq = cfg.block_sizes.block_q

    def step(dkv, xs):
        qb, idb, lseb, dob, deltab = xs
        dqb, dkb, dvb = _bwd_block(cfg, qb, k, v, idb, kv_ids, lseb, dob, deltab)
        return (dkv[0] + dkb, dkv[1] + dvb), dqb

    (dk, dv), dq = lax.scan(
        step, (jnp.zeros(k.shape, F32), jnp.zeros(v.shape, F32)),
        (_chunks(q, bq), _chunks(q_ids, bq), _lse_blocks(lse, bq), _chunks(do, bq),
         _lse_blocks(delta, bq)))
    return _unchunk(dq), dk, dv


chunked_attention = make_flash(_fwd, _bwd)
