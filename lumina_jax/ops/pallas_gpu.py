"""Flash attention for GPU in Pallas (Triton lowering), forward and backward.

Layout stays [B, N, H, D] in HBM (no transposes): blocks squeeze the head axis. The head
dim is padded only inside the kernel to the next power of two (Triton needs power-of-two
tiles) with masked loads/stores, so D=144 costs no extra HBM. GQA: kv head = q head // G
in the index maps, so K/V are never repeated; the dk/dv kernel owns one kv head and loops
over its G query heads, so dk/dv come out at [B, Nk, Hkv, D] with no G-fold buffer.

Grids: forward and dq over (B, Hq, Nq/bq) with an in-kernel loop over key blocks; dk/dv
over (B, Hkv, Nk/bk) with an in-kernel loop over (query head in group, query block).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from lumina_jax.ops.flash_common import MASK_VALUE, FlashConfig, make_flash

F32 = jnp.float32


def _dot(a, b, trans_a=False, trans_b=False):
    # fp32 accumulation; bf16 operands stay bf16 (tensor cores), fp32 ones use full fp32.
    allow_tf32 = False if a.dtype == F32 and b.dtype == F32 else None
    return plgpu.dot(a, b, trans_a=trans_a, trans_b=trans_b, allow_tf32=allow_tf32)


def _fwd_kernel(q_ref, k_ref, v_ref, qid_ref, kid_ref, o_ref, lse_ref, *, scale, block_k, d):
    block_q, dp = q_ref.shape
    dmask = (jnp.arange(dp) < d)[None, :]
    q = plgpu.load(q_ref, mask=dmask, other=0.0)
    q_ids = qid_ref[...]

    def body(j, carry):
        acc, m, l = carry
        ks = pl.ds(j * block_k, block_k)
        k = plgpu.load(k_ref.at[ks, :], mask=dmask, other=0.0)
        v = plgpu.load(v_ref.at[ks, :], mask=dmask, other=0.0)
        valid = q_ids[:, None] == kid_ref[ks][None, :]
        s = jnp.where(valid, _dot(q, k, trans_b=True) * scale, MASK_VALUE)
        m_new = jnp.maximum(m, jnp.max(s, axis=1))
        p = jnp.where(valid, jnp.exp(s - m_new[:, None]), 0.0)
        alpha = jnp.exp(m - m_new)
        l = alpha * l + jnp.sum(p, axis=1)
        acc = alpha[:, None] * acc + _dot(p.astype(v.dtype), v)
        return acc, m_new, l

    init = (jnp.zeros((block_q, dp), F32), jnp.full((block_q,), MASK_VALUE, F32),
            jnp.zeros((block_q,), F32))
    acc, m, l = lax.fori_loop(0, k_ref.shape[0] // block_k, body, init)
    nonempty = l > 0.0
    o = acc / jnp.where(nonempty, l, 1.0)[:, None]
    plgpu.store(o_ref, o.astype(o_ref.dtype), mask=dmask)
    lse_ref[...] = jnp.where(nonempty, m + jnp.log(jnp.where(nonempty, l, 1.0)), jnp.inf)


def _dq_kernel(q_ref, k_ref, v_ref, qid_ref, kid_ref, do_ref, lse_ref, delta_ref, dq_ref,
               *, scale, block_k, d):
    block_q, dp = q_ref.shape
    dmask = (jnp.arange(dp) < d)[None, :]
    q = plgpu.load(q_ref, mask=dmask, other=0.0)
    do = plgpu.load(do_ref, mask=dmask, other=0.0)
    q_ids, lse, delta = qid_ref[...], lse_ref[...], delta_ref[...]

    def body(j, dq):
        ks = pl.ds(j * block_k, block_k)
        k = plgpu.load(k_ref.at[ks, :], mask=dmask, other=0.0)
        v = plgpu.load(v_ref.at[ks, :], mask=dmask, other=0.0)
        valid = q_ids[:, None] == kid_ref[ks][None, :]
        s = _dot(q, k, trans_b=True) * scale
        p = jnp.where(valid, jnp.exp(s - lse[:, None]), 0.0)
        dp_ = _dot(do, v, trans_b=True)
        ds = p * (dp_ - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k)

    dq = lax.fori_loop(0, k_ref.shape[0] // block_k, body, jnp.zeros((block_q, dp), F32))
    plgpu.store(dq_ref, (dq * scale).astype(dq_ref.dtype), mask=dmask)


def _dkv_kernel(k_ref, v_ref, kid_ref, qid_ref, *refs, scale, block_q, groups, d):
    # refs: G query refs, G do refs, G lse refs, G delta refs, then dk, dv outputs.
    q_refs, do_refs, lse_refs, delta_refs = (refs[i * groups:(i + 1) * groups]
                                             for i in range(4))
    dk_ref, dv_ref = refs[4 * groups:]
    block_k, dp = k_ref.shape
    dmask = (jnp.arange(dp) < d)[None, :]
    k = plgpu.load(k_ref, mask=dmask, other=0.0)
    v = plgpu.load(v_ref, mask=dmask, other=0.0)
    kv_ids = kid_ref[...]
    dk = jnp.zeros((block_k, dp), F32)
    dv = jnp.zeros((block_k, dp), F32)
    for g in range(groups):  # static: each query head of this kv head's group

        def body(i, carry, g=g):
            dk, dv = carry
            qs = pl.ds(i * block_q, block_q)
            q = plgpu.load(q_refs[g].at[qs, :], mask=dmask, other=0.0)
            do = plgpu.load(do_refs[g].at[qs, :], mask=dmask, other=0.0)
            # Work on transposed scores [bk, bq] so every matmul is NN or NT.
            valid = kv_ids[:, None] == qid_ref[qs][None, :]
            s_t = _dot(k, q, trans_b=True) * scale
            p_t = jnp.where(valid, jnp.exp(s_t - lse_refs[g][qs][None, :]), 0.0)
            dv = dv + _dot(p_t.astype(do.dtype), do)
            dp_t = _dot(v, do, trans_b=True)
            ds_t = p_t * (dp_t - delta_refs[g][qs][None, :])
            dk = dk + _dot(ds_t.astype(q.dtype), q)
            return dk, dv

        dk, dv = lax.fori_loop(0, qid_ref.shape[0] // block_q, body, (dk, dv))
    plgpu.store(dk_ref, (dk * scale).astype(dk_ref.dtype), mask=dmask)
    plgpu.store(dv_ref, dv.astype(dv_ref.dtype), mask=dmask)


def _params(d):
    return plgpu.CompilerParams(num_warps=4 if d <= 64 else 8, num_stages=2)


def _query_major_specs(cfg: FlashConfig, q, k) -> dict:
    """BlockSpecs of the forward and dq kernels, whose grid is (batch, q head, q block):
    a q block, the full K/V of its kv head, the id vectors, and per-row scalars."""
    nq, hq, d = q.shape[1:]
    nk, groups = k.shape[1], hq // k.shape[2]
    dp, bq = pl.next_power_of_2(d), cfg.block_sizes.block_q
    return {
        "q": pl.BlockSpec((None, bq, None, dp), lambda b_, h, i: (b_, i, h, 0)),
        "kv": pl.BlockSpec((None, nk, None, dp), lambda b_, h, i: (b_, 0, h // groups, 0)),
        "q_ids": pl.BlockSpec((None, bq), lambda b_, h, i: (b_, i)),
        "kv_ids": pl.BlockSpec((None, nk), lambda b_, h, i: (b_, 0)),
        "row": pl.BlockSpec((None, None, bq), lambda b_, h, i: (b_, h, i)),
    }


def _fwd(cfg: FlashConfig, q, k, v, q_ids, kv_ids):
    b, nq, hq, d = q.shape
    spec = _query_major_specs(cfg, q, k)
    return pl.pallas_call(
        functools.partial(_fwd_kernel, scale=cfg.scale, block_k=cfg.block_sizes.block_k, d=d),
        grid=(b, hq, nq // cfg.block_sizes.block_q),
        in_specs=[spec["q"], spec["kv"], spec["kv"], spec["q_ids"], spec["kv_ids"]],
        out_specs=[spec["q"], spec["row"]],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                   jax.ShapeDtypeStruct((b, hq, nq), F32)],
        compiler_params=_params(d), interpret=cfg.interpret, name="lumina_flash_fwd",
    )(q, k, v, q_ids, kv_ids)


def _bwd(cfg: FlashConfig, q, k, v, q_ids, kv_ids, o, lse, do, delta):
    del o
    b, nq, hq, d = q.shape
    nk, hkv = k.shape[1], k.shape[2]
    groups = hq // hkv
    dp = pl.next_power_of_2(d)
    spec = _query_major_specs(cfg, q, k)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, scale=cfg.scale, block_k=cfg.block_sizes.block_k, d=d),
        grid=(b, hq, nq // cfg.block_sizes.block_q),
        in_specs=[spec["q"], spec["kv"], spec["kv"], spec["q_ids"], spec["kv_ids"],
                  spec["q"], spec["row"], spec["row"]],
        out_specs=spec["q"],
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=_params(d), interpret=cfg.interpret, name="lumina_flash_dq",
    )(q, k, v, q_ids, kv_ids, do, lse, delta)

    bq2, bk2 = cfg.block_sizes.dkv
    kv_spec = pl.BlockSpec((None, bk2, None, dp), lambda b_, h, j: (b_, j, h, 0))

    def per_head(g, shape):  # the g-th query head of kv head h, full length
        if len(shape) == 4:
            return pl.BlockSpec((None, nq, None, dp),
                                lambda b_, h, j: (b_, 0, h * groups + g, 0))
        return pl.BlockSpec((None, None, nq), lambda b_, h, j: (b_, h * groups + g, 0))

    # The same buffers are passed G times with different index maps: no copies.
    group_args = [q] * groups + [do] * groups + [lse] * groups + [delta] * groups
    group_specs = [per_head(g, x.shape) for x in (q, do, lse, delta) for g in range(groups)]
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, scale=cfg.scale, block_q=bq2, groups=groups, d=d),
        grid=(b, hkv, nk // bk2),
        in_specs=[kv_spec, kv_spec,
                  pl.BlockSpec((None, bk2), lambda b_, h, j: (b_, j)),
                  pl.BlockSpec((None, nq), lambda b_, h, j: (b_, 0))] + group_specs,
        out_specs=[kv_spec, kv_spec],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype)] * 2,
        compiler_params=_params(d), interpret=cfg.interpret, name="lumina_flash_dkv",
    )(k, v, kv_ids, q_ids, *group_args)
    return dq, dk, dv


flash_attention = make_flash(_fwd, _bwd)
